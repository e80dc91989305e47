//! Parallel blocks (GPT-J, GPT-NeoX, Phi): one LayerNorm feeds attention and
//! the MLP side by side, and both outputs are added to the residual. Here as
//! HF's Phi (`PhiForCausalLM`, model type `phi`; llama.cpp's `phi2`).
//!
//! The parallel block is a one-line difference from the serial one:
//!
//! ```text
//! SerialBlock<A, M>   = series![Residual<series![LayerNorm, A]>, Residual<series![LayerNorm, M]>]  // GPT-2
//! ParallelBlock<A, M> = Residual<series![LayerNorm, Sum<A, M>]>                                    // Phi, GPT-J
//! ```
//!
//! so `x + A(norm(x)) + M(norm(x))` in place of
//! `y = x + A(norm1(x)); y + M(norm2(y))`. The rest of Phi:
//!
//! ```text
//! PhiAttention = series![QkvProjection, Rope (partial), Attend<Causal>, Linear]   (SelfAttention)
//! PhiMlp       = series![Linear (fc1), GeluTanh, Linear (fc2)]
//! PhiBlock     = ParallelBlock<PhiAttention, PhiMlp>
//! PhiNet       = series![Embedding, Stack<PhiBlock>, LayerNorm, LmHead (with bias)]
//! ```
//!
//! Every projection has a bias; RoPE rotates only the first
//! `head_dim * partial_rotary_factor` features of each head (NeoX half-split
//! pairs within them), the rest pass through. The math follows HF's
//! `modeling_phi.py`.

use std::sync::Arc;

use patchbay_blocks::{
    self_attention, Causal, Embedding, GeluTanh, Heads, LayerNorm, Linear, LmHead, SelfAttention,
};
use patchbay_combinators::{residual, series, LayerExt, Residual, Stack, Sum};
use patchbay_primitives::rope::{RopeLayout, RopeTable};

use super::gpt2::{layer_norm, TANH_GELU_NAMES};
use super::{split_block, split_kind, BuildOptions, Family, Model, ModelInfo, Weights};
use crate::error::ModelError;
use crate::formats::source::ModelSource;

/// The parallel block: one norm, attention and MLP both reading it, their sum
/// added to the residual. Compare [`super::gpt2::SerialBlock`].
pub type ParallelBlock<A, M> = Residual<series![LayerNorm, Sum<A, M>]>;

/// Phi's attention: separate q/k/v projections, partial RoPE, causal attend,
/// the `dense` output projection.
pub type PhiAttention = SelfAttention<Causal>;

/// Phi's MLP: `fc1`, tanh GELU, `fc2`.
pub type PhiMlp = series![Linear, GeluTanh, Linear];

/// One Phi layer.
pub type PhiBlock = ParallelBlock<PhiAttention, PhiMlp>;

/// The whole network: token ids in, logits out.
pub type PhiNet = series![Embedding, Stack<PhiBlock>, LayerNorm, LmHead];

/// Whether a declared architecture is Phi (HF `phi`, GGUF `phi2`).
pub fn is_phi_arch(arch: &str) -> bool {
    matches!(arch, "phi" | "phi2")
}

/// Phi's stored Q/K use the half-split rotation, in HF and GGUF files alike.
pub const ROPE_LAYOUT: RopeLayout = RopeLayout::HalfSplit;

/// The HF name of canonical tensor `name` in a Phi checkpoint
/// (`blk.3.attn_output.weight` -> `model.layers.3.self_attn.dense.weight`).
pub fn hf_name(name: &str) -> Option<String> {
    let (stem, kind) = split_kind(name)?;
    let global = match stem {
        "token_embd" => Some("model.embed_tokens"),
        "output_norm" => Some("model.final_layernorm"),
        "output" => Some("lm_head"),
        _ => None,
    };
    if let Some(g) = global {
        return Some(format!("{g}.{kind}"));
    }
    let (i, t) = split_block(stem)?;
    let local = match t {
        "attn_norm" => "input_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.dense",
        "ffn_up" => "mlp.fc1",
        "ffn_down" => "mlp.fc2",
        _ => return None,
    };
    Some(format!("model.layers.{i}.{local}.{kind}"))
}

