//! AVX2 decode kernels of the int16-activation products of Q4_K and Q6_K
//! weights ([`super::i16`]), with the bits of its portable reference, and
//! their repacking for the prefill panel of [`super::x86_i16_avx2`].
//!
//! A tile of 4 weight rows takes one super-block (256 values, 4 pairs of
//! activation blocks in the layout of [`Pair`]) per step. As for Q4_1
//! ([`super::x86_i16_avx2`]), one vector holds a pair's two blocks of a
//! row, one per 128-bit half, and the quants become int16 words by shifts
//! and masks alone:
//! - Q4_K: a pair's blocks are the low and the high nibbles of the same 32
//!   bytes; each half of 16 bytes is broadcast to both 128-bit halves, and
//!   a variable shift of 0 or 4 bits per half picks its nibbles;
//! - Q6_K: the low bits of the two blocks are in two runs of bytes (one per
//!   half) and their high bits in one run (bits 0-1 and 2-3, or 4-5 and
//!   6-7), broadcast and shifted by 0 or 2 bits per half.
//!
//! `vpmaddwd` and `vphaddd` then give exact sums with rows in lanes, per
//! block (Q4_K's groups of 32) or per half block (Q6_K's groups of 16), and
//! each group goes to chain `g mod 4` of the reference's arithmetic. The
//! scales of the 4 rows are unpacked once per super-block by byte
//! transposes.

use super::i16::{ActsI16, Shape};
use super::x86_i16_avx2::{
    each_tile, halves, madd_halves, pair_x, prefetch, row_sums, transpose_words, EachRow, Packed,
    Pair, PACK_PREFETCH, PANEL,
};
use crate::dtype::DType;
use crate::matmul::Out;
use core::arch::x86_64::*;

/// The decode products of Q4_K (`Q6 = false`) or Q6_K rows (see
/// [`super::i16::rows`]).
///
/// # Safety
/// The CPU has AVX2, FMA and F16C, and `dims` was checked by [`Shape::of`]
/// for `w` and `acts`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn rows_k<const Q6: bool>(w: &[u8], dims: &Shape, acts: &ActsI16, out: Out) {
    let (bb, blocks) = (dims.block_bytes, dims.blocks);
    assert_eq!(
        bb,
        if Q6 { DType::Q6_K } else { DType::Q4_K }.block_bytes(),
        "the format's block length"
    );
    // Pairs of activation blocks per row: 4 per super-block.
    let np = 4 * blocks;
    let tile = |row: &[*const u8; 4], dist: usize, i: usize, x: &[Pair]| {
        let mut acc = [_mm256_setzero_ps(); 2];
        for s in 0..blocks {
            if i == 0 {
                // The format's length (a constant), so the lines unroll.
                prefetch(
                    row,
                    s * bb + dist,
                    if Q6 { DType::Q6_K } else { DType::Q4_K }.block_bytes(),
                );
            }
            let sb: [*const u8; 4] = row.map(|r| r.wrapping_add(s * bb));
            let xs: &[Pair; 4] = x[4 * s..4 * s + 4].try_into().expect("4 pairs");
            // SAFETY: super-block s < blocks of each row (the rows are
            // whole, `Shape::of`), and its 4 pairs in `x`.
            acc = unsafe {
                if Q6 {
                    q6k_step(&sb, xs, acc)
                } else {
                    q4k_step(&sb, xs, acc)
                }
            };
        }
        if Q6 {
            // Chains 0 and 2, then 1 and 3: to 0 and 1, 2 and 3.
            [
                _mm256_permute2f128_ps::<0x20>(acc[0], acc[1]),
                _mm256_permute2f128_ps::<0x31>(acc[0], acc[1]),
            ]
        } else {
            acc
        }
    };
    // SAFETY: forwarded (the contract).
    unsafe { each_tile(w, dims, acts, np, out, EachRow(tile)) }
}

