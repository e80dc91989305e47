//! AVX2 + F16C dequantisation of whole runs of blocks into f32, value for
//! value equal to the portable `deq_*` of [`super::blocks`]: the same float
//! operations per value, in the same order (a product, then a sum or a
//! difference, never fused), and F16C's conversion, which is exact for every
//! finite or infinite f16 (it only quiets signalling NaNs).
//!
//! The exact products dequantise each stretch of weights into L1 before their
//! multiply-adds. Done with portable code, the scalar f16 conversion of the
//! block scales and the byte unpacking took more time than the multiply-adds
//! (SmolLM2 decode, `perf`: 34% converting f16, 35% unpacking Q4_1/Q8_0, 9%
//! multiply-adds). These kernels change no bit of any product; they serve
//! the AVX2 and the AVX-512 levels alike, since the buffer they fill is the
//! same at every vector width.

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

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn f16_at(b: &[u8], at: usize) -> f32 {
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

/// Q4_0: `(nibble - 8) * d`.
#[target_feature(enable = "avx2,fma,f16c")]
fn q4_0(src: &[u8], dst: &mut [f32]) {
    let mask = _mm_set1_epi8(0x0F);
    let eight = _mm256_set1_epi32(8);
    for (b, y) in src.chunks_exact(18).zip(dst.chunks_exact_mut(32)) {
        prefetch_ahead(b);
        let d = _mm256_set1_ps(f16_at(b, 0));
        let q = ld128(b, 2);
        let lo = _mm_and_si128(q, mask);
        let hi = _mm_and_si128(_mm_srli_epi16::<4>(q), mask);
        for (at, v) in [(0, lo8(lo)), (8, hi8(lo)), (16, lo8(hi)), (24, hi8(hi))] {
            let f = _mm256_cvtepi32_ps(_mm256_sub_epi32(v, eight));
            st(y, at, _mm256_mul_ps(f, d));
        }
    }
}

/// Q4_1: `nibble * d + m`.
#[target_feature(enable = "avx2,fma,f16c")]
fn q4_1(src: &[u8], dst: &mut [f32]) {
    let mask = _mm_set1_epi8(0x0F);
    for (b, y) in src.chunks_exact(20).zip(dst.chunks_exact_mut(32)) {
        prefetch_ahead(b);
        let d = _mm256_set1_ps(f16_at(b, 0));
        let m = _mm256_set1_ps(f16_at(b, 2));
        let q = ld128(b, 4);
        let lo = _mm_and_si128(q, mask);
        let hi = _mm_and_si128(_mm_srli_epi16::<4>(q), mask);
        for (at, v) in [(0, lo8(lo)), (8, hi8(lo)), (16, lo8(hi)), (24, hi8(hi))] {
            let f = _mm256_cvtepi32_ps(v);
            st(y, at, _mm256_add_ps(_mm256_mul_ps(f, d), m));
        }
    }
}

/// Q5_0: `((nibble | fifth bit << 4) - 16) * d`; bit `j` of `qh` is value
/// `j`'s fifth bit.
#[target_feature(enable = "avx2,fma,f16c")]
fn q5_0(src: &[u8], dst: &mut [f32]) {
    let mask = _mm_set1_epi8(0x0F);
    let sixteen = _mm256_set1_epi32(16);
    let one = _mm256_set1_epi32(1);
    let shifts = [0, 8, 16, 24]
        .map(|j| _mm256_setr_epi32(j, j + 1, j + 2, j + 3, j + 4, j + 5, j + 6, j + 7));
    for (b, y) in src.chunks_exact(22).zip(dst.chunks_exact_mut(32)) {
        prefetch_ahead(b);
        let d = _mm256_set1_ps(f16_at(b, 0));
        let qh = _mm256_set1_epi32(i32::from_le_bytes([b[2], b[3], b[4], b[5]]));
        let q = ld128(b, 6);
        let lo = _mm_and_si128(q, mask);
        let hi = _mm_and_si128(_mm_srli_epi16::<4>(q), mask);
        for (k, v) in [lo8(lo), hi8(lo), lo8(hi), hi8(hi)].into_iter().enumerate() {
            let h = _mm256_slli_epi32::<4>(_mm256_and_si256(_mm256_srlv_epi32(qh, shifts[k]), one));
            let f = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_or_si256(v, h), sixteen));
            st(y, 8 * k, _mm256_mul_ps(f, d));
        }
    }
}

