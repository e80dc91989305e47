//! Helpers shared by the blocks' integration tests.

use std::sync::Arc;

use patchbay_primitives::quant::quantize_row;
use patchbay_primitives::{DType, Storage, Tensor};

/// Deterministic values in [-1, 1) from a seed (xorshift).
pub fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// An `out x inp` weight of `dtype`: f32 values, quantised from random
/// values, or, for the K-quants (no quantiser here), random bytes with
/// modest f16 scales.
pub fn weight(dtype: DType, out: usize, inp: usize, seed: u64) -> Tensor {
    let v = values(out * inp, seed);
    if dtype == DType::F32 {
        return Tensor::from_f32(&v, vec![out, inp]).unwrap();
    }
    let mut b = vec![0u8; dtype.bytes_for(out * inp).unwrap()];
    let scales: &[usize] = match dtype {
        DType::Q4_K => &[0, 2],
        DType::Q6_K => &[208],
        _ => {
            quantize_row(dtype, &v, &mut b);
            &[]
        }
    };
    if !scales.is_empty() {
        let noise = values(b.len(), seed ^ 11);
        for (byte, r) in b.iter_mut().zip(noise) {
            *byte = ((r + 1.0) * 127.5) as u8;
        }
        for block in b.chunks_exact_mut(dtype.block_bytes()) {
            for &o in scales {
                // An f16 of magnitude 2^-7 to 2^-6, either sign, from the
                // random mantissa bits already there.
                let d = 0x2000 | (u16::from_le_bytes([block[o], block[o + 1]]) & 0x83FF);
                block[o..o + 2].copy_from_slice(&d.to_le_bytes());
            }
        }
    }
    Tensor::new(Arc::new(Storage::from_bytes(&b)), 0, dtype, vec![out, inp]).unwrap()
}
