//! HF safetensors checkpoints (single or sharded) and `config.json`, memory-mapped.
//!
//! The header is parsed and validated by the `safetensors` crate (offsets
//! contiguous, byte counts matching shapes); tensors are views into the map.
//! A tensor whose offset is not aligned for its element type (the format does
//! not promise alignment) is copied once into owned, aligned storage.

use crate::error::ModelError;
use patchbay_primitives::{DType, Storage, Tensor};
use safetensors::tensor::Metadata;
use safetensors::Dtype;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where a tensor lies in a safetensors file.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// Name as stored (`model.layers.0.self_attn.q_proj.weight`).
    pub name: String,
    /// Element format.
    pub dtype: DType,
    /// Row-major shape.
    pub shape: Vec<usize>,
    /// Absolute byte offset in the file.
    pub offset: usize,
    /// Byte length.
    pub bytes: usize,
}

/// One memory-mapped `.safetensors` file.
pub struct SafetensorsFile {
    path: PathBuf,
    storage: Arc<Storage>,
    tensors: Vec<TensorInfo>,
    index: HashMap<String, usize>,
    metadata: HashMap<String, String>,
}

impl std::fmt::Debug for SafetensorsFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafetensorsFile")
            .field("path", &self.path)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

fn map_dtype(d: Dtype) -> Option<DType> {
    Some(match d {
        Dtype::F32 => DType::F32,
        Dtype::F16 => DType::F16,
        Dtype::BF16 => DType::BF16,
        Dtype::I64 => DType::I64,
        Dtype::I32 => DType::I32,
        _ => return None,
    })
}

impl SafetensorsFile {
    /// The storage (memory map) tensors view.
    pub fn storage(&self) -> &Arc<Storage> {
        &self.storage
    }

    /// Memory-maps and parses `path` (header only).
    pub fn open(path: impl AsRef<Path>) -> Result<SafetensorsFile, ModelError> {
        let path = path.as_ref();
        let storage = crate::formats::mmap::mmap_file(path)?;
        SafetensorsFile::from_storage(storage, path)
    }

    /// Parses a safetensors image held in memory (`path` only names it in errors).
    pub fn from_bytes(bytes: &[u8], path: impl AsRef<Path>) -> Result<SafetensorsFile, ModelError> {
        SafetensorsFile::from_storage(Arc::new(Storage::from_bytes(bytes)), path.as_ref())
    }

