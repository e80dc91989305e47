//! One interface over GGUF, safetensors and llama2.c files: tensors by
//! canonical name, and the hyper-parameters the file declares.
//!
//! Canonical names are GGUF's (`token_embd.weight`, `blk.{i}.attn_q.weight`,
//! `blk.{i}.ffn_down.weight`, `output_norm.weight`, `output.weight`, biases
//! `blk.{i}.attn_q.bias`, ...). GGUF files use them as they are; llama2.c
//! holds only Llama models, so its reader maps them itself
//! ([`llama2c::canonical_to_llama2c`]).
//! A safetensors checkpoint names tensors as its architecture does: the model
//! family gives the source a [`NameMap`] ([`ModelSource::set_name_map`]);
//! without one, names are looked up as they are.
//!
//! Nothing here knows an architecture: [`HParams`] records what the file
//! states (`None` where it states nothing), and the families decide what an
//! absent value means, which RoPE layout the stored Q/K need, and which
//! tensors of which shapes they require.

use crate::error::ModelError;
use crate::formats::gguf::Gguf;
use crate::formats::llama2c::{self, Llama2c};
use crate::formats::safetensors::{Checkpoint, HfConfig};
use patchbay_primitives::{DType, Tensor};
use std::path::{Path, PathBuf};

pub use patchbay_primitives::rope::RopeScaling;

/// Maps a canonical (GGUF) tensor name to the name a safetensors checkpoint
/// of one architecture uses; `None` when that architecture has no such tensor.
/// Each model family provides its own (`families::llama::hf_name`, ...).
pub type NameMap = fn(&str) -> Option<String>;

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

/// Hyper-parameters as the file declares them, whatever the format.
/// Dimensions as in llama.cpp. `Option`s are `None` when the file does not
/// say; what that means is the model family's decision.
#[derive(Debug, Clone, PartialEq)]
pub struct HParams {
    /// The declared architecture: GGUF `general.architecture` (`llama`,
    /// `qwen2`, `gemma3`, `bert`), HF `model_type` (`llama`, `mistral`,
    /// `gemma3_text`, `bert`), `llama` for llama2.c.
    pub arch: String,
    /// HF `architectures[0]` (`LlamaForCausalLM`, `BertModel`), when given.
    pub model_class: Option<String>,
    /// Vocabulary size (rows of the token embedding).
    pub n_vocab: usize,
    /// Model width.
    pub n_embd: usize,
    /// Number of blocks.
    pub n_layer: usize,
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads (the query heads when the file does not say).
    pub n_head_kv: usize,
    /// FFN hidden width.
    pub n_ff: usize,
    /// Width of one query/key head (`n_embd / n_head` when not stated).
    pub head_dim: usize,
    /// Width of one value head (`head_dim` when not stated).
    pub head_dim_v: usize,
    /// Training context length (0 when not stated).
    pub n_ctx: usize,
    /// Rotated dimensions per head, when stated (GGUF
    /// `rope.dimension_count`; llama2.c rotates whole heads).
    pub rope_dim: Option<usize>,
    /// RoPE base (of global layers when they differ); 10000 when not stated.
    pub rope_base: f32,
    /// RoPE base of sliding-window layers, when stated.
    pub rope_base_local: Option<f32>,
    /// RoPE scaling (HF `rope_scaling`, GGUF `rope.scaling.*`); a type
    /// patchbay does not implement is an error when the file is opened. The
    /// per-frequency divisors some GGUFs carry (`rope_freqs.weight`) are a
    /// tensor, read by the family.
    pub rope_scaling: RopeScaling,
    /// Epsilon of the RMSNorm or LayerNorm; 1e-5 when not stated.
    pub norm_eps: f32,
    /// Sliding-window size of local attention layers, when stated.
    pub sliding_window: Option<usize>,
    /// Every `n`-th layer is global, the others local, when stated.
    pub sliding_window_pattern: Option<usize>,
    /// Causal (decoder) attention, when stated (GGUF `attention.causal`).
    pub causal: Option<bool>,
    /// The output head is the token embedding, when the file says so (HF
    /// `tie_word_embeddings`, llama2.c's shared classifier). GGUF says it
    /// only by having no `output.weight`.
    pub tied_embeddings: Option<bool>,
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
    Safetensors {
        ckpt: Checkpoint,
        config: HfConfig,
        /// The first path component every tensor name shares, if any (some
        /// exports prefix every name with the model type, `bert.`).
        shared_prefix: Option<String>,
    },
    Llama2c(Llama2c),
}

