//! `Y = X · Wᵀ` for many rows by the packed GEMM micro-kernel, with every
//! output summed in plain `k` order.
//!
//! [`matmul`](crate::matmul::matmul) gives each output the order of the
//! decode kernel (`L` lanes, then a reduction tree), so that a prompt's rows
//! have the bits of decoding them one at a time; each output then needs its
//! own horizontal sum, and the tile loads one vector of `X` per multiply-add
//! it shares. Layers that only ever see whole sequences (an encoder) do not
//! need that order. [`matmul_sequential`] gives each output
//! `y = fma(x[k-1], w[k-1], ... fma(x[1], w[1], fma(x[0], w[0], 0)))`: one
//! multiply-add per `k` from `k = 0`, starting at zero (at the portable level,
//! multiply then add). That order does not depend on `m`, on the blocking or
//! on the thread count either, so a row is still bit-identical whether it is
//! computed alone or packed with other sequences, and it is the order of the
//! classic outer-product kernel: a tile of `MR` rows of `X` times `2 L`
//! columns of `W` (`MR x 2` accumulators), fed per step by two vector loads of
//! packed `W` and `MR` broadcasts of `X`, with no horizontal sums at all.
//!
//! Each task packs its block of `X` (tiles of `MR` rows, `k`-major) and, group
//! by group, its columns of `W` (panels of `2 L` columns, `k`-major) into
//! buffers of its thread, so the weights stay where they are (memory-mapped)
//! and no copy outlives the call.

use crate::error::ShapeError;
use crate::matmul::{check_product, Out};
use crate::simd::Simd;
use crate::tensor::MatRef;
use crate::threads::Threads;

/// Rows of `X` per micro-kernel tile: `MR x 2` accumulators plus two weight
/// vectors and a broadcast fit the 16 vector registers of AVX2.
const MR: usize = 6;

/// Vectors of `W` columns per micro-kernel tile.
const NV: usize = 2;

/// Rows of `X` per task: packing `W` again for every such block of rows costs
/// under 1/`MC` of the multiply-adds.
const MC: usize = 48 * MR;

/// Bytes of packed `W` a task keeps in L2 while every tile of its rows passes.
const GROUP_BYTES: usize = 192 << 10;

/// Values of `k` per step (a panel's slice, `KC x 2L`, stays in L1).
const KC: usize = 256;

/// Columns per task at most (with many rows; fewer when rows are few).
const TASK_COLS: usize = 256;

/// Column ranges of tasks are multiples of this (the widest panel, AVX-512).
const COL_ALIGN: usize = 32;

/// `y = x · wᵀ` (`x` is `m x k`, `w` is `n x k`, `y` the `m x n` row-major
/// result) with every output summed in plain `k` order (module docs): a row of
/// `y` has the same bits whatever `m` and the thread count are, but not the
/// bits [`matmul`](crate::matmul::matmul) gives it.
///
/// ```
/// use patchbay_primitives::gemm::matmul_sequential;
/// use patchbay_primitives::{MatRef, Simd, Threads};
/// let x = [1.0, 2.0, 3.0, 4.0]; // 2 x 2
/// let w = [1.0, 0.0, 1.0, 1.0, 0.0, 2.0]; // 3 x 2
/// let mut y = [0.0; 6];
/// let (xv, wv) = (MatRef::new(&x, 2, 2).unwrap(), MatRef::new(&w, 3, 2).unwrap());
/// matmul_sequential(Simd::detect(), &Threads::single(), xv, wv, &mut y).unwrap();
/// assert_eq!(y, [1.0, 3.0, 4.0, 3.0, 7.0, 8.0]);
/// ```
pub fn matmul_sequential(
    s: Simd,
    threads: &Threads,
    x: MatRef<'_>,
    w: MatRef<'_>,
    y: &mut [f32],
) -> Result<(), ShapeError> {
    check_product(
        x,
        w,
        y,
        "matmul_sequential: x.cols vs w.cols (k)",
        "matmul_sequential y (m * n)",
    )?;
    let (m, n) = (x.rows(), w.rows());
    if y.is_empty() {
        return Ok(());
    }
    let row_tasks = m.div_ceil(MC);
    // Cut the columns too: with few rows, so that every thread has work; with
    // many, so that tasks are small enough to balance.
    let want = threads.count() * 4;
    let col_tasks = want
        .div_ceil(row_tasks)
        .max(n.div_ceil(TASK_COLS))
        .min(n.div_ceil(COL_ALIGN));
    let cols_per = n.div_ceil(col_tasks).div_ceil(COL_ALIGN) * COL_ALIGN;
    let col_tasks = n.div_ceil(cols_per);
    // SAFETY: `Out` for row 0, column 0 of `y` with row stride n; each task
    // writes rows i0..i1 < m and columns j0..j1 <= n only, i.e. offsets
    // < m * n = y.len(); tasks have disjoint row x column ranges and `y` is
    // exclusively borrowed here.
    let out = unsafe { Out::new(y.as_mut_ptr(), n, 0) };
    threads.for_each_index(row_tasks * col_tasks, |t| {
        let (ri, ci) = (t / col_tasks, t % col_tasks);
        let (i0, j0) = (ri * MC, ci * cols_per);
        s.vectorize(Task {
            x,
            w,
            rows: i0..(i0 + MC).min(m),
            cols: j0..(j0 + cols_per).min(n),
            out,
        });
    });
    Ok(())
}

