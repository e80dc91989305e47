//! Matrix products `Y = X · Wᵀ` of f32 activations with f32 weights, and the
//! batch-invariant dot-product micro-kernel that every exact product (f32 and
//! dequantised weights, one row or many) runs.
//!
//! Weights are stored as nn.Linear and GGUF store them: `W` is `n x k` row-major
//! (one row per output feature). Activations `X` are `m x k` row-major (one row
//! per token) and the product is `Y = X · Wᵀ`, `m x n` row-major.
//!
//! # One operation order per output
//!
//! Every output `y[i][j] = Σ_k x[i][k] · w[j][k]` is computed with the same
//! float operations whatever the shape of the product it belongs to: one SIMD
//! accumulator of `L` lanes (`L` = 16 on AVX-512, 8 on AVX2, 1 in the portable
//! scalar path), starting at zero and fed by fused multiply-adds (plain
//! multiply-then-add in the scalar path) of `L` consecutive elements from
//! `k = 0` on; the last `k % L` elements, zero-padded to a vector, take one
//! more multiply-add; then the lanes are summed by pulp's fixed horizontal
//! reduction tree. The kernels compute tiles of `MR` rows of `X` times `NR`
//! rows of `W` with `MR x NR` accumulators in registers (sharing loads), but a
//! tile never mixes accumulators (and long rows, cut into steps along `k`
//! for cache blocking, keep their accumulators in memory between steps, which
//! changes no operation), so a row of `Y` is bit-identical whether it
//! is computed alone (decoding), with other rows of the same prompt (prefill),
//! or packed with other sequences' rows, and for any thread count: the work is
//! cut along `n` (weight rows) into blocks and each output is computed by
//! exactly one thread. The quantised products (`quant::matmul_q`,
//! `quant::matvec_q`) run the same kernel on exactly
//! dequantised weights, so they follow the same order too. faer is no longer
//! used: its blocking depends on the shape, so its rows do not have this
//! property.

use crate::error::ShapeError;
use crate::simd::Simd;
use crate::tensor::MatRef;
use crate::threads::Threads;

/// Weight rows per task when `X` has several rows, for short rows: the block of
/// `W` a task streams for every tile of `X` rows stays in L2. Any blocking
/// gives the same bits.
pub const MATMUL_CHUNK_N: usize = 128;

/// Weight rows per task for a single row of `X` (decoding): large enough to
/// amortise the pool hand-off, small enough for work stealing to balance.
pub const MATVEC_CHUNK_ROWS: usize = 64;

/// Weight rows per micro-kernel tile.
pub(crate) const NR: usize = 4;

/// Bytes of weight rows [`block`] keeps in L1 while it sweeps the rows of `X`.
const L1_GROUP_BYTES: usize = 32 << 10;

/// Bytes of `W` a task keeps hot in L2 while it sweeps the rows of `X`.
const BLOCK_BYTES: usize = 1 << 20;

/// Rows of `X` per micro-kernel tile at SIMD level `S`: 4 x [`NR`] accumulators
/// with 32 vector registers (AVX-512); 3 x [`NR`] with 16 (AVX2: 12
/// accumulators, three vectors of `X` and one of `W`, so a step loads 7
/// vectors for 12 multiply-adds where 2 x [`NR`] loads 6 for 8); 2 x [`NR`] on
/// the scalar level.
#[inline(always)]
pub(crate) fn mr_max<S: pulp::Simd>() -> usize {
    if core::mem::size_of::<S::f32s>() >= 64 {
        4
    } else if core::mem::size_of::<S::f32s>() == 32 {
        3
    } else {
        2
    }
}

/// A tile of `MR x NR` lane-wise accumulators.
pub(crate) type Acc<S, const MR: usize, const NR: usize> = [[<S as pulp::Simd>::f32s; NR]; MR];

/// Zeroed accumulators.
#[inline(always)]
pub(crate) fn acc_zero<S: pulp::Simd, const MR: usize, const NR: usize>(simd: S) -> Acc<S, MR, NR> {
    [[simd.splat_f32s(0.0); NR]; MR]
}

