//! Shared byte storage (a memory map or an owned buffer) and [`Tensor`], a typed
//! window into it that layers keep as their weights.
//!
//! Weights are views, never copies: a [`Tensor`] is an `Arc` on the whole file's
//! storage plus an offset, a length, a [`DType`] and a shape. Cloning one is cheap.

use crate::dtype::DType;
use crate::error::ShapeError;
use std::sync::Arc;

/// Bytes that tensors borrow from.
pub enum Storage {
    /// A read-only memory map of a weight file.
    Mmap(memmap2::Mmap),
    /// Bytes owned in memory, 8-byte aligned (kept as `u64` words).
    Owned {
        /// The words holding the bytes.
        words: Vec<u64>,
        /// Number of valid bytes.
        len: usize,
    },
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Storage::Mmap(m) => write!(f, "Storage::Mmap({} bytes)", m.len()),
            Storage::Owned { len, .. } => write!(f, "Storage::Owned({len} bytes)"),
        }
    }
}

impl Storage {
    /// Copies `bytes` into an owned, 8-byte-aligned buffer.
    pub fn from_bytes(bytes: &[u8]) -> Storage {
        let mut words = vec![0u64; bytes.len().div_ceil(8)];
        bytemuck::cast_slice_mut::<u64, u8>(&mut words)[..bytes.len()].copy_from_slice(bytes);
        Storage::Owned {
            words,
            len: bytes.len(),
        }
    }

    /// Owned storage holding `values` as little-endian f32 bytes.
    pub fn from_f32(values: &[f32]) -> Storage {
        Storage::from_bytes(bytemuck::cast_slice(values))
    }

    /// All the bytes.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mmap(m) => m,
            Storage::Owned { words, len } => &bytemuck::cast_slice::<u64, u8>(words)[..*len],
        }
    }

    /// Maps every page of a memory-mapped file now, reading it from disk
    /// if it is not cached (Linux's `MADV_POPULATE_READ`): a first forward
    /// pass then takes no page fault per 64 KiB of weights, which made a
    /// 5-token prompt of a 98 MB model a fifth slower than the next one.
    /// Does nothing for owned bytes, nor where the kernel lacks the advice
    /// (before Linux 5.14): the pages are then mapped by faults, as before.
    pub fn prefault(&self) {
        #[cfg(target_os = "linux")]
        if let Storage::Mmap(m) = self {
            // Failure only leaves the pages to faults: nothing to report.
            let _ = m.advise(memmap2::Advice::PopulateRead);
        }
    }
}

/// A typed, shaped window into a [`Storage`]; shape is row-major (outermost first).
#[derive(Clone)]
pub struct Tensor {
    storage: Arc<Storage>,
    offset: usize,
    len: usize,
    dtype: DType,
    shape: Vec<usize>,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Tensor({} {:?}, {} bytes)",
            self.dtype, self.shape, self.len
        )
    }
}

impl Tensor {
    /// A tensor of `dtype` and `shape` at `offset` in `storage`; checks that the
    /// byte count matches the shape and lies inside the storage.
    pub fn new(
        storage: Arc<Storage>,
        offset: usize,
        dtype: DType,
        shape: Vec<usize>,
    ) -> Result<Tensor, ShapeError> {
        let len = Self::byte_len(dtype, &shape)?;
        let end = offset
            .checked_add(len)
            .ok_or(ShapeError::Overflow { what: "Tensor" })?;
        if end > storage.bytes().len() {
            return Err(ShapeError::Len {
                what: "Tensor bytes in storage",
                expected: end,
                found: storage.bytes().len(),
            });
        }
        Ok(Tensor {
            storage,
            offset,
            len,
            dtype,
            shape,
        })
    }

    /// An owned f32 tensor (tests, converted weights).
    pub fn from_f32(values: &[f32], shape: Vec<usize>) -> Result<Tensor, ShapeError> {
        Tensor::new(Arc::new(Storage::from_f32(values)), 0, DType::F32, shape)
    }

