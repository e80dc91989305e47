//! GGML block formats (Q4_0 ... Q6_K): dequantisation, dot products and the
//! matrix-vector / matrix products that decoding and prefill run on them.
//!
//! Weights stay in GGML's byte layout (read in place from a memory-mapped GGUF
//! file) and are only ever read through byte slices, since GGUF aligns a tensor
//! start to 32 bytes at most and blocks are 18, 22, 210 ... bytes long.
//!
//! One kind of dot product, [`dot_row`]: weights dequantised bit-exactly in
//! registers (an L1-resident stretch of 256 at a time) times f32 activations;
//! for Q8_0, Q5_0, Q4_1, Q4_K and Q6_K at the AVX-512 level with VNNI and at
//! the AVX2 level, activations rounded to int16 per block of 32 and integer
//! sums per block or sub-block ([`exact_rounds_activations`]), with the same
//! bits at both levels. (An int8 mode in llama.cpp's manner, activations
//! quantised to int8 per token, was removed: it decoded no faster than this
//! and further from the float model.)
//!
//! [`matvec_q`] splits rows over threads, each output element reduced entirely
//! by one thread with operations that do not depend on the split, so results
//! do not depend on the thread count.

mod blocks;
mod exact;
mod i16;
#[cfg(target_arch = "x86_64")]
mod x86;
#[cfg(target_arch = "x86_64")]
mod x86_deq;
#[cfg(target_arch = "x86_64")]
mod x86_fused;
#[cfg(target_arch = "x86_64")]
mod x86_i16;
#[cfg(target_arch = "x86_64")]
mod x86_i16_avx2;
#[cfg(target_arch = "x86_64")]
mod x86_i16_avx2_k;
#[cfg(target_arch = "x86_64")]
mod x86_i16_k;

pub use blocks::{QK, QK_K};

use crate::dtype::DType;
use crate::error::ShapeError;
use crate::matmul::Out;
use crate::simd::Simd;
use crate::tensor::MatRef;
use crate::threads::Threads;

/// Whether the products of `dtype` at level `s` round the
/// activations to int16 per block of 32 (Q8_0, Q5_0, Q4_1, Q4_K and Q6_K at the AVX-512 level
/// with VNNI and at the AVX2 level: integer block sums, within
/// 1.5e-5 of each block's largest activation) rather than multiplying f32 activations with the dequantised
/// weights. Either way every output has one operation order, the same in
/// decode and prefill, for any batch and thread count.
pub fn exact_rounds_activations(s: Simd, dtype: DType) -> bool {
    i16::applies(s, dtype)
}

/// The most that rounding activations to int16 (where
/// [`exact_rounds_activations`]) can move an exact product of activations `x`
/// with the dequantised weights `w` (equal lengths): half a rounding step,
/// `amax / 32767` of each 32-value block of `x`, times `|w|`, summed (with a
/// 0.1% margin); zero where activations stay f32. For tests and error
/// budgets: add it to the f32 arithmetic's tolerance.
pub fn exact_rounding_bound(s: Simd, dtype: DType, x: &[f32], w: &[f32]) -> f64 {
    if !exact_rounds_activations(s, dtype) {
        return 0.0;
    }
    let sum: f64 = x
        .chunks(i16::BLOCK)
        .zip(w.chunks(i16::BLOCK))
        .map(|(xb, wb)| {
            let amax = xb.iter().fold(0.0f32, |a, v| a.max(v.abs()));
            // A block too small for its multiplier rounds to zero: all of it.
            let half_step = if (32767.0 / amax).is_finite() {
                0.5 * f64::from(amax) / 32767.0
            } else {
                f64::from(amax)
            };
            wb.iter()
                .map(|v| f64::from(v.abs()) * half_step)
                .sum::<f64>()
        })
        .sum();
    sum * 1.001
}

