//! AVX-512 (BW, VNNI) kernels of the int16-activation products of
//! [`super::i16`], with the bits of its portable reference.
//!
//! - Decode ([`rows`]): a tile of 4 weight rows and 4 blocks at a time.
//!   Q8_0 takes each (row, block) as one `vpmaddwd` of the block's 32
//!   weights (widened to int16 in a register) with the 32 rounded
//!   activations: 16 lanes of pair sums. Q5_0 and Q4_1 take a pair of
//!   blocks per row in bytes: their stored quants times the activations'
//!   low and high bytes (split once per call), two `vpdpbusd`, which needs
//!   no widening and half the lanes per block. A tree of unpacks and adds
//!   turns the lanes into one vector of the tile's 16 exact block sums,
//!   which are scaled (and Q4_1's mins added) and accumulated per row, block
//!   after block. The K-quants' decode is in [`super::x86_i16_k`].
//! - Prefill ([`gemm`], every format): 32 weight rows at a time are
//!   repacked (once for all rows of `x`) so that one 16-lane vector holds a
//!   pair of values of 16 rows; `vpdpwssd` with a broadcast pair of
//!   activations then sums a group for 16 rows at once, two products per
//!   lane per instruction (twice the multiply-adds of an f32 FMA), and the
//!   same scaling follows.

pub(super) use super::i16::Shape;
use super::i16::{block_scale, ActsI16, BLOCK};
use crate::dtype::DType;
use crate::matmul::Out;
use core::arch::x86_64::*;

/// Whether this CPU runs these kernels (pulp's V4 level, VNNI and F16C).
pub(crate) fn available() -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OK.get_or_init(|| pulp::x86::V4::try_new().is_some() && super::x86::has_vnni())
}

/// Rounds one row (see [`super::i16::quantize_row_ref`], same bits); false
/// without the CPU features or when the lengths do not match.
pub(crate) fn quantize_row(x: &[f32], q: &mut [i16], d: &mut [f32], sums: &mut [f32]) -> bool {
    if !available() || !super::i16::row_fits(x, q, d, sums) {
        return false;
    }
    // SAFETY: `available` found the features `quantize_impl` is compiled for.
    unsafe { quantize_impl(x, q, d, sums) };
    true
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
fn quantize_impl(x: &[f32], q: &mut [i16], d: &mut [f32], sums: &mut [f32]) {
    let magnitude = _mm512_set1_epi32(0x7FFF_FFFF);
    for (((xb, qb), db), sb) in x
        .chunks_exact(BLOCK)
        .zip(q.chunks_exact_mut(BLOCK))
        .zip(d.iter_mut())
        .zip(sums.iter_mut())
    {
        let xb: &[f32; BLOCK] = xb.try_into().expect("a block");
        let qb: &mut [i16; BLOCK] = qb.try_into().expect("a block");
        // SAFETY: 32 readable f32s; loadu has no alignment requirement.
        let (x0, x1) = unsafe {
            (
                _mm512_loadu_ps(xb.as_ptr()),
                _mm512_loadu_ps(xb.as_ptr().add(16)),
            )
        };
        let nan =
            _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x0, x0) | _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x1, x1);
        let a0 = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(x0), magnitude));
        let a1 = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(x1), magnitude));
        // The largest magnitude is exact in any order (NaNs are `nan`'s).
        let amax = _mm512_reduce_max_ps(_mm512_max_ps(a0, a1));
        let bad = nan != 0 || !amax.is_finite();
        let (scale, mul) = block_scale(amax, bad);
        *db = scale;
        if bad {
            *qb = [0; BLOCK];
            *sb = 0.0;
            continue;
        }
        let m = _mm512_set1_ps(mul);
        // Rounded to nearest, ties to even (the default rounding mode), and
        // within +-32767, so the saturating narrowing is exact.
        let q0 = _mm512_cvtsepi32_epi16(_mm512_cvtps_epi32(_mm512_mul_ps(x0, m)));
        let q1 = _mm512_cvtsepi32_epi16(_mm512_cvtps_epi32(_mm512_mul_ps(x1, m)));
        // The block's exact sum (at most 32 * 32767: exact as an f32).
        let pairs = _mm512_madd_epi16(
            _mm512_inserti64x4::<1>(_mm512_castsi256_si512(q0), q1),
            _mm512_set1_epi16(1),
        );
        *sb = _mm512_reduce_add_epi32(pairs) as f32;
        // SAFETY: 32 writable i16s; storeu has no alignment requirement.
        unsafe {
            _mm256_storeu_si256(qb.as_mut_ptr().cast(), q0);
            _mm256_storeu_si256(qb.as_mut_ptr().add(16).cast(), q1);
        }
    }
}

