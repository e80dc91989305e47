//! # A custom architecture from a user's crate
//!
//! patchbay's architectures are re-wirings of the same parts. This crate sits
//! outside patchbay's own crates, depends on them like any user's crate, and
//! builds an architecture of its own from SmolLM2-135M's trained weights: a
//! Llama in which pairs of adjacent layers are **fused** into one block that
//! keeps the first layer's attention and norms and runs *both* layers' SwiGLU
//! MLPs side by side on the same input, summing their outputs. The model code
//! — the types, the binding and the build — is the 59 lines of code under this
//! comment (rustfmt's default style, without blank and comment lines); the
//! binary (`src/main.rs`) prints its graph and generates text with it.
//!
//! ## 1. The type
//!
//! The wiring is the type. Llama's decoder block is written once, over any
//! MLP, so a trained block and a fused block are the same alias:
//!
//! ```text
//! Attention  = Residual<series![RmsNorm, SelfAttention<Causal>]>
//! Block<Mlp> = series![Attention, Residual<series![RmsNorm, Mlp]>]
//! TwinMlp    = Sum<SwiGlu, SwiGlu>                        x -> mlp_a(x) + mlp_b(x)
//! Trained    = Stack<Block<SwiGlu>>
//! Fused      = Stack<Block<TwinMlp>>
//! TwinNet    = series![Embedding, Trained, Fused, Trained, RmsNorm, LmHead]
//! ```
//!
//! With the default [`FUSED`] = `14..18`, the first `Trained` stack holds
//! layers 0–13, `Fused` the pairs (14, 15) and (16, 17), the second `Trained`
//! layers 18–29: 28 blocks for 30 layers. `Block<SwiGlu>` is the very type of
//! `patchbay_models::families::llama::LlamaBlock` (a test checks it), and
//! `TwinNet` is monomorphised like the shipped families: no dynamic dispatch
//! per layer or token.
//!
//! ## 2. The binding
//!
//! [`Weights`] binds trained tensors by their canonical (GGUF) names:
//! `w.linear("blk.14.ffn_up")` is a projection over `blk.14.ffn_up.weight`,
//! read in place from the memory-mapped file; `w.rms_norm(..)` is a norm. A
//! trained block `i` binds `blk.{i}.attn_norm`, `attn_q`/`k`/`v`/`output`,
//! `ffn_norm` and `ffn_gate`/`up`/`down`, as [`llama::build`] does. A fused pair
//! `(i, i + 1)` binds the same for layer `i`, and adds `blk.{i+1}.ffn_*` as the
//! second term of its [`TwinMlp`]; layer `i + 1`'s attention and norms are
//! left out. Nothing is copied: the fused model reads the bytes of the file.
//!
//! [`build`] takes the binder of the second MLPs as an argument: [`mlp`] for
//! the trained ones. The tests pass a branch of zeros instead, and then the
//! logits equal those of [`llama::build`] with layers 15 and 17 dropped, bit
//! for bit: every tensor sits where it belongs.
//!
//! [`llama::build`]: patchbay_models::families::llama::build
//!
//! ## 3. Running it
//!
//! A [`Model`] is what every runner takes, so the generic
//! [`Session`](patchbay_models::runners::session::Session) generates with it
//! as with any family:
//!
//! ```no_run
//! use custom_architecture::{build, mlp, FUSED};
//! use patchbay_combinators::Step;
//! use patchbay_models::catalog::resolve_model;
//! use patchbay_models::formats::source::ModelSource;
//! use patchbay_models::runners::session::{Session, SessionOptions};
//! use patchbay_models::tokenizer::Tokenizer;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let path = resolve_model("smollm2-135m")?;
//! let source = ModelSource::open(&path)?;
//! let opts = SessionOptions::default();
//! let model = build(&source, &opts.build, FUSED, mlp)?;
//! let tokenizer = Tokenizer::load(&path)?;
//! let mut session = Session::new(model, tokenizer.clone(), &opts)?;
//! let mut out = Vec::new();
//! session.generate(&tokenizer.encode("Once upon a time", true), 24, |t| {
//!     out.push(t);
//!     Step::Continue
//! })?;
//! println!("{}", tokenizer.decode(&out));
//! # Ok(())
//! # }
//! ```
//!
//! or, from the workspace root, `cargo run --release -p custom-architecture --
//! -p "Once upon a time"` (greedy, 24 tokens unless `-n N`).
//!
//! ## 4. The graph
//!
//! Every part describes itself, so the binary prints the pipeline that runs,
//! with `graph::render(&model.net.describe(), GraphFormat::Text)`. The fused
//! pairs show up as a `Sum` of two SwiGLU `Gate`s (abridged; `GraphFormat::Svg`,
//! `Dot` and `Mermaid` draw the same tree):
//!
//! ```text
//! Series 1→49152 · 161.1M params
//! ├─ Embedding [vocab=49152 q8_0] 1→576 · 28.3M params
//! ├─ Stack ×14 576→576 · 49.6M params
//! │  └─ ×14 Series 576→576 · 3.5M params each
//! ├─ Stack ×2 576→576 · 12.4M params
//! │  └─ ×2 Series 576→576 · 6.2M params each
//! │     ├─ Residual 576→576 · 885.3K params          (layer i's attention)
//! │     └─ Residual 576→576 · 5.3M params
//! │        ├─ ┄ skip (identity)
//! │        ├─ Series 576→576 · 5.3M params
//! │        │  ├─ RmsNorm [eps=1e-5] 576→576 · 576 params
//! │        │  └─ Sum 576→576 · 5.3M params
//! │        │     ├─ Series 576→576 · 2.7M params     (layer i's SwiGLU)
//! │        │     │  ├─ Gate 576→1536 · 1.8M params
//! │        │     │  │  ├─ Series 576→1536 · 884.7K params
//! │        │     │  │  │  ├─ ffn_gate [q4_1] 576→1536 · 884.7K params
//! │        │     │  │  │  └─ Silu 1536→1536
//! │        │     │  │  ├─ ffn_up [q4_1] 576→1536 · 884.7K params
//! │        │     │  │  └─ (×) multiply
//! │        │     │  └─ ffn_down [q4_1] 1536→576 · 884.7K params
//! │        │     ├─ Series 576→576 · 2.7M params     (layer i + 1's SwiGLU)
//! │        │     └─ (+) add
//! │        └─ (+) add
//! ├─ Stack ×12 576→576 · 42.5M params
//! ├─ RmsNorm [eps=1e-5] 576→576 · 576 params
//! └─ LmHead [q8_0] 576→49152 · 28.3M params
//! ```
//!
//! ## Why this variant
//!
//! The first wiring one thinks of — every block `i` keeps its attention and
//! sums the MLPs of layers `i` and `i + 1` — counts every MLP twice and falls
//! apart: with a throwaway build of it, perplexity 541 on the WikiText-2
//! sample below (25.2 for the trained model), and greedy text that is noise.
//! Fusing *pairs* asks a sharper question: how much does layer `i + 1` need to
//! see layer `i`'s output, and its own attention, rather than work on the
//! same input in parallel? Perplexity on WikiText-2 (test; the first 8
//! windows of 512 tokens), trained SmolLM2-135M: 25.2.
//!
//! | layers | fused pairs (this crate) | odd layers dropped | pairs as parallel layers, `Plan` `(i\|i+1)` |
//! |---|---|---|---|
//! | 14..18 | 38.6 | 36.8 | 29.9 |
//! | 12..20 | 68.1 | 77.9 | 38.8 |
//! | 10..20 | 87.2 | 1923 | 46.9 |
//! | 6..24  | 237  | 2654 | 130  |
//! | 2..28  | 684  | 9413 | 209  |
//!
//! Running the odd layer's MLP beside the even one rescues much of what
//! dropping the odd layer loses once several pairs are fused (1923 → 87 over
//! 10..20), but it stays well behind running both *whole* layers in parallel
//! (47): the odd layers' attention carries much of their work. Over two pairs
//! (14..18) the fused MLPs do not beat plain dropping. The default, 14..18,
//! keeps the generated text fluent. The ignored test `wikitext_table` in
//! `tests/run.rs` recomputes the table (about ten minutes on two cores).

