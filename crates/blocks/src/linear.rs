//! [`Linear`]: `y = W x + b` over any weight format, read in place.

use patchbay_combinators::{
    check_in, Capacity, Ctx, Layer, LayerError, Node, ProductRef, Products, Rows,
};
use patchbay_primitives::gemm::{self, PackedW};
use patchbay_primitives::quant::{self, QMatrix};
use patchbay_primitives::{kernels, matmul, Act, DType, MatRef, ShapeError, Tensor};
use std::sync::{Arc, OnceLock};

use crate::BlockError;

/// A dense projection `y = W x (+ b)`; `W` is `out x in` (rows are output
/// features, as in GGUF and `nn.Linear`), in any [`DType`] — f32, f16, bf16 or a
/// GGML block format — and stays in the memory map.
///
/// One row (decoding) streams the weights once; several rows (a prompt, or
/// several sequences packed together) run a tiled matrix product. Both
/// compute each output with the same operations, so a row's result is
/// bit-identical whatever number of rows it is computed with.
///
/// ```
/// use patchbay_blocks::Linear;
/// use patchbay_combinators::{Capacity, Ctx, Layer};
/// use patchbay_primitives::{Act, Simd, Tensor, Threads};
/// // 2 outputs from 3 inputs: [[1,0,0],[0,1,1]] plus bias [0.5, 0].
/// let w = Tensor::from_f32(&[1.0, 0.0, 0.0, 0.0, 1.0, 1.0], vec![2, 3]).unwrap();
/// let lin = Linear::new(w, Some(vec![0.5, 0.0])).unwrap();
/// let (threads, scratch) = (Threads::single(), patchbay_combinators::Scratch::new());
/// let ctx = Ctx::new(Simd::detect(), &threads, &scratch);
/// let x = Act::from_vec(1, 3, vec![2.0, 3.0, 4.0]).unwrap();
/// let y = lin.apply(&x, &mut lin.new_state(Capacity::new(1, 1)), &ctx).unwrap();
/// assert_eq!(y.as_slice(), &[2.5, 7.0]);
/// ```
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Vec<f32>>,
    out_dim: usize,
    in_dim: usize,
    order: SumOrder,
    name: &'static str,
    /// The weight packed for the plain-order kernel, on first use (shared by
    /// clones, which have the same weight).
    packed: Arc<OnceLock<PackedW>>,
}

/// The operation order the products of an f32 weight give each output (both
/// are independent of the number of rows and of the thread count, so a row's
/// result never depends on the rows it is batched with).
///
/// ```
/// use patchbay_blocks::{Linear, SumOrder};
/// use patchbay_combinators::{Capacity, Ctx, Layer};
/// use patchbay_primitives::{Act, Simd, Tensor, Threads};
/// let w = Tensor::from_f32(&[1.0, 2.0, 3.0, 4.0], vec![2, 2]).unwrap();
/// let lin = Linear::new(w, None).unwrap().with_order(SumOrder::Sequential);
/// let (threads, scratch) = (Threads::single(), patchbay_combinators::Scratch::new());
/// let ctx = Ctx::new(Simd::detect(), &threads, &scratch);
/// let x = Act::from_vec(2, 2, vec![1.0, 1.0, 0.5, -1.0]).unwrap();
/// let y = lin.apply(&x, &mut lin.new_state(Capacity::new(2, 1)), &ctx).unwrap();
/// assert_eq!(y.as_slice(), &[3.0, 7.0, -1.5, -2.5]);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SumOrder {
    /// The decode kernel's order (`L` lanes, then a reduction tree): a
    /// prompt's rows have the bits of decoding them one at a time.
    #[default]
    Lanes,
    /// Plain `k` order, by the packed GEMM kernel
    /// ([`matmul_sequential`](patchbay_primitives::gemm::matmul_sequential)):
    /// faster on many rows, for layers that only ever see whole sequences
    /// (an encoder), where no decode step has to match a prompt.
    Sequential,
}

