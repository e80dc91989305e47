//! # patchbay-blocks
//!
//! Transformer building blocks, each a [`patchbay_combinators::Layer`]:
//! [`Linear`] (any weight format, in place), [`Embedding`], [`RmsNorm`],
//! [`LayerNorm`], [`PositionEmbedding`], activations ([`Silu`], [`GeluTanh`], [`GeluErf`]), the parts
//! of attention ([`QkvProjection`], [`QkNorm`], [`Rope`], [`Attend`] under a
//! [`Mask`], with its [`KvCache`]), [`LmHead`], sentence pooling ([`MeanPool`],
//! [`L2Normalize`]) and the [`Sampler`].
//! Models wire them with the combinators; MLPs are `Gate`s of these and
//! attentions are `Series` of the parts ([`SelfAttention`]).

mod activation;
mod attention;
mod embedding;
mod linear;
mod norm;
mod pool;
mod sampler;

pub use activation::{GeluErf, GeluTanh, Silu};
pub use attention::{
    output_projection, qkv_projection, Attend, Bidirectional, Causal, Heads, KvCache, Mask,
    NormedSelfAttention, QkNorm, QkvProjection, Rope, SelfAttention, SlidingWindow,
};
pub use embedding::{Embedding, PositionEmbedding};
pub use linear::{Linear, LmHead, SumOrder};
pub use norm::{LayerNorm, RmsNorm};
pub use pool::{L2Normalize, MeanPool};
pub use sampler::{Sampler, SamplerConfig, SamplerState};

use std::sync::Arc;

use patchbay_combinators::{Gate, LayerExt, Series};
use patchbay_primitives::rope::{RopeLayout, RopeTable};

/// The SwiGLU MLP: `down(silu(gate(x)) * up(x))`.
pub type SwiGlu = Series<Gate<Series<Linear, Silu>, Linear>, Linear>;

/// Builds a [`SwiGlu`] from its three projections.
pub fn swiglu(gate: Linear, up: Linear, down: Linear) -> SwiGlu {
    let width = gate.out_dim_hint();
    Series::new(
        Gate::new(
            Series::new(gate.named("ffn_gate"), Silu::new(width)),
            up.named("ffn_up"),
        ),
        down.named("ffn_down"),
    )
}

/// Composes a [`SelfAttention`] (Llama's) from its projections, RoPE table and mask.
///
/// ```
/// use std::sync::Arc;
/// use patchbay_blocks::{self_attention, Causal, Heads, Linear};
/// use patchbay_combinators::{Capacity, Ctx, Layer, Scratch};
/// use patchbay_primitives::rope::{RopeLayout, RopeTable};
/// use patchbay_primitives::{Act, Simd, Tensor, Threads};
/// let eye = |n: usize| {
///     let mut v = vec![0.0; n * n];
///     (0..n).for_each(|i| v[i * n + i] = 1.0);
///     Linear::new(Tensor::from_f32(&v, vec![n, n]).unwrap(), None).unwrap()
/// };
/// let pick = |cols: [f32; 8]| Linear::new(Tensor::from_f32(&cols, vec![2, 4]).unwrap(), None).unwrap();
/// let heads = Heads::new(2, 1, 2).unwrap();
/// let rope = Arc::new(RopeTable::new(2, 10000.0, 8));
/// let attn = self_attention(heads, eye(4), pick([1., 0., 0., 0., 0., 1., 0., 0.]),
///     pick([0., 0., 1., 0., 0., 0., 0., 1.]), eye(4), rope, RopeLayout::HalfSplit, Causal).unwrap();
/// let (threads, scratch) = (Threads::single(), Scratch::new());
/// let ctx = Ctx::new(Simd::detect(), &threads, &scratch);
/// let mut st = attn.new_state(Capacity::new(4, 8));
/// let x = Act::from_vec(1, 4, vec![1.0, 0.0, 5.0, 6.0]).unwrap();
/// // A single position attends only to itself: each head outputs its value.
/// assert_eq!(attn.apply(&x, &mut st, &ctx).unwrap().as_slice(), &[5.0, 6.0, 5.0, 6.0]);
/// // Past the cache: an error.
/// assert!(attn.apply(&x, &mut st, &ctx.at(8)).is_err());
/// ```
#[allow(clippy::too_many_arguments)]
pub fn self_attention<M: Mask>(
    heads: Heads,
    wq: Linear,
    wk: Linear,
    wv: Linear,
    wo: Linear,
    rope: Arc<RopeTable>,
    layout: RopeLayout,
    mask: M,
) -> Result<SelfAttention<M>, BlockError> {
    Ok(qkv_projection(heads, wq, wk, wv)?
        .then(Rope::new(heads, rope, layout)?)
        .then(Attend::new(heads, mask))
        .then(output_projection(heads, wo)?))
}

/// The GeGLU MLP (Gemma): `down(gelu_tanh(gate(x)) * up(x))`.
pub type GeGlu = Series<Gate<Series<Linear, GeluTanh>, Linear>, Linear>;

/// Builds a [`GeGlu`] from its three projections.
pub fn geglu(gate: Linear, up: Linear, down: Linear) -> GeGlu {
    let width = gate.out_dim_hint();
    Series::new(
        Gate::new(
            Series::new(gate.named("ffn_gate"), GeluTanh::new(width)),
            up.named("ffn_up"),
        ),
        down.named("ffn_down"),
    )
}

/// Why a block could not be built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum BlockError {
    /// A tensor has the wrong shape.
    #[error("{what}: expected shape {expected:?}, found {found:?}")]
    Shape {
        /// What was checked.
        what: &'static str,
        /// The shape needed.
        expected: Vec<usize>,
        /// The shape found.
        found: Vec<usize>,
    },
    /// A tensor has a format the block cannot use.
    #[error("{what}: unsupported dtype {found}")]
    DType {
        /// What was checked.
        what: &'static str,
        /// The dtype found.
        found: patchbay_primitives::DType,
    },
    /// Inconsistent settings.
    #[error("{0}")]
    Config(String),
    /// A primitive rejected a shape.
    #[error(transparent)]
    Primitive(#[from] patchbay_primitives::ShapeError),
}