use std::ops::Range;
use std::sync::Arc;

use patchbay_blocks::{
    self_attention, swiglu, Causal, Embedding, Heads, LmHead, RmsNorm, SelfAttention, SwiGlu,
};
use patchbay_combinators::{residual, series, Layer, LayerExt, Residual, Stack, Sum};
use patchbay_models::families::llama::LlamaConfig;
use patchbay_models::families::{BuildOptions, Model, ModelInfo, Weights};
use patchbay_models::formats::source::ModelSource;
use patchbay_models::ModelError;
use patchbay_primitives::rope::RopeTable;

/// Llama's attention half: a pre-norm causal self-attention residual.
pub type Attention = Residual<series![RmsNorm, SelfAttention<Causal>]>;
/// Llama's decoder block over any MLP; `Block<SwiGlu>` is the trained block.
pub type Block<Mlp> = series![Attention, Residual<series![RmsNorm, Mlp]>];
/// Two trained SwiGLU MLPs reading the same input; their outputs add.
pub type TwinMlp = Sum<SwiGlu, SwiGlu>;
/// Layers as trained.
pub type Trained = Stack<Block<SwiGlu>>;
/// Fused pairs of layers.
pub type Fused = Stack<Block<TwinMlp>>;
/// The network: trained layers, fused pairs, trained layers, the head.
pub type TwinNet = series![Embedding, Trained, Fused, Trained, RmsNorm, LmHead];

