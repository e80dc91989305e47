//! Float dot products of a quantised (or f16/bf16/f32) weight row with f32
//! activations: each stretch of up to 256 weights is dequantised (bit-exactly)
//! into a buffer on the stack that stays in L1, then multiplied with `x` in SIMD
//! registers.

use super::blocks::*;
use crate::dtype::DType;
use pulp::Simd as PSimd;

/// Values dequantised per step.
const CHUNK: usize = 256;

/// Dequantises `n` blocks of `dtype` from `src` into `dst` (`dst.len()` values).
#[inline(always)]
pub fn dequant_into(dtype: DType, src: &[u8], dst: &mut [f32]) {
    macro_rules! blocks {
        ($f:ident, $bl:expr, $bb:expr) => {
            for (b, y) in src.chunks_exact($bb).zip(dst.chunks_exact_mut($bl)) {
                $f(b, y);
            }
        };
    }
    match dtype {
        DType::F32 => {
            for (b, y) in src.chunks_exact(4).zip(dst.iter_mut()) {
                *y = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        DType::F16 => {
            for (b, y) in src.chunks_exact(2).zip(dst.iter_mut()) {
                *y = f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
            }
        }
        DType::BF16 => {
            for (b, y) in src.chunks_exact(2).zip(dst.iter_mut()) {
                *y = bf16_to_f32(u16::from_le_bytes([b[0], b[1]]));
            }
        }
        DType::Q4_0 => blocks!(deq_q4_0, 32, 18),
        DType::Q4_1 => blocks!(deq_q4_1, 32, 20),
        DType::Q5_0 => blocks!(deq_q5_0, 32, 22),
        DType::Q5_1 => blocks!(deq_q5_1, 32, 24),
        DType::Q8_0 => blocks!(deq_q8_0, 32, 34),
        DType::Q4_K => blocks!(deq_q4_k, 256, 144),
        DType::Q5_K => blocks!(deq_q5_k, 256, 176),
        DType::Q6_K => blocks!(deq_q6_k, 256, 210),
        DType::I32 | DType::I64 => dst.fill(0.0),
    }
}

#[inline(always)]
fn dot_impl<S: PSimd>(s: S, dtype: DType, row: &[u8], x: &[f32]) -> f32 {
    let bl = dtype.block_len();
    let bb = dtype.block_bytes();
    let n = x.len();
    let mut buf = [0.0f32; CHUNK];
    let mut acc = [s.splat_f32s(0.0); 4];
    let mut tail = 0.0f32;
    let mut done = 0;
    while done < n {
        let len = (n - done).min(CHUNK);
        let src = &row[done / bl * bb..(done + len) / bl * bb];
        dequant_into(dtype, src, &mut buf[..len]);
        let xs = &x[done..done + len];
        let (wv, wt) = S::as_simd_f32s(&buf[..len]);
        let (xv, xt) = S::as_simd_f32s(xs);
        for (k, (w, v)) in wv.iter().zip(xv).enumerate() {
            acc[k % 4] = s.mul_add_e_f32s(*w, *v, acc[k % 4]);
        }
        for (w, v) in wt.iter().zip(xt) {
            tail += w * v;
        }
        done += len;
    }
    let a = s.add_f32s(s.add_f32s(acc[0], acc[1]), s.add_f32s(acc[2], acc[3]));
    s.reduce_sum_f32s(a) + tail
}

struct DotOp<'a> {
    dtype: DType,
    row: &'a [u8],
    x: &'a [f32],
}

impl pulp::WithSimd for DotOp<'_> {
    type Output = f32;
    #[inline(always)]
    fn with_simd<S: PSimd>(self, s: S) -> f32 {
        dot_impl(s, self.dtype, self.row, self.x)
    }
}

/// Float dot product at SIMD level `s`. `row` must hold exactly `x.len()` values.
pub fn dot_f32(s: crate::simd::Simd, dtype: DType, row: &[u8], x: &[f32]) -> f32 {
    s.vectorize(DotOp { dtype, row, x })
}

/// The portable scalar version of [`dot_f32`].
pub fn dot_f32_scalar(dtype: DType, row: &[u8], x: &[f32]) -> f32 {
    dot_impl(pulp::Scalar::new(), dtype, row, x)
}

struct DotRowsOp<'a> {
    dtype: DType,
    w: &'a [u8],
    row_bytes: usize,
    x: &'a [f32],
    y: &'a mut [f32],
}

impl pulp::WithSimd for DotRowsOp<'_> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: PSimd>(self, s: S) {
        for (r, y) in self.w.chunks_exact(self.row_bytes).zip(self.y.iter_mut()) {
            *y = dot_impl(s, self.dtype, r, self.x);
        }
    }
}

/// `y[i] = dot(row i of w, x)` for consecutive rows of `row_bytes` bytes.
pub fn dot_rows_f32(
    s: crate::simd::Simd,
    dtype: DType,
    w: &[u8],
    row_bytes: usize,
    x: &[f32],
    y: &mut [f32],
) {
    s.vectorize(DotRowsOp {
        dtype,
        w,
        row_bytes,
        x,
        y,
    })
}

struct DequantOp<'a> {
    dtype: DType,
    src: &'a [u8],
    dst: &'a mut [f32],
}

impl pulp::WithSimd for DequantOp<'_> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: PSimd>(self, _s: S) {
        dequant_into(self.dtype, self.src, self.dst)
    }
}

/// [`dequant_into`] compiled with the instruction set of `s` enabled.
pub fn dequant_simd(s: crate::simd::Simd, dtype: DType, src: &[u8], dst: &mut [f32]) {
    s.vectorize(DequantOp { dtype, src, dst })
}