/// Splits one rounded row into bytes (see [`super::i16::split_row_ref`],
/// same values); false without the CPU features or when the lengths do not
/// match.
pub(crate) fn split_row(q: &[i16], lo: &mut [u8], hi: &mut [i8], neg_quad_q: &mut [i32]) -> bool {
    let n = q.len();
    if !available()
        || !n.is_multiple_of(BLOCK)
        || lo.len() != n
        || hi.len() != n
        || neg_quad_q.len() != n / 4
    {
        return false;
    }
    // SAFETY: `available` found the features `split_impl` is compiled for.
    unsafe { split_impl(q, lo, hi, neg_quad_q) };
    true
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
fn split_impl(q: &[i16], lo: &mut [u8], hi: &mut [i8], neg_quad_q: &mut [i32]) {
    let ones = _mm256_set1_epi8(1);
    let zero = _mm256_setzero_si256();
    for (((qb, lb), hb), nq) in q
        .chunks_exact(BLOCK)
        .zip(lo.chunks_exact_mut(BLOCK))
        .zip(hi.chunks_exact_mut(BLOCK))
        .zip(neg_quad_q.chunks_exact_mut(BLOCK / 4))
    {
        // SAFETY: 32 readable i16s, 32 writable bytes of `lo` and `hi` and 8
        // i32s of `nq` (chunks of those lengths); unaligned loads and stores.
        unsafe {
            let v = _mm512_loadu_si512(qb.as_ptr().cast());
            let l = _mm512_cvtepi16_epi8(v);
            let h = _mm512_cvtepi16_epi8(_mm512_srai_epi16::<8>(v));
            // Each 4 values: 256 * (sum of high bytes) + (sum of low bytes),
            // both exact in int32.
            let sh = _mm256_dpbusd_epi32(zero, ones, h);
            let sl = _mm256_dpbusd_epi32(zero, l, ones);
            let sq = _mm256_add_epi32(_mm256_slli_epi32::<8>(sh), sl);
            _mm256_storeu_si256(lb.as_mut_ptr().cast(), l);
            _mm256_storeu_si256(hb.as_mut_ptr().cast(), h);
            _mm256_storeu_si256(nq.as_mut_ptr().cast(), _mm256_sub_epi32(zero, sq));
        }
    }
}

/// The 32 integer weights of the block at `b` as int16: Q8_0's signed bytes
/// (`Q5 = false`) or Q5_0's `q - 16` (`Q5 = true`).
///
/// # Safety
/// `b` points to a whole block of the format; the caller is compiled with
/// the features of this module.
#[inline(always)]
unsafe fn block_weights<const Q5: bool>(b: *const u8) -> __m512i {
    // SAFETY: the block is readable (the contract); unaligned loads.
    unsafe {
        if Q5 {
            let v = block_nibbles(b.add(6));
            let qh = b.add(2).cast::<u32>().read_unaligned();
            // `nibble - 16` where the fifth bit is clear, `nibble` where set.
            _mm512_mask_sub_epi16(v, !qh, v, _mm512_set1_epi16(16))
        } else {
            _mm512_cvtepi8_epi16(_mm256_loadu_si256(b.add(2).cast()))
        }
    }
}

/// The 32 nibbles of a block's 16 quant bytes at `qs` as int16, in value
/// order: the low nibbles (values 0..16), then the high ones (16..32).
///
/// # Safety
/// `qs` points to 16 readable bytes; the caller is compiled with the
/// features of this module.
#[inline(always)]
unsafe fn block_nibbles(qs: *const u8) -> __m512i {
    // SAFETY: 16 readable bytes (the contract); an unaligned load.
    unsafe {
        let t = _mm512_cvtepu8_epi16(_mm256_broadcastsi128_si256(_mm_loadu_si128(qs.cast())));
        // Words 0..16 keep the low nibbles, 16..32 take the high ones.
        let t = _mm512_mask_srli_epi16::<4>(t, 0xFFFF_0000, t);
        _mm512_and_si512(t, _mm512_set1_epi16(0x0F))
    }
}

/// The stored quants of the pair of blocks of format `F` (Q5_0 or Q4_1) at
/// `b` (the first `n` of them, 1 or 2; the other's bytes are zero), as 64
/// bytes in value order: Q5_0's 5-bit `q` (`w = q - 16`), Q4_1's nibbles.
///
/// # Safety
/// `b` points to `n` whole blocks of the format; the caller is compiled with
/// the features of this module.
#[inline(always)]
unsafe fn nibble_pair<const F: u8>(b: *const u8, n: usize) -> __m512i {
    let qs_at = if F == F_Q5_0 { 6 } else { 4 };
    // SAFETY: the blocks are readable (the contract); unaligned loads, and
    // the second block is read only when it exists.
    unsafe {
        let qs0 = _mm_loadu_si128(b.add(qs_at).cast());
        let b1 = b.wrapping_add(block_bytes_of::<F>());
        let qs1 = if n == 2 {
            _mm_loadu_si128(b1.add(qs_at).cast())
        } else {
            _mm_setzero_si128()
        };
        let y = _mm256_inserti128_si256::<1>(_mm256_castsi128_si256(qs0), qs1);
        // 128-bit lanes [qs0, qs0, qs1, qs1]: lanes 1 and 3 take the high
        // nibbles (values 16..32 of their block), 0 and 2 the low ones.
        let z = _mm512_castsi256_si512(y);
        let z = _mm512_shuffle_i64x2::<0b01_01_00_00>(z, z);
        let z = _mm512_mask_srli_epi16::<4>(z, 0xFF00_FF00, z);
        let v = _mm512_and_si512(z, _mm512_set1_epi8(0x0F));
        if F != F_Q5_0 {
            return v;
        }
        let qh1 = if n == 2 {
            b1.add(2).cast::<u32>().read_unaligned()
        } else {
            0
        };
        let qh = u64::from(b.add(2).cast::<u32>().read_unaligned()) | u64::from(qh1) << 32;
        // Byte i's fifth bit is bit i of the two blocks' `qh`.
        _mm512_mask_add_epi8(v, qh, v, _mm512_set1_epi8(16))
    }
}

/// The sums of each half (8 lanes) of `p[0..8]`, as one vector: lane `4h +
/// r` holds the sum of half `h % 2` of `p[4 * (h / 2) + r]` (unpacks within
/// 128-bit lanes, then across them).
///
/// # Safety
/// The caller is compiled with this module's features.
#[inline(always)]
pub(super) unsafe fn half_sums(p: &[__m512i; 8]) -> __m512i {
    // SAFETY: the features per the contract.
    unsafe { half_sums_in(p) }
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
fn half_sums_in(p: &[__m512i; 8]) -> __m512i {
    let (a, b) = (quad_sums(&p[..4]), quad_sums(&p[4..]));
    // A half is two 128-bit lanes.
    _mm512_add_epi32(
        _mm512_shuffle_i32x4::<0b10_00_10_00>(a, b),
        _mm512_shuffle_i32x4::<0b11_01_11_01>(a, b),
    )
}

/// The first levels of the lane-sum trees: 128-bit lane `c` of the result
/// holds, in lane `4c + j`, the sum of lanes `4c..4c + 4` of `p[j]` (unpacks
/// within 128-bit lanes).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
pub(super) fn quad_sums(p: &[__m512i]) -> __m512i {
    let pair = |a: __m512i, b: __m512i| {
        _mm512_add_epi32(_mm512_unpacklo_epi32(a, b), _mm512_unpackhi_epi32(a, b))
    };
    let (a, b) = (pair(p[0], p[1]), pair(p[2], p[3]));
    _mm512_add_epi32(_mm512_unpacklo_epi64(a, b), _mm512_unpackhi_epi64(a, b))
}

/// The first `n` (<= 64) bytes as a load mask.
pub(super) fn byte_mask(n: usize) -> __mmask64 {
    if n >= 64 {
        !0
    } else {
        (1u64 << n) - 1
    }
}

/// The decode products (see [`super::i16::rows`]); false, doing nothing,
/// without the CPU features, for other formats or mismatched lengths.
pub(crate) fn rows(dtype: DType, w: &[u8], row_bytes: usize, acts: &ActsI16, out: Out) -> bool {
    let Some(shape) = shape(dtype, w, row_bytes, acts, super::i16::byte_products(dtype)) else {
        return false;
    };
    // SAFETY: `shape` checked the features and that every block and
    // activation the kernel reads lies within `w` and `acts`.
    unsafe {
        match dtype {
            DType::Q5_0 => rows_impl::<F_Q5_0>(w, &shape, acts, out),
            DType::Q8_0 => rows_impl::<F_Q8_0>(w, &shape, acts, out),
            DType::Q4_1 => rows_impl::<F_Q4_1>(w, &shape, acts, out),
            DType::Q4_K => super::x86_i16_k::rows_k::<false>(w, &shape, acts, out),
            _ => super::x86_i16_k::rows_k::<true>(w, &shape, acts, out),
        }
    }
    true
}

/// [`Shape::of`] where this CPU runs these kernels for `dtype`.
fn shape(dtype: DType, w: &[u8], row_bytes: usize, acts: &ActsI16, split: bool) -> Option<Shape> {
    if !available() || !super::i16::has_kernels(dtype) {
        return None;
    }
    Shape::of(dtype, w, row_bytes, acts, split)
}

/// The bytes of a block of format `F` (Q8_0, Q5_0 or Q4_1), as a constant
/// for the decode kernel's offsets.
const fn block_bytes_of<const F: u8>() -> usize {
    match F {
        F_Q5_0 => DType::Q5_0.block_bytes(),
        F_Q4_1 => DType::Q4_1.block_bytes(),
        _ => DType::Q8_0.block_bytes(),
    }
}

/// One decode row of `x` in the byte split (see [`ActsI16::split_row`]).
#[derive(Clone, Copy)]
pub(super) struct SplitRow<'a> {
    /// The rounded values.
    pub q: *const i16,
    /// Their low bytes.
    pub lo: *const u8,
    /// Their high bytes.
    pub hi: *const i8,
    /// Minus the sums of each 4 values.
    pub neg_quad_q: *const i32,
    /// The block scales.
    pub d: &'a [f32],
    /// The block sums.
    pub sums: &'a [f32],
}

impl<'a> SplitRow<'a> {
    /// Row `i` of `acts`, with its byte split when `split` (else those
    /// pointers dangle and must not be read).
    #[inline]
    pub fn of(acts: &'a ActsI16, i: usize, split: bool) -> SplitRow<'a> {
        let (lo, hi, nq): (&[u8], &[i8], &[i32]) = if split {
            acts.split_row(i)
        } else {
            (&[], &[], &[])
        };
        SplitRow {
            q: acts.q_row(i).as_ptr(),
            lo: lo.as_ptr(),
            hi: hi.as_ptr(),
            neg_quad_q: nq.as_ptr(),
            d: acts.d_row(i),
            sums: acts.sums_row(i),
        }
    }
}

/// The exact sums of 4 consecutive products of `q` (unsigned bytes, at
/// most 127) with activations `x = 256 * hi + lo` (see
/// [`ActsI16::split_row`]), plus `start`: `256 * sum(q * hi) + sum(q * lo)`,
/// two `vpdpbusd`.
///
/// # Safety
/// The caller is compiled with this module's features.
#[inline(always)]
pub(super) unsafe fn byte_products(
    q: __m512i,
    lo: __m512i,
    hi: __m512i,
    start: __m512i,
) -> __m512i {
    // SAFETY: the features per the contract.
    unsafe {
        let low = _mm512_dpbusd_epi32(start, lo, q);
        let high = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q, hi);
        _mm512_add_epi32(_mm512_slli_epi32::<8>(high), low)
    }
}

/// One step of a decode tile: blocks `k..k + step` (`step` <= 4) of the
/// tile's rows (starting at `row`) against one row of `x`, added to `acc`
/// (lane `bb * 4 + r` for block `k + bb` of row `r`; the lanes of blocks
/// past the step are left as they are): `fma(S, d_w d_x)`, then for Q4_1
/// `fma(-X, -m d_x)` (`m` its stored min, `X` the activation block's sum).
///
/// Q5_0 and Q4_1 take their block sums in bytes ([`byte_sums`]), Q8_0 in
/// words ([`q8_word_sums`]); all are exact, so the sums are the reference's.
///
/// # Safety
/// The caller is compiled with this module's features; the step's blocks
/// lie within the rows at `row` and `x` holds them (`Shape::of`).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn decode_step<const F: u8>(
    acc: __m512,
    row: &[*const u8; 4],
    k: usize,
    step: usize,
    x: SplitRow<'_>,
    (scale_words, spread): (__m512i, __m512i),
    dist: usize,
) -> __m512 {
    let block_bytes = block_bytes_of::<F>();
    // SAFETY: the features and bounds per the contract.
    unsafe {
        let len = step * block_bytes;
        for r in row {
            // A prefetch never faults: the address may lie past `w`.
            let at = r.wrapping_add(k * block_bytes + dist);
            for off in (0..len).step_by(64) {
                _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(off).cast());
            }
        }
        let sums = _mm512_cvtepi32_ps(if F == F_Q8_0 {
            q8_word_sums(row, k, step, x.q)
        } else {
            byte_sums::<F>(row, k, step, x)
        });
        // The scales (and Q4_1's mins, the next word): word `bb * 4 + r` is
        // block `bb`'s of row `r`, picked from the step's bytes of each row
        // (masked loads, so nothing past the step is read), where a gather
        // was a third of the time.
        let (ka, kb) = (byte_mask(len), byte_mask(len.saturating_sub(64)));
        let min_words = _mm512_add_epi16(scale_words, _mm512_set1_epi16(1));
        let (mut dw, mut mw) = (_mm512_setzero_si512(), _mm512_setzero_si512());
        for (r, at) in row.iter().enumerate() {
            let p = at.add(k * block_bytes);
            let a = _mm512_maskz_loadu_epi8(ka, p.cast());
            let b = _mm512_maskz_loadu_epi8(kb, p.wrapping_add(64).cast());
            let pick = _mm512_maskz_permutex2var_epi16(0x1111 << r, a, scale_words, b);
            dw = _mm512_or_si512(dw, pick);
            if F == F_Q4_1 {
                let pick = _mm512_maskz_permutex2var_epi16(0x1111 << r, a, min_words, b);
                mw = _mm512_or_si512(mw, pick);
            }
        }
        let dw = _mm512_cvtph_ps(_mm512_castsi512_si256(dw));
        let lanes = ((1u32 << (4 * step)) - 1) as u16;
        // The step's values of `v` (zero past it), spread to the lanes: a
        // masked load, where copying them out called memmove every step.
        let spread_of = |v: &[f32]| {
            let v = &v[k..k + step];
            let four = _mm_maskz_loadu_ps(((1u32 << step) - 1) as u8, v.as_ptr());
            _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(four))
        };
        let dx = spread_of(x.d);
        let acc = _mm512_mask3_fmadd_ps(sums, _mm512_mul_ps(dw, dx), acc, lanes);
        if F != F_Q4_1 {
            return acc;
        }
        // Q4_1's `w = d q + m`: the reference's min is `-m`, exactly.
        let sign = _mm512_set1_ps(-0.0);
        let neg_m = _mm512_xor_ps(_mm512_cvtph_ps(_mm512_castsi512_si256(mw)), sign);
        _mm512_mask3_fnmadd_ps(spread_of(x.sums), _mm512_mul_ps(neg_m, dx), acc, lanes)
    }
}

