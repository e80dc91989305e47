//! AVX2 + F16C dequantisation, value for value equal to the portable `deq_*`
//! of [`super::blocks`]: the same float operations per value (a product is
//! fused with the sum that follows only where it is exact, as `q * d` of
//! Q4_1), and F16C's conversion, which is exact for every finite or infinite
//! f16 (it only quiets signalling NaNs).
//!
//! The `g_*` functions dequantise one group of 32 values into four 8-lane
//! vectors; `x86_fused` multiplies them in registers (the decode path), and
//! [`dequantizer`] stores them for the panels of many-row products (prefill).
//! Done with portable code, the scalar f16 conversion of the block scales and
//! the byte unpacking took more time than the multiply-adds (SmolLM2 decode,
//! `perf`: 34% converting f16, 35% unpacking Q4_1/Q8_0, 9% multiply-adds).

use super::blocks::scale_min_k4;
use crate::dtype::DType;
use core::arch::x86_64::*;

/// Dequantises a run of whole blocks (`src`) into `dst` (their values).
pub type Dequantizer = fn(&[u8], &mut [f32]);

/// The AVX2 + F16C dequantiser for `dtype`, if this CPU has those features
/// and the format has one (Q4_0, Q4_1, Q5_0, Q8_0, Q4_K, Q6_K).
pub fn dequantizer(dtype: DType) -> Option<Dequantizer> {
    if !super::x86::has_avx2() {
        return None;
    }
    macro_rules! checked {
        ($f:ident) => {
            Some(|src: &[u8], dst: &mut [f32]| {
                // SAFETY: handed out only after `has_avx2()` found AVX2, FMA
                // and F16C on this CPU (the features `$f` is compiled for).
                unsafe { $f(src, dst) }
            })
        };
    }
    match dtype {
        DType::Q4_0 => checked!(q4_0),
        DType::Q4_1 => checked!(q4_1),
        DType::Q5_0 => checked!(q5_0),
        DType::Q8_0 => checked!(q8_0),
        DType::Q4_K => checked!(q4_k),
        DType::Q6_K => checked!(q6_k),
        _ => None,
    }
}

/// How far ahead (bytes) the dequantisers prefetch weights: the exact
/// products dequantise four rows a stretch at a time, so the hardware
/// prefetcher sees short jumps rather than one stream.
const PREFETCH: usize = 3072;

/// Prefetches the cache lines `PREFETCH` bytes past block `b`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn prefetch_ahead(b: &[u8]) {
    let mut at = 0;
    while at < b.len() {
        // A prefetch never faults, so the address may lie past the weights.
        _mm_prefetch::<_MM_HINT_T0>(b.as_ptr().wrapping_add(PREFETCH + at).cast());
        at += 64;
    }
}

/// The little-endian f16 at `b[at..at + 2]`, as f32 (F16C: exact).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn f16_at(b: &[u8], at: usize) -> f32 {
    let bits = u16::from_le_bytes([b[at], b[at + 1]]);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

/// 16 bytes of `b` from `at`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn ld128(b: &[u8], at: usize) -> __m128i {
    let b: &[u8; 16] = b[at..at + 16].try_into().unwrap();
    // SAFETY: `b` is 16 readable bytes; loadu has no alignment requirement.
    unsafe { _mm_loadu_si128(b.as_ptr().cast()) }
}

/// 8 bytes of `b` from `at`, in the low half.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn ld64(b: &[u8], at: usize) -> __m128i {
    let b: &[u8; 8] = b[at..at + 8].try_into().unwrap();
    // SAFETY: `b` is 8 readable bytes; loadl has no alignment requirement.
    unsafe { _mm_loadl_epi64(b.as_ptr().cast()) }
}

/// Stores 8 values at `y[at..at + 8]`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn st(y: &mut [f32], at: usize, v: __m256) {
    let y: &mut [f32; 8] = (&mut y[at..at + 8]).try_into().unwrap();
    // SAFETY: `y` is 8 writable f32s; storeu has no alignment requirement.
    unsafe { _mm256_storeu_ps(y.as_mut_ptr(), v) }
}

