//! The int16 exact products (see [`super::i16`]) at the AVX2 level (with FMA
//! and F16C), for Q4_1 (most of SmolLM2's weights), Q5_0 (most of
//! Qwen2.5's, and Gemma 3's after its embeddings), Q8_0 (the three models'
//! embeddings, which are also their output projections), Q4_K and Q6_K (the
//! decode steps and the prefill repacking of the K-quants are in
//! [`super::x86_i16_avx2_k`]). AVX2 has no VNNI, so
//! the integer sums come from `vpmaddwd` (pairs of int16 products into int32
//! lanes) and `vpaddd`. With these kernels for Q8_0 rather than f32
//! activations, whole-model decode ran 6-15% faster at 1 thread and 2-8% at
//! 2 on an AMD EPYC (AVX2 only), where the f32 kernel's byte-to-float
//! conversions cost more than the int16 products.
//!
//! - Decode ([`rows`]): a tile of 4 weight rows and 2 blocks (a K-quant
//!   super-block: 4 pairs of groups of 32 values). Each row's two
//!   blocks share a vector, one per 128-bit half, and their quants become
//!   int16 by shifts and masks alone (Q5_0's fifth bits by a byte shuffle
//!   and a compare per 16 values), with no byte-widening shuffles: the
//!   activations are reordered once per product to match ([`Pair`]). Three
//!   `vphaddd` give the 8 exact block sums of the 4 rows (Q5_0's stored
//!   quants are `w + 16`: minus 16 times the activation block's sum), and
//!   group `g` (block, or K-quant group) goes to chain `g mod 4` of the
//!   reference's arithmetic. A few rows of activations (a short prompt) go
//!   through it too, up to 4 per tile, which share the weights' words.
//! - Prefill ([`gemm`]): 16 weight rows are repacked as int16 pairs (their
//!   quants transposed as bytes, then widened, so that one vector holds a
//!   pair of 8 rows; prefetched ahead), and each pair of
//!   activations, broadcast, meets them with `vpmaddwd`: 16 rows' group sums
//!   in lanes (per block of 32, or K-quant group of 32 or 16), scaled per
//!   group as decode scales them.
//!
//! Integer sums do not depend on their grouping, so both kernels have the
//! bits of [`super::i16::dot_ref`].

use super::i16::{block_scale, ActsI16, Shape, BLOCK};
use crate::dtype::DType;
use crate::matmul::Out;
use core::arch::x86_64::*;

/// Whether this CPU runs these kernels (pulp's V3 level: AVX2, FMA, F16C).
pub(crate) fn available() -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OK.get_or_init(|| pulp::x86::V3::try_new().is_some())
}

/// The formats these kernels take.
pub(crate) fn has_kernels(dtype: DType) -> bool {
    matches!(
        dtype,
        DType::Q8_0 | DType::Q4_1 | DType::Q5_0 | DType::Q4_K | DType::Q6_K
    )
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

#[target_feature(enable = "avx2,fma,f16c")]
fn quantize_impl(x: &[f32], q: &mut [i16], d: &mut [f32], sums: &mut [f32]) {
    let magnitude = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFF_FFFF));
    for (((xb, qb), db), sb) in x
        .chunks_exact(BLOCK)
        .zip(q.chunks_exact_mut(BLOCK))
        .zip(d.iter_mut())
        .zip(sums.iter_mut())
    {
        // SAFETY: 32 readable f32s; loadu has no alignment requirement.
        let v: [__m256; 4] =
            core::array::from_fn(|k| unsafe { _mm256_loadu_ps(xb[8 * k..].as_ptr()) });
        let unordered = v.iter().fold(_mm256_setzero_ps(), |u, vk| {
            _mm256_or_ps(u, _mm256_cmp_ps::<_CMP_UNORD_Q>(*vk, *vk))
        });
        let nan = _mm256_movemask_ps(unordered) != 0;
        let a = v.map(|vk| _mm256_and_ps(vk, magnitude));
        // The largest magnitude is exact in any order (NaNs are `nan`'s).
        let m8 = _mm256_max_ps(_mm256_max_ps(a[0], a[1]), _mm256_max_ps(a[2], a[3]));
        let m4 = _mm_max_ps(_mm256_castps256_ps128(m8), _mm256_extractf128_ps::<1>(m8));
        let m2 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        let amax = _mm_cvtss_f32(_mm_max_ss(m2, _mm_shuffle_ps::<1>(m2, m2)));
        let bad = nan || !amax.is_finite();
        let (scale, mul) = block_scale(amax, bad);
        *db = scale;
        if bad {
            qb.fill(0);
            *sb = 0.0;
            continue;
        }
        let m = _mm256_set1_ps(mul);
        // Rounded to nearest, ties to even (the default rounding mode), and
        // within +-32767, so the saturating narrowing is exact; the packs
        // interleave 128-bit lanes, which the permutes undo.
        let r = v.map(|vk| _mm256_cvtps_epi32(_mm256_mul_ps(vk, m)));
        let q0 = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packs_epi32(r[0], r[1]));
        let q1 = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packs_epi32(r[2], r[3]));
        // The block's exact sum (at most 32 * 32767: exact as an f32).
        let ones = _mm256_set1_epi16(1);
        let s8 = _mm256_add_epi32(_mm256_madd_epi16(q0, ones), _mm256_madd_epi16(q1, ones));
        *sb = hsum8(s8) as f32;
        // SAFETY: 32 writable i16s; storeu has no alignment requirement.
        unsafe {
            _mm256_storeu_si256(qb.as_mut_ptr().cast(), q0);
            _mm256_storeu_si256(qb.as_mut_ptr().add(16).cast(), q1);
        }
    }
}

/// The sum of the 8 lanes of `v` (exact: integer adds).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum8(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32::<1>(s)))
}

/// [`Shape::of`] where this CPU runs these kernels for `dtype`.
fn shape(dtype: DType, w: &[u8], row_bytes: usize, acts: &ActsI16) -> Option<Shape> {
    if !available() || !has_kernels(dtype) {
        return None;
    }
    Shape::of(dtype, w, row_bytes, acts, false)
}

/// A format of 32-value blocks with an f16 scale `d` in their first two
/// bytes (Q4_1, Q5_0), as these kernels read it.
trait Blocks {
    /// The format.
    const DTYPE: DType;
    /// Whether `w = d q + m` with an f16 `m` in bytes 2..4 (Q4_1); else
    /// `w = d (q - OFFSET)`.
    const MINS: bool;
    /// The bias of the stored quants `q` (Q5_0's 16).
    const OFFSET: i32;