/// Q8_0: `q * d` with signed bytes `q`.
#[target_feature(enable = "avx2,fma,f16c")]
fn q8_0(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(34).zip(dst.chunks_exact_mut(32)) {
        prefetch_ahead(b);
        let d = _mm256_set1_ps(f16_at(b, 0));
        for k in 0..4 {
            let f = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(ld64(b, 2 + 8 * k)));
            st(y, 8 * k, _mm256_mul_ps(f, d));
        }
    }
}

/// Q4_K: sub-block pairs of 64 values, `d1 * nibble - m1` (low nibbles) and
/// `d2 * nibble - m2` (high nibbles), the sub-block factors computed in f32
/// as the portable code does.
#[target_feature(enable = "avx2,fma,f16c")]
fn q4_k(src: &[u8], dst: &mut [f32]) {
    let mask = _mm_set1_epi8(0x0F);
    for (b, y) in src.chunks_exact(144).zip(dst.chunks_exact_mut(256)) {
        prefetch_ahead(b);
        let d = f16_at(b, 0);
        let dmin = f16_at(b, 2);
        let scales = &b[4..16];
        for c in 0..4 {
            let (sc1, m1) = scale_min_k4(2 * c, scales);
            let (sc2, m2) = scale_min_k4(2 * c + 1, scales);
            let d1 = _mm256_set1_ps(d * sc1 as f32);
            let m1 = _mm256_set1_ps(dmin * m1 as f32);
            let d2 = _mm256_set1_ps(d * sc2 as f32);
            let m2 = _mm256_set1_ps(dmin * m2 as f32);
            for half in 0..2 {
                let q = ld128(b, 16 + 32 * c + 16 * half);
                let lo = _mm_and_si128(q, mask);
                let hi = _mm_and_si128(_mm_srli_epi16::<4>(q), mask);
                let at = 64 * c + 16 * half;
                for (o, v) in [(0, lo8(lo)), (8, hi8(lo))] {
                    let f = _mm256_cvtepi32_ps(v);
                    st(y, at + o, _mm256_sub_ps(_mm256_mul_ps(d1, f), m1));
                }
                for (o, v) in [(32, lo8(hi)), (40, hi8(hi))] {
                    let f = _mm256_cvtepi32_ps(v);
                    st(y, at + o, _mm256_sub_ps(_mm256_mul_ps(d2, f), m2));
                }
            }
        }
    }
}

/// Q6_K: `(d * scale) * (q - 32)` with 6-bit `q` from a nibble of `ql` and two
/// bits of `qh`, as the portable code orders it.
#[target_feature(enable = "avx2,fma,f16c")]
fn q6_k(src: &[u8], dst: &mut [f32]) {
    let low4 = _mm256_set1_epi32(0x0F);
    let low2 = _mm256_set1_epi32(3);
    let bias = _mm256_set1_epi32(32);
    for (b, y) in src.chunks_exact(210).zip(dst.chunks_exact_mut(256)) {
        prefetch_ahead(b);
        let d = f16_at(b, 208);
        for n in 0..2 {
            let (ql, qh, sc) = (64 * n, 128 + 32 * n, 192 + 8 * n);
            for g in 0..4 {
                let l = 8 * g;
                let is = l / 16;
                let a = _mm256_cvtepu8_epi32(ld64(b, ql + l));
                let c = _mm256_cvtepu8_epi32(ld64(b, ql + l + 32));
                let h = _mm256_cvtepu8_epi32(ld64(b, qh + l));
                // Bits 2k..2k + 2 of `qh` as bits 4..6 (no closure: it would
                // be compiled without this function's target features).
                let h0 = _mm256_slli_epi32::<4>(_mm256_and_si256(h, low2));
                let h2 = _mm256_slli_epi32::<2>(_mm256_and_si256(h, _mm256_slli_epi32::<2>(low2)));
                let h4 = _mm256_and_si256(h, _mm256_slli_epi32::<4>(low2));
                let h6 = _mm256_srli_epi32::<2>(_mm256_and_si256(h, _mm256_slli_epi32::<6>(low2)));
                let qs = [
                    _mm256_or_si256(_mm256_and_si256(a, low4), h0),
                    _mm256_or_si256(_mm256_and_si256(c, low4), h2),
                    _mm256_or_si256(_mm256_srli_epi32::<4>(a), h4),
                    _mm256_or_si256(_mm256_srli_epi32::<4>(c), h6),
                ];
                for (k, q) in qs.into_iter().enumerate() {
                    let scale = d * (b[sc + is + 2 * k] as i8) as f32;
                    let f = _mm256_cvtepi32_ps(_mm256_sub_epi32(q, bias));
                    st(
                        y,
                        128 * n + 32 * k + l,
                        _mm256_mul_ps(_mm256_set1_ps(scale), f),
                    );
                }
            }
        }
    }
}
