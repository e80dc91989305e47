//! llama2.c checkpoints (`.bin`, v0 header) and their `tokenizer.bin`.
//!
//! The v0 header is seven `i32`: dim, hidden_dim, n_layers, n_heads,
//! n_kv_heads, vocab_size (negative when the classifier is not shared with the
//! token embedding), seq_len. The f32 weights follow in run.c's order; each is
//! exposed as a [`Tensor`] view into the map, stacked per layer (the source
//! layer slices them). Matrices are row-major `[out, in]` as in GGUF and HF.
//! Reading `tokenizer.bin` is the tokenizer module's business.

use crate::error::ModelError;
use patchbay_primitives::{DType, Storage, Tensor};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Bytes of the v0 header.
pub const HEADER_BYTES: usize = 28;

/// The v0 header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Model width.
    pub dim: usize,
    /// FFN hidden width.
    pub hidden_dim: usize,
    /// Number of layers.
    pub n_layers: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads.
    pub n_kv_heads: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Maximum sequence length.
    pub seq_len: usize,
    /// True when the classifier is the token embedding (header vocab > 0).
    pub shared_classifier: bool,
}

impl Config {
    /// `dim / n_heads`.
    pub fn head_size(&self) -> usize {
        self.dim / self.n_heads
    }

    /// `n_kv_heads * head_size`.
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_size()
    }
}

/// The tensors of a llama2.c checkpoint, in file order, with row-major shapes.
/// Per-layer tensors are stacked with the layer as the outermost dimension.
pub const TENSOR_NAMES: &[&str] = &[
    "token_embedding_table",
    "rms_att_weight",
    "wq",
    "wk",
    "wv",
    "wo",
    "rms_ffn_weight",
    "w1",
    "w2",
    "w3",
    "rms_final_weight",
    "freq_cis_real",
    "freq_cis_imag",
    "wcls",
];

/// The RoPE base run.c hard-codes (the header does not carry one).
pub const ROPE_BASE: f32 = 10000.0;

/// The RMSNorm epsilon run.c hard-codes.
pub const NORM_EPS: f32 = 1e-5;

