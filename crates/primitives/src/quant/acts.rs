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
    /// `Q8_0`: `d * sum(qs)` per block, for the min / offset terms.
    pub(crate) ds: Vec<f32>,
    /// `Q8K`: integer sum of each run of 16 values.
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
            ds: Vec::new(),
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
            ds: Vec::with_capacity(n / QK + 1),
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

    pub(crate) fn quantize_scalar(&mut self, x: &[f32], kind: ActsKind) {
        let n = x.len();
        self.kind = kind;
        self.n = n;
        self.qs.clear();
        self.d.clear();
        self.ds.clear();
        self.bsums.clear();
        self.xf.clear();
        match kind {
            ActsKind::Empty => {}
            ActsKind::F32 => self.xf.extend_from_slice(x),
            ActsKind::Q8_0 | ActsKind::Q8K => {
                let bl = if kind == ActsKind::Q8_0 { QK } else { QK_K };
                self.qs.resize(n, 0);
                for (xb, qb) in x.chunks(bl).zip(self.qs.chunks_mut(bl)) {
                    let amax = xb.iter().fold(0.0f32, |a, v| a.max(v.abs()));
                    let d = amax / 127.0;
                    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                    for (q, &v) in qb.iter_mut().zip(xb) {
                        *q = (v * id).round() as i8;
                    }
                    self.d.push(d);
                    if kind == ActsKind::Q8_0 {
                        let s: i32 = qb.iter().map(|&q| q as i32).sum();
                        self.ds.push(d * s as f32);
                    } else {
                        for g in qb.chunks(16) {
                            self.bsums.push(g.iter().map(|&q| q as i16).sum());
                        }
                    }
                }
            }
        }
    }
}
