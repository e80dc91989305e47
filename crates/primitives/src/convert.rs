//! f16 / bf16 <-> f32 conversion.
//!
//! f16 uses the hardware conversions (`vcvtph2ps` / `vcvtps2ph`, AVX-512F or
//! F16C) when the level allows it and `half`'s software conversion otherwise;
//! both round to nearest even, so every level gives the same bits. bf16 is a
//! bit manipulation, written as plain loops that LLVM vectorises for the
//! enabled instruction set.

use half::{bf16, f16};
use pulp::{Simd as PSimd, WithSimd};

use crate::simd::{Level, Simd};

/// `dst[i] = src[i] as f32` (exact). Lengths must match.
pub fn f16_to_f32(s: Simd, src: &[f16], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "f16_to_f32: length mismatch");
    #[cfg(target_arch = "x86_64")]
    {
        if s.level() == Level::Avx512 {
            // SAFETY: a `Simd` at level Avx512 is only constructed after
            // pulp's V4 detection succeeded, which includes AVX-512F.
            unsafe { x86::f16_to_f32_avx512(src, dst) };
            return;
        }
        if s.level() == Level::Avx2 && std::arch::is_x86_feature_detected!("f16c") {
            // SAFETY: Avx2 level implies AVX (pulp V3 detection) and F16C was
            // just detected.
            unsafe { x86::f16_to_f32_f16c(src, dst) };
            return;
        }
    }
    let _ = s;
    for (d, h) in dst.iter_mut().zip(src) {
        *d = h.to_f32_const();
    }
}

/// `dst[i] = f16::from_f32(src[i])`: round to nearest even, overflow to inf,
/// NaN stays NaN. Lengths must match.
pub fn f32_to_f16(s: Simd, src: &[f32], dst: &mut [f16]) {
    assert_eq!(src.len(), dst.len(), "f32_to_f16: length mismatch");
    #[cfg(target_arch = "x86_64")]
    {
        if s.level() == Level::Avx512 {
            // SAFETY: as in `f16_to_f32`, Avx512 level implies AVX-512F.
            unsafe { x86::f32_to_f16_avx512(src, dst) };
            return;
        }
        if s.level() == Level::Avx2 && std::arch::is_x86_feature_detected!("f16c") {
            // SAFETY: AVX from the Avx2 level, F16C just detected.
            unsafe { x86::f32_to_f16_f16c(src, dst) };
            return;
        }
    }
    let _ = s;
    for (d, &x) in dst.iter_mut().zip(src) {
        *d = f16::from_f32_const(x);
    }
}

/// `dst[i] = src[i] as f32` (exact: bf16 is the top half of an f32). Lengths must match.
pub fn bf16_to_f32(s: Simd, src: &[bf16], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "bf16_to_f32: length mismatch");
    s.vectorize(Bf16ToF32 { src, dst })
}

/// `dst[i] = bf16::from_f32(src[i])`: round to nearest even, NaN stays NaN
/// (quietened). Lengths must match.
pub fn f32_to_bf16(s: Simd, src: &[f32], dst: &mut [bf16]) {
    assert_eq!(src.len(), dst.len(), "f32_to_bf16: length mismatch");
    s.vectorize(F32ToBf16 { src, dst })
}

struct Bf16ToF32<'a> {
    src: &'a [bf16],
    dst: &'a mut [f32],
}

impl WithSimd for Bf16ToF32<'_> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: PSimd>(self, _s: S) {
        // Plain loop on purpose: inlined into pulp's target-feature function,
        // LLVM widens it to the level's registers.
        let src: &[u16] = bytemuck::cast_slice(self.src);
        for (d, &h) in self.dst.iter_mut().zip(src) {
            *d = f32::from_bits((h as u32) << 16);
        }
    }
}

struct F32ToBf16<'a> {
    src: &'a [f32],
    dst: &'a mut [bf16],
}

impl WithSimd for F32ToBf16<'_> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: PSimd>(self, _s: S) {
        let dst: &mut [u16] = bytemuck::cast_slice_mut(self.dst);
        for (d, &x) in dst.iter_mut().zip(self.src) {
            let b = x.to_bits();
            // Round to nearest even on the dropped 16 bits; a carry into the
            // exponent is exactly the right rounding (up to inf on overflow).
            let rounded = (b.wrapping_add(0x7FFF + ((b >> 16) & 1)) >> 16) as u16;
            // NaN: keep sign and top payload, force the quiet bit so that
            // rounding can never turn it into an infinity.
            let nan = ((b >> 16) as u16) | 0x0040;
            *d = if (b & 0x7FFF_FFFF) > 0x7F80_0000 {
                nan
            } else {
                rounded
            };
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use half::f16;
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn f16_to_f32_avx512(src: &[f16], dst: &mut [f32]) {
        let n = src.len().min(dst.len());
        let mut i = 0;
        while i + 16 <= n {
            // SAFETY: i + 16 <= n, so 16 f16 (32 bytes) are readable at
            // src[i..] and 16 f32 writable at dst[i..]; loadu/storeu accept
            // any alignment.
            unsafe {
                let h = _mm256_loadu_si256(src.as_ptr().add(i).cast::<__m256i>());
                _mm512_storeu_ps(dst.as_mut_ptr().add(i), _mm512_cvtph_ps(h));
            }
            i += 16;
        }
        for j in i..n {
            dst[j] = src[j].to_f32_const();
        }
    }

    #[target_feature(enable = "avx,f16c")]
    pub(super) unsafe fn f16_to_f32_f16c(src: &[f16], dst: &mut [f32]) {
        let n = src.len().min(dst.len());
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: i + 8 <= n: 16 bytes readable at src[i..], 8 f32
            // writable at dst[i..]; unaligned load/store.
            unsafe {
                let h = _mm_loadu_si128(src.as_ptr().add(i).cast::<__m128i>());
                _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
            }
            i += 8;
        }
        for j in i..n {
            dst[j] = src[j].to_f32_const();
        }
    }

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn f32_to_f16_avx512(src: &[f32], dst: &mut [f16]) {
        let n = src.len().min(dst.len());
        let mut i = 0;
        while i + 16 <= n {
            // SAFETY: i + 16 <= n: 16 f32 readable at src[i..], 32 bytes
            // writable at dst[i..]; unaligned load/store.
            unsafe {
                let v = _mm512_loadu_ps(src.as_ptr().add(i));
                let h = _mm512_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v);
                _mm256_storeu_si256(dst.as_mut_ptr().add(i).cast::<__m256i>(), h);
            }
            i += 16;
        }
        for j in i..n {
            dst[j] = f16::from_f32_const(src[j]);
        }
    }

    #[target_feature(enable = "avx,f16c")]
    pub(super) unsafe fn f32_to_f16_f16c(src: &[f32], dst: &mut [f16]) {
        let n = src.len().min(dst.len());
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: i + 8 <= n: 8 f32 readable at src[i..], 16 bytes
            // writable at dst[i..]; unaligned load/store.
            unsafe {
                let v = _mm256_loadu_ps(src.as_ptr().add(i));
                let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v);
                _mm_storeu_si128(dst.as_mut_ptr().add(i).cast::<__m128i>(), h);
            }
            i += 8;
        }
        for j in i..n {
            dst[j] = f16::from_f32_const(src[j]);
        }
    }
}