/// Granule of the row split of [`matvec_q`] (tasks hold a multiple of it). The
/// split may depend on the thread count; results do not, since every row is
/// computed by the same operations whatever rows it is grouped with.
pub const MATVEC_CHUNK_ROWS: usize = 16;

/// Weight rows dequantised per panel by [`matmul_q`].
pub const MATMUL_PANEL_ROWS: usize = 64;

/// Weight rows per task of [`matmul_q`]'s int16 prefill products: one panel
/// of its kernels at AVX-512, two at AVX2. At 64 rows, SmolLM2's matrices of
/// 576 rows were 9 tasks, and one of 2 threads waited out the last; at 32,
/// its pp128 at 2 threads ran 5% faster (AMD EPYC, 3 alternating rounds);
/// Qwen2.5's and Gemma 3's (896 and 640 rows, even splits of 64) the same.
const I16_GEMM_TASK_ROWS: usize = 32;

fn check_row(dtype: DType, bytes: usize, n: usize, what: &'static str) -> Result<(), ShapeError> {
    let need = dtype.bytes_for(n).ok_or(ShapeError::Mismatch {
        what,
        left: n,
        right: dtype.block_len(),
    })?;
    if bytes != need {
        return Err(ShapeError::Len {
            what,
            expected: need,
            found: bytes,
        });
    }
    Ok(())
}

/// Checks a product's `rows x cols` weights `w` of `dtype` (a weight
/// format, whole blocks per row, exactly the matrix's bytes) and gives the
/// bytes per row; `names` (from `weight_checks!`) name the errors.
fn weight_row_bytes(
    dtype: DType,
    w: &[u8],
    rows: usize,
    cols: usize,
    names: WeightChecks,
) -> Result<usize, ShapeError> {
    check_supported(dtype, names.dtype)?;
    let row_bytes = dtype.bytes_for(cols).ok_or(ShapeError::Mismatch {
        what: names.cols,
        left: cols,
        right: dtype.block_len(),
    })?;
    let total = rows.checked_mul(row_bytes).ok_or(ShapeError::Overflow {
        what: names.product,
    })?;
    if w.len() != total {
        return Err(ShapeError::Len {
            what: names.bytes,
            expected: total,
            found: w.len(),
        });
    }
    Ok(row_bytes)
}

/// What [`weight_row_bytes`]'s errors name.
struct WeightChecks {
    dtype: &'static str,
    cols: &'static str,
    product: &'static str,
    bytes: &'static str,
}

/// The [`WeightChecks`] of product `f`: "`f` dtype", "`f` cols vs block
/// length", "`f`" and "`f` weights (bytes)".
macro_rules! weight_checks {
    ($f:literal) => {
        WeightChecks {
            dtype: concat!($f, " dtype"),
            cols: concat!($f, " cols vs block length"),
            product: $f,
            bytes: concat!($f, " weights (bytes)"),
        }
    };
}

fn check_supported(dtype: DType, what: &'static str) -> Result<(), ShapeError> {
    if matches!(dtype, DType::I32 | DType::I64) {
        // Integer tensors are not weights; no dot product is defined on them.
        return Err(ShapeError::Mismatch {
            what,
            left: dtype.ggml_id() as usize,
            right: 0,
        });
    }
    Ok(())
}

/// Dequantises a row (or any whole number of blocks) of `dtype` from `src` into
/// `dst`, bit-exactly as ggml does. Works for every weight format including
/// F32, F16 and BF16. `dst.len()` values are produced; `src` must hold exactly
/// their bytes.
pub fn dequantize_row(dtype: DType, src: &[u8], dst: &mut [f32]) -> Result<(), ShapeError> {
    dequantize_row_at(Simd::detect(), dtype, src, dst)
}