/// The low 8 bytes of `v` as 8 unsigned 32-bit lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn lo8(v: __m128i) -> __m256i {
    _mm256_cvtepu8_epi32(v)
}

/// The high 8 bytes of `v` as 8 unsigned 32-bit lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hi8(v: __m128i) -> __m256i {
    _mm256_cvtepu8_epi32(_mm_srli_si128::<8>(v))
}

/// Q4_0 group (the whole block): `(nibble - 8) * d`, low nibbles first.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn g_q4_0(b: &[u8], _g: usize) -> [__m256; 4] {
    let mask = _mm_set1_epi8(0x0F);
    let eight = _mm256_set1_epi32(8);
    let d = _mm256_set1_ps(f16_at(b, 0));
    let q = ld128(b, 2);
    let lo = _mm_and_si128(q, mask);
    let hi = _mm_and_si128(_mm_srli_epi16::<4>(q), mask);
    [lo8(lo), hi8(lo), lo8(hi), hi8(hi)]
        .map(|v| _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(v, eight)), d))
}

/// Q4_1 group (the whole block): `nibble * d + m`. `nibble * d` is exact
/// (4 bits times the 11 of an f16), so the sum rounds once, fused or not.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn g_q4_1(b: &[u8], _g: usize) -> [__m256; 4] {
    let mask = _mm_set1_epi8(0x0F);
    let d = _mm256_set1_ps(f16_at(b, 0));
    let m = _mm256_set1_ps(f16_at(b, 2));
    let q = ld128(b, 4);
    let lo = _mm_and_si128(q, mask);
    let hi = _mm_and_si128(_mm_srli_epi16::<4>(q), mask);
    [lo8(lo), hi8(lo), lo8(hi), hi8(hi)].map(|v| _mm256_fmadd_ps(_mm256_cvtepi32_ps(v), d, m))
}

/// Q5_0 group (the whole block): `((nibble | fifth bit << 4) - 16) * d`;
/// bit `j` of `qh` is value `j`'s fifth bit.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn g_q5_0(b: &[u8], _g: usize) -> [__m256; 4] {
    let mask = _mm_set1_epi8(0x0F);
    let sixteen = _mm256_set1_epi32(16);
    let one = _mm256_set1_epi32(1);
    let d = _mm256_set1_ps(f16_at(b, 0));
    let qh = _mm256_set1_epi32(i32::from_le_bytes([b[2], b[3], b[4], b[5]]));
    let q = ld128(b, 6);
    let lo = _mm_and_si128(q, mask);
    let hi = _mm_and_si128(_mm_srli_epi16::<4>(q), mask);
    let quants = [lo8(lo), hi8(lo), lo8(hi), hi8(hi)];
    let mut out = [_mm256_setzero_ps(); 4];
    for (k, (v, o)) in quants.into_iter().zip(out.iter_mut()).enumerate() {
        let j = 8 * k as i32;
        let shifts = _mm256_setr_epi32(j, j + 1, j + 2, j + 3, j + 4, j + 5, j + 6, j + 7);
        let h = _mm256_slli_epi32::<4>(_mm256_and_si256(_mm256_srlv_epi32(qh, shifts), one));
        let f = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_or_si256(v, h), sixteen));
        *o = _mm256_mul_ps(f, d);
    }
    out
}

/// Q8_0 group (the whole block): `q * d` with signed bytes `q`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn g_q8_0(b: &[u8], _g: usize) -> [__m256; 4] {
    let d = _mm256_set1_ps(f16_at(b, 0));
    let mut out = [_mm256_setzero_ps(); 4];
    for (k, o) in out.iter_mut().enumerate() {
        let f = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(ld64(b, 2 + 8 * k)));
        *o = _mm256_mul_ps(f, d);
    }
    out
}

