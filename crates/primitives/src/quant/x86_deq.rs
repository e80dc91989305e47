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
//!
//! The `prep_*` functions decode once per block what its groups share (the
//! K-quants' scales times `d`), rather than once per group and row. Where
//! a format packs bits across values (Q5_0's fifth bits, Q6_K's two high
//! bits), its 32 quants are assembled as bytes in one vector and only then
//! widened to 32-bit lanes.

use super::blocks::scales_mins_k4;
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

/// Stores 8 values at `y[at..at + 8]`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn st(y: &mut [f32], at: usize, v: __m256) {
    let y: &mut [f32; 8] = (&mut y[at..at + 8]).try_into().unwrap();
    // SAFETY: `y` is 8 writable f32s; storeu has no alignment requirement.
    unsafe { _mm256_storeu_ps(y.as_mut_ptr(), v) }
}

// The group decoders below are `#[inline(always)]` so that each is compiled
// into the loop that calls it: out of line, Q6_K's was a call per 32 values
// returning its four vectors through the stack, and streamed weights at a
// fifth of Q8_0's rate. rustc does not allow `inline(always)` with
// `#[target_feature]`, so they are `unsafe fn`s without it, to be called
// only from code compiled with AVX2, FMA and F16C (where their intrinsics
// are then inlined too).

/// The f16 at `b[at..at + 2]` in every lane (F16C: exact).
///
/// # Safety
/// The caller is compiled with AVX2 and F16C.
#[inline(always)]
unsafe fn f16_splat(b: &[u8], at: usize) -> __m256 {
    let bits = u16::from_le_bytes([b[at], b[at + 1]]);
    // SAFETY: the caller has AVX2 and F16C (this function's contract).
    unsafe { _mm256_broadcastss_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32))) }
}

/// The two consecutive f16 at `b[at..at + 4]`, each in every lane of its
/// vector (converted together; F16C: exact).
///
/// # Safety
/// The caller is compiled with AVX2 and F16C.
#[inline(always)]
unsafe fn f16_pair_splat(b: &[u8], at: usize) -> [__m256; 2] {
    let bits = i32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    // SAFETY: the caller has AVX2 and F16C (this function's contract).
    unsafe {
        let both = _mm_cvtph_ps(_mm_cvtsi32_si128(bits));
        [
            _mm256_broadcastss_ps(both),
            _mm256_broadcastss_ps(_mm_movehdup_ps(both)),
        ]
    }
}

/// Bytes `at..at + 8` of `b`, zero-extended to eight 32-bit lanes.
///
/// # Safety
/// The caller is compiled with AVX2.
#[inline(always)]
unsafe fn zx8(b: &[u8], at: usize) -> __m256i {
    let b: &[u8; 8] = b[at..at + 8].try_into().unwrap();
    // SAFETY: `b` is 8 readable bytes (loadl is unaligned); AVX2 per the contract.
    unsafe { _mm256_cvtepu8_epi32(_mm_loadl_epi64(b.as_ptr().cast())) }
}

/// Bytes `at..at + 32` of `b`.
///
/// # Safety
/// The caller is compiled with AVX2.
#[inline(always)]
unsafe fn ld256(b: &[u8], at: usize) -> __m256i {
    let b: &[u8; 32] = b[at..at + 32].try_into().unwrap();
    // SAFETY: `b` is 32 readable bytes; loadu has no alignment requirement.
    unsafe { _mm256_loadu_si256(b.as_ptr().cast()) }
}

/// The 32 signed bytes of `q` as four vectors of eight 32-bit lanes, in
/// order.
///
/// # Safety
/// The caller is compiled with AVX2.
#[inline(always)]
unsafe fn sx32(q: __m256i) -> [__m256i; 4] {
    // SAFETY: AVX2 per the contract.
    unsafe {
        let lo = _mm256_castsi256_si128(q);
        let hi = _mm256_extracti128_si256::<1>(q);
        [
            _mm256_cvtepi8_epi32(lo),
            _mm256_cvtepi8_epi32(_mm_srli_si128::<8>(lo)),
            _mm256_cvtepi8_epi32(hi),
            _mm256_cvtepi8_epi32(_mm_srli_si128::<8>(hi)),
        ]
    }
}