/// `acc[i][j] += x[i] * w[j]` lane-wise, `L` elements at a time from the start
/// of the slices, then (if the length is not a multiple of `L`) the zero-padded
/// rest as one more vector. All slices must have the same length.
///
/// Splitting a long product into several calls gives the same bits as one
/// call as long as every call but the last covers a multiple of `L` elements.
#[inline(always)]
pub(crate) fn tile_acc<S: pulp::Simd, const MR: usize, const NR: usize>(
    simd: S,
    acc: &mut Acc<S, MR, NR>,
    x: [&[f32]; MR],
    w: [&[f32]; NR],
) {
    let len = if NR > 0 { w[0].len() } else { 0 };
    let xs: [(&[S::f32s], &[f32]); MR] = x.map(|r| S::as_simd_f32s(&r[..len]));
    let ws: [(&[S::f32s], &[f32]); NR] = w.map(|r| S::as_simd_f32s(&r[..len]));
    let nv = if NR > 0 { ws[0].0.len() } else { 0 };
    let xh: [&[S::f32s]; MR] = core::array::from_fn(|i| &xs[i].0[..nv]);
    let wh: [&[S::f32s]; NR] = core::array::from_fn(|j| &ws[j].0[..nv]);
    let mut a = *acc;
    let zero = simd.splat_f32s(0.0);
    for t in 0..nv {
        // Plain loops, no closures: a closure would be compiled without the
        // level's target features and move vectors through memory.
        let mut xv = [zero; MR];
        for i in 0..MR {
            xv[i] = xh[i][t];
        }
        for j in 0..NR {
            let wv = wh[j][t];
            for i in 0..MR {
                a[i][j] = simd.mul_add_e_f32s(xv[i], wv, a[i][j]);
            }
        }
    }
    if NR > 0 && !ws[0].1.is_empty() {
        let mut xv = [zero; MR];
        for i in 0..MR {
            xv[i] = simd.partial_load_f32s(xs[i].1);
        }
        for j in 0..NR {
            let wv = simd.partial_load_f32s(ws[j].1);
            for i in 0..MR {
                a[i][j] = simd.mul_add_e_f32s(xv[i], wv, a[i][j]);
            }
        }
    }
    *acc = a;
}

/// The horizontal sums of a tile of accumulators.
#[inline(always)]
pub(crate) fn tile_sum<S: pulp::Simd, const MR: usize, const NR: usize>(
    simd: S,
    acc: &Acc<S, MR, NR>,
) -> [[f32; NR]; MR] {
    let mut r = [[0.0f32; NR]; MR];
    for i in 0..MR {
        for j in 0..NR {
            r[i][j] = simd.reduce_sum_f32s(acc[i][j]);
        }
    }
    r
}

/// The instruction sets of the level a block runs at, found once per block,
/// for [`put_tile`]'s shuffles.
#[derive(Clone, Copy)]
pub(crate) struct Lanes {
    #[cfg(target_arch = "x86_64")]
    v4: Option<pulp::x86::V4>,
    #[cfg(target_arch = "x86_64")]
    v3: Option<pulp::x86::V3>,
}