/// Hyper-parameters of a Phi model.
#[derive(Debug, Clone, PartialEq)]
pub struct PhiConfig {
    /// Residual width.
    pub dim: usize,
    /// Layers.
    pub n_layers: usize,
    /// Query and key/value heads.
    pub heads: Heads,
    /// MLP width.
    pub n_ff: usize,
    /// Rotated features per head (`head_dim * partial_rotary_factor`).
    pub rope_dim: usize,
    /// RoPE base.
    pub rope_base: f64,
    /// LayerNorm epsilon.
    pub norm_eps: f32,
    /// Vocabulary size.
    pub vocab: usize,
    /// Training context.
    pub context_length: usize,
}

impl PhiConfig {
    /// Reads the hyper-parameters. An activation other than tanh GELU, or
    /// per-head q/k LayerNorms (`qk_layernorm`), are errors that say so.
    pub fn from_source(source: &ModelSource) -> Result<PhiConfig, ModelError> {
        let h = source.hparams();
        let path = source.path().to_path_buf();
        let unsupported = |detail: String| ModelError::Unsupported {
            path: path.clone(),
            detail,
        };
        if !is_phi_arch(&h.arch) {
            return Err(unsupported(format!("architecture '{}' is not Phi", h.arch)));
        }
        let mut rope_dim = h.rope_dim;
        if let Some((_, config)) = source.safetensors() {
            let act = config.opt_str("hidden_act")?.unwrap_or("gelu_new");
            if !TANH_GELU_NAMES.contains(&act) {
                return Err(unsupported(format!(
                    "hidden_act '{act}': the Phi family runs the tanh GELU ({})",
                    TANH_GELU_NAMES.join(", ")
                )));
            }
            if config.opt_bool("qk_layernorm")? == Some(true) {
                return Err(unsupported(
                    "qk_layernorm: per-head q/k LayerNorms are not implemented for Phi".into(),
                ));
            }
            let factor = config.opt_f64("partial_rotary_factor")?.unwrap_or(0.5);
            if !(factor > 0.0 && factor <= 1.0) {
                return Err(unsupported(format!(
                    "partial_rotary_factor {factor}: it must lie in (0, 1]"
                )));
            }
            // HF: int(head_dim * partial_rotary_factor).
            rope_dim = Some((h.head_dim as f64 * factor) as usize);
        }
        let rope_dim = rope_dim.unwrap_or(h.head_dim);
        if rope_dim == 0 || !rope_dim.is_multiple_of(2) || rope_dim > h.head_dim {
            return Err(unsupported(format!(
                "{rope_dim} rotated dimensions per head (head size {}): RoPE needs an even \
                 number, at least 2 and at most the head size",
                h.head_dim
            )));
        }
        let heads =
            Heads::new(h.n_head, h.n_head_kv, h.head_dim).map_err(|e| ModelError::Block {
                path: path.clone(),
                tensor: "attention heads".into(),
                source: e,
            })?;
        Ok(PhiConfig {
            dim: h.n_embd,
            n_layers: h.n_layer,
            heads,
            n_ff: h.n_ff,
            rope_dim,
            rope_base: h.rope_base as f64,
            norm_eps: h.norm_eps,
            vocab: h.n_vocab,
            context_length: h.n_ctx.max(1),
        })
    }
}