    /// The block's stored quants `q` as bytes: byte `l` of the first vector
    /// is value `l`, of the second value `16 + l`.
    ///
    /// # Safety
    /// `b` points to a whole block; the caller has this module's features.
    unsafe fn block_bytes(b: *const u8) -> (__m128i, __m128i);

    /// 16 stored quants (bytes, as [`Blocks::block_bytes`] gives them) as
    /// the integer weights `q - OFFSET` in int16.
    ///
    /// # Safety
    /// The caller has this module's features.
    unsafe fn widen(q: __m128i) -> __m256i;

    /// The stored quants `q` of the blocks at `a` and `b` in the order of
    /// [`Pair::q`] (`head`: the first 16 bytes of each, as [`halves`]).
    ///
    /// # Safety
    /// Whole blocks at `a` and `b`; the caller has this module's features.
    unsafe fn pair_words(a: *const u8, b: *const u8, head: __m256i) -> [__m256i; 4];
}

/// Q4_1: `d`, `m`, then 16 bytes of nibbles (value `l` in byte `l`'s low
/// nibble, `l + 16` in its high one).
struct Q41;

impl Blocks for Q41 {
    const DTYPE: DType = DType::Q4_1;
    const MINS: bool = true;
    const OFFSET: i32 = 0;

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn block_bytes(b: *const u8) -> (__m128i, __m128i) {
        // SAFETY: the block is readable (the contract); an unaligned load
        // within it.
        let qs = unsafe { _mm_loadu_si128(b.add(4).cast()) };
        let low = _mm_set1_epi8(0x0F);
        (
            _mm_and_si128(qs, low),
            _mm_and_si128(_mm_srli_epi16::<4>(qs), low),
        )
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn widen(q: __m128i) -> __m256i {
        _mm256_cvtepu8_epi16(q)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn pair_words(a: *const u8, b: *const u8, _head: __m256i) -> [__m256i; 4] {
        // SAFETY: readable blocks (the contract).
        let w = unsafe { halves(a, b, 4) };
        // Word j: byte 2j holds values 2j (low nibble) and 2j + 16, byte
        // 2j + 1 values 2j + 1 and 2j + 17.
        let nib = _mm256_set1_epi16(0x0F);
        [
            _mm256_and_si256(w, nib),
            _mm256_and_si256(_mm256_srli_epi16::<8>(w), nib),
            _mm256_and_si256(_mm256_srli_epi16::<4>(w), nib),
            _mm256_srli_epi16::<12>(w),
        ]
    }
}

/// Q5_0: `d`, 32 fifth bits `qh` (bit `l` of value `l`), then 16 bytes of
/// nibbles as Q4_1's; `q` is 0..32 and `w = d (q - 16)`.
struct Q50;

impl Blocks for Q50 {
    const DTYPE: DType = DType::Q5_0;
    const MINS: bool = false;
    const OFFSET: i32 = 16;

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn block_bytes(b: *const u8) -> (__m128i, __m128i) {
        // SAFETY: the block is readable (the contract); unaligned loads
        // within it.
        let (qs, qh) = unsafe {
            (
                _mm_loadu_si128(b.add(6).cast()),
                b.add(2).cast::<i32>().read_unaligned(),
            )
        };
        // Byte l: bit l of qh (values 0..16), then bit 16 + l (16..32).
        let sel = |at: i64| {
            _mm_shuffle_epi8(
                _mm_set1_epi32(qh),
                _mm_set_epi64x(at + 0x0101_0101_0101_0101, at),
            )
        };
        let bit = _mm_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
        let fifth = |v: __m128i| {
            _mm_and_si128(
                _mm_cmpeq_epi8(_mm_and_si128(v, bit), bit),
                _mm_set1_epi8(0x10),
            )
        };
        let low = _mm_set1_epi8(0x0F);
        let lo = _mm_or_si128(_mm_and_si128(qs, low), fifth(sel(0)));
        let hi = _mm_or_si128(
            _mm_and_si128(_mm_srli_epi16::<4>(qs), low),
            fifth(sel(0x0202_0202_0202_0202)),
        );
        (lo, hi)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn widen(q: __m128i) -> __m256i {
        _mm256_sub_epi16(_mm256_cvtepu8_epi16(q), _mm256_set1_epi16(16))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn pair_words(a: *const u8, b: *const u8, head: __m256i) -> [__m256i; 4] {
        // SAFETY: readable blocks (the contract).
        let qs = unsafe { halves(a, b, 6) };
        // Byte l of each half: qh's byte holding bit l (head byte 2 + l / 8),
        // then the one holding bit 16 + l (4 + l / 8).
        let lo_sel = _mm256_set_epi64x(
            0x0303_0303_0303_0303,
            0x0202_0202_0202_0202,
            0x0303_0303_0303_0303,
            0x0202_0202_0202_0202,
        );
        let hi_sel = _mm256_add_epi8(lo_sel, _mm256_set1_epi8(2));
        let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
        let fifth = |sel: __m256i| {
            let v = _mm256_and_si256(_mm256_shuffle_epi8(head, sel), bit);
            _mm256_and_si256(_mm256_cmpeq_epi8(v, bit), _mm256_set1_epi8(0x10))
        };
        let nib = _mm256_set1_epi8(0x0F);
        // Byte l: value l, and value 16 + l.
        let lo = _mm256_or_si256(_mm256_and_si256(qs, nib), fifth(lo_sel));
        let hi = _mm256_or_si256(
            _mm256_and_si256(_mm256_srli_epi16::<4>(qs), nib),
            fifth(hi_sel),
        );
        let byte = _mm256_set1_epi16(0xFF);
        [
            _mm256_and_si256(lo, byte),
            _mm256_srli_epi16::<8>(lo),
            _mm256_and_si256(hi, byte),
            _mm256_srli_epi16::<8>(hi),
        ]
    }
}

/// Q8_0: `d`, then 32 signed bytes `q`; `w = d q`.
struct Q80;

impl Blocks for Q80 {
    const DTYPE: DType = DType::Q8_0;
    const MINS: bool = false;
    const OFFSET: i32 = 0;

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn block_bytes(b: *const u8) -> (__m128i, __m128i) {
        // SAFETY: the block is readable (the contract); unaligned loads
        // within it.
        unsafe {
            (
                _mm_loadu_si128(b.add(2).cast()),
                _mm_loadu_si128(b.add(18).cast()),
            )
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn widen(q: __m128i) -> __m256i {
        _mm256_cvtepi8_epi16(q)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn pair_words(a: *const u8, b: *const u8, _head: __m256i) -> [__m256i; 4] {
        // SAFETY: readable blocks (the contract).
        let (lo, hi) = unsafe { (halves(a, b, 2), halves(a, b, 18)) };
        // Word j of `lo`: value 2j in its low byte, 2j + 1 in its high one
        // (of `hi`: 16 + 2j, 17 + 2j); arithmetic shifts sign-extend them.
        let even = |v: __m256i| _mm256_srai_epi16::<8>(_mm256_slli_epi16::<8>(v));
        [
            even(lo),
            _mm256_srai_epi16::<8>(lo),
            even(hi),
            _mm256_srai_epi16::<8>(hi),
        ]
    }
}

/// The decode products (see [`super::i16::rows`]); false, doing nothing,
/// without the CPU features, for other formats or mismatched lengths.
pub(crate) fn rows(dtype: DType, w: &[u8], row_bytes: usize, acts: &ActsI16, out: Out) -> bool {
    let Some(dims) = shape(dtype, w, row_bytes, acts) else {
        return false;
    };
    // SAFETY: `shape` checked the features and that every block and
    // activation the kernel reads lies within `w` and `acts`.
    unsafe {
        match dtype {
            DType::Q8_0 => rows_pairs::<Q80>(w, &dims, acts, out),
            DType::Q4_1 => rows_pairs::<Q41>(w, &dims, acts, out),
            DType::Q5_0 => rows_pairs::<Q50>(w, &dims, acts, out),
            DType::Q4_K => super::x86_i16_avx2_k::rows_k::<false>(w, &dims, acts, out),
            _ => super::x86_i16_avx2_k::rows_k::<true>(w, &dims, acts, out),
        }
    }
    true
}

/// Weight rows per prefill panel (two 8-lane vectors).
pub(super) const PANEL: usize = 16;

/// Rows of `x` per prefill tile.
const MR: usize = 4;

/// Groups per stretch of the prefill tile, in which it runs the four chains
/// one after another (a multiple of 4, so that every group stays in its
/// chain `g mod 4`): at most 32 KB of pairs, read four times while in L1 or L2.
/// At the AVX-512 level, taking each chain over the whole row (4 passes)
/// ran prefill 3-9% slower.
const STRETCH: usize = 32;
const _: () = assert!(STRETCH.is_multiple_of(4));

/// A repacked prefill panel (see [`pack`] and `pack_k`): per group of weights (a block
/// of 32 values, or a K-quant's group of 32 or 16), its pairs, then its
/// scale and min per row.
#[derive(Default)]
pub(super) struct Packed {
    /// Pairs of int16 weights.
    pub(super) pairs: Vec<i32>,
    /// Scales per group and row.
    pub(super) scales: Vec<f32>,
    /// Mins per group and row.
    pub(super) mins: Vec<f32>,
}

thread_local! {
    /// This thread's repacked panel.
    static PACKED: std::cell::RefCell<Packed> = std::cell::RefCell::new(Packed::default());
}

/// The prefill products (see [`super::i16::gemm`]); false, doing nothing,
/// as for [`rows`].
pub(crate) fn gemm(dtype: DType, w: &[u8], row_bytes: usize, acts: &ActsI16, out: Out) -> bool {
    let Some(dims) = shape(dtype, w, row_bytes, acts) else {
        return false;
    };
    let groups = acts.cols / super::i16::group_len(dtype);
    let run = |p: &mut Packed| {
        p.pairs.resize(acts.cols / 2 * PANEL, 0);
        p.scales.resize(groups * PANEL, 0.0);
        p.mins.resize(groups * PANEL, 0.0);
        let mut j = 0;
        while j < dims.nrows {
            // SAFETY: `shape` checked the features and the lengths, and
            // `p` holds a whole panel of them.
            unsafe {
                match dtype {
                    DType::Q4_1 => {
                        pack::<Q41>(w, &dims, j, p);
                        panel::<true, 16>(groups, p, acts, out, j, dims.nrows);
                    }
                    DType::Q5_0 => {
                        pack::<Q50>(w, &dims, j, p);
                        panel::<false, 16>(groups, p, acts, out, j, dims.nrows);
                    }
                    DType::Q8_0 => {
                        pack::<Q80>(w, &dims, j, p);
                        panel::<false, 16>(groups, p, acts, out, j, dims.nrows);
                    }
                    DType::Q4_K => {
                        super::x86_i16_avx2_k::pack_k::<false>(w, &dims, j, p);
                        panel::<true, 16>(groups, p, acts, out, j, dims.nrows);
                    }
                    _ => {
                        super::x86_i16_avx2_k::pack_k::<true>(w, &dims, j, p);
                        panel::<false, 8>(groups, p, acts, out, j, dims.nrows);
                    }
                }
            }
            j += PANEL;
        }
    };
    PACKED.with(|cell| match cell.try_borrow_mut() {
        Ok(mut p) => run(&mut p),
        Err(_) => run(&mut Packed::default()),
    });
    true
}

/// Repacks rows `j..j + PANEL` of Q8_0, Q4_1 or Q5_0 weights (`F`; the last row
/// repeated past the end): `pairs[(b * 16 + p) * PANEL + r]` holds values
/// `2p, 2p + 1` of block `b` of row `r` as two int16, `scales[b * PANEL +
/// r]` its scale and `mins` its min (Q4_1).
///
/// # Safety
/// As for [`rows_pairs`]; `p` holds a panel of `dims`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn pack<F: Blocks>(w: &[u8], dims: &Shape, j: usize, p: &mut Packed) {
    assert_eq!(
        dims.block_bytes,
        F::DTYPE.block_bytes(),
        "the format's block length"
    );
    let Packed {
        pairs,
        scales,
        mins,
    } = p;
    let bb = dims.block_bytes;
    assert!(
        pairs.len() >= dims.blocks * 16 * PANEL
            && scales.len() >= dims.blocks * PANEL
            && mins.len() >= dims.blocks * PANEL
    );
    for half in 0..PANEL / 8 {
        let row: [*const u8; 8] = core::array::from_fn(|r| {
            w[(j + half * 8 + r).min(dims.nrows - 1) * dims.row_bytes..].as_ptr()
        });
        for b in 0..dims.blocks {
            let blk: [*const u8; 8] = core::array::from_fn(|r| row[r].wrapping_add(b * bb));
            for r in blk {
                // A prefetch never faults: the address may lie past `w`.
                _mm_prefetch::<_MM_HINT_T0>(r.wrapping_add(PACK_PREFETCH).cast());
            }
            let (mut lo, mut hi) = ([_mm_setzero_si128(); 8], [_mm_setzero_si128(); 8]);
            let (mut d, mut m) = ([0i16; 8], [0i16; 8]);
            for r in 0..8 {
                // SAFETY: a whole block within `w` (row < nrows, b < blocks).
                unsafe {
                    (lo[r], hi[r]) = F::block_bytes(blk[r]);
                    d[r] = blk[r].cast::<i16>().read_unaligned();
                    m[r] = blk[r].add(2).cast::<i16>().read_unaligned();
                }
            }
            // Byte pair p of the 8 rows is pair p of their values, so the
            // bytes are transposed before they are widened: in-lane 128-bit
            // shuffles, where a transpose of the widened int16 crossed
            // 256-bit lanes (`vperm2i128`, 8 micro-ops each on Zen 1).
            let (tl, th) = (transpose_words(&lo), transpose_words(&hi));
            // SAFETY: in bounds (asserted above): 8 i32s from
            // (b * 16 + p) * PANEL + half * 8, and 8 f32s from
            // b * PANEL + half * 8.
            unsafe {
                let at = pairs.as_mut_ptr().add(b * 16 * PANEL + half * 8);
                for (p, (l, h)) in tl.iter().zip(&th).enumerate() {
                    _mm256_storeu_si256(at.add(p * PANEL).cast(), F::widen(*l));
                    _mm256_storeu_si256(at.add((p + 8) * PANEL).cast(), F::widen(*h));
                }
                let dv = _mm256_cvtph_ps(_mm_loadu_si128(d.as_ptr().cast()));
                _mm256_storeu_ps(scales.as_mut_ptr().add(b * PANEL + half * 8), dv);
                if !F::MINS {
                    continue;
                }
                // `w = d q + m`: the reference's min is `-m`, exactly.
                let mv = _mm256_cvtph_ps(_mm_loadu_si128(m.as_ptr().cast()));
                let neg = _mm256_xor_ps(mv, _mm256_set1_ps(-0.0));
                _mm256_storeu_ps(mins.as_mut_ptr().add(b * PANEL + half * 8), neg);
            }
        }
    }
}

/// How far ahead of its blocks [`pack`] prefetches each row, in bytes.
pub(super) const PACK_PREFETCH: usize = 512;

/// The 8 x 8 transpose of 16-bit lanes: lane `r` of result `c` is lane `c`
/// of `v[r]`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn transpose_words(v: &[__m128i; 8]) -> [__m128i; 8] {
    // t[2k], t[2k + 1]: lanes 0..4 and 4..8 of rows 2k and 2k + 1, interleaved.
    let t: [__m128i; 8] = core::array::from_fn(|k| {
        let (a, b) = (v[k / 2 * 2], v[k / 2 * 2 + 1]);
        if k % 2 == 0 {
            _mm_unpacklo_epi16(a, b)
        } else {
            _mm_unpackhi_epi16(a, b)
        }
    });
    // s[4h + c]: lanes 2c and 2c + 1 of rows 4h..4h + 4.
    let s: [__m128i; 8] = core::array::from_fn(|k| {
        let (h, c) = (k / 4, k % 4);
        let (a, b) = (t[4 * h + c / 2], t[4 * h + 2 + c / 2]);
        if c % 2 == 0 {
            _mm_unpacklo_epi32(a, b)
        } else {
            _mm_unpackhi_epi32(a, b)
        }
    });
    core::array::from_fn(|c| {
        if c % 2 == 0 {
            _mm_unpacklo_epi64(s[c / 2], s[4 + c / 2])
        } else {
            _mm_unpackhi_epi64(s[c / 2], s[4 + c / 2])
        }
    })
}

/// Every row of `acts` against a packed panel (rows `j..` of `nrows`) of
/// `groups` groups per row, `GP` pairs each, with mins when `MINS`.
///
/// # Safety
/// As for [`pack`] (or `pack_k`), after it filled `p` with groups of `GP`
/// pairs.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn panel<const MINS: bool, const GP: usize>(
    groups: usize,
    p: &Packed,
    acts: &ActsI16,
    out: Out,
    j: usize,
    nrows: usize,
) {
    let m = acts.rows();
    let mut i = 0;
    while i < m {
        // SAFETY: forwarded.
        unsafe {
            match m - i {
                1 => tile::<MINS, GP, 1>(groups, p, acts, out, i, j, nrows),
                2 => tile::<MINS, GP, 2>(groups, p, acts, out, i, j, nrows),
                3 => tile::<MINS, GP, 3>(groups, p, acts, out, i, j, nrows),
                _ => tile::<MINS, GP, MR>(groups, p, acts, out, i, j, nrows),
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
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const MINS: bool, const GP: usize, const T: usize>(
    groups: usize,
    packed: &Packed,
    acts: &ActsI16,
    out: Out,
    i0: usize,
    j: usize,
    nrows: usize,
) {
    let (xq, xd, xs) = acts.tile_rows::<T>(i0);
    let (pp, sp, mp) = (
        packed.pairs.as_ptr(),
        packed.scales.as_ptr(),
        packed.mins.as_ptr(),
    );
    assert!(
        groups * GP * 2 == acts.cols
            && packed.pairs.len() >= groups * GP * PANEL
            && packed.scales.len() >= groups * PANEL
            && packed.mins.len() >= groups * PANEL
    );
    // The sums of the groups `t` mod 4, for each t (see `super::i16`), in
    // stretches of STRETCH groups: each chain in registers over its groups
    // of the stretch, and the stretch's pairs still cached for the next.
    // Updated in place: a copy of a chain's sums in and out per stretch
    // (more than the 16 registers) was a library `memcpy` each way.
    let mut part = [[[_mm256_setzero_ps(); 2]; T]; 4];
    for b0 in (0..groups).step_by(STRETCH) {
        for (t, acc) in part.iter_mut().enumerate() {
            for b in (b0 + t..(b0 + STRETCH).min(groups)).step_by(4) {
                let mut sums = [[_mm256_setzero_si256(); 2]; T];
                for p in b * GP..(b + 1) * GP {
                    // SAFETY: (p + 1) * PANEL <= pairs.len() (asserted).
                    let (w0, w1) = unsafe {
                        let at = pp.add(p * PANEL);
                        (
                            _mm256_loadu_si256(at.cast()),
                            _mm256_loadu_si256(at.add(8).cast()),
                        )
                    };
                    for (s, xi) in sums.iter_mut().zip(xq) {
                        // SAFETY: values 2p, 2p + 1 of row i (p < cols / 2).
                        let x = _mm256_set1_epi32(unsafe { xi.add(p).read_unaligned() });
                        s[0] = _mm256_add_epi32(s[0], _mm256_madd_epi16(w0, x));
                        s[1] = _mm256_add_epi32(s[1], _mm256_madd_epi16(w1, x));
                    }
                }
                // SAFETY: (b + 1) * PANEL <= scales.len() and mins.len().
                let (d0, d1, m0, m1) = unsafe {
                    let (s, m) = (sp.add(b * PANEL), mp.add(b * PANEL));
                    (
                        _mm256_loadu_ps(s),
                        _mm256_loadu_ps(s.add(8)),
                        _mm256_loadu_ps(m),
                        _mm256_loadu_ps(m.add(8)),
                    )
                };
                // The activation block holding the group.
                let blk = b * GP / 16;
                for i in 0..T {
                    let dx = _mm256_set1_ps(xd[i][blk]);
                    let (s0, s1) = (
                        _mm256_cvtepi32_ps(sums[i][0]),
                        _mm256_cvtepi32_ps(sums[i][1]),
                    );
                    acc[i][0] = _mm256_fmadd_ps(s0, _mm256_mul_ps(d0, dx), acc[i][0]);
                    acc[i][1] = _mm256_fmadd_ps(s1, _mm256_mul_ps(d1, dx), acc[i][1]);
                    if !MINS {
                        continue;
                    }
                    let sx = _mm256_set1_ps(xs[i][blk]);
                    acc[i][0] = _mm256_fnmadd_ps(sx, _mm256_mul_ps(m0, dx), acc[i][0]);
                    acc[i][1] = _mm256_fnmadd_ps(sx, _mm256_mul_ps(m1, dx), acc[i][1]);
                }
            }
        }
    }
    let live = (nrows - j).min(PANEL);
    let [p0, p1, p2, p3] = &part;
    let chains = p0.iter().zip(p1).zip(p2).zip(p3);
    for (i, (((a, b), c), d)) in chains.enumerate() {
        let sum = |h: usize| _mm256_add_ps(_mm256_add_ps(a[h], b[h]), _mm256_add_ps(c[h], d[h]));
        let y = [sum(0), sum(1)];
        let mut v = [0.0f32; PANEL];
        // SAFETY: 16 writable f32s.
        unsafe {
            _mm256_storeu_ps(v.as_mut_ptr(), y[0]);
            _mm256_storeu_ps(v.as_mut_ptr().add(8), y[1]);
        }
        out.put_run(i0 + i, j, &v, live);
    }
}

/// One pair of activation blocks `(2p, 2p + 1)` laid out for decode
/// ([`rows_pairs`], `rows_k`; the last block paired with itself when their number is
/// odd).
#[derive(Clone, Copy, Debug)]
#[repr(C, align(32))]
pub(crate) struct Pair {
    /// Values at even offsets 0..16, odd 0..16, even 16..32 and odd 16..32
    /// of the blocks: 8 of block `2p`, then the same 8 of block `2p + 1`.
    pub(super) q: [i16; 64],
    /// The blocks' scales, each 4 times.
    pub(super) d: [f32; 8],
    /// The blocks' sums, each 4 times.
    pub(super) sums: [f32; 8],
    /// The sums of the blocks' values 0..16, each 4 times (block `2p`, then
    /// `2p + 1`), then of values 16..32 (Q6_K's groups of 16).
    pub(super) half_sums: [i32; 16],
}

impl Pair {
    const ZERO: Pair = Pair {
        q: [0; 64],
        d: [0.0; 8],
        sums: [0.0; 8],
        half_sums: [0; 16],
    };
}

/// Every row of `acts` as pairs: row `i`'s pair `p` at `pairs[i * np + p]`
/// with `np` pairs per row.
pub(crate) fn lay_out_pairs(acts: &ActsI16, pairs: &mut Vec<Pair>) {
    let nb = acts.cols / BLOCK;
    let np = nb.div_ceil(2);
    if np == 0 {
        pairs.clear();
        return;
    }
    // Every field of every pair is written below: nothing stale stays.
    pairs.resize(acts.rows() * np, Pair::ZERO);
    let simd = available();
    for (i, row) in pairs.chunks_exact_mut(np).enumerate() {
        let (q, d, sums) = (acts.q_row(i), acts.d_row(i), acts.sums_row(i));
        for (p, pair) in row.iter_mut().enumerate() {
            let blk = [2 * p, (2 * p + 1).min(nb - 1)];
            let qb = blk.map(|b| &q[b * BLOCK..(b + 1) * BLOCK]);
            if simd {
                // SAFETY: `available` found the features.
                unsafe { pair_values(qb, pair) };
            } else {
                pair_values_ref(qb, pair);
            }
            for (h, b) in blk.into_iter().enumerate() {
                pair.d[h * 4..h * 4 + 4].fill(d[b]);
                pair.sums[h * 4..h * 4 + 4].fill(sums[b]);
            }
        }
    }
}

/// [`Pair::q`] and [`Pair::half_sums`] of the blocks `qb`, in portable code
/// (the reference of [`pair_values`]).
fn pair_values_ref(qb: [&[i16]; 2], pair: &mut Pair) {
    for (h, qb) in qb.into_iter().enumerate() {
        for (v, start) in [0, 1, 16, 17].into_iter().enumerate() {
            for k in 0..8 {
                pair.q[v * 16 + h * 8 + k] = qb[start + 2 * k];
            }
        }
        for (k, half) in qb.chunks_exact(16).enumerate() {
            let sum = half.iter().map(|v| i32::from(*v)).sum::<i32>();
            pair.half_sums[8 * k + 4 * h..8 * k + 4 * h + 4].fill(sum);
        }
    }
}

/// [`pair_values_ref`] with byte shuffles: laid out once per product, but
/// on the calling thread while the others wait (1% of SmolLM2's decode at
/// 2 threads in scalar code).
///
/// # Safety
/// The CPU has this module's features.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn pair_values(qb: [&[i16]; 2], pair: &mut Pair) {
    assert!(
        qb.iter().all(|b| b.len() == BLOCK),
        "blocks of {BLOCK} values"
    );
    // Per 128-bit lane, words 0 2 4 6 then 1 3 5 7.
    let ctl = _mm_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15);
    let ctl = _mm256_set_m128i(ctl, ctl);
    let ones = _mm256_set1_epi16(1);
    // Per block, per half of 16 values: the even values, then the odd ones.
    let mut parts = [[_mm256_setzero_si256(); 2]; 2];
    for (h, b) in qb.into_iter().enumerate() {
        for (k, part) in parts[h].iter_mut().enumerate() {
            // SAFETY: 16 readable values at `16 k` (asserted above).
            let v = unsafe { _mm256_loadu_si256(b.as_ptr().add(16 * k).cast()) };
            let grouped = _mm256_shuffle_epi8(v, ctl);
            *part = _mm256_permute4x64_epi64::<0b11_01_10_00>(grouped);
            // Integer adds: exact in any order.
            let sum = hsum8(_mm256_madd_epi16(v, ones));
            pair.half_sums[8 * k + 4 * h..8 * k + 4 * h + 4].fill(sum);
        }
    }
    for (k, (a, b)) in parts[0].into_iter().zip(parts[1]).enumerate() {
        let even = _mm256_permute2x128_si256::<0x20>(a, b);
        let odd = _mm256_permute2x128_si256::<0x31>(a, b);
        // SAFETY: words 32 k .. 32 k + 32 of `q` are writable.
        unsafe {
            _mm256_storeu_si256(pair.q.as_mut_ptr().add(32 * k).cast(), even);
            _mm256_storeu_si256(pair.q.as_mut_ptr().add(32 * k + 16).cast(), odd);
        }
    }
}

thread_local! {
    /// This thread's activations laid out as pairs.
    static PAIRS: std::cell::RefCell<Vec<Pair>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// 16 bytes from `a + off`, then 16 from `b + off`.
///
/// # Safety
/// 16 readable bytes at each; the caller has this module's features.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn halves(a: *const u8, b: *const u8, off: usize) -> __m256i {
    // SAFETY: readable (the contract); unaligned loads.
    unsafe {
        _mm256_inserti128_si256::<1>(
            _mm256_castsi128_si256(_mm_loadu_si128(a.add(off).cast())),
            _mm_loadu_si128(b.add(off).cast()),
        )
    }
}

/// The four rows' products of one pair: `e[r]` against `x` (the four word
/// vectors in the order of [`Pair::q`]), summed over its first two vectors
/// (values 0..16 of each block) and its last two (16..32) apart.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn madd_halves(e: &[__m256i; 4], x: &[__m256i; 4]) -> (__m256i, __m256i) {
    (
        _mm256_add_epi32(_mm256_madd_epi16(e[0], x[0]), _mm256_madd_epi16(e[1], x[1])),
        _mm256_add_epi32(_mm256_madd_epi16(e[2], x[2]), _mm256_madd_epi16(e[3], x[3])),
    )
}

/// The lane sums of each half of `v[r]`, in lanes `r` (low halves) and
/// `4 + r` (high halves): exact integer adds.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn row_sums(v: &[__m256i; 4]) -> __m256i {
    _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]))
}

/// The activation words of pair `x` (see [`Pair::q`]).
///
/// # Safety
/// The caller has this module's features.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn pair_x(x: &Pair) -> [__m256i; 4] {
    // SAFETY: aligned loads within `x` (a `Pair` is 32-byte aligned).
    core::array::from_fn(|v| unsafe { _mm256_load_si256(x.q.as_ptr().add(16 * v).cast()) })
}

