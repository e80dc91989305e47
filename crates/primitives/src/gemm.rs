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
use crate::matmul::{check_out, check_product, Out};
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
const KC: usize = 384;

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
    let (n, k) = (w.rows(), x.cols());
    if y.is_empty() {
        return Ok(());
    }
    if k == 0 {
        y.fill(0.0);
        return Ok(());
    }
    // All of `W` is packed once, by every thread, before any product: each
    // panel is then shared by every block of rows instead of being packed
    // again for each. The buffer is the calling thread's, reused across calls
    // (taken out and put back, so a nested call only allocates its own).
    let mut wp = PACKED_W.with(|c| c.take());
    let nr = pack_into(s, threads, w, &mut wp);
    products(s, threads, x, &wp, nr, n, None, y);
    PACKED_W.with(|c| c.set(wp));
    Ok(())
}

/// `W` (`n x k`) packed once for [`matmul_packed`] at one SIMD level, to be
/// reused by every call (a layer's weights): the packing pass of
/// [`matmul_sequential`] is then paid once instead of per call, at the cost of
/// a copy of `W` held for as long as the packing lives.
///
/// ```
/// use patchbay_primitives::gemm::{matmul_packed, PackedW};
/// use patchbay_primitives::{MatRef, Simd, Threads};
/// let (s, t) = (Simd::detect(), Threads::single());
/// let w = [1.0, 0.0, 1.0, 1.0, 0.0, 2.0]; // 3 x 2
/// let packed = PackedW::new(s, &t, MatRef::new(&w, 3, 2).unwrap());
/// let x = [1.0, 2.0]; // 1 x 2
/// let mut y = [0.0; 3];
/// let bias = [0.5, 0.0, -1.0];
/// matmul_packed(s, &t, MatRef::new(&x, 1, 2).unwrap(), &packed, Some(&bias), &mut y).unwrap();
/// assert_eq!(y, [1.5, 3.0, 3.0]);
/// ```
pub struct PackedW {
    data: Vec<f32>,
    nr: usize,
    n: usize,
    k: usize,
}

impl PackedW {
    /// Packs `w` (`n x k`, one output a row) for level `s`, on `threads`.
    pub fn new(s: Simd, threads: &Threads, w: MatRef<'_>) -> PackedW {
        let mut data = Vec::new();
        let nr = pack_into(s, threads, w, &mut data);
        PackedW {
            data,
            nr,
            n: w.rows(),
            k: w.cols(),
        }
    }

    /// Whether the packing serves level `s` (levels differ in panel width).
    pub fn fits(&self, s: Simd) -> bool {
        self.nr == NV * s.vectorize(Lanes)
    }

    /// Outputs (rows of `W`).
    pub fn rows(&self) -> usize {
        self.n
    }

    /// Inputs (columns of `W`).
    pub fn cols(&self) -> usize {
        self.k
    }
}

impl core::fmt::Debug for PackedW {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "PackedW({} x {}, panels of {})", self.n, self.k, self.nr)
    }
}

/// [`matmul_sequential`] with `W` packed beforehand, plus an optional `bias`
/// (`n` values) added to each row of the result as it is stored: each output
/// is `(Σ in plain k order) + bias`, the bits of [`matmul_sequential`]
/// followed by adding the bias in a second pass, without that pass.
pub fn matmul_packed(
    s: Simd,
    threads: &Threads,
    x: MatRef<'_>,
    w: &PackedW,
    bias: Option<&[f32]>,
    y: &mut [f32],
) -> Result<(), ShapeError> {
    let (m, n, k) = (x.rows(), w.n, w.k);
    if x.cols() != k {
        return Err(ShapeError::Mismatch {
            what: "matmul_packed: x.cols vs w.cols (k)",
            left: x.cols(),
            right: k,
        });
    }
    if !w.fits(s) {
        return Err(ShapeError::Mismatch {
            what: "matmul_packed: panel width of the packing vs of this SIMD level",
            left: w.nr,
            right: NV * s.vectorize(Lanes),
        });
    }
    if let Some(b) = bias.filter(|b| b.len() != n) {
        return Err(ShapeError::Len {
            what: "matmul_packed bias (n)",
            expected: n,
            found: b.len(),
        });
    }
    check_out(m, n, y, "matmul_packed y (m * n)")?;
    if y.is_empty() {
        return Ok(());
    }
    if k == 0 {
        match bias {
            // The empty sum plus the bias, as the stored sum would be.
            Some(b) => y.chunks_exact_mut(n).for_each(|row| {
                row.iter_mut().zip(b).for_each(|(o, b)| *o = 0.0 + b);
            }),
            None => y.fill(0.0),
        }
        return Ok(());
    }
    products(s, threads, x, &w.data, w.nr, n, bias, y);
    Ok(())
}