/// The exact block sums of a decode step of Q5_0 or Q4_1 (lane `bb * 4 +
/// r`), in bytes. With `x = 256 * hi + lo` and the stored quants `q` (Q5_0's
/// `w + 16`, 0..32, or Q4_1's nibbles, `w = q`), `sum(w * x) = 256 *
/// sum(q * hi) + sum(q * lo) - 16 * sum(x)` (without the last term for
/// Q4_1): each product is a `vpdpbusd` (unsigned bytes times signed bytes,
/// four per lane) over a pair of blocks, and `-16 * sum(x)` (per 4 values)
/// starts the low product. Every step is exact: the sums are the
/// reference's.
///
/// # Safety
/// As for [`decode_step`] (Q5_0 or Q4_1 rows).
#[inline(always)]
unsafe fn byte_sums<const F: u8>(
    row: &[*const u8; 4],
    k: usize,
    step: usize,
    x: SplitRow<'_>,
) -> __m512i {
    let block_bytes = block_bytes_of::<F>();
    // SAFETY: the features and bounds per the contract.
    unsafe {
        let mut p = [_mm512_setzero_si512(); 8];
        for pair in 0..2 {
            let n = step.saturating_sub(2 * pair).min(2);
            if n == 0 {
                break;
            }
            let at = (k + 2 * pair) * BLOCK;
            // Values past the step load as zero, so the weights there (zero
            // too) add nothing.
            let m = byte_mask(n * BLOCK);
            let lo = _mm512_maskz_loadu_epi8(m, x.lo.add(at).cast());
            let hi = _mm512_maskz_loadu_epi8(m, x.hi.add(at).cast());
            let offset = if F == F_Q5_0 {
                let quads = if n == 2 { 0xFFFF } else { 0x00FF };
                let s = _mm512_maskz_loadu_epi32(quads, x.neg_quad_q.add(at / 4).cast());
                _mm512_slli_epi32::<4>(s)
            } else {
                _mm512_setzero_si512()
            };
            for (r, at_row) in row.iter().enumerate() {
                let q = nibble_pair::<F>(at_row.add((k + 2 * pair) * block_bytes), n);
                p[pair * 4 + r] = byte_products(q, lo, hi, offset);
            }
        }
        half_sums(&p)
    }
}

