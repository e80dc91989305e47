//! AVX-512 and AVX2 exact products of block formats (Q4_0, Q4_1, Q5_0, Q8_0,
//! Q4_K, Q6_K) with f32 activations, dequantising in registers: no buffer
//! between the weights and the multiply-adds.
//!
//! Each output gets exactly the operations of the f32 kernel of
//! [`crate::matmul`] on the dequantised weights: one 16-lane (8-lane at the
//! AVX2 level) accumulator fed by fused multiply-adds of consecutive values
//! from the start of the row, then pulp's horizontal sum. At 16 lanes a
//! block's 32 values are two such vectors (its low nibbles, then its high
//! nibbles, as GGML orders them); a K-quant block is eight such groups of 32.
//! The values are those of the portable `deq_*`: for the 32-value formats
//! `q * d` is exact in f32 (at most 8 bits of quant times 11 of an f16), so
//! `q * d + m` rounds once whether or not the multiply-add is fused; the
//! K-quants keep the portable code's separate multiply and difference.
//! Prefill (the panel path) and decode (this one) therefore give every output
//! the same bits.

use super::x86_deq::{
    g_q4_0, g_q4_1, g_q4_k, g_q5_0, g_q6_k, g_q8_0, no_prep, prep_q4_k, prep_q6_k, q6_k_bytes,
};
use crate::dtype::DType;
use crate::matmul::Out;
use crate::simd::Level;
use crate::tensor::MatRef;
use core::arch::x86_64::*;

/// Whether this CPU runs the AVX-512 kernels (pulp's V4, and F16C).
fn has_avx512() -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OK.get_or_init(|| {
        pulp::x86::V4::try_new().is_some() && std::arch::is_x86_feature_detected!("f16c")
    })
}

/// `out[i][j] = dot(x row i, dequantised row j of w)` for the 1..=4 rows of
/// `x` and every row of `w` (`row_bytes` bytes each), with the bits of
/// `exact::fused_rows` at `level`: 16-lane kernels at the AVX-512 level,
/// 8-lane ones at the AVX2 level (a 32-value group is then four vectors).
/// Returns false, doing nothing, when the CPU lacks the level's features
/// (with F16C), the format has no kernel here, or at the scalar level.
pub(crate) fn fused_rows(
    level: Level,
    dtype: DType,
    w: &[u8],
    row_bytes: usize,
    x: MatRef<'_>,
    out: Out,
) -> bool {
    if row_bytes == 0 || x.rows() == 0 || x.rows() > 4 {
        return false;
    }
    let r = |i| x.row(i);
    // Calls the kernel `$f` with the token `$tok` for this many rows of `x`.
    macro_rules! go {
        ($tok:expr, $f:ident) => {{
            // SAFETY: the token `$tok` exists only on a CPU with the level's
            // features, and `has_avx512`/`has_avx2` found F16C (and FMA) too:
            // the features `$f` is compiled for.
            unsafe {
                match x.rows() {
                    1 => $f::<1>($tok, w, row_bytes, [r(0)], out),
                    2 => $f::<2>($tok, w, row_bytes, [r(0), r(1)], out),
                    3 => $f::<3>($tok, w, row_bytes, [r(0), r(1), r(2)], out),
                    _ => $f::<4>($tok, w, row_bytes, [r(0), r(1), r(2), r(3)], out),
                }
            }
        }};
    }
    // The kernels per format at one width, or false.
    macro_rules! formats {
        ($tok:expr, [$q4_0:ident, $q4_1:ident, $q5_0:ident, $q8_0:ident, $q4_k:ident, $q6_k:ident]) => {
            match dtype {
                DType::Q4_0 => go!($tok, $q4_0),
                DType::Q4_1 => go!($tok, $q4_1),
                DType::Q5_0 => go!($tok, $q5_0),
                DType::Q8_0 => go!($tok, $q8_0),
                DType::Q4_K => go!($tok, $q4_k),
                DType::Q6_K => go!($tok, $q6_k),
                _ => return false,
            }
        };
    }
    match level {
        Level::Avx512 if has_avx512() => {
            let Some(v4) = pulp::x86::V4::try_new() else {
                return false;
            };
            formats!(
                v4,
                [rows_q4_0, rows_q4_1, rows_q5_0, rows_q8_0, rows_q4_k, rows_q6_k]
            );
        }
        Level::Avx2 if super::x86::has_avx2() => {
            let Some(v3) = pulp::x86::V3::try_new() else {
                return false;
            };
            formats!(
                v3,
                [rows8_q4_0, rows8_q4_1, rows8_q5_0, rows8_q8_0, rows8_q4_k, rows8_q6_k]
            );
        }
        _ => return false,
    }
    true
}

