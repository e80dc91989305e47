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
//! `W` is packed once per call (panels of `2 L` columns, `k`-major) into a
//! buffer of the calling thread that every task reads; the broadcasts read
//! the rows of `X` where they are, so `X` is never packed. The weights stay
//! where they are (memory-mapped) and no copy outlives the call.

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

/// Rows of `X` per task at most: the block's slice of `KC` columns (under
/// 150 KB) stays in L2 while every panel of `W` passes over it.
const MC: usize = 24 * MR;

/// Values of `k` per step at most (a panel's slice, `KC x 2L`, stays in L1).
const KC: usize = 256;

/// Panels of `W` packed per task of the packing pass.
const PACK_PANELS: usize = 8;

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
    let (m, n, k) = (x.rows(), w.rows(), x.cols());
    if y.is_empty() {
        return Ok(());
    }
    if k == 0 {
        y.fill(0.0);
        return Ok(());
    }
    let nr = NV * s.vectorize(Lanes);
    let panels = n.div_ceil(nr);
    // All of `W` is packed once, by every thread, before any product: each
    // panel is then shared by every block of rows instead of being packed
    // again for each. The buffer is the calling thread's, reused across calls
    // (taken out and put back, so a nested call only allocates its own).
    let mut wp = PACKED_W.with(|c| c.take());
    wp.clear();
    wp.resize(panels * k * nr, 0.0);
    threads.for_each_chunk(&mut wp, PACK_PANELS * k * nr, |c, chunk| {
        pack_cols(chunk, c * PACK_PANELS, nr, k, |j| (j < n).then(|| w.row(j)));
    });
    // Tasks are blocks of rows times ranges of panels: with many rows only
    // rows are cut; with few, panels are cut too so that every thread works.
    let row_tasks = m.div_ceil(MC);
    let want = threads.count() * 4;
    let panel_tasks = want.div_ceil(row_tasks).min(panels);
    let per_task = panels.div_ceil(panel_tasks);
    let panel_tasks = panels.div_ceil(per_task);
    // SAFETY: `Out` for row 0, column 0 of `y` with row stride n; each task
    // writes rows i0..i1 < m and columns j0..j1 <= n only, i.e. offsets
    // < m * n = y.len(); tasks have disjoint row x column ranges and `y` is
    // exclusively borrowed here.
    let out = unsafe { Out::new(y.as_mut_ptr(), n, 0) };
    let packed: &[f32] = &wp;
    threads.for_each_index(row_tasks * panel_tasks, |t| {
        let (ri, pi) = (t / panel_tasks, t % panel_tasks);
        let i0 = ri * MC;
        let p0 = pi * per_task;
        s.vectorize(Task {
            x,
            packed,
            n,
            rows: i0..(i0 + MC).min(m),
            panels: p0..(p0 + per_task).min(panels),
            out,
        });
    });
    PACKED_W.with(|c| c.set(wp));
    Ok(())
}

/// The number of `f32` lanes of a level's vector.
struct Lanes;

impl pulp::WithSimd for Lanes {
    type Output = usize;

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) -> usize {
        core::mem::size_of::<S::f32s>() / 4
    }
}

thread_local! {
    /// The calling thread's packed `W`, kept for the next call.
    static PACKED_W: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Rows `rows` x the columns of panels `panels` of the product.
struct Task<'a> {
    x: MatRef<'a>,
    packed: &'a [f32],
    n: usize,
    rows: core::ops::Range<usize>,
    panels: core::ops::Range<usize>,
    out: Out,
}