/// An open model file of any supported format.
pub struct ModelSource {
    path: PathBuf,
    backend: Backend,
    hparams: HParams,
    name_map: Option<NameMap>,
}

impl std::fmt::Debug for ModelSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelSource")
            .field("path", &self.path)
            .field("format", &self.format())
            .field("hparams", &self.hparams)
            .field("name_map", &self.name_map.is_some())
            .finish()
    }
}

impl ModelSource {
    /// Opens a model: a `.gguf` file, a llama2.c `.bin`, a `.safetensors` file
    /// or `model.safetensors.index.json` (with `config.json` beside it), or a
    /// directory holding a safetensors checkpoint. Parses headers only; no
    /// name map is set (see [`ModelSource::set_name_map`]).
    pub fn open(path: impl AsRef<Path>) -> Result<ModelSource, ModelError> {
        let path = path.as_ref();
        if let Ok(meta) = std::fs::metadata(path) {
            // A FIFO or a device would block the reader forever, or never end.
            if !meta.is_file() && !meta.is_dir() {
                return Err(ModelError::Unsupported {
                    path: path.into(),
                    detail: "not a regular file or a directory: a model must be one".into(),
                });
            }
        }
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
            safetensors_backend(ckpt, config)
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
        ModelSource::from_backend(&path, safetensors_backend(ckpt, config))
    }

    fn from_backend(path: &Path, backend: Backend) -> Result<ModelSource, ModelError> {
        let hparams = match &backend {
            Backend::Gguf(g) => gguf_hparams(g)?,
            Backend::Safetensors { config, .. } => hf_hparams(config)?,
            Backend::Llama2c(m) => {
                let c = m.config();
                HParams {
                    arch: "llama".into(),
                    model_class: None,
                    n_vocab: c.vocab_size,
                    n_embd: c.dim,
                    n_layer: c.n_layers,
                    n_head: c.n_heads,
                    n_head_kv: c.n_kv_heads,
                    n_ff: c.hidden_dim,
                    head_dim: c.head_size(),
                    head_dim_v: c.head_size(),
                    n_ctx: c.seq_len,
                    rope_dim: Some(c.head_size()),
                    rope_base: llama2c::ROPE_BASE,
                    rope_base_local: None,
                    rope_scaling: RopeScaling::None,
                    norm_eps: llama2c::NORM_EPS,
                    sliding_window: None,
                    sliding_window_pattern: None,
                    causal: Some(true),
                    tied_embeddings: Some(c.shared_classifier),
                }
            }
        };
        check_hparams(path, &backend, &hparams)?;
        Ok(ModelSource {
            path: path.to_path_buf(),
            backend,
            hparams,
            name_map: None,
        })
    }

    /// Sets how canonical names become the checkpoint's own names (used by
    /// safetensors checkpoints; GGUF and llama2.c ignore it).
    pub fn set_name_map(&mut self, map: NameMap) {
        self.name_map = Some(map);
    }

    /// [`ModelSource::set_name_map`], by value.
    pub fn with_name_map(mut self, map: NameMap) -> ModelSource {
        self.set_name_map(map);
        self
    }

    /// The name map, if one is set.
    pub fn name_map(&self) -> Option<NameMap> {
        self.name_map
    }

    /// The path opened.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Maps every page of the weight files now ([`patchbay_primitives::Storage::prefault`]), so
    /// that a first forward pass does not fault them in one by one.
    pub fn prefault(&self) {
        match &self.backend {
            Backend::Gguf(g) => g.storage().prefault(),
            Backend::Safetensors { ckpt, .. } => {
                for f in ckpt.files() {
                    f.storage().prefault();
                }
            }
            Backend::Llama2c(l) => l.storage().prefault(),
        }
    }

    /// The file format.
    pub fn format(&self) -> Format {
        match self.backend {
            Backend::Gguf(_) => Format::Gguf,
            Backend::Safetensors { .. } => Format::Safetensors,
            Backend::Llama2c(_) => Format::Llama2c,
        }
    }

    /// The declared architecture ([`HParams::arch`]).
    pub fn arch(&self) -> &str {
        &self.hparams.arch
    }

    /// Hyper-parameters as declared.
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
            Backend::Safetensors { ckpt, config, .. } => Some((ckpt, config)),
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