/// 16 f32 of `x` from `at`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn ld_x(x: &[f32], at: usize) -> __m512 {
    let x: &[f32; 16] = x[at..at + 16].try_into().unwrap();
    // SAFETY: 16 readable f32s; loadu has no alignment requirement.
    unsafe { _mm512_loadu_ps(x.as_ptr()) }
}

/// 16 bytes of `b` from `at`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn ld16(b: &[u8], at: usize) -> __m128i {
    let b: &[u8; 16] = b[at..at + 16].try_into().unwrap();
    // SAFETY: 16 readable bytes; loadu has no alignment requirement.
    unsafe { _mm_loadu_si128(b.as_ptr().cast()) }
}

/// The little-endian f16 at `b[at..at + 2]`, as f32 in every lane.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn f16_splat(b: &[u8], at: usize) -> __m512 {
    // Broadcast the 16 bits, then convert all lanes at once (F16C: exact).
    _mm512_cvtph_ps(_mm256_set1_epi16(i16::from_le_bytes([b[at], b[at + 1]])))
}

/// Q4_0 block: `(nibble - 8) * d`, low nibbles then high.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn deq_q4_0(b: &[u8], _group: usize, _prep: &[__m512; 2]) -> [__m512; 2] {
    let d = f16_splat(b, 0);
    let q = _mm512_cvtepu8_epi32(ld16(b, 2));
    let eight = _mm512_set1_epi32(8);
    let lo = _mm512_sub_epi32(_mm512_and_si512(q, _mm512_set1_epi32(0x0F)), eight);
    let hi = _mm512_sub_epi32(_mm512_srli_epi32::<4>(q), eight);
    [
        _mm512_mul_ps(_mm512_cvtepi32_ps(lo), d),
        _mm512_mul_ps(_mm512_cvtepi32_ps(hi), d),
    ]
}

/// Q4_1 block: `nibble * d + m` (the product is exact: one rounding).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn deq_q4_1(b: &[u8], _group: usize, _prep: &[__m512; 2]) -> [__m512; 2] {
    let (d, m) = (f16_splat(b, 0), f16_splat(b, 2));
    let q = _mm512_cvtepu8_epi32(ld16(b, 4));
    let lo = _mm512_and_si512(q, _mm512_set1_epi32(0x0F));
    let hi = _mm512_srli_epi32::<4>(q);
    [
        _mm512_fmadd_ps(_mm512_cvtepi32_ps(lo), d, m),
        _mm512_fmadd_ps(_mm512_cvtepi32_ps(hi), d, m),
    ]
}

/// Q5_0 block: `((nibble | fifth bit << 4) - 16) * d`; bit `j` of `qh` is
/// value `j`'s fifth bit. The integer is formed as `nibble - 16` where the
/// fifth bit is clear and `nibble` where it is set: one masked subtraction.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn deq_q5_0(b: &[u8], _group: usize, _prep: &[__m512; 2]) -> [__m512; 2] {
    let d = f16_splat(b, 0);
    let qh = !u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    let q = _mm512_cvtepu8_epi32(ld16(b, 6));
    // Lanes whose fifth bit is clear, as 16-bit masks (lane j of each half).
    let (clo, chi) = ((qh & 0xFFFF) as u16, (qh >> 16) as u16);
    let sixteen = _mm512_set1_epi32(16);
    let lo = _mm512_and_si512(q, _mm512_set1_epi32(0x0F));
    let hi = _mm512_srli_epi32::<4>(q);
    let lo = _mm512_mask_sub_epi32(lo, clo, lo, sixteen);
    let hi = _mm512_mask_sub_epi32(hi, chi, hi, sixteen);
    [
        _mm512_mul_ps(_mm512_cvtepi32_ps(lo), d),
        _mm512_mul_ps(_mm512_cvtepi32_ps(hi), d),
    ]
}

/// Q8_0 block: `q * d` with signed bytes `q`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn deq_q8_0(b: &[u8], _group: usize, _prep: &[__m512; 2]) -> [__m512; 2] {
    let d = f16_splat(b, 0);
    [
        _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(ld16(b, 2))), d),
        _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(ld16(b, 18))), d),
    ]
}

