//! Gemma 3 as a type: sandwich norms (RMSNorm before *and* after both the
//! attention and the MLP, inside the residual), a GeGLU MLP with a tanh-GELU
//! gate, RMSNorm per head on q and k before RoPE, the embedding scaled by
//! `sqrt(width)`, and five sliding-window layers for every global one, each
//! kind with its own RoPE base. The head is tied to the embedding.
//!
//! ```text
//! Gemma3Attention = series![QkvProjection, QkNorm, Rope, Attend<SlidingWindow>, Linear]
//! Gemma3Block     = series![Residual<series![RmsNorm, Gemma3Attention, RmsNorm]>,
//!                           Residual<series![RmsNorm, GeGlu, RmsNorm]>]
//! Gemma3Net       = series![Embedding, Stack<Gemma3Block>, RmsNorm, LmHead]
//! ```
//!
//! Local and global layers share one type: the window (`Some(512)` or `None`)
//! and the RoPE table are values, like every size.
//!
//! The math follows llama.cpp's `gemma3` graph and HF's `modeling_gemma3.py`:
//! llama.cpp's converter stores every norm weight with HF's `1 + w` already
//! added, so GGUF norms are used as stored and HF checkpoints get `+1`; the
//! query scale is `query_pre_attn_scalar^-1/2` (`head_dim^-1/2` when the file
//! does not say); local layers use RoPE base 10000 unless the file says
//! otherwise (llama.cpp's default); layer `i` is global when `(i + 1) % 6 == 0`
//! unless the file gives another pattern.

use std::sync::Arc;

use patchbay_blocks::{
    geglu, output_projection, qkv_projection, Attend, GeGlu, Heads, LmHead, NormedSelfAttention,
    QkNorm, RmsNorm, Rope, SlidingWindow,
};
use patchbay_combinators::{residual, series, LayerExt, Residual, Stack};
use patchbay_primitives::rope::{RopeLayout, RopeTable};

use super::{BuildOptions, Family, Model, ModelInfo, Weights};
use crate::error::ModelError;
use crate::formats::source::{Format, HParams, ModelSource};

/// Gemma 3's attention: per-head q/k norms before RoPE, local or global mask.
pub type Gemma3Attention = NormedSelfAttention<SlidingWindow>;

/// One decoder layer: sandwich-normed attention, then sandwich-normed GeGLU.
pub type Gemma3Block = series![
    Residual<series![RmsNorm, Gemma3Attention, RmsNorm]>,
    Residual<series![RmsNorm, GeGlu, RmsNorm]>
];

/// The whole network: token ids in, logits out.
pub type Gemma3Net = series![Embedding, Stack<Gemma3Block>, RmsNorm, LmHead];

use patchbay_blocks::Embedding;

/// Hyper-parameters of a Gemma 3 model.
#[derive(Debug, Clone, PartialEq)]
pub struct Gemma3Config {
    /// Residual width.
    pub dim: usize,
    /// Decoder layers.
    pub n_layers: usize,
    /// Query heads, key/value heads and head size.
    pub heads: Heads,
    /// RoPE base of global layers.
    pub rope_base_global: f64,
    /// RoPE base of sliding-window layers.
    pub rope_base_local: f64,
    /// Sliding window of local layers (positions, the current one included).
    pub sliding_window: usize,
    /// Every `pattern`-th layer is global.
    pub pattern: usize,
    /// Attention score scale.
    pub attn_scale: f32,
    /// RMSNorm epsilon.
    pub rms_eps: f32,
    /// Added to stored norm weights (1 for HF checkpoints, 0 for GGUF).
    pub norm_offset: f32,
    /// Vocabulary size.
    pub vocab: usize,
    /// Training context.
    pub context_length: usize,
}

