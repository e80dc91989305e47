//! Activations quantised once per token to int8 blocks ([`QuantizedActs`]), so
//! every weight row of a matrix-vector product can use integer dot products.

use super::blocks::{QK, QK_K};
use crate::dtype::DType;

/// Which int8 block layout the activations are held in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActsKind {
    /// Nothing quantised yet.
    Empty,
    /// 32-value blocks (pairs with Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 weights).
    Q8_0,
    /// 256-value super-blocks with sums per 16 values (pairs with K-quants).
    Q8K,
    /// Plain f32 copy (float weights have no integer path).
    F32,
}

/// An activation vector quantised to int8 blocks, reused for every weight row.
///
/// Unlike GGUF's `block_q8_0`, scales are kept as f32 and the fields are stored
/// as separate arrays, which is what the SIMD kernels want to load. Buffers
/// grow on first use and are reused afterwards (no allocation once sized).
#[derive(Debug, Clone)]
pub struct QuantizedActs {
    pub(crate) kind: ActsKind,
    pub(crate) n: usize,
    /// Quantised values, `n` of them.
    pub(crate) qs: Vec<i8>,
    /// One scale per block (32 values for `Q8_0`, 256 for `Q8K`).
    pub(crate) d: Vec<f32>,
    /// `Q8_0`: `[d, d * sum(qs)]` per block (the second for the min / offset
    /// terms), interleaved so a kernel loads both with one 8-byte load.
    pub(crate) dd: Vec<[f32; 2]>,
    /// `Q8K`: integer sum of each run of 16 values; `Q8_0`: of each block of 32.
    pub(crate) bsums: Vec<i16>,
    /// `F32`: the activations themselves.
    pub(crate) xf: Vec<f32>,
}

impl Default for QuantizedActs {
    fn default() -> Self {
        Self::new()
    }
}

impl QuantizedActs {
    /// An empty buffer (grows on the first [`quantize_acts`](super::quantize_acts)).
    pub fn new() -> Self {
        QuantizedActs {
            kind: ActsKind::Empty,
            n: 0,
            qs: Vec::new(),
            d: Vec::new(),
            dd: Vec::new(),
            bsums: Vec::new(),
            xf: Vec::new(),
        }
    }

    /// A buffer already sized for vectors of up to `n` values, of any kind.
    pub fn with_capacity(n: usize) -> Self {
        QuantizedActs {
            kind: ActsKind::Empty,
            n: 0,
            qs: Vec::with_capacity(n),
            d: Vec::with_capacity(n / QK + 1),
            dd: Vec::with_capacity(n / QK + 1),
            bsums: Vec::with_capacity(n / 16 + 1),
            xf: Vec::with_capacity(n),
        }
    }

    /// The layout currently held.
    pub fn kind(&self) -> ActsKind {
        self.kind
    }

    /// Number of activations held.
    pub fn len(&self) -> usize {
        self.n
    }

    /// True when nothing has been quantised yet.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// The layout weights of `dtype` are multiplied with.
    pub fn kind_for(dtype: DType) -> ActsKind {
        match dtype {
            DType::Q4_0 | DType::Q4_1 | DType::Q5_0 | DType::Q5_1 | DType::Q8_0 => ActsKind::Q8_0,
            DType::Q4_K | DType::Q5_K | DType::Q6_K => ActsKind::Q8K,
            _ => ActsKind::F32,
        }
    }

    /// Dequantised value `i` (for tests and references).
    pub fn value(&self, i: usize) -> f32 {
        match self.kind {
            ActsKind::Empty => 0.0,
            ActsKind::Q8_0 => self.qs[i] as f32 * self.d[i / QK],
            ActsKind::Q8K => self.qs[i] as f32 * self.d[i / QK_K],
            ActsKind::F32 => self.xf[i],
        }
    }

    /// The quantised values (empty for the `F32` kind).
    pub fn quants(&self) -> &[i8] {
        &self.qs
    }

    /// The per-block scales.
    pub fn scales(&self) -> &[f32] {
        &self.d
    }

    /// Quantises `x` into `kind`; `simd` selects the AVX2 block quantiser
    /// (same bits as the scalar one: same scale arithmetic, rounding half away
    /// from zero).
    pub(crate) fn quantize(&mut self, x: &[f32], kind: ActsKind, simd: bool) {
        let n = x.len();
        self.kind = kind;
        self.n = n;
        self.qs.clear();
        self.d.clear();
        self.dd.clear();
        self.bsums.clear();
        self.xf.clear();
        match kind {
            ActsKind::Empty => {}
            ActsKind::F32 => self.xf.extend_from_slice(x),
            ActsKind::Q8_0 | ActsKind::Q8K => {
                let bl = if kind == ActsKind::Q8_0 { QK } else { QK_K };
                let nb = n.div_ceil(bl);
                self.qs.resize(n, 0);
                self.d.resize(nb, 0.0);
                if kind == ActsKind::Q8_0 {
                    self.dd.resize(nb, [0.0; 2]);
                    self.bsums.resize(nb, 0);
                } else {
                    self.bsums.resize(n.div_ceil(16), 0);
                }
                #[cfg(target_arch = "x86_64")]
                if simd && n.is_multiple_of(bl) {
                    // SAFETY: `quantize` is only asked for `simd` after a run-time
                    // check that the CPU has AVX2/FMA/F16C (see `quantize_acts`);
                    // the buffers were sized above for `n` values.
                    unsafe { self.quantize_avx2(x, bl) };
                    return;
                }
                let _ = simd;
                self.quantize_blocks_scalar(x, bl);
            }
        }
    }