/// A block's per-group factors from the AVX2 `prep` (for the K-quants eight
/// or sixteen f32 in two 8-lane vectors, for the 32-value formats nothing),
/// widened to the 16-lane type. Decoded once per block and row rather than
/// once per group, with the portable code's products (`d * scale` of the
/// f16 `d`).
///
/// # Safety
/// The caller is compiled with AVX-512F, AVX2, FMA and F16C.
#[inline(always)]
unsafe fn widen_prep(p: [__m256; 2]) -> [__m512; 2] {
    // SAFETY: the features per the contract.
    unsafe { [_mm512_castps256_ps512(p[0]), _mm512_castps256_ps512(p[1])] }
}

/// Lane `i` (< 8) of `v` in every lane: a broadcast from memory (a load),
/// where a permute of the register would take the shuffle unit that the
/// table lookups of Q4_K need.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn lane16(v: &__m512, i: usize) -> __m512 {
    let lanes: &[f32; 16] = bytemuck::cast_ref(v);
    _mm512_set1_ps(lanes[i])
}

/// `i` in lane `i`: the 16 nibble values as f32.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn ramp16() -> __m512 {
    _mm512_setr_ps(
        0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0, 13.0, 14.0, 15.0,
    )
}

/// Q4_K group `g` (values 32g..32g + 32 of the block): `d1 * nibble - m1`
/// with the group's scale and min (lane `g` of `prep`'s two vectors), low
/// nibbles of bytes `32 * (g / 2)..` for even groups and high ones for odd
/// groups. `d1 * q` is not exact, so the multiply and the difference stay
/// separate, as in the portable code; they are done once per group for the
/// 16 nibble values, and each value is then looked up (a permute reads only
/// an index's low 4 bits, so even groups need no mask).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn deq_q4_k(b: &[u8], g: usize, prep: &[__m512; 2]) -> [__m512; 2] {
    let scale = lane16(&prep[0], g);
    let min = lane16(&prep[1], g);
    let table = _mm512_sub_ps(_mm512_mul_ps(scale, ramp16()), min);
    let at = 16 + 32 * (g / 2);
    let (q0, q1) = (
        _mm512_cvtepu8_epi32(ld16(b, at)),
        _mm512_cvtepu8_epi32(ld16(b, at + 16)),
    );
    let (q0, q1) = if g.is_multiple_of(2) {
        (q0, q1)
    } else {
        (_mm512_srli_epi32::<4>(q0), _mm512_srli_epi32::<4>(q1))
    };
    [
        _mm512_permutexvar_ps(q0, table),
        _mm512_permutexvar_ps(q1, table),
    ]
}

/// Q6_K group `g` (values 32g..32g + 32): with `n = g / 4` and `k = g % 4`,
/// `(d * scale) * (q - 32)`, `q` a nibble of `ql` (bytes `64n + 32 (k % 2)..`,
/// low for `k < 2`) and bits `2k..2k + 2` of `qh` (bytes `128 + 32n..`); the
/// 16 values of each vector share a scale (`d * scale` from `prep`:
/// scales 0..8 in its first vector, 8..16 in its second). The 32 quants are
/// formed as bytes (seven byte operations for all of them, as at the AVX2
/// level) and only then widened: forming them in 32-bit lanes took eleven
/// operations per 16.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn deq_q6_k(b: &[u8], g: usize, prep: &[__m512; 2]) -> [__m512; 2] {
    let (n, k) = (g / 4, g % 4);
    // SAFETY: this function is compiled with AVX2, the helper's contract.
    let q = unsafe { q6_k_bytes(b, g) };
    let lo = _mm512_cvtepi8_epi32(_mm256_castsi256_si128(q));
    let hi = _mm512_cvtepi8_epi32(_mm256_extracti128_si256::<1>(q));
    // Scale 8n + 2k + half times `d`: lane 2k + half of prep[n].
    [
        _mm512_mul_ps(lane16(&prep[n], 2 * k), _mm512_cvtepi32_ps(lo)),
        _mm512_mul_ps(lane16(&prep[n], 2 * k + 1), _mm512_cvtepi32_ps(hi)),
    ]
}

/// 8 f32 of `x` from `at`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn ld_x8(x: &[f32], at: usize) -> __m256 {
    let x: &[f32; 8] = x[at..at + 8].try_into().unwrap();
    // SAFETY: 8 readable f32s; loadu has no alignment requirement.
    unsafe { _mm256_loadu_ps(x.as_ptr()) }
}

