//! The Llama family as a type: pre-norm attention residual, then pre-norm
//! SwiGLU residual, N times, a final norm and the head.
//!
//! ```text
//! SwiGlu     = Series<Gate<Series<Linear, Silu>, Linear>, Linear>
//! LlamaBlock = series![Residual<series![RmsNorm, Attention]>, Residual<series![RmsNorm, SwiGlu]>]
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
    swiglu, Attention, AttentionConfig, Embedding, Linear, LmHead, RmsNorm, SwiGlu,
};
use patchbay_combinators::{residual, series, LayerExt, Residual, Stack};
use patchbay_primitives::quant::DotMode;
use patchbay_primitives::rope::{RopeLayout, RopeTable};
use patchbay_primitives::Tensor;

use crate::error::ModelError;
use crate::formats::source::ModelSource;

/// One decoder layer.
pub type LlamaBlock = series![
    Residual<series![RmsNorm, Attention]>,
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

/// Options for building a model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BuildOptions {
    /// How quantised weights meet activations.
    pub dot_mode: DotMode,
    /// Longest context to prepare RoPE tables for (capped by the model's own).
    pub max_context: usize,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            dot_mode: DotMode::Exact,
            max_context: 4096,
        }
    }
}

/// A Llama-family model: its config and its network.
#[derive(Debug, Clone)]
pub struct Llama {
    /// Hyper-parameters.
    pub config: LlamaConfig,
    /// The network, a type built from the combinators.
    pub net: LlamaNet,
}

fn block_err(source: &ModelSource, tensor: &str, e: patchbay_blocks::BlockError) -> ModelError {
    ModelError::Block {
        path: source.path().to_path_buf(),
        tensor: tensor.to_string(),
        source: e,
    }
}

/// Builds the network of a Llama-family model from a source.
pub fn build(source: &ModelSource, opts: &BuildOptions) -> Result<Llama, ModelError> {
    let cfg = LlamaConfig::from_source(source)?;
    let t = |name: &str| source.tensor(name);
    let linear = |name: &str, bias: bool| -> Result<Linear, ModelError> {
        let w = t(&format!("{name}.weight"))?;
        let b = if bias {
            match source.try_tensor(&format!("{name}.bias"))? {
                Some(b) => Some(f32_values(source, &format!("{name}.bias"), &b)?),
                None => None,
            }
        } else {
            None
        };
        Linear::new(w, b)
            .map(|l| l.with_mode(opts.dot_mode))
            .map_err(|e| block_err(source, name, e))
    };
    let norm = |name: &str| -> Result<RmsNorm, ModelError> {
        RmsNorm::new(&t(name)?, cfg.rms_eps).map_err(|e| block_err(source, name, e))
    };
    let ctx = opts.max_context.min(cfg.context_length).max(1);
    let rope = Arc::new(RopeTable::new(cfg.rope_dim, cfg.rope_base, ctx));
    let mut layers = Vec::with_capacity(cfg.n_layers);
    for i in 0..cfg.n_layers {
        let p = format!("blk.{i}");
        let acfg = AttentionConfig::new(
            cfg.n_heads,
            cfg.n_kv_heads,
            cfg.head_dim,
            Some(rope.clone()),
            cfg.rope_layout,
        );
        let attn = Attention::new(
            acfg,
            linear(&format!("{p}.attn_q"), true)?,
            linear(&format!("{p}.attn_k"), true)?,
            linear(&format!("{p}.attn_v"), true)?,
            linear(&format!("{p}.attn_output"), true)?,
        )
        .map_err(|e| block_err(source, &format!("{p}.attn"), e))?;
        let mlp = swiglu(
            linear(&format!("{p}.ffn_gate"), false)?,
            linear(&format!("{p}.ffn_up"), false)?,
            linear(&format!("{p}.ffn_down"), false)?,
        );
        let block = residual(norm(&format!("{p}.attn_norm.weight"))?.then(attn))
            .then(residual(norm(&format!("{p}.ffn_norm.weight"))?.then(mlp)));
        layers.push(block);
    }
    let embd = t("token_embd.weight")?;
    let head_w = match source.try_tensor("output.weight")? {
        Some(w) => w,
        None => embd.clone(),
    };
    let head = Linear::new(head_w, None)
        .map(|l| l.with_mode(opts.dot_mode))
        .map_err(|e| block_err(source, "output.weight", e))?;
    let net = Embedding::new(embd)
        .map_err(|e| block_err(source, "token_embd.weight", e))?
        .then(Stack::new(layers))
        .then(norm("output_norm.weight")?)
        .then(LmHead::new(head));
    Ok(Llama { config: cfg, net })
}

fn f32_values(source: &ModelSource, name: &str, t: &Tensor) -> Result<Vec<f32>, ModelError> {
    let mut v = vec![0.0; t.numel()];
    patchbay_primitives::quant::dequantize_row(t.dtype(), t.bytes(), &mut v)
        .map_err(|e| block_err(source, name, e.into()))?;
    Ok(v)
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
