//! One interface over GGUF, safetensors and llama2.c files: tensors by canonical name.
//!
//! Canonical names are GGUF's (`token_embd.weight`, `blk.{i}.attn_q.weight`,
//! `blk.{i}.ffn_down.weight`, `output_norm.weight`, `output.weight`, biases
//! `blk.{i}.attn_q.bias`, ...). Each format maps them to its own names in one
//! function: [`hf_name`] for HF safetensors, [`llama2c_name`] for llama2.c
//! (slices of the stacked per-layer arrays).
//!
//! RoPE: llama.cpp stores Q/K of `llama`-arch GGUFs (and llama2.c stores them)
//! for the interleaved rotation (adjacent pairs); HF safetensors and GGUF
//! `qwen2`/`gemma3` use the half-split (NeoX) rotation. Rather than rewriting
//! weights, [`ModelSource::rope_layout`] tells the attention which rotation
//! matches the stored weights.

use crate::error::ModelError;
use crate::formats::gguf::Gguf;
use crate::formats::llama2c::Llama2c;
use crate::formats::safetensors::{Checkpoint, HfConfig};
use patchbay_primitives::{DType, Tensor};
use std::path::{Path, PathBuf};

/// The file format of a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// GGUF v2/v3.
    Gguf,
    /// HF safetensors (+ `config.json`).
    Safetensors,
    /// llama2.c `.bin` (v0).
    Llama2c,
}

impl Format {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Format::Gguf => "gguf",
            Format::Safetensors => "safetensors",
            Format::Llama2c => "llama2.c",
        }
    }
}

/// How Q and K are laid out for rotary embeddings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeLayout {
    /// Rotate adjacent pairs `(x[2i], x[2i+1])` (GGUF `llama`, llama2.c).
    Interleaved,
    /// Rotate `(x[i], x[i + d/2])` (HF, GGUF `qwen2`, `gemma3`: "NeoX").
    HalfSplit,
}

/// Hyper-parameters, whatever the format. Dimensions as in llama.cpp.
#[derive(Debug, Clone, PartialEq)]
pub struct HParams {
    /// Architecture (`llama`, `qwen2`, `gemma3`, `bert`).
    pub arch: String,
    /// Vocabulary size (rows of the token embedding).
    pub n_vocab: usize,
    /// Model width.
    pub n_embd: usize,
    /// Number of blocks.
    pub n_layer: usize,
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads.
    pub n_head_kv: usize,
    /// FFN hidden width.
    pub n_ff: usize,
    /// Width of one query/key head.
    pub head_dim: usize,
    /// Width of one value head.
    pub head_dim_v: usize,
    /// Training context length.
    pub n_ctx: usize,
    /// Rotated dimensions per head (0 without RoPE).
    pub rope_dim: usize,
    /// RoPE base (of global layers when they differ).
    pub rope_base: f32,
    /// RoPE base of sliding-window layers, when different (Gemma 3).
    pub rope_base_local: Option<f32>,
    /// Linear RoPE scaling factor, when the model has one.
    pub rope_scaling: Option<f32>,
    /// Epsilon of the RMSNorm (or LayerNorm for BERT).
    pub norm_eps: f32,
    /// Sliding-window size of local attention layers.
    pub sliding_window: Option<usize>,
    /// Every `n`-th layer is global, the others local (Gemma 3: 6).
    pub sliding_window_pattern: Option<usize>,
    /// Causal (decoder) attention; false for BERT.
    pub causal: bool,
    /// The output head is the token embedding (no `output.weight`).
    pub tied_embeddings: bool,
    /// Added to stored norm weights before use: 1.0 for HF Gemma (which
    /// stores `w` and applies `1 + w`; llama.cpp's GGUF already adds it), else 0.
    pub norm_weight_offset: f32,
}

/// A tensor as a listing shows it (native name).
#[derive(Debug, Clone, PartialEq)]
pub struct TensorEntry {
    /// Name in the file.
    pub name: String,
    /// Element format.
    pub dtype: DType,
    /// Row-major shape.
    pub shape: Vec<usize>,
    /// Byte length.
    pub bytes: usize,
}

enum Backend {
    Gguf(Gguf),
    Safetensors { ckpt: Checkpoint, config: HfConfig },
    Llama2c(Llama2c),
}

/// An open model file of any supported format.
pub struct ModelSource {
    path: PathBuf,
    backend: Backend,
    hparams: HParams,
}