impl Gemma3Config {
    /// Reads the hyper-parameters, with Gemma 3's defaults where a file is silent.
    pub fn from_source(source: &ModelSource) -> Result<Gemma3Config, ModelError> {
        let h = source.hparams();
        let heads =
            Heads::new(h.n_head, h.n_head_kv, h.head_dim).map_err(|e| ModelError::Block {
                path: source.path().to_path_buf(),
                tensor: "attention heads".into(),
                source: e,
            })?;
        Ok(Gemma3Config {
            dim: h.n_embd,
            n_layers: h.n_layer,
            heads,
            rope_base_global: h.rope_base as f64,
            rope_base_local: rope_base_local(h) as f64,
            sliding_window: h.sliding_window.unwrap_or(512),
            pattern: sliding_window_pattern(h).max(1),
            attn_scale: match query_pre_attn_scalar(source)? {
                Some(s) if s > 0.0 => (1.0 / s.sqrt()) as f32,
                _ => 1.0 / (h.head_dim as f32).sqrt(),
            },
            rms_eps: h.norm_eps,
            norm_offset: norm_weight_offset(source.format()),
            vocab: h.n_vocab,
            context_length: h.n_ctx.max(1),
        })
    }

    /// True for the global (full-attention) layers.
    pub fn is_global(&self, layer: usize) -> bool {
        (layer + 1).is_multiple_of(self.pattern)
    }
}

/// HF's `query_pre_attn_scalar` (GGUF files do not store it: llama.cpp uses
/// the head size, which is what Gemma 3's configs give).
fn query_pre_attn_scalar(source: &ModelSource) -> Result<Option<f64>, ModelError> {
    match source.safetensors() {
        Some((_, config)) => config.opt_f64("query_pre_attn_scalar"),
        None => Ok(None),
    }
}

