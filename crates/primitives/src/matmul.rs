//! Matrix products: f32 `matmul` through faer and the threaded `matvec` of decoding.
//!
//! Weights are stored as nn.Linear and GGUF store them: `W` is `n x k` row-major
//! (one row per output feature). Activations `X` are `m x k` row-major (one row
//! per token) and the product is `Y = X · Wᵀ`, `m x n` row-major.
//!
//! Both products are bit-identical for any thread count: the output is cut along
//! `n` (weight rows) into chunks whose size is a constant, never derived from the
//! thread count, and each chunk is computed by exactly one thread with the same
//! sequence of operations. Threads only decide *who* runs a chunk.

use crate::error::ShapeError;
use crate::simd::Simd;
use crate::tensor::MatRef;
use crate::threads::Threads;

/// Weight rows per `matmul` task. Fixed (not derived from the thread count) so that
/// each output column block is always computed by the same faer call; chosen by
/// measurement (large enough that faer's packing of `X` per task stays cheap, small
/// enough that a 2-core split of a 576-wide layer is still balanced).
pub const MATMUL_CHUNK_N: usize = 128;

/// Weight rows per `matvec` task: a multiple of 4 (the kernel's row group), large
/// enough to amortise the pool hand-off, small enough for work stealing to balance.
pub const MATVEC_CHUNK_ROWS: usize = 64;

/// `y = x · wᵀ`: `x` is `m x k`, `w` is `n x k` (rows = output features), `y` is the
/// `m x n` row-major result and must hold exactly `m * n` elements.
///
/// Runs faer's sequential kernel on fixed-size blocks of [`MATMUL_CHUNK_N`] weight
/// rows spread over `threads`, so the result does not depend on the thread count.
/// faer detects its own instruction set at run time (AVX-512 or AVX2+FMA), so
/// `s` is accepted for symmetry with the other kernels but does not change the
/// path: `PATCHBAY_SIMD=scalar` does not make faer scalar.
pub fn matmul(
    s: Simd,
    threads: &Threads,
    x: MatRef<'_>,
    w: MatRef<'_>,
    y: &mut [f32],
) -> Result<(), ShapeError> {
    let _ = s;
    let (m, k, n) = (x.rows(), x.cols(), w.rows());
    if w.cols() != k {
        return Err(ShapeError::Mismatch {
            what: "matmul: x.cols vs w.cols (k)",
            left: k,
            right: w.cols(),
        });
    }
    let expected = m
        .checked_mul(n)
        .ok_or(ShapeError::Overflow { what: "matmul y" })?;
    if y.len() != expected {
        return Err(ShapeError::Len {
            what: "matmul y (m * n)",
            expected,
            found: y.len(),
        });
    }
    if expected == 0 {
        return Ok(());
    }
    if k == 0 {
        y.fill(0.0);
        return Ok(());
    }

    let xs = x.as_slice();
    let x_stride = x.stride();
    let ws = w.as_slice();
    let w_stride = w.stride();
    let y_ptr = SyncPtr(y.as_mut_ptr());
    let chunks = n.div_ceil(MATMUL_CHUNK_N);
    threads.for_each_index(chunks, |c| {
        let j0 = c * MATMUL_CHUNK_N;
        let nc = MATMUL_CHUNK_N.min(n - j0);
        let lhs = faer::MatRef::from_row_major_slice_with_stride(xs, m, k, x_stride);
        // Rows j0..j0+nc of W, seen as the k x nc block of Wᵀ.
        let rhs =
            faer::MatRef::from_row_major_slice_with_stride(&ws[j0 * w_stride..], nc, k, w_stride)
                .transpose();
        // SAFETY: y holds m * n elements (checked above); this view covers columns
        // j0..j0+nc (j0 + nc <= n) of every row, i.e. offsets i*n + j0 + jj < m*n.
        // Chunks have disjoint column ranges, so no two tasks alias an element, and
        // `y` is exclusively borrowed for the duration of `for_each_index`.
        let dst = unsafe {
            faer::MatMut::from_raw_parts_mut(y_ptr.get().add(j0), m, nc, n as isize, 1isize)
        };
        faer::linalg::matmul::matmul(dst, faer::Accum::Replace, lhs, rhs, 1.0f32, faer::Par::Seq);
    });
    Ok(())
}