/// The bytes of 4 rows' 16-byte runs (rows 0 and 2 in the halves of
/// `v02`, 1 and 3 of `v13`) transposed: dword `k` of result `q` holds byte
/// `4q + k` of rows 0..4, in that order.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn transpose_rows(v02: __m256i, v13: __m256i) -> [__m128i; 4] {
    // Lane 0: bytes of rows 0 and 1 interleaved; lane 1: of rows 2 and 3.
    let lo = _mm256_unpacklo_epi8(v02, v13);
    let hi = _mm256_unpackhi_epi8(v02, v13);
    let quads = |v: __m256i| {
        let (a, b) = (_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
        (_mm_unpacklo_epi16(a, b), _mm_unpackhi_epi16(a, b))
    };
    let (t0, t1) = quads(lo);
    let (t2, t3) = quads(hi);
    [t0, t1, t2, t3]
}

/// The f16 values at byte `off` of each of `at`, as floats in lanes `r` and
/// `4 + r`.
///
/// # Safety
/// Two readable bytes at each; the caller has this module's features.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16_rows(at: &[*const u8; 4], off: usize) -> __m256 {
    // SAFETY: per the contract; unaligned 2-byte reads.
    let h = at.map(|b| u64::from(unsafe { b.add(off).cast::<u16>().read_unaligned() }));
    let f = _mm_cvtph_ps(_mm_cvtsi64_si128(
        (h[0] | h[1] << 16 | h[2] << 32 | h[3] << 48) as i64,
    ));
    _mm256_set_m128(f, f)
}

/// One super-block of 4 Q4_K rows (`sb`, their blocks) against its 4 pairs
/// `x`: pair `c` holds groups `2c` and `2c + 1` (the low and high nibbles
/// of `qs[32c..32c + 32]`), whose terms, `fma(S, d sc d_x)` then
/// `fma(-X, dmin m d_x)` as in the reference, go to the halves of
/// `acc[c % 2]`.
///
/// # Safety
/// Whole blocks at `sb`; the caller has this module's features.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4k_step(sb: &[*const u8; 4], x: &[Pair; 4], acc: [__m256; 2]) -> [__m256; 2] {
    // SAFETY: 144-byte blocks: loads of bytes 0..16 and 16..144; aligned
    // loads of the pairs' fields (a `Pair` is 32-byte aligned, its `d` and
    // `sums` at offsets 128 and 160).
    unsafe {
        // Scales and mins: bytes 4..16 hold 8 6-bit scales and 8 6-bit mins
        // (ggml's packing). Per 128-bit lane (row): dword 1 `s0`, 2 `s1`, 3
        // `s2`; scales 0..4 are `s0 & 63`, 4..8 `(s2 & 15) | (s0 >> 6) <<
        // 4`; mins 0..4 `s1 & 63`, 4..8 `(s2 >> 4) | (s1 >> 6) << 4`.
        let unpack = |head: __m256i| {
            let low = _mm256_shuffle_epi32::<0b11_10_11_01>(head); // s0, s2, s1, s2
            let top = _mm256_shuffle_epi32::<0b10_10_01_01>(head); // s0, s0, s1, s1
            let low = _mm256_srlv_epi32(low, _mm256_set_epi32(4, 0, 0, 0, 4, 0, 0, 0));
            let six = 0x3F3F_3F3F;
            let four = 0x0F0F_0F0F;
            let low = _mm256_and_si256(
                low,
                _mm256_set_epi32(four, six, four, six, four, six, four, six),
            );
            let two = 0x3030_3030;
            let top = _mm256_and_si256(
                _mm256_srli_epi32::<2>(top),
                _mm256_set_epi32(two, 0, two, 0, two, 0, two, 0),
            );
            // Dwords per row: scales 0..4, scales 4..8, mins 0..4, mins 4..8.
            _mm256_or_si256(low, top)
        };
        let t = transpose_rows(
            unpack(halves(sb[0], sb[2], 0)),
            unpack(halves(sb[1], sb[3], 0)),
        );
        // t[0]: scales 0..4 of rows 0..4 (dword k: scale k); t[1] scales
        // 4..8; t[2], t[3] the mins.
        let (d, dmin) = (f16_rows(sb, 0), f16_rows(sb, 2));
        let shift = _mm256_set_epi32(4, 4, 4, 4, 0, 0, 0, 0);
        let nib = _mm256_set1_epi16(0x0F);
        let mut acc = acc;
        for (c, xc) in x.iter().enumerate() {
            // Groups 2c, 2c + 1: dwords 2c % 4 and 2c % 4 + 1 of t[c / 2].
            let pick = |v: __m128i| {
                let v = if c % 2 == 0 {
                    v
                } else {
                    _mm_srli_si128::<8>(v)
                };
                _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v))
            };
            let (sc, mn) = (pick(t[c / 2]), pick(t[2 + c / 2]));
            let xv = pair_x(xc);
            let prod: [__m256i; 4] = core::array::from_fn(|r| {
                let q = sb[r].add(16 + 32 * c);
                // Values 0..16 and 16..32 of both groups: low nibbles in
                // the low half, high nibbles in the high half.
                let v0 = _mm256_srlv_epi32(
                    _mm256_broadcastsi128_si256(_mm_loadu_si128(q.cast())),
                    shift,
                );
                let v1 = _mm256_srlv_epi32(
                    _mm256_broadcastsi128_si256(_mm_loadu_si128(q.add(16).cast())),
                    shift,
                );
                let e = [
                    _mm256_and_si256(v0, nib),
                    _mm256_and_si256(_mm256_srli_epi16::<8>(v0), nib),
                    _mm256_and_si256(v1, nib),
                    _mm256_and_si256(_mm256_srli_epi16::<8>(v1), nib),
                ];
                let (a, b) = madd_halves(&e, &xv);
                _mm256_add_epi32(a, b)
            });
            let s = row_sums(&prod);
            let dx = _mm256_load_ps(xc.d.as_ptr());
            let sums = _mm256_load_ps(xc.sums.as_ptr());
            // d * sc and dmin * m are exact, as in the reference.
            let a = &mut acc[c % 2];
            *a = _mm256_fmadd_ps(
                _mm256_cvtepi32_ps(s),
                _mm256_mul_ps(_mm256_mul_ps(d, sc), dx),
                *a,
            );
            *a = _mm256_fnmadd_ps(sums, _mm256_mul_ps(_mm256_mul_ps(dmin, mn), dx), *a);
        }
        acc
    }
}

