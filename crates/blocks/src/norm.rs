//! Normalisations: [`RmsNorm`] and [`LayerNorm`].

use patchbay_combinators::{check_in, Capacity, Ctx, Layer, LayerError, Node};
use patchbay_primitives::{kernels, Act, Tensor};

use crate::BlockError;

/// f32 parameters as a slice: a view into the map when aligned, else one copy.
fn f32_param(t: &Tensor, what: &'static str, len: usize) -> Result<Tensor, BlockError> {
    if t.numel() != len {
        return Err(BlockError::Shape {
            what,
            expected: vec![len],
            found: t.shape().to_vec(),
        });
    }
    if t.as_f32().is_some() {
        return Ok(t.reshaped(vec![len])?);
    }
    let mut v = vec![0.0; len];
    patchbay_primitives::quant::dequantize_row(t.dtype(), t.bytes(), &mut v)?;
    Ok(Tensor::from_f32(&v, vec![len])?)
}

fn slice(t: &Tensor) -> &[f32] {
    // Constructors guarantee aligned F32.
    t.as_f32().unwrap_or(&[])
}

/// Root-mean-square normalisation with a learned scale:
/// `y = x / sqrt(mean(x²) + eps) * w`. Applies per row; with `groups > 1`
/// each row is cut into that many equal groups normalised separately (per-head
/// q/k norms of Gemma 3 and Qwen 3).
///
/// ```
/// use patchbay_blocks::RmsNorm;
/// use patchbay_combinators::{Capacity, Ctx, Layer};
/// use patchbay_primitives::{Act, Simd, Tensor, Threads};
/// let norm = RmsNorm::new(&Tensor::from_f32(&[1.0, 2.0], vec![2]).unwrap(), 0.0).unwrap();
/// let (threads, scratch) = (Threads::single(), patchbay_combinators::Scratch::new());
/// let ctx = Ctx::new(Simd::detect(), &threads, &scratch);
/// let y = norm.apply(&Act::from_vec(1, 2, vec![3.0, 4.0]).unwrap(), &mut (), &ctx).unwrap();
/// // rms = sqrt((9+16)/2)
/// let r = (12.5f32).sqrt();
/// assert!((y.as_slice()[0] - 3.0 / r).abs() < 1e-6 && (y.as_slice()[1] - 8.0 / r).abs() < 1e-6);
/// ```
#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f32,
    dim: usize,
    groups: usize,
}

impl RmsNorm {
    /// A norm over rows as wide as `weight`.
    pub fn new(weight: &Tensor, eps: f32) -> Result<RmsNorm, BlockError> {
        let dim = weight.numel();
        Ok(RmsNorm {
            weight: f32_param(weight, "RmsNorm weight", dim)?,
            eps,
            dim,
            groups: 1,
        })
    }

    /// A norm applied to each of `groups` consecutive slices of a row (the
    /// weight is shared by the groups).
    pub fn grouped(weight: &Tensor, eps: f32, groups: usize) -> Result<RmsNorm, BlockError> {
        let mut n = RmsNorm::new(weight, eps)?;
        n.groups = groups.max(1);
        Ok(n)
    }

    /// The epsilon.
    pub fn eps(&self) -> f32 {
        self.eps
    }

    /// Normalises `x` into `out` (both `groups * dim` long).
    #[inline]
    pub fn apply_row(&self, simd: patchbay_primitives::Simd, x: &[f32], out: &mut [f32]) {
        let w = slice(&self.weight);
        for (xi, oi) in x.chunks_exact(self.dim).zip(out.chunks_exact_mut(self.dim)) {
            kernels::rms_norm(simd, xi, w, self.eps, oi);
        }
    }
}

impl Layer for RmsNorm {
    type State = ();

    fn in_dim(&self) -> usize {
        self.dim * self.groups
    }
    fn out_dim(&self) -> usize {
        self.dim * self.groups
    }
    fn new_state(&self, _cap: Capacity) {}
    fn forward(&self, x: &Act, y: &mut Act, _: &mut (), ctx: &Ctx<'_>) -> Result<(), LayerError> {
        check_in("RmsNorm", self.in_dim(), x)?;
        let d = x.cols();
        y.reshape(x.rows(), d);
        let (src, simd) = (x.as_slice(), ctx.simd);
        ctx.for_row_runs(y.as_mut_slice(), d, |first, run| {
            for (i, out) in run.chunks_exact_mut(d).enumerate() {
                self.apply_row(simd, &src[(first + i) * d..][..d], out);
            }
        });
        Ok(())
    }
    fn describe(&self) -> Node {
        Node::leaf("RmsNorm", self.in_dim(), self.out_dim(), self.dim as u64)
            .with_detail(format!("eps={:e}", self.eps))
    }
}

/// Layer normalisation `y = (x - mean) / sqrt(var + eps) * w + b`.
///
/// ```
/// use patchbay_blocks::LayerNorm;
/// use patchbay_combinators::{Capacity, Ctx, Layer};
/// use patchbay_primitives::{Act, Simd, Tensor, Threads};
/// let w = Tensor::from_f32(&[1.0, 1.0], vec![2]).unwrap();
/// let b = Tensor::from_f32(&[0.5, 0.5], vec![2]).unwrap();
/// let norm = LayerNorm::new(&w, Some(&b), 0.0).unwrap();
/// let (threads, scratch) = (Threads::single(), patchbay_combinators::Scratch::new());
/// let ctx = Ctx::new(Simd::detect(), &threads, &scratch);
/// let y = norm.apply(&Act::from_vec(1, 2, vec![1.0, 3.0]).unwrap(), &mut (), &ctx).unwrap();
/// assert!((y.as_slice()[0] + 0.5).abs() < 1e-5 && (y.as_slice()[1] - 1.5).abs() < 1e-5);
/// ```
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Option<Tensor>,
    eps: f32,
    dim: usize,
}

impl LayerNorm {
    /// A layer norm with scale `weight` and optional `bias`.
    pub fn new(weight: &Tensor, bias: Option<&Tensor>, eps: f32) -> Result<LayerNorm, BlockError> {
        let dim = weight.numel();
        Ok(LayerNorm {
            weight: f32_param(weight, "LayerNorm weight", dim)?,
            bias: bias
                .map(|b| f32_param(b, "LayerNorm bias", dim))
                .transpose()?,
            eps,
            dim,
        })
    }
}

impl Layer for LayerNorm {
    type State = ();

    fn in_dim(&self) -> usize {
        self.dim
    }
    fn out_dim(&self) -> usize {
        self.dim
    }
    fn new_state(&self, _cap: Capacity) {}
    fn forward(&self, x: &Act, y: &mut Act, _: &mut (), ctx: &Ctx<'_>) -> Result<(), LayerError> {
        check_in("LayerNorm", self.dim, x)?;
        y.reshape(x.rows(), self.dim);
        let w = slice(&self.weight);
        let b = self.bias.as_ref().map(slice);
        let (d, src, simd) = (self.dim, x.as_slice(), ctx.simd);
        ctx.for_row_runs(y.as_mut_slice(), d, |first, run| {
            for (i, out) in run.chunks_exact_mut(d).enumerate() {
                kernels::layer_norm(simd, &src[(first + i) * d..][..d], w, b, self.eps, out);
            }
        });
        Ok(())
    }
    fn describe(&self) -> Node {
        let params = self.dim * if self.bias.is_some() { 2 } else { 1 };
        Node::leaf("LayerNorm", self.dim, self.dim, params as u64)
    }
}
