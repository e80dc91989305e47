//! x86-64 integer dot products of quantised weight rows with [`QuantizedActs`],
//! in the manner of llama.cpp's `ggml_vec_dot_*`: unsigned weight quants times
//! signed int8 activations, summed in i32 lanes, scaled per block in f32.
//!
//! One source, two instantiations: `avx2` (AVX2 `maddubs` + `madd`) and `vnni`
//! (AVX-512 VNNI `dpbusd`/`dpwssd` on 256-bit registers, plus AVX-512BW mask
//! moves for the fifth bit of Q5 formats).

use super::acts::QuantizedActs;
use core::arch::x86_64::*;

/// Whether the VNNI instantiation can run on this CPU.
pub fn has_vnni() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512vl")
        && std::arch::is_x86_feature_detected!("avx512vnni")
        && std::arch::is_x86_feature_detected!("f16c")
        && std::arch::is_x86_feature_detected!("fma")
}

/// Whether the AVX2 instantiation can run on this CPU.
pub fn has_avx2() -> bool {
    std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
        && std::arch::is_x86_feature_detected!("f16c")
}

/// Shuffle masks selecting scale bytes `2t` (low 8 bytes) and `2t + 1` (high 8 bytes).
static PAIR_SHUF: [[u8; 16]; 8] = {
    let mut t = [[0u8; 16]; 8];
    let mut i = 0;
    while i < 8 {
        let mut j = 0;
        while j < 16 {
            t[i][j] = (2 * i + j / 8) as u8;
            j += 1;
        }
        i += 1;
    }
    t
};

/// How far ahead (bytes) the block kernels prefetch weights.
/// (Measured on SmolLM2 decode: 0 B -> 61 t/s, 768 B -> 70, 3072 B -> 81.)
const PREFETCH: usize = 3072;

/// How far ahead the kernels that read consecutive rows `tile_bytes` at a
/// time prefetch, with `left_bytes` of their rows after this tile: a whole
/// number of tiles, so that each row's stream asks for the same offset of a
/// row not yet read (a plain distance lands inside the tile being read), at
/// least [`TILE_PREFETCH`] bytes but never past the rows left, which other
/// threads may be reading (0 when none are left: the block being read).
/// Streaming Q8_0 matrices too large for the caches (4864 x 640 and
/// 4864 x 1024, one thread, AVX-512 on AMD Zen 5) went from 7-8 to 15-18
/// GB/s for the exact kernel and from 11-13 to 18-25 for the int8 one.
pub(super) fn tile_ahead(tile_bytes: usize, left_bytes: usize) -> usize {
    tile_ahead_by(TILE_PREFETCH, tile_bytes, left_bytes)
}

/// [`tile_ahead`] with a least distance of `least` bytes.
pub(super) fn tile_ahead_by(least: usize, tile_bytes: usize, left_bytes: usize) -> usize {
    let tile = tile_bytes.max(1);
    (least.div_ceil(tile) * tile).min(left_bytes / tile * tile)
}

/// The least distance of [`tile_ahead`]: about the bytes in flight that hide
/// the memory latency at full read bandwidth.
const TILE_PREFETCH: usize = 8192;

