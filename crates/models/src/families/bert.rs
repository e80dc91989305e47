//! BERT encoders as a type: learned absolute position and token-type
//! embeddings and an embedding LayerNorm, post-norm blocks (the LayerNorm
//! after each residual sum), bidirectional attention with biased projections
//! and no RoPE, an erf-GELU MLP, no output head; a sentence is the mean of
//! its rows, L2-normalised (sentence-transformers' `Pooling` and `Normalize`
//! modules, as `1_Pooling/config.json` says).
//!
//! ```text
//! BertEmbeddings = series![Embedding, PositionEmbedding, LayerNorm]
//! BertAttention  = series![Linear ([q | k | v]), Attend<Bidirectional>, Linear]
//! BertMlp        = series![Linear, GeluErf, Linear]
//! BertBlock      = series![Series<Residual<BertAttention>, LayerNorm>,
//!                          Series<Residual<BertMlp>, LayerNorm>]
//! BertNet        = series![BertEmbeddings, Stack<BertBlock>, MeanPool, L2Normalize]
//! ```
//!
//! Inputs are single-segment: the token-type-0 embedding is the constant row
//! of the [`PositionEmbedding`]. The network maps the token ids of one or more
//! whole sequences (rows grouped by `ctx.sequence(r)`, positions from
//! `ctx.position(r)`) to one unit-length embedding per sequence.

use std::path::{Path, PathBuf};

use patchbay_blocks::{
    output_projection, Attend, Bidirectional, Embedding, GeluErf, Heads, L2Normalize, LayerNorm,
    Linear, MeanPool, PositionEmbedding, SumOrder,
};
use patchbay_combinators::{residual, series, LayerExt, Residual, Series, Stack};

use super::{split_block, split_kind, BuildOptions, Family, Model, ModelInfo, Weights};
use crate::error::ModelError;
use crate::formats::source::{HParams, ModelSource};

/// Token ids to contextless embeddings: word + position + token type 0, then
/// LayerNorm.
pub type BertEmbeddings = series![Embedding, PositionEmbedding, LayerNorm];

/// BERT self-attention: the biased q, k and v projections fused into one
/// (`[q | k | v]`, as GPT-2 stores it), every position seeing every position
/// of its sequence, a biased output projection.
pub type BertAttention = series![Linear, Attend<Bidirectional>, Linear];

/// BERT's MLP: up projection, erf GELU, down projection (all biased).
pub type BertMlp = series![Linear, GeluErf, Linear];

/// One post-norm encoder layer: `LayerNorm(x + Attention(x))`, then
/// `LayerNorm(x + Mlp(x))`.
pub type BertBlock = series![
    Series<Residual<BertAttention>, LayerNorm>,
    Series<Residual<BertMlp>, LayerNorm>
];

/// The whole network: token ids in, one L2-normalised embedding per sequence out.
pub type BertNet = series![BertEmbeddings, Stack<BertBlock>, MeanPool, L2Normalize];

/// How token rows become one sentence row (sentence-transformers' `Pooling`
/// module). Only mean pooling is implemented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The mean of every token row of the sequence.
    Mean,
}

/// Hyper-parameters of a BERT encoder.
#[derive(Debug, Clone, PartialEq)]
pub struct BertConfig {
    /// Hidden width.
    pub dim: usize,
    /// Encoder layers.
    pub n_layers: usize,
    /// Attention heads (query heads = key/value heads).
    pub heads: Heads,
    /// MLP hidden width.
    pub ff_dim: usize,
    /// Vocabulary size.
    pub vocab: usize,
    /// Rows of the position table: the longest sequence the model takes.
    pub max_positions: usize,
    /// LayerNorm epsilon (HF `layer_norm_eps`).
    pub norm_eps: f32,
    /// The pooling of token rows into a sentence row.
    pub pooling: Pooling,
    /// Longest sequence, in tokens, the model is used with
    /// (`sentence_bert_config.json`'s `max_seq_length`, else the position
    /// table size).
    pub max_seq_length: usize,
}

