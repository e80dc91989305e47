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
//! RoPE layout and scaling, tied head), read from the file in
//! [`LlamaConfig::from_source`] and the weight names in [`build`].
//!
//! What the family means by a file lives here too: the HF tensor names
//! ([`hf_name`]), the rotation the stored Q/K need ([`rope_layout`]), and the
//! tensor shapes it requires ([`check_shapes`]).

use std::sync::Arc;

use patchbay_blocks::{
    self_attention, swiglu, Causal, Embedding, Heads, LmHead, RmsNorm, SelfAttention, SwiGlu,
};
use patchbay_combinators::{residual, series, LayerExt, Residual, Stack};
use patchbay_primitives::rope::{inv_freqs, RopeLayout, RopeScaling, RopeTable};

use crate::error::ModelError;
use crate::families::{BuildOptions, Family, Model, ModelInfo, Weights};
use crate::formats::source::{Format, ModelSource};

/// Whether a declared architecture is one this family runs (GGUF `llama`,
/// `mistral`, `qwen2`; HF `model_type` `llama`, `mistral`, `qwen2`).
pub fn is_llama_arch(arch: &str) -> bool {
    matches!(arch, "llama" | "mistral" | "qwen2")
}

/// The HF name of canonical tensor `name` in a Llama/Mistral/Qwen2
/// checkpoint (`blk.3.attn_q.weight` -> `model.layers.3.self_attn.q_proj.weight`).
pub fn hf_name(name: &str) -> Option<String> {
    super::hf_decoder_name(name, |t| {
        Some(match t {
            "attn_q" => "self_attn.q_proj",
            "attn_k" => "self_attn.k_proj",
            "attn_v" => "self_attn.v_proj",
            "attn_output" => "self_attn.o_proj",
            "attn_q_norm" => "self_attn.q_norm",
            "attn_k_norm" => "self_attn.k_norm",
            "attn_norm" => "input_layernorm",
            "ffn_norm" => "post_attention_layernorm",
            "ffn_gate" => "mlp.gate_proj",
            "ffn_up" => "mlp.up_proj",
            "ffn_down" => "mlp.down_proj",
            _ => return None,
        })
    })
}

/// The rotation the stored Q/K of a Llama-family file need. llama.cpp
/// permutes Q/K of `llama`/`mistral` GGUFs for the interleaved rotation
/// (adjacent pairs), and llama2.c stores them that way too; GGUF `qwen2` and
/// every HF checkpoint keep the half-split (NeoX) rotation. Rather than
/// rewriting weights, the attention rotates the way the weights expect.
pub fn rope_layout(source: &ModelSource) -> RopeLayout {
    match source.format() {
        Format::Llama2c => RopeLayout::Interleaved,
        Format::Safetensors => RopeLayout::HalfSplit,
        Format::Gguf if source.arch() == "qwen2" => RopeLayout::HalfSplit,
        Format::Gguf => RopeLayout::Interleaved,
    }
}

/// Checks the shapes of every tensor the network reads against the
/// hyper-parameters: [`ModelError::ShapeMismatch`] or
/// [`ModelError::MissingTensor`] naming the file and the tensor.
pub fn check_shapes(source: &ModelSource) -> Result<(), ModelError> {
    let h = source.hparams();
    let (e, q, kv, kvv) = (
        h.n_embd,
        h.n_head * h.head_dim,
        h.n_head_kv * h.head_dim,
        h.n_head_kv * h.head_dim_v,
    );
    source.tensor_shaped("token_embd.weight", &[h.n_vocab, e])?;
    source.tensor_shaped("output_norm.weight", &[e])?;
    source.try_tensor_shaped("output.weight", &[h.n_vocab, e])?;
    for i in 0..h.n_layer {
        let t = |n: &str| format!("blk.{i}.{n}");
        source.tensor_shaped(&t("attn_norm.weight"), &[e])?;
        source.tensor_shaped(&t("attn_q.weight"), &[q, e])?;
        source.tensor_shaped(&t("attn_k.weight"), &[kv, e])?;
        source.tensor_shaped(&t("attn_v.weight"), &[kvv, e])?;
        source.tensor_shaped(&t("attn_output.weight"), &[e, h.n_head * h.head_dim_v])?;
        source.try_tensor_shaped(&t("attn_q.bias"), &[q])?;
        source.try_tensor_shaped(&t("attn_k.bias"), &[kv])?;
        source.try_tensor_shaped(&t("attn_v.bias"), &[kvv])?;
        source.try_tensor_shaped(&t("attn_output.bias"), &[e])?;
        source.tensor_shaped(&t("ffn_norm.weight"), &[e])?;
        source.tensor_shaped(&t("ffn_gate.weight"), &[h.n_ff, e])?;
        source.tensor_shaped(&t("ffn_up.weight"), &[h.n_ff, e])?;
        source.tensor_shaped(&t("ffn_down.weight"), &[e, h.n_ff])?;
    }
    Ok(())
}

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
    /// RoPE scaling the file declares.
    pub rope_scaling: RopeScaling,
    /// Per-frequency divisors of the inverse frequencies (llama.cpp's
    /// `rope_freqs.weight`, how Llama 3.1 GGUFs carry their scaling), one per
    /// rotated pair.
    pub rope_freq_factors: Option<Vec<f32>>,
    /// RMSNorm epsilon.
    pub rms_eps: f32,
    /// Vocabulary size.
    pub vocab: usize,
    /// Context length the model was trained for.
    pub context_length: usize,
}