/// One super-block of 4 Q6_K rows (`sb`, their blocks) against its 4 pairs
/// `x`: pair `2n + h` holds blocks `4n + 2h` and `4n + 2h + 1` of the
/// super-block, i.e. groups (of 16) `8n + 4h + k` for k = 0..4; the terms
/// of groups k = 0 and 2, `fma(S, d sc d_x)` as in the reference, go to
/// the halves of `acc[0]` (chains 0 and 2), of k = 1 and 3 to `acc[1]`'s.
///
/// # Safety
/// Whole blocks at `sb`; the caller has this module's features.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6k_step(sb: &[*const u8; 4], x: &[Pair; 4], acc: [__m256; 2]) -> [__m256; 2] {
    // SAFETY: 210-byte blocks: `ql` at 0..128, `qh` at 128..192, the scales
    // at 192..208 and `d` at 208; aligned loads of the pairs' fields (a
    // `Pair` is 32-byte aligned, its `d` and `half_sums` at offsets 128 and
    // 192).
    unsafe {
        // t[q], dword k: the scales of group 4q + k of rows 0..4 (signed).
        let t = transpose_rows(halves(sb[0], sb[2], 192), halves(sb[1], sb[3], 192));
        let d = f16_rows(sb, 208);
        let shift = _mm256_set_epi32(2, 2, 2, 2, 0, 0, 0, 0);
        let (nib, top) = (_mm256_set1_epi8(0x0F), _mm256_set1_epi8(0x30));
        let byte = _mm256_set1_epi16(0xFF);
        let words = |v: __m256i| [_mm256_and_si256(v, byte), _mm256_srli_epi16::<8>(v)];
        let mut acc = acc;
        for n in 0..2 {
            // Per row, for pairs 2n and 2n + 1: the stored 6-bit quants in
            // bytes (values 0..16 of both blocks, then 16..32).
            let mut e = [[[_mm256_setzero_si256(); 4]; 4]; 2];
            for r in 0..4 {
                let (ql, qh) = (sb[r].add(64 * n), sb[r].add(128 + 32 * n));
                for part in 0..2 {
                    let l = halves(ql.add(16 * part), ql.add(32 + 16 * part), 0);
                    let h = _mm256_broadcastsi128_si256(_mm_loadu_si128(qh.add(16 * part).cast()));
                    // Bits 0-1 and 4-5 of each byte: the high bits of the
                    // pair 2n's and 2n + 1's blocks.
                    let h = _mm256_srlv_epi32(h, shift);
                    let first = _mm256_or_si256(
                        _mm256_and_si256(l, nib),
                        _mm256_and_si256(_mm256_slli_epi16::<4>(h), top),
                    );
                    let second = _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16::<4>(l), nib),
                        _mm256_and_si256(h, top),
                    );
                    let [a, b] = words(first);
                    e[0][r][2 * part] = a;
                    e[0][r][2 * part + 1] = b;
                    let [a, b] = words(second);
                    e[1][r][2 * part] = a;
                    e[1][r][2 * part + 1] = b;
                }
            }
            for (h, er) in e.iter().enumerate() {
                let xc = &x[2 * n + h];
                let xv = pair_x(xc);
                let (mut lo, mut hi) = ([_mm256_setzero_si256(); 4], [_mm256_setzero_si256(); 4]);
                for r in 0..4 {
                    (lo[r], hi[r]) = madd_halves(&er[r], &xv);
                }
                // The stored quants are `w + 32`: minus 32 times the sums
                // of the activations' halves (exact integers).
                let half = |k: usize| {
                    _mm256_slli_epi32::<5>(_mm256_load_si256(
                        xc.half_sums.as_ptr().add(8 * k).cast(),
                    ))
                };
                let s_lo = _mm256_sub_epi32(row_sums(&lo), half(0));
                let s_hi = _mm256_sub_epi32(row_sums(&hi), half(1));
                // Groups k = 0, 2 (dwords 0, 2 of t[2n + h]) and 1, 3.
                let sc = _mm_shuffle_epi32::<0b11_01_10_00>(t[2 * n + h]);
                let sc_lo = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(sc));
                let sc_hi = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128::<8>(sc)));
                let dx = _mm256_load_ps(xc.d.as_ptr());
                // d * sc is exact, as in the reference.
                acc[0] = _mm256_fmadd_ps(
                    _mm256_cvtepi32_ps(s_lo),
                    _mm256_mul_ps(_mm256_mul_ps(d, sc_lo), dx),
                    acc[0],
                );
                acc[1] = _mm256_fmadd_ps(
                    _mm256_cvtepi32_ps(s_hi),
                    _mm256_mul_ps(_mm256_mul_ps(d, sc_hi), dx),
                    acc[1],
                );
            }
        }
        acc
    }
}