    /// Parses the safetensors image in `storage`.
    pub fn from_storage(storage: Arc<Storage>, path: &Path) -> Result<SafetensorsFile, ModelError> {
        let buf = storage.bytes();
        let file_len = buf.len() as u64;
        let truncated = |what: &str, needed: u64| ModelError::Truncated {
            path: path.into(),
            what: what.into(),
            needed,
            file_len,
        };
        let Some(head) = buf.get(..8) else {
            return Err(truncated("header length", 8));
        };
        let n = u64::from_le_bytes(head.try_into().unwrap_or_default());
        let header_end = n.saturating_add(8);
        if header_end > file_len {
            return Err(truncated(&format!("JSON header of {n} bytes"), header_end));
        }
        let header_end = header_end as usize;
        let header = &buf[8..header_end];
        // Metadata's Deserialize also validates offsets (contiguous, sized by
        // shape x dtype) and overflow.
        let meta: Metadata = serde_json::from_slice(header)
            .map_err(|e| ModelError::corrupt(path, "safetensors JSON header", e.to_string()))?;
        let data_len = meta.data_len();
        let data_end = (header_end as u64).saturating_add(data_len as u64);
        if data_end > file_len {
            return Err(truncated(
                &format!("tensor data of {data_len} bytes after a {n}-byte header"),
                data_end,
            ));
        }
        let mut tensors = Vec::new();
        for name in meta.offset_keys() {
            let Some(info) = meta.info(&name) else {
                continue;
            };
            let dtype = map_dtype(info.dtype).ok_or_else(|| ModelError::UnsupportedType {
                path: path.into(),
                tensor: name.clone(),
                found: format!("safetensors {}", info.dtype),
            })?;
            let (s, e) = info.data_offsets;
            let bytes = Tensor::byte_len(dtype, &info.shape).map_err(|err| {
                ModelError::bad_tensor(path, &name, format!("shape {:?}: {err}", info.shape))
            })?;
            if bytes != e - s {
                return Err(ModelError::bad_tensor(
                    path,
                    &name,
                    format!(
                        "expected {bytes} bytes for {dtype} {:?}, found {}",
                        info.shape,
                        e - s
                    ),
                ));
            }
            tensors.push(TensorInfo {
                name,
                dtype,
                shape: info.shape.clone(),
                offset: header_end + s,
                bytes,
            });
        }
        let index = tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(SafetensorsFile {
            path: path.into(),
            storage,
            tensors,
            index,
            metadata: meta.metadata().clone().unwrap_or_default(),
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tensor infos in data order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The `__metadata__` string map.
    pub fn metadata(&self) -> &HashMap<String, String> {
        &self.metadata
    }

    /// The info of tensor `name`.
    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.index.get(name).map(|&i| &self.tensors[i])
    }

    /// Tensor `name`: a view into the map, or an aligned copy when the file
    /// places it at an offset misaligned for its element type.
    pub fn try_tensor(&self, name: &str) -> Result<Option<Tensor>, ModelError> {
        let Some(info) = self.tensor_info(name) else {
            return Ok(None);
        };
        let align = info.dtype.block_bytes();
        let base = self.storage.bytes().as_ptr() as usize;
        let t = if (base + info.offset).is_multiple_of(align) {
            Tensor::new(
                self.storage.clone(),
                info.offset,
                info.dtype,
                info.shape.clone(),
            )
        } else {
            let bytes = &self.storage.bytes()[info.offset..info.offset + info.bytes];
            Tensor::new(
                Arc::new(Storage::from_bytes(bytes)),
                0,
                info.dtype,
                info.shape.clone(),
            )
        };
        t.map(Some)
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
}

/// A checkpoint: one safetensors file, or the shards a
/// `model.safetensors.index.json` lists.
#[derive(Debug)]
pub struct Checkpoint {
    path: PathBuf,
    files: Vec<SafetensorsFile>,
    /// Tensor name to (file, index in that file's infos), in file then data order.
    order: Vec<(usize, usize)>,
    index: HashMap<String, usize>,
}

impl Checkpoint {
    /// Opens a `.safetensors` file, a `model.safetensors.index.json`, or a
    /// directory holding either.
    pub fn open(path: impl AsRef<Path>) -> Result<Checkpoint, ModelError> {
        let path = path.as_ref();
        let target = if path.is_dir() {
            let single = path.join("model.safetensors");
            let index = path.join("model.safetensors.index.json");
            if single.is_file() {
                single
            } else if index.is_file() {
                index
            } else {
                return Err(ModelError::Unsupported {
                    path: path.into(),
                    detail:
                        "directory holds neither model.safetensors nor model.safetensors.index.json"
                            .into(),
                });
            }
        } else {
            path.to_path_buf()
        };
        let is_index = target
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with(".index.json"));
        let files = if is_index {
            let text = std::fs::read_to_string(&target).map_err(|e| ModelError::io(&target, e))?;
            let json: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| ModelError::corrupt(&target, "index JSON", e.to_string()))?;
            let map = json
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| ModelError::MissingKey {
                    path: target.clone(),
                    key: "weight_map".into(),
                })?;
            let mut shards: Vec<String> = Vec::new();
            for (tensor, file) in map {
                let file = file.as_str().ok_or_else(|| ModelError::WrongType {
                    path: target.clone(),
                    key: format!("weight_map.{tensor}"),
                    expected: "a file name",
                    found: file.to_string(),
                })?;
                // A shard is a file beside the index: a path elsewhere
                // (`../x`, `/etc/x`, a sub-folder) is refused, not followed.
                let plain = !file.is_empty()
                    && file != "."
                    && file != ".."
                    && !file.contains(['/', '\\', '\0']);
                if !plain {
                    return Err(ModelError::corrupt(
                        &target,
                        "index JSON",
                        format!(
                            "weight_map.{tensor} names the shard {file:?}, which is not a plain file name beside the index"
                        ),
                    ));
                }
                if !shards.iter().any(|s| s == file) {
                    shards.push(file.to_owned());
                }
            }
            shards.sort();
            let dir = target.parent().unwrap_or(Path::new("."));
            let files = shards
                .iter()
                .map(|s| SafetensorsFile::open(dir.join(s)))
                .collect::<Result<Vec<_>, _>>()?;
            // Every tensor the index names must be in the shard it names.
            for (tensor, file) in map {
                let f = files
                    .iter()
                    .find(|f| f.path.file_name().and_then(|n| n.to_str()) == file.as_str());
                if f.is_none_or(|f| f.tensor_info(tensor).is_none()) {
                    return Err(ModelError::MissingTensor {
                        path: dir.join(file.as_str().unwrap_or("")),
                        tensor: tensor.clone(),
                    });
                }
            }
            files
        } else {
            vec![SafetensorsFile::open(&target)?]
        };
        Checkpoint::from_files(target, files)
    }