/// Rows `rows` x columns `cols` of the product.
struct Task<'a> {
    x: MatRef<'a>,
    w: MatRef<'a>,
    rows: core::ops::Range<usize>,
    cols: core::ops::Range<usize>,
    out: Out,
}

thread_local! {
    /// This thread's packed `X` block, packed `W` group and accumulators.
    #[allow(clippy::type_complexity)]
    static PACKS: std::cell::Cell<(Vec<f32>, Vec<f32>, Vec<f32>)> =
        const { std::cell::Cell::new((Vec::new(), Vec::new(), Vec::new())) };
}

impl pulp::WithSimd for Task<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, simd: S) {
        let Task {
            x,
            w,
            rows,
            cols,
            out,
        } = self;
        let lanes = core::mem::size_of::<S::f32s>() / 4;
        let nr = NV * lanes;
        let k = x.cols();
        let group = (GROUP_BYTES / (4 * k.max(1)) / nr).max(1) * nr;
        // Taken out of the thread-local and put back, so a nested call would
        // only allocate its own.
        let (mut xp, mut wp, mut acc) = PACKS.with(|c| c.take());
        let tiles = rows.len().div_ceil(MR);
        pack_rows(&mut xp, tiles * MR, k, |t| {
            let r = rows.start + t;
            (r < rows.end).then(|| x.row(r))
        });
        let per_tile = MR * nr; // accumulator values of one tile
        let mut j = cols.start;
        while j < cols.end {
            let gc = group.min(cols.end - j);
            let panels = gc.div_ceil(nr);
            pack_cols(&mut wp, panels, nr, k, |c| (c < gc).then(|| w.row(j + c)));
            acc.clear();
            acc.resize(tiles * panels * per_tile, 0.0);
            // Steps along `k` (a panel's slice stays in L1 while every tile
            // of rows passes); the accumulators wait in `acc` between steps,
            // which changes no operation.
            let mut k0 = 0;
            while k0 < k {
                let kc = KC.min(k - k0);
                for p in 0..panels {
                    let wt = &wp[(p * k + k0) * nr..(p * k + k0 + kc) * nr];
                    for t in 0..tiles {
                        let xt = &xp[(t * k + k0) * MR..(t * k + k0 + kc) * MR];
                        let a = &mut acc[(t * panels + p) * per_tile..][..per_tile];
                        tile::<S>(simd, xt, wt, S::as_mut_simd_f32s(a).0);
                    }
                }
                k0 += kc;
            }
            for t in 0..tiles {
                for (i, vals) in acc[t * panels * per_tile..(t + 1) * panels * per_tile]
                    .chunks_exact(nr)
                    .enumerate()
                {
                    // Tile t's values are panel-major, then row, then column.
                    let (p, r) = (i / MR, i % MR);
                    let row = t * MR + r;
                    if row < rows.len() {
                        let live_cols = nr.min(gc - p * nr);
                        out.put_slice(rows.start + row, j + p * nr, &vals[..live_cols]);
                    }
                }
            }
            j += gc;
        }
        PACKS.with(|c| c.set((xp, wp, acc)));
    }
}