/// The kernel of one format at one vector width: a block is `$bb` bytes in
/// `$groups` groups of 32 values. `$prep` (of the block `$pb`) decodes once
/// per block and row what its groups share (two vectors: the K-quants'
/// scales, at the AVX2 level), and `$deq` (of the block `$b`, group `$g` and
/// that `$p`) dequantises a group as `32 / $lanes` vectors of type `$vec`
/// (`$ldx`, `$zero` and `$fma` load, zero and multiply-add them; `$pulp` is
/// pulp's type for them, summed by the level token `$tok`, so the sum is the
/// f32 kernel's).
macro_rules! rows_kernel {
    (
        $feat:literal, $tok:ty, $vec:ty, $pulp:ty, $lanes:literal,
        [$ldx:ident, $zero:ident, $fma:ident, $store:ident],
        $name:ident, $tile:ident, |$pb:ident| $prep:expr,
        |$b:ident, $g:ident, $p:ident| $deq:expr, $bb:expr, $groups:expr
    ) => {
        /// Every row of `w` against the `MR` rows of `x`.
        #[target_feature(enable = $feat)]
        fn $name<const MR: usize>(
            tok: $tok,
            w: &[u8],
            row_bytes: usize,
            x: [&[f32]; MR],
            out: Out,
        ) {
            let nrows = w.len() / row_bytes;
            let (ahead4, ahead1) = (
                super::x86::Ahead::<4>::new(row_bytes),
                super::x86::Ahead::<1>::new(row_bytes),
            );
            let mut j = 0;
            while j + 4 <= nrows {
                $tile::<MR, 4>(
                    tok,
                    &w[j * row_bytes..(j + 4) * row_bytes],
                    row_bytes,
                    x,
                    out,
                    j,
                    ahead4.distance(nrows - j - 4),
                );
                j += 4;
            }
            while j < nrows {
                $tile::<MR, 1>(
                    tok,
                    &w[j * row_bytes..(j + 1) * row_bytes],
                    row_bytes,
                    x,
                    out,
                    j,
                    ahead1.distance(nrows - j - 1),
                );
                j += 1;
            }
        }

        /// `NR` rows of `w` (from output column `j`) against the rows of `x`,
        /// prefetching `dist` bytes ahead of each block.
        #[inline]
        #[target_feature(enable = $feat)]
        fn $tile<const MR: usize, const NR: usize>(
            tok: $tok,
            w: &[u8],
            row_bytes: usize,
            x: [&[f32]; MR],
            out: Out,
            j: usize,
            dist: usize,
        ) {
            const V: usize = 32 / $lanes;
            let mut acc = [[$zero(); NR]; MR];
            let blocks = row_bytes / $bb;
            // Checked once here rather than at every block's slice and every
            // load of `x` (their checks were a third of the instructions).
            // (Checked products: a wrapped one could pass the comparison.)
            assert!(NR.checked_mul(row_bytes).is_some_and(|n| w.len() >= n));
            let xlen = blocks.checked_mul(32 * $groups).expect("row length");
            for xi in x {
                assert!(xi.len() >= xlen);
            }
            for k in 0..blocks {
                let mut blk: [&[u8]; NR] = [&[]; NR];
                for (jj, b) in blk.iter_mut().enumerate() {
                    let at = jj * row_bytes + k * $bb;
                    // SAFETY: `jj < NR` and `k < blocks = row_bytes / $bb`,
                    // so `at + $bb <= jj * row_bytes + blocks * $bb
                    // <= (jj + 1) * row_bytes <= NR * row_bytes <= w.len()`
                    // (asserted above, without overflow).
                    *b = unsafe { w.get_unchecked(at..at + $bb) };
                }
                let mut xb: [&[f32]; MR] = [&[]; MR];
                for (xb, xi) in xb.iter_mut().zip(x) {
                    let at = k * 32 * $groups;
                    // SAFETY: `k < blocks`, so `at + 32 * $groups <=
                    // blocks * 32 * $groups = xlen <= xi.len()` (asserted
                    // above, without overflow).
                    *xb = unsafe { xi.get_unchecked(at..at + 32 * $groups) };
                }
                let mut preps = [[$zero(); 2]; NR];
                for (jj, prep) in preps.iter_mut().enumerate() {
                    let $pb = blk[jj];
                    // SAFETY: as for `$deq` below.
                    #[allow(unused_unsafe)]
                    let decoded: [$vec; 2] = unsafe { $prep };
                    *prep = decoded;
                }
                for gi in 0..$groups {
                    let mut xv = [[$zero(); V]; MR];
                    for i in 0..MR {
                        for v in 0..V {
                            xv[i][v] = $ldx(xb[i], 32 * gi + $lanes * v);
                        }
                    }
                    for jj in 0..NR {
                        let $b = blk[jj];
                        // A prefetch never faults: the address may lie past `w`.
                        let ahead = dist + gi * $bb / $groups;
                        _mm_prefetch::<_MM_HINT_T0>($b.as_ptr().wrapping_add(ahead).cast());
                        let ($g, $p) = (gi, &preps[jj]);
                        // SAFETY: this function is compiled with the level's
                        // features, which the AVX2 decoders (`unsafe` to be
                        // `inline(always)`) require; the AVX-512 ones are safe.
                        #[allow(unused_unsafe)]
                        let wv: [$vec; V] = unsafe { $deq };
                        for i in 0..MR {
                            for v in 0..V {
                                acc[i][jj] = $fma(xv[i][v], wv[v], acc[i][jj]);
                            }
                        }
                    }
                }
            }
            for i in 0..MR {
                for jj in 0..NR {
                    let mut lanes = [0.0f32; $lanes];
                    // SAFETY: `lanes` holds one vector's f32s; storeu is unaligned.
                    unsafe { $store(lanes.as_mut_ptr(), acc[i][jj]) };
                    let v: $pulp = bytemuck::cast(lanes);
                    out.put(i, j + jj, pulp::Simd::reduce_sum_f32s(tok, v));
                }
            }
        }
    };
}

