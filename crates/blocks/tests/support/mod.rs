//! Helpers shared by the blocks' integration tests (each test uses some).
#![allow(dead_code)]

use std::ops::Range;
use std::sync::Arc;

use patchbay_blocks::Heads;
use patchbay_primitives::quant::quantize_row;
use patchbay_primitives::{Act, DType, Storage, Tensor};

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

/// `[q | k | v]` rows for `heads`, pseudo-random in [-2, 2).
pub fn qkv(rows: usize, heads: Heads, seed: u64) -> Act {
    let mut r = seed;
    let data = (0..rows * heads.qkv_width())
        .map(|_| {
            r = r
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((r >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect();
    Act::from_vec(rows, heads.qkv_width(), data).unwrap()
}

/// Row `qi`'s attention over the rows `keys` of `x` (`[q | k | v]` rows),
/// `softmax(q kᵀ / sqrt(hd)) v` for each head, in f64.
pub fn attention_reference(x: &Act, heads: Heads, qi: usize, keys: Range<usize>) -> Vec<f64> {
    let (h, kv, hd) = (heads.n_heads, heads.n_kv_heads, heads.head_dim);
    let (qw, kw) = (heads.q_width(), heads.kv_width());
    let mut out = vec![0.0; qw];
    for head in 0..h {
        let g = head / (h / kv);
        let q = &x.row(qi)[head * hd..][..hd];
        let scores: Vec<f64> = keys
            .clone()
            .map(|ki| {
                let k = &x.row(ki)[qw + g * hd..][..hd];
                q.iter()
                    .zip(k)
                    .map(|(a, b)| *a as f64 * *b as f64)
                    .sum::<f64>()
                    / (hd as f64).sqrt()
            })
            .collect();
        let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
        let total: f64 = e.iter().sum();
        for (j, ki) in keys.clone().enumerate() {
            let v = &x.row(ki)[qw + kw + g * hd..][..hd];
            for d in 0..hd {
                out[head * hd + d] += e[j] / total * v[d] as f64;
            }
        }
    }
    out
}