    fn quantize_blocks_scalar(&mut self, x: &[f32], bl: usize) {
        for (i, (xb, qb)) in x.chunks(bl).zip(self.qs.chunks_mut(bl)).enumerate() {
            let amax = xb.iter().fold(0.0f32, |a, v| a.max(v.abs()));
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            for (q, &v) in qb.iter_mut().zip(xb) {
                *q = (v * id).round() as i8;
            }
            self.d[i] = d;
            if bl == QK {
                let s: i32 = qb.iter().map(|&q| q as i32).sum();
                self.dd[i] = [d, d * s as f32];
                self.bsums[i] = s as i16;
            } else {
                for (j, g) in qb.chunks(16).enumerate() {
                    self.bsums[16 * i + j] = g.iter().map(|&q| q as i16).sum();
                }
            }
        }
    }

    /// The block quantiser with AVX2: whole blocks of `bl` (32 or 256) values.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn quantize_avx2(&mut self, x: &[f32], bl: usize) {
        use core::arch::x86_64::*;
        let nb = x.len() / bl;
        assert!(self.qs.len() >= nb * bl && self.d.len() >= nb);
        assert!(if bl == QK {
            self.dd.len() >= nb
        } else {
            self.bsums.len() >= nb * bl / 16
        });
        let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
        let sign_mask = _mm256_castsi256_ps(_mm256_set1_epi32(i32::MIN));
        let half = _mm256_set1_ps(0.5);
        let one = _mm256_set1_ps(1.0);
        let perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        #[inline]
        #[target_feature(enable = "avx2,fma,f16c")]
        fn hsum_i(v: __m256i) -> i32 {
            let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
            let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
            let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
            _mm_cvtsi128_si32(s)
        }
        let xp = x.as_ptr();
        let qp = self.qs.as_mut_ptr();
        for i in 0..nb {
            // SAFETY: block i covers x[bl * i .. bl * (i + 1)], inside x (nb = len / bl).
            let xb = unsafe { xp.add(bl * i) };
            let mut m = _mm256_setzero_ps();
            for k in 0..bl / 8 {
                // SAFETY: k * 8 + 8 <= bl values of block i.
                let v = unsafe { _mm256_loadu_ps(xb.add(8 * k)) };
                m = _mm256_max_ps(m, _mm256_and_ps(v, abs_mask));
            }
            let m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
            let m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
            let m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
            let amax = _mm_cvtss_f32(m4);
            // The scale arithmetic is the scalar quantiser's, in scalar.
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            let vid = _mm256_set1_ps(id);
            let mut sum = _mm256_setzero_si256();
            for c in 0..bl / 32 {
                let mut q = [_mm256_setzero_si256(); 4];
                for (k, qk) in q.iter_mut().enumerate() {
                    // SAFETY: 32 * c + 8 * k + 8 <= bl values of block i.
                    let v = _mm256_mul_ps(unsafe { _mm256_loadu_ps(xb.add(32 * c + 8 * k)) }, vid);
                    // Round half away from zero, as f32::round: truncate, then
                    // step away from zero when the dropped part is at least 1/2.
                    let t = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(v);
                    let frac = _mm256_and_ps(_mm256_sub_ps(v, t), abs_mask);
                    let step = _mm256_or_ps(_mm256_and_ps(v, sign_mask), one);
                    let up = _mm256_and_ps(_mm256_cmp_ps::<_CMP_GE_OQ>(frac, half), step);
                    *qk = _mm256_cvttps_epi32(_mm256_add_ps(t, up));
                }
                let p01 = _mm256_packs_epi32(q[0], q[1]);
                let p23 = _mm256_packs_epi32(q[2], q[3]);
                let p = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(p01, p23), perm);
                // SAFETY: qs holds nb * bl values (asserted).
                unsafe { _mm256_storeu_si256(qp.add(bl * i + 32 * c).cast(), p) };
                if bl == QK {
                    sum = _mm256_add_epi32(
                        _mm256_add_epi32(q[0], q[1]),
                        _mm256_add_epi32(q[2], q[3]),
                    );
                } else {
                    let j = 16 * i + 2 * c;
                    self.bsums[j] = hsum_i(_mm256_add_epi32(q[0], q[1])) as i16;
                    self.bsums[j + 1] = hsum_i(_mm256_add_epi32(q[2], q[3])) as i16;
                }
            }
            self.d[i] = d;
            if bl == QK {
                let s = hsum_i(sum);
                self.dd[i] = [d, d * s as f32];
                self.bsums[i] = s as i16;
            }
        }
    }
}
