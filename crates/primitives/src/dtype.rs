//! Element and block formats of weight tensors.
//!
//! Quantised formats store a row as a sequence of fixed-size blocks, each
//! encoding `block_len()` values in `block_bytes()` bytes, exactly as GGML/GGUF
//! lays them out, so kernels read memory-mapped GGUF data in place.

/// The storage format of a tensor's elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum DType {
    /// IEEE f32.
    F32,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    BF16,
    /// 32 values: f16 scale + 32 x 4-bit (offset 8).
    Q4_0,
    /// 32 values: f16 scale, f16 min + 32 x 4-bit.
    Q4_1,
    /// 32 values: f16 scale + 32 x 5-bit (offset 16).
    Q5_0,
    /// 32 values: f16 scale, f16 min + 32 x 5-bit.
    Q5_1,
    /// 32 values: f16 scale + 32 x i8.
    Q8_0,
    /// 256 values: super-block of 8 x 32, 6-bit scales and mins, 4-bit quants.
    Q4_K,
    /// 256 values: as Q4_K with a fifth bit per quant.
    Q5_K,
    /// 256 values: 16 x 16 with i8 scales, 6-bit quants.
    Q6_K,
    /// Signed 64-bit integers (e.g. position ids); not a weight format.
    I64,
    /// Signed 32-bit integers.
    I32,
}

impl DType {
    /// Values per block (1 for plain element types).
    pub const fn block_len(self) -> usize {
        match self {
            DType::F32 | DType::F16 | DType::BF16 | DType::I64 | DType::I32 => 1,
            DType::Q4_0 | DType::Q4_1 | DType::Q5_0 | DType::Q5_1 | DType::Q8_0 => 32,
            DType::Q4_K | DType::Q5_K | DType::Q6_K => 256,
        }
    }

    /// Bytes per block (per element for plain types).
    pub const fn block_bytes(self) -> usize {
        match self {
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::I64 => 8,
            DType::Q4_0 => 18,
            DType::Q4_1 => 20,
            DType::Q5_0 => 22,
            DType::Q5_1 => 24,
            DType::Q8_0 => 34,
            DType::Q4_K => 144,
            DType::Q5_K => 176,
            DType::Q6_K => 210,
        }
    }

    /// True for the GGML block-quantised formats.
    pub const fn is_quantized(self) -> bool {
        self.block_len() > 1
    }

    /// Bytes taken by `n` consecutive values, or `None` when `n` is not a whole
    /// number of blocks or the count overflows.
    pub fn bytes_for(self, n: usize) -> Option<usize> {
        if !n.is_multiple_of(self.block_len()) {
            return None;
        }
        (n / self.block_len()).checked_mul(self.block_bytes())
    }

    /// The GGML type id used in GGUF tensor infos.
    pub const fn ggml_id(self) -> u32 {
        match self {
            DType::F32 => 0,
            DType::F16 => 1,
            DType::Q4_0 => 2,
            DType::Q4_1 => 3,
            DType::Q5_0 => 6,
            DType::Q5_1 => 7,
            DType::Q8_0 => 8,
            DType::Q4_K => 12,
            DType::Q5_K => 13,
            DType::Q6_K => 14,
            DType::I32 => 26,
            DType::I64 => 27,
            DType::BF16 => 30,
        }
    }

    /// The format with GGML type id `id`, if patchbay supports it.
    pub const fn from_ggml_id(id: u32) -> Option<DType> {
        Some(match id {
            0 => DType::F32,
            1 => DType::F16,
            2 => DType::Q4_0,
            3 => DType::Q4_1,
            6 => DType::Q5_0,
            7 => DType::Q5_1,
            8 => DType::Q8_0,
            12 => DType::Q4_K,
            13 => DType::Q5_K,
            14 => DType::Q6_K,
            26 => DType::I32,
            27 => DType::I64,
            30 => DType::BF16,
            _ => return None,
        })
    }

    /// Lower-case name as llama.cpp prints it (`q4_k`, `f32`).
    pub const fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::Q4_0 => "q4_0",
            DType::Q4_1 => "q4_1",
            DType::Q5_0 => "q5_0",
            DType::Q5_1 => "q5_1",
            DType::Q8_0 => "q8_0",
            DType::Q4_K => "q4_k",
            DType::Q5_K => "q5_k",
            DType::Q6_K => "q6_k",
            DType::I64 => "i64",
            DType::I32 => "i32",
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ggml_ids_round_trip() {
        for id in 0..64 {
            if let Some(d) = DType::from_ggml_id(id) {
                assert_eq!(d.ggml_id(), id);
            }
        }
        assert_eq!(DType::from_ggml_id(4), None);
    }

    #[test]
    fn bytes_for_checks_blocks() {
        assert_eq!(DType::Q4_K.bytes_for(512), Some(288));
        assert_eq!(DType::Q4_K.bytes_for(100), None);
        assert_eq!(DType::F32.bytes_for(3), Some(12));
        assert_eq!(DType::F32.bytes_for(usize::MAX), None);
    }
}