/// One pair's terms for 4 weight rows (`row[r]`, `off` bytes to the pair's
/// first block, `next` to its second) and `R` activation rows (their pairs
/// `x[k]`), added to the two chains in the halves of `acc[k]`. The weights
/// become words once for all `R` rows; each row's operations are those it
/// has alone (`R = 1`), so a row's bits do not depend on `R`.
///
/// # Safety
/// Whole blocks at `row[r] + off` and `+ next`; the caller has this
/// module's features.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn pair_step<F: Blocks, const R: usize>(
    row: &[*const u8; 4],
    off: usize,
    next: usize,
    x: [&Pair; R],
    acc: [__m256; R],
) -> [__m256; R] {
    // SAFETY: readable blocks (the contract); aligned loads of `x` (a `Pair`
    // is 32-byte aligned); register-only instructions otherwise.
    unsafe {
        let xv = x.map(|xk| pair_x(xk));
        // Row r's scale (and min) f16 of both blocks, moved to word r (and
        // 4 + r) of each half by a byte shuffle of the blocks' first bytes.
        let mut sep = _mm256_setzero_si256();
        let mut prod = [[_mm256_setzero_si256(); 4]; R];
        for r in 0..4 {
            let (a, b) = (row[r].add(off), row[r].add(next));
            let head = halves(a, b, 0);
            let (z, d0, d1, m0, m1) = (-1i8, 0i8, 1i8, 2i8, 3i8);
            let mut ctl = [z; 16];
            ctl[2 * r] = d0;
            ctl[2 * r + 1] = d1;
            ctl[8 + 2 * r] = m0;
            ctl[8 + 2 * r + 1] = m1;
            let ctl = _mm_loadu_si128(ctl.as_ptr().cast());
            sep = _mm256_or_si256(sep, _mm256_shuffle_epi8(head, _mm256_set_m128i(ctl, ctl)));
            let words = F::pair_words(a, b, head);
            for (pk, xk) in prod.iter_mut().zip(&xv) {
                let (lo, hi) = madd_halves(&words, xk);
                pk[r] = _mm256_add_epi32(lo, hi);
            }
        }
        let sep = _mm256_permute4x64_epi64::<0b11_01_10_00>(sep);
        let dw = _mm256_cvtph_ps(_mm256_castsi256_si128(sep));
        // `w = d q + m`: the reference's min is `-m`, exactly.
        let m = _mm256_cvtph_ps(_mm256_extracti128_si256::<1>(sep));
        let m = _mm256_xor_ps(m, _mm256_set1_ps(-0.0));
        core::array::from_fn(|k| {
            // Lanes r and 4 + r: row r's sums of the first and second block.
            let s = row_sums(&prod[k]);
            let sums = _mm256_load_ps(x[k].sums.as_ptr());
            // The integer weights are `q - OFFSET`: minus OFFSET times the
            // block's sum (exact integers, as the sums are).
            let s = if F::OFFSET == 0 {
                s
            } else {
                let offset =
                    _mm256_mullo_epi32(_mm256_cvtps_epi32(sums), _mm256_set1_epi32(F::OFFSET));
                _mm256_sub_epi32(s, offset)
            };
            let dx = _mm256_load_ps(x[k].d.as_ptr());
            let acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(dw, dx), acc[k]);
            if !F::MINS {
                return acc;
            }
            _mm256_fnmadd_ps(sums, _mm256_mul_ps(m, dx), acc)
        })
    }
}