impl Linear {
    /// A projection with weight `out x in` and an optional bias of `out` values.
    pub fn new(weight: Tensor, bias: Option<Vec<f32>>) -> Result<Linear, BlockError> {
        let shape = weight.shape();
        if shape.len() != 2 {
            return Err(BlockError::Shape {
                what: "Linear weight must be 2-D",
                expected: vec![0, 0],
                found: shape.to_vec(),
            });
        }
        let (out_dim, in_dim) = (shape[0], shape[1]);
        if let Some(b) = &bias {
            if b.len() != out_dim {
                return Err(BlockError::Shape {
                    what: "Linear bias",
                    expected: vec![out_dim],
                    found: vec![b.len()],
                });
            }
        }
        if matches!(weight.dtype(), DType::I32 | DType::I64) {
            return Err(BlockError::DType {
                what: "Linear weight",
                found: weight.dtype(),
            });
        }
        // An f32 weight that is not 4-byte aligned in its file is copied once.
        let weight = if weight.dtype() == DType::F32 && weight.as_f32().is_none() {
            let v: Vec<f32> = weight
                .bytes()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            Tensor::from_f32(&v, vec![out_dim, in_dim])?
        } else {
            weight
        };
        Ok(Linear {
            weight,
            bias,
            out_dim,
            in_dim,
            order: SumOrder::Lanes,
            name: "Linear",
            packed: Arc::new(OnceLock::new()),
        })
    }

    /// Chooses the operation order of f32 products (other formats keep the
    /// decode kernel's order).
    pub fn with_order(mut self, order: SumOrder) -> Linear {
        self.order = order;
        self
    }

    /// A display name for the graph (`attn_q`, `ffn_up`, ...).
    pub fn named(mut self, name: &'static str) -> Linear {
        self.name = name;
        self
    }

    /// Output features (usable before the `Layer` trait is in scope).
    pub fn out_dim_hint(&self) -> usize {
        self.out_dim
    }

    /// The weight tensor.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The bias, if any.
    pub fn bias(&self) -> Option<&[f32]> {
        self.bias.as_deref()
    }

    /// Computes rows `x` (each `in_dim`) into `y` (`rows x out_dim`).
    pub(crate) fn project(
        &self,
        x: MatRef<'_>,
        y: &mut [f32],
        ctx: &Ctx<'_>,
    ) -> Result<(), ShapeError> {
        let w = &self.weight;
        let (m, n, k) = (x.rows(), self.out_dim, self.in_dim);
        // Every exact path gives each output the same operations whatever `m`
        // is, so a row's result does not depend on the rows it is batched with
        // (one sequence alone or packed with others).
        match (w.as_f32(), m) {
            (Some(wf), _) if self.order == SumOrder::Sequential => {
                // Packed once and kept: every call after the first skips the
                // packing pass, and the bias joins as the products are stored.
                let wv = MatRef::new(wf, n, k)?;
                let (s, t, bias) = (ctx.simd, ctx.threads, self.bias.as_deref());
                let packed = self.packed.get_or_init(|| PackedW::new(s, t, wv));
                if packed.fits(s) {
                    gemm::matmul_packed(s, t, x, packed, bias, y)?;
                } else {
                    // A level other than the one packed for (a test of every
                    // level): packed again for this call only.
                    gemm::matmul_packed(s, t, x, &PackedW::new(s, t, wv), bias, y)?;
                }
                return Ok(());
            }
            (Some(wf), _) => matmul::matmul(ctx.simd, ctx.threads, x, MatRef::new(wf, n, k)?, y)?,
            (None, 1) if w.dtype().is_quantized() => quant::matvec_q(
                ctx.simd,
                ctx.threads,
                w.dtype(),
                w.bytes(),
                n,
                k,
                x.row(0),
                y,
            )?,
            (None, _) => quant::matmul_q(ctx.simd, ctx.threads, w.dtype(), w.bytes(), n, k, x, y)?,
        }
        if let Some(b) = &self.bias {
            let simd = ctx.simd;
            ctx.for_row_runs(y, n, |_, run| {
                for row in run.chunks_exact_mut(n) {
                    kernels::add_assign(simd, row, b);
                }
            });
        }
        Ok(())
    }
}

impl Layer for Linear {
    type State = ();