/// Builds the network of a Llama-family model from a source.
///
/// Checks every tensor's shape first ([`check_shapes`]). A safetensors
/// checkpoint needs the family's name map ([`crate::families::open`] sets it).
pub fn build(source: &ModelSource, opts: &BuildOptions) -> Result<Model<LlamaNet>, ModelError> {
    let cfg = LlamaConfig::from_source(source)?;
    if source.format() == Format::Safetensors && source.name_map().is_none() {
        return Err(ModelError::Unsupported {
            path: source.path().to_path_buf(),
            detail: "a safetensors checkpoint needs its family's tensor-name map: \
                     open it with families::open or set families::llama::hf_name"
                .into(),
        });
    }
    check_shapes(source)?;
    let w = Weights::new(source);
    let heads = Heads::new(cfg.n_heads, cfg.n_kv_heads, cfg.head_dim)
        .map_err(|e| w.error("attention heads", e))?;
    let norm = |name: &str| w.rms_norm(name, cfg.rms_eps, 0.0);
    let max_context = opts.max_context.min(cfg.context_length).max(1);
    let rope = Arc::new(cfg.rope_table(max_context));
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
            family: Family::Llama.name(),
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
    /// `mistral`, from GGUF, llama2.c or an HF checkpoint).
    pub fn from_source(source: &ModelSource) -> Result<LlamaConfig, ModelError> {
        let h = source.hparams();
        let arch = h.arch.as_str();
        if !is_llama_arch(arch) {
            return Err(ModelError::Unsupported {
                path: source.path().to_path_buf(),
                detail: format!("architecture '{arch}' is not a Llama-family model"),
            });
        }
        let rope_dim = h.rope_dim.unwrap_or(h.head_dim);
        if rope_dim == 0 || !rope_dim.is_multiple_of(2) || rope_dim > h.head_dim {
            return Err(ModelError::Unsupported {
                path: source.path().to_path_buf(),
                detail: format!(
                    "{rope_dim} rotated dimensions per head (head size {}): RoPE needs an even \
                     number, at least 2 and at most the head size",
                    h.head_dim
                ),
            });
        }
        let rope_freq_factors = match source.try_tensor("rope_freqs.weight")? {
            None => None,
            Some(t) => {
                let name = "rope_freqs.weight";
                if t.shape() != [rope_dim / 2] {
                    return Err(ModelError::ShapeMismatch {
                        path: source.path().to_path_buf(),
                        tensor: name.into(),
                        expected: vec![rope_dim / 2],
                        found: t.shape().to_vec(),
                    });
                }
                let v = Weights::new(source).f32_values(name, &t)?;
                if let Some(bad) = v.iter().find(|x| !(x.is_finite() && **x > 0.0)) {
                    return Err(ModelError::bad_tensor(
                        source.path(),
                        name,
                        format!("frequency divisors must be positive, found {bad}"),
                    ));
                }
                Some(v)
            }
        };
        Ok(LlamaConfig {
            dim: h.n_embd,
            n_layers: h.n_layer,
            n_heads: h.n_head,
            n_kv_heads: h.n_head_kv,
            head_dim: h.head_dim,
            rope_dim,
            rope_base: h.rope_base as f64,
            rope_layout: rope_layout(source),
            rope_scaling: h.rope_scaling,
            rope_freq_factors,
            rms_eps: h.norm_eps,
            vocab: h.n_vocab,
            context_length: h.n_ctx.max(1),
        })
    }

    /// The RoPE table for positions `0..max_pos`: frequencies
    /// `rope_base^(-2i / rope_dim)`, scaled as the file declares, then divided
    /// by the per-frequency factors when the file has them (llama.cpp applies
    /// both: `theta = freq_scale * p * base^(-2i/d) / factor_i`). Without
    /// scaling it is exactly [`RopeTable::new`].
    pub fn rope_table(&self, max_pos: usize) -> RopeTable {
        match &self.rope_freq_factors {
            None => RopeTable::scaled(self.rope_dim, self.rope_base, max_pos, &self.rope_scaling),
            Some(factors) => {
                let mut freqs = inv_freqs(self.rope_dim, self.rope_base);
                self.rope_scaling.apply(&mut freqs);
                for (f, &d) in freqs.iter_mut().zip(factors) {
                    *f /= d as f64;
                }
                RopeTable::from_inv_freqs(self.rope_dim, &freqs, max_pos)
            }
        }
    }
}