/// [`dequantize_row`] compiled for SIMD level `s` (same bits at every level).
pub fn dequantize_row_at(
    s: Simd,
    dtype: DType,
    src: &[u8],
    dst: &mut [f32],
) -> Result<(), ShapeError> {
    check_supported(dtype, "dequantize_row dtype")?;
    check_row(dtype, src.len(), dst.len(), "dequantize_row")?;
    exact::dequant_simd(s, dtype, src, dst);
    Ok(())
}

/// Quantises `src` into blocks of `dtype` in `dst`, exactly as ggml's reference
/// quantisers (`quantize_row_*_ref`). Supported: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0,
/// F32, F16, BF16 (K-quants need ggml's iterative search and are not provided).
///
/// # Panics
/// When `dtype` is a K-quant, or when the lengths do not match (`src.len()` a
/// multiple of the block length, `dst.len()` its byte count).
pub fn quantize_row(dtype: DType, src: &[f32], dst: &mut [u8]) {
    let bl = dtype.block_len();
    let bb = dtype.block_bytes();
    assert!(
        src.len().is_multiple_of(bl) && dst.len() == src.len() / bl * bb,
        "quantize_row: {} values cannot fill {} bytes of {dtype}",
        src.len(),
        dst.len()
    );
    let f: fn(&[f32], &mut [u8]) = match dtype {
        DType::Q4_0 => blocks::quant_q4_0,
        DType::Q4_1 => blocks::quant_q4_1,
        DType::Q5_0 => blocks::quant_q5_0,
        DType::Q5_1 => blocks::quant_q5_1,
        DType::Q8_0 => blocks::quant_q8_0,
        DType::F32 => |x, b| b.copy_from_slice(&x[0].to_le_bytes()),
        DType::F16 => |x, b| b.copy_from_slice(&blocks::f32_to_f16(x[0]).to_le_bytes()),
        DType::BF16 => |x, b| {
            b.copy_from_slice(&half::bf16::from_f32(x[0]).to_bits().to_le_bytes());
        },
        _ => panic!("quantize_row: quantising to {dtype} is not supported"),
    };
    for (x, b) in src.chunks_exact(bl).zip(dst.chunks_exact_mut(bb)) {
        f(x, b);
    }
}

/// Dot product of one weight row (`x.len()` values of `dtype`) with f32 `x`:
/// the weights are dequantised exactly (in registers / L1) and multiplied in f32.
///
/// # Panics
/// When `row` does not hold exactly `x.len()` values of `dtype` (an internal
/// invariant: callers check shapes once per matrix).
pub fn dot_row(s: Simd, dtype: DType, row: &[u8], x: &[f32]) -> f32 {
    assert_eq!(
        dtype.bytes_for(x.len()),
        Some(row.len()),
        "dot_row: {} bytes of {dtype} vs {} activations",
        row.len(),
        x.len()
    );
    exact::dot_f32(s, dtype, row, x)
}

/// `y = W · x` for a `rows x cols` weight matrix `w` of `dtype` (row-major, GGML
/// layout). Rows are split over `threads` in multiples of
/// [`MATVEC_CHUNK_ROWS`]; each row's dot product is computed by the same
/// operations whatever the split, so `y` is bit-identical for any thread count.
#[allow(clippy::too_many_arguments)]
pub fn matvec_q(
    s: Simd,
    threads: &Threads,
    dtype: DType,
    w: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
    y: &mut [f32],
) -> Result<(), ShapeError> {
    let row_bytes = weight_row_bytes(dtype, w, rows, cols, weight_checks!("matvec_q"))?;
    if x.len() != cols {
        return Err(ShapeError::Len {
            what: "matvec_q x",
            expected: cols,
            found: x.len(),
        });
    }
    if y.len() != rows {
        return Err(ShapeError::Len {
            what: "matvec_q y",
            expected: rows,
            found: y.len(),
        });
    }
    if rows == 0 {
        return Ok(());
    }
    if cols == 0 {
        y.fill(0.0);
        return Ok(());
    }
    let xm = MatRef::new(x, 1, cols).expect("x.len() == cols (checked)");
    if i16::applies(s, dtype) {
        let one = [QMatrix { dtype, w, rows }];
        let layout = i16::decode_layout(s, dtype);
        int16_rows_in_one_pass(s, threads, &one, &[row_bytes], layout, xm, y);
        return Ok(());
    }
    // SAFETY: `y` (one row of `rows`) is exclusively borrowed here; each task
    // below writes its own range of it.
    let base = unsafe { Out::new(y.as_mut_ptr(), rows, 0) };
    // SAFETY: `base` holds a column per row of `w`.
    unsafe {
        each_decode_task(threads, w, row_bytes, base, |wc, out| {
            exact::fused_rows(s, dtype, wc, row_bytes, xm, out)
        })
    };
    Ok(())
}