/// A raw output pointer shared by tasks that write disjoint elements.
#[derive(Clone, Copy)]
struct SyncPtr(*mut f32);

// SAFETY: only used to hand disjoint parts of one exclusively borrowed slice to
// worker tasks (see `matmul`); the pointer itself carries no thread affinity.
unsafe impl Send for SyncPtr {}
// SAFETY: as above; tasks never write the same element.
unsafe impl Sync for SyncPtr {}

impl SyncPtr {
    /// A method (not field access) so closures capture the `Sync` wrapper.
    #[inline]
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// `y = W · x`: `w` is `n x k`, `x` holds `k` elements and `y` exactly `n`.
///
/// The decode hot path: streams every weight once. Rows are split over `threads`
/// in blocks of [`MATVEC_CHUNK_ROWS`]; each `y[i]` is a dot product reduced in one
/// thread in an order that depends only on `k` and `s` (not on the thread count
/// nor on which rows it was grouped with). Does not allocate.
pub fn matvec(
    s: Simd,
    threads: &Threads,
    w: MatRef<'_>,
    x: &[f32],
    y: &mut [f32],
) -> Result<(), ShapeError> {
    if x.len() != w.cols() {
        return Err(ShapeError::Mismatch {
            what: "matvec: x.len vs w.cols (k)",
            left: x.len(),
            right: w.cols(),
        });
    }
    if y.len() != w.rows() {
        return Err(ShapeError::Len {
            what: "matvec y (n)",
            expected: w.rows(),
            found: y.len(),
        });
    }
    threads.for_each_chunk(y, MATVEC_CHUNK_ROWS, |c, out| {
        s.vectorize(MatVecRows {
            w,
            x,
            row0: c * MATVEC_CHUNK_ROWS,
            out,
        });
    });
    Ok(())
}

/// `out[r] = dot(w.row(row0 + r), x)` for every `r`.
struct MatVecRows<'a, 'b> {
    w: MatRef<'a>,
    x: &'a [f32],
    row0: usize,
    out: &'b mut [f32],
}

impl pulp::WithSimd for MatVecRows<'_, '_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, simd: S) {
        let MatVecRows { w, x, row0, out } = self;
        let mut groups = out.chunks_exact_mut(4);
        let mut r = row0;
        for o in &mut groups {
            let rows = [w.row(r), w.row(r + 1), w.row(r + 2), w.row(r + 3)];
            let d = dot4(simd, rows, x);
            o.copy_from_slice(&d);
            r += 4;
        }
        for o in groups.into_remainder() {
            *o = dot1(simd, w.row(r), x);
            r += 1;
        }
    }
}

// The two dot kernels below must perform, per row, exactly the same operations in
// the same order (so a row's result does not depend on its group): two vector
// accumulators fed alternately, an odd last vector into `a0`, the zero-padded tail
// into `a1`, then `reduce_sum(a0 + a1)`.