/// The exact block sums of a decode step of Q8_0 (lane `bb * 4 + r`): one
/// `vpmaddwd` of a block's weights (widened to int16) and its rounded
/// activations per block and row, and the sums of their 16 lanes. (The
/// byte products of Q5_0 were slower here: Q8_0 needs no forming.)
///
/// # Safety
/// As for [`decode_step`] (Q8_0 rows); `xq` holds the row's values.
#[inline(always)]
unsafe fn q8_word_sums(row: &[*const u8; 4], k: usize, step: usize, xq: *const i16) -> __m512i {
    let block_bytes = block_bytes_of::<F_Q8_0>();
    // SAFETY: the features and bounds per the contract.
    unsafe {
        let mut p = [_mm512_setzero_si512(); 16];
        for bb in 0..step {
            let xv = _mm512_loadu_si512(xq.add((k + bb) * BLOCK).cast());
            for (r, at_row) in row.iter().enumerate() {
                let b = at_row.add((k + bb) * block_bytes);
                p[bb * 4 + r] = _mm512_madd_epi16(block_weights::<false>(b), xv);
            }
        }
        lane_sums(&p)
    }
}

/// The sums of all 16 lanes of each of `p[0..16]`, as one vector: lane `l`
/// holds the sum of `p[l]` (unpacks within 128-bit lanes, then across them).
///
/// # Safety
/// The caller is compiled with this module's features.
#[inline(always)]
unsafe fn lane_sums(p: &[__m512i; 16]) -> __m512i {
    // SAFETY: the features per the contract.
    unsafe { lane_sums_in(p) }
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
fn lane_sums_in(p: &[__m512i; 16]) -> __m512i {
    let l2: [__m512i; 4] = core::array::from_fn(|k| quad_sums(&p[4 * k..4 * k + 4]));
    // Each 128-bit lane of l2[k] now holds partial sums of p[4k..4k + 4].
    let mut l3 = [_mm512_setzero_si512(); 2];
    for (k, v) in l3.iter_mut().enumerate() {
        let (a, b) = (l2[2 * k], l2[2 * k + 1]);
        *v = _mm512_add_epi32(
            _mm512_shuffle_i32x4::<0b01_00_01_00>(a, b),
            _mm512_shuffle_i32x4::<0b11_10_11_10>(a, b),
        );
    }
    _mm512_add_epi32(
        _mm512_shuffle_i32x4::<0b10_00_10_00>(l3[0], l3[1]),
        _mm512_shuffle_i32x4::<0b11_01_11_01>(l3[0], l3[1]),
    )
}

/// # Safety
/// The CPU has this module's features, and `shape` was checked by
/// [`Shape::of`] for `w` and `acts`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
unsafe fn rows_impl<const F: u8>(w: &[u8], shape: &Shape, acts: &ActsI16, out: Out) {
    let Shape {
        block_bytes,
        blocks,
        nrows,
        ..
    } = *shape;
    assert_eq!(
        block_bytes,
        block_bytes_of::<F>(),
        "the format's block length"
    );
    // Word `bb * 4 + r` (any r): the word of block `bb`'s scale among a
    // step's bytes (block lengths are even).
    let at: [i16; 32] = core::array::from_fn(|l| ((l % 16 / 4) * block_bytes / 2) as i16);
    // SAFETY: 32 readable i16s; loadu has no alignment requirement.
    let scale_words = unsafe { _mm512_loadu_si512(at.as_ptr().cast()) };
    let spread = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
    let ahead = super::x86::Ahead::new(shape.row_bytes);
    // Once: `rows` divides, and the tile loop need not.
    let rows = acts.rows();
    let mut j = 0;
    while j < nrows {
        let (row, dist) = tile_rows(w, shape, ahead, j);
        for i in 0..rows {
            // Q8_0 does not read the byte split (`super::i16::decode_layout`).
            let x = SplitRow::of(acts, i, F != F_Q8_0);
            // Lane `bb * 4 + r`: row r's sum of the blocks `bb` mod 4.
            let mut acc = _mm512_setzero_ps();
            let mut k = 0;
            let consts = (scale_words, spread);
            while k + 4 <= blocks {
                // SAFETY: blocks k..k + 4 exist (`Shape::of`); the features.
                acc = unsafe { decode_step::<F>(acc, &row, k, 4, x, consts, dist) };
                k += 4;
            }
            if k < blocks {
                // SAFETY: as above, for the last blocks.
                acc = unsafe { decode_step::<F>(acc, &row, k, blocks - k, x, consts, dist) };
            }
            put_chains(acc, out, i, j, nrows);
        }
        j += 4;
    }
}

/// The 4 weight rows of the decode tile at row `j` (rows past the end repeat
/// the last one; their outputs are dropped), and its prefetch distance.
#[inline(always)]
pub(super) fn tile_rows(
    w: &[u8],
    shape: &Shape,
    ahead: super::x86::Ahead<4>,
    j: usize,
) -> ([*const u8; 4], usize) {
    let (nrows, row_bytes) = (shape.nrows, shape.row_bytes);
    let row = core::array::from_fn(|r| w[(j + r).min(nrows - 1) * row_bytes..].as_ptr());
    (row, ahead.distance((nrows - j).saturating_sub(4)))
}

/// Writes the outputs of a decode tile: row `r` of the 4 (those below
/// `nrows`) is `(a0 + a1) + (a2 + a3)` of its chains `a_t`, lane `4t + r`
/// of `acc`, at output `(i, j + r)`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
pub(super) fn put_chains(acc: __m512, out: Out, i: usize, j: usize, nrows: usize) {
    let (a0, a1) = (
        _mm512_extractf32x4_ps::<0>(acc),
        _mm512_extractf32x4_ps::<1>(acc),
    );
    let (a2, a3) = (
        _mm512_extractf32x4_ps::<2>(acc),
        _mm512_extractf32x4_ps::<3>(acc),
    );
    let acc = _mm_add_ps(_mm_add_ps(a0, a1), _mm_add_ps(a2, a3));
    let mut v = [0.0f32; 4];
    // SAFETY: 4 writable f32s.
    unsafe { _mm_storeu_ps(v.as_mut_ptr(), acc) };
    if nrows - j >= 4 {
        // One store: the loop below became a call to memmove.
        out.put4(i, j, v);
        return;
    }
    for (r, vr) in v.iter().enumerate().take(nrows - j) {
        out.put(i, j + r, *vr);
    }
}

/// Weight rows per prefill panel (two 16-lane vectors).
const PANEL: usize = 32;

/// A repacked prefill panel (see [`pack`]).
#[derive(Default)]
struct Packed {
    /// Pairs of int16 weights.
    pairs: Vec<i32>,
    /// Scales per group and row.
    scales: Vec<f32>,
    /// Mins per group and row (Q4_K only).
    mins: Vec<f32>,
}

thread_local! {
    /// This thread's repacked panel.
    static PACKED: std::cell::RefCell<Packed> = std::cell::RefCell::new(Packed::default());
}

/// The formats of [`pack`], as its constant parameter.
const F_Q8_0: u8 = 0;
const F_Q5_0: u8 = 1;
const F_Q4_K: u8 = 2;
const F_Q6_K: u8 = 3;
const F_Q4_1: u8 = 4;

/// The prefill products (see [`super::i16::gemm`]); false, doing nothing,
/// as for [`rows`].
pub(crate) fn gemm(dtype: DType, w: &[u8], row_bytes: usize, acts: &ActsI16, out: Out) -> bool {
    let Some(shape) = shape(dtype, w, row_bytes, acts, false) else {
        return false;
    };
    let groups = acts.cols / super::i16::group_len(dtype);
    let run = |p: &mut Packed| {
        p.pairs.resize(acts.cols / 2 * PANEL, 0);
        p.scales.resize(groups * PANEL, 0.0);
        let mins = if super::i16::has_mins(dtype) {
            groups
        } else {
            0
        };
        p.mins.resize(mins * PANEL, 0.0);
        let mut j = 0;
        while j < shape.nrows {
            // SAFETY: `shape` checked the features and the lengths, and
            // `p` holds a whole panel of them.
            unsafe {
                match dtype {
                    DType::Q5_0 => {
                        pack::<F_Q5_0>(w, &shape, j, p);
                        panel::<32, false>(&shape, p, acts, out, j);
                    }
                    DType::Q8_0 => {
                        pack::<F_Q8_0>(w, &shape, j, p);
                        panel::<32, false>(&shape, p, acts, out, j);
                    }
                    DType::Q4_1 => {
                        pack::<F_Q4_1>(w, &shape, j, p);
                        panel::<32, true>(&shape, p, acts, out, j);
                    }
                    DType::Q4_K => {
                        pack::<F_Q4_K>(w, &shape, j, p);
                        panel::<32, true>(&shape, p, acts, out, j);
                    }
                    _ => {
                        pack::<F_Q6_K>(w, &shape, j, p);
                        panel::<16, false>(&shape, p, acts, out, j);
                    }
                }
            }
            j += PANEL;
        }
    };
    PACKED.with(|cell| match cell.try_borrow_mut() {
        Ok(mut p) => run(&mut p),
        // Only if `run` itself came back here, which it never does.
        Err(_) => run(&mut Packed::default()),
    });
    true
}

/// The 32 integer weights of 32-value block `t` of the block of format `F`
/// at `b` (`t` = 0 but for the K-quants' super-blocks), as int16.
///
/// # Safety
/// `b` points to a whole block of the format; the caller is compiled with
/// the features of this module.
#[inline(always)]
unsafe fn block_weights_of<const F: u8>(b: *const u8, t: usize) -> __m512i {
    // SAFETY: the block is readable (the contract); unaligned loads within it.
    unsafe {
        let nibble = |v: __m512i, high: bool| {
            if high {
                _mm512_srli_epi16::<4>(v)
            } else {
                _mm512_and_si512(v, _mm512_set1_epi16(0x0F))
            }
        };
        match F {
            F_Q8_0 => block_weights::<false>(b),
            F_Q5_0 => block_weights::<true>(b),
            F_Q4_1 => block_nibbles(b.add(4)),
            F_Q4_K => {
                // Values 64c..64c + 32 are the low nibbles of qs[32c..], the
                // next 32 their high nibbles.
                let qs = _mm256_loadu_si256(b.add(16 + 32 * (t / 2)).cast());
                nibble(_mm512_cvtepu8_epi16(qs), t % 2 == 1)
            }
            _ => {
                // Block t = 4n + k: nibbles of ql[64n + 32 (k % 2)..] (high
                // for k >= 2), bits 2k, 2k + 1 of qh[32n..] above them.
                let (n, k) = (t / 4, t % 4);
                let ql = _mm256_loadu_si256(b.add(64 * n + 32 * (k % 2)).cast());
                let qh = _mm256_loadu_si256(b.add(128 + 32 * n).cast());
                let low = nibble(_mm512_cvtepu8_epi16(ql), k >= 2);
                let h =
                    _mm512_srlv_epi16(_mm512_cvtepu8_epi16(qh), _mm512_set1_epi16(2 * k as i16));
                let h = _mm512_slli_epi16::<4>(_mm512_and_si512(h, _mm512_set1_epi16(3)));
                _mm512_sub_epi16(_mm512_or_si512(low, h), _mm512_set1_epi16(32))
            }
        }
    }
}

/// Repacks rows `j..j + PANEL` (the last row repeated past the end):
/// `pairs[(b * 16 + p) * PANEL + r]` holds values `2p, 2p + 1` of 32-value
/// block `b` of row `r` as two int16, and `scales[g * PANEL + r]` (and
/// `mins`) the scale (and min) of its group `g`.
///
/// # Safety
/// As for [`rows_impl`]; `p` holds a panel of `shape` for format `F`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
unsafe fn pack<const F: u8>(w: &[u8], shape: &Shape, j: usize, p: &mut Packed) {
    let base = w.as_ptr();
    let bb = shape.block_bytes;
    let (per_block, kquant) = if F == F_Q6_K || F == F_Q4_K {
        (8, true)
    } else {
        (1, false)
    };
    let blocks = shape.blocks * per_block;
    let Packed {
        pairs,
        scales,
        mins,
    } = p;
    let groups_per_block = if F == F_Q6_K { 16 } else { 8 };
    assert!(
        pairs.len() >= blocks * 16 * PANEL
            && scales.len() >= blocks * (if F == F_Q6_K { 2 } else { 1 }) * PANEL
            && (F != F_Q4_K && F != F_Q4_1 || mins.len() >= blocks * PANEL)
    );
    for half in 0..PANEL / 16 {
        let row: [usize; 16] =
            core::array::from_fn(|r| (j + half * 16 + r).min(shape.nrows - 1) * shape.row_bytes);
        for b in 0..blocks {
            let (unit, t) = (b / per_block, b % per_block);
            let mut v = [_mm512_setzero_si512(); 16];
            let (mut d, mut m) = ([0u16; 16], [0u16; 16]);
            for r in 0..16 {
                let at = row[r] + unit * bb;
                // Sixteen rows are more streams than the hardware follows.
                let ahead = if kquant { 2 * bb + 32 * t } else { 8 * bb };
                _mm_prefetch::<_MM_HINT_T0>(base.wrapping_add(at + ahead).cast());
                // SAFETY: a whole block within `w` (row < nrows, unit < blocks).
                v[r] = unsafe { block_weights_of::<F>(base.add(at), t) };
                if !kquant {
                    d[r] = u16::from_le_bytes([w[at], w[at + 1]]);
                    m[r] = u16::from_le_bytes([w[at + 2], w[at + 3]]);
                }
            }
            // Column p of the 16 x 16 pairs is pair p of the 16 rows.
            let t = transpose16(&v);
            // SAFETY: in bounds (asserted above): 16 i32s from
            // (b * 16 + p) * PANEL + half * 16, and 16 f32s from
            // b * PANEL + half * 16.
            unsafe {
                for (p, tp) in t.iter().enumerate() {
                    let at = pairs.as_mut_ptr().add((b * 16 + p) * PANEL + half * 16);
                    _mm512_storeu_si512(at.cast(), *tp);
                }
                if !kquant {
                    let dv = _mm512_cvtph_ps(_mm256_loadu_si256(d.as_ptr().cast()));
                    _mm512_storeu_ps(scales.as_mut_ptr().add(b * PANEL + half * 16), dv);
                }
                if F == F_Q4_1 {
                    // `w = d q + m`: the reference's min is `-m`, exactly.
                    let mv = _mm512_cvtph_ps(_mm256_loadu_si256(m.as_ptr().cast()));
                    let neg = _mm512_xor_ps(mv, _mm512_set1_ps(-0.0));
                    _mm512_storeu_ps(mins.as_mut_ptr().add(b * PANEL + half * 16), neg);
                }
            }
        }
        if kquant {
            // The K-quants' scales (and mins) per group, from the
            // reference's unpacking: once per row and super-block.
            for (r, at) in row.iter().enumerate() {
                for unit in 0..shape.blocks {
                    let ub = &w[at + unit * bb..at + (unit + 1) * bb];
                    let dtype = if F == F_Q4_K {
                        DType::Q4_K
                    } else {
                        DType::Q6_K
                    };
                    let (sc, mn) = super::i16::block_scales(dtype, ub);
                    for g in 0..groups_per_block {
                        let k = ((unit * groups_per_block + g) * PANEL) + half * 16 + r;
                        scales[k] = sc[g];
                        if F == F_Q4_K {
                            mins[k] = mn[g];
                        }
                    }
                }
            }
        }
    }
}

/// The 16 x 16 transpose of 32-bit lanes: lane `r` of result `l` is lane
/// `l` of `v[r]` (unpacks within 128-bit lanes, then a 4 x 4 transpose of
/// the 128-bit lanes).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
fn transpose16(v: &[__m512i; 16]) -> [__m512i; 16] {
    let mut s1 = [_mm512_setzero_si512(); 16];
    for k in 0..8 {
        s1[2 * k] = _mm512_unpacklo_epi32(v[2 * k], v[2 * k + 1]);
        s1[2 * k + 1] = _mm512_unpackhi_epi32(v[2 * k], v[2 * k + 1]);
    }
    // s2[4k + q], 128-bit lane c: lane 4c + q of rows 4k..4k + 4.
    let mut s2 = [_mm512_setzero_si512(); 16];
    for k in 0..4 {
        let (a, b, c, d) = (s1[4 * k], s1[4 * k + 2], s1[4 * k + 1], s1[4 * k + 3]);
        s2[4 * k] = _mm512_unpacklo_epi64(a, b);
        s2[4 * k + 1] = _mm512_unpackhi_epi64(a, b);
        s2[4 * k + 2] = _mm512_unpacklo_epi64(c, d);
        s2[4 * k + 3] = _mm512_unpackhi_epi64(c, d);
    }
    let mut out = [_mm512_setzero_si512(); 16];
    for q in 0..4 {
        let x = [s2[q], s2[4 + q], s2[8 + q], s2[12 + q]];
        let p0 = _mm512_shuffle_i32x4::<0x44>(x[0], x[1]);
        let p1 = _mm512_shuffle_i32x4::<0xEE>(x[0], x[1]);
        let p2 = _mm512_shuffle_i32x4::<0x44>(x[2], x[3]);
        let p3 = _mm512_shuffle_i32x4::<0xEE>(x[2], x[3]);
        out[q] = _mm512_shuffle_i32x4::<0x88>(p0, p2);
        out[4 + q] = _mm512_shuffle_i32x4::<0xDD>(p0, p2);
        out[8 + q] = _mm512_shuffle_i32x4::<0x88>(p1, p3);
        out[12 + q] = _mm512_shuffle_i32x4::<0xDD>(p1, p3);
    }
    out
}

/// `acc += ` the pair sums of `w * x` (int16 pairs into int32 lanes):
/// `vpdpwssd`, written out because the compiler otherwise splits it into a
/// multiply-add and an add (half the throughput).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
fn dpwssd(acc: &mut __m512i, w: __m512i, x: __m512i) {
    // SAFETY: one register-only instruction of the features this function
    // is compiled for (so only called where the CPU has them).
    unsafe {
        core::arch::asm!(
            "vpdpwssd {a}, {w}, {x}",
            a = inout(zmm_reg) *acc,
            w = in(zmm_reg) w,
            x = in(zmm_reg) x,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
}

/// Rows of `x` per prefill tile.
const MR: usize = 6;

/// Groups per stretch of a prefill tile (a multiple of 4, so that group
/// `c0 + t` is in chain `t`). Taking each chain's groups over the whole row
/// (4 passes, 4 groups apart) ran prefill 3-9% slower; 32 groups (64 KB of
/// pairs for 32-value groups) measured faster than 8 or 16.
const CHUNK_GROUPS: usize = 32;
const _: () = assert!(CHUNK_GROUPS.is_multiple_of(4));

/// Every row of `acts` against a packed panel (rows `j..`), with groups of
/// `G` values, and mins when `MINS`.
///
/// # Safety
/// As for [`pack`], after it filled `p`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
unsafe fn panel<const G: usize, const MINS: bool>(
    shape: &Shape,
    p: &Packed,
    acts: &ActsI16,
    out: Out,
    j: usize,
) {
    let m = acts.rows();
    let mut i = 0;
    while i < m {
        // SAFETY: forwarded.
        unsafe {
            match m - i {
                1 => tile::<1, G, MINS>(shape, p, acts, out, i, j),
                2 => tile::<2, G, MINS>(shape, p, acts, out, i, j),
                3 => tile::<3, G, MINS>(shape, p, acts, out, i, j),
                4 => tile::<4, G, MINS>(shape, p, acts, out, i, j),
                5 => tile::<5, G, MINS>(shape, p, acts, out, i, j),
                _ => tile::<MR, G, MINS>(shape, p, acts, out, i, j),
            }
        }
        i += MR;
    }
}

/// Rows `i0..i0 + T` of `acts` against the packed panel of rows `j..`.
///
/// # Safety
/// As for [`panel`], with `i0 + T <= acts.rows()`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
unsafe fn tile<const T: usize, const G: usize, const MINS: bool>(
    shape: &Shape,
    packed: &Packed,
    acts: &ActsI16,
    out: Out,
    i0: usize,
    j: usize,
) {
    let (xq, xd, xs) = acts.tile_rows::<T>(i0);
    let (pp, sp, mp) = (
        packed.pairs.as_ptr(),
        packed.scales.as_ptr(),
        packed.mins.as_ptr(),
    );
    let groups = acts.cols / G;
    assert!(
        packed.pairs.len() >= acts.cols / 2 * PANEL
            && packed.scales.len() >= groups * PANEL
            && (!MINS || packed.mins.len() >= groups * PANEL)
    );
    // The sums of the groups `t` mod 4, for each t (see `super::i16`), over
    // a stretch of groups at a time: one chain in registers while it takes
    // its groups of the stretch, and the stretch's pairs still cached for the
    // next chain. Between stretches a chain's sums are kept in `part`, loaded
    // and stored as vectors: kept as vectors indexed by `t`, every group's
    // update went through memory (prefill 2-5% slower), and copied as arrays
    // they were a library `memcpy` each way.
    let mut part = [[[0.0f32; PANEL]; T]; 4];
    for c0 in (0..groups).step_by(CHUNK_GROUPS) {
        for (t, kept) in part.iter_mut().enumerate() {
            let mut acc = [[_mm512_setzero_ps(); 2]; T];
            // The first stretch starts from zeros in registers: loading the
            // zeros just stored stalled (4% of the tiles' time).
            if c0 > 0 {
                for (a, k) in acc.iter_mut().zip(kept.iter()) {
                    // SAFETY: 32 readable f32s.
                    *a = unsafe {
                        [
                            _mm512_loadu_ps(k.as_ptr()),
                            _mm512_loadu_ps(k.as_ptr().add(16)),
                        ]
                    };
                }
            }
            let end = (c0 + CHUNK_GROUPS).min(groups);
            for g in (c0 + t..end).step_by(4) {
                // The group this tile takes next: the chain's next (4 groups
                // on, 8 KB of pairs for 32-value groups), else the next
                // chain's first (after chain 3, the next stretch's first).
                // Each of its pairs (128 bytes) is fetched as the same pair
                // of this group is read: the hardware does not follow the
                // jumps. Tiles ran 1-6% faster.
                let next = if g + 4 < end {
                    g + 4
                } else if t < 3 {
                    c0 + t + 1
                } else {
                    end
                };
                let ahead = pp.wrapping_add(next * G / 2 * PANEL);
                let mut sums = [[_mm512_setzero_si512(); 2]; T];
                for p in g * G / 2..(g + 1) * G / 2 {
                    // A hint only: it never faults, even past the end of `pairs`.
                    let line = ahead.wrapping_add((p - g * G / 2) * PANEL);
                    _mm_prefetch::<_MM_HINT_T0>(line.cast());
                    _mm_prefetch::<_MM_HINT_T0>(line.wrapping_add(16).cast());
                    // SAFETY: (p + 1) * PANEL <= pairs.len() (asserted).
                    let (w0, w1) = unsafe {
                        let at = pp.add(p * PANEL);
                        (
                            _mm512_loadu_si512(at.cast()),
                            _mm512_loadu_si512(at.add(16).cast()),
                        )
                    };
                    for i in 0..T {
                        // SAFETY: values 2p, 2p + 1 of row i (p < cols / 2).
                        let x = _mm512_set1_epi32(unsafe { xq[i].add(p).read_unaligned() });
                        dpwssd(&mut sums[i][0], w0, x);
                        dpwssd(&mut sums[i][1], w1, x);
                    }
                }
                // SAFETY: (g + 1) * PANEL <= scales.len() (and mins.len()).
                let (d0, d1) = unsafe {
                    let at = sp.add(g * PANEL);
                    (_mm512_loadu_ps(at), _mm512_loadu_ps(at.add(16)))
                };
                let b = g * G / BLOCK;
                for i in 0..T {
                    let dx = _mm512_set1_ps(xd[i][b]);
                    let (s0, s1) = (
                        _mm512_cvtepi32_ps(sums[i][0]),
                        _mm512_cvtepi32_ps(sums[i][1]),
                    );
                    acc[i][0] = _mm512_fmadd_ps(s0, _mm512_mul_ps(d0, dx), acc[i][0]);
                    acc[i][1] = _mm512_fmadd_ps(s1, _mm512_mul_ps(d1, dx), acc[i][1]);
                }
                if MINS {
                    // SAFETY: as for the scales.
                    let (m0, m1) = unsafe {
                        let at = mp.add(g * PANEL);
                        (_mm512_loadu_ps(at), _mm512_loadu_ps(at.add(16)))
                    };
                    for i in 0..T {
                        let (dx, sx) = (_mm512_set1_ps(xd[i][b]), _mm512_set1_ps(xs[i][b]));
                        acc[i][0] = _mm512_fnmadd_ps(sx, _mm512_mul_ps(m0, dx), acc[i][0]);
                        acc[i][1] = _mm512_fnmadd_ps(sx, _mm512_mul_ps(m1, dx), acc[i][1]);
                    }
                }
            }
            for (a, k) in acc.iter().zip(kept.iter_mut()) {
                // SAFETY: 32 writable f32s.
                unsafe {
                    _mm512_storeu_ps(k.as_mut_ptr(), a[0]);
                    _mm512_storeu_ps(k.as_mut_ptr().add(16), a[1]);
                }
            }
        }
    }
    let live = (shape.nrows - j).min(PANEL);
    let [p0, p1, p2, p3] = &part;
    let chains = p0.iter().zip(p1).zip(p2).zip(p3);
    for (i, (((a, b), c), d)) in chains.enumerate() {
        // SAFETY: 32 readable f32s in each.
        let load = |k: &[f32; PANEL], v: usize| unsafe { _mm512_loadu_ps(k.as_ptr().add(16 * v)) };
        let sum = |v: usize| {
            _mm512_add_ps(
                _mm512_add_ps(load(a, v), load(b, v)),
                _mm512_add_ps(load(c, v), load(d, v)),
            )
        };
        let a = [sum(0), sum(1)];
        let mut v = [0.0f32; PANEL];
        // SAFETY: 32 writable f32s.
        unsafe {
            _mm512_storeu_ps(v.as_mut_ptr(), a[0]);
            _mm512_storeu_ps(v.as_mut_ptr().add(16), a[1]);
        }
        out.put_run(i0 + i, j, &v, live);
    }
}