/// 16 lanes: AVX-512 (pulp's V4); `$prep` (the AVX2 one, widened) decodes
/// what a block's groups share.
macro_rules! rows16 {
    ($name:ident, $tile:ident, $prep:ident, $deq:ident, $bb:expr, $groups:expr) => {
        rows_kernel!(
            "avx512f,avx512bw,avx512vl,avx2,fma,f16c",
            pulp::x86::V4,
            __m512,
            pulp::f32x16,
            16,
            [ld_x, _mm512_setzero_ps, _mm512_fmadd_ps, _mm512_storeu_ps],
            $name,
            $tile,
            |pb| widen_prep($prep(pb)),
            |b, g, p| $deq(b, g, p),
            $bb,
            $groups
        );
    };
}

/// 8 lanes: AVX2 (pulp's V3); `$prep` decodes what a block's groups share.
macro_rules! rows8 {
    ($name:ident, $tile:ident, $prep:ident, $deq:ident, $bb:expr, $groups:expr) => {
        rows_kernel!(
            "avx2,fma,f16c",
            pulp::x86::V3,
            __m256,
            pulp::f32x8,
            8,
            [ld_x8, _mm256_setzero_ps, _mm256_fmadd_ps, _mm256_storeu_ps],
            $name,
            $tile,
            |pb| $prep(pb),
            |b, g, p| $deq(b, g, p),
            $bb,
            $groups
        );
    };
}

rows16!(rows_q4_0, tile_q4_0, no_prep, deq_q4_0, 18, 1);
rows16!(rows_q4_1, tile_q4_1, no_prep, deq_q4_1, 20, 1);
rows16!(rows_q5_0, tile_q5_0, no_prep, deq_q5_0, 22, 1);
rows16!(rows_q8_0, tile_q8_0, no_prep, deq_q8_0, 34, 1);
rows16!(rows_q4_k, tile_q4_k, prep_q4_k, deq_q4_k, 144, 8);
rows16!(rows_q6_k, tile_q6_k, prep_q6_k, deq_q6_k, 210, 8);

rows8!(rows8_q4_0, tile8_q4_0, no_prep, g_q4_0, 18, 1);
rows8!(rows8_q4_1, tile8_q4_1, no_prep, g_q4_1, 20, 1);
rows8!(rows8_q5_0, tile8_q5_0, no_prep, g_q5_0, 22, 1);
rows8!(rows8_q8_0, tile8_q8_0, no_prep, g_q8_0, 34, 1);
rows8!(rows8_q4_k, tile8_q4_k, prep_q4_k, g_q4_k, 144, 8);
rows8!(rows8_q6_k, tile8_q6_k, prep_q6_k, g_q6_k, 210, 8);