/// Least distance, in bytes, that decode prefetches the weights ahead
/// (whole tiles; see [`super::x86::Ahead`]). SmolLM2's decode at the
/// AVX2 level (Intel Xeon, 1 and 2 threads, 4 alternating rounds) ran about
/// 5% faster at 2 and 4 KB than at 8 KB, and 10-30% slower at 16-32 KB.
pub(super) const PREFETCH: usize = 4096;

/// Activation rows that decode's pair formats take through one tile
/// together ([`PairTile`]): the weights become words once for all of them.
const GROUP: usize = 4;
const _: () = assert!(GROUP == 4, "each_tile's groups are of 1 to 4 rows");

/// The most activation rows for which [`rows`] (decode's kernel, with
/// [`GROUP`] rows per tile) runs instead of [`gemm`], whose repacking of
/// the weights costs as much as the products of a few rows: one group. On
/// an AMD EPYC (AVX2), prefill of 4 tokens ran this way 1.24x faster at 1
/// thread and 1.13x at 2 on SmolLM2, 1.16x and 1.13x on Qwen2.5, 1.05x and
/// 1.03x on Gemma 3 (medians of 3 alternating rounds); SmolLM2's of 5 and
/// 6 tokens, 1.07-1.10x at 1 thread but 0.94-1.02x at 2.
pub(crate) fn rows_max(dtype: DType) -> Option<usize> {
    matches!(dtype, DType::Q8_0 | DType::Q4_1 | DType::Q5_0).then_some(GROUP)
}