    fn in_dim(&self) -> usize {
        self.in_dim
    }
    fn out_dim(&self) -> usize {
        self.out_dim
    }
    fn new_state(&self, _cap: Capacity) {}
    fn forward(&self, x: &Act, y: &mut Act, _: &mut (), ctx: &Ctx<'_>) -> Result<(), LayerError> {
        check_in(self.name, self.in_dim, x)?;
        y.reshape(x.rows(), self.out_dim);
        self.project(x.view(), y.as_mut_slice(), ctx)?;
        Ok(())
    }
    fn products<'s>(&'s self, out: &mut Products<'s>) -> bool {
        // Quantised weights only: f32 weights take the packed product.
        let w = &self.weight;
        w.dtype().is_quantized()
            && out.push(ProductRef {
                name: self.name,
                matrix: QMatrix {
                    dtype: w.dtype(),
                    w: w.bytes(),
                    rows: self.out_dim,
                },
                cols: self.in_dim,
                bias: self.bias.as_deref(),
            })
    }
    fn describe(&self) -> Node {
        let params = (self.in_dim * self.out_dim + self.bias.as_ref().map_or(0, Vec::len)) as u64;
        let bias = if self.bias.is_some() { " +bias" } else { "" };
        Node::leaf(self.name, self.in_dim, self.out_dim, params)
            .with_detail(format!("{}{bias}", self.weight.dtype()))
    }
}

/// The language-model head: a [`Linear`] to vocabulary logits that computes
/// only the last row (of each sequence, in a batch of several) when the caller
/// asks for [`Rows::Last`], and only the last `n` rows of the batch for
/// [`Rows::Tail`], with optional
/// final logit soft-capping (`cap * tanh(logit / cap)`).
///
/// ```
/// use patchbay_blocks::{Linear, LmHead};
/// use patchbay_combinators::{Capacity, Ctx, Layer, Rows};
/// use patchbay_primitives::{Act, Simd, Tensor, Threads};
/// let w = Tensor::from_f32(&[1.0, 0.0, 0.0, 1.0, 1.0, 1.0], vec![3, 2]).unwrap();
/// let head = LmHead::new(Linear::new(w, None).unwrap());
/// let (threads, scratch) = (Threads::single(), patchbay_combinators::Scratch::new());
/// let ctx = Ctx::new(Simd::detect(), &threads, &scratch).with_rows(Rows::Last);
/// let x = Act::from_vec(2, 2, vec![9.0, 9.0, 1.0, 2.0]).unwrap();
/// let y = head.apply(&x, &mut head.new_state(Capacity::new(2, 2)), &ctx).unwrap();
/// assert_eq!(y.as_slice(), &[1.0, 2.0, 3.0]); // the last row only
/// ```
#[derive(Debug, Clone)]
pub struct LmHead {
    linear: Linear,
    softcap: Option<f32>,
    tied: bool,
}

impl LmHead {
    /// A head over `linear` (vocab x width).
    pub fn new(linear: Linear) -> LmHead {
        LmHead {
            linear: linear.named("lm_head"),
            softcap: None,
            tied: false,
        }
    }

    /// Marks the weight as the token embedding's own (a tied head): the graph
    /// then counts its parameters once, at the embedding.
    pub fn tied(mut self, tied: bool) -> LmHead {
        self.tied = tied;
        self
    }

    /// Applies `cap * tanh(logit / cap)` to the logits.
    pub fn with_softcap(mut self, cap: Option<f32>) -> LmHead {
        self.softcap = cap;
        self
    }

    /// The projection.
    pub fn linear(&self) -> &Linear {
        &self.linear
    }
}

impl Layer for LmHead {
    type State = ();

