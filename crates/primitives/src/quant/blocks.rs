//! Byte layouts of the GGML block formats, scalar dequantisation (bit-exact with
//! ggml's `dequantize_row_*` and gguf-py's `dequantize_blocks`) and reference
//! quantisation.
//!
//! Blocks are read through byte slices: GGUF only aligns a tensor's start to 32
//! bytes and block sizes are odd (18, 22, 210 bytes), so no block is ever
//! borrowed as a typed reference. Every product below is written exactly as ggml
//! writes it (`q * d + m`, `(d * sc) * q - (dmin * m)`), with no fused
//! multiply-add, so the f32 results match ggml bit for bit.

/// Values in a K-quant super-block.
pub const QK_K: usize = 256;
/// Values in a 32-element block (Q4_0 ... Q8_0).
pub const QK: usize = 32;

/// f16 bits to f32 (exact for every input, NaN payloads kept).
///
/// Branch-light bit manipulation rather than `half`'s run-time F16C dispatch,
/// so block loops inline it and vectorise: the exponent is rebased by a
/// multiplication with 2^112 (exact, also for subnormals), then infinities and
/// NaNs get the full f32 exponent.
#[inline(always)]
pub fn f16_to_f32(bits: u16) -> f32 {
    let h = bits as u32;
    let mag = f32::from_bits((h & 0x7fff) << 13) * f32::from_bits(0x7780_0000); // 2^112
    let mag = if h & 0x7c00 == 0x7c00 {
        f32::from_bits(0x7f80_0000 | ((h & 0x3ff) << 13))
    } else {
        mag
    };
    f32::from_bits(mag.to_bits() | ((h & 0x8000) << 16))
}

/// Little-endian f16 at `b[at..at + 2]`, as f32.
#[inline(always)]
pub fn f16_at(b: &[u8], at: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[at], b[at + 1]]))
}

/// f32 to f16 bits, round to nearest even (as ggml's `GGML_FP32_TO_FP16`).
#[inline(always)]
pub fn f32_to_f16(v: f32) -> u16 {
    half::f16::from_f32(v).to_bits()
}

/// bf16 bits to f32 (exact).
#[inline(always)]
pub fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// The 6-bit scale and min of sub-block `j` (0..8) of a Q4_K/Q5_K super-block
/// (ggml's `get_scale_min_k4`).
#[inline(always)]
pub fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// All eight (scale, min) pairs of a Q4_K/Q5_K super-block.
#[inline(always)]
pub fn scales_mins_k4(q: &[u8]) -> ([u8; 8], [u8; 8]) {
    let mut sc = [0u8; 8];
    let mut mn = [0u8; 8];
    for j in 0..8 {
        let (s, m) = scale_min_k4(j, q);
        sc[j] = s;
        mn[j] = m;
    }
    (sc, mn)
}

/// Q4_0: `d: f16, qs: [u8; 16]`; value `j` is nibble `j % 16` (low nibbles first) minus 8.
#[inline(always)]
pub fn deq_q4_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qs = &b[2..18];
    let (lo, hi) = y[..32].split_at_mut(16);
    for j in 0..16 {
        lo[j] = ((qs[j] & 0xF) as i32 - 8) as f32 * d;
        hi[j] = ((qs[j] >> 4) as i32 - 8) as f32 * d;
    }
}

/// Q4_1: `d: f16, m: f16, qs: [u8; 16]`; value = `q * d + m`.
#[inline(always)]
pub fn deq_q4_1(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    let qs = &b[4..20];
    let (lo, hi) = y[..32].split_at_mut(16);
    for j in 0..16 {
        lo[j] = (qs[j] & 0xF) as f32 * d + m;
        hi[j] = (qs[j] >> 4) as f32 * d + m;
    }
}

/// Q5_0: `d: f16, qh: u32, qs: [u8; 16]`; bit `j` of `qh` is the fifth bit of value `j`; offset 16.
#[inline(always)]
pub fn deq_q5_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    let qs = &b[6..22];
    let (lo, hi) = y[..32].split_at_mut(16);
    for j in 0..16 {
        let h0 = ((qh >> j) << 4) & 0x10;
        let h1 = (qh >> (j + 12)) & 0x10;
        lo[j] = (((qs[j] & 0xF) as u32 | h0) as i32 - 16) as f32 * d;
        hi[j] = (((qs[j] >> 4) as u32 | h1) as i32 - 16) as f32 * d;
    }
}