/// The 256 stored quants of a Q4_K (`Q6 = false`, the nibbles) or Q6_K
/// block (6 bits) at `b`, as bytes: vector `k` holds values `16k..16k + 16`
/// ([`widen_k`] makes them the integer weights).
///
/// # Safety
/// A whole block at `b`; the caller has this module's features.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn block_bytes_k<const Q6: bool>(b: *const u8) -> [__m128i; 16] {
    let mut v = [_mm_setzero_si128(); 16];
    let nib = _mm_set1_epi8(0x0F);
    // SAFETY: loads within the block (the contract): Q4_K's `qs` at
    // 16..144; Q6_K's `ql` at 0..128 and `qh` at 128..192.
    unsafe {
        if Q6 {
            let top = _mm_set1_epi8(0x30);
            for n in 0..2 {
                for part in 0..2 {
                    let at = 64 * n + 16 * part;
                    let la = _mm_loadu_si128(b.add(at).cast());
                    let lb = _mm_loadu_si128(b.add(at + 32).cast());
                    let h = _mm_loadu_si128(b.add(128 + 32 * n + 16 * part).cast());
                    // Values 128n + 32m + 16 part + i: low bits from `la`
                    // (m = 0, 2) or `lb` (1, 3), high bits 2m, 2m + 1 of h.
                    let low = [
                        _mm_and_si128(la, nib),
                        _mm_and_si128(lb, nib),
                        _mm_and_si128(_mm_srli_epi16::<4>(la), nib),
                        _mm_and_si128(_mm_srli_epi16::<4>(lb), nib),
                    ];
                    let high = [
                        _mm_and_si128(_mm_slli_epi16::<4>(h), top),
                        _mm_and_si128(_mm_slli_epi16::<2>(h), top),
                        _mm_and_si128(h, top),
                        _mm_and_si128(_mm_srli_epi16::<2>(h), top),
                    ];
                    for m in 0..4 {
                        v[8 * n + 2 * m + part] = _mm_or_si128(low[m], high[m]);
                    }
                }
            }
        } else {
            for c in 0..4 {
                for part in 0..2 {
                    let q = _mm_loadu_si128(b.add(16 + 32 * c + 16 * part).cast());
                    v[4 * c + part] = _mm_and_si128(q, nib);
                    v[4 * c + 2 + part] = _mm_and_si128(_mm_srli_epi16::<4>(q), nib);
                }
            }
        }
    }
    v
}