/// Four dot products sharing the loads of `x`.
#[inline(always)]
fn dot4<S: pulp::Simd>(simd: S, rows: [&[f32]; 4], x: &[f32]) -> [f32; 4] {
    let (xh, xt) = S::as_simd_f32s(x);
    let (h0, t0) = S::as_simd_f32s(rows[0]);
    let (h1, t1) = S::as_simd_f32s(rows[1]);
    let (h2, t2) = S::as_simd_f32s(rows[2]);
    let (h3, t3) = S::as_simd_f32s(rows[3]);
    let z = simd.splat_f32s(0.0);
    let (mut a00, mut a01, mut a10, mut a11) = (z, z, z, z);
    let (mut a20, mut a21, mut a30, mut a31) = (z, z, z, z);
    let pairs = xh.len() / 2;
    let (xp, xo) = xh.split_at(pairs * 2);
    let (p0, o0) = h0.split_at(pairs * 2);
    let (p1, o1) = h1.split_at(pairs * 2);
    let (p2, o2) = h2.split_at(pairs * 2);
    let (p3, o3) = h3.split_at(pairs * 2);
    let it = xp
        .chunks_exact(2)
        .zip(p0.chunks_exact(2))
        .zip(p1.chunks_exact(2))
        .zip(p2.chunks_exact(2))
        .zip(p3.chunks_exact(2));
    for ((((xv, v0), v1), v2), v3) in it {
        a00 = simd.mul_add_e_f32s(v0[0], xv[0], a00);
        a10 = simd.mul_add_e_f32s(v1[0], xv[0], a10);
        a20 = simd.mul_add_e_f32s(v2[0], xv[0], a20);
        a30 = simd.mul_add_e_f32s(v3[0], xv[0], a30);
        a01 = simd.mul_add_e_f32s(v0[1], xv[1], a01);
        a11 = simd.mul_add_e_f32s(v1[1], xv[1], a11);
        a21 = simd.mul_add_e_f32s(v2[1], xv[1], a21);
        a31 = simd.mul_add_e_f32s(v3[1], xv[1], a31);
    }
    if let (Some(&xv), Some(&v0), Some(&v1), Some(&v2), Some(&v3)) =
        (xo.first(), o0.first(), o1.first(), o2.first(), o3.first())
    {
        a00 = simd.mul_add_e_f32s(v0, xv, a00);
        a10 = simd.mul_add_e_f32s(v1, xv, a10);
        a20 = simd.mul_add_e_f32s(v2, xv, a20);
        a30 = simd.mul_add_e_f32s(v3, xv, a30);
    }
    if !xt.is_empty() {
        let xv = simd.partial_load_f32s(xt);
        a01 = simd.mul_add_e_f32s(simd.partial_load_f32s(t0), xv, a01);
        a11 = simd.mul_add_e_f32s(simd.partial_load_f32s(t1), xv, a11);
        a21 = simd.mul_add_e_f32s(simd.partial_load_f32s(t2), xv, a21);
        a31 = simd.mul_add_e_f32s(simd.partial_load_f32s(t3), xv, a31);
    }
    [
        simd.reduce_sum_f32s(simd.add_f32s(a00, a01)),
        simd.reduce_sum_f32s(simd.add_f32s(a10, a11)),
        simd.reduce_sum_f32s(simd.add_f32s(a20, a21)),
        simd.reduce_sum_f32s(simd.add_f32s(a30, a31)),
    ]
}

/// One dot product, same operation order per row as [`dot4`].
#[inline(always)]
fn dot1<S: pulp::Simd>(simd: S, row: &[f32], x: &[f32]) -> f32 {
    let (xh, xt) = S::as_simd_f32s(x);
    let (h0, t0) = S::as_simd_f32s(row);
    let z = simd.splat_f32s(0.0);
    let (mut a0, mut a1) = (z, z);
    let pairs = xh.len() / 2;
    let (xp, xo) = xh.split_at(pairs * 2);
    let (p0, o0) = h0.split_at(pairs * 2);
    for (xv, v0) in xp.chunks_exact(2).zip(p0.chunks_exact(2)) {
        a0 = simd.mul_add_e_f32s(v0[0], xv[0], a0);
        a1 = simd.mul_add_e_f32s(v0[1], xv[1], a1);
    }
    if let (Some(&xv), Some(&v0)) = (xo.first(), o0.first()) {
        a0 = simd.mul_add_e_f32s(v0, xv, a0);
    }
    if !xt.is_empty() {
        let xv = simd.partial_load_f32s(xt);
        a1 = simd.mul_add_e_f32s(simd.partial_load_f32s(t0), xv, a1);
    }
    simd.reduce_sum_f32s(simd.add_f32s(a0, a1))
}