/// Builds a Gemma 3 network from a GGUF or HF checkpoint.
pub fn build(source: &ModelSource, opts: &BuildOptions) -> Result<Model<Gemma3Net>, ModelError> {
    let cfg = Gemma3Config::from_source(source)?;
    let w = Weights::new(source);
    let (e, hd, heads) = (cfg.dim, cfg.heads.head_dim, cfg.heads);
    let norm = |name: String| w.rms_norm(&name, cfg.rms_eps, cfg.norm_offset);
    let max_context = opts.max_context.min(cfg.context_length).max(1);
    let global_rope = Arc::new(RopeTable::new(hd, cfg.rope_base_global, max_context));
    let local_rope = Arc::new(RopeTable::new(hd, cfg.rope_base_local, max_context));
    let mut layers = Vec::with_capacity(cfg.n_layers);
    for i in 0..cfg.n_layers {
        let p = format!("blk.{i}");
        let global = cfg.is_global(i);
        let shape = |name: &str, s: &[usize]| w.tensor_shaped(&format!("{p}.{name}.weight"), s);
        shape("attn_q", &[heads.q_width(), e])?;
        shape("attn_k", &[heads.kv_width(), e])?;
        shape("attn_v", &[heads.kv_width(), e])?;
        shape("attn_output", &[e, heads.q_width()])?;
        let proj = qkv_projection(
            heads,
            w.linear(&format!("{p}.attn_q"))?,
            w.linear(&format!("{p}.attn_k"))?,
            w.linear(&format!("{p}.attn_v"))?,
        )
        .map_err(|err| w.error(&format!("{p}.attn_qkv"), err))?;
        let qk = QkNorm::new(
            heads,
            norm(format!("{p}.attn_q_norm.weight"))?,
            norm(format!("{p}.attn_k_norm.weight"))?,
        )
        .map_err(|err| w.error(&format!("{p}.attn_q_norm"), err))?;
        let table = if global { &global_rope } else { &local_rope };
        let rope = Rope::new(heads, table.clone(), ROPE_LAYOUT)
            .map_err(|err| w.error(&format!("{p}.rope"), err))?;
        let mask = SlidingWindow {
            window: (!global).then_some(cfg.sliding_window),
        };
        let attend = Attend::new(heads, mask).with_scale(cfg.attn_scale);
        let out = output_projection(heads, w.linear(&format!("{p}.attn_output"))?)
            .map_err(|err| w.error(&format!("{p}.attn_output"), err))?;
        let attn = proj.then(qk).then(rope).then(attend).then(out);
        let mlp = geglu(
            w.linear(&format!("{p}.ffn_gate"))?,
            w.linear(&format!("{p}.ffn_up"))?,
            w.linear(&format!("{p}.ffn_down"))?,
        );
        let block = residual(
            norm(format!("{p}.attn_norm.weight"))?
                .then(attn)
                .then(norm(format!("{p}.post_attention_norm.weight"))?),
        )
        .then(residual(
            norm(format!("{p}.ffn_norm.weight"))?
                .then(mlp)
                .then(norm(format!("{p}.post_ffw_norm.weight"))?),
        ));
        layers.push(block);
    }
    let embd = w.tensor_shaped("token_embd.weight", &[cfg.vocab, e])?;
    let (head_w, tied) = match source.try_tensor("output.weight")? {
        Some(t) => (t, false),
        None => (embd.clone(), true),
    };
    let head = LmHead::new(w.linear_from("output.weight", head_w)?).tied(tied);
    let stack = super::planned(Stack::new(layers), opts)?;
    let net = Embedding::new(embd)
        .map_err(|err| w.error("token_embd.weight", err))?
        .with_scale(Some((e as f32).sqrt()))
        .then(stack)
        .then(norm("output_norm.weight".into())?)
        .then(head);
    Ok(Model {
        info: ModelInfo {
            family: Family::Gemma3.name(),
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

/// Whether a declared architecture is Gemma 3 (GGUF `gemma3`, HF
/// `gemma3_text` or `gemma3`).
pub fn is_gemma3_arch(arch: &str) -> bool {
    matches!(arch, "gemma3" | "gemma3_text")
}

/// Gemma 3 stores Q/K for the half-split rotation in GGUF and HF alike.
pub const ROPE_LAYOUT: RopeLayout = RopeLayout::HalfSplit;

/// RoPE base of the local layers when the file does not say (llama.cpp
/// hard-codes 10000 for Gemma 3).
pub const DEFAULT_ROPE_BASE_LOCAL: f32 = 10000.0;

/// Layers per global layer when the file does not say: five local, then one
/// global (llama.cpp hard-codes 6 for Gemma 3).
pub const DEFAULT_SLIDING_WINDOW_PATTERN: usize = 6;

/// The RoPE base of the local (sliding-window) layers.
pub fn rope_base_local(h: &HParams) -> f32 {
    h.rope_base_local.unwrap_or(DEFAULT_ROPE_BASE_LOCAL)
}

/// Every `n`-th layer is global.
pub fn sliding_window_pattern(h: &HParams) -> usize {
    h.sliding_window_pattern
        .unwrap_or(DEFAULT_SLIDING_WINDOW_PATTERN)
}

/// Added to the stored RMSNorm weights before use: HF Gemma stores `w` and
/// applies `1 + w`, while llama.cpp's GGUF conversion already added the 1.
pub fn norm_weight_offset(format: Format) -> f32 {
    match format {
        Format::Safetensors => 1.0,
        Format::Gguf | Format::Llama2c => 0.0,
    }
}

/// The HF name of canonical tensor `name` in a Gemma 3 checkpoint.
///
/// Gemma's `post_attention_layernorm` is the sandwich norm after attention
/// (canonical `post_attention_norm`), unlike Llama's, which is the pre-FFN
/// norm; the pre-FFN norm is `pre_feedforward_layernorm`.
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
            "post_attention_norm" => "post_attention_layernorm",
            "ffn_norm" => "pre_feedforward_layernorm",
            "post_ffw_norm" => "post_feedforward_layernorm",
            "ffn_gate" => "mlp.gate_proj",
            "ffn_up" => "mlp.up_proj",
            "ffn_down" => "mlp.down_proj",
            _ => return None,
        })
    })
}