/// The four vectors of nibbles of a 16-byte run at `b[at..]`, values in
/// GGML's order: the low nibbles of its bytes, then the high ones.
///
/// # Safety
/// The caller is compiled with AVX2.
#[inline(always)]
unsafe fn nibbles16(b: &[u8], at: usize) -> [__m256i; 4] {
    // SAFETY: AVX2 per the contract (and `zx8`'s).
    unsafe {
        let (p0, p1) = (zx8(b, at), zx8(b, at + 8));
        let mask = _mm256_set1_epi32(0x0F);
        [
            _mm256_and_si256(p0, mask),
            _mm256_and_si256(p1, mask),
            _mm256_srli_epi32::<4>(p0),
            _mm256_srli_epi32::<4>(p1),
        ]
    }
}

/// Q4_0 group (the whole block): `(nibble - 8) * d`, low nibbles first.
///
/// # Safety
/// The caller is compiled with AVX2, FMA and F16C.
#[inline(always)]
pub(super) unsafe fn g_q4_0(b: &[u8], _g: usize, _prep: &[__m256; 2]) -> [__m256; 4] {
    // SAFETY: the features per the contract.
    unsafe {
        let d = f16_splat(b, 0);
        let eight = _mm256_set1_epi32(8);
        let [a, b, c, e] = nibbles16(b, 2);
        [
            _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(a, eight)), d),
            _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(b, eight)), d),
            _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(c, eight)), d),
            _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(e, eight)), d),
        ]
    }
}

/// Q4_1 group (the whole block): `nibble * d + m`. `nibble * d` is exact
/// (4 bits times the 11 of an f16), so the sum rounds once, fused or not.
///
/// # Safety
/// The caller is compiled with AVX2, FMA and F16C.
#[inline(always)]
pub(super) unsafe fn g_q4_1(b: &[u8], _g: usize, _prep: &[__m256; 2]) -> [__m256; 4] {
    // SAFETY: the features per the contract.
    unsafe {
        let [d, m] = f16_pair_splat(b, 0);
        let [a, b, c, e] = nibbles16(b, 4);
        [
            _mm256_fmadd_ps(_mm256_cvtepi32_ps(a), d, m),
            _mm256_fmadd_ps(_mm256_cvtepi32_ps(b), d, m),
            _mm256_fmadd_ps(_mm256_cvtepi32_ps(c), d, m),
            _mm256_fmadd_ps(_mm256_cvtepi32_ps(e), d, m),
        ]
    }
}

/// Byte `j` of the result is `!(1 << (j % 8))`: ORed with byte `j / 8` of
/// a bit field, it is all ones exactly when bit `j` is set.
const NOT_BIT: i64 = 0x7fbf_dfef_f7fb_fdfe;

/// Q5_0 group (the whole block): `((nibble | fifth bit << 4) - 16) * d`;
/// bit `j` of `qh` is value `j`'s fifth bit. The 32 quants are formed as
/// bytes (as llama.cpp's `bytes_from_bits_32`): `nibble - 16` is
/// `nibble | 0xF0` in a signed byte, so a clear fifth bit sets the top four.
///
/// # Safety
/// The caller is compiled with AVX2, FMA and F16C.
#[inline(always)]
pub(super) unsafe fn g_q5_0(b: &[u8], _g: usize, _prep: &[__m256; 2]) -> [__m256; 4] {
    // SAFETY: the features per the contract.
    unsafe {
        let d = f16_splat(b, 0);
        let qh = i32::from_le_bytes([b[2], b[3], b[4], b[5]]);
        let qs: &[u8; 16] = b[6..22].try_into().unwrap();
        let qs = _mm_loadu_si128(qs.as_ptr().cast());
        let both = _mm256_set_m128i(_mm_srli_epi16::<4>(qs), qs);
        let nib = _mm256_and_si256(both, _mm256_set1_epi8(0x0F));
        // Byte j: byte j / 8 of qh (each 128-bit lane holds all of qh).
        let spread = _mm256_set_epi64x(
            0x0303_0303_0303_0303,
            0x0202_0202_0202_0202,
            0x0101_0101_0101_0101,
            0,
        );
        let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(qh), spread);
        let set = _mm256_cmpeq_epi8(
            _mm256_or_si256(bytes, _mm256_set1_epi64x(NOT_BIT)),
            _mm256_set1_epi64x(-1),
        );
        let top = _mm256_andnot_si256(set, _mm256_set1_epi8(0xF0u8 as i8));
        let [a, b, c, e] = sx32(_mm256_or_si256(nib, top));
        [
            _mm256_mul_ps(_mm256_cvtepi32_ps(a), d),
            _mm256_mul_ps(_mm256_cvtepi32_ps(b), d),
            _mm256_mul_ps(_mm256_cvtepi32_ps(c), d),
            _mm256_mul_ps(_mm256_cvtepi32_ps(e), d),
        ]
    }
}