/// Q5_1: `d: f16, m: f16, qh: u32, qs: [u8; 16]`; value = `q * d + m`.
#[inline(always)]
pub fn deq_q5_1(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    let qs = &b[8..24];
    let (lo, hi) = y[..32].split_at_mut(16);
    for j in 0..16 {
        let h0 = ((qh >> j) << 4) & 0x10;
        let h1 = (qh >> (j + 12)) & 0x10;
        lo[j] = ((qs[j] & 0xF) as u32 | h0) as f32 * d + m;
        hi[j] = ((qs[j] >> 4) as u32 | h1) as f32 * d + m;
    }
}

/// Q8_0: `d: f16, qs: [i8; 32]`.
#[inline(always)]
pub fn deq_q8_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for j in 0..32 {
        y[j] = (b[2 + j] as i8) as f32 * d;
    }
}

/// Q4_K: `d: f16, dmin: f16, scales: [u8; 12], qs: [u8; 128]`.
#[inline(always)]
pub fn deq_q4_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let dmin = f16_at(b, 2);
    let scales = &b[4..16];
    let qs = &b[16..144];
    for c in 0..4 {
        let (sc1, m1) = scale_min_k4(2 * c, scales);
        let (sc2, m2) = scale_min_k4(2 * c + 1, scales);
        let (d1, m1) = (d * sc1 as f32, dmin * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, dmin * m2 as f32);
        let q = &qs[32 * c..32 * c + 32];
        let out = &mut y[64 * c..64 * c + 64];
        let (lo, hi) = out.split_at_mut(32);
        for l in 0..32 {
            lo[l] = d1 * (q[l] & 0xF) as f32 - m1;
            hi[l] = d2 * (q[l] >> 4) as f32 - m2;
        }
    }
}

/// Q5_K: `d: f16, dmin: f16, scales: [u8; 12], qh: [u8; 32], qs: [u8; 128]`.
#[inline(always)]
pub fn deq_q5_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let dmin = f16_at(b, 2);
    let scales = &b[4..16];
    let qh = &b[16..48];
    let qs = &b[48..176];
    for c in 0..4 {
        let (sc1, m1) = scale_min_k4(2 * c, scales);
        let (sc2, m2) = scale_min_k4(2 * c + 1, scales);
        let (d1, m1) = (d * sc1 as f32, dmin * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, dmin * m2 as f32);
        let q = &qs[32 * c..32 * c + 32];
        let out = &mut y[64 * c..64 * c + 64];
        let (lo, hi) = out.split_at_mut(32);
        for l in 0..32 {
            let h1 = ((qh[l] >> (2 * c)) & 1) << 4;
            let h2 = ((qh[l] >> (2 * c + 1)) & 1) << 4;
            lo[l] = d1 * ((q[l] & 0xF) | h1) as f32 - m1;
            hi[l] = d2 * ((q[l] >> 4) | h2) as f32 - m2;
        }
    }
}

