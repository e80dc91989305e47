//! Float dot products of a quantised (or f16/bf16/f32) weight row with f32
//! activations: each stretch of up to 256 weights is dequantised (bit-exactly)
//! into a buffer on the stack that stays in L1, then multiplied with `x` in SIMD
//! registers.

use super::blocks::*;
use crate::dtype::DType;
use crate::matmul::{acc_zero, tile_acc, tile_sum, Out, NR};
use crate::tensor::MatRef;
use pulp::Simd as PSimd;

/// Values dequantised per step: a multiple of every SIMD width (16, 8, 1 f32
/// lanes), so that splitting a row into chunks does not change its operations,
/// and of every block length.
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

/// Float dot product at SIMD level `s`: one weight row through
/// [`fused_rows`], so it has the bits of every exact product at that level.
/// `row` must hold exactly `x.len()` values.
pub fn dot_f32(s: crate::simd::Simd, dtype: DType, row: &[u8], x: &[f32]) -> f32 {
    let mut y = 0.0f32;
    let xm = MatRef::new(x, 1, x.len()).expect("one row of x.len() values");
    // SAFETY: `y` is one f32, exclusively borrowed here; one row of `x` and
    // one weight row write only output (0, 0).
    let out = unsafe { Out::new(&mut y, 1, 0) };
    fused_rows(s, dtype, row, row.len(), xm, out);
    y
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

/// [`dequant_into`] at level `s`: a SIMD dequantiser where there is one for
/// `dtype` (the same values), else the portable code compiled with the
/// instruction set of `s` enabled.
pub fn dequant_simd(s: crate::simd::Simd, dtype: DType, src: &[u8], dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if s.level() >= crate::simd::Level::Avx2 {
        if let Some(f) = super::x86_deq::dequantizer(dtype) {
            return f(src, dst);
        }
    }
    s.vectorize(DequantOp { dtype, src, dst })
}

/// The exact products of quantised (or f16/bf16/f32) weight rows with f32
/// activations, fused with dequantisation: for every group of [`NR`] weight
/// rows, each stretch of [`CHUNK`] values is dequantised into buffers on the
/// stack that stay in L1 and fed to the batch-invariant tile kernel of
/// [`crate::matmul`] with the `MR` rows of `x`. Dequantised values are exact,
/// and `CHUNK` is a multiple of every SIMD width, so each output gets the bits
/// of the f32 kernel on the dequantised matrix (what `matmul_q` computes for
/// many rows).
#[inline(always)]
fn fused<S: PSimd, const MR: usize>(
    s: S,
    dtype: DType,
    w: &[u8],
    row_bytes: usize,
    x: [&[f32]; MR],
    out: Out,
) {
    let cols = x.first().map_or(0, |r| r.len());
    let nrows = w.len().checked_div(row_bytes).unwrap_or(0);
    let (bl, bb) = (dtype.block_len(), dtype.block_bytes());
    let mut buf = [[0.0f32; CHUNK]; NR];
    let mut j = 0;
    while j + NR <= nrows {
        let rows: [&[u8]; NR] =
            core::array::from_fn(|jj| &w[(j + jj) * row_bytes..(j + jj + 1) * row_bytes]);
        let mut acc = acc_zero::<S, MR, NR>(s);
        let mut done = 0;
        while done < cols {
            let len = (cols - done).min(CHUNK);
            let (b0, b1) = (done / bl * bb, (done + len) / bl * bb);
            for (r, b) in rows.iter().zip(buf.iter_mut()) {
                dequant_into(dtype, &r[b0..b1], &mut b[..len]);
            }
            let xs: [&[f32]; MR] = core::array::from_fn(|i| &x[i][done..done + len]);
            let ws: [&[f32]; NR] = core::array::from_fn(|jj| &buf[jj][..len]);
            tile_acc(s, &mut acc, xs, ws);
            done += len;
        }
        let r = tile_sum(s, &acc);
        for (i, ri) in r.iter().enumerate() {
            for (jj, v) in ri.iter().enumerate() {
                out.put(i, j + jj, *v);
            }
        }
        j += NR;
    }
    while j < nrows {
        let r = &w[j * row_bytes..(j + 1) * row_bytes];
        let v = fused_one(s, dtype, r, x);
        for (i, vi) in v.iter().enumerate() {
            out.put(i, j, *vi);
        }
        j += 1;
    }
}

/// One weight row of [`fused`] (the same operations per output).
#[inline(always)]
fn fused_one<S: PSimd, const MR: usize>(
    s: S,
    dtype: DType,
    row: &[u8],
    x: [&[f32]; MR],
) -> [f32; MR] {
    let cols = x.first().map_or(0, |r| r.len());
    let (bl, bb) = (dtype.block_len(), dtype.block_bytes());
    let mut buf = [0.0f32; CHUNK];
    let mut acc = acc_zero::<S, MR, 1>(s);
    let mut done = 0;
    while done < cols {
        let len = (cols - done).min(CHUNK);
        dequant_into(
            dtype,
            &row[done / bl * bb..(done + len) / bl * bb],
            &mut buf[..len],
        );
        let xs: [&[f32]; MR] = core::array::from_fn(|i| &x[i][done..done + len]);
        tile_acc(s, &mut acc, xs, [&buf[..len]]);
        done += len;
    }
    tile_sum(s, &acc).map(|r| r[0])
}

struct FusedOp<'a> {
    dtype: DType,
    w: &'a [u8],
    row_bytes: usize,
    x: MatRef<'a>,
    out: Out,
}

