//! Gemma 3: what the architecture means by a file. The network itself comes
//! next; for now this holds what the reader layer used to decide for Gemma 3.
//!
//! Sandwich norms around attention and FFN, Q/K norms, local (sliding-window)
//! layers with their own RoPE base interleaved with global ones, half-split
//! RoPE in every format. HF's `rope_scaling` (a linear factor on the 4B+
//! models) applies to the global layers only.

use patchbay_primitives::rope::RopeLayout;

use super::{split_block, split_kind};
use crate::formats::source::{Format, HParams};

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
    let (stem, kind) = split_kind(name)?;
    let global = match stem {
        "token_embd" => Some("model.embed_tokens"),
        "output_norm" => Some("model.norm"),
        "output" => Some("lm_head"),
        _ => None,
    };
    if let Some(g) = global {
        return Some(format!("{g}.{kind}"));
    }
    let (i, t) = split_block(stem)?;
    let local = match t {
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
    };
    Some(format!("model.layers.{i}.{local}.{kind}"))
}
