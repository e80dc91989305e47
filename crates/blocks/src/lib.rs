//! # patchbay-blocks
//!
//! Transformer building blocks, each a [`patchbay_combinators::Layer`]:
//! [`Linear`] (any weight format, in place), [`Embedding`], [`RmsNorm`],
//! [`LayerNorm`], activations ([`Silu`], [`GeluTanh`], [`GeluErf`]),
//! [`Attention`] with RoPE and a KV cache, [`LmHead`] and the [`Sampler`].
//! Models wire them with the combinators; MLPs are `Gate`s of these.

mod activation;
mod attention;
mod embedding;
mod linear;
mod norm;
mod sampler;

pub use activation::{GeluErf, GeluTanh, Silu};
pub use attention::{Attention, AttentionConfig, AttentionState};
pub use embedding::Embedding;
pub use linear::{Linear, LinearState, LmHead};
pub use norm::{LayerNorm, RmsNorm};
pub use sampler::{Sampler, SamplerConfig, SamplerState};

use patchbay_combinators::{Gate, Series};

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