impl BertConfig {
    /// Reads the hyper-parameters of a BERT checkpoint and, for a
    /// sentence-transformers directory, its pooling and `max_seq_length`.
    /// A pooling mode other than mean, or an activation other than the
    /// erf GELU, is [`ModelError::Unsupported`].
    pub fn from_source(source: &ModelSource) -> Result<BertConfig, ModelError> {
        let h = source.hparams();
        let path = source.path().to_path_buf();
        if causal(h) {
            return Err(ModelError::Unsupported {
                path,
                detail: "a BERT file that declares causal attention".into(),
            });
        }
        if h.n_head == 0 || h.n_head_kv != h.n_head {
            return Err(ModelError::Unsupported {
                path,
                detail: format!(
                    "BERT with {} query heads and {} key/value heads (they must be equal and non-zero)",
                    h.n_head, h.n_head_kv
                ),
            });
        }
        let heads =
            Heads::new(h.n_head, h.n_head_kv, h.head_dim).map_err(|e| ModelError::Block {
                path: path.clone(),
                tensor: "attention heads".into(),
                source: e,
            })?;
        if heads.q_width() != h.n_embd {
            return Err(ModelError::Unsupported {
                path,
                detail: format!(
                    "BERT heads {} x {} do not make the hidden width {}",
                    h.n_head, h.head_dim, h.n_embd
                ),
            });
        }
        if h.n_ctx == 0 {
            return Err(ModelError::Unsupported {
                path,
                detail: "the file does not state max_position_embeddings".into(),
            });
        }
        if let Some((_, config)) = source.safetensors() {
            if let Some(act) = config.opt_str("hidden_act")? {
                if act != "gelu" {
                    return Err(ModelError::Unsupported {
                        path: config.path().to_path_buf(),
                        detail: format!(
                            "hidden_act '{act}': patchbay's BERT implements 'gelu' (the erf GELU)"
                        ),
                    });
                }
            }
            if let Some(t) = config.opt_str("position_embedding_type")? {
                if t != "absolute" {
                    return Err(ModelError::Unsupported {
                        path: config.path().to_path_buf(),
                        detail: format!(
                            "position_embedding_type '{t}': patchbay's BERT implements 'absolute'"
                        ),
                    });
                }
            }
        }
        let dir = model_dir(source);
        let pooling = read_pooling(source, dir.as_deref())?;
        let max_seq_length = match dir.as_deref() {
            Some(d) => read_max_seq_length(d)?,
            None => None,
        }
        .unwrap_or(h.n_ctx)
        .clamp(1, h.n_ctx);
        Ok(BertConfig {
            dim: h.n_embd,
            n_layers: h.n_layer,
            heads,
            ff_dim: h.n_ff,
            vocab: h.n_vocab,
            max_positions: h.n_ctx,
            norm_eps: h.norm_eps,
            pooling,
            max_seq_length,
        })
    }
}

/// The directory a sentence-transformers checkpoint keeps its module configs
/// in (`1_Pooling/`, `sentence_bert_config.json`): the one holding
/// `config.json`; `None` for a single-file format.
fn model_dir(source: &ModelSource) -> Option<PathBuf> {
    let (_, config) = source.safetensors()?;
    Some(
        config
            .path()
            .parent()
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf),
    )
}

fn read_json(path: &Path) -> Result<Option<serde_json::Value>, ModelError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ModelError::io(path, e)),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| ModelError::corrupt(path, "JSON", e.to_string()))
}

/// The pooling `1_Pooling/config.json` asks for (mean when there is none, as
/// for a plain BERT checkpoint; GGUF's `bert.pooling_type` when stated).
fn read_pooling(source: &ModelSource, dir: Option<&Path>) -> Result<Pooling, ModelError> {
    if let Some(g) = source.gguf() {
        return match g.get("bert.pooling_type").and_then(|v| v.as_int()) {
            None | Some(1) => Ok(Pooling::Mean),
            Some(t) => Err(ModelError::Unsupported {
                path: source.path().to_path_buf(),
                detail: format!("bert.pooling_type {t}: patchbay implements mean pooling (1) only"),
            }),
        };
    }
    let Some(dir) = dir else {
        return Ok(Pooling::Mean);
    };
    let path = dir.join("1_Pooling").join("config.json");
    let Some(json) = read_json(&path)? else {
        return Ok(Pooling::Mean);
    };
    let on = |k: &str| json.get(k).and_then(|v| v.as_bool()).unwrap_or(false);
    let modes = [
        "pooling_mode_cls_token",
        "pooling_mode_max_tokens",
        "pooling_mode_mean_sqrt_len_tokens",
        "pooling_mode_weightedmean_tokens",
        "pooling_mode_lasttoken",
    ];
    let others: Vec<&str> = modes.iter().copied().filter(|k| on(k)).collect();
    if !others.is_empty() {
        return Err(ModelError::Unsupported {
            path,
            detail: format!(
                "pooling {}: patchbay implements mean pooling (pooling_mode_mean_tokens) only",
                others.join(", ")
            ),
        });
    }
    if !on("pooling_mode_mean_tokens") {
        return Err(ModelError::Unsupported {
            path,
            detail: "no pooling mode is on: patchbay implements pooling_mode_mean_tokens".into(),
        });
    }
    Ok(Pooling::Mean)
}