/// One weight matrix of [`matvecs_q`]: `rows` rows of `dtype` (GGML layout),
/// as many columns as the shared input has.
#[derive(Debug, Clone, Copy)]
pub struct QMatrix<'a> {
    /// The weights' format.
    pub dtype: DType,
    /// The weights, row-major.
    pub w: &'a [u8],
    /// Output rows.
    pub rows: usize,
}

/// `y = [W_0 · x, W_1 · x, ...]`: the products of several matrices with one
/// input `x`, their outputs one after another in `y`, with the bits of
/// [`matvec_q`] for each. When the matrices round activations alike (int16
/// products of one layout) they take one pass over the pool: `x` is rounded
/// once, and decode's tasks run over the rows of all of them, so the threads
/// wait for each other once instead of once per matrix (a decoder layer's
/// q, k and v, or gate and up). Otherwise each matrix is its own
/// [`matvec_q`].
pub fn matvecs_q(
    s: Simd,
    threads: &Threads,
    mats: &[QMatrix<'_>],
    x: &[f32],
    y: &mut [f32],
) -> Result<(), ShapeError> {
    let cols = x.len();
    let rows = mats.iter().try_fold(0usize, |n, m| {
        n.checked_add(m.rows)
            .ok_or(ShapeError::Overflow { what: "matvecs_q" })
    })?;
    if y.len() != rows {
        return Err(ShapeError::Len {
            what: "matvecs_q y",
            expected: rows,
            found: y.len(),
        });
    }
    // One pass takes matrices whose products round `x` alike.
    let layout = mats.first().map(|m| i16::decode_layout(s, m.dtype));
    let one_pass = cols > 0
        && mats.len() <= MATVECS_MAX
        && mats
            .iter()
            .all(|m| i16::applies(s, m.dtype) && Some(i16::decode_layout(s, m.dtype)) == layout);
    if !one_pass {
        let mut rest = &mut y[..];
        for m in mats {
            let (ym, tail) = rest.split_at_mut(m.rows);
            matvec_q(s, threads, m.dtype, m.w, m.rows, cols, x, ym)?;
            rest = tail;
        }
        return Ok(());
    }
    // Every matrix's shape is checked before any work starts.
    let mut row_bytes = [0usize; MATVECS_MAX];
    for (m, rb) in mats.iter().zip(&mut row_bytes) {
        *rb = weight_row_bytes(m.dtype, m.w, m.rows, cols, weight_checks!("matvecs_q"))?;
    }
    if rows == 0 {
        return Ok(());
    }
    let xm = MatRef::new(x, 1, cols).expect("x.len() == cols");
    if let Some(layout) = layout {
        int16_rows_in_one_pass(s, threads, mats, &row_bytes[..mats.len()], layout, xm, y);
    }
    Ok(())
}

/// The int16 products of one row `xm` with every matrix of `mats`
/// (`row_bytes` per row, shapes checked), their outputs one after another
/// in `y`: `xm` rounded once in `layout`, and decode's tasks over the rows of
/// all the matrices.
fn int16_rows_in_one_pass(
    s: Simd,
    threads: &Threads,
    mats: &[QMatrix<'_>],
    row_bytes: &[usize],
    layout: i16::Layout,
    xm: MatRef<'_>,
    y: &mut [f32],
) {
    let rows = y.len();
    // SAFETY: `y` (one row of `rows`) is exclusively borrowed here; each task
    // below writes its own range of it.
    let base = unsafe { Out::new(y.as_mut_ptr(), rows, 0) };
    let tasks = DecodeTasks::new(rows, threads.count());
    i16::with_acts(s, threads, xm, layout, |acts| {
        threads.for_each_index(tasks.count, |t| {
            let r = tasks.range(t);
            let mut first = 0;
            for (m, &rb) in mats.iter().zip(row_bytes) {
                let (lo, hi) = (r.start.max(first), r.end.min(first + m.rows));
                if lo < hi {
                    // SAFETY: columns `lo..hi` of `y`, within this task's own `r`.
                    let out = unsafe { base.shifted(lo) };
                    let w = &m.w[(lo - first) * rb..(hi - first) * rb];
                    i16::rows(s, m.dtype, w, rb, acts, out);
                }
                first += m.rows;
            }
        })
    });
}

/// Most matrices [`matvecs_q`] takes in one pass (more take one product each).
pub const MATVECS_MAX: usize = 8;

/// Runs `f` on each of decode's tasks ([`DecodeTasks`]) over the rows of
/// `w` (`row_bytes` each): the task's rows, and `base` moved to their
/// first column.
///
/// # Safety
/// `base` may be written, by these tasks alone, at the columns of every
/// row of `w` in the rows `f` writes.
unsafe fn each_decode_task(
    threads: &Threads,
    w: &[u8],
    row_bytes: usize,
    base: Out,
    f: impl Fn(&[u8], Out) + Sync,
) {
    let tasks = DecodeTasks::new(w.len() / row_bytes, threads.count());
    threads.for_each_index(tasks.count, |t| {
        let r = tasks.range(t);
        // SAFETY: columns `r`, this task's own (the contract).
        let out = unsafe { base.shifted(r.start) };
        f(&w[r.start * row_bytes..r.end * row_bytes], out);
    });
}

/// The row ranges of decode's tasks ([`matvec_q`], and [`matmul_q`] for a
/// few rows): claimed in order, each a multiple of [`MATVEC_CHUNK_ROWS`] but
/// the last, and shrinking with the rows left (half a thread's share of
/// them), so that the last tasks claimed are small and no thread waits out
/// a large one of another's (guided scheduling). Tasks of equal size, about
/// a quarter of a thread's share, left one of 2 threads idle for about 6%
/// of SmolLM2's decode (`perf`: spinning workers, waiting callers).
/// Any split gives the same bits: each row's dot product never depends on
/// its neighbours.
struct DecodeTasks {
    /// Task `t` holds rows `starts[t]..starts[t + 1]`.
    starts: [usize; DecodeTasks::MAX + 1],
    /// Tasks.
    count: usize,
}

impl DecodeTasks {
    /// Most tasks of one product (an output projection of 262144 rows takes
    /// 32 at 2 threads, 117 at 8); the last of them takes every row left.
    const MAX: usize = 128;

    fn new(rows: usize, threads: usize) -> DecodeTasks {
        let mut tasks = DecodeTasks {
            starts: [rows; DecodeTasks::MAX + 1],
            count: 1,
        };
        tasks.starts[0] = 0;
        if threads <= 1 {
            return tasks;
        }
        let (g, share) = (MATVEC_CHUNK_ROWS, threads.saturating_mul(2));
        let mut start = 0;
        while start < rows && tasks.count < DecodeTasks::MAX {
            let left = rows - start;
            let len = left.div_ceil(share).div_ceil(g).saturating_mul(g);
            start += len.min(left);
            tasks.starts[tasks.count] = start;
            tasks.count += 1;
        }
        // Loop ended on the last row or on the cap (whose task keeps `rows`).
        tasks.count -= 1;
        tasks.starts[tasks.count] = rows;
        tasks
    }

    /// Rows of task `t`.
    fn range(&self, t: usize) -> core::ops::Range<usize> {
        self.starts[t]..self.starts[t + 1]
    }
}

/// Product `y (m x rows) = x (m x cols) · Wᵀ` for a `rows x cols` weight
/// matrix `w` of `dtype`, with exact float math: every output is the f32
/// kernel of [`crate::matmul`] on the exactly dequantised weights, in its one
/// fixed operation order, so each row of `y` has the same bits whatever `m`
/// is, and the bits of [`matvec_q`] for that row alone;
/// the work is split over `threads` along the weight rows only, so results do
/// not depend on the thread count either. `y` is row-major with `rows` columns.
///
/// Up to 4 rows (2 below AVX-512), dequantisation is fused into the kernel
/// (each stretch of weights is dequantised once into L1 for all rows); more
/// rows use panels of [`MATMUL_PANEL_ROWS`] weight rows dequantised into a
/// per-thread buffer, kept between calls and shared by every weight matrix
/// ([`MATMUL_PANEL_ROWS`] `x` the largest `cols` it has seen), so memory grows
/// neither with the number of weight matrices nor, beyond one panel per
/// thread, with the thread count.
#[allow(clippy::too_many_arguments)]
pub fn matmul_q(
    s: Simd,
    threads: &Threads,
    dtype: DType,
    w: &[u8],
    rows: usize,
    cols: usize,
    x: MatRef<'_>,
    y: &mut [f32],
) -> Result<(), ShapeError> {
    let row_bytes = weight_row_bytes(dtype, w, rows, cols, weight_checks!("matmul_q"))?;
    if x.cols() != cols {
        return Err(ShapeError::Mismatch {
            what: "matmul_q x cols vs weight cols",
            left: x.cols(),
            right: cols,
        });
    }
    let m = x.rows();
    let ylen = m
        .checked_mul(rows)
        .ok_or(ShapeError::Overflow { what: "matmul_q y" })?;
    if y.len() != ylen {
        return Err(ShapeError::Len {
            what: "matmul_q y",
            expected: ylen,
            found: y.len(),
        });
    }
    if m == 0 || rows == 0 {
        return Ok(());
    }
    if cols == 0 {
        y.fill(0.0);
        return Ok(());
    }
    // SAFETY: `y` is m x rows and exclusively borrowed here; every task below
    // writes rows i < m and its own range of columns r0..r0 + nr (<= rows),
    // disjoint from the other tasks'.
    let base = unsafe { Out::new(y.as_mut_ptr(), rows, 0) };
    if i16::applies(s, dtype) {
        // Exact products that round activations to int16 do it once, here.
        let gemm = m > i16::rows_max(s, dtype);
        // Only decode's kernel reads a layout besides the rounded values.
        let layout = if gemm {
            i16::Layout::Plain
        } else {
            i16::decode_layout(s, dtype)
        };
        i16::with_acts(s, threads, x, layout, |acts| {
            if gemm {
                let chunk = I16_GEMM_TASK_ROWS;
                threads.for_each_index(rows.div_ceil(chunk), |c| {
                    let (r0, nr) = (c * chunk, chunk.min(rows - c * chunk));
                    // SAFETY: columns r0..r0 + nr of `y`, this task's own (see `base`).
                    let out = unsafe { base.shifted(r0) };
                    let wc = &w[r0 * row_bytes..(r0 + nr) * row_bytes];
                    i16::gemm(s, dtype, wc, row_bytes, acts, out);
                });
                return;
            }
            // SAFETY: `base` holds a column per row of `w` (see above).
            unsafe {
                each_decode_task(threads, w, row_bytes, base, |wc, out| {
                    i16::rows(s, dtype, wc, row_bytes, acts, out)
                })
            }
        });
        return Ok(());
    }
    if m <= exact::fused_max_rows(s) {
        // Few rows (a decode step of a few sequences): dequantise each stretch
        // of weights once, in L1, for all rows of `x`.
        // SAFETY: `base` holds a column per row of `w` (see above).
        unsafe {
            each_decode_task(threads, w, row_bytes, base, |wc, out| {
                exact::fused_rows(s, dtype, wc, row_bytes, x, out)
            })
        };
        return Ok(());
    }
    let panel_len = MATMUL_PANEL_ROWS
        .checked_mul(cols)
        .ok_or(ShapeError::Overflow {
            what: "matmul_q panel",
        })?;
    crate::matmul::with_aligned_rows(x, |x| {
        panels(s, threads, dtype, (w, rows, row_bytes), x, base, panel_len)
    });
    Ok(())
}

/// The panel path of [`matmul_q`] (arguments checked there): `w` holds
/// `rows` rows of `row_bytes` bytes.
fn panels(
    s: Simd,
    threads: &Threads,
    dtype: DType,
    (w, rows, row_bytes): (&[u8], usize, usize),
    x: MatRef<'_>,
    base: Out,
    panel_len: usize,
) {
    let cols = x.cols();
    threads.for_each_index(rows.div_ceil(MATMUL_PANEL_ROWS), |p| {
        let r0 = p * MATMUL_PANEL_ROWS;
        let nr = MATMUL_PANEL_ROWS.min(rows - r0);
        with_panel(panel_len, |buf| {
            let buf = &mut buf[..nr * cols];
            exact::dequant_simd(s, dtype, &w[r0 * row_bytes..(r0 + nr) * row_bytes], buf);
            // SAFETY: columns r0..r0 + nr of `y`, this task's own (see `base`).
            let out = unsafe { base.shifted(r0) };
            crate::matmul::block_dense(s, x, buf, nr, out);
        });
    });
}

thread_local! {
    /// This thread's dequantised weight panel for [`matmul_q`].
    static PANEL: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Extra values a panel buffer holds so that the panel can start on a 64-byte
/// boundary (a cache line: every vector load of a row is then one line when
/// rows are a multiple of 16 values, as all block formats' are).
const PANEL_PAD: usize = 16;

/// Runs `f` on this thread's panel buffer, `len` values starting on a 64-byte
/// boundary (the buffer keeps the largest size it has had, so steady-state
/// calls do not allocate).
fn with_panel<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    fn aligned(buf: &mut [f32], len: usize) -> &mut [f32] {
        let at = buf.as_ptr().align_offset(64).min(PANEL_PAD - 1);
        &mut buf[at..at + len]
    }
    PANEL.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < len + PANEL_PAD {
                buf.resize(len + PANEL_PAD, 0.0);
            }
            f(aligned(&mut buf, len))
        }
        // Busy only if `f` itself reached `matmul_q` on this thread, which the
        // kernels never do; a temporary buffer keeps that case correct.
        Err(_) => f(aligned(&mut vec![0.0; len + PANEL_PAD], len)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Decode's tasks cover every row once, in order, in multiples of
        /// the granule but the last, no larger than the task before, and
        /// within the cap; one task for one thread.
        #[test]
        fn decode_tasks_cover_the_rows_once(rows in 1usize..300_000, threads in 1usize..9) {
            let tasks = DecodeTasks::new(rows, threads);
            proptest::prop_assert!(tasks.count >= 1 && tasks.count < DecodeTasks::MAX);
            if threads == 1 {
                proptest::prop_assert_eq!(tasks.count, 1);
            }
            let mut next = 0;
            let mut last_len = usize::MAX;
            for t in 0..tasks.count {
                let r = tasks.range(t);
                proptest::prop_assert_eq!(r.start, next);
                proptest::prop_assert!(r.end > r.start, "task {} empty", t);
                let len = r.len();
                if t + 1 < tasks.count {
                    proptest::prop_assert_eq!(len % MATVEC_CHUNK_ROWS, 0);
                    proptest::prop_assert!(len <= last_len, "task {} grew", t);
                }
                last_len = len;
                next = r.end;
            }
            proptest::prop_assert_eq!(next, rows);
        }
    }

    /// A small deterministic generator (xorshift64*).
    pub(super) struct Rng(pub(super) u64);
    impl Rng {
        pub(super) fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        pub(super) fn f(&mut self) -> f32 {
            (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        }
    }

    /// Random weight blocks: valid (finite, modest) f16 scales, random quant bytes.
    pub(super) fn random_row(rng: &mut Rng, dtype: DType, n: usize) -> Vec<u8> {
        let mut x: Vec<f32> = (0..n).map(|_| rng.f()).collect();
        if matches!(
            dtype,
            DType::Q4_0 | DType::Q4_1 | DType::Q5_0 | DType::Q5_1 | DType::Q8_0
        ) {
            let mut b = vec![0u8; dtype.bytes_for(n).unwrap()];
            quantize_row(dtype, &x, &mut b);
            return b;
        }
        // K-quants: random bytes with the f16 scales overwritten by small values.
        x.clear();
        let mut b: Vec<u8> = (0..dtype.bytes_for(n).unwrap())
            .map(|_| rng.next() as u8)
            .collect();
        let bb = dtype.block_bytes();
        for blk in b.chunks_exact_mut(bb) {
            let at: &[usize] = if dtype == DType::Q6_K {
                &[208]
            } else {
                &[0, 2]
            };
            for &o in at {
                let h = blocks::f32_to_f16(rng.f() * 0.01);
                blk[o..o + 2].copy_from_slice(&h.to_le_bytes());
            }
        }
        b
    }

    /// Many weight matrices on any thread count: each thread holds a single
    /// panel, sized for the widest matrix.
    #[test]
    fn matmul_q_keeps_one_panel_per_thread_for_all_callers() {
        let mut rng = Rng(3);
        // More rows than the fused small-batch path takes: dequantised panels.
        let m = 9;
        let panel_len = || PANEL.with(|p| p.borrow().len());
        for t in [1, 2, 3] {
            let threads = Threads::new(t);
            let mut widest = 0;
            for (rows, cols) in [(130, 256), (70, 768), (200, 512), (64, 256)] {
                widest = widest.max(cols);
                let w = random_row(&mut rng, DType::Q4_0, rows * cols);
                let x: Vec<f32> = (0..m * cols).map(|_| rng.f()).collect();
                let mut y = vec![0.0; m * rows];
                let xm = MatRef::new(&x, m, cols).unwrap();
                matmul_q(
                    Simd::detect(),
                    &threads,
                    DType::Q4_0,
                    &w,
                    rows,
                    cols,
                    xm,
                    &mut y,
                )
                .unwrap();
            }
            // Every thread of the pool (workers and caller) reports its panel;
            // the short sleeps make each one take some of the indices.
            let seen = std::sync::Mutex::new(std::collections::HashMap::new());
            threads.for_each_index(32 * t, |_| {
                let len = panel_len();
                seen.lock()
                    .unwrap()
                    .insert(std::thread::current().id(), len);
                std::thread::sleep(std::time::Duration::from_millis(1));
            });
            let per_thread: Vec<usize> = seen.into_inner().unwrap().into_values().collect();
            assert!(per_thread.len() <= t, "{t} threads: {per_thread:?}");
            assert!(
                per_thread
                    .iter()
                    .all(|&l| l <= MATMUL_PANEL_ROWS * widest + PANEL_PAD),
                "{t} threads: panels {per_thread:?}"
            );
            assert!(
                per_thread.contains(&(MATMUL_PANEL_ROWS * widest + PANEL_PAD)),
                "{per_thread:?}"
            );
        }
    }
}
