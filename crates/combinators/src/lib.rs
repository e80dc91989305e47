//! # patchbay-combinators
//!
//! The [`Layer`] trait and the five patterns that wire layers into transformers:
//!
//! | pattern | type | meaning |
//! |---|---|---|
//! | series composition | [`Series<A, B>`], [`Stack<L>`] | `x -> B(A(x))`; N layers of one type |
//! | parallel fork | [`Parallel<A, B>`] | `x -> [A(x) ‖ B(x)]`, consumed by a merge ([`AddHalves`]) |
//! | additive merge | [`Sum<A, B>`], [`Residual<F>`] | `x -> A(x) + B(x)`; `Residual<F> = Sum<Identity, F>` |
//! | multiplicative gating | [`Gate<A, B>`] | `x -> A(x) * B(x)` element-wise |
//! | recurrence | [`Loop<B>`] | output re-enters the body, state carried across steps |
//!
//! This crate holds no numeric code of its own: merges call
//! `patchbay_primitives::kernels`.
//!
//! ## How a forward pass carries position, cache and scratch
//!
//! * **Activations** are [`Act`](patchbay_primitives::Act) matrices, one row
//!   per token. A layer writes into a caller-provided output buffer.
//! * **State** is an associated type ([`Layer::State`]) that mirrors the layer
//!   tree: a `Series` state holds both children's states plus the buffer
//!   between them, a `Stack` state holds a `Vec` of per-layer states and two
//!   ping-pong buffers, an attention layer's state holds its KV cache, a
//!   sampler's its RNG. [`Layer::new_state`] builds it once for a
//!   [`Capacity`] (most rows per call, most positions), so every buffer is
//!   allocated up front; a forward pass only *reshapes* buffers within their
//!   capacity and never touches the allocator.
//! * **Position** travels in [`Ctx::pos`], the absolute position of the first
//!   input row: prefill calls the model once at `pos` with all prompt rows;
//!   decoding calls it with one row at `pos + n`. Only attention reads it (for
//!   RoPE and to append to its cache); [`Loop`] advances it between steps.
//! * **Which rows are needed** travels in [`Ctx::rows`]: generation asks for
//!   [`Rows::Last`] so the LM head computes one row of logits, not one per
//!   prompt token.
//! * **Weights** are immutable and owned by the layers (views into a memory
//!   map), so one model value can serve many states (sequences).
//!
//! Because a residual is `Sum<Identity, F>` and [`Layer::IS_IDENTITY`] is a
//! constant, `Sum` compiles the residual case to `y = F(x); y += x` with no
//! scratch copy.
//!
//! Every layer describes itself as a [`Node`] (name, widths, parameters,
//! children), so any composed type prints as a tree.

pub mod graph;
mod layer;
mod wiring;

pub use graph::{GraphFormat, UnknownGraphFormat};
pub use layer::{check_in, scratch, Capacity, Ctx, Layer, LayerError, Node, Rows};
pub use wiring::{
    residual, AddHalves, Feedback, Gate, Identity, LayerExt, Loop, LoopState, PairState, Parallel,
    Residual, Series, SeriesState, Stack, StackState, Step, Sum,
};