/// `max_seq_length` of `sentence_bert_config.json`, when there is one.
fn read_max_seq_length(dir: &Path) -> Result<Option<usize>, ModelError> {
    let path = dir.join("sentence_bert_config.json");
    let Some(json) = read_json(&path)? else {
        return Ok(None);
    };
    match json.get("max_seq_length") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .filter(|&n| n > 0)
            .map(|n| Some(n as usize))
            .ok_or_else(|| {
                ModelError::corrupt(&path, "max_seq_length", "expected a positive integer")
            }),
    }
}

/// Builds a BERT encoder from an HF checkpoint (or a GGUF with BERT's
/// canonical names).
///
/// `ModelInfo::vocab` is the embedding width: an encoder's output rows are
/// embeddings, not logits. `ModelInfo::max_context` is the longest sequence
/// the model is used with ([`BertConfig::max_seq_length`], capped by
/// `opts.max_context`).
pub fn build(source: &ModelSource, opts: &BuildOptions) -> Result<Model<BertNet>, ModelError> {
    let cfg = BertConfig::from_source(source)?;
    check_shapes(source)?;
    let w = Weights::new(source);
    let (e, heads, eps) = (cfg.dim, cfg.heads, cfg.norm_eps);
    let layer_norm = |stem: &str| -> Result<LayerNorm, ModelError> {
        let wt = w.tensor_shaped(&format!("{stem}.weight"), &[e])?;
        let bias_name = format!("{stem}.bias");
        let b = w.tensor_shaped(&bias_name, &[e])?;
        LayerNorm::new(&wt, Some(&b), eps).map_err(|err| w.error(stem, err))
    };
    // An encoder only ever sees whole sequences, never a decode step that
    // would have to match them: its products take the faster plain order.
    let biased = |stem: &str| -> Result<Linear, ModelError> {
        source.tensor(&format!("{stem}.bias"))?;
        Ok(w.linear(stem)?.with_order(SumOrder::Sequential))
    };
    let mut layers = Vec::with_capacity(cfg.n_layers);
    for i in 0..cfg.n_layers {
        let p = format!("blk.{i}");
        let stems = ["attn_q", "attn_k", "attn_v"].map(|t| format!("{p}.{t}"));
        for stem in &stems {
            source.tensor(&format!("{stem}.bias"))?;
        }
        let proj = w
            .fused_linear(
                &format!("{p}.attn_qkv"),
                &stems.each_ref().map(String::as_str),
            )?
            .with_order(SumOrder::Sequential)
            .named("attn_qkv");
        let out = output_projection(heads, biased(&format!("{p}.attn_output"))?)
            .map_err(|err| w.error(&format!("{p}.attn_output"), err))?;
        let attn = proj.then(Attend::new(heads, Bidirectional)).then(out);
        let mlp = biased(&format!("{p}.ffn_up"))?
            .named("ffn_up")
            .then(GeluErf::new(cfg.ff_dim))
            .then(biased(&format!("{p}.ffn_down"))?.named("ffn_down"));
        let block = residual(attn)
            .then(layer_norm(&format!("{p}.attn_output_norm"))?)
            .then(residual(mlp).then(layer_norm(&format!("{p}.layer_output_norm"))?));
        layers.push(block);
    }
    let word = w.tensor_shaped("token_embd.weight", &[cfg.vocab, e])?;
    let positions = w.tensor_shaped("position_embd.weight", &[cfg.max_positions, e])?;
    let types = w.tensor("token_types.weight")?;
    if types.shape().len() != 2 || types.shape()[1] != e || types.shape()[0] == 0 {
        return Err(ModelError::ShapeMismatch {
            path: source.path().to_path_buf(),
            tensor: "token_types.weight".into(),
            expected: vec![2, e],
            found: types.shape().to_vec(),
        });
    }
    let type0 = w.f32_values("token_types.weight", &types)?[..e].to_vec();
    let embeddings = Embedding::new(word)
        .map_err(|err| w.error("token_embd.weight", err))?
        .then(
            PositionEmbedding::new(positions, Some(type0))
                .map_err(|err| w.error("position_embd.weight", err))?,
        )
        .then(layer_norm("token_embd_norm")?);
    let stack = super::planned(Stack::new(layers), opts)?;
    let net = embeddings
        .then(stack)
        .then(match cfg.pooling {
            Pooling::Mean => MeanPool::new(e),
        })
        .then(L2Normalize::new(e));
    Ok(Model {
        info: ModelInfo {
            family: Family::Bert.name(),
            arch: source.hparams().arch.clone(),
            dim: e,
            n_layers: cfg.n_layers,
            vocab: e,
            context_length: cfg.max_positions,
            max_context: opts.max_context.min(cfg.max_seq_length).max(1),
        },
        net,
    })
}

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