impl Lanes {
    /// The shuffles usable at level `S` (none on the scalar level).
    #[inline(always)]
    pub(crate) fn of<S: pulp::Simd>() -> Lanes {
        #[cfg(target_arch = "x86_64")]
        {
            let lanes = core::mem::size_of::<S::f32s>() / 4;
            Lanes {
                v4: if lanes == 16 {
                    pulp::x86::V4::try_new()
                } else {
                    None
                },
                v3: if lanes == 8 {
                    pulp::x86::V3::try_new()
                } else {
                    None
                },
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        Lanes {}
    }
}

/// Writes the horizontal sums of a full `MR x NR` tile to rows `i0..i0 + MR`,
/// columns `j..j + NR` of `out`: each output gets exactly
/// `reduce_sum_f32s` of its accumulator (pulp's halving tree: lane `i` plus
/// lane `i + L/2`, then `i + L/4`, ..., low half first), but the trees of the
/// 16 (AVX-512) or 8 (AVX2) accumulators of a tile run side by side in whole
/// vectors, with shuffles that pair the same lanes: a quarter of the
/// instructions of one reduction per output, and the same bits.
#[inline(always)]
pub(crate) fn put_tile<S: pulp::Simd, const MR: usize>(
    simd: S,
    lanes: Lanes,
    acc: &Acc<S, MR, NR>,
    out: Out,
    i0: usize,
    j: usize,
) {
    #[cfg(target_arch = "x86_64")]
    {
        use core::arch::x86_64::{__m128, __m256, __m512};
        const { assert!(NR == 4) };
        if let (Some(v4), 16, 4) = (lanes.v4, core::mem::size_of::<S::f32s>() / 4, MR) {
            let f = v4.avx512f;
            let a: [[__m512; 4]; 4] = core::array::from_fn(|i| {
                core::array::from_fn(|c| {
                    // SAFETY: at this level `S::f32s` is 16 f32 lanes, the
                    // size and layout of `__m512`.
                    unsafe { core::mem::transmute_copy::<S::f32s, __m512>(&acc[i][c]) }
                })
            });
            // Column c, rows (0, 1) and (2, 3): lanes i + 8 onto i (level 1),
            // then i + 4 onto i (level 2): quarter r = row r's 4 partials.
            let mut q = [f._mm512_setzero_ps(); 4];
            for (c, qc) in q.iter_mut().enumerate() {
                let p01 = f._mm512_add_ps(
                    f._mm512_shuffle_f32x4::<0b01_00_01_00>(a[0][c], a[1][c]),
                    f._mm512_shuffle_f32x4::<0b11_10_11_10>(a[0][c], a[1][c]),
                );
                let p23 = f._mm512_add_ps(
                    f._mm512_shuffle_f32x4::<0b01_00_01_00>(a[2][c], a[3][c]),
                    f._mm512_shuffle_f32x4::<0b11_10_11_10>(a[2][c], a[3][c]),
                );
                *qc = f._mm512_add_ps(
                    f._mm512_shuffle_f32x4::<0b10_00_10_00>(p01, p23),
                    f._mm512_shuffle_f32x4::<0b11_01_11_01>(p01, p23),
                );
            }
            // Lanes i + 2 onto i within each quarter (level 3), then lane 1
            // onto 0 (level 4): quarter r = [y(r, 0), .., y(r, 3)].
            let r01 = f._mm512_add_ps(
                f._mm512_shuffle_ps::<0b01_00_01_00>(q[0], q[1]),
                f._mm512_shuffle_ps::<0b11_10_11_10>(q[0], q[1]),
            );
            let r23 = f._mm512_add_ps(
                f._mm512_shuffle_ps::<0b01_00_01_00>(q[2], q[3]),
                f._mm512_shuffle_ps::<0b11_10_11_10>(q[2], q[3]),
            );
            let v = f._mm512_add_ps(
                f._mm512_shuffle_ps::<0b10_00_10_00>(r01, r23),
                f._mm512_shuffle_ps::<0b11_01_11_01>(r01, r23),
            );
            let rows: [__m128; 4] = [
                f._mm512_extractf32x4_ps::<0>(v),
                f._mm512_extractf32x4_ps::<1>(v),
                f._mm512_extractf32x4_ps::<2>(v),
                f._mm512_extractf32x4_ps::<3>(v),
            ];
            for (i, r) in rows.iter().enumerate() {
                // SAFETY: `__m128` is four f32.
                out.put4(i0 + i, j, unsafe {
                    core::mem::transmute_copy::<__m128, [f32; 4]>(r)
                });
            }
            return;
        }
        if let (Some(v3), 8, 2) = (lanes.v3, core::mem::size_of::<S::f32s>() / 4, MR) {
            let f = v3.avx;
            let a: [[__m256; 4]; 2] = core::array::from_fn(|i| {
                core::array::from_fn(|c| {
                    // SAFETY: at this level `S::f32s` is 8 f32 lanes, the size
                    // and layout of `__m256`.
                    unsafe { core::mem::transmute_copy::<S::f32s, __m256>(&acc[i][c]) }
                })
            });
            // Column c, rows (0, 1): lanes i + 4 onto i (level 1): 128-bit
            // half r = row r's 4 partials.
            let mut q = [f._mm256_setzero_ps(); 4];
            for (c, qc) in q.iter_mut().enumerate() {
                *qc = f._mm256_add_ps(
                    f._mm256_permute2f128_ps::<0x20>(a[0][c], a[1][c]),
                    f._mm256_permute2f128_ps::<0x31>(a[0][c], a[1][c]),
                );
            }
            let r01 = f._mm256_add_ps(
                f._mm256_shuffle_ps::<0b01_00_01_00>(q[0], q[1]),
                f._mm256_shuffle_ps::<0b11_10_11_10>(q[0], q[1]),
            );
            let r23 = f._mm256_add_ps(
                f._mm256_shuffle_ps::<0b01_00_01_00>(q[2], q[3]),
                f._mm256_shuffle_ps::<0b11_10_11_10>(q[2], q[3]),
            );
            let v = f._mm256_add_ps(
                f._mm256_shuffle_ps::<0b10_00_10_00>(r01, r23),
                f._mm256_shuffle_ps::<0b11_01_11_01>(r01, r23),
            );
            // SAFETY: `__m256` is eight f32.
            let v = unsafe { core::mem::transmute_copy::<__m256, [f32; 8]>(&v) };
            out.put4(i0, j, [v[0], v[1], v[2], v[3]]);
            out.put4(i0 + 1, j, [v[4], v[5], v[6], v[7]]);
            return;
        }
        if let (Some(_), 8, 3) = (lanes.v3, core::mem::size_of::<S::f32s>() / 4, MR) {
            // Rows 0 and 1 side by side as above, row 2 on its own.
            put_tile::<S, 2>(simd, lanes, &[acc[0], acc[1]], out, i0, j);
            for (jj, a) in acc[2].iter().enumerate() {
                out.put(i0 + 2, j + jj, simd.reduce_sum_f32s(*a));
            }
            return;
        }
    }
    let _ = lanes;
    let r = tile_sum(simd, acc);
    for (i, ri) in r.iter().enumerate() {
        for (jj, v) in ri.iter().enumerate() {
            out.put(i0 + i, j + jj, *v);
        }
    }
}

/// Where a block of outputs goes: `y[i * ld + j]` for rows `i` of `X` and
/// columns `j` of the block (already offset to the block's first column).
#[derive(Clone, Copy)]
pub(crate) struct Out {
    ptr: SyncPtr,
    ld: usize,
}

impl Out {
    /// A view of `y` (row stride `ld`) starting at column `col0`.
    ///
    /// # Safety
    /// Every `(i, j)` later passed to [`Out::put`] must satisfy
    /// `i * ld + col0 + j < y.len()` for the `y` the pointer came from, that
    /// allocation must stay exclusively borrowed by the caller while the view
    /// is used, and no two concurrent users may write the same element.
    pub(crate) unsafe fn new(ptr: *mut f32, ld: usize, col0: usize) -> Out {
        // SAFETY: the caller guarantees offsets stay in bounds (see above).
        let ptr = unsafe { ptr.add(col0) };
        Out {
            ptr: SyncPtr(ptr),
            ld,
        }
    }

    /// The same view moved right by `cols` elements (`ld` of them make a row).
    ///
    /// # Safety
    /// As for [`Out::new`], for the moved view.
    #[inline(always)]
    pub(crate) unsafe fn shifted(self, cols: usize) -> Out {
        // SAFETY: in bounds by the caller's contract.
        let ptr = unsafe { self.ptr.get().add(cols) };
        Out {
            ptr: SyncPtr(ptr),
            ld: self.ld,
        }
    }

    /// Writes output `(i, j)`.
    #[inline(always)]
    pub(crate) fn put(self, i: usize, j: usize, v: f32) {
        // SAFETY: in bounds and unaliased by the contract of `Out::new`.
        unsafe { *self.ptr.get().add(i * self.ld + j) = v }
    }

    /// Writes outputs `(i, j..j + live)`, the first `live` of `v`. A whole
    /// run is one copy of constant length, which compiles to vector moves
    /// (a copy of `live` values was a library `memcpy` call per run).
    #[inline(always)]
    pub(crate) fn put_run<const N: usize>(self, i: usize, j: usize, v: &[f32; N], live: usize) {
        if live == N {
            // SAFETY: in bounds and unaliased by the contract of `Out::new`.
            unsafe {
                core::ptr::copy_nonoverlapping(v.as_ptr(), self.ptr.get().add(i * self.ld + j), N)
            }
            return;
        }
        for (r, &x) in v.iter().enumerate().take(live) {
            self.put(i, j + r, x);
        }
    }

    /// Outputs `(i, j..j + len)` as a slice, to read and write.
    ///
    /// # Safety
    /// `(i, j + len - 1)` is in range (the contract of [`Out::new`]) and no
    /// other reference to those outputs exists while the slice lives.
    #[inline(always)]
    pub(crate) unsafe fn slice_mut<'y>(self, i: usize, j: usize, len: usize) -> &'y mut [f32] {
        // SAFETY: in bounds and unaliased by the caller's contract.
        unsafe { core::slice::from_raw_parts_mut(self.ptr.get().add(i * self.ld + j), len) }
    }

    /// Writes outputs `(i, j..j + 4)`.
    #[inline(always)]
    pub(crate) fn put4(self, i: usize, j: usize, v: [f32; 4]) {
        // SAFETY: in bounds (the caller passes `(i, j + 3)` in range too) and
        // unaliased by the contract of `Out::new`; unaligned write.
        unsafe {
            self.ptr
                .get()
                .add(i * self.ld + j)
                .cast::<[f32; 4]>()
                .write_unaligned(v)
        }
    }
}

/// `out[i][j] = dot(x row i, w row j)` for `i < m`, `j < nc`: tiles of
/// `MR x NR` (edge tiles narrower). Weight rows are taken in groups that fit
/// in L1, and each group meets every tile of `X` rows in turn.
#[inline(always)]
pub(crate) fn block<'a, S: pulp::Simd>(
    simd: S,
    m: usize,
    xrow: impl Fn(usize) -> &'a [f32] + Copy,
    nc: usize,
    wrow: impl Fn(usize) -> &'a [f32] + Copy,
    out: Out,
    stream: bool,
) {
    if nc == 0 {
        return;
    }
    // Groups of weight rows small enough to stay in L1 next to a tile of `X`
    // while every tile of `X` passes by: `W` then comes from L2 once per
    // group, `X` once per group and tile.
    let k = wrow(0).len();
    let mrm = mr_max::<S>();
    if k > KC_FROM && m > mrm {
        return block_kc(simd, m, xrow, nc, wrow, out);
    }
    let group = (L1_GROUP_BYTES / (4 * k.max(1)) / NR * NR).max(NR);
    let lanes = Lanes::of::<S>();
    let mut j0 = 0;
    while j0 < nc {
        let gc = group.min(nc - j0);
        let wg = move |j: usize| wrow(j0 + j);
        // SAFETY: columns j0..j0 + gc of this block, inside it (j0 + gc <= nc).
        let og = unsafe { out.shifted(j0) };
        // The first tile of `X` rows reads a streamed `W`'s group from
        // memory (the others find it in L1): it fetches ahead.
        let mut i = 0;
        while i < m {
            let mr = mrm.min(m - i);
            match mr {
                4 => rows_tile::<S, 4>(simd, lanes, i, xrow, gc, wg, og, stream && i == 0),
                3 => rows_tile::<S, 3>(simd, lanes, i, xrow, gc, wg, og, stream && i == 0),
                2 => rows_tile::<S, 2>(simd, lanes, i, xrow, gc, wg, og, stream && i == 0),
                _ => rows_tile::<S, 1>(simd, lanes, i, xrow, gc, wg, og, stream && i == 0),
            }
            i += mr;
        }
        j0 += gc;
    }
}

/// Values of `k` per step of [`block_kc`]: a multiple of every SIMD width, so
/// resuming the accumulators step after step performs the operations of one
/// pass over `k`.
const KC: usize = 512;

/// Row lengths above which [`block`] runs [`block_kc`]: below, a tile of `X`
/// rows and a group of weight rows fit in L1 together without cutting `k`.
const KC_FROM: usize = 768;

/// Weight rows per group in [`block_kc`] (a `KC`-wide slice of them stays in
/// L1 while every tile of `X` rows passes by).
const KC_GROUP: usize = 8;

/// A stored tile of accumulators (the largest tile; smaller ones use a corner).
type Slot<S> = [[<S as pulp::Simd>::f32s; NR]; 4];

/// [`block`] for long rows (`k > KC_FROM`): `k` is cut into steps of [`KC`] (the
/// outer loop, so that a `KC`-wide slice of `X` stays in L2 for the whole
/// block), and the accumulators of every tile are kept in memory between
/// steps; within a step, a slice of a group of [`KC_GROUP`] weight rows stays
/// in L1 while all the rows of `X` pass by. Same operations per output as
/// [`block`].
#[inline(always)]
fn block_kc<'a, S: pulp::Simd>(
    simd: S,
    m: usize,
    xrow: impl Fn(usize) -> &'a [f32] + Copy,
    nc: usize,
    wrow: impl Fn(usize) -> &'a [f32] + Copy,
    out: Out,
) {
    let k = wrow(0).len();
    let mrm = mr_max::<S>();
    let row_tiles = m.div_ceil(mrm);
    // Column tiles of a group of `gc` columns: full tiles of NR, then singles.
    let col_tiles = |gc: usize| gc / NR + gc % NR;
    let groups = nc.div_ceil(KC_GROUP);
    let total: usize = (0..groups)
        .map(|g| col_tiles(KC_GROUP.min(nc - g * KC_GROUP)))
        .sum();
    // Accumulators, in a buffer of this thread kept between calls (taken out
    // of the thread-local and put back, so a nested call would only allocate
    // its own). The first step starts every tile from zero and stores it, so
    // the buffer needs no clearing.
    let per = core::mem::size_of::<Slot<S>>() / 4;
    let need = row_tiles * total * per;
    let mut buf = SLOTS.with(|c| c.take());
    if buf.len() < need + 16 {
        buf.resize(need + 16, 0.0);
    }
    let at = buf.as_ptr().align_offset(64).min(15);
    let flat = &mut buf[at..at + need];
    let slots: &mut [Slot<S>] = bytemuck::cast_slice_mut(flat);
    let mut k0 = 0;
    while k0 < k {
        let len = KC.min(k - k0);
        let first = k0 == 0;
        let xs = move |i: usize| &xrow(i)[k0..k0 + len];
        let mut base = 0;
        for g in 0..groups {
            let j0 = g * KC_GROUP;
            let gc = KC_GROUP.min(nc - j0);
            let ct = col_tiles(gc);
            let ws = move |j: usize| &wrow(j0 + j)[k0..k0 + len];
            for ti in 0..row_tiles {
                let i0 = ti * mrm;
                let mr = mrm.min(m - i0);
                let sl = &mut slots[base + ti * ct..base + (ti + 1) * ct];
                match mr {
                    4 => slot_row::<S, 4>(simd, i0, xs, gc, ws, sl, first),
                    3 => slot_row::<S, 3>(simd, i0, xs, gc, ws, sl, first),
                    2 => slot_row::<S, 2>(simd, i0, xs, gc, ws, sl, first),
                    _ => slot_row::<S, 1>(simd, i0, xs, gc, ws, sl, first),
                }
            }
            base += row_tiles * ct;
        }
        k0 += len;
    }
    let lanes = Lanes::of::<S>();
    let mut base = 0;
    for g in 0..groups {
        let j0 = g * KC_GROUP;
        let gc = KC_GROUP.min(nc - j0);
        let ct = col_tiles(gc);
        for ti in 0..row_tiles {
            let i0 = ti * mrm;
            let mr = mrm.min(m - i0);
            for (c, slot) in slots[base + ti * ct..base + (ti + 1) * ct]
                .iter()
                .enumerate()
            {
                let (j, width) = if c < gc / NR {
                    (c * NR, NR)
                } else {
                    (gc / NR * NR + (c - gc / NR), 1)
                };
                if width == NR {
                    let (o, jt) = (out, j0 + j);
                    match mr {
                        4 => put_tile::<S, 4>(simd, lanes, slot, o, i0, jt),
                        3 => put_tile::<S, 3>(simd, lanes, &[slot[0], slot[1], slot[2]], o, i0, jt),
                        2 => put_tile::<S, 2>(simd, lanes, &[slot[0], slot[1]], o, i0, jt),
                        _ => put_tile::<S, 1>(simd, lanes, &[slot[0]], o, i0, jt),
                    }
                    continue;
                }
                for (i, row) in slot.iter().enumerate().take(mr) {
                    for (jj, a) in row.iter().enumerate().take(width) {
                        out.put(i0 + i, j0 + j + jj, simd.reduce_sum_f32s(*a));
                    }
                }
            }
        }
        base += row_tiles * ct;
    }
    SLOTS.with(|c| c.set(buf));
}

