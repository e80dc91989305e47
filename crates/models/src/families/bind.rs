//! Binding trained weights to blocks by canonical tensor name: the helpers
//! every family file (and a user's own architecture) builds its layers with.
//!
//! Names are GGUF's canonical names (`blk.3.ffn_gate.weight`); the
//! [`ModelSource`] maps them to the file's own. Every error names the file and
//! the tensor.

use patchbay_blocks::{BlockError, Embedding, Linear, RmsNorm};
use patchbay_primitives::quant::DotMode;
use patchbay_primitives::Tensor;

use crate::error::ModelError;
use crate::formats::source::ModelSource;

/// Builds blocks from a model file's tensors.
///
/// ```no_run
/// use patchbay_models::families::Weights;
/// use patchbay_models::formats::source::ModelSource;
/// use patchbay_primitives::quant::DotMode;
/// let source = ModelSource::open("models/SmolLM2-135M-Instruct.Q4_1.gguf").unwrap();
/// let w = Weights::new(&source, DotMode::Exact);
/// let up = w.linear("blk.3.ffn_up").unwrap();      // blk.3.ffn_up.weight (+ .bias if present)
/// let norm = w.rms_norm("blk.3.ffn_norm.weight", 1e-5, 0.0).unwrap();
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Weights<'a> {
    source: &'a ModelSource,
    mode: DotMode,
}

impl<'a> Weights<'a> {
    /// Binds tensors of `source`; quantised projections run in `mode`.
    pub fn new(source: &'a ModelSource, mode: DotMode) -> Weights<'a> {
        Weights { source, mode }
    }

    /// The source.
    pub fn source(&self) -> &'a ModelSource {
        self.source
    }

    /// A block error about `tensor`, naming the file.
    pub fn error(&self, tensor: &str, e: BlockError) -> ModelError {
        ModelError::Block {
            path: self.source.path().to_path_buf(),
            tensor: tensor.to_string(),
            source: e,
        }
    }

    /// Tensor `name` (canonical).
    pub fn tensor(&self, name: &str) -> Result<Tensor, ModelError> {
        self.source.tensor(name)
    }

    /// Tensor `name`, checked to have `shape`.
    pub fn tensor_shaped(&self, name: &str, shape: &[usize]) -> Result<Tensor, ModelError> {
        self.source.tensor_shaped(name, shape)
    }

    /// `{stem}.weight` as a projection, with `{stem}.bias` when the file has one.
    pub fn linear(&self, stem: &str) -> Result<Linear, ModelError> {
        let w = self.tensor(&format!("{stem}.weight"))?;
        let bias_name = format!("{stem}.bias");
        let b = match self.source.try_tensor(&bias_name)? {
            Some(b) => Some(self.f32_values(&bias_name, &b)?),
            None => None,
        };
        Linear::new(w, b)
            .map(|l| l.with_mode(self.mode))
            .map_err(|e| self.error(stem, e))
    }

    /// A projection over an explicit weight tensor (tied heads).
    pub fn linear_from(&self, name: &str, weight: Tensor) -> Result<Linear, ModelError> {
        Linear::new(weight, None)
            .map(|l| l.with_mode(self.mode))
            .map_err(|e| self.error(name, e))
    }

    /// An RMS norm over tensor `name`; `offset` is added to every stored weight
    /// (1.0 for HF Gemma checkpoints, which store `w` and scale by `1 + w`).
    pub fn rms_norm(&self, name: &str, eps: f32, offset: f32) -> Result<RmsNorm, ModelError> {
        let t = self.tensor(name)?;
        let t = if offset != 0.0 {
            let mut v = self.f32_values(name, &t)?;
            v.iter_mut().for_each(|x| *x += offset);
            Tensor::from_f32(&v, vec![v.len()]).map_err(|e| self.error(name, e.into()))?
        } else {
            t
        };
        RmsNorm::new(&t, eps).map_err(|e| self.error(name, e))
    }

    /// The token embedding table `name`.
    pub fn embedding(&self, name: &str) -> Result<Embedding, ModelError> {
        Embedding::new(self.tensor(name)?).map_err(|e| self.error(name, e))
    }

    /// A (small) tensor's values as f32, whatever its stored format.
    pub fn f32_values(&self, name: &str, t: &Tensor) -> Result<Vec<f32>, ModelError> {
        let mut v = vec![0.0; t.numel()];
        patchbay_primitives::quant::dequantize_row(t.dtype(), t.bytes(), &mut v)
            .map_err(|e| self.error(name, e.into()))?;
        Ok(v)
    }
}