/// Q8_0 group (the whole block): `q * d` with signed bytes `q`.
///
/// # Safety
/// The caller is compiled with AVX2, FMA and F16C.
#[inline(always)]
pub(super) unsafe fn g_q8_0(b: &[u8], _g: usize, _prep: &[__m256; 2]) -> [__m256; 4] {
    // SAFETY: the features per the contract.
    unsafe {
        let d = f16_splat(b, 0);
        let mut out = [_mm256_setzero_ps(); 4];
        for (k, o) in out.iter_mut().enumerate() {
            let q: &[u8; 8] = b[2 + 8 * k..10 + 8 * k].try_into().unwrap();
            let q = _mm256_cvtepi8_epi32(_mm_loadl_epi64(q.as_ptr().cast()));
            *o = _mm256_mul_ps(_mm256_cvtepi32_ps(q), d);
        }
        out
    }
}

/// No per-block state: the 32-value formats' block is their one group.
///
/// # Safety
/// The caller is compiled with AVX.
#[inline(always)]
pub(super) unsafe fn no_prep(_b: &[u8]) -> [__m256; 2] {
    // SAFETY: AVX per the contract.
    unsafe { [_mm256_setzero_ps(); 2] }
}

/// A Q4_K block's eight group scales `d * scale` (lane `g` of the first
/// vector) and mins `dmin * min` (of the second), with the portable code's
/// products: decoded once per block rather than once per group.
///
/// # Safety
/// The caller is compiled with AVX2, FMA and F16C.
#[inline(always)]
pub(super) unsafe fn prep_q4_k(b: &[u8]) -> [__m256; 2] {
    // SAFETY: the features per the contract.
    unsafe {
        let (sc, mn) = scales_mins_k4(&b[4..16]);
        let [d, dmin] = f16_pair_splat(b, 0);
        let sc = _mm_cvtsi64_si128(i64::from_le_bytes(sc));
        let mn = _mm_cvtsi64_si128(i64::from_le_bytes(mn));
        let sc = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(sc));
        let mn = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(mn));
        [_mm256_mul_ps(d, sc), _mm256_mul_ps(dmin, mn)]
    }
}

/// Lane `i` of `v` in every lane.
///
/// # Safety
/// The caller is compiled with AVX2.
#[inline(always)]
unsafe fn lane(v: __m256, i: usize) -> __m256 {
    // SAFETY: AVX2 per the contract.
    unsafe { _mm256_permutevar8x32_ps(v, _mm256_set1_epi32(i as i32)) }
}

/// Q4_K group `g` (values 32g..32g + 32 of the block): `d1 * nibble - m1`
/// with the group's scale and min from `prep` ([`prep_q4_k`]), from the low
/// nibbles of bytes `32 * (g / 2)..` for even groups and the high ones for
/// odd groups. The multiply and the difference stay separate, as in the
/// portable code.
///
/// # Safety
/// The caller is compiled with AVX2, FMA and F16C.
#[inline(always)]
pub(super) unsafe fn g_q4_k(b: &[u8], g: usize, prep: &[__m256; 2]) -> [__m256; 4] {
    // SAFETY: the features per the contract.
    unsafe {
        let (scale, min) = (lane(prep[0], g), lane(prep[1], g));
        let at = 16 + 32 * (g / 2);
        let mut out = [_mm256_setzero_ps(); 4];
        for (v, o) in out.iter_mut().enumerate() {
            let q = zx8(b, at + 8 * v);
            let q = if g % 2 == 1 {
                _mm256_srli_epi32::<4>(q)
            } else {
                _mm256_and_si256(q, _mm256_set1_epi32(0x0F))
            };
            *o = _mm256_sub_ps(_mm256_mul_ps(scale, _mm256_cvtepi32_ps(q)), min);
        }
        out
    }
}

/// A Q6_K block's sixteen scales times `d` (the portable code's products):
/// scales 0..8 in the first vector, 8..16 in the second.
///
/// # Safety
/// The caller is compiled with AVX2, FMA and F16C.
#[inline(always)]
pub(super) unsafe fn prep_q6_k(b: &[u8]) -> [__m256; 2] {
    // SAFETY: the features per the contract.
    unsafe {
        let d = f16_splat(b, 208);
        let sc: &[u8; 16] = b[192..208].try_into().unwrap();
        let sc = _mm_loadu_si128(sc.as_ptr().cast());
        let lo = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(sc));
        let hi = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128::<8>(sc)));
        [_mm256_mul_ps(d, lo), _mm256_mul_ps(d, hi)]
    }
}