/// The layers fused by default: pairs (14, 15) and (16, 17) of SmolLM2's 30.
pub const FUSED: Range<usize> = 14..18;

/// Layer `i`'s trained SwiGLU MLP, bound by name.
pub fn mlp(w: &Weights<'_>, i: usize) -> Result<SwiGlu, ModelError> {
    let lin = |s: &str| w.linear(&format!("blk.{i}.{s}"));
    Ok(swiglu(lin("ffn_gate")?, lin("ffn_up")?, lin("ffn_down")?))
}

/// What every block shares: the weights, the config, the heads, the RoPE table.
type Shared<'a> = (Weights<'a>, &'a LlamaConfig, Heads, Arc<RopeTable>);

/// Layer `i`'s attention and norms around the MLP `m`, bound by name.
fn block<M: Layer>((w, cfg, h, rope): &Shared<'_>, i: usize, m: M) -> Result<Block<M>, ModelError> {
    let lin = |s: &str| w.linear(&format!("blk.{i}.{s}"));
    let norm = |s: &str| w.rms_norm(&format!("blk.{i}.{s}.weight"), cfg.rms_eps, 0.0);
    let [q, k, v, o] = ["attn_q", "attn_k", "attn_v", "attn_output"].map(lin);
    let attn = self_attention(*h, q?, k?, v?, o?, rope.clone(), cfg.rope_layout, Causal)
        .map_err(|e| w.error(&format!("blk.{i}.attn"), e))?;
    Ok(residual(norm("attn_norm")?.then(attn)).then(residual(norm("ffn_norm")?.then(m))))
}

/// Builds [`TwinNet`] with the layers in `fused` merged pairwise: `(i, i + 1)`
/// becomes layer `i`'s block whose MLP is `mlp(i) + second(i + 1)` (pass
/// [`mlp`] as `second` for the trained MLPs). `fused` must hold an even,
/// non-zero number of layers and leave the first and the last as trained.
pub fn build(
    source: &ModelSource,
    opts: &BuildOptions,
    fused: Range<usize>,
    second: impl Fn(&Weights<'_>, usize) -> Result<SwiGlu, ModelError>,
) -> Result<Model<TwinNet>, ModelError> {
    let cfg = LlamaConfig::from_source(source)?;
    let (w, n) = (Weights::new(source), cfg.n_layers);
    if fused.start == 0 || fused.end >= n || fused.is_empty() || fused.len() % 2 == 1 {
        let e = format!("cannot fuse {fused:?}: need an even count, not the first or last layer");
        return Err(ModelError::Usage(e));
    }
    let heads = Heads::new(cfg.n_heads, cfg.n_kv_heads, cfg.head_dim)
        .map_err(|e| w.error("attention heads", e))?;
    let max_context = opts.max_context.min(cfg.context_length).max(1);
    let rope = Arc::new(RopeTable::new(cfg.rope_dim, cfg.rope_base, max_context));
    let s = (w, &cfg, heads, rope);
    let trained = |r: Range<usize>| Result::from_iter(r.map(|i| block(&s, i, mlp(&w, i)?)));
    let twin = |i| block(&s, i, Sum::new(mlp(&w, i)?, second(&w, i + 1)?));
    let twins = Result::from_iter(fused.clone().step_by(2).map(twin))?;
    let embd = w.embedding("token_embd.weight")?;
    let head = Option::unwrap_or(source.try_tensor("output.weight")?, embd.table().clone());
    let net = embd
        .then(Stack::new(trained(0..fused.start)?))
        .then(Stack::new(twins))
        .then(Stack::new(trained(fused.end..n)?))
        .then(w.rms_norm("output_norm.weight", cfg.rms_eps, 0.0)?)
        .then(LmHead::new(w.linear_from("output.weight", head)?));
    let info = ModelInfo {
        family: "twin-mlp",
        arch: source.hparams().arch.clone(),
        dim: cfg.dim,
        n_layers: n - fused.len() / 2,
        vocab: cfg.vocab,
        context_length: cfg.context_length,
        max_context,
    };
    Ok(Model { info, net })
}