impl pulp::WithSimd for Task<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, simd: S) {
        let Task {
            x,
            packed,
            n,
            rows,
            panels,
            out,
        } = self;
        let lanes = core::mem::size_of::<S::f32s>() / 4;
        let nr = NV * lanes;
        let k = x.cols();
        // Steps along `k` of equal length: a panel's slice stays in L1 while
        // every tile of rows passes; between steps the accumulators wait in
        // `y` itself, which changes no operation.
        let steps = k.div_ceil(KC);
        let kc_max = k.div_ceil(steps);
        let zero = simd.splat_f32s(0.0);
        let mut edge = [0.0f32; MR * KC];
        let mut buf = [0.0f32; 16 * NV];
        let buf = &mut buf[..nr];
        for step in 0..steps {
            let k0 = step * kc_max;
            let kc = kc_max.min(k - k0);
            for p in panels.clone() {
                let wt = &packed[(p * k + k0) * nr..(p * k + k0 + kc) * nr];
                let j = p * nr;
                let live_cols = nr.min(n - j);
                let mut i = rows.start;
                while i < rows.end {
                    let live_rows = MR.min(rows.end - i);
                    let mut acc = [[zero; NV]; MR];
                    // Full tiles read `X` where it is; an edge tile reads a
                    // copy with zero rows past the end.
                    let (xp, stride) = if live_rows == MR {
                        (&x.as_slice()[i * x.stride() + k0..], x.stride())
                    } else {
                        for (r, e) in edge.chunks_exact_mut(kc).take(MR).enumerate() {
                            if r < live_rows {
                                e.copy_from_slice(&x.row(i + r)[k0..k0 + kc]);
                            } else {
                                e.fill(0.0);
                            }
                        }
                        (&edge[..], kc)
                    };
                    // The tile's rows are inside `xp`: row r < MR starts at
                    // r * stride and holds kc values.
                    assert!(xp.len() >= (MR - 1) * stride + kc);
                    if step > 0 {
                        for (r, a) in acc.iter_mut().enumerate().take(live_rows) {
                            // SAFETY: row i + r < rows.end <= m and columns
                            // j..j + live_cols <= n belong to this task only.
                            let seg = unsafe { out.slice_mut(i + r, j, live_cols) };
                            if live_cols == nr {
                                a.copy_from_slice(S::as_simd_f32s(seg).0);
                            } else {
                                buf[..live_cols].copy_from_slice(seg);
                                a.copy_from_slice(S::as_simd_f32s(buf).0);
                            }
                        }
                    }
                    // SAFETY: asserted just above.
                    unsafe { tile::<S>(simd, xp.as_ptr(), stride, kc, wt, &mut acc) };
                    for (r, a) in acc.iter().enumerate().take(live_rows) {
                        // SAFETY: as above.
                        let seg = unsafe { out.slice_mut(i + r, j, live_cols) };
                        if live_cols == nr {
                            S::as_mut_simd_f32s(seg).0.copy_from_slice(a);
                        } else {
                            // The last panel, narrower than a tile: the
                            // columns past `n` are never stored.
                            S::as_mut_simd_f32s(buf).0.copy_from_slice(a);
                            seg.copy_from_slice(&buf[..live_cols]);
                        }
                    }
                    i += live_rows;
                }
            }
        }
    }
}

/// Packs rows `first * nr..` of `W` (`row(c)`, `None` = zeros) into
/// `buf.len() / (k * nr)` panels of `nr` columns of the product, each
/// `k`-major: `buf[(p * k + l) * nr + c]`.
fn pack_cols<'a>(
    buf: &mut [f32],
    first: usize,
    nr: usize,
    k: usize,
    row: impl Fn(usize) -> Option<&'a [f32]>,
) {
    for (p, panel) in buf.chunks_exact_mut(k * nr).enumerate() {
        let c0 = (first + p) * nr;
        match nr {
            32 => interleave::<32>(panel, k, |c| row(c0 + c)),
            16 => interleave::<16>(panel, k, |c| row(c0 + c)),
            8 => interleave::<8>(panel, k, |c| row(c0 + c)),
            _ => {
                for c in 0..nr {
                    let r = row(c0 + c);
                    for (l, dst) in panel[c..].iter_mut().step_by(nr).enumerate() {
                        *dst = r.map_or(0.0, |r| r[l]);
                    }
                }
            }
        }
    }
}

/// `dst[l * N + i] = row(i)[l]` for `l < k`, `i < N` (zero for a missing
/// row; `dst` holds exactly `k * N` values): `N` rows written side by side,
/// one contiguous group of `N` values per `l`, which keeps the writes
/// sequential.
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

/// One step of an `MR x 2L` tile: row `r` of the tile's `X` is `kc` values
/// at `x + r * stride`, `wt` is the same step of a packed panel of `W`
/// columns (at least `kc x 2L` values), and `acc` holds the tile's accumulators,
/// resumed and left for the next step.
///
/// # Safety
/// `x.add(r * stride + l)` is readable for every `r < MR` and `l < kc`.
#[inline(always)]
unsafe fn tile<S: pulp::Simd>(
    simd: S,
    x: *const f32,
    stride: usize,
    kc: usize,
    wt: &[f32],
    acc: &mut [[S::f32s; NV]; MR],
) {
    const { assert!(MR == 6) };
    let (wv, _) = S::as_simd_f32s(wt);
    assert!(wv.len() >= kc * NV);
    let zero = simd.splat_f32s(0.0);
    let mut a = *acc;
    // Rows 3..6 from a second base, so that every row is a base plus 0, 1
    // or 2 strides: two pointers and a stride in registers, not six.
    // SAFETY: row 3 starts inside the rows the caller vouches for.
    let x3 = unsafe { x.add(3 * stride) };
    // Plain loops, no closures: a closure would be compiled without the
    // level's target features and move vectors through memory.
    let (mut px, mut p3) = (x, x3);
    for wk in wv[..kc * NV].chunks_exact(NV) {
        let mut wr = [zero; NV];
        wr.copy_from_slice(wk);
        // SAFETY: this is step l < kc of rows r < MR, readable by the
        // contract; the pointers move on by one value per step.
        let xv = unsafe {
            let v = [
                *px,
                *px.add(stride),
                *px.add(2 * stride),
                *p3,
                *p3.add(stride),
                *p3.add(2 * stride),
            ];
            px = px.add(1);
            p3 = p3.add(1);
            v
        };
        for i in 0..MR {
            let xb = simd.splat_f32s(xv[i]);
            for v in 0..NV {
                a[i][v] = simd.mul_add_e_f32s(xb, wr[v], a[i][v]);
            }
        }
    }
    *acc = a;
}