/// Packs `w` (`n x k`, `k > 0`) into `wp` as panels of `nr` columns for level
/// `s`, on every thread, and returns `nr`.
fn pack_into(s: Simd, threads: &Threads, w: MatRef<'_>, wp: &mut Vec<f32>) -> usize {
    let (n, k) = (w.rows(), w.cols());
    let nr = NV * s.vectorize(Lanes);
    let panels = n.div_ceil(nr);
    wp.clear();
    wp.resize(panels * k * nr, 0.0);
    threads.for_each_chunk(wp, PACK_PANELS * k * nr, |c, chunk| {
        pack_cols(chunk, c * PACK_PANELS, nr, k, |j| (j < n).then(|| w.row(j)));
    });
    nr
}

/// `y = x · Wᵀ (+ bias)` from `packed` (`W` in panels of `nr`, `n` columns of
/// the product); shapes are checked, `k > 0` and `y` is not empty.
#[allow(clippy::too_many_arguments)]
fn products(
    s: Simd,
    threads: &Threads,
    x: MatRef<'_>,
    packed: &[f32],
    nr: usize,
    n: usize,
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    let m = x.rows();
    let panels = n.div_ceil(nr);
    // Tasks are blocks of rows times ranges of panels: with many rows only
    // rows are cut; with few, panels are cut too so that every thread works.
    // Blocks of at most `MC` rows, as many as a multiple of the thread count
    // once there are enough: a thread's last block would otherwise leave the
    // others waiting for up to a block's time (a whole tile's worth of rows
    // fewer in each block costs nothing).
    let nt = threads.count();
    let mut row_tasks = m.div_ceil(MC);
    if row_tasks >= nt {
        row_tasks = row_tasks.next_multiple_of(nt);
    }
    let rows_per = m.div_ceil(row_tasks).next_multiple_of(MR);
    let row_tasks = m.div_ceil(rows_per);
    // One thread runs its tasks in turn: cutting the panels gains nothing.
    let want = if nt == 1 { 1 } else { nt * 4 };
    let panel_tasks = want.div_ceil(row_tasks).min(panels);
    let per_task = panels.div_ceil(panel_tasks);
    let panel_tasks = panels.div_ceil(per_task);
    // SAFETY: `Out` for row 0, column 0 of `y` with row stride n; each task
    // writes rows i0..i1 < m and columns j0..j1 <= n only, i.e. offsets
    // < m * n = y.len(); tasks have disjoint row x column ranges and `y` is
    // exclusively borrowed here.
    let out = unsafe { Out::new(y.as_mut_ptr(), n, 0) };
    threads.for_each_index(row_tasks * panel_tasks, |t| {
        let (ri, pi) = (t / panel_tasks, t % panel_tasks);
        let i0 = ri * rows_per;
        let p0 = pi * per_task;
        s.vectorize(Task {
            x,
            packed,
            n,
            bias,
            rows: i0..(i0 + rows_per).min(m),
            panels: p0..(p0 + per_task).min(panels),
            out,
        });
    });
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
    bias: Option<&'a [f32]>,
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
            bias,
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
        // Written before it is read (each step's copy below sets all `MR x
        // kc` values it uses), so it is not zeroed first: a product with a
        // short `k` (attention scores) would pay more to clear it than to use it.
        let mut edge = [core::mem::MaybeUninit::<f32>::uninit(); MR * KC];
        let mut buf = [0.0f32; 16 * NV];
        let buf = &mut buf[..nr];
        // A block whose rows are not a whole number of tiles ends with an
        // edge tile, read from a copy with zero rows past the end: one copy
        // per step, shared by every panel.
        let edge_start = rows.end - rows.len() % MR;
        for step in 0..steps {
            let k0 = step * kc_max;
            let kc = kc_max.min(k - k0);
            let mut edge_rows: &[f32] = &[];
            if edge_start < rows.end {
                for (r, e) in edge.chunks_exact_mut(kc).take(MR).enumerate() {
                    if edge_start + r < rows.end {
                        let src = &x.row(edge_start + r)[k0..k0 + kc];
                        for (d, v) in e.iter_mut().zip(src) {
                            d.write(*v);
                        }
                    } else {
                        e.fill(core::mem::MaybeUninit::new(0.0));
                    }
                }
                // SAFETY: the loop above wrote all of `edge[..MR * kc]`
                // (`MR * kc <= MR * KC`), and `MaybeUninit<f32>` has the
                // layout of `f32`.
                edge_rows = unsafe { core::slice::from_raw_parts(edge.as_ptr().cast(), MR * kc) };
            }
            for p in panels.clone() {
                let wt = &packed[(p * k + k0) * nr..(p * k + k0 + kc) * nr];
                let j = p * nr;
                let live_cols = nr.min(n - j);
                // The bias joins at the last step's store: one addition per
                // output after its whole sum, as a second pass would add it.
                let add = match bias {
                    Some(b) if step + 1 == steps => {
                        buf.fill(0.0);
                        buf[..live_cols].copy_from_slice(&b[j..j + live_cols]);
                        let mut v = [zero; NV];
                        v.copy_from_slice(S::as_simd_f32s(buf).0);
                        Some(v)
                    }
                    _ => None,
                };
                let mut i = rows.start;
                while i < rows.end {
                    let live_rows = MR.min(rows.end - i);
                    let mut acc = [[zero; NV]; MR];
                    // Full tiles read `X` where it is.
                    let (xp, stride) = if live_rows == MR {
                        (&x.as_slice()[i * x.stride() + k0..], x.stride())
                    } else {
                        (edge_rows, kc)
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
                    if let Some(add) = add {
                        for a in acc.iter_mut() {
                            for (v, b) in a.iter_mut().zip(add) {
                                *v = simd.add_f32s(*v, b);
                            }
                        }
                    }
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
    const { assert!(MR == 6 && NV == 2) };
    let (wv, _) = S::as_simd_f32s(wt);
    assert!(wv.len() >= kc * NV);
    let mut a = *acc;
    // Rows 3..6 from a second base, so that every row is a base plus 0, 1
    // or 2 strides: two pointers and a stride in registers, not six.
    // SAFETY: row 3 starts inside the rows the caller vouches for.
    let x3 = unsafe { x.add(3 * stride) };
    // Plain loops, no closures: a closure would be compiled without the
    // level's target features and move vectors through memory. Two values of
    // `k` per pass halve the loop's pointer and counter work; the order of
    // the multiply-adds on each accumulator is unchanged.
    let (mut px, mut p3) = (x, x3);
    let mut steps = wv[..kc * NV].chunks_exact(2 * NV);
    for wk in &mut steps {
        // SAFETY: these are steps l, l + 1 < kc of rows r < MR, readable by
        // the contract; the pointers move on by two values per pass.
        unsafe {
            step::<S>(simd, px, p3, stride, &wk[..NV], &mut a);
            step::<S>(simd, px.add(1), p3.add(1), stride, &wk[NV..], &mut a);
            px = px.add(2);
            p3 = p3.add(2);
        }
    }
    if let [w0, w1] = *steps.remainder() {
        // SAFETY: step kc - 1 of rows r < MR, as above.
        unsafe { step::<S>(simd, px, p3, stride, &[w0, w1], &mut a) };
    }
    *acc = a;
}

/// One value of `k` for the whole tile: `MR` broadcasts of `X` (rows 0..3 at
/// `px` plus 0, 1, 2 strides, rows 3..6 at `p3` likewise) times the two
/// vectors `wk` of `W`.
///
/// # Safety
/// `px.add(r * stride)` and `p3.add(r * stride)` are readable for `r < 3`.
#[inline(always)]
unsafe fn step<S: pulp::Simd>(
    simd: S,
    px: *const f32,
    p3: *const f32,
    stride: usize,
    wk: &[S::f32s],
    a: &mut [[S::f32s; NV]; MR],
) {
    let wr = [wk[0], wk[1]];
    // SAFETY: by the contract.
    let xv = unsafe {
        [
            *px,
            *px.add(stride),
            *px.add(2 * stride),
            *p3,
            *p3.add(stride),
            *p3.add(2 * stride),
        ]
    };
    for i in 0..MR {
        let xb = simd.splat_f32s(xv[i]);
        for v in 0..NV {
            a[i][v] = simd.mul_add_e_f32s(xb, wr[v], a[i][v]);
        }
    }
}