/// Builds a Phi network from an HF or GGUF checkpoint.
pub fn build(source: &ModelSource, opts: &BuildOptions) -> Result<Model<PhiNet>, ModelError> {
    let cfg = PhiConfig::from_source(source)?;
    let w = Weights::new(source);
    let (e, ff, heads) = (cfg.dim, cfg.n_ff, cfg.heads);
    let max_context = opts.max_context.min(cfg.context_length).max(1);
    let table = RopeTable::scaled(
        cfg.rope_dim,
        cfg.rope_base,
        max_context,
        &source.hparams().rope_scaling,
    );
    let rope = Arc::new(table);
    let linear = |stem: String, shape: [usize; 2], label: &'static str| {
        w.tensor_shaped(&format!("{stem}.weight"), &shape)?;
        w.source()
            .try_tensor_shaped(&format!("{stem}.bias"), &[shape[0]])?;
        w.linear(&stem).map(|l| l.named(label))
    };
    if source.try_tensor("blk.0.attn_q.weight")?.is_none()
        && source.try_tensor("blk.0.attn_qkv.weight")?.is_some()
    {
        return Err(ModelError::Unsupported {
            path: source.path().to_path_buf(),
            detail: "a fused attn_qkv projection (older Phi-2 conversions): the Phi family \
                     reads separate attn_q, attn_k and attn_v"
                .into(),
        });
    }
    let mut layers = Vec::with_capacity(cfg.n_layers);
    for i in 0..cfg.n_layers {
        let p = format!("blk.{i}");
        let attn = self_attention(
            heads,
            linear(format!("{p}.attn_q"), [heads.q_width(), e], "attn_q")?,
            linear(format!("{p}.attn_k"), [heads.kv_width(), e], "attn_k")?,
            linear(format!("{p}.attn_v"), [heads.kv_width(), e], "attn_v")?,
            linear(
                format!("{p}.attn_output"),
                [e, heads.q_width()],
                "attn_output",
            )?,
            rope.clone(),
            ROPE_LAYOUT,
            Causal,
        )
        .map_err(|err| w.error(&format!("{p}.attn"), err))?;
        let mlp = linear(format!("{p}.ffn_up"), [ff, e], "ffn_up")?
            .then(GeluTanh::new(ff))
            .then(linear(format!("{p}.ffn_down"), [e, ff], "ffn_down")?);
        let norm = layer_norm(&w, &format!("{p}.attn_norm"), e, cfg.norm_eps)?;
        layers.push(residual(norm.then(Sum::new(attn, mlp))));
    }
    let embd = w.tensor_shaped("token_embd.weight", &[cfg.vocab, e])?;
    let head = match source.try_tensor_shaped("output.weight", &[cfg.vocab, e])? {
        Some(_) => LmHead::new(linear("output".into(), [cfg.vocab, e], "lm_head")?),
        None => LmHead::new(w.linear_from("output.weight", embd.clone())?).tied(true),
    };
    let stack = super::planned(Stack::new(layers), opts)?;
    let net = Embedding::new(embd)
        .map_err(|err| w.error("token_embd.weight", err))?
        .then(stack)
        .then(layer_norm(&w, "output_norm", e, cfg.norm_eps)?)
        .then(head);
    Ok(Model {
        info: ModelInfo {
            family: Family::Phi.name(),
            arch: source.hparams().arch.clone(),
            dim: e,
            n_layers: cfg.n_layers,
            vocab: cfg.vocab,
            context_length: cfg.context_length,
            max_context,
        },
        net,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hf_names() {
        assert_eq!(
            hf_name("blk.1.attn_output.bias").unwrap(),
            "model.layers.1.self_attn.dense.bias"
        );
        assert_eq!(
            hf_name("blk.0.attn_norm.weight").unwrap(),
            "model.layers.0.input_layernorm.weight"
        );
        assert_eq!(
            hf_name("output_norm.weight").unwrap(),
            "model.final_layernorm.weight"
        );
        assert_eq!(hf_name("output.bias").unwrap(), "lm_head.bias");
        assert_eq!(
            hf_name("blk.2.ffn_up.weight").unwrap(),
            "model.layers.2.mlp.fc1.weight"
        );
        assert!(hf_name("blk.0.ffn_norm.weight").is_none());
    }
}
