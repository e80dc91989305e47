//! AVX-512 (BW, VNNI) decode kernels of the int16-activation products of
//! Q4_K and Q6_K weights ([`super::i16`]), with the bits of its portable
//! reference.
//!
//! A tile of 4 weight rows takes one super-block (256 values) per step.
//! As for Q5_0, the stored quants stay bytes (Q4_K's nibbles, Q6_K's 6-bit
//! values) and meet the activations' low and high bytes in `vpdpbusd`; a
//! tree of unpacks and adds gives one vector of 16 exact group sums (lane
//! `4c + r`: chain `c` of row `r`), which is scaled and accumulated. The
//! scales are unpacked for the 4 rows at once: each row's bytes in a
//! 128-bit lane, one `vpermd` and one `vpshufb` put them in the sums' lanes.

use super::i16::ActsI16;
use super::x86_i16::{byte_products, half_sums, quad_sums, Shape, SplitRow};
use crate::dtype::DType;
use crate::matmul::Out;
use core::arch::x86_64::*;

/// Values per super-block.
const SUPER: usize = 256;

/// The decode products of Q4_K (`Q6 = false`) or Q6_K rows (see
/// [`super::i16::rows`]).
///
/// # Safety
/// The CPU has the features of [`super::x86_i16`], and `shape` was checked
/// by [`Shape::of`] for `w` and `acts` (with the byte split).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn rows_k<const Q6: bool>(w: &[u8], shape: &Shape, acts: &ActsI16, out: Out) {
    let (block_bytes, blocks, nrows) = (shape.block_bytes, shape.blocks, shape.nrows);
    assert_eq!(
        block_bytes,
        if Q6 { DType::Q6_K } else { DType::Q4_K }.block_bytes(),
        "the format's block length"
    );
    let ahead = super::x86::Ahead::new(shape.row_bytes);
    // Once: `rows` divides, and the tile loop need not.
    let rows = acts.rows();
    let mut j = 0;
    while j < nrows {
        let (row, dist) = super::x86_i16::tile_rows(w, shape, ahead, j);
        for i in 0..rows {
            let x = SplitRow::of(acts, i, true);
            // Lane `4c + r`: row r's sum of the groups `c` mod 4.
            let mut acc = _mm512_setzero_ps();
            for s in 0..blocks {
                let sb: [*const u8; 4] =
                    core::array::from_fn(|r| row[r].wrapping_add(s * block_bytes));
                for at in sb {
                    // A prefetch never faults: the address may lie past `w`.
                    let at = at.wrapping_add(dist);
                    for off in (0..block_bytes).step_by(64) {
                        _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(off).cast());
                    }
                }
                // SAFETY: super-block s < blocks of each row, and its values
                // in `x` (`Shape::of`); the features.
                acc = unsafe {
                    if Q6 {
                        q6k_step(&sb, s, x, acc)
                    } else {
                        q4k_step(&sb, s, x, acc)
                    }
                };
            }
            super::x86_i16::put_chains(acc, out, i, j, nrows);
        }
        j += 4;
    }
}

/// The first 16 bytes at each of `at` in the 128-bit lanes of one vector
/// (lane `r` from `at[r]`).
///
/// # Safety
/// 16 bytes are readable at each; the caller has this module's features.
#[inline(always)]
unsafe fn lanes_of(at: [*const u8; 4]) -> __m512i {
    // SAFETY: per the contract; unaligned loads.
    unsafe {
        let v = _mm512_castsi128_si512(_mm_loadu_si128(at[0].cast()));
        let v = _mm512_inserti32x4::<1>(v, _mm_loadu_si128(at[1].cast()));
        let v = _mm512_inserti32x4::<2>(v, _mm_loadu_si128(at[2].cast()));
        _mm512_inserti32x4::<3>(v, _mm_loadu_si128(at[3].cast()))
    }
}

/// Moves byte `4w + c` of 128-bit lane `r` to byte `4c + r` of lane `w`:
/// from each row's bytes per lane to the sums' lane order, per 4 bytes.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
fn rows_to_lanes(v: __m512i) -> __m512i {
    // Dword `w` of lane `r` to dword `r` of lane `w`, then the 4 x 4 bytes
    // of each lane transposed.
    let dwords = _mm512_set_epi32(15, 11, 7, 3, 14, 10, 6, 2, 13, 9, 5, 1, 12, 8, 4, 0);
    let t = _mm512_permutexvar_epi32(dwords, v);
    let bytes = _mm512_broadcast_i32x4(_mm_set_epi8(
        15, 11, 7, 3, 14, 10, 6, 2, 13, 9, 5, 1, 12, 8, 4, 0,
    ));
    _mm512_shuffle_epi8(t, bytes)
}