impl pulp::WithSimd for FusedOp<'_> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: PSimd>(self, s: S) {
        let FusedOp {
            dtype,
            w,
            row_bytes,
            x,
            out,
        } = self;
        let xr = |i| x.row(i);
        match x.rows() {
            1 => fused::<S, 1>(s, dtype, w, row_bytes, [xr(0)], out),
            2 => fused::<S, 2>(s, dtype, w, row_bytes, [xr(0), xr(1)], out),
            3 => fused::<S, 3>(s, dtype, w, row_bytes, [xr(0), xr(1), xr(2)], out),
            _ => fused::<S, 4>(s, dtype, w, row_bytes, [xr(0), xr(1), xr(2), xr(3)], out),
        }
    }
}

/// Rows of `x` that the fused kernels take at once at level `s`: 4 with the
/// 32 vector registers of AVX-512, else 2, the heights they were tuned at
/// (the f32 tile's 3 rows at AVX2 were not measured for them).
pub fn fused_max_rows(s: crate::simd::Simd) -> usize {
    struct Op;
    impl pulp::WithSimd for Op {
        type Output = usize;
        #[inline(always)]
        fn with_simd<S: PSimd>(self, _s: S) -> usize {
            if core::mem::size_of::<S::f32s>() >= 64 {
                4
            } else {
                2
            }
        }
    }
    s.vectorize(Op)
}

/// `out[i][j] = dot(x row i, dequantised row j of w)` for every row of `w`
/// (`row_bytes` bytes each) and the `1..=fused_max_rows(s)` rows of `x`.
///
/// # Panics
/// When `x` has more than 4 rows (internal invariant).
pub(crate) fn fused_rows(
    s: crate::simd::Simd,
    dtype: DType,
    w: &[u8],
    row_bytes: usize,
    x: MatRef<'_>,
    out: Out,
) {
    assert!(x.rows() <= 4, "fused_rows: {} rows of x", x.rows());
    if x.rows() == 0 {
        return;
    }
    if super::i16::applies(s, dtype) {
        let layout = super::i16::decode_layout(s, dtype);
        // At most 4 rows: rounded on this thread.
        let one = crate::threads::Threads::single();
        return super::i16::with_acts(s, &one, x, layout, |acts| {
            super::i16::rows(s, dtype, w, row_bytes, acts, out)
        });
    }
    // x86 dequantises the block formats in registers: the same operations
    // per output without the buffer.
    #[cfg(target_arch = "x86_64")]
    if super::x86_fused::fused_rows(s.level(), dtype, w, row_bytes, x, out) {
        return;
    }
    s.vectorize(FusedOp {
        dtype,
        w,
        row_bytes,
        x,
        out,
    })
}
