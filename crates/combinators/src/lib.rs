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
//! * **State is not scratch.** What must persist between calls is an
//!   associated type ([`Layer::State`]) that mirrors the layer tree: a
//!   `Series` state holds both children's states, a `Stack` state one state
//!   per layer application, an attention's state its KV cache, a sampler's
//!   its RNG. [`Layer::new_state`] builds it once for a [`Capacity`] (most
//!   rows per call, most positions). Temporary buffers — the activation
//!   between two stages, a branch's output, quantised activations — come
//!   from one [`Scratch`] workspace in the [`Ctx`], shared by the whole
//!   network: only the buffers on one path of the tree are in use at a time,
//!   so it holds as many as the network is deep, not one per layer. Buffers
//!   keep their allocation, so once a call of each shape has run, forward
//!   passes do not touch the allocator.
//! * **Re-wiring**: a [`Stack`] runs a [`Plan`] over its layers — drop,
//!   repeat with tied weights, re-order, run in parallel and merge — without
//!   copying weights.
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
//! * **Products of one input run together** when decoding (one row): a
//!   [`Parallel`] whose branches are all matrix products of its input (q, k
//!   and v) and a [`Gate`] whose branches start with them (gate and up) list
//!   them ([`Layer::products`], [`Layer::lead_products`]) and run them in one
//!   pass over the worker pool ([`Products::run`]), so the threads meet once
//!   per fork instead of once per product; a branch then finishes from its
//!   share ([`Layer::finish`]). Each output has the bits of its product run
//!   alone. A custom layer that wraps a product can list it too.
//!
//! Because a residual is `Sum<Identity, F>` and [`Layer::IS_IDENTITY`] is a
//! constant, `Sum` compiles the residual case to `y = F(x); y += x` with no
//! scratch copy.
//!
//! Every layer describes itself as a [`Node`] (name, widths, parameters,
//! children), so any composed type prints as a tree.

pub mod graph;
mod layer;
mod plan;
mod wiring;

pub use graph::{GraphFormat, UnknownGraphFormat};
pub use layer::{
    check_in, Borrowed, Capacity, Ctx, KvType, Layer, LayerError, Node, ProductRef, Products,
    RowMap, Rows, Scratch, StackObserver,
};
pub use plan::{
    Merge, Plan, PlanError, PlanLocation, PlanStep, MAX_APPLICATIONS, MAX_REPEAT, PLAN_HELP,
};
pub use wiring::{
    residual, AddHalves, Feedback, Gate, Identity, LayerExt, Loop, LoopState, PairState, Parallel,
    Residual, Series, SeriesState, Stack, StackState, Step, Sum,
};