/// Q6_K: `ql: [u8; 128], qh: [u8; 64], scales: [i8; 16], d: f16`.
#[inline(always)]
pub fn deq_q6_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 208);
    for n in 0..2 {
        let ql = &b[64 * n..64 * n + 64];
        let qh = &b[128 + 32 * n..128 + 32 * n + 32];
        let sc = &b[192 + 8 * n..192 + 8 * n + 8];
        let out = &mut y[128 * n..128 * n + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            out[l] = d * (sc[is] as i8) as f32 * q1 as f32;
            out[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
            out[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
            out[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
        }
    }
}

/// ggml's `nearest_int`-style rounding used by the reference quantisers: round half away from zero.
#[inline(always)]
fn roundf(v: f32) -> f32 {
    v.round()
}

/// Quantises 32 values to Q8_0 exactly as ggml's `quantize_row_q8_0_ref`.
pub fn quant_q8_0(x: &[f32], b: &mut [u8]) {
    let amax = x[..32].iter().fold(0.0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    b[..2].copy_from_slice(&f32_to_f16(d).to_le_bytes());
    for j in 0..32 {
        b[2 + j] = (roundf(x[j] * id) as i8) as u8;
    }
}

/// Quantises 32 values to Q4_0 exactly as ggml's `quantize_row_q4_0_ref`.
pub fn quant_q4_0(x: &[f32], b: &mut [u8]) {
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in &x[..32] {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    let d = max / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    b[..2].copy_from_slice(&f32_to_f16(d).to_le_bytes());
    for j in 0..16 {
        let x0 = ((x[j] * id + 8.5) as i8).min(15) as u8;
        let x1 = ((x[16 + j] * id + 8.5) as i8).min(15) as u8;
        b[2 + j] = x0 | (x1 << 4);
    }
}

/// Quantises 32 values to Q4_1 exactly as ggml's `quantize_row_q4_1_ref`.
pub fn quant_q4_1(x: &[f32], b: &mut [u8]) {
    let (mut min, mut max) = (f32::MAX, -f32::MAX);
    for &v in &x[..32] {
        min = min.min(v);
        max = max.max(v);
    }
    let d = (max - min) / 15.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    b[..2].copy_from_slice(&f32_to_f16(d).to_le_bytes());
    b[2..4].copy_from_slice(&f32_to_f16(min).to_le_bytes());
    for j in 0..16 {
        let x0 = (((x[j] - min) * id + 0.5) as i8).min(15) as u8;
        let x1 = (((x[16 + j] - min) * id + 0.5) as i8).min(15) as u8;
        b[4 + j] = x0 | (x1 << 4);
    }
}

/// Quantises 32 values to Q5_0 exactly as ggml's `quantize_row_q5_0_ref`.
pub fn quant_q5_0(x: &[f32], b: &mut [u8]) {
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in &x[..32] {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    let d = max / -16.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    b[..2].copy_from_slice(&f32_to_f16(d).to_le_bytes());
    let mut qh = 0u32;
    for j in 0..16 {
        let x0 = ((x[j] * id + 16.5) as i8).min(31) as u8;
        let x1 = ((x[16 + j] * id + 16.5) as i8).min(31) as u8;
        b[6 + j] = (x0 & 0xF) | ((x1 & 0xF) << 4);
        qh |= (((x0 & 0x10) >> 4) as u32) << j;
        qh |= (((x1 & 0x10) >> 4) as u32) << (j + 16);
    }
    b[2..6].copy_from_slice(&qh.to_le_bytes());
}

/// Quantises 32 values to Q5_1 exactly as ggml's `quantize_row_q5_1_ref`.
pub fn quant_q5_1(x: &[f32], b: &mut [u8]) {
    let (mut min, mut max) = (f32::MAX, -f32::MAX);
    for &v in &x[..32] {
        min = min.min(v);
        max = max.max(v);
    }
    let d = (max - min) / 31.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    b[..2].copy_from_slice(&f32_to_f16(d).to_le_bytes());
    b[2..4].copy_from_slice(&f32_to_f16(min).to_le_bytes());
    let mut qh = 0u32;
    for j in 0..16 {
        let x0 = (((x[j] - min) * id + 0.5) as u8).min(31);
        let x1 = (((x[16 + j] - min) * id + 0.5) as u8).min(31);
        b[8 + j] = (x0 & 0xF) | ((x1 & 0xF) << 4);
        qh |= (((x0 & 0x10) >> 4) as u32) << j;
        qh |= (((x1 & 0x10) >> 4) as u32) << (j + 16);
    }
    b[4..8].copy_from_slice(&qh.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_conversion_is_exact_for_every_bit_pattern() {
        for h in 0..=u16::MAX {
            let want = half::f16::from_bits(h).to_f32();
            let got = f16_to_f32(h);
            if want.is_nan() {
                assert!(got.is_nan(), "{h:#06x}");
            } else {
                assert_eq!(got.to_bits(), want.to_bits(), "{h:#06x}");
            }
        }
    }
}