/// A decode tile's products for groups of activation rows ([`each_tile`]).
pub(super) trait TileRows {
    /// The chains ([`put_chains`]) of activation rows `i0..i0 + R` (their
    /// pairs `x[k]`) against the tile of 4 weight rows starting at `row`,
    /// prefetching `dist` ahead when `i0 == 0`.
    ///
    /// # Safety
    /// The CPU has this module's features; the rows and pairs are those
    /// [`each_tile`] gives.
    unsafe fn chains<const R: usize>(
        &mut self,
        row: &[*const u8; 4],
        dist: usize,
        i0: usize,
        x: [&[Pair]; R],
    ) -> [[__m256; 2]; R];
}

/// [`TileRows`] from a tile of one activation row: `f(row, dist, i, x)`,
/// called for each row of a group.
pub(super) struct EachRow<T>(pub(super) T);

impl<T: FnMut(&[*const u8; 4], usize, usize, &[Pair]) -> [__m256; 2]> TileRows for EachRow<T> {
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn chains<const R: usize>(
        &mut self,
        row: &[*const u8; 4],
        dist: usize,
        i0: usize,
        x: [&[Pair]; R],
    ) -> [[__m256; 2]; R] {
        core::array::from_fn(|k| (self.0)(row, dist, i0 + k, x[k]))
    }
}