    fn in_dim(&self) -> usize {
        self.linear.in_dim
    }
    fn out_dim(&self) -> usize {
        self.linear.out_dim
    }
    fn new_state(&self, _cap: Capacity) {}
    fn forward(&self, x: &Act, y: &mut Act, _: &mut (), ctx: &Ctx<'_>) -> Result<(), LayerError> {
        check_in("lm_head", self.linear.in_dim, x)?;
        let k = self.linear.in_dim;
        let m = x.rows();
        let last_rows = match ctx.rows {
            Rows::All | Rows::Tail(_) => None,
            Rows::Last => Some((0..m).filter(|&r| ctx.is_last_of_sequence(r, m)).count()),
        };
        match last_rows {
            // Several sequences: gather each one's last row.
            Some(n) if ctx.map.is_some() && n < m => {
                let mut picked = ctx.scratch.act();
                picked.reshape(n, k);
                let lasts = (0..m).filter(|&r| ctx.is_last_of_sequence(r, m));
                for (i, r) in lasts.enumerate() {
                    picked.row_mut(i).copy_from_slice(x.row(r));
                }
                let view = MatRef::new(picked.as_slice(), n, k)?;
                y.reshape(n, self.linear.out_dim);
                self.linear.project(view, y.as_mut_slice(), ctx)?;
            }
            _ => {
                let first = match (ctx.rows, ctx.map) {
                    (Rows::Last, None) => m.saturating_sub(1),
                    (Rows::Tail(n), _) => m.saturating_sub(n),
                    _ => 0,
                };
                let rows = m - first;
                y.reshape(rows, self.linear.out_dim);
                if rows > 0 {
                    let view = MatRef::new(&x.as_slice()[first * k..], rows, k)?;
                    self.linear.project(view, y.as_mut_slice(), ctx)?;
                }
            }
        }
        if let Some(cap) = self.softcap {
            for v in y.as_mut_slice() {
                *v = cap * (*v / cap).tanh();
            }
        }
        Ok(())
    }
    fn describe(&self) -> Node {
        let mut n = self.linear.describe();
        n.name = "LmHead".into();
        if self.tied {
            n.own_params = 0;
            n.detail.push_str(" tied to the embedding");
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use patchbay_combinators::Scratch;
    use patchbay_primitives::{Simd, Threads};

    /// A head with a bias (Phi's `lm_head`) adds it, on the last row only
    /// when only the last row is wanted.
    #[test]
    fn lm_head_adds_its_bias() {
        let w = Tensor::from_f32(&[1.0, 0.0, 0.0, 1.0, 1.0, 1.0], vec![3, 2]).unwrap();
        let head = LmHead::new(Linear::new(w, Some(vec![0.5, -1.0, 2.0])).unwrap());
        let (threads, scratch) = (Threads::single(), Scratch::new());
        let ctx = Ctx::new(Simd::detect(), &threads, &scratch);
        let x = Act::from_vec(2, 2, vec![9.0, 8.0, 1.0, 2.0]).unwrap();
        let all = head.apply(&x, &mut (), &ctx).unwrap();
        assert_eq!(all.as_slice(), &[9.5, 7.0, 19.0, 1.5, 1.0, 5.0]);
        let last = head.apply(&x, &mut (), &ctx.with_rows(Rows::Last)).unwrap();
        assert_eq!(last.as_slice(), &[1.5, 1.0, 5.0]);
        assert!(head.describe().detail.contains("+bias"));
    }

    /// `Rows::Tail(n)` computes the last `n` rows only, with the bits they
    /// have among all the rows (Q8_0 weights: few rows take the fused decode
    /// kernels, many the dequantised panels), at every SIMD level.
    #[test]
    fn lm_head_tail_rows_have_the_bits_of_all_rows() {
        use patchbay_primitives::{quant, DType, Storage};
        let (n, k, m) = (37, 96, 11);
        let vals: Vec<f32> = (0..n * k)
            .map(|i| ((i * 7919 % 263) as f32 - 131.0) / 97.0)
            .collect();
        let row_bytes = DType::Q8_0.bytes_for(k).unwrap();
        let mut bytes = vec![0u8; n * row_bytes];
        for (src, dst) in vals.chunks(k).zip(bytes.chunks_mut(row_bytes)) {
            quant::quantize_row(DType::Q8_0, src, dst);
        }
        let storage = std::sync::Arc::new(Storage::from_bytes(&bytes));
        let w = Tensor::new(storage, 0, DType::Q8_0, vec![n, k]).unwrap();
        let head = LmHead::new(Linear::new(w, None).unwrap()).with_softcap(Some(30.0));
        let xs: Vec<f32> = (0..m * k)
            .map(|i| ((i * 104_729 % 211) as f32 - 105.0) / 53.0)
            .collect();
        let x = Act::from_vec(m, k, xs).unwrap();
        let threads = Threads::new(2);
        let scratch = Scratch::new();
        for simd in Simd::available() {
            let ctx = Ctx::new(simd, &threads, &scratch);
            let all = head.apply(&x, &mut (), &ctx).unwrap();
            for tail in [0, 1, 3, 4, 5, m, m + 2] {
                let got = head
                    .apply(&x, &mut (), &ctx.with_rows(Rows::Tail(tail)))
                    .unwrap();
                let rows = tail.min(m);
                assert_eq!((got.rows(), got.cols()), (rows, n), "{simd:?} tail {tail}");
                let want = &all.as_slice()[(m - rows) * n..];
                let same = got
                    .as_slice()
                    .iter()
                    .zip(want)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(
                    same,
                    "{simd:?} tail {tail}: rows differ from those of all rows"
                );
            }
        }
    }
}