macro_rules! ops_common {
    ($feat:literal) => {
        #[inline]
        #[target_feature(enable = $feat)]
        fn ld256(b: &[u8]) -> __m256i {
            let b: &[u8; 32] = b[..32].try_into().unwrap();
            // SAFETY: `b` is 32 readable bytes; loadu has no alignment requirement.
            unsafe { _mm256_loadu_si256(b.as_ptr().cast()) }
        }

        #[inline]
        #[target_feature(enable = $feat)]
        fn ld256i(b: &[i8]) -> __m256i {
            let b: &[i8; 32] = b[..32].try_into().unwrap();
            // SAFETY: `b` is 32 readable bytes; loadu has no alignment requirement.
            unsafe { _mm256_loadu_si256(b.as_ptr().cast()) }
        }

        #[inline]
        #[target_feature(enable = $feat)]
        fn ld128(b: &[u8]) -> __m128i {
            let b: &[u8; 16] = b[..16].try_into().unwrap();
            // SAFETY: `b` is 16 readable bytes; loadu has no alignment requirement.
            unsafe { _mm_loadu_si128(b.as_ptr().cast()) }
        }

        #[inline]
        #[target_feature(enable = $feat)]
        fn ld_bsums(b: &[i16]) -> __m256i {
            let b: &[i16; 16] = b[..16].try_into().unwrap();
            // SAFETY: `b` is 32 readable bytes; loadu has no alignment requirement.
            unsafe { _mm256_loadu_si256(b.as_ptr().cast()) }
        }

        #[inline]
        #[target_feature(enable = $feat)]
        fn h16(b: &[u8], at: usize) -> f32 {
            let h = u16::from_le_bytes([b[at], b[at + 1]]);
            _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h as i32)))
        }

        #[inline]
        #[target_feature(enable = $feat)]
        fn hsum_ps(v: __m256) -> f32 {
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_movehdup_ps(s));
            _mm_cvtss_f32(s)
        }

        /// Q4_K/Q5_K packed scales to (8 scales, 8 mins) as two u64 of bytes.
        #[inline]
        #[target_feature(enable = $feat)]
        fn k4_scales(s: &[u8]) -> (u64, u64) {
            let w =
                |i: usize| u32::from_le_bytes([s[4 * i], s[4 * i + 1], s[4 * i + 2], s[4 * i + 3]]);
            let (u0, u1, u2) = (w(0), w(1), w(2));
            const K1: u32 = 0x3f3f_3f3f;
            const K2: u32 = 0x0f0f_0f0f;
            const K3: u32 = 0x0303_0303;
            let u3 = ((u2 >> 4) & K2) | (((u1 >> 6) & K3) << 4);
            let m_lo = u1 & K1;
            let s_hi = (u2 & K2) | (((u0 >> 6) & K3) << 4);
            let s_lo = u0 & K1;
            (
                s_lo as u64 | ((s_hi as u64) << 32),
                m_lo as u64 | ((u3 as u64) << 32),
            )
        }

        /// Unaligned 16-byte load from a raw pointer.
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn ldp128(p: *const u8) -> __m128i {
            // SAFETY: the caller guarantees 16 readable bytes at `p`.
            unsafe { _mm_loadu_si128(p.cast()) }
        }

        /// 16 bytes of packed nibbles at `p` to 32 bytes: low nibbles first, then high.
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn nibbles_p(p: *const u8) -> __m256i {
            // SAFETY: forwarded from the caller (16 readable bytes).
            let v = unsafe { ldp128(p) };
            let both = _mm256_set_m128i(_mm_srli_epi16::<4>(v), v);
            _mm256_and_si256(both, _mm256_set1_epi8(0x0F))
        }

        /// Little-endian u32 at `p` (no alignment).
        #[inline(always)]
        unsafe fn rd_u32(p: *const u8) -> u32 {
            // SAFETY: the caller guarantees 4 readable bytes at `p`.
            u32::from_le(unsafe { p.cast::<u32>().read_unaligned() })
        }

        /// Little-endian u16 at `p` (no alignment).
        #[inline(always)]
        unsafe fn rd_u16(p: *const u8) -> u16 {
            // SAFETY: the caller guarantees 2 readable bytes at `p`.
            u16::from_le(unsafe { p.cast::<u16>().read_unaligned() })
        }

        /// Lanes 0 and 1 of the f16 pair packed in `bits` (low half first).
        #[inline]
        #[target_feature(enable = $feat)]
        fn f16x2(bits: u32) -> __m128 {
            _mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32))
        }

        /// `R` rows of a 32-value block format times Q8_0 activations. `$body`
        /// maps a block pointer `$b` and the activation block `$y` to
        /// `(i32 lanes of sum(q * y), [d, m])`: lane 0 is the block scale and
        /// lane 1 the factor multiplied with the activation block sum `d_y *
        /// sum(y)`, accumulated and finally scaled by `$coef` (0 = no such term).
        /// A constant bias `2^$shift` of the quants (Q4_0, Q5_0) is removed in
        /// integers instead: `- 2^$shift * sum(y)` (no float accumulator needed).
        ///
        /// Every row runs exactly the same operations whatever `R` is, so a row's
        /// result does not depend on the rows it is computed with.
        macro_rules! blocks32 {
            ($rows:expr, $xq:expr, $bb:expr, $coef:expr, $shift:literal, |$b:ident, $y:ident| $body:block) => {{
                let xq: &QuantizedActs = $xq;
                let rows: [&[u8]; R] = $rows;
                let nb = rows[0].len() / $bb;
                // Lengths proven once per call; the block loop then reads unchecked.
                assert!(
                    rows.iter().all(|r| r.len() == nb * $bb),
                    "row lengths differ"
                );
                assert!(
                    xq.qs.len() >= nb * 32 && xq.dd.len() >= nb && xq.bsums.len() >= nb,
                    "activations too short"
                );
                let bsp = xq.bsums.as_ptr();
                let base: [*const u8; R] = rows.map(|r| r.as_ptr());
                let yp = xq.qs.as_ptr();
                let ddp = xq.dd.as_ptr();
                let mut acc = [_mm256_setzero_ps(); R];
                let mut corr = [_mm_setzero_ps(); R];
                // The rows are consecutive in the matrix: a whole number of such
                // tiles ahead, every row's stream prefetches a row not yet read.
                // Where the task's rows end is not known here, so unclamped.
                let pfd = tile_ahead(R * nb * $bb, usize::MAX);
                for i in 0..nb {
                    // SAFETY: i < nb, `qs` holds at least 32 * nb values and `dd` nb pairs.
                    let $y = unsafe { _mm256_loadu_si256(yp.add(32 * i).cast()) };
                    // SAFETY: as above; [d, d * sum] of activation block i (8 bytes).
                    let dd = unsafe { _mm_castpd_ps(_mm_load_sd(ddp.add(i).cast())) };
                    // Integer offset term `-(2^shift) * sum(y)` in lane 0 (formats
                    // whose quants are stored with a constant bias of 2^shift).
                    let off = if $shift > 0 {
                        // SAFETY: i < nb <= bsums.len().
                        let ys = unsafe { *bsp.add(i) } as i32;
                        _mm256_zextsi128_si256(_mm_cvtsi32_si128(ys << $shift))
                    } else {
                        _mm256_setzero_si256()
                    };
                    for r in 0..R {
                        // Weights stream from memory once: ask for them early.
                        _mm_prefetch::<_MM_HINT_T0>(
                            base[r].wrapping_add($bb * i + pfd).cast(),
                        );
                        // SAFETY: every row is nb * $bb bytes (asserted), so block i
                        // is the $bb readable bytes at offset $bb * i.
                        let (p, sc) = unsafe {
                            let $b = base[r].add($bb * i);
                            $body
                        };
                        let p = if $shift > 0 { _mm256_sub_epi32(p, off) } else { p };
                        let s2 = _mm_mul_ps(sc, dd);
                        acc[r] = _mm256_fmadd_ps(
                            _mm256_cvtepi32_ps(p),
                            _mm256_broadcastss_ps(s2),
                            acc[r],
                        );
                        if $coef != 0.0 {
                            corr[r] = _mm_add_ps(corr[r], s2);
                        }
                    }
                }
                let mut out = [0.0f32; R];
                for r in 0..R {
                    out[r] = if $coef != 0.0 {
                        hsum_ps(acc[r]) + $coef * _mm_cvtss_f32(_mm_movehdup_ps(corr[r]))
                    } else {
                        hsum_ps(acc[r])
                    };
                }
                out
            }};
        }

        /// `R` Q4_0 rows · Q8_0 activations.
        #[target_feature(enable = $feat)]
        pub fn dot_q4_0_rows<const R: usize>(rows: [&[u8]; R], xq: &QuantizedActs) -> [f32; R] {
            blocks32!(rows, xq, 18, 0.0f32, 3, |b, y| {
                (dot_us(nibbles_p(b.add(2)), y), f16x2(rd_u16(b) as u32))
            })
        }

        /// `R` Q4_1 rows · Q8_0 activations.
        #[target_feature(enable = $feat)]
        pub fn dot_q4_1_rows<const R: usize>(rows: [&[u8]; R], xq: &QuantizedActs) -> [f32; R] {
            blocks32!(rows, xq, 20, 1.0f32, 0, |b, y| {
                (dot_us(nibbles_p(b.add(4)), y), f16x2(rd_u32(b)))
            })
        }

        /// `R` Q5_0 rows · Q8_0 activations.
        #[target_feature(enable = $feat)]
        pub fn dot_q5_0_rows<const R: usize>(rows: [&[u8]; R], xq: &QuantizedActs) -> [f32; R] {
            blocks32!(rows, xq, 22, 0.0f32, 4, |b, y| {
                let hb = _mm256_and_si256(bits_to_bytes(rd_u32(b.add(2))), _mm256_set1_epi8(0x10));
                let q = _mm256_or_si256(nibbles_p(b.add(6)), hb);
                (dot_us(q, y), f16x2(rd_u16(b) as u32))
            })
        }

        /// `R` Q5_1 rows · Q8_0 activations.
        #[target_feature(enable = $feat)]
        pub fn dot_q5_1_rows<const R: usize>(rows: [&[u8]; R], xq: &QuantizedActs) -> [f32; R] {
            blocks32!(rows, xq, 24, 1.0f32, 0, |b, y| {
                let hb = _mm256_and_si256(bits_to_bytes(rd_u32(b.add(4))), _mm256_set1_epi8(0x10));
                let q = _mm256_or_si256(nibbles_p(b.add(8)), hb);
                (dot_us(q, y), f16x2(rd_u32(b)))
            })
        }

        /// `R` Q8_0 rows · Q8_0 activations.
        #[target_feature(enable = $feat)]
        pub fn dot_q8_0_rows<const R: usize>(rows: [&[u8]; R], xq: &QuantizedActs) -> [f32; R] {
            blocks32!(rows, xq, 34, 0.0f32, 0, |b, y| {
                let w = _mm256_loadu_si256(b.add(2).cast());
                // |w| as unsigned times y with w's sign: the u8 x i8 form of a signed product.
                let p = dot_us(_mm256_abs_epi8(w), _mm256_sign_epi8(y, w));
                (p, f16x2(rd_u16(b) as u32))
            })
        }

        /// Q4_0 row · Q8_0 activations.
        #[target_feature(enable = $feat)]
        pub fn dot_q4_0(row: &[u8], xq: &QuantizedActs) -> f32 {
            dot_q4_0_rows([row], xq)[0]
        }

        /// Q4_1 row · Q8_0 activations.
        #[target_feature(enable = $feat)]
        pub fn dot_q4_1(row: &[u8], xq: &QuantizedActs) -> f32 {
            dot_q4_1_rows([row], xq)[0]
        }

        /// Q5_0 row · Q8_0 activations.
        #[target_feature(enable = $feat)]
        pub fn dot_q5_0(row: &[u8], xq: &QuantizedActs) -> f32 {
            dot_q5_0_rows([row], xq)[0]
        }

        /// Q5_1 row · Q8_0 activations.
        #[target_feature(enable = $feat)]
        pub fn dot_q5_1(row: &[u8], xq: &QuantizedActs) -> f32 {
            dot_q5_1_rows([row], xq)[0]
        }

        /// Q8_0 row · Q8_0 activations.
        #[target_feature(enable = $feat)]
        pub fn dot_q8_0(row: &[u8], xq: &QuantizedActs) -> f32 {
            dot_q8_0_rows([row], xq)[0]
        }

        /// Q4_K / Q5_K row · Q8_K activations (`five` adds the fifth bit from `qh`).
        #[inline]
        #[target_feature(enable = $feat)]
        fn dot_qk45(row: &[u8], xq: &QuantizedActs, five: bool) -> f32 {
            let bb = if five { 176 } else { 144 };
            let m4 = _mm256_set1_epi8(0x0F);
            let one = _mm256_set1_epi8(1);
            let mut acc = _mm256_setzero_ps();
            let mut accm = _mm256_setzero_ps();
            let pfd = PREFETCH;
            for (i, b) in row.chunks_exact(bb).enumerate() {
                _mm_prefetch::<_MM_HINT_T0>(b.as_ptr().wrapping_add(pfd).cast());
                _mm_prefetch::<_MM_HINT_T0>(b.as_ptr().wrapping_add(pfd + 64).cast());
                _mm_prefetch::<_MM_HINT_T0>(b.as_ptr().wrapping_add(pfd + 128).cast());
                let dx = xq.d[i];
                let d = h16(b, 0) * dx;
                let dmin = h16(b, 2) * dx;
                let (sc, mn) = k4_scales(&b[4..16]);
                let sc128 = _mm_cvtsi64_si128(sc as i64);
                // Mins times the pair sums of the 16-value activation sums.
                let bs = ld_bsums(&xq.bsums[16 * i..]);
                let pairs = _mm256_madd_epi16(bs, _mm256_set1_epi16(1));
                let mins = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(mn as i64));
                let pm = _mm256_mullo_epi32(pairs, mins);
                accm = _mm256_fmadd_ps(_mm256_cvtepi32_ps(pm), _mm256_set1_ps(dmin), accm);
                let qs = if five { &b[48..176] } else { &b[16..144] };
                let mut hb = if five {
                    ld256(&b[16..48])
                } else {
                    _mm256_setzero_si256()
                };
                let y = &xq.qs[256 * i..256 * i + 256];
                let mut sumi = _mm256_setzero_si256();
                for c in 0..4 {
                    let v = ld256(&qs[32 * c..]);
                    let mut lo = _mm256_and_si256(v, m4);
                    let mut hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), m4);
                    if five {
                        let h1 = _mm256_slli_epi16::<4>(_mm256_and_si256(hb, one));
                        let h2 = _mm256_slli_epi16::<4>(_mm256_and_si256(
                            _mm256_srli_epi16::<1>(hb),
                            one,
                        ));
                        lo = _mm256_or_si256(lo, h1);
                        hi = _mm256_or_si256(hi, h2);
                        hb = _mm256_srli_epi16::<2>(hb);
                    }
                    let p_lo = _mm256_maddubs_epi16(lo, ld256i(&y[64 * c..]));
                    let p_hi = _mm256_maddubs_epi16(hi, ld256i(&y[64 * c + 32..]));
                    let s_lo = _mm_shuffle_epi8(sc128, _mm_set1_epi8((2 * c) as i8));
                    let s_hi = _mm_shuffle_epi8(sc128, _mm_set1_epi8((2 * c + 1) as i8));
                    sumi = madd_acc(sumi, p_lo, _mm256_cvtepu8_epi16(s_lo));
                    sumi = madd_acc(sumi, p_hi, _mm256_cvtepu8_epi16(s_hi));
                }
                acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi), _mm256_set1_ps(d), acc);
            }
            hsum_ps(acc) - hsum_ps(accm)
        }

        /// Q4_K row · Q8_K activations.
        #[target_feature(enable = $feat)]
        pub fn dot_q4_k(row: &[u8], xq: &QuantizedActs) -> f32 {
            dot_qk45(row, xq, false)
        }

        /// Q5_K row · Q8_K activations.
        #[target_feature(enable = $feat)]
        pub fn dot_q5_k(row: &[u8], xq: &QuantizedActs) -> f32 {
            dot_qk45(row, xq, true)
        }

        /// Q6_K row · Q8_K activations.
        #[target_feature(enable = $feat)]
        pub fn dot_q6_k(row: &[u8], xq: &QuantizedActs) -> f32 {
            let m4 = _mm256_set1_epi8(0x0F);
            let m2 = _mm256_set1_epi8(0x03);
            let mut acc = _mm256_setzero_ps();
            let pfd = PREFETCH;
            for (i, b) in row.chunks_exact(210).enumerate() {
                for l in 0..4 {
                    _mm_prefetch::<_MM_HINT_T0>(b.as_ptr().wrapping_add(pfd + 64 * l).cast());
                }
                let d = h16(b, 208) * xq.d[i];
                let sc = ld128(&b[192..208]);
                let y = &xq.qs[256 * i..256 * i + 256];
                // The -32 offset: sum over 16-groups of scale * activation sum.
                let off =
                    _mm256_madd_epi16(_mm256_cvtepi8_epi16(sc), ld_bsums(&xq.bsums[16 * i..]));
                let mut sumi =
                    _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32::<5>(off));
                for n in 0..2 {
                    let ql0 = ld256(&b[64 * n..]);
                    let ql1 = ld256(&b[64 * n + 32..]);
                    let qh = ld256(&b[128 + 32 * n..]);
                    let q = [
                        _mm256_or_si256(
                            _mm256_and_si256(ql0, m4),
                            _mm256_slli_epi16::<4>(_mm256_and_si256(qh, m2)),
                        ),
                        _mm256_or_si256(
                            _mm256_and_si256(ql1, m4),
                            _mm256_slli_epi16::<4>(_mm256_and_si256(
                                _mm256_srli_epi16::<2>(qh),
                                m2,
                            )),
                        ),
                        _mm256_or_si256(
                            _mm256_and_si256(_mm256_srli_epi16::<4>(ql0), m4),
                            _mm256_slli_epi16::<4>(_mm256_and_si256(
                                _mm256_srli_epi16::<4>(qh),
                                m2,
                            )),
                        ),
                        _mm256_or_si256(
                            _mm256_and_si256(_mm256_srli_epi16::<4>(ql1), m4),
                            _mm256_slli_epi16::<4>(_mm256_and_si256(
                                _mm256_srli_epi16::<6>(qh),
                                m2,
                            )),
                        ),
                    ];
                    for (k, qk) in q.iter().enumerate() {
                        let p = _mm256_maddubs_epi16(*qk, ld256i(&y[128 * n + 32 * k..]));
                        let s = _mm_shuffle_epi8(sc, ld128(&PAIR_SHUF[4 * n + k]));
                        sumi = madd_acc(sumi, p, _mm256_cvtepi8_epi16(s));
                    }
                }
                acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi), _mm256_set1_ps(d), acc);
            }
            hsum_ps(acc)
        }
    };
}