thread_local! {
    /// This thread's accumulator slots for [`block_kc`].
    static SLOTS: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// One step of [`block_kc`] for rows `i0..i0 + MR` of `X` and every column
/// tile of the group, resuming from `slots` (from zero at the `first` step)
/// and saving to them.
#[inline(always)]
fn slot_row<'a, S: pulp::Simd, const MR: usize>(
    simd: S,
    i0: usize,
    xs: impl Fn(usize) -> &'a [f32] + Copy,
    gc: usize,
    ws: impl Fn(usize) -> &'a [f32] + Copy,
    slots: &mut [Slot<S>],
    first: bool,
) {
    let x: [&[f32]; MR] = core::array::from_fn(|i| xs(i0 + i));
    let zero = simd.splat_f32s(0.0);
    let full = gc / NR;
    for (c, slot) in slots.iter_mut().enumerate() {
        if c < full {
            let w: [&[f32]; NR] = core::array::from_fn(|jj| ws(c * NR + jj));
            let mut acc = [[zero; NR]; MR];
            if !first {
                acc.copy_from_slice(&slot[..MR]);
            }
            tile_acc(simd, &mut acc, x, w);
            slot[..MR].copy_from_slice(&acc);
        } else {
            let j = full * NR + (c - full);
            let mut acc = [[zero; 1]; MR];
            if !first {
                for i in 0..MR {
                    acc[i][0] = slot[i][0];
                }
            }
            tile_acc(simd, &mut acc, x, [ws(j)]);
            for i in 0..MR {
                slot[i][0] = acc[i][0];
            }
        }
    }
}