/// The 32 quants `q - 32` of Q6_K group `g` (see [`g_q6_k`]) as signed
/// bytes: seven byte operations for all of them.
///
/// # Safety
/// The caller is compiled with AVX2.
#[inline(always)]
pub(super) unsafe fn q6_k_bytes(b: &[u8], g: usize) -> __m256i {
    // SAFETY: the features per the contract.
    unsafe {
        let (n, k) = (g / 4, g % 4);
        let low4 = _mm256_set1_epi8(0x0F);
        let ql = ld256(b, 64 * n + 32 * (k % 2));
        let ql = if k < 2 {
            _mm256_and_si256(ql, low4)
        } else {
            _mm256_and_si256(_mm256_srli_epi16::<4>(ql), low4)
        };
        // Bits 2k, 2k + 1 of each qh byte to bits 4, 5. The 16-bit right
        // shift carries bits of the high byte into the low one, which the
        // mask clears; the left shift then stays within each byte.
        let qh = _mm256_srl_epi16(ld256(b, 128 + 32 * n), _mm_cvtsi32_si128(2 * k as i32));
        let qh = _mm256_slli_epi16::<4>(_mm256_and_si256(qh, _mm256_set1_epi8(3)));
        _mm256_sub_epi8(_mm256_or_si256(ql, qh), _mm256_set1_epi8(32))
    }
}

/// Q6_K group `g` (values 32g..32g + 32): with `n = g / 4` and `k = g % 4`,
/// `(d * scale) * (q - 32)`, `q` a nibble of `ql` (bytes `64n + 32 (k % 2)..`,
/// low for `k < 2`) and bits `2k..2k + 2` of `qh` (bytes `128 + 32n..`); each
/// 16 values share a scale (scales `8n + 2k` and `8n + 2k + 1`, times `d`,
/// from `prep`: [`prep_q6_k`]). The 32 quants are formed as bytes.
///
/// # Safety
/// The caller is compiled with AVX2, FMA and F16C.
#[inline(always)]
pub(super) unsafe fn g_q6_k(b: &[u8], g: usize, prep: &[__m256; 2]) -> [__m256; 4] {
    // SAFETY: the features per the contract.
    unsafe {
        let (n, k) = (g / 4, g % 4);
        let q = q6_k_bytes(b, g);
        let (s0, s1) = (lane(prep[n], 2 * k), lane(prep[n], 2 * k + 1));
        let [a, b, c, e] = sx32(q);
        [
            _mm256_mul_ps(s0, _mm256_cvtepi32_ps(a)),
            _mm256_mul_ps(s0, _mm256_cvtepi32_ps(b)),
            _mm256_mul_ps(s1, _mm256_cvtepi32_ps(c)),
            _mm256_mul_ps(s1, _mm256_cvtepi32_ps(e)),
        ]
    }
}

/// A run of blocks of `$bb` bytes in `$groups` groups of 32 values, each
/// dequantised by `$g` and stored.
macro_rules! run {
    ($name:ident, $prep:ident, $g:ident, $bb:expr, $groups:expr) => {
        #[target_feature(enable = "avx2,fma,f16c")]
        fn $name(src: &[u8], dst: &mut [f32]) {
            for (b, y) in src
                .chunks_exact($bb)
                .zip(dst.chunks_exact_mut(32 * $groups))
            {
                prefetch_ahead(b);
                // SAFETY: this function is compiled with AVX2, FMA and F16C.
                let prep = unsafe { $prep(b) };
                for g in 0..$groups {
                    // SAFETY: as above.
                    let vs = unsafe { $g(b, g, &prep) };
                    for (k, v) in vs.into_iter().enumerate() {
                        st(y, 32 * g + 8 * k, v);
                    }
                }
            }
        }
    };
}

run!(q4_0, no_prep, g_q4_0, 18, 1);
run!(q4_1, no_prep, g_q4_1, 20, 1);
run!(q5_0, no_prep, g_q5_0, 22, 1);
run!(q8_0, no_prep, g_q8_0, 34, 1);
run!(q4_k, prep_q4_k, g_q4_k, 144, 8);
run!(q6_k, prep_q6_k, g_q6_k, 210, 8);