/// AVX2 + FMA + F16C.
pub mod avx2 {
    use super::*;

    /// i32 lanes holding sums of 4 adjacent `u8 * i8` products.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn dot_us(q: __m256i, y: __m256i) -> __m256i {
        _mm256_madd_epi16(_mm256_maddubs_epi16(q, y), _mm256_set1_epi16(1))
    }

    /// `acc + madd(a, b)` on i16 pairs.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn madd_acc(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
        _mm256_add_epi32(acc, _mm256_madd_epi16(a, b))
    }

    /// Byte `j` is 0xFF where bit `j` of `x` is set.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn bits_to_bytes(x: u32) -> __m256i {
        let shuf = _mm256_set_epi64x(
            0x0303_0303_0303_0303,
            0x0202_0202_0202_0202,
            0x0101_0101_0101_0101,
            0,
        );
        let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(x as i32), shuf);
        let bytes = _mm256_or_si256(bytes, _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe));
        _mm256_cmpeq_epi8(bytes, _mm256_set1_epi64x(-1))
    }

    ops_common!("avx2,fma,f16c");
}

/// AVX-512 VNNI on 256-bit registers (needs AVX-512 F/BW/VL/VNNI).
pub mod vnni {
    use super::*;

    /// i32 lanes holding sums of 4 adjacent `u8 * i8` products.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    fn dot_us(q: __m256i, y: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(_mm256_setzero_si256(), q, y)
    }

    /// `acc + madd(a, b)` on i16 pairs, fused.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    fn madd_acc(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
        _mm256_dpwssd_epi32(acc, a, b)
    }

    /// Byte `j` is 0xFF where bit `j` of `x` is set.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    fn bits_to_bytes(x: u32) -> __m256i {
        _mm256_movm_epi8(x)
    }

    ops_common!("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni");
}