/// The signed bytes of 128-bit lane `W` of `v`, as 16 floats.
///
/// # Safety
/// The caller has this module's features.
#[inline(always)]
unsafe fn lane_floats<const W: i32>(v: __m512i) -> __m512 {
    // SAFETY: register-only instructions of the features per the contract.
    unsafe { _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm512_extracti32x4_epi32::<W>(v))) }
}

/// Floats `at[idx[l]]` for the lanes `l` of `idx` (`at` holds 8 floats).
///
/// # Safety
/// 8 floats are readable at `at`; the caller has this module's features.
#[inline(always)]
unsafe fn spread(at: *const f32, idx: __m512i) -> __m512 {
    // SAFETY: per the contract.
    unsafe { _mm512_permutexvar_ps(idx, _mm512_castps256_ps512(_mm256_loadu_ps(at))) }
}

/// One super-block `s` of 4 Q4_K rows (`sb`, their blocks) against one row
/// of `x`: `acc` plus, in lane `bb * 4 + r`, the terms of row `r`'s blocks
/// `bb` and `4 + bb` in that order, each `fma(S, d sc d_x)` then
/// `fma(-X, dmin m d_x)` as in the reference.
///
/// # Safety
/// The blocks are readable, `x` holds super-block `s`, and the caller has
/// this module's features.
#[inline(always)]
unsafe fn q4k_step(sb: &[*const u8; 4], s: usize, x: SplitRow<'_>, acc: __m512) -> __m512 {
    // SAFETY: per the contract: 144 bytes per block, 256 values per
    // super-block of `x` (and 8 block scales and sums).
    unsafe {
        let zero = _mm512_setzero_si512();
        let low_nibbles = _mm512_set1_epi8(0x0F);
        // p[4c + r]: the 64 values of qs[32c..32c + 32] (blocks 2c and
        // 2c + 1) of row r.
        let mut p = [zero; 16];
        for c in 0..4 {
            let at = s * SUPER + 64 * c;
            let lo = _mm512_loadu_si512(x.lo.add(at).cast());
            let hi = _mm512_loadu_si512(x.hi.add(at).cast());
            for (r, b) in sb.iter().enumerate() {
                let qs = _mm512_broadcast_i64x4(_mm256_loadu_si256(b.add(16 + 32 * c).cast()));
                // The upper half takes the high nibbles (block 2c + 1).
                let q = _mm512_mask_srli_epi16::<4>(qs, 0xFFFF_0000, qs);
                let q = _mm512_and_si512(q, low_nibbles);
                p[4 * c + r] = byte_products(q, lo, hi, zero);
            }
        }
        let first: &[__m512i; 8] = p[..8].try_into().expect("8 vectors");
        let second: &[__m512i; 8] = p[8..].try_into().expect("8 vectors");
        let (sa, sb_) = (half_sums(first), half_sums(second));
        // Scales and mins: bytes 4..16 of each block hold 8 6-bit scales and
        // 8 6-bit mins (ggml's packing). Per 128-bit lane (row): dword 1
        // `s0`, 2 `s1`, 3 `s2`; scales 0..4 are `s0 & 63`, 4..8
        // `(s2 & 15) | (s0 >> 6) << 4`; mins 0..4 `s1 & 63`, 4..8
        // `(s2 >> 4) | (s1 >> 6) << 4` (per byte).
        let head = lanes_of(*sb);
        let low = _mm512_shuffle_epi32::<0b11_10_11_01>(head); // s0, s2, s1, s2
        let top = _mm512_shuffle_epi32::<0b10_10_01_01>(head); // s0, s0, s1, s1
        let low = _mm512_srlv_epi32(low, _mm512_set4_epi32(4, 0, 0, 0));
        let low = _mm512_and_si512(
            low,
            _mm512_set4_epi32(0x0F0F_0F0F, 0x3F3F_3F3F, 0x0F0F_0F0F, 0x3F3F_3F3F),
        );
        let top = _mm512_and_si512(
            _mm512_srli_epi32::<2>(top),
            _mm512_set4_epi32(0x3030_3030, 0, 0x3030_3030, 0),
        );
        // Dwords per row: scales 0..4, scales 4..8, mins 0..4, mins 4..8.
        let unpacked = _mm512_or_si512(low, top);
        let t = rows_to_lanes(unpacked);
        // d and dmin of each row, in lanes `4k + r`.
        let dd = _mm512_permutexvar_epi32(_mm512_set4_epi32(12, 8, 4, 0), head);
        let d = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(dd));
        let dmin = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32::<16>(dd)));
        let first_half = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
        let second_half = _mm512_add_epi32(first_half, _mm512_set1_epi32(4));
        let (xd, xs) = (x.d.as_ptr().add(8 * s), x.sums.as_ptr().add(8 * s));
        let mut acc = acc;
        for (half, sums, sc, mn) in [
            (first_half, sa, lane_floats::<0>(t), lane_floats::<2>(t)),
            (second_half, sb_, lane_floats::<1>(t), lane_floats::<3>(t)),
        ] {
            let dx = spread(xd, half);
            // d * sc and dmin * m are exact, as in the reference.
            let scale = _mm512_mul_ps(_mm512_mul_ps(d, sc), dx);
            acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums), scale, acc);
            let min = _mm512_mul_ps(_mm512_mul_ps(dmin, mn), dx);
            acc = _mm512_fnmadd_ps(spread(xs, half), min, acc);
        }
        acc
    }
}