/// Decode products of Q8_0, Q4_1 or Q5_0 (`F`): 4 weight rows and 2 blocks
/// at a time (see the module docs), for up to [`GROUP`] rows of `acts` at
/// once. Pair `p` feeds the chains `2p mod 4` and `2p + 1 mod 4` in the two
/// halves of one accumulator; a lone last block only its chain's half.
struct PairTile<F> {
    /// Bytes per block.
    bb: usize,
    /// Blocks per row.
    blocks: usize,
    format: core::marker::PhantomData<F>,
}

impl<F: Blocks> TileRows for PairTile<F> {
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn chains<const R: usize>(
        &mut self,
        row: &[*const u8; 4],
        dist: usize,
        i0: usize,
        x: [&[Pair]; R],
    ) -> [[__m256; 2]; R] {
        let (bb, blocks) = (self.bb, self.blocks);
        let full = blocks / 2;
        let at = |p: usize| x.map(|xk| &xk[p]);
        let (mut acc0, mut acc1) = ([_mm256_setzero_ps(); R], [_mm256_setzero_ps(); R]);
        let mut p = 0;
        // SAFETY: pairs p < full have both blocks in every row, the lone
        // last block (p = full) its first, and each `x[k]` holds its row's
        // pairs (`each_tile`).
        unsafe {
            while p + 2 <= full {
                let off = 2 * p * bb;
                if i0 == 0 {
                    // These 4 blocks of each row, `dist` ahead.
                    prefetch(row, off + dist, 4 * F::DTYPE.block_bytes());
                }
                acc0 = pair_step::<F, R>(row, off, off + bb, at(p), acc0);
                acc1 = pair_step::<F, R>(row, off + 2 * bb, off + 3 * bb, at(p + 1), acc1);
                p += 2;
            }
            if p < full {
                let off = 2 * p * bb;
                acc0 = pair_step::<F, R>(row, off, off + bb, at(p), acc0);
                p += 1;
            }
            if blocks % 2 == 1 {
                let off = 2 * p * bb;
                let old = if p % 2 == 0 { acc0 } else { acc1 };
                let new = pair_step::<F, R>(row, off, off, at(p), old);
                let new = core::array::from_fn(|k| _mm256_blend_ps::<0xF0>(new[k], old[k]));
                if p % 2 == 0 {
                    acc0 = new;
                } else {
                    acc1 = new;
                }
            }
        }
        core::array::from_fn(|k| [acc0[k], acc1[k]])
    }
}