    /// Bytes a tensor of `dtype` and `shape` takes: rows of the innermost
    /// dimension must be whole blocks.
    pub fn byte_len(dtype: DType, shape: &[usize]) -> Result<usize, ShapeError> {
        let inner = shape.last().copied().unwrap_or(1);
        let outer = shape[..shape.len().saturating_sub(1)]
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or(ShapeError::Overflow {
                what: "Tensor shape",
            })?;
        if inner % dtype.block_len() != 0 {
            return Err(ShapeError::Mismatch {
                what: "Tensor row length vs block length",
                left: inner,
                right: dtype.block_len(),
            });
        }
        dtype
            .bytes_for(inner)
            .and_then(|row| row.checked_mul(outer))
            .ok_or(ShapeError::Overflow {
                what: "Tensor shape",
            })
    }

    /// The element format.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Row-major shape, outermost first.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The raw bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.storage.bytes()[self.offset..self.offset + self.len]
    }

    /// The elements as f32, when the dtype is F32 and the bytes are 4-byte aligned.
    pub fn as_f32(&self) -> Option<&[f32]> {
        if self.dtype != DType::F32 {
            return None;
        }
        bytemuck::try_cast_slice(self.bytes()).ok()
    }

    /// Rows x columns when viewed as a matrix (leading dims folded into rows).
    pub fn matrix_dims(&self) -> (usize, usize) {
        let cols = self.shape.last().copied().unwrap_or(1);
        let rows = self.numel().checked_div(cols).unwrap_or(0);
        (rows, cols)
    }

    /// The same bytes with another shape of equal byte length.
    pub fn reshaped(&self, shape: Vec<usize>) -> Result<Tensor, ShapeError> {
        let len = Self::byte_len(self.dtype, &shape)?;
        if len != self.len {
            return Err(ShapeError::Len {
                what: "Tensor reshape",
                expected: self.len,
                found: len,
            });
        }
        Ok(Tensor {
            shape,
            ..self.clone()
        })
    }

    /// Rows `start..start + n` of the matrix view, sharing storage.
    pub fn rows(&self, start: usize, n: usize) -> Result<Tensor, ShapeError> {
        let (rows, cols) = self.matrix_dims();
        if start.checked_add(n).is_none_or(|e| e > rows) {
            return Err(ShapeError::Len {
                what: "Tensor rows",
                expected: start.saturating_add(n),
                found: rows,
            });
        }
        let row_bytes = self.len / rows.max(1);
        Ok(Tensor {
            storage: self.storage.clone(),
            offset: self.offset + start * row_bytes,
            len: n * row_bytes,
            dtype: self.dtype,
            shape: vec![n, cols],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensor_checks_bounds_and_blocks() {
        let s = Arc::new(Storage::from_bytes(&[0u8; 64]));
        assert!(Tensor::new(s.clone(), 0, DType::F32, vec![4, 4]).is_ok());
        assert!(Tensor::new(s.clone(), 4, DType::F32, vec![4, 4]).is_err());
        assert!(Tensor::new(s.clone(), 0, DType::Q8_0, vec![1, 33]).is_err());
        assert!(Tensor::new(s.clone(), 0, DType::F32, vec![usize::MAX, 4]).is_err());
        assert!(Tensor::new(s.clone(), usize::MAX, DType::F32, vec![1]).is_err());
        let t = Tensor::from_f32(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], vec![3, 2]).unwrap();
        assert_eq!(
            t.rows(1, 2).unwrap().as_f32().unwrap(),
            &[3.0, 4.0, 5.0, 6.0]
        );
        assert!(t.rows(2, 2).is_err());
        assert_eq!(t.matrix_dims(), (3, 2));
    }

    #[test]
    fn prefault_keeps_the_bytes() {
        let bytes: Vec<u8> = (0..70_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let path = std::env::temp_dir().join(format!("patchbay-prefault-{}", std::process::id()));
        std::fs::write(&path, &bytes).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        // SAFETY: the file is this test's own and nothing writes it while mapped.
        let map = unsafe { memmap2::Mmap::map(&file) }.unwrap();
        let mapped = Storage::Mmap(map);
        mapped.prefault();
        assert_eq!(mapped.bytes(), &bytes[..]);
        let owned = Storage::from_bytes(&bytes);
        owned.prefault();
        assert_eq!(owned.bytes(), &bytes[..]);
        drop(mapped);
        std::fs::remove_file(&path).unwrap();
    }
}
