//! Binding trained weights to blocks by canonical tensor name: the helpers
//! every family file (and a user's own architecture) builds its layers with.
//!
//! Names are GGUF's canonical names (`blk.3.ffn_gate.weight`); the
//! [`ModelSource`] maps them to the file's own. Every error names the file and
//! the tensor.

use patchbay_blocks::{BlockError, Embedding, Linear, RmsNorm};
use std::sync::Arc;

use patchbay_primitives::{Storage, Tensor};

use crate::error::ModelError;
use crate::formats::source::ModelSource;

/// Builds blocks from a model file's tensors.
///
/// ```no_run
/// use patchbay_models::families::Weights;
/// use patchbay_models::formats::source::ModelSource;
/// let source = ModelSource::open("models/SmolLM2-135M-Instruct.Q4_1.gguf").unwrap();
/// let w = Weights::new(&source);
/// let up = w.linear("blk.3.ffn_up").unwrap();      // blk.3.ffn_up.weight (+ .bias if present)
/// let norm = w.rms_norm("blk.3.ffn_norm.weight", 1e-5, 0.0).unwrap();
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Weights<'a> {
    source: &'a ModelSource,
}

impl<'a> Weights<'a> {
    /// Binds tensors of `source`.
    pub fn new(source: &'a ModelSource) -> Weights<'a> {
        Weights { source }
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
        Linear::new(w, b).map_err(|e| self.error(stem, e))
    }

    /// One projection whose output is those of `{stem}.weight` (and
    /// `{stem}.bias`) for each of `stems` side by side, e.g. `[q | k | v]`:
    /// one product reads its input once instead of once per projection, and
    /// nothing has to be concatenated after. The rows are copied into one
    /// owned tensor of the same format at load (whole rows, so any block
    /// format joins as it is). The weights must share their format and
    /// input width, and either all have a bias or none.
    pub fn fused_linear(&self, name: &str, stems: &[&str]) -> Result<Linear, ModelError> {
        let mut weights = Vec::with_capacity(stems.len());
        for stem in stems {
            weights.push((stem, self.tensor(&format!("{stem}.weight"))?));
        }
        let Some((first, w0)) = weights.first() else {
            return Err(ModelError::Unsupported {
                path: self.source.path().to_path_buf(),
                detail: format!("{name}: a fused projection of no weights"),
            });
        };
        let (dtype, cols) = (w0.dtype(), w0.shape().get(1).copied().unwrap_or(0));
        let mut rows = 0;
        let mut bytes = Vec::new();
        for (stem, w) in &weights {
            if w.shape().len() != 2 || w.shape()[1] != cols {
                return Err(ModelError::ShapeMismatch {
                    path: self.source.path().to_path_buf(),
                    tensor: format!("{stem}.weight"),
                    expected: vec![w.shape().first().copied().unwrap_or(0), cols],
                    found: w.shape().to_vec(),
                });
            }
            if w.dtype() != dtype {
                return Err(ModelError::Unsupported {
                    path: self.source.path().to_path_buf(),
                    detail: format!(
                        "{stem}.weight is {:?} but {first}.weight is {dtype:?}: the projections of {name} must share a format",
                        w.dtype()
                    ),
                });
            }
            rows += w.shape()[0];
            bytes.extend_from_slice(w.bytes());
        }
        let mut biases = Vec::new();
        let mut with_bias = 0;
        for (stem, w) in &weights {
            let bias_name = format!("{stem}.bias");
            match self.source.try_tensor(&bias_name)? {
                Some(b) => {
                    with_bias += 1;
                    let values = self.f32_values(&bias_name, &b)?;
                    if values.len() != w.shape()[0] {
                        return Err(ModelError::ShapeMismatch {
                            path: self.source.path().to_path_buf(),
                            tensor: bias_name,
                            expected: vec![w.shape()[0]],
                            found: b.shape().to_vec(),
                        });
                    }
                    biases.extend(values);
                }
                None => biases.extend(std::iter::repeat_n(0.0, w.shape()[0])),
            }
        }
        if with_bias != 0 && with_bias != weights.len() {
            return Err(ModelError::Unsupported {
                path: self.source.path().to_path_buf(),
                detail: format!(
                    "{name}: some of {} have a bias and some do not",
                    stems.join(", ")
                ),
            });
        }
        let fused = Tensor::new(
            Arc::new(Storage::from_bytes(&bytes)),
            0,
            dtype,
            vec![rows, cols],
        )
        .map_err(|e| self.error(name, e.into()))?;
        Linear::new(fused, (with_bias != 0).then_some(biases)).map_err(|e| self.error(name, e))
    }

    /// A projection over an explicit weight tensor (tied heads).
    pub fn linear_from(&self, name: &str, weight: Tensor) -> Result<Linear, ModelError> {
        Linear::new(weight, None).map_err(|e| self.error(name, e))
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