/// Packs `count` rows (`row(t)`, `None` = zeros) of `k` values into tiles of
/// [`MR`] rows, each tile `k`-major: `buf[(tile * k + l) * MR + i]`.
fn pack_rows<'a>(
    buf: &mut Vec<f32>,
    count: usize,
    k: usize,
    row: impl Fn(usize) -> Option<&'a [f32]>,
) {
    // Stale values are all overwritten (missing rows with zeros).
    buf.resize(count * k, 0.0);
    if k == 0 {
        return;
    }
    for (t, tile) in buf[..count * k].chunks_exact_mut(k * MR).enumerate() {
        interleave::<MR>(tile, k, |i| row(t * MR + i));
    }
}

/// Packs `panels * nr` rows of `W` (`row(c)`, `None` = zeros) into panels of
/// `nr` columns of the product, each `k`-major: `buf[(p * k + l) * nr + c]`.
fn pack_cols<'a>(
    buf: &mut Vec<f32>,
    panels: usize,
    nr: usize,
    k: usize,
    row: impl Fn(usize) -> Option<&'a [f32]>,
) {
    // Stale values are all overwritten (missing rows with zeros).
    buf.resize(panels * k * nr, 0.0);
    if k == 0 {
        return;
    }
    for (p, panel) in buf[..panels * k * nr].chunks_exact_mut(k * nr).enumerate() {
        match nr {
            32 => interleave::<32>(panel, k, |c| row(p * nr + c)),
            16 => interleave::<16>(panel, k, |c| row(p * nr + c)),
            8 => interleave::<8>(panel, k, |c| row(p * nr + c)),
            _ => {
                for c in 0..nr {
                    let r = row(p * nr + c);
                    for (l, dst) in panel[c..].iter_mut().step_by(nr).enumerate() {
                        *dst = r.map_or(0.0, |r| r[l]);
                    }
                }
            }
        }
    }
}

/// `dst[l * N + i] = row(i)[l]` for `l < k`, `i < N` (zero for a missing
/// row; `dst` holds exactly `k * N` values): `N` rows written side by side, one contiguous group of
/// `N` values per `l`, which keeps the writes sequential.
#[inline(always)]
fn interleave<'a, const N: usize>(
    dst: &mut [f32],
    k: usize,
    row: impl Fn(usize) -> Option<&'a [f32]>,
) {
    let rows: [Option<&[f32]>; N] = core::array::from_fn(|i| row(i).map(|r| &r[..k]));
    if rows.iter().all(Option::is_some) {
        let rows: [&[f32]; N] = core::array::from_fn(|i| rows[i].unwrap_or(&[]));
        for (l, group) in dst.chunks_exact_mut(N).enumerate().take(k) {
            for (g, r) in group.iter_mut().zip(rows) {
                *g = r[l];
            }
        }
        return;
    }
    for (i, r) in rows.iter().enumerate() {
        for (l, d) in dst[i..].iter_mut().step_by(N).enumerate() {
            *d = r.map_or(0.0, |r| r[l]);
        }
    }
}

/// One step of an `MR x 2L` tile: `xt` is a slice of a packed tile of `X`
/// rows, `wt` the same slice of a packed panel of `W` columns, and `acc` the
/// tile's `MR x 2` accumulators, resumed and saved.
#[inline(always)]
fn tile<S: pulp::Simd>(simd: S, xt: &[f32], wt: &[f32], acc: &mut [S::f32s]) {
    let (wv, _) = S::as_simd_f32s(wt);
    let zero = simd.splat_f32s(0.0);
    let mut a = [[zero; NV]; MR];
    for i in 0..MR {
        for v in 0..NV {
            a[i][v] = acc[NV * i + v];
        }
    }
    // Plain loops, no closures: a closure would be compiled without the
    // level's target features and move vectors through memory.
    for (wk, xs) in wv.chunks_exact(NV).zip(xt.chunks_exact(MR)) {
        let mut wr = [zero; NV];
        wr.copy_from_slice(wk);
        for i in 0..MR {
            let xb = simd.splat_f32s(xs[i]);
            for v in 0..NV {
                a[i][v] = simd.mul_add_e_f32s(xb, wr[v], a[i][v]);
            }
        }
    }
    for i in 0..MR {
        for v in 0..NV {
            acc[NV * i + v] = a[i][v];
        }
    }
}