/// Rows `i0..i0 + MR` of [`block`], fetching the weight rows ahead when
/// `ahead`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn rows_tile<'a, S: pulp::Simd, const MR: usize>(
    simd: S,
    lanes: Lanes,
    i0: usize,
    xrow: impl Fn(usize) -> &'a [f32] + Copy,
    nc: usize,
    wrow: impl Fn(usize) -> &'a [f32] + Copy,
    out: Out,
    ahead: bool,
) {
    let x: [&[f32]; MR] = core::array::from_fn(|i| xrow(i0 + i));
    let mut j = 0;
    while j + NR <= nc {
        let w: [&[f32]; NR] = core::array::from_fn(|jj| wrow(j + jj));
        if ahead {
            prefetch_rows(&w);
        }
        let mut acc = acc_zero::<S, MR, NR>(simd);
        tile_acc(simd, &mut acc, x, w);
        put_tile(simd, lanes, &acc, out, i0, j);
        j += NR;
    }
    while j < nc {
        let mut acc = acc_zero::<S, MR, 1>(simd);
        tile_acc(simd, &mut acc, x, [wrow(j)]);
        let r = tile_sum(simd, &acc);
        for (i, ri) in r.iter().enumerate() {
            out.put(i0 + i, j, ri[0]);
        }
        j += 1;
    }
}