/// Decode products of Q8_0, Q4_1 or Q5_0 (`F`): [`PairTile`]s.
///
/// # Safety
/// The CPU has this module's features, and `dims` was checked by
/// [`shape`] for `w` and `acts`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn rows_pairs<F: Blocks>(w: &[u8], dims: &Shape, acts: &ActsI16, out: Out) {
    let (bb, blocks) = (dims.block_bytes, dims.blocks);
    assert_eq!(bb, F::DTYPE.block_bytes(), "the format's block length");
    let tile = PairTile::<F> {
        bb,
        blocks,
        format: core::marker::PhantomData,
    };
    // SAFETY: forwarded (the contract).
    unsafe { each_tile(w, dims, acts, blocks.div_ceil(2), out, tile) }
}

/// Decode's walk over tiles of 4 weight rows (`dims`' rows of `w`; rows
/// past the end repeat the last one, their outputs dropped), once for each
/// group of up to [`GROUP`] rows of `acts` (`np` pairs each, see
/// [`with_pairs`]): `tile` gives the chains ([`put_chains`]) from the 4
/// rows' starts and the distance to prefetch ahead. Callers give at most a
/// group ([`rows_max`]); more rows read the weights again per group.
///
/// # Safety
/// The CPU has this module's features, and `dims` was checked by
/// [`Shape::of`] for `w` and `acts`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn each_tile(
    w: &[u8],
    dims: &Shape,
    acts: &ActsI16,
    np: usize,
    out: Out,
    mut tile: impl TileRows,
) {
    let rows = acts.rows();
    let mut run = |pairs: &[Pair]| {
        let mut i = 0;
        while i < rows {
            // SAFETY: forwarded (the contract); rows i.. of `acts`.
            unsafe {
                match rows - i {
                    1 => walk::<1>(&mut tile, w, dims, i, pairs, np, out),
                    2 => walk::<2>(&mut tile, w, dims, i, pairs, np, out),
                    3 => walk::<3>(&mut tile, w, dims, i, pairs, np, out),
                    _ => walk::<GROUP>(&mut tile, w, dims, i, pairs, np, out),
                }
            }
            i += GROUP;
        }
    };
    // Laid out once per product where the caller asked for them
    // ([`super::i16::Layout::Pairs`]); else here, for this task alone.
    if acts.pairs.len() == rows * np && np == (acts.cols / BLOCK).div_ceil(2) {
        run(&acts.pairs)
    } else {
        with_pairs(acts, run);
    }
}

