//! Portable integer dot products of a quantised weight row with
//! [`QuantizedActs`]: the scalar fallback of the SIMD kernels, computing the same
//! integer sums and applying the same per-block scales.

use super::acts::QuantizedActs;
use super::blocks::{f16_at, scales_mins_k4, QK, QK_K};
use crate::dtype::DType;

/// Integer sums of one 32-block: `sum(q_unsigned * y)`.
#[inline(always)]
fn dot_u4(qs: &[u8], y: &[i8]) -> i32 {
    let mut s = 0i32;
    for j in 0..16 {
        s += (qs[j] & 0xF) as i32 * y[j] as i32 + (qs[j] >> 4) as i32 * y[j + 16] as i32;
    }
    s
}

#[inline(always)]
fn dot_u5(qs: &[u8], qh: u32, y: &[i8]) -> i32 {
    let mut s = 0i32;
    for j in 0..16 {
        let h0 = ((qh >> j) << 4) & 0x10;
        let h1 = (qh >> (j + 12)) & 0x10;
        s += ((qs[j] & 0xF) as u32 | h0) as i32 * y[j] as i32
            + ((qs[j] >> 4) as u32 | h1) as i32 * y[j + 16] as i32;
    }
    s
}

/// The scalar integer dot product of `row` (of `dtype`) with `xq`.
pub fn dot_row_q8_scalar(dtype: DType, row: &[u8], xq: &QuantizedActs) -> f32 {
    let bb = dtype.block_bytes();
    match dtype {
        DType::Q4_0 | DType::Q4_1 | DType::Q5_0 | DType::Q5_1 | DType::Q8_0 => {
            let mut acc = 0.0f32;
            for (i, b) in row.chunks_exact(bb).enumerate() {
                let y = &xq.qs[QK * i..QK * i + QK];
                let dx = xq.d[i];
                let ds = xq.dd[i][1];
                let d = f16_at(b, 0);
                acc += match dtype {
                    DType::Q4_0 => d * (dx * dot_u4(&b[2..18], y) as f32) - 8.0 * d * ds,
                    DType::Q4_1 => d * (dx * dot_u4(&b[4..20], y) as f32) + f16_at(b, 2) * ds,
                    DType::Q5_0 => {
                        let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
                        d * (dx * dot_u5(&b[6..22], qh, y) as f32) - 16.0 * d * ds
                    }
                    DType::Q5_1 => {
                        let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
                        d * (dx * dot_u5(&b[8..24], qh, y) as f32) + f16_at(b, 2) * ds
                    }
                    _ => {
                        let s: i32 = (0..32).map(|j| (b[2 + j] as i8) as i32 * y[j] as i32).sum();
                        d * (dx * s as f32)
                    }
                };
            }
            acc
        }
        DType::Q4_K | DType::Q5_K => {
            let mut acc = 0.0f32;
            for (i, b) in row.chunks_exact(bb).enumerate() {
                let y = &xq.qs[QK_K * i..QK_K * i + QK_K];
                let bs = &xq.bsums[16 * i..16 * i + 16];
                let dx = xq.d[i];
                let d = f16_at(b, 0);
                let dmin = f16_at(b, 2);
                let (sc, mn) = scales_mins_k4(&b[4..16]);
                let (qh, qs) = if dtype == DType::Q5_K {
                    (Some(&b[16..48]), &b[48..176])
                } else {
                    (None, &b[16..144])
                };
                let mut sumi = 0i32;
                let mut summ = 0i32;
                for c in 0..4 {
                    let q = &qs[32 * c..32 * c + 32];
                    let (mut s1, mut s2) = (0i32, 0i32);
                    for l in 0..32 {
                        let (h1, h2) = match qh {
                            Some(h) => (
                                (((h[l] >> (2 * c)) & 1) << 4) as i32,
                                (((h[l] >> (2 * c + 1)) & 1) << 4) as i32,
                            ),
                            None => (0, 0),
                        };
                        s1 += ((q[l] & 0xF) as i32 | h1) * y[64 * c + l] as i32;
                        s2 += ((q[l] >> 4) as i32 | h2) * y[64 * c + 32 + l] as i32;
                    }
                    sumi += sc[2 * c] as i32 * s1 + sc[2 * c + 1] as i32 * s2;
                }
                for j in 0..8 {
                    summ += mn[j] as i32 * (bs[2 * j] as i32 + bs[2 * j + 1] as i32);
                }
                acc += d * dx * sumi as f32 - dmin * dx * summ as f32;
            }
            acc
        }
        DType::Q6_K => {
            let mut acc = 0.0f32;
            for (i, b) in row.chunks_exact(bb).enumerate() {
                let y = &xq.qs[QK_K * i..QK_K * i + QK_K];
                let bs = &xq.bsums[16 * i..16 * i + 16];
                let d = f16_at(b, 208);
                let mut sumi = 0i32;
                for n in 0..2 {
                    let ql = &b[64 * n..64 * n + 64];
                    let qh = &b[128 + 32 * n..128 + 32 * n + 32];
                    let sc = &b[192 + 8 * n..192 + 8 * n + 8];
                    let yy = &y[128 * n..128 * n + 128];
                    let mut g = [0i32; 8];
                    for l in 0..32 {
                        let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32;
                        let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32;
                        let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32;
                        let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32;
                        let is = l / 16;
                        g[is] += q1 * yy[l] as i32;
                        g[is + 2] += q2 * yy[l + 32] as i32;
                        g[is + 4] += q3 * yy[l + 64] as i32;
                        g[is + 6] += q4 * yy[l + 96] as i32;
                    }
                    for k in 0..8 {
                        sumi += (sc[k] as i8) as i32 * (g[k] - 32 * bs[8 * n + k] as i32);
                    }
                }
                acc += d * xq.d[i] * sumi as f32;
            }
            acc
        }
        _ => super::exact::dot_f32_scalar(dtype, row, &xq.xf),
    }
}