/// One super-block `s` of 4 Q6_K rows (`sb`, their blocks) against one row
/// of `x`: `acc` plus, in lane `4c + r`, the terms of row `r`'s groups
/// (of 16 values) `4P + c` for P = 0..4 in that order, each
/// `fma(S, d sc d_x)` as in the reference.
///
/// # Safety
/// As for [`q4k_step`], with blocks of 210 bytes.
#[inline(always)]
unsafe fn q6k_step(sb: &[*const u8; 4], s: usize, x: SplitRow<'_>, acc: __m512) -> __m512 {
    // SAFETY: per the contract.
    unsafe {
        let zero = _mm512_setzero_si512();
        let (low_nibbles, six_bits) = (_mm512_set1_epi8(0x0F), _mm512_set1_epi8(0x3F));
        // p[4P + r]: values 64P..64P + 64 of row r's block (the stored
        // quants `q = w + 32`).
        let mut p = [zero; 16];
        for n in 0..2 {
            let mut xs = [(zero, zero, zero); 2];
            for (half, xv) in xs.iter_mut().enumerate() {
                let at = s * SUPER + 128 * n + 64 * half;
                let lo = _mm512_loadu_si512(x.lo.add(at).cast());
                let hi = _mm512_loadu_si512(x.hi.add(at).cast());
                // -32 * sum(x) per 4 values starts the low product.
                let offset =
                    _mm512_slli_epi32::<5>(_mm512_loadu_si512(x.neg_quad_q.add(at / 4).cast()));
                *xv = (lo, hi, offset);
            }
            for (r, b) in sb.iter().enumerate() {
                let ql = _mm512_loadu_si512(b.add(64 * n).cast());
                let qh = _mm512_broadcast_i64x4(_mm256_loadu_si256(b.add(128 + 32 * n).cast()));
                // Values 32..64 of each 64 take qh's bits 2, 3 (and 6, 7).
                let h = _mm512_mask_srli_epi16::<2>(qh, 0xFFFF_0000, qh);
                // Values 0..64: low nibbles with bits 0, 1 (2, 3) of h
                // above them; 64..128: high nibbles with bits 4, 5 (6, 7).
                // (0xE4: the bits of the first where the third is set, else
                // of the second.)
                let v0 =
                    _mm512_ternarylogic_epi32::<0xE4>(ql, _mm512_slli_epi16::<4>(h), low_nibbles);
                let v1 =
                    _mm512_ternarylogic_epi32::<0xE4>(_mm512_srli_epi16::<4>(ql), h, low_nibbles);
                for (half, v) in [v0, v1].into_iter().enumerate() {
                    let (lo, hi, offset) = xs[half];
                    let q = _mm512_and_si512(v, six_bits);
                    p[4 * (2 * n + half) + r] = byte_products(q, lo, hi, offset);
                }
            }
        }
        // Scales: bytes 192..208, signed, group g's at 192 + g; d at 208.
        let t = rows_to_lanes(lanes_of(sb.map(|b| b.add(192))));
        let d = sb.map(|b| u64::from(b.add(208).cast::<u16>().read_unaligned()));
        let d = d[0] | d[1] << 16 | d[2] << 32 | d[3] << 48;
        let d = _mm512_cvtph_ps(_mm256_set1_epi64x(d as i64));
        let scales = [
            lane_floats::<0>(t),
            lane_floats::<1>(t),
            lane_floats::<2>(t),
            lane_floats::<3>(t),
        ];
        let xd = x.d.as_ptr().add(8 * s);
        // Lane `4c + r` of pair P: activation block 2P + c / 2.
        let pair_blocks = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
        let mut acc = acc;
        for (pair, sc) in scales.iter().enumerate() {
            let quad: &[__m512i] = &p[4 * pair..4 * pair + 4];
            let sums = _mm512_cvtepi32_ps(quad_sums(quad));
            let idx = _mm512_add_epi32(pair_blocks, _mm512_set1_epi32(2 * pair as i32));
            // d * sc is exact, as in the reference.
            let scale = _mm512_mul_ps(_mm512_mul_ps(d, *sc), spread(xd, idx));
            acc = _mm512_fmadd_ps(sums, scale, acc);
        }
        acc
    }
}