/// Rows `i0..i0 + R` of the activations (`np` pairs each in `pairs`)
/// against every tile, written out. Not inlined: each group size gets its
/// own registers (one function for all of them made decode 3-4% slower).
///
/// # Safety
/// As for [`each_tile`], with rows `i0..i0 + R` in `pairs`.
#[inline(never)]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn walk<const R: usize>(
    tile: &mut impl TileRows,
    w: &[u8],
    dims: &Shape,
    i0: usize,
    pairs: &[Pair],
    np: usize,
    out: Out,
) {
    let nrows = dims.nrows;
    let ahead = super::x86::Ahead::at_least(PREFETCH, dims.row_bytes);
    let x = core::array::from_fn(|k| &pairs[(i0 + k) * np..(i0 + k + 1) * np]);
    let mut j = 0;
    while j < nrows {
        let (row, dist) = super::x86_i16::tile_rows(w, dims, ahead, j);
        // SAFETY: forwarded (the contract).
        let chains = unsafe { tile.chains::<R>(&row, dist, i0, x) };
        for (k, [acc0, acc1]) in chains.into_iter().enumerate() {
            put_chains(acc0, acc1, out, i0 + k, j, nrows);
        }
        j += 4;
    }
}

/// Prefetches the cache lines of `len` bytes at `off` past each of `row`
/// (a range's last line is often the next range's first). Callers give a
/// constant `len` (the format's block length, not the shape's), so the
/// lines unroll into straight prefetches: a run-time length left a loop per
/// row in every tile step, and decode ran 5-15% slower (Intel Xeon, AVX2
/// level, SmolLM2, Qwen2.5 and Gemma 3 at 1 and 2 threads).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn prefetch(row: &[*const u8; 4], off: usize, len: usize) {
    for r in row {
        for line in (0..len).step_by(64) {
            // A prefetch never faults: the address may lie past `w`.
            _mm_prefetch::<_MM_HINT_T0>(r.wrapping_add(off + line).cast());
        }
    }
}

/// Runs `f` on this thread's buffer of pairs, laid out from `acts`
/// ([`lay_out_pairs`]).
pub(super) fn with_pairs(acts: &ActsI16, f: impl FnOnce(&[Pair])) {
    PAIRS.with(|cell| match cell.try_borrow_mut() {
        Ok(mut pairs) => {
            lay_out_pairs(acts, &mut pairs);
            f(&pairs)
        }
        Err(_) => {
            let mut pairs = Vec::new();
            lay_out_pairs(acts, &mut pairs);
            f(&pairs)
        }
    });
}

/// Writes row `i`'s outputs of weight rows `j..j + 4` (those below `nrows`)
/// from the chains in the halves of two accumulators: chains 0 and 1 in
/// `acc0`'s, 2 and 3 in `acc1`'s, rows in lanes; `(chain 0 + chain 1) +
/// (chain 2 + chain 3)` as the reference sums them.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn put_chains(acc0: __m256, acc1: __m256, out: Out, i: usize, j: usize, nrows: usize) {
    let lo = |v: __m256| _mm256_castps256_ps128(v);
    let hi = |v: __m256| _mm256_extractf128_ps::<1>(v);
    let y = _mm_add_ps(
        _mm_add_ps(lo(acc0), hi(acc0)),
        _mm_add_ps(lo(acc1), hi(acc1)),
    );
    let mut v = [0.0f32; 4];
    // SAFETY: 4 writable f32s.
    unsafe { _mm_storeu_ps(v.as_mut_ptr(), y) };
    if nrows - j >= 4 {
        out.put4(i, j, v);
    } else {
        for (r, vr) in v.iter().enumerate().take(nrows - j) {
            out.put(i, j + r, *vr);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shuffled pair layout has the portable one's values and half sums,
    /// extremes included.
    #[test]
    fn pair_values_have_the_reference_layout() {
        if !available() {
            return;
        }
        let mut state = 0x9e37_79b9_u32;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as i16
        };
        for case in 0..64 {
            let blocks: [Vec<i16>; 2] = core::array::from_fn(|h| {
                (0..BLOCK)
                    .map(|l| match (case + h + l) % 9 {
                        0 => i16::MAX,
                        1 => -i16::MAX,
                        _ => next(),
                    })
                    .collect()
            });
            let qb = [&blocks[0][..], &blocks[1][..]];
            let (mut want, mut got) = (Pair::ZERO, Pair::ZERO);
            pair_values_ref(qb, &mut want);
            // SAFETY: `available` found the features.
            unsafe { pair_values(qb, &mut got) };
            assert_eq!(got.q, want.q, "values, case {case}");
            assert_eq!(got.half_sums, want.half_sums, "half sums, case {case}");
        }
    }

    /// Lane `r` of the transpose's vector `c` is lane `c` of row `r`.
    #[test]
    fn transpose_words_transposes() {
        if !available() {
            return;
        }
        let rows: [[u16; 8]; 8] =
            core::array::from_fn(|r| core::array::from_fn(|c| (r * 8 + c) as u16 * 0x0101 + 1));
        // SAFETY: 8 readable u16s per row; `available` found the features.
        let t = unsafe {
            let v = rows.map(|row| _mm_loadu_si128(row.as_ptr().cast()));
            transpose_words(&v)
        };
        for (c, tc) in t.iter().enumerate() {
            let mut lanes = [0u16; 8];
            // SAFETY: 8 writable u16s.
            unsafe { _mm_storeu_si128(lanes.as_mut_ptr().cast(), *tc) };
            let want: [u16; 8] = core::array::from_fn(|r| rows[r][c]);
            assert_eq!(lanes, want, "vector {c}");
        }
    }
}