/// The llama2.c tensor behind canonical (GGUF) tensor `name`: `(name,
/// Some(layer))` for a slice of a stacked per-layer array; `None` when the
/// format has no such tensor. (llama2.c holds only Llama models, so this map
/// is the format's own.)
pub fn canonical_to_llama2c(name: &str) -> Option<(&'static str, Option<usize>)> {
    Some(match name {
        "token_embd.weight" => ("token_embedding_table", None),
        "output_norm.weight" => ("rms_final_weight", None),
        "output.weight" => ("wcls", None),
        _ => {
            let stem = name.strip_suffix(".weight")?;
            let rest = stem.strip_prefix("blk.")?;
            let (i, t) = rest.split_once('.')?;
            let i: usize = i.parse().ok()?;
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

/// One tensor's place in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// Name from [`TENSOR_NAMES`].
    pub name: &'static str,
    /// Row-major shape (stacked per layer where applicable).
    pub shape: Vec<usize>,
    /// Absolute byte offset.
    pub offset: usize,
    /// Byte length.
    pub bytes: usize,
}

/// An open llama2.c checkpoint.
pub struct Llama2c {
    path: PathBuf,
    storage: Arc<Storage>,
    config: Config,
    tensors: Vec<TensorInfo>,
}

impl std::fmt::Debug for Llama2c {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Llama2c")
            .field("path", &self.path)
            .field("config", &self.config)
            .finish()
    }
}

impl Llama2c {
    /// The storage (memory map) tensors view.
    pub fn storage(&self) -> &Arc<Storage> {
        &self.storage
    }

    /// Memory-maps and parses `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Llama2c, ModelError> {
        let path = path.as_ref();
        let storage = crate::formats::mmap::mmap_file(path)?;
        Llama2c::from_storage(storage, path)
    }

    /// Parses a checkpoint image held in memory (`path` only names it in errors).
    pub fn from_bytes(bytes: &[u8], path: impl AsRef<Path>) -> Result<Llama2c, ModelError> {
        Llama2c::from_storage(Arc::new(Storage::from_bytes(bytes)), path.as_ref())
    }

    /// Parses the checkpoint in `storage`.
    pub fn from_storage(storage: Arc<Storage>, path: &Path) -> Result<Llama2c, ModelError> {
        let buf = storage.bytes();
        let file_len = buf.len() as u64;
        if buf.len() < HEADER_BYTES {
            return Err(ModelError::Truncated {
                path: path.into(),
                what: "llama2.c header (7 x i32)".into(),
                needed: HEADER_BYTES as u64,
                file_len,
            });
        }
        let h: Vec<i32> = buf[..HEADER_BYTES]
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let field = |i: usize, name: &str| -> Result<usize, ModelError> {
            let v = if i == 5 {
                h[i].unsigned_abs() as i64
            } else {
                h[i] as i64
            };
            if v <= 0 {
                return Err(ModelError::corrupt(
                    path,
                    format!("llama2.c header field {name}"),
                    format!("expected a positive integer, found {}", h[i]),
                ));
            }
            Ok(v as usize)
        };
        let config = Config {
            dim: field(0, "dim")?,
            hidden_dim: field(1, "hidden_dim")?,
            n_layers: field(2, "n_layers")?,
            n_heads: field(3, "n_heads")?,
            n_kv_heads: field(4, "n_kv_heads")?,
            vocab_size: field(5, "vocab_size")?,
            seq_len: field(6, "seq_len")?,
            shared_classifier: h[5] > 0,
        };
        let c = &config;
        if !c.dim.is_multiple_of(c.n_heads)
            || !c.n_heads.is_multiple_of(c.n_kv_heads)
            || !c.head_size().is_multiple_of(2)
        {
            return Err(ModelError::corrupt(
                path,
                "llama2.c header",
                format!(
                    "expected dim divisible by n_heads, n_heads by n_kv_heads and an even head size; found dim {}, n_heads {}, n_kv_heads {}",
                    c.dim, c.n_heads, c.n_kv_heads
                ),
            ));
        }
        let (l, d, hd, v, kv) = (c.n_layers, c.dim, c.hidden_dim, c.vocab_size, c.kv_dim());
        let half = c.head_size() / 2;
        let shapes: [Vec<usize>; 14] = [
            vec![v, d],
            vec![l, d],
            vec![l, d, d],
            vec![l, kv, d],
            vec![l, kv, d],
            vec![l, d, d],
            vec![l, d],
            vec![l, hd, d],
            vec![l, d, hd],
            vec![l, hd, d],
            vec![d],
            vec![c.seq_len, half],
            vec![c.seq_len, half],
            vec![v, d],
        ];
        let mut tensors = Vec::with_capacity(14);
        let mut offset = HEADER_BYTES;
        for (name, shape) in TENSOR_NAMES.iter().zip(shapes) {
            if *name == "wcls" && c.shared_classifier {
                break;
            }
            let end = Tensor::byte_len(DType::F32, &shape)
                .ok()
                .and_then(|b| offset.checked_add(b).map(|e| (b, e)));
            let Some((bytes, end)) = end else {
                return Err(ModelError::bad_tensor(
                    path,
                    *name,
                    format!("f32 shape {shape:?} overflows"),
                ));
            };
            if end > buf.len() {
                return Err(ModelError::Truncated {
                    path: path.into(),
                    what: format!("tensor '{name}' (f32 {shape:?}) as the header implies"),
                    needed: end as u64,
                    file_len,
                });
            }
            tensors.push(TensorInfo {
                name,
                shape,
                offset,
                bytes,
            });
            offset = end;
        }
        Ok(Llama2c {
            path: path.into(),
            storage,
            config,
            tensors,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The header.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Tensor infos in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// Tensor `name` (see [`TENSOR_NAMES`]); `wcls` is absent when shared.
    pub fn try_tensor(&self, name: &str) -> Result<Option<Tensor>, ModelError> {
        let Some(info) = self.tensors.iter().find(|t| t.name == name) else {
            return Ok(None);
        };
        Tensor::new(
            self.storage.clone(),
            info.offset,
            DType::F32,
            info.shape.clone(),
        )
        .map(Some)
        .map_err(|e| ModelError::bad_tensor(&self.path, name, e.to_string()))
    }

    /// Tensor `name`.
    pub fn tensor(&self, name: &str) -> Result<Tensor, ModelError> {
        self.try_tensor(name)?
            .ok_or_else(|| ModelError::MissingTensor {
                path: self.path.clone(),
                tensor: name.into(),
            })
    }

    /// Layer `layer` of the stacked tensor `name`, with the layer dimension
    /// dropped (`wq` -> `[dim, dim]`, `rms_att_weight` -> `[dim]`).
    pub fn layer_tensor(&self, name: &str, layer: usize) -> Result<Tensor, ModelError> {
        let t = self.tensor(name)?;
        let shape = t.shape().to_vec();
        if shape.len() < 2 || layer >= shape[0] {
            return Err(ModelError::MissingTensor {
                path: self.path.clone(),
                tensor: format!("{name}[{layer}]"),
            });
        }
        let inner = shape[1..].to_vec();
        let per: usize = inner.iter().product();
        let err = |e: patchbay_primitives::ShapeError| {
            ModelError::bad_tensor(&self.path, format!("{name}[{layer}]"), e.to_string())
        };
        // Fold to [layers, per] so one row is one layer, then restore the shape.
        t.reshaped(vec![shape[0], per])
            .and_then(|m| m.rows(layer, 1))
            .and_then(|r| r.reshaped(inner))
            .map_err(err)
    }
}
