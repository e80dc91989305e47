//! Errors raised while reading weight files and configs.
//!
//! Every variant names the file; those about a tensor or a metadata key name it
//! too, and checks say what was expected and what was found.

use std::path::PathBuf;

/// Reading a model file failed.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The operating system refused to open, stat or map the file.
    #[error("{path}: {source}", path = path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file ends before a structure its header announces.
    #[error("{path}: truncated: {what} needs bytes up to {needed}, but the file has {file_len}", path = path.display())]
    Truncated {
        /// The file.
        path: PathBuf,
        /// What was being read.
        what: String,
        /// Byte offset the structure ends at.
        needed: u64,
        /// Length of the file.
        file_len: u64,
    },
    /// The file does not start with the format's magic bytes.
    #[error("{path}: not a {format} file: expected magic {expected:?}, found {found:?}", path = path.display())]
    BadMagic {
        /// The file.
        path: PathBuf,
        /// The format looked for.
        format: &'static str,
        /// The expected magic.
        expected: String,
        /// What the file holds instead.
        found: String,
    },
    /// A format version this reader does not implement.
    #[error("{path}: unsupported {format} version {found} (supported: {supported})", path = path.display())]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The format.
        format: &'static str,
        /// The version in the file.
        found: u64,
        /// The versions this reader supports.
        supported: &'static str,
    },
    /// A header field holds an impossible value (counts, lengths, types, JSON).
    #[error("{path}: corrupt header: {what}: {detail}", path = path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Which field.
        what: String,
        /// Expected vs found.
        detail: String,
    },
    /// A tensor's element type is unknown or not supported.
    #[error("{path}: tensor '{tensor}': unsupported element type {found}", path = path.display())]
    UnsupportedType {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// The type as the file names it (GGML id or safetensors dtype).
        found: String,
    },
    /// A tensor's extent is invalid: out of the file, overlapping another,
    /// misaligned, or its byte count overflows.
    #[error("{path}: tensor '{tensor}': {detail}", path = path.display())]
    BadTensor {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// Expected vs found.
        detail: String,
    },
    /// A tensor the model needs is not in the file.
    #[error("{path}: tensor '{tensor}' not found", path = path.display())]
    MissingTensor {
        /// The file.
        path: PathBuf,
        /// The tensor (canonical or file name).
        tensor: String,
    },
    /// A tensor's shape disagrees with the hyper-parameters.
    #[error("{path}: tensor '{tensor}': expected shape {expected:?}, found {found:?}", path = path.display())]
    ShapeMismatch {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// Shape the hyper-parameters imply (row-major).
        expected: Vec<usize>,
        /// Shape in the file (row-major).
        found: Vec<usize>,
    },
    /// A metadata or config key is absent.
    #[error("{path}: key '{key}' not found", path = path.display())]
    MissingKey {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
    },
    /// A metadata or config key holds a value of another type or out of range.
    #[error("{path}: key '{key}': expected {expected}, found {found}", path = path.display())]
    WrongType {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// What the reader wanted.
        expected: &'static str,
        /// What the file holds.
        found: String,
    },
    /// The file is valid but describes something patchbay does not handle.
    #[error("{path}: unsupported: {detail}", path = path.display())]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// What is not supported.
        detail: String,
    },
    /// A block rejected a tensor while the model was being built.
    #[error("{path}: tensor '{tensor}': {source}", path = path.display())]
    Block {
        /// The file.
        path: PathBuf,
        /// The tensor or block.
        tensor: String,
        /// What the block said.
        #[source]
        source: patchbay_blocks::BlockError,
    },
    /// A forward pass failed (context full, token out of range, ...).
    #[error(transparent)]
    Layer(#[from] patchbay_combinators::LayerError),
    /// A forward pass produced NaN or infinite logits (bad weights, a
    /// mislabelled tensor type, an overflow): found by a check of the logits
    /// once per step.
    #[error("the forward pass produced {what} logits at position {position}{diagnosis}")]
    NonFinite {
        /// `NaN` or `infinite`.
        what: &'static str,
        /// The sequence position of the first bad row.
        position: usize,
        /// The tokens of the failing call when it started at position 0 (for
        /// a diagnostic replay), else empty.
        replay: Vec<u32>,
        /// What a diagnostic pass found (`": layer 3 is the first ..."`), or
        /// empty.
        diagnosis: String,
    },
    /// A sequence would not fit the KV cache.
    #[error("the sequence needs {needed} positions but the context holds {max_context}; use a shorter prompt or a larger --max-context (up to the model's limit)")]
    ContextFull {
        /// Positions needed.
        needed: usize,
        /// Positions available.
        max_context: usize,
    },
    /// The tokenizer could not be loaded or used.
    #[error(transparent)]
    Tokenizer(#[from] crate::tokenizer::TokenizerError),
    /// Generation needs at least one prompt token.
    #[error("the prompt is empty: there is no token to continue from")]
    EmptyPrompt,
    /// A request that cannot be met as given.
    #[error("{0}")]
    Usage(String),
    /// A command that needs a causal language model was given an encoder.
    #[error("{path}: a '{family}' model is an encoder, not a causal language model: it has no next-token logits to generate or score with")]
    NotCausal {
        /// The model file.
        path: PathBuf,
        /// Its family.
        family: &'static str,
    },
}

impl ModelError {
    /// An [`ModelError::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> ModelError {
        ModelError::Io {
            path: path.into(),
            source,
        }
    }

    /// A [`ModelError::Corrupt`] for `path`.
    pub fn corrupt(
        path: impl Into<PathBuf>,
        what: impl Into<String>,
        detail: impl Into<String>,
    ) -> ModelError {
        ModelError::Corrupt {
            path: path.into(),
            what: what.into(),
            detail: detail.into(),
        }
    }

    /// A [`ModelError::BadTensor`] for `path`.
    pub fn bad_tensor(
        path: impl Into<PathBuf>,
        tensor: impl Into<String>,
        detail: impl Into<String>,
    ) -> ModelError {
        ModelError::BadTensor {
            path: path.into(),
            tensor: tensor.into(),
            detail: detail.into(),
        }
    }
}