/// Bytes past each weight row that a pass over a streamed `W` fetches ahead.
/// SmolLM2's tg32 @ d4096 (Intel Xeon, where attention reads 189 MB of f32
/// keys and values a token) ran 1.14-1.19x faster at 1 and 2 threads with
/// the keys and values fetched 4 KB ahead, and 2-8% slower at 2 or 8 KB.
const PREFETCH: usize = 4096;

/// Bytes of `W` (or of the rows [`crate::kernels::axpy_rows_many`] weighs)
/// from which a product fetches them ahead ([`PREFETCH`]): smaller ones,
/// such as a short prompt's keys and values, are read from cache, where
/// the prefetches would only cost instructions.
pub(crate) const STREAM_FROM_BYTES: usize = 64 << 10;

/// Fetches the lines `PREFETCH` bytes past each of `w` (rows stored one
/// after the other, as a KV cache's keys, then cover what comes next).
#[inline(always)]
fn prefetch_rows<const N: usize>(w: &[&[f32]; N]) {
    for r in w {
        prefetch_ahead(r);
    }
}

/// Fetches the lines `PREFETCH` bytes past those of `r` into L1 (a no-op
/// off x86_64).
#[inline(always)]
pub(crate) fn prefetch_ahead(r: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    for line in (0..r.len() * 4).step_by(64) {
        use core::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: SSE is part of x86_64; a prefetch reads nothing and never
        // faults, so the address may lie past the slice's allocation.
        unsafe {
            _mm_prefetch::<_MM_HINT_T0>(r.as_ptr().cast::<i8>().wrapping_add(PREFETCH + line))
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = r;
}

/// Weight rows per task of a product with `m` rows of `X` and `k` columns:
/// [`MATVEC_CHUNK_ROWS`] for one row; otherwise up to [`MATMUL_CHUNK_N`], fewer
/// when that block of `W` would not stay in L2. Never depends on the thread
/// count (not that it could change the bits: each output's order is fixed).
fn block_rows(m: usize, k: usize) -> usize {
    if m == 1 {
        return MATVEC_CHUNK_ROWS;
    }
    let fit = BLOCK_BYTES / (4 * k.max(1));
    (fit / NR * NR).clamp(NR * 4, MATMUL_CHUNK_N)
}

/// `y = x · wᵀ`: `x` is `m x k`, `w` is `n x k` (rows = output features), `y` is the
/// `m x n` row-major result and must hold exactly `m * n` elements.
///
/// Every output follows the fixed operation order described in the module
/// docs, so a row of `y` has the same bits whatever `m` is (in particular the
/// same as [`matvec`] of that row) and whatever the thread count. Blocks of
/// weight rows are spread over `threads`.
pub fn matmul(
    s: Simd,
    threads: &Threads,
    x: MatRef<'_>,
    w: MatRef<'_>,
    y: &mut [f32],
) -> Result<(), ShapeError> {
    check_product(x, w, y, "matmul: x.cols vs w.cols (k)", "matmul y (m * n)")?;
    if !y.is_empty() {
        product(s, threads, x, w, y);
    }
    Ok(())
}

/// The shape checks of a product `y = x · wᵀ`: `w` has `x`'s `k` columns
/// (else `k_what`) and `y` holds exactly `m * n` values (else `y_what`).
pub(crate) fn check_product(
    x: MatRef<'_>,
    w: MatRef<'_>,
    y: &[f32],
    k_what: &'static str,
    y_what: &'static str,
) -> Result<(), ShapeError> {
    let (m, k, n) = (x.rows(), x.cols(), w.rows());
    if w.cols() != k {
        return Err(ShapeError::Mismatch {
            what: k_what,
            left: k,
            right: w.cols(),
        });
    }
    check_out(m, n, y, y_what)
}

/// Checks that `y` holds the `m x n` result of a product.
pub(crate) fn check_out(
    m: usize,
    n: usize,
    y: &[f32],
    y_what: &'static str,
) -> Result<(), ShapeError> {
    let expected = m
        .checked_mul(n)
        .ok_or(ShapeError::Overflow { what: "matmul y" })?;
    if y.len() != expected {
        return Err(ShapeError::Len {
            what: y_what,
            expected,
            found: y.len(),
        });
    }
    Ok(())
}

thread_local! {
    /// This thread's copy of `X` for [`with_aligned_rows`].
    static ALIGNED: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` on a copy of `x` whose rows start on 64-byte boundaries (a cache
/// line, so no vector load of a row straddles two lines), kept in a buffer of
/// the calling thread between calls. Values are copied, never changed.
pub(crate) fn with_aligned_rows<R>(x: MatRef<'_>, f: impl FnOnce(MatRef<'_>) -> R) -> R {
    let (m, k) = (x.rows(), x.cols());
    if k == 0 {
        return f(x);
    }
    let stride = k.div_ceil(16) * 16;
    let run = |buf: &mut Vec<f32>| {
        let need = m * stride + 16;
        if buf.len() < need {
            buf.resize(need, 0.0);
        }
        let at = buf.as_ptr().align_offset(64).min(15);
        let dst = &mut buf[at..at + m * stride];
        for (i, d) in dst.chunks_exact_mut(stride).enumerate() {
            d[..k].copy_from_slice(x.row(i));
        }
        match MatRef::with_stride(dst, m, k, stride) {
            Ok(xa) => f(xa),
            // Unreachable (the buffer holds m rows of `stride >= k`); keep `x`.
            Err(_) => f(x),
        }
    };
    ALIGNED.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => run(&mut buf),
        Err(_) => run(&mut Vec::new()),
    })
}

/// Shortest rows of `X` worth copying to 64-byte boundaries: shorter ones
/// (attention heads, 32 to 128 wide, read in place from strided rows) would
/// spend more on the copies than the aligned loads save.
const ALIGN_FROM: usize = 160;

/// [`matmul`] after its checks (`y` holds `m * n`, `m, n >= 1`).
fn product(s: Simd, threads: &Threads, x: MatRef<'_>, w: MatRef<'_>, y: &mut [f32]) {
    if x.rows() > 1 && x.cols() >= ALIGN_FROM && x.as_slice().as_ptr().align_offset(64) != 0 {
        return with_aligned_rows(x, |xa| product_aligned(s, threads, xa, w, y));
    }
    product_aligned(s, threads, x, w, y)
}

/// Rows of `X` per task of a product with rows of `k` values: a block of `X`
/// that stays in L2 next to the task's block of `W` while the weight rows
/// pass by in L1-sized groups (without it, every group would stream all of
/// `X` from L3 or memory again). Any blocking gives the same bits.
fn row_block(k: usize) -> usize {
    let fit = ROW_BLOCK_BYTES / (4 * k.max(1));
    fit.clamp(ROW_BLOCK_MIN, ROW_BLOCK_MAX) / 4 * 4
}

/// Bytes of `X` a task keeps hot in L2 (see [`row_block`]).
const ROW_BLOCK_BYTES: usize = 512 << 10;
/// Fewest rows of `X` per task (below, tasks would be too small to pay for
/// themselves).
const ROW_BLOCK_MIN: usize = 32;
/// Most rows of `X` per task.
const ROW_BLOCK_MAX: usize = 256;

/// [`product`] on rows of `x` as they are: tasks are blocks of rows of `X`
/// times blocks of rows of `W` (each output computed by exactly one task, with
/// the operations of the module docs whatever the block sizes).
fn product_aligned(s: Simd, threads: &Threads, x: MatRef<'_>, w: MatRef<'_>, y: &mut [f32]) {
    let (m, k, n) = (x.rows(), x.cols(), w.rows());
    let nc = block_rows(m, k);
    let mb = if m == 1 { 1 } else { row_block(k) };
    let (row_tasks, col_tasks) = (m.div_ceil(mb), n.div_ceil(nc));
    let y_ptr = y.as_mut_ptr();
    // SAFETY: `Out` for row 0, column 0 of `y` with row stride n; every task
    // writes rows i0 + i < m and columns j0 + j < n only, i.e. offsets
    // < m * n = y.len(); tasks have disjoint row x column ranges and `y` is
    // exclusively borrowed here.
    let out = unsafe { Out::new(y_ptr, n, 0) };
    let stream = n * k * 4 >= STREAM_FROM_BYTES;
    threads.for_each_index(row_tasks * col_tasks, |t| {
        let (ri, ci) = (t / col_tasks, t % col_tasks);
        let (i0, j0) = (ri * mb, ci * nc);
        s.vectorize(BlockOp {
            x,
            w,
            i0,
            mr: mb.min(m - i0),
            j0,
            nc: nc.min(n - j0),
            out,
            stream,
        });
    });
}

struct BlockOp<'a> {
    x: MatRef<'a>,
    w: MatRef<'a>,
    i0: usize,
    mr: usize,
    j0: usize,
    nc: usize,
    out: Out,
    /// Whether `w` comes from memory (see [`STREAM_FROM_BYTES`]).
    stream: bool,
}

impl pulp::WithSimd for BlockOp<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, simd: S) {
        let BlockOp {
            x,
            w,
            i0,
            mr,
            j0,
            nc,
            out,
            stream,
        } = self;
        // SAFETY: the task's rows i0..i0 + mr and columns j0..j0 + nc lie
        // inside `y` (see `product_aligned`).
        let out = unsafe { out.shifted(i0 * out.ld + j0) };
        block(
            simd,
            mr,
            |i| x.row(i0 + i),
            nc,
            |j| w.row(j0 + j),
            out,
            stream,
        );
    }
}

/// [`block`] for a dense `nc x k` block of weight rows in `w` (a dequantised
/// panel), dispatched at level `s`.
pub(crate) fn block_dense(s: Simd, x: MatRef<'_>, w: &[f32], nc: usize, out: Out) {
    struct Op<'a> {
        x: MatRef<'a>,
        w: &'a [f32],
        nc: usize,
        out: Out,
    }
    impl pulp::WithSimd for Op<'_> {
        type Output = ();
        #[inline(always)]
        fn with_simd<S: pulp::Simd>(self, simd: S) {
            let Op { x, w, nc, out } = self;
            let k = x.cols();
            block(
                simd,
                x.rows(),
                |i| x.row(i),
                nc,
                |j| &w[j * k..(j + 1) * k],
                out,
                // A panel just dequantised: in cache.
                false,
            );
        }
    }
    s.vectorize(Op { x, w, nc, out })
}

/// A raw output pointer shared by tasks that write disjoint elements.
#[derive(Clone, Copy)]
pub(crate) struct SyncPtr(pub(crate) *mut f32);

// SAFETY: only used to hand disjoint parts of one exclusively borrowed slice to
// worker tasks (see `Out`); the pointer itself carries no thread affinity.
unsafe impl Send for SyncPtr {}
// SAFETY: as above; tasks never write the same element.
unsafe impl Sync for SyncPtr {}

impl SyncPtr {
    /// A method (not field access) so closures capture the `Sync` wrapper.
    #[inline(always)]
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}

/// `y = W · x`: `w` is `n x k`, `x` holds `k` elements and `y` exactly `n`.
///
/// The decode hot path: streams every weight once, rows split over `threads`
/// in blocks of [`MATVEC_CHUNK_ROWS`]. The same computation as [`matmul`] with
/// one row, so `y` has the bits of any row of a [`matmul`] it could be part of.
/// Does not allocate.
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
    if y.is_empty() {
        return Ok(());
    }
    let xm = MatRef::new(x, 1, x.len())?;
    product(s, threads, xm, w, y);
    Ok(())
}