    /// A checkpoint over already opened files (`path` names it in errors).
    pub fn from_files(
        path: impl Into<PathBuf>,
        files: Vec<SafetensorsFile>,
    ) -> Result<Checkpoint, ModelError> {
        let path = path.into();
        let mut order = Vec::new();
        let mut index = HashMap::new();
        for (fi, f) in files.iter().enumerate() {
            for (ti, t) in f.tensors.iter().enumerate() {
                if index.insert(t.name.clone(), order.len()).is_some() {
                    return Err(ModelError::bad_tensor(
                        &f.path,
                        &t.name,
                        "appears in more than one shard",
                    ));
                }
                order.push((fi, ti));
            }
        }
        Ok(Checkpoint {
            path,
            files,
            order,
            index,
        })
    }

    /// The path opened (file or index).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The shard files.
    pub fn files(&self) -> &[SafetensorsFile] {
        &self.files
    }

    /// All tensor infos, shard by shard.
    pub fn tensors(&self) -> impl Iterator<Item = &TensorInfo> + '_ {
        self.order.iter().map(|&(f, t)| &self.files[f].tensors[t])
    }

    /// The info of tensor `name`.
    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        let &(f, t) = self.order.get(*self.index.get(name)?)?;
        Some(&self.files[f].tensors[t])
    }

    /// Tensor `name`, if present.
    pub fn try_tensor(&self, name: &str) -> Result<Option<Tensor>, ModelError> {
        match self.index.get(name) {
            Some(&i) => self.files[self.order[i].0].try_tensor(name),
            None => Ok(None),
        }
    }

    /// Tensor `name`.
    pub fn tensor(&self, name: &str) -> Result<Tensor, ModelError> {
        self.try_tensor(name)?
            .ok_or_else(|| ModelError::MissingTensor {
                path: self.path.clone(),
                tensor: name.into(),
            })
    }
}

/// An HF `config.json`.
#[derive(Debug, Clone)]
pub struct HfConfig {
    path: PathBuf,
    json: serde_json::Value,
}

impl HfConfig {
    /// Reads and parses `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<HfConfig, ModelError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        HfConfig::parse(&text, path)
    }

    /// Parses config text (`path` names it in errors).
    pub fn parse(text: &str, path: impl AsRef<Path>) -> Result<HfConfig, ModelError> {
        let path = path.as_ref();
        let json: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| ModelError::corrupt(path, "config JSON", e.to_string()))?;
        if !json.is_object() {
            return Err(ModelError::corrupt(
                path,
                "config JSON",
                "expected an object",
            ));
        }
        Ok(HfConfig {
            path: path.into(),
            json,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The whole JSON value.
    pub fn json(&self) -> &serde_json::Value {
        &self.json
    }

    /// A raw entry.
    pub fn get(&self, key: &str) -> Option<&serde_json::Value> {
        self.json.get(key).filter(|v| !v.is_null())
    }

    fn wrong(&self, key: &str, expected: &'static str) -> ModelError {
        ModelError::WrongType {
            path: self.path.clone(),
            key: key.into(),
            expected,
            found: self.get(key).map_or("null".into(), |v| v.to_string()),
        }
    }

    fn missing(&self, key: &str) -> ModelError {
        ModelError::MissingKey {
            path: self.path.clone(),
            key: key.into(),
        }
    }

    /// A non-negative integer, if present.
    pub fn opt_usize(&self, key: &str) -> Result<Option<usize>, ModelError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|x| usize::try_from(x).ok())
                .map(Some)
                .ok_or_else(|| self.wrong(key, "a non-negative integer")),
        }
    }

    /// A non-negative integer.
    pub fn get_usize(&self, key: &str) -> Result<usize, ModelError> {
        self.opt_usize(key)?.ok_or_else(|| self.missing(key))
    }

    /// A number, if present.
    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>, ModelError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.wrong(key, "a number")),
        }
    }

    /// A number.
    pub fn get_f64(&self, key: &str) -> Result<f64, ModelError> {
        self.opt_f64(key)?.ok_or_else(|| self.missing(key))
    }

    /// A string, if present.
    pub fn opt_str(&self, key: &str) -> Result<Option<&str>, ModelError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| self.wrong(key, "a string")),
        }
    }

    /// A string.
    pub fn get_str(&self, key: &str) -> Result<&str, ModelError> {
        self.opt_str(key)?.ok_or_else(|| self.missing(key))
    }

    /// A bool, if present.
    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>, ModelError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.wrong(key, "a bool")),
        }
    }

    /// `model_type` (`llama`, `qwen2`, `gemma3_text`, `bert`...).
    pub fn model_type(&self) -> Result<&str, ModelError> {
        self.get_str("model_type")
    }
}