/// Q4_K group `g` (values 32g..32g + 32 of the block): `d1 * nibble - m1`
/// with the group's 6-bit scale and min, from the low nibbles of bytes
/// `32 * (g / 2)..` for even groups and the high ones for odd groups. The
/// multiply and the difference stay separate, as in the portable code.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn g_q4_k(b: &[u8], g: usize) -> [__m256; 4] {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let (sc, mn) = scale_min_k4(g, &b[4..16]);
    let scale = _mm256_set1_ps(d * sc as f32);
    let min = _mm256_set1_ps(dmin * mn as f32);
    let at = 16 + 32 * (g / 2);
    let (q0, q1) = (ld128(b, at), ld128(b, at + 16));
    let quants = [lo8(q0), hi8(q0), lo8(q1), hi8(q1)];
    let mask = _mm256_set1_epi32(0x0F);
    let odd = !g.is_multiple_of(2);
    quants.map(|v| {
        let v = if odd {
            _mm256_srli_epi32::<4>(v)
        } else {
            _mm256_and_si256(v, mask)
        };
        _mm256_sub_ps(_mm256_mul_ps(scale, _mm256_cvtepi32_ps(v)), min)
    })
}

/// Q6_K group `g` (values 32g..32g + 32): with `n = g / 4` and `k = g % 4`,
/// `(d * scale) * (q - 32)`, `q` a nibble of `ql` (bytes `64n + 32 (k % 2)..`,
/// low for `k < 2`) and bits `2k..2k + 2` of `qh` (bytes `128 + 32n..`); each
/// 16 values share a scale.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn g_q6_k(b: &[u8], g: usize) -> [__m256; 4] {
    let d = f16_at(b, 208);
    let (n, k) = (g / 4, g % 4);
    let (ql, qh) = (64 * n + 32 * (k % 2), 128 + 32 * n);
    let low4 = _mm256_set1_epi32(0x0F);
    let low2 = _mm256_set1_epi32(3);
    let bias = _mm256_set1_epi32(32);
    let shift = _mm_cvtsi32_si128(2 * k as i32);
    let mut out = [_mm256_setzero_ps(); 4];
    for (v, o) in out.iter_mut().enumerate() {
        let l = _mm256_cvtepu8_epi32(ld64(b, ql + 8 * v));
        let l = if k < 2 {
            _mm256_and_si256(l, low4)
        } else {
            _mm256_srli_epi32::<4>(l)
        };
        let h = _mm256_cvtepu8_epi32(ld64(b, qh + 8 * v));
        let h = _mm256_slli_epi32::<4>(_mm256_and_si256(_mm256_srl_epi32(h, shift), low2));
        let q = _mm256_sub_epi32(_mm256_or_si256(l, h), bias);
        let scale = d * (b[192 + 8 * n + v / 2 + 2 * k] as i8) as f32;
        *o = _mm256_mul_ps(_mm256_set1_ps(scale), _mm256_cvtepi32_ps(q));
    }
    out
}

/// A run of blocks of `$bb` bytes in `$groups` groups of 32 values, each
/// dequantised by `$g` and stored.
macro_rules! run {
    ($name:ident, $g:ident, $bb:expr, $groups:expr) => {
        #[target_feature(enable = "avx2,fma,f16c")]
        fn $name(src: &[u8], dst: &mut [f32]) {
            for (b, y) in src
                .chunks_exact($bb)
                .zip(dst.chunks_exact_mut(32 * $groups))
            {
                prefetch_ahead(b);
                for g in 0..$groups {
                    for (k, v) in $g(b, g).into_iter().enumerate() {
                        st(y, 32 * g + 8 * k, v);
                    }
                }
            }
        }
    };
}

run!(q4_0, g_q4_0, 18, 1);
run!(q4_1, g_q4_1, 20, 1);
run!(q5_0, g_q5_0, 22, 1);
run!(q8_0, g_q8_0, 34, 1);
run!(q4_k, g_q4_k, 144, 8);
run!(q6_k, g_q6_k, 210, 8);