impl std::fmt::Debug for ModelSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelSource")
            .field("path", &self.path)
            .field("format", &self.format())
            .field("hparams", &self.hparams)
            .finish()
    }
}

/// GGUF architectures whose Q/K llama.cpp stores for the half-split rotation
/// (its `LLAMA_ROPE_TYPE_NEOX` list, abridged).
const NEOX_ARCHS: &[&str] = &[
    "qwen",
    "qwen2",
    "qwen2moe",
    "qwen3",
    "qwen3moe",
    "gemma",
    "gemma2",
    "gemma3",
    "phi2",
    "phi3",
    "gptneox",
    "stablelm",
    "falcon",
    "starcoder2",
    "olmo2",
    "codeshell",
    "nemotron",
    "exaone",
    "bitnet",
    "openelm",
    "minicpm3",
];

/// The HF name of canonical tensor `name` for `arch` (`None` if it has none).
pub fn hf_name(arch: &str, name: &str) -> Option<String> {
    let (stem, kind) = name.rsplit_once('.')?;
    if !matches!(kind, "weight" | "bias") {
        return None;
    }
    if arch == "bert" {
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
        return Some(format!("encoder.layer.{i}.{local}.{kind}"));
    }
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
    let gemma = arch.starts_with("gemma");
    let local = match t {
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "attn_q_norm" => "self_attn.q_norm",
        "attn_k_norm" => "self_attn.k_norm",
        "attn_norm" => "input_layernorm",
        // Gemma's post_attention_layernorm is the sandwich norm after
        // attention; Llama's is the pre-FFN norm.
        "ffn_norm" if gemma => "pre_feedforward_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "post_attention_norm" if gemma => "post_attention_layernorm",
        "post_ffw_norm" if gemma => "post_feedforward_layernorm",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{i}.{local}.{kind}"))
}

/// The llama2.c tensor behind canonical `name`: `(name, Some(layer))` for a
/// slice of a stacked per-layer array.
pub fn llama2c_name(name: &str) -> Option<(&'static str, Option<usize>)> {
    Some(match name {
        "token_embd.weight" => ("token_embedding_table", None),
        "output_norm.weight" => ("rms_final_weight", None),
        "output.weight" => ("wcls", None),
        _ => {
            let stem = name.strip_suffix(".weight")?;
            let (i, t) = split_block(stem)?;
            let n = match t {
                "attn_norm" => "rms_att_weight",
                "attn_q" => "wq",
                "attn_k" => "wk",
                "attn_v" => "wv",
                "attn_output" => "wo",
                "ffn_norm" => "rms_ffn_weight",
                "ffn_gate" => "w1",
                "ffn_down" => "w2",
                "ffn_up" => "w3",
                _ => return None,
            };
            (n, Some(i))
        }
    })
}

/// `blk.{i}.rest` -> `(i, rest)`.
fn split_block(stem: &str) -> Option<(usize, &str)> {
    let rest = stem.strip_prefix("blk.")?;
    let (i, t) = rest.split_once('.')?;
    Some((i.parse().ok()?, t))
}

impl ModelSource {
    /// Opens a model: a `.gguf` file, a llama2.c `.bin`, a `.safetensors` file
    /// or `model.safetensors.index.json` (with `config.json` beside it), or a
    /// directory holding a safetensors checkpoint. Parses headers only, then
    /// checks the tensors' shapes against the hyper-parameters.
    pub fn open(path: impl AsRef<Path>) -> Result<ModelSource, ModelError> {
        let path = path.as_ref();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("")
            .to_ascii_lowercase();
        let backend = if path.is_dir()
            || name.ends_with(".safetensors")
            || name.ends_with(".safetensors.index.json")
        {
            let ckpt = Checkpoint::open(path)?;
            let dir = if path.is_dir() {
                path.to_path_buf()
            } else {
                path.parent().unwrap_or(Path::new(".")).to_path_buf()
            };
            let config = HfConfig::open(dir.join("config.json"))?;
            Backend::Safetensors { ckpt, config }
        } else if name.ends_with(".gguf") || has_gguf_magic(path) {
            Backend::Gguf(Gguf::open(path)?)
        } else if name.ends_with(".bin") {
            Backend::Llama2c(Llama2c::open(path)?)
        } else {
            return Err(ModelError::Unsupported {
                path: path.into(),
                detail: "not a GGUF, safetensors or llama2.c (.bin) model".into(),
            });
        };
        ModelSource::from_backend(path, backend)
    }

    /// A source over an open GGUF file.
    pub fn from_gguf(gguf: Gguf) -> Result<ModelSource, ModelError> {
        let path = gguf.path().to_path_buf();
        ModelSource::from_backend(&path, Backend::Gguf(gguf))
    }

    /// A source over an open llama2.c checkpoint.
    pub fn from_llama2c(model: Llama2c) -> Result<ModelSource, ModelError> {
        let path = model.path().to_path_buf();
        ModelSource::from_backend(&path, Backend::Llama2c(model))
    }

    /// A source over an open safetensors checkpoint and its config.
    pub fn from_safetensors(ckpt: Checkpoint, config: HfConfig) -> Result<ModelSource, ModelError> {
        let path = ckpt.path().to_path_buf();
        ModelSource::from_backend(&path, Backend::Safetensors { ckpt, config })
    }

    fn from_backend(path: &Path, backend: Backend) -> Result<ModelSource, ModelError> {
        let hparams = match &backend {
            Backend::Gguf(g) => gguf_hparams(g)?,
            Backend::Safetensors { ckpt, config } => hf_hparams(ckpt, config)?,
            Backend::Llama2c(m) => {
                let c = m.config();
                HParams {
                    arch: "llama".into(),
                    n_vocab: c.vocab_size,
                    n_embd: c.dim,
                    n_layer: c.n_layers,
                    n_head: c.n_heads,
                    n_head_kv: c.n_kv_heads,
                    n_ff: c.hidden_dim,
                    head_dim: c.head_size(),
                    head_dim_v: c.head_size(),
                    n_ctx: c.seq_len,
                    rope_dim: c.head_size(),
                    // run.c hard-codes these.
                    rope_base: 10000.0,
                    rope_base_local: None,
                    rope_scaling: None,
                    norm_eps: 1e-5,
                    sliding_window: None,
                    sliding_window_pattern: None,
                    causal: true,
                    tied_embeddings: c.shared_classifier,
                    norm_weight_offset: 0.0,
                }
            }
        };
        let src = ModelSource {
            path: path.to_path_buf(),
            backend,
            hparams,
        };
        src.validate()?;
        Ok(src)
    }

    /// The path opened.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file format.
    pub fn format(&self) -> Format {
        match self.backend {
            Backend::Gguf(_) => Format::Gguf,
            Backend::Safetensors { .. } => Format::Safetensors,
            Backend::Llama2c(_) => Format::Llama2c,
        }
    }

    /// Architecture name (`llama`, `qwen2`, `gemma3`, `bert`).
    pub fn arch(&self) -> &str {
        &self.hparams.arch
    }

    /// Hyper-parameters.
    pub fn hparams(&self) -> &HParams {
        &self.hparams
    }

    /// The GGUF file, when this is one (metadata, tokenizer).
    pub fn gguf(&self) -> Option<&Gguf> {
        match &self.backend {
            Backend::Gguf(g) => Some(g),
            _ => None,
        }
    }

    /// The safetensors checkpoint and config, when this is one.
    pub fn safetensors(&self) -> Option<(&Checkpoint, &HfConfig)> {
        match &self.backend {
            Backend::Safetensors { ckpt, config } => Some((ckpt, config)),
            _ => None,
        }
    }

    /// The llama2.c checkpoint, when this is one.
    pub fn llama2c(&self) -> Option<&Llama2c> {
        match &self.backend {
            Backend::Llama2c(m) => Some(m),
            _ => None,
        }
    }

    /// The rotation Q/K are stored for; `None` for models without RoPE (BERT).
    pub fn rope_layout(&self) -> Option<RopeLayout> {
        match &self.backend {
            _ if self.hparams.rope_dim == 0 => None,
            Backend::Gguf(_) if NEOX_ARCHS.contains(&self.arch()) => Some(RopeLayout::HalfSplit),
            Backend::Gguf(_) | Backend::Llama2c(_) => Some(RopeLayout::Interleaved),
            Backend::Safetensors { .. } => Some(RopeLayout::HalfSplit),
        }
    }

    /// Canonical tensor `name`, or `None` when the file lacks it (e.g. a tied
    /// `output.weight`: fall back to `token_embd.weight`).
    pub fn try_tensor(&self, name: &str) -> Result<Option<Tensor>, ModelError> {
        match &self.backend {
            Backend::Gguf(g) => g.try_tensor(name),
            Backend::Safetensors { ckpt, .. } => {
                let Some(hf) = hf_name(&self.hparams.arch, name) else {
                    return Ok(None);
                };
                match ckpt.try_tensor(&hf)? {
                    Some(t) => Ok(Some(t)),
                    // Some BERT exports prefix every name with the model type.
                    None if self.hparams.arch == "bert" => ckpt.try_tensor(&format!("bert.{hf}")),
                    None => Ok(None),
                }
            }
            Backend::Llama2c(m) => match llama2c_name(name) {
                None => Ok(None),
                Some((n, None)) => m.try_tensor(n),
                Some((n, Some(i))) if i < m.config().n_layers => m.layer_tensor(n, i).map(Some),
                Some(_) => Ok(None),
            },
        }
    }

    /// Canonical tensor `name`; [`ModelError::MissingTensor`] when absent.
    pub fn tensor(&self, name: &str) -> Result<Tensor, ModelError> {
        self.try_tensor(name)?
            .ok_or_else(|| ModelError::MissingTensor {
                path: self.path.clone(),
                tensor: name.into(),
            })
    }

    /// Canonical tensor `name`, checked to have `shape` (row-major).
    pub fn tensor_shaped(&self, name: &str, shape: &[usize]) -> Result<Tensor, ModelError> {
        let t = self.tensor(name)?;
        if t.shape() != shape {
            return Err(ModelError::ShapeMismatch {
                path: self.path.clone(),
                tensor: name.into(),
                expected: shape.to_vec(),
                found: t.shape().to_vec(),
            });
        }
        Ok(t)
    }

    /// Every tensor under its name in the file, in file order.
    pub fn tensor_entries(&self) -> Vec<TensorEntry> {
        match &self.backend {
            Backend::Gguf(g) => g
                .tensors()
                .iter()
                .map(|t| TensorEntry {
                    name: t.name.clone(),
                    dtype: t.dtype,
                    shape: t.shape.clone(),
                    bytes: t.bytes,
                })
                .collect(),
            Backend::Safetensors { ckpt, .. } => ckpt
                .tensors()
                .map(|t| TensorEntry {
                    name: t.name.clone(),
                    dtype: t.dtype,
                    shape: t.shape.clone(),
                    bytes: t.bytes,
                })
                .collect(),
            Backend::Llama2c(m) => m
                .tensors()
                .iter()
                .map(|t| TensorEntry {
                    name: t.name.into(),
                    dtype: DType::F32,
                    shape: t.shape.clone(),
                    bytes: t.bytes,
                })
                .collect(),
        }
    }

    /// Number of weights (elements of all tensors, excluding llama2.c's
    /// precomputed RoPE tables and integer tensors such as position ids).
    pub fn parameter_count(&self) -> u64 {
        self.tensor_entries()
            .iter()
            .filter(|t| !matches!(t.dtype, DType::I64 | DType::I32))
            .filter(|t| !t.name.starts_with("freq_cis_"))
            .map(|t| t.shape.iter().map(|&d| d as u64).product::<u64>())
            .sum()
    }

    /// The tokenizer the model comes with, as a short description
    /// (`gpt2 (pre smollm)`, `WordPiece`, `llama2.c tokenizer.bin`).
    pub fn tokenizer_kind(&self) -> Option<String> {
        match &self.backend {
            Backend::Gguf(g) => {
                let model = g.get_str("tokenizer.ggml.model").ok()?;
                Some(match g.get_str("tokenizer.ggml.pre") {
                    Ok(pre) => format!("{model} (pre {pre})"),
                    Err(_) => model.to_owned(),
                })
            }
            Backend::Safetensors { config, .. } => {
                let dir = config.path().parent()?;
                let text = std::fs::read_to_string(dir.join("tokenizer.json")).ok()?;
                let json: serde_json::Value = serde_json::from_str(&text).ok()?;
                Some(json.get("model")?.get("type")?.as_str()?.to_owned())
            }
            Backend::Llama2c(m) => {
                let dir = m.path().parent()?;
                let v = m.config().vocab_size;
                [format!("tok{v}.bin"), "tokenizer.bin".into()]
                    .into_iter()
                    .find(|f| dir.join(f).is_file())
                    .map(|f| format!("llama2.c sentencepiece ({f})"))
            }
        }
    }

    /// Checks the shapes of the tensors the architecture needs against the
    /// hyper-parameters (called by `open`).
    pub fn validate(&self) -> Result<(), ModelError> {
        let h = &self.hparams;
        let (e, q, kv, kvv) = (
            h.n_embd,
            h.n_head * h.head_dim,
            h.n_head_kv * h.head_dim,
            h.n_head_kv * h.head_dim_v,
        );
        let check = |name: String, shape: &[usize]| -> Result<(), ModelError> {
            self.tensor_shaped(&name, shape).map(|_| ())
        };
        let optional = |name: String, shape: &[usize]| -> Result<(), ModelError> {
            match self.try_tensor(&name)? {
                Some(_) => check(name, shape),
                None => Ok(()),
            }
        };
        check("token_embd.weight".into(), &[h.n_vocab, e])?;
        if h.arch == "bert" {
            for i in 0..h.n_layer {
                check(format!("blk.{i}.attn_q.weight"), &[e, e])?;
                check(format!("blk.{i}.attn_k.weight"), &[e, e])?;
                check(format!("blk.{i}.attn_v.weight"), &[e, e])?;
                check(format!("blk.{i}.attn_output.weight"), &[e, e])?;
                check(format!("blk.{i}.ffn_up.weight"), &[h.n_ff, e])?;
                check(format!("blk.{i}.ffn_down.weight"), &[e, h.n_ff])?;
            }
            return Ok(());
        }
        check("output_norm.weight".into(), &[e])?;
        optional("output.weight".into(), &[h.n_vocab, e])?;
        for i in 0..h.n_layer {
            check(format!("blk.{i}.attn_norm.weight"), &[e])?;
            check(format!("blk.{i}.attn_q.weight"), &[q, e])?;
            check(format!("blk.{i}.attn_k.weight"), &[kv, e])?;
            check(format!("blk.{i}.attn_v.weight"), &[kvv, e])?;
            check(
                format!("blk.{i}.attn_output.weight"),
                &[e, h.n_head * h.head_dim_v],
            )?;
            optional(format!("blk.{i}.attn_q.bias"), &[q])?;
            optional(format!("blk.{i}.attn_k.bias"), &[kv])?;
            optional(format!("blk.{i}.attn_v.bias"), &[kvv])?;
            check(format!("blk.{i}.ffn_gate.weight"), &[h.n_ff, e])?;
            check(format!("blk.{i}.ffn_up.weight"), &[h.n_ff, e])?;
            check(format!("blk.{i}.ffn_down.weight"), &[e, h.n_ff])?;
        }
        Ok(())
    }
}

fn has_gguf_magic(path: &Path) -> bool {
    use std::io::Read;
    let mut m = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut m))
        .is_ok()
        && &m == crate::formats::gguf::MAGIC
}