    /// Canonical tensor `name`, or `None` when the file lacks it (e.g. a tied
    /// `output.weight`: fall back to `token_embd.weight`).
    pub fn try_tensor(&self, name: &str) -> Result<Option<Tensor>, ModelError> {
        match &self.backend {
            Backend::Gguf(g) => g.try_tensor(name),
            Backend::Safetensors {
                ckpt,
                shared_prefix,
                ..
            } => {
                let native = match self.name_map {
                    Some(map) => match map(name) {
                        Some(n) => n,
                        None => return Ok(None),
                    },
                    None => name.to_owned(),
                };
                match ckpt.try_tensor(&native)? {
                    Some(t) => Ok(Some(t)),
                    None => match shared_prefix {
                        Some(p) => ckpt.try_tensor(&format!("{p}.{native}")),
                        None => Ok(None),
                    },
                }
            }
            Backend::Llama2c(m) => match llama2c::canonical_to_llama2c(name) {
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

    /// Canonical tensor `name`, checked to have `shape` (row-major):
    /// [`ModelError::ShapeMismatch`] naming the file and tensor otherwise.
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

    /// Like [`ModelSource::tensor_shaped`] for a tensor that may be absent.
    pub fn try_tensor_shaped(
        &self,
        name: &str,
        shape: &[usize],
    ) -> Result<Option<Tensor>, ModelError> {
        match self.try_tensor(name)? {
            Some(_) => self.tensor_shaped(name, shape).map(Some),
            None => Ok(None),
        }
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
                if !dir.join("tokenizer.json").is_file()
                    && dir.join("encoder.json").is_file()
                    && dir.join("vocab.bpe").is_file()
                {
                    return Some("BPE (GPT-2 encoder.json + vocab.bpe)".into());
                }
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
}

fn has_gguf_magic(path: &Path) -> bool {
    use std::io::Read;
    let mut m = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut m))
        .is_ok()
        && &m == crate::formats::gguf::MAGIC
}

fn safetensors_backend(ckpt: Checkpoint, config: HfConfig) -> Backend {
    let shared_prefix = {
        let mut firsts = ckpt
            .tensors()
            .map(|t| t.name.split_once('.').map(|(p, _)| p));
        match firsts.next() {
            Some(Some(p)) if firsts.all(|q| q == Some(p)) => Some(p.to_owned()),
            _ => None,
        }
    };
    Backend::Safetensors {
        ckpt,
        config,
        shared_prefix,
    }
}

/// The error for a RoPE scaling type patchbay does not implement.
fn unsupported_scaling(path: &Path, key: &str, kind: &str) -> ModelError {
    ModelError::Unsupported {
        path: path.into(),
        detail: format!(
            "RoPE scaling type '{kind}' ({key}) is not implemented (supported: linear, llama3); \
             running without it would give wrong results"
        ),
    }
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
    // llama.cpp: the type defaults to linear, the factor to none (0 or 1);
    // `rope.scale_linear` is the factor's older key.
    let factor_key = [k("rope.scaling.factor"), k("rope.scale_linear")]
        .into_iter()
        .find(|key| g.get(key).is_some());
    let factor = match &factor_key {
        Some(key) => {
            let f = g.get_f32(key)?;
            if !(f.is_finite() && f >= 0.0) {
                return Err(ModelError::WrongType {
                    path: g.path().into(),
                    key: key.clone(),
                    expected: "a non-negative factor",
                    found: f.to_string(),
                });
            }
            f
        }
        None => 0.0,
    };
    let type_key = k("rope.scaling.type");
    let kind = match g.get(&type_key) {
        Some(_) => g.get_str(&type_key)?,
        None => "linear",
    };
    let rope_scaling = match kind {
        "none" => RopeScaling::None,
        "linear" if factor == 0.0 || factor == 1.0 => RopeScaling::None,
        "linear" => RopeScaling::Linear {
            factor: factor as f64,
        },
        other => return Err(unsupported_scaling(g.path(), &type_key, other)),
    };
    Ok(HParams {
        model_class: None,
        n_vocab,
        n_embd,
        n_layer: g.get_usize(&k("block_count"))?,
        n_head,
        n_head_kv: opt_usize(k("attention.head_count_kv"))?.unwrap_or(n_head),
        n_ff: g.get_usize(&k("feed_forward_length"))?,
        head_dim,
        head_dim_v: opt_usize(k("attention.value_length"))?.unwrap_or(head_dim),
        n_ctx: opt_usize(k("context_length"))?.unwrap_or(0),
        rope_dim: opt_usize(k("rope.dimension_count"))?,
        rope_base: opt_f32(k("rope.freq_base"))?.unwrap_or(10000.0),
        rope_base_local: opt_f32(k("rope.freq_base_swa"))?,
        rope_scaling,
        norm_eps: match opt_f32(k("attention.layer_norm_rms_epsilon"))? {
            Some(e) => e,
            None => opt_f32(k("attention.layer_norm_epsilon"))?.unwrap_or(1e-5),
        },
        sliding_window: opt_usize(k("attention.sliding_window"))?,
        sliding_window_pattern: opt_usize(k("attention.sliding_window_pattern"))?,
        causal: match g.get(&k("attention.causal")) {
            Some(_) => Some(g.get_bool(&k("attention.causal"))?),
            None => None,
        },
        tied_embeddings: None,
        arch,
    })
}

/// HF `rope_scaling`: `null`, `{"rope_type"|"type": "default"}`,
/// `{.., "linear", "factor"}` or `{.., "llama3", "factor", "low_freq_factor",
/// "high_freq_factor", "original_max_position_embeddings"}`.
fn hf_rope_scaling(c: &HfConfig) -> Result<RopeScaling, ModelError> {
    let Some(r) = c.get("rope_scaling") else {
        return Ok(RopeScaling::None);
    };
    let path = c.path();
    let wrong = |key: &str, expected: &'static str, found: Option<&serde_json::Value>| {
        ModelError::WrongType {
            path: path.into(),
            key: key.into(),
            expected,
            found: found.map_or("nothing".into(), |v| v.to_string()),
        }
    };
    let obj = r
        .as_object()
        .ok_or_else(|| wrong("rope_scaling", "an object", Some(r)))?;
    let field = |k: &str| obj.get(k).filter(|v| !v.is_null());
    let (kind_key, kind) = match (field("rope_type"), field("type")) {
        (Some(v), _) => ("rope_scaling.rope_type", v),
        (None, Some(v)) => ("rope_scaling.type", v),
        (None, None) => {
            return Err(wrong(
                "rope_scaling.rope_type",
                "a scaling type (\"linear\", \"llama3\", ...)",
                None,
            ))
        }
    };
    let kind = kind
        .as_str()
        .ok_or_else(|| wrong(kind_key, "a string", Some(kind)))?;
    let positive = |k: &str| -> Result<f64, ModelError> {
        let v = field(k);
        v.and_then(|v| v.as_f64())
            .filter(|x| x.is_finite() && *x > 0.0)
            .ok_or_else(|| wrong(&format!("rope_scaling.{k}"), "a positive number", v))
    };
    Ok(match kind {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear {
            factor: positive("factor")?,
        },
        "llama3" => {
            let (low, high) = (positive("low_freq_factor")?, positive("high_freq_factor")?);
            if high <= low {
                return Err(wrong(
                    "rope_scaling.high_freq_factor",
                    "a number above low_freq_factor",
                    field("high_freq_factor"),
                ));
            }
            RopeScaling::Llama3 {
                factor: positive("factor")?,
                low_freq_factor: low,
                high_freq_factor: high,
                original_max_position: positive("original_max_position_embeddings")?,
            }
        }
        other => return Err(unsupported_scaling(path, kind_key, other)),
    })
}

fn hf_hparams(c: &HfConfig) -> Result<HParams, ModelError> {
    let arch = c.model_type()?.to_owned();
    let model_class = match c.get("architectures") {
        None => None,
        Some(v) => Some(
            v.as_array()
                .and_then(|a| a.first())
                .and_then(|s| s.as_str())
                .map(str::to_owned)
                .ok_or_else(|| ModelError::WrongType {
                    path: c.path().into(),
                    key: "architectures".into(),
                    expected: "a list of class names",
                    found: v.to_string(),
                })?,
        ),
    };
    // GPT-2-style configs name the sizes `n_embd`, `n_head`, `n_layer`,
    // `n_positions` and `n_inner` (HF's `GPT2Config.attribute_map`); a null
    // or absent `n_inner` means `4 * n_embd` there.
    let gpt2_style = c.get("hidden_size").is_none() && c.get("n_embd").is_some();
    let key = |hf: &'static str, gpt2: &'static str| if gpt2_style { gpt2 } else { hf };
    let n_embd = c.get_usize(key("hidden_size", "n_embd"))?;
    let n_head = c.get_usize(key("num_attention_heads", "n_head"))?;
    if n_head == 0 {
        return Err(ModelError::WrongType {
            path: c.path().into(),
            key: key("num_attention_heads", "n_head").into(),
            expected: "a positive head count",
            found: "0".into(),
        });
    }
    let head_dim = c.opt_usize("head_dim")?.unwrap_or(n_embd / n_head);
    let f = |x: Option<f64>| x.map(|v| v as f32);
    let sliding = match c.opt_bool("use_sliding_window")? {
        Some(false) => None,
        _ => c.opt_usize("sliding_window")?,
    };
    Ok(HParams {
        model_class,
        n_vocab: c.get_usize("vocab_size")?,
        n_embd,
        n_layer: c.get_usize(key("num_hidden_layers", "n_layer"))?,
        n_head,
        n_head_kv: c.opt_usize("num_key_value_heads")?.unwrap_or(n_head),
        n_ff: if gpt2_style {
            c.opt_usize("n_inner")?.unwrap_or(4 * n_embd)
        } else {
            c.get_usize("intermediate_size")?
        },
        head_dim,
        head_dim_v: head_dim,
        n_ctx: c
            .opt_usize(key("max_position_embeddings", "n_positions"))?
            .unwrap_or(0),
        rope_dim: None,
        rope_base: f(c.opt_f64("rope_theta")?).unwrap_or(10000.0),
        rope_base_local: f(c.opt_f64("rope_local_base_freq")?),
        rope_scaling: hf_rope_scaling(c)?,
        norm_eps: match c.opt_f64("rms_norm_eps")? {
            Some(e) => e as f32,
            None => match c.opt_f64("layer_norm_eps")? {
                Some(e) => e as f32,
                None => f(c.opt_f64("layer_norm_epsilon")?).unwrap_or(1e-5),
            },
        },
        sliding_window: sliding,
        sliding_window_pattern: c.opt_usize("sliding_window_pattern")?,
        causal: None,
        tied_embeddings: c.opt_bool("tie_word_embeddings")?,
        arch,
    })
}

/// Rejects hyper-parameters no model can be built from (no layers, a NaN
/// epsilon, ...) when the file is opened, naming the key as the file spells it.
fn check_hparams(path: &Path, backend: &Backend, h: &HParams) -> Result<(), ModelError> {
    let key = |gguf: &str, hf: &str, l2c: &str| match backend {
        Backend::Gguf(_) => format!("{}.{gguf}", h.arch),
        Backend::Safetensors { .. } => hf.to_string(),
        Backend::Llama2c(_) => l2c.to_string(),
    };
    let bad = |what: String, detail: String| ModelError::Corrupt {
        path: path.to_path_buf(),
        what,
        detail,
    };
    for (v, gguf, hf, l2c) in [
        (h.n_layer, "block_count", "num_hidden_layers", "n_layers"),
        (h.n_embd, "embedding_length", "hidden_size", "dim"),
        (
            h.n_head,
            "attention.head_count",
            "num_attention_heads",
            "n_heads",
        ),
    ] {
        if v == 0 {
            return Err(bad(
                format!("hyper-parameter {}", key(gguf, hf, l2c)),
                "is 0; it must be at least 1".into(),
            ));
        }
    }
    let mut floats = vec![
        (
            h.norm_eps,
            "attention.layer_norm_rms_epsilon",
            "rms_norm_eps",
            "norm eps",
        ),
        (h.rope_base, "rope.freq_base", "rope_theta", "rope base"),
    ];
    if let Some(b) = h.rope_base_local {
        floats.push((
            b,
            "rope.local.freq_base",
            "rope_local_base_freq",
            "rope base",
        ));
    }
    for (v, gguf, hf, l2c) in floats {
        if !v.is_finite() || v < 0.0 {
            return Err(bad(
                format!("hyper-parameter {}", key(gguf, hf, l2c)),
                format!("is {v}; it must be a finite number >= 0"),
            ));
        }
    }
    // The RoPE families rotate pairs of dimensions: an odd or oversized
    // count must stop here, not in a kernel.
    if matches!(h.arch.as_str(), "llama" | "qwen2" | "gemma3") {
        let (rot, gguf, hf) = match h.rope_dim {
            Some(r) => (r, "rope.dimension_count", "rope.dimension_count"),
            None => (h.head_dim, "attention.key_length", "head_dim"),
        };
        if rot < 2 || rot % 2 == 1 || rot > h.head_dim {
            return Err(bad(
                format!("hyper-parameter {}", key(gguf, hf, "head size")),
                format!(
                    "is {rot} rotated dimensions per head (head size {}); RoPE needs an even number, at least 2 and at most the head size",
                    h.head_dim
                ),
            ));
        }
    }
    Ok(())
}