/// 16 stored quants of [`block_bytes_k`] as the integer weights in int16:
/// Q4_K's as they are, Q6_K's minus 32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn widen_k<const Q6: bool>(q: __m128i) -> __m256i {
    let q = _mm256_cvtepu8_epi16(q);
    if Q6 {
        _mm256_sub_epi16(q, _mm256_set1_epi16(32))
    } else {
        q
    }
}

/// Repacks rows `j..j + PANEL` of Q4_K (`Q6 = false`) or Q6_K weights (the
/// last row repeated past the end) for the prefill panel: group `g` (of 32
/// values, or Q6_K's 16) of a row at `pairs[(g * GP + p) * PANEL + r]`
/// (`GP` pairs of values per group, `2p` and `2p + 1` as two int16),
/// `scales[g * PANEL + r]` its scale and `mins` its min (Q4_K).
///
/// # Safety
/// The CPU has this module's features, `dims` was checked by [`Shape::of`]
/// for `w`, and `p` holds a panel of its rows.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn pack_k<const Q6: bool>(w: &[u8], dims: &Shape, j: usize, p: &mut Packed) {
    let dtype = if Q6 { DType::Q6_K } else { DType::Q4_K };
    let bb = dims.block_bytes;
    assert_eq!(bb, dtype.block_bytes(), "the format's block length");
    // Groups per block.
    let gpb = 256 / super::i16::group_len(dtype);
    let Packed {
        pairs,
        scales,
        mins,
    } = p;
    assert!(
        pairs.len() >= dims.blocks * 128 * PANEL
            && scales.len() >= dims.blocks * gpb * PANEL
            && mins.len() >= dims.blocks * gpb * PANEL
    );
    for half in 0..PANEL / 8 {
        let rows: [usize; 8] = core::array::from_fn(|r| (j + half * 8 + r).min(dims.nrows - 1));
        for k in 0..dims.blocks {
            let blk = |r: usize| &w[rows[r] * dims.row_bytes + k * bb..][..bb];
            for r in 0..8 {
                let ahead = blk(r).as_ptr().wrapping_add(PACK_PREFETCH);
                for line in (0..bb).step_by(64) {
                    // A prefetch never faults: the address may lie past `w`.
                    _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(line).cast());
                }
            }
            // SAFETY: a whole block (row < nrows, k < blocks).
            let bq = |r: usize| unsafe { block_bytes_k::<Q6>(blk(r).as_ptr()) };
            // Written out: `array::map` here was an outlined call and a copy.
            let bytes = [bq(0), bq(1), bq(2), bq(3), bq(4), bq(5), bq(6), bq(7)];
            // Vector v of the 8 rows (values 16v..16v + 16 of each block).
            let column = |v: usize| -> [__m128i; 8] { core::array::from_fn(|r| bytes[r][v]) };
            for v in 0..16 {
                // Byte pair p of the 8 rows is their pair p: transposed as
                // bytes, then widened (see `pack`).
                let t = transpose_words(&column(v));
                // Vector v: pairs 8v..8v + 8 of the block, 128 per block.
                let at = (k * 128 + 8 * v) * PANEL + half * 8;
                for (pi, tp) in t.iter().enumerate() {
                    let dst = &mut pairs[at + pi * PANEL..at + pi * PANEL + 8];
                    // SAFETY: 8 writable i32s.
                    unsafe { _mm256_storeu_si256(dst.as_mut_ptr().cast(), widen_k::<Q6>(*tp)) };
                }
            }
            for r in 0..8 {
                let (sc, mn) = super::i16::block_scales(dtype, blk(r));
                for g in 0..gpb {
                    let at = (k * gpb + g) * PANEL + half * 8 + r;
                    scales[at] = sc[g];
                    mins[at] = mn[g];
                }
            }
        }
    }
}