fn gguf_hparams(g: &Gguf) -> Result<HParams, ModelError> {
    let arch = g.architecture()?.to_owned();
    let k = |s: &str| format!("{arch}.{s}");
    let opt_usize = |key: String| -> Result<Option<usize>, ModelError> {
        match g.get(&key) {
            None => Ok(None),
            Some(_) => g.get_usize(&key).map(Some),
        }
    };
    let opt_f32 = |key: String| -> Result<Option<f32>, ModelError> {
        match g.get(&key) {
            None => Ok(None),
            Some(_) => g.get_f32(&key).map(Some),
        }
    };
    let n_embd = g.get_usize(&k("embedding_length"))?;
    let n_head = g.get_usize(&k("attention.head_count"))?;
    if n_head == 0 {
        return Err(ModelError::WrongType {
            path: g.path().into(),
            key: k("attention.head_count"),
            expected: "a positive head count",
            found: "0".into(),
        });
    }
    let head_dim = opt_usize(k("attention.key_length"))?.unwrap_or(n_embd / n_head);
    let n_vocab = match g.tensor_info("token_embd.weight") {
        Some(t) => t.shape[0],
        None => match opt_usize(k("vocab_size"))? {
            Some(v) => v,
            None => g.get_str_array("tokenizer.ggml.tokens")?.len(),
        },
    };
    let gemma3 = arch == "gemma3";
    let bert = matches!(arch.as_str(), "bert" | "nomic-bert" | "jina-bert-v2");
    Ok(HParams {
        n_vocab,
        n_embd,
        n_layer: g.get_usize(&k("block_count"))?,
        n_head,
        n_head_kv: opt_usize(k("attention.head_count_kv"))?.unwrap_or(n_head),
        n_ff: g.get_usize(&k("feed_forward_length"))?,
        head_dim,
        head_dim_v: opt_usize(k("attention.value_length"))?.unwrap_or(head_dim),
        n_ctx: opt_usize(k("context_length"))?.unwrap_or(0),
        rope_dim: if bert {
            0
        } else {
            opt_usize(k("rope.dimension_count"))?.unwrap_or(head_dim)
        },
        rope_base: opt_f32(k("rope.freq_base"))?.unwrap_or(10000.0),
        // llama.cpp hard-codes 10000 for Gemma 3's local layers when absent.
        rope_base_local: match opt_f32(k("rope.freq_base_swa"))? {
            Some(b) => Some(b),
            None if gemma3 => Some(10000.0),
            None => None,
        },
        rope_scaling: opt_f32(k("rope.scaling.factor"))?.filter(|&f| f != 0.0 && f != 1.0),
        norm_eps: match opt_f32(k("attention.layer_norm_rms_epsilon"))? {
            Some(e) => e,
            None => opt_f32(k("attention.layer_norm_epsilon"))?.unwrap_or(1e-5),
        },
        sliding_window: opt_usize(k("attention.sliding_window"))?,
        // llama.cpp hard-codes Gemma 3's pattern (5 local, then 1 global).
        sliding_window_pattern: match opt_usize(k("attention.sliding_window_pattern"))? {
            Some(p) => Some(p),
            None if gemma3 => Some(6),
            None => None,
        },
        causal: match g.get(&k("attention.causal")) {
            Some(_) => g.get_bool(&k("attention.causal"))?,
            None => !bert,
        },
        tied_embeddings: g.tensor_info("output.weight").is_none(),
        norm_weight_offset: 0.0,
        arch,
    })
}

