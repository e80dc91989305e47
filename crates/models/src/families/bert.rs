//! BERT encoders: what the architecture means by a file. The network itself
//! comes next; for now this holds what the reader layer used to decide for
//! BERT.
//!
//! Post-norm blocks, learned absolute position and token-type embeddings, an
//! embedding LayerNorm, bidirectional attention, no RoPE, no output head.

use super::{split_block, split_kind};
use crate::error::ModelError;
use crate::formats::source::{HParams, ModelSource};

/// Whether a declared architecture is BERT (GGUF and HF `bert`).
pub fn is_bert_arch(arch: &str) -> bool {
    arch == "bert"
}

/// Whether attention is causal: as the file states, else not (an encoder).
pub fn causal(h: &HParams) -> bool {
    h.causal.unwrap_or(false)
}

/// The HF name of canonical tensor `name` in a BERT checkpoint (without the
/// `bert.` prefix some exports add: the source tries a prefix every tensor
/// shares by itself).
pub fn hf_name(name: &str) -> Option<String> {
    let (stem, kind) = split_kind(name)?;
    let global = match stem {
        "token_embd" => Some("embeddings.word_embeddings"),
        "position_embd" => Some("embeddings.position_embeddings"),
        "token_types" => Some("embeddings.token_type_embeddings"),
        "token_embd_norm" => Some("embeddings.LayerNorm"),
        _ => None,
    };
    if let Some(g) = global {
        return Some(format!("{g}.{kind}"));
    }
    let (i, t) = split_block(stem)?;
    let local = match t {
        "attn_q" => "attention.self.query",
        "attn_k" => "attention.self.key",
        "attn_v" => "attention.self.value",
        "attn_output" => "attention.output.dense",
        "attn_output_norm" => "attention.output.LayerNorm",
        "ffn_up" => "intermediate.dense",
        "ffn_down" => "output.dense",
        "layer_output_norm" => "output.LayerNorm",
        _ => return None,
    };
    Some(format!("encoder.layer.{i}.{local}.{kind}"))
}

/// Checks the shapes of the weight matrices a BERT encoder needs against the
/// hyper-parameters: [`ModelError::ShapeMismatch`] or
/// [`ModelError::MissingTensor`] naming the file and tensor.
pub fn check_shapes(source: &ModelSource) -> Result<(), ModelError> {
    let h = source.hparams();
    let e = h.n_embd;
    source.tensor_shaped("token_embd.weight", &[h.n_vocab, e])?;
    for i in 0..h.n_layer {
        for (t, shape) in [
            ("attn_q", [e, e]),
            ("attn_k", [e, e]),
            ("attn_v", [e, e]),
            ("attn_output", [e, e]),
            ("ffn_up", [h.n_ff, e]),
            ("ffn_down", [e, h.n_ff]),
        ] {
            source.tensor_shaped(&format!("blk.{i}.{t}.weight"), &shape)?;
        }
    }
    Ok(())
}
