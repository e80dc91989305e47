//! The Llama family as a type: pre-norm attention residual, then pre-norm
//! SwiGLU residual, N times, a final norm and the head.
//!
//! ```text
//! SwiGlu     = Series<Gate<Series<Linear, Silu>, Linear>, Linear>
//! Attention  = series![QkvProjection, Rope, Attend<Causal>, Linear]   (SelfAttention)
//! LlamaBlock = series![Residual<series![RmsNorm, SelfAttention]>, Residual<series![RmsNorm, SwiGlu]>]
//! LlamaNet   = series![Embedding, Stack<LlamaBlock>, RmsNorm, LmHead]
//! ```
//!
//! The same type runs llama2.c checkpoints (stories260K), GGUF Llama models
//! (SmolLM2), Qwen2 (q/k/v biases, untied head, half-split RoPE) and HF
//! safetensors checkpoints: the differences are values (biases present or not,
//! RoPE layout, tied head), read from the file in [`LlamaConfig::from_source`]
//! and the weight names in [`build`].

use std::sync::Arc;

use patchbay_blocks::{
    self_attention, swiglu, Causal, Embedding, Heads, LmHead, RmsNorm, SelfAttention, SwiGlu,
};
use patchbay_combinators::{residual, series, LayerExt, Residual, Stack};
use patchbay_primitives::rope::{RopeLayout, RopeTable};

use crate::error::ModelError;
use crate::families::{BuildOptions, Family, Kind, Model, ModelInfo, Weights};
use crate::formats::source::ModelSource;

/// One decoder layer.
pub type LlamaBlock = series![
    Residual<series![RmsNorm, SelfAttention<Causal>]>,
    Residual<series![RmsNorm, SwiGlu]>
];

/// The whole network: token ids in, logits out.
pub type LlamaNet = series![Embedding, Stack<LlamaBlock>, RmsNorm, LmHead];

/// Hyper-parameters of a Llama-family model.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// Residual width.
    pub dim: usize,
    /// Decoder layers.
    pub n_layers: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads.
    pub n_kv_heads: usize,
    /// Features per head.
    pub head_dim: usize,
    /// Rotated features per head.
    pub rope_dim: usize,
    /// RoPE base frequency.
    pub rope_base: f64,
    /// How q/k are laid out for RoPE in this file.
    pub rope_layout: RopeLayout,
    /// RMSNorm epsilon.
    pub rms_eps: f32,
    /// Vocabulary size.
    pub vocab: usize,
    /// Context length the model was trained for.
    pub context_length: usize,
}

/// The registry entry.
pub const FAMILY: Family = Family {
    name: "llama",
    kind: Kind::CausalLm,
    archs: &["llama", "qwen2", "mistral"],
    hf_classes: &["LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM"],
};

/// Builds the network of a Llama-family model from a source.
pub fn build(source: &ModelSource, opts: &BuildOptions) -> Result<Model<LlamaNet>, ModelError> {
    let cfg = LlamaConfig::from_source(source)?;
    let w = Weights::new(source, opts.dot_mode);
    let heads = Heads::new(cfg.n_heads, cfg.n_kv_heads, cfg.head_dim)
        .map_err(|e| w.error("attention heads", e))?;
    let norm = |name: &str| w.rms_norm(name, cfg.rms_eps, 0.0);
    let max_context = opts.max_context.min(cfg.context_length).max(1);
    let rope = Arc::new(RopeTable::new(cfg.rope_dim, cfg.rope_base, max_context));
    let mut layers = Vec::with_capacity(cfg.n_layers);
    for i in 0..cfg.n_layers {
        let p = format!("blk.{i}");
        let attn = self_attention(
            heads,
            w.linear(&format!("{p}.attn_q"))?,
            w.linear(&format!("{p}.attn_k"))?,
            w.linear(&format!("{p}.attn_v"))?,
            w.linear(&format!("{p}.attn_output"))?,
            rope.clone(),
            cfg.rope_layout,
            Causal,
        )
        .map_err(|e| w.error(&format!("{p}.attn"), e))?;
        let mlp = swiglu(
            w.linear(&format!("{p}.ffn_gate"))?,
            w.linear(&format!("{p}.ffn_up"))?,
            w.linear(&format!("{p}.ffn_down"))?,
        );
        let block = residual(norm(&format!("{p}.attn_norm.weight"))?.then(attn))
            .then(residual(norm(&format!("{p}.ffn_norm.weight"))?.then(mlp)));
        layers.push(block);
    }
    let embd = w.tensor("token_embd.weight")?;
    let (head_w, tied) = match source.try_tensor("output.weight")? {
        Some(t) => (t, false),
        None => (embd.clone(), true),
    };
    let head = LmHead::new(w.linear_from("output.weight", head_w)?).tied(tied);
    let stack = crate::families::planned(Stack::new(layers), opts)?;
    let net = Embedding::new(embd)
        .map_err(|e| w.error("token_embd.weight", e))?
        .then(stack)
        .then(norm("output_norm.weight")?)
        .then(head);
    Ok(Model {
        info: ModelInfo {
            family: FAMILY.name,
            arch: source.hparams().arch.clone(),
            dim: cfg.dim,
            n_layers: cfg.n_layers,
            vocab: cfg.vocab,
            context_length: cfg.context_length,
            max_context,
        },
        net,
    })
}

impl LlamaConfig {
    /// Reads the hyper-parameters of a Llama-family model (`llama`, `qwen2`,
    /// or a HF `LlamaForCausalLM`/`Qwen2ForCausalLM` checkpoint).
    pub fn from_source(source: &ModelSource) -> Result<LlamaConfig, ModelError> {
        let h = source.hparams();
        let arch = h.arch.as_str();
        if !matches!(arch, "llama" | "qwen2" | "mistral") {
            return Err(ModelError::Unsupported {
                path: source.path().to_path_buf(),
                detail: format!("architecture '{arch}' is not a Llama-family model"),
            });
        }
        let rope_layout = match source.rope_layout() {
            Some(crate::formats::source::RopeLayout::Interleaved) => RopeLayout::Interleaved,
            _ => RopeLayout::HalfSplit,
        };
        Ok(LlamaConfig {
            dim: h.n_embd,
            n_layers: h.n_layer,
            n_heads: h.n_head,
            n_kv_heads: h.n_head_kv,
            head_dim: h.head_dim,
            rope_dim: if h.rope_dim == 0 {
                h.head_dim
            } else {
                h.rope_dim
            },
            rope_base: h.rope_base as f64,
            rope_layout,
            rms_eps: h.norm_eps,
            vocab: h.n_vocab,
            context_length: h.n_ctx.max(1),
        })
    }
}