fn hf_hparams(ckpt: &Checkpoint, c: &HfConfig) -> Result<HParams, ModelError> {
    let model_type = c.model_type()?;
    let arch = match model_type {
        "gemma3_text" | "gemma3" => "gemma3",
        "mistral" => "llama",
        other => other,
    }
    .to_owned();
    let n_embd = c.get_usize("hidden_size")?;
    let n_head = c.get_usize("num_attention_heads")?;
    if n_head == 0 {
        return Err(ModelError::WrongType {
            path: c.path().into(),
            key: "num_attention_heads".into(),
            expected: "a positive head count",
            found: "0".into(),
        });
    }
    let head_dim = c.opt_usize("head_dim")?.unwrap_or(n_embd / n_head);
    let bert = arch == "bert";
    let gemma = arch.starts_with("gemma");
    let f = |x: Option<f64>| x.map(|v| v as f32);
    let sliding = match c.opt_bool("use_sliding_window")? {
        Some(false) => None,
        _ => c.opt_usize("sliding_window")?,
    };
    Ok(HParams {
        n_vocab: c.get_usize("vocab_size")?,
        n_embd,
        n_layer: c.get_usize("num_hidden_layers")?,
        n_head,
        n_head_kv: c.opt_usize("num_key_value_heads")?.unwrap_or(n_head),
        n_ff: c.get_usize("intermediate_size")?,
        head_dim,
        head_dim_v: head_dim,
        n_ctx: c.opt_usize("max_position_embeddings")?.unwrap_or(0),
        rope_dim: if bert { 0 } else { head_dim },
        rope_base: f(c.opt_f64("rope_theta")?).unwrap_or(10000.0),
        rope_base_local: f(c.opt_f64("rope_local_base_freq")?),
        rope_scaling: c
            .get("rope_scaling")
            .and_then(|r| r.get("factor"))
            .and_then(|v| v.as_f64())
            .map(|v| v as f32),
        norm_eps: match c.opt_f64("rms_norm_eps")? {
            Some(e) => e as f32,
            None => f(c.opt_f64("layer_norm_eps")?).unwrap_or(1e-5),
        },
        sliding_window: sliding,
        sliding_window_pattern: c.opt_usize("sliding_window_pattern")?,
        causal: !bert,
        tied_embeddings: !bert && ckpt.tensor_info("lm_head.weight").is_none(),
        norm_weight_offset: if gemma { 1.0 } else { 0.0 },
        arch,
    })
}
