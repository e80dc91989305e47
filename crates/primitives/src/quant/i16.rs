//! Exact-mode products of Q8_0, Q5_0, Q4_1, Q4_K and Q6_K weights with
//! activations rounded to int16, at the AVX-512 level (with VNNI) and at the
//! AVX2 level: integer sums at integer speed, within about 1.5e-5 of the f32
//! activations' largest value per block. Both levels' kernels have
//! the one arithmetic below.
//!
//! Every output has one fixed arithmetic, whichever kernel computes it:
//! - each row of `x` is rounded per block of 32 values: `d = amax / 32767`
//!   and `q = round_ties_even(x * (32767 / amax))` (`d` and `q` all zero
//!   when `amax` is zero or `32767 / amax` overflows; `d` is NaN and `q` zero when the block holds a NaN or an infinity,
//!   so that non-finite activations still give non-finite outputs), and the
//!   exact sum `X` of each block's `q` is kept;
//! - a weight row is a run of groups of [`group_len`] values (32, or Q6_K's
//!   16), each with integer weights `w_q` and a scale `s_w` (Q8_0's, Q5_0's
//!   and Q4_1's `d`, Q4_K's `d * sc`, Q6_K's `d * sc`, all exact in f32),
//!   and for Q4_1 and Q4_K a min `m_w` (Q4_1's `-m`, Q4_K's `dmin * m`;
//!   `w = s_w * w_q - m_w`);
//! - each group `g` gives the exact integer `S_g = sum(w_q * x_q)` over its
//!   values (below 2^24 in magnitude, so exact as an f32, for every format
//!   but Q8_0, whose largest sums round to f32 the same way in every kernel);
//! - four sums, `acc[t]` from zero, take the groups `g = t mod 4` in order:
//!   `acc[t] = fma(S_g as f32, s_w * d_x, acc[t])`, then for Q4_1 and Q4_K
//!   `acc[t] = fma(-X, m_w * d_x, acc[t])` (`d_x` and `X` of the activation
//!   block holding the group; four independent chains, so that a kernel need
//!   not wait on one multiply-add per group);
//! - the output is `(acc[0] + acc[1]) + (acc[2] + acc[3])`.
//!
//! Integer sums do not depend on how they are grouped, so decode (a few rows
//! of `x`, sums across each group's lanes) and prefill (many rows, sums
//! across weight rows in lanes) give every output the same bits, and both the
//! bits of [`dot_ref`].

use crate::dtype::DType;
use crate::matmul::Out;
use crate::simd::{Level, Simd};
use crate::tensor::MatRef;
use crate::threads::Threads;

use super::blocks::{f16_at, scales_mins_k4};

/// Values per activation block (the Q8_0/Q5_0 block length).
pub(crate) const BLOCK: usize = 32;

/// The formats with int16-activation products.
pub(crate) fn has_kernels(dtype: DType) -> bool {
    matches!(
        dtype,
        DType::Q8_0 | DType::Q5_0 | DType::Q4_1 | DType::Q4_K | DType::Q6_K
    )
}

/// Whether exact-mode products of `dtype` at level `s` use int16 activations
/// (the same answer for every call, so that decode and prefill agree).
pub(crate) fn applies(s: Simd, dtype: DType) -> bool {
    kernels(s, dtype).is_some()
}

/// The kernels that compute the int16 products of a level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kernels {
    /// AVX-512 with VNNI: every format of [`has_kernels`].
    Avx512,
    /// AVX2 with FMA and F16C: every format of [`has_kernels`] (also at the
    /// AVX-512 level of a CPU without VNNI).
    Avx2,
}

/// Which kernels compute exact-mode products of `dtype` at level `s`, if
/// any; elsewhere the activations stay f32.
pub(crate) fn kernels(s: Simd, dtype: DType) -> Option<Kernels> {
    if !has_kernels(dtype) {
        return None;
    }
    #[cfg(target_arch = "x86_64")]
    {
        let avx2 = super::x86_i16_avx2::has_kernels(dtype) && super::x86_i16_avx2::available();
        match s.level() {
            Level::Avx512 if super::x86_i16::available() => Some(Kernels::Avx512),
            Level::Avx512 | Level::Avx2 if avx2 => Some(Kernels::Avx2),
            _ => None,
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = s;
        None
    }
}

/// The most activation rows [`rows`] takes; more go to [`gemm`]. Decode's
/// kernel reads each weight once per row (or group of rows), and the
/// prefill kernel repacks the weights first, which pays off only over many
/// rows.
pub(crate) fn rows_max(s: Simd, dtype: DType) -> usize {
    #[cfg(target_arch = "x86_64")]
    if let Some(Kernels::Avx2) = kernels(s, dtype) {
        if let Some(n) = super::x86_i16_avx2::rows_max(dtype) {
            return n;
        }
    }
    super::exact::fused_max_rows(s)
}

/// Values per group of one weight scale (see the module docs): Q6_K's
/// sub-blocks of 16, else 32.
pub(crate) const fn group_len(dtype: DType) -> usize {
    match dtype {
        DType::Q6_K => 16,
        _ => BLOCK,
    }
}

/// Whether `dtype`'s groups have a min (Q4_1, Q4_K), which takes the
/// activation blocks' sums.
pub(crate) const fn has_mins(dtype: DType) -> bool {
    matches!(dtype, DType::Q4_1 | DType::Q4_K)
}

/// What decode's kernel ([`rows`]) reads of the activations besides their
/// rounded values, scales and sums: laid out once per product in
/// [`with_acts`], not once per task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Layout {
    /// Nothing more (prefill's kernels, the portable reference, Q8_0's
    /// word products at AVX-512).
    Plain,
    /// The byte split (the AVX-512 byte products of Q5_0, Q4_1, Q4_K, Q6_K).
    Split,
    /// The values in pairs of blocks (the AVX2 kernels).
    Pairs,
}

/// The [`Layout`] that the decode products of `dtype` at level `s` read.
pub(crate) fn decode_layout(s: Simd, dtype: DType) -> Layout {
    match kernels(s, dtype) {
        Some(Kernels::Avx512) if byte_products(dtype) => Layout::Split,
        Some(Kernels::Avx2) => Layout::Pairs,
        _ => Layout::Plain,
    }
}

/// Whether the AVX-512 decode products of `dtype` meet the activations'
/// byte split (Q8_0's word products do not).
pub(crate) fn byte_products(dtype: DType) -> bool {
    matches!(dtype, DType::Q5_0 | DType::Q4_1 | DType::Q4_K | DType::Q6_K)
}

/// Rows of activations rounded to int16 per block of [`BLOCK`] values.
#[derive(Debug, Default, Clone)]
pub(crate) struct ActsI16 {
    /// `rows x cols` rounded values.
    pub q: Vec<i16>,
    /// `rows x cols / BLOCK` scales.
    pub d: Vec<f32>,
    /// `rows x cols / BLOCK` exact sums of each block's `q`, as f32 (at most
    /// 32 * 32767 in magnitude).
    pub sums: Vec<f32>,
    /// Values per row (a multiple of [`BLOCK`]).
    pub cols: usize,
    /// The byte split of `q` for byte products (`vpdpbusd` in decode), see
    /// [`split_row_ref`]: low bytes, unsigned.
    pub lo: Vec<u8>,
    /// High bytes, signed: `q = 256 * hi + lo`.
    pub hi: Vec<i8>,
    /// Minus the sum of each 4 consecutive `q` (`rows x cols / 4`).
    pub neg_quad_q: Vec<i32>,
    /// The rows in pairs of blocks for the AVX2 decode kernels
    /// ([`Layout::Pairs`]; empty otherwise, never stale).
    #[cfg(target_arch = "x86_64")]
    pub pairs: Vec<super::x86_i16_avx2::Pair>,
}

impl ActsI16 {
    /// Sizes the buffers for `rows x cols` values, with room for their byte
    /// split for [`Layout::Split`] (left empty otherwise, never stale); the
    /// pairs are emptied but for [`Layout::Pairs`], which [`quantize`] lays
    /// out over them.
    fn reshape(&mut self, rows: usize, cols: usize, layout: Layout) {
        let (nb, c4) = (cols / BLOCK, cols / 4);
        let split_rows = if layout == Layout::Split { rows } else { 0 };
        #[cfg(target_arch = "x86_64")]
        if layout != Layout::Pairs {
            self.pairs.clear();
        }
        self.cols = cols;
        self.q.resize(rows * cols, 0);
        self.d.resize(rows * nb, 0.0);
        self.sums.resize(rows * nb, 0.0);
        self.lo.resize(split_rows * cols, 0);
        self.hi.resize(split_rows * cols, 0);
        self.neg_quad_q.resize(split_rows * c4, 0);
    }

    /// Rounded values of row `i`.
    pub fn q_row(&self, i: usize) -> &[i16] {
        &self.q[i * self.cols..(i + 1) * self.cols]
    }

    /// Scales of row `i`.
    pub fn d_row(&self, i: usize) -> &[f32] {
        let nb = self.cols / BLOCK;
        &self.d[i * nb..(i + 1) * nb]
    }

    /// Block sums of row `i`.
    pub fn sums_row(&self, i: usize) -> &[f32] {
        let nb = self.cols / BLOCK;
        &self.sums[i * nb..(i + 1) * nb]
    }

    /// Rows `i0..i0 + T` for a prefill tile: each row's pairs of rounded
    /// values as one i32 apiece, its scales and its block sums.
    ///
    /// Filled by a loop and always inlined: `array::from_fn` here was an
    /// outlined call per tile (without the caller's vector features), up to
    /// 9% of prefill at the AVX2 level.
    #[inline(always)]
    #[allow(clippy::type_complexity)]
    pub fn tile_rows<const T: usize>(
        &self,
        i0: usize,
    ) -> ([*const i32; T], [&[f32]; T], [&[f32]; T]) {
        let (mut q, mut d, mut sums) = ([core::ptr::null(); T], [&[][..]; T], [&[][..]; T]);
        for i in 0..T {
            q[i] = self.q_row(i0 + i).as_ptr().cast();
            d[i] = self.d_row(i0 + i);
            sums[i] = self.sums_row(i0 + i);
        }
        (q, d, sums)
    }

    /// The byte split of row `i`: low and high bytes, and minus the sums of
    /// each 4 values.
    pub fn split_row(&self, i: usize) -> (&[u8], &[i8], &[i32]) {
        let (c, c4) = (self.cols, self.cols / 4);
        (
            &self.lo[i * c..(i + 1) * c],
            &self.hi[i * c..(i + 1) * c],
            &self.neg_quad_q[i * c4..(i + 1) * c4],
        )
    }

    /// Rows held.
    pub fn rows(&self) -> usize {
        self.q.len().checked_div(self.cols).unwrap_or(0)
    }
}

/// The checked dimensions of an int16 product of weight rows `w`
/// (`row_bytes` each) with `acts`, for the SIMD kernels.
pub(crate) struct Shape {
    /// Bytes per weight row.
    pub row_bytes: usize,
    /// Bytes per block of the format.
    pub block_bytes: usize,
    /// Blocks of the format per row.
    pub blocks: usize,
    /// Weight rows.
    pub nrows: usize,
}

impl Shape {
    /// The lengths of `w` and `acts` fit `dtype` (`split`: with the
    /// activations' byte split); the kernels check their CPU features.
    pub(crate) fn of(
        dtype: DType,
        w: &[u8],
        row_bytes: usize,
        acts: &ActsI16,
        split: bool,
    ) -> Option<Shape> {
        if row_bytes == 0 {
            return None;
        }
        let block_bytes = dtype.block_bytes();
        let blocks = row_bytes / block_bytes;
        let fits = row_bytes.is_multiple_of(block_bytes)
            && w.len().is_multiple_of(row_bytes)
            && acts.cols == blocks * dtype.block_len()
            && acts.q.len() == acts.rows() * acts.cols
            && acts.d.len() == acts.rows() * (acts.cols / BLOCK)
            && acts.sums.len() == acts.d.len()
            && (!split
                || acts.lo.len() == acts.q.len()
                    && acts.hi.len() == acts.q.len()
                    && acts.neg_quad_q.len() == acts.q.len() / 4);
        fits.then_some(Shape {
            row_bytes,
            block_bytes,
            blocks,
            nrows: w.len() / row_bytes,
        })
    }
}

/// Whether `q`, `d` and `sums` have the lengths of the rounding of the row
/// `x` (whole blocks).
pub(crate) fn row_fits(x: &[f32], q: &[i16], d: &[f32], sums: &[f32]) -> bool {
    x.len().is_multiple_of(BLOCK)
        && q.len() == x.len()
        && d.len() == x.len() / BLOCK
        && sums.len() == d.len()
}

/// The scale and the multiplier of a block whose largest magnitude is
/// `amax` (`bad` when it holds a NaN or an infinity).
#[inline(always)]
pub(crate) fn block_scale(amax: f32, bad: bool) -> (f32, f32) {
    if bad || !amax.is_finite() {
        return (f32::NAN, 0.0);
    }
    let mul = 32767.0 / amax;
    // Zero, or so small (below about 9.6e-35) that the multiplier overflows:
    // an all-zero block, whose products are exactly zero, rather than
    // infinite products that each kernel's conversion would saturate its own
    // way.
    if amax == 0.0 || !mul.is_finite() {
        (0.0, 0.0)
    } else {
        (amax / 32767.0, mul)
    }
}

/// Rounds one row `x` (a multiple of [`BLOCK`] long) into `q`, `d` and the
/// block sums `sums`, in portable code (the reference of the SIMD rounding,
/// with its bits).
pub(crate) fn quantize_row_ref(x: &[f32], q: &mut [i16], d: &mut [f32], sums: &mut [f32]) {
    for (((xb, qb), db), sb) in x
        .chunks_exact(BLOCK)
        .zip(q.chunks_exact_mut(BLOCK))
        .zip(d.iter_mut())
        .zip(sums.iter_mut())
    {
        let bad = xb.iter().any(|v| !v.is_finite());
        let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let (scale, mul) = block_scale(amax, bad);
        *db = scale;
        for (qv, xv) in qb.iter_mut().zip(xb) {
            // |x * mul| <= 32767 (rounded), so the cast never saturates;
            // a non-finite block has `mul == 0` and its NaN products are not
            // used: such a block is all zero.
            *qv = if bad {
                0
            } else {
                (xv * mul).round_ties_even() as i16
            };
        }
        *sb = qb.iter().map(|v| i32::from(*v)).sum::<i32>() as f32;
    }
}

/// Splits the rounded values `q` (a multiple of 4 long) into bytes, `q =
/// 256 * hi + lo` with `lo` unsigned and `hi` signed, and writes minus the
/// sum of each 4 values (the offset of byte products with weights stored
/// with a bias), in portable code.
pub(crate) fn split_row_ref(q: &[i16], lo: &mut [u8], hi: &mut [i8], neg_quad_q: &mut [i32]) {
    for ((qc, (lc, hc)), nq) in q
        .chunks_exact(4)
        .zip(lo.chunks_exact_mut(4).zip(hi.chunks_exact_mut(4)))
        .zip(neg_quad_q.iter_mut())
    {
        for ((v, l), h) in qc.iter().zip(lc.iter_mut()).zip(hc.iter_mut()) {
            // Truncations: the low byte, and the arithmetic shift's byte.
            *l = *v as u8;
            *h = (*v >> 8) as i8;
        }
        *nq = -qc.iter().map(|v| i32::from(*v)).sum::<i32>();
    }
}

/// Rounds the rows of `x` (columns a multiple of [`BLOCK`]) into `acts`,
/// with the `layout` decode's kernel reads ([`decode_layout`]; prefill,
/// [`gemm`], reads none). Other layouts are left empty, never stale.
/// Level `s` caps the kernels used (the same bits at every level), so that
/// a run capped at AVX2 runs only AVX2 code.
pub(crate) fn quantize(s: Simd, x: MatRef<'_>, layout: Layout, acts: &mut ActsI16) {
    let (rows, cols) = (x.rows(), x.cols());
    let (nb, c4) = (cols / BLOCK, cols / 4);
    let split = layout == Layout::Split;
    acts.reshape(rows, cols, layout);
    for i in 0..rows {
        let q = &mut acts.q[i * cols..(i + 1) * cols];
        let d = &mut acts.d[i * nb..(i + 1) * nb];
        let sums = &mut acts.sums[i * nb..(i + 1) * nb];
        round_row(s, x.row(i), q, d, sums);
        if !split {
            continue;
        }
        let lo = &mut acts.lo[i * cols..(i + 1) * cols];
        let hi = &mut acts.hi[i * cols..(i + 1) * cols];
        let nq = &mut acts.neg_quad_q[i * c4..(i + 1) * c4];
        #[cfg(target_arch = "x86_64")]
        if s.level() == Level::Avx512 && super::x86_i16::split_row(q, lo, hi, nq) {
            continue;
        }
        split_row_ref(q, lo, hi, nq);
    }
    #[cfg(target_arch = "x86_64")]
    if layout == Layout::Pairs {
        let mut pairs = core::mem::take(&mut acts.pairs);
        super::x86_i16_avx2::lay_out_pairs(acts, &mut pairs);
        acts.pairs = pairs;
    }
}

/// Rows of `x` from which [`quantize_on`] spreads them over the threads:
/// below, handing them out would cost about what it saves.
const SPREAD_ROWS: usize = 16;

/// [`quantize`], with the rows spread over `threads` when there are at
/// least [`SPREAD_ROWS`] and no other layout (prefill): rounded on the
/// calling thread alone, they were a serial step before every product. Each
/// row is rounded by the same code wherever it runs: the same bits.
pub(crate) fn quantize_on(
    s: Simd,
    threads: &Threads,
    x: MatRef<'_>,
    layout: Layout,
    acts: &mut ActsI16,
) {
    let (rows, cols) = (x.rows(), x.cols());
    if layout != Layout::Plain || threads.count() < 2 || rows < SPREAD_ROWS || cols == 0 {
        return quantize(s, x, layout, acts);
    }
    let nb = cols / BLOCK;
    acts.reshape(rows, cols, Layout::Plain);
    // Contiguous runs of rows, one per thread.
    let per = rows.div_ceil(threads.count());
    let mut runs: Vec<RowsMut<'_>> = acts
        .q
        .chunks_mut(per * cols)
        .zip(acts.d.chunks_mut(per * nb))
        .zip(acts.sums.chunks_mut(per * nb))
        .map(|((q, d), sums)| (q, d, sums))
        .collect();
    threads.for_each_chunk(&mut runs, 1, |r, run| {
        let (q, d, sums) = &mut run[0];
        let rows = q
            .chunks_mut(cols)
            .zip(d.chunks_mut(nb))
            .zip(sums.chunks_mut(nb));
        for (k, ((q, d), sums)) in rows.enumerate() {
            round_row(s, x.row(r * per + k), q, d, sums);
        }
    });
}

/// Rounded values, scales and sums of a run of rows of [`ActsI16`].
type RowsMut<'a> = (&'a mut [i16], &'a mut [f32], &'a mut [f32]);

/// Rounds one row (`q`, `d`, `sums` its parts of [`ActsI16`]) with the
/// kernels of level `s` or below.
fn round_row(s: Simd, x: &[f32], q: &mut [i16], d: &mut [f32], sums: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    let done = match s.level() {
        Level::Avx512 => {
            super::x86_i16::quantize_row(x, q, d, sums)
                || super::x86_i16_avx2::quantize_row(x, q, d, sums)
        }
        Level::Avx2 => super::x86_i16_avx2::quantize_row(x, q, d, sums),
        _ => false,
    };
    #[cfg(not(target_arch = "x86_64"))]
    let done = {
        let _ = s;
        false
    };
    if !done {
        quantize_row_ref(x, q, d, sums);
    }
}

thread_local! {
    /// This thread's rounded activations, kept between calls so that
    /// decoding does not allocate.
    static ACTS: std::cell::RefCell<ActsI16> = std::cell::RefCell::new(ActsI16::default());
}

/// Rounds `x` (see [`quantize_on`]: with `layout`, and prefill's rows on
/// the pool of `threads`) into this thread's buffer and runs `f` on it.
/// Never nested by the kernels; a nested call gets a buffer of its own.
pub(crate) fn with_acts<R>(
    s: Simd,
    threads: &Threads,
    x: MatRef<'_>,
    layout: Layout,
    f: impl FnOnce(&ActsI16) -> R,
) -> R {
    ACTS.with(|cell| match cell.try_borrow_mut() {
        Ok(mut acts) => {
            quantize_on(s, threads, x, layout, &mut acts);
            f(&acts)
        }
        Err(_) => {
            let mut acts = ActsI16::default();
            quantize_on(s, threads, x, layout, &mut acts);
            f(&acts)
        }
    })
}

/// Values of one block of `dtype` at most (a K-quant super-block).
const UNIT: usize = 256;

/// The scale and min of each group of block `b` of `dtype` (see the module
/// docs; mins are zero but for Q4_K).
pub(crate) fn block_scales(dtype: DType, b: &[u8]) -> ([f32; 16], [f32; 16]) {
    let (mut scale, mut min) = ([0.0f32; 16], [0.0f32; 16]);
    match dtype {
        DType::Q8_0 | DType::Q5_0 => scale[0] = f16_at(b, 0),
        DType::Q4_1 => {
            // `w = d q + m`: a min of `-m` (exact).
            scale[0] = f16_at(b, 0);
            min[0] = -f16_at(b, 2);
        }
        DType::Q4_K => {
            let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
            let (sc, mn) = scales_mins_k4(&b[4..16]);
            for j in 0..8 {
                // Products of an f16 and a 6-bit integer: exact in f32.
                scale[j] = d * f32::from(sc[j]);
                min[j] = dmin * f32::from(mn[j]);
            }
        }
        DType::Q6_K => {
            let d = f16_at(b, 208);
            for (g, sg) in scale.iter_mut().enumerate() {
                // An f16 times an 8-bit integer: exact in f32.
                *sg = d * f32::from(b[192 + g] as i8);
            }
        }
        _ => unreachable!("int16 products take Q8_0, Q5_0, Q4_1, Q4_K and Q6_K only"),
    }
    (scale, min)
}

/// The integer weights of block `b` of `dtype` (its first `block_len`
/// values), and its groups' scales and mins ([`block_scales`]).
pub(crate) fn block_ints(dtype: DType, b: &[u8]) -> ([i32; UNIT], [f32; 16], [f32; 16]) {
    let mut v = [0i32; UNIT];
    match dtype {
        DType::Q8_0 => {
            for (vi, q) in v.iter_mut().zip(&b[2..34]) {
                *vi = i32::from(*q as i8);
            }
        }
        DType::Q5_0 => {
            let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
            for j in 0..16 {
                let q = b[6 + j];
                let lo = i32::from(q & 0x0F) | (((qh >> j) & 1) as i32) << 4;
                let hi = i32::from(q >> 4) | (((qh >> (j + 16)) & 1) as i32) << 4;
                v[j] = lo - 16;
                v[j + 16] = hi - 16;
            }
        }
        DType::Q4_1 => {
            for (j, q) in b[4..20].iter().enumerate() {
                v[j] = i32::from(q & 0x0F);
                v[j + 16] = i32::from(q >> 4);
            }
        }
        DType::Q4_K => {
            for (c, q) in b[16..144].chunks_exact(32).enumerate() {
                for (l, ql) in q.iter().enumerate() {
                    v[64 * c + l] = i32::from(ql & 0x0F);
                    v[64 * c + 32 + l] = i32::from(ql >> 4);
                }
            }
        }
        DType::Q6_K => {
            for n in 0..2 {
                let (ql, qh) = (&b[64 * n..64 * n + 64], &b[128 + 32 * n..160 + 32 * n]);
                for l in 0..32 {
                    let at = 128 * n + l;
                    let h = |k: usize| i32::from((qh[l] >> (2 * k)) & 3) << 4;
                    v[at] = (i32::from(ql[l] & 0x0F) | h(0)) - 32;
                    v[at + 32] = (i32::from(ql[l + 32] & 0x0F) | h(1)) - 32;
                    v[at + 64] = (i32::from(ql[l] >> 4) | h(2)) - 32;
                    v[at + 96] = (i32::from(ql[l + 32] >> 4) | h(3)) - 32;
                }
            }
        }
        _ => unreachable!("int16 products take Q8_0, Q5_0, Q4_1, Q4_K and Q6_K only"),
    }
    let (scale, min) = block_scales(dtype, b);
    (v, scale, min)
}

/// One output of the fixed arithmetic (see the module docs), in portable
/// code: weight row `row` of `dtype` against one rounded row (`q`, `d`,
/// `sums`).
pub(crate) fn dot_ref(dtype: DType, row: &[u8], q: &[i16], d: &[f32], sums: &[f32]) -> f32 {
    let (bl, gl) = (dtype.block_len(), group_len(dtype));
    let mut acc = [0.0f32; 4];
    let mut g = 0;
    for (k, b) in row.chunks_exact(dtype.block_bytes()).enumerate() {
        let (w, scale, min) = block_ints(dtype, b);
        for (j, wg) in w[..bl].chunks_exact(gl).enumerate() {
            let at = k * bl + j * gl;
            let s: i32 = wg
                .iter()
                .zip(&q[at..at + gl])
                .map(|(a, x)| a * i32::from(*x))
                .sum();
            let (t, dx) = (g % 4, d[at / BLOCK]);
            acc[t] = (s as f32).mul_add(scale[j] * dx, acc[t]);
            if has_mins(dtype) {
                acc[t] = (-sums[at / BLOCK]).mul_add(min[j] * dx, acc[t]);
            }
            g += 1;
        }
    }
    (acc[0] + acc[1]) + (acc[2] + acc[3])
}

/// `out[i][j] = ` the fixed product of row `i` of `acts` and row `j` of `w`
/// (`row_bytes` bytes each), for the few rows of a decode step: the
/// [`kernels`] of level `s`, else the portable reference.
pub(crate) fn rows(s: Simd, dtype: DType, w: &[u8], row_bytes: usize, acts: &ActsI16, out: Out) {
    #[cfg(target_arch = "x86_64")]
    let done = match kernels(s, dtype) {
        Some(Kernels::Avx512) => super::x86_i16::rows(dtype, w, row_bytes, acts, out),
        Some(Kernels::Avx2) => super::x86_i16_avx2::rows(dtype, w, row_bytes, acts, out),
        None => false,
    };
    #[cfg(not(target_arch = "x86_64"))]
    let done = {
        let _ = s;
        false
    };
    if done {
        return;
    }
    for i in 0..acts.rows() {
        for (j, r) in w.chunks_exact(row_bytes).enumerate() {
            let (q, d, sums) = (acts.q_row(i), acts.d_row(i), acts.sums_row(i));
            out.put(i, j, dot_ref(dtype, r, q, d, sums));
        }
    }
}

/// [`rows`] for many rows of `acts`: the prefill kernel, which takes the
/// integer sums across weight rows in its lanes (same bits as [`rows`]).
pub(crate) fn gemm(s: Simd, dtype: DType, w: &[u8], row_bytes: usize, acts: &ActsI16, out: Out) {
    #[cfg(target_arch = "x86_64")]
    let done = match kernels(s, dtype) {
        Some(Kernels::Avx512) => super::x86_i16::gemm(dtype, w, row_bytes, acts, out),
        Some(Kernels::Avx2) => super::x86_i16_avx2::gemm(dtype, w, row_bytes, acts, out),
        None => false,
    };
    #[cfg(not(target_arch = "x86_64"))]
    let done = false;
    if !done {
        rows(s, dtype, w, row_bytes, acts, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::super::tests::Rng;

    const KINDS: [DType; 5] = [
        DType::Q8_0,
        DType::Q5_0,
        DType::Q4_1,
        DType::Q4_K,
        DType::Q6_K,
    ];

    /// Random rows: quantised random values (Q8_0, Q5_0), or random bytes
    /// with small f16 scales (K-quants: every integer weight and sub-block
    /// scale, the extremes included).
    fn weights(rng: &mut Rng, dtype: DType, rows: usize, cols: usize) -> Vec<u8> {
        (0..rows)
            .flat_map(|_| super::super::tests::random_row(rng, dtype, cols))
            .collect()
    }

    /// Rounding spread over the threads (prefill) gives the bits of the
    /// rounding on one thread, whatever the rows per thread, and leaves
    /// nothing of a larger earlier call behind.
    #[test]
    fn rounding_on_threads_has_the_bits_of_one_thread() {
        let mut rng = Rng(0x5eed_0a7e);
        let cols = 3 * BLOCK;
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        for threads in [1, 2, 3] {
            let t = Threads::new(threads);
            // Calls with fewer rows than the last, spread or not, and
            // first calls with the byte split and the pairs: nothing stale
            // may stay.
            let mut spread = ActsI16::default();
            let xs: Vec<f32> = (0..2 * cols).map(|_| rng.f()).collect();
            for layout in [Layout::Pairs, Layout::Split] {
                let xm = MatRef::new(&xs, 2, cols).unwrap();
                quantize(Simd::detect(), xm, layout, &mut spread);
            }
            for m in [40, 33, 1, SPREAD_ROWS - 1, SPREAD_ROWS, SPREAD_ROWS + 1] {
                let x: Vec<f32> = (0..m * cols).map(|_| rng.f() * 10.0).collect();
                let xm = MatRef::new(&x, m, cols).unwrap();
                for s in Simd::available() {
                    let mut one = ActsI16::default();
                    quantize(s, xm, Layout::Plain, &mut one);
                    quantize_on(s, &t, xm, Layout::Plain, &mut spread);
                    let what = format!("{m} rows on {threads} threads at {s:?}");
                    assert_eq!(spread.cols, cols, "{what}");
                    assert_eq!(spread.q, one.q, "values of {what}");
                    assert_eq!(bits(&spread.d), bits(&one.d), "scales of {what}");
                    assert_eq!(bits(&spread.sums), bits(&one.sums), "sums of {what}");
                    let split = (spread.lo.len(), spread.hi.len(), spread.neg_quad_q.len());
                    assert_eq!(split, (0, 0, 0), "byte split of {what}");
                    #[cfg(target_arch = "x86_64")]
                    assert!(spread.pairs.is_empty(), "pairs of {what}");
                }
            }
        }
        // Pairs laid out over those of a larger call are those of a fresh one.
        #[cfg(target_arch = "x86_64")]
        {
            let mut reused = ActsI16::default();
            for (m, c) in [(3, 5 * BLOCK), (1, 3 * BLOCK), (2, BLOCK)] {
                let x: Vec<f32> = (0..m * c).map(|_| rng.f()).collect();
                let xm = MatRef::new(&x, m, c).unwrap();
                let mut fresh = ActsI16::default();
                quantize(Simd::detect(), xm, Layout::Pairs, &mut fresh);
                quantize(Simd::detect(), xm, Layout::Pairs, &mut reused);
                // Every field of every pair, as bits.
                let key = |a: &ActsI16| -> Vec<u32> {
                    let mut k = Vec::new();
                    for p in &a.pairs {
                        k.extend(p.q.iter().map(|v| u32::from(*v as u16)));
                        k.extend(p.half_sums.iter().map(|v| *v as u32));
                        k.extend(p.d.iter().chain(&p.sums).map(|v| v.to_bits()));
                    }
                    k
                };
                assert_eq!(key(&reused), key(&fresh), "pairs of {m} x {c}");
                assert_eq!(fresh.pairs.len(), m * (c / BLOCK).div_ceil(2));
            }
        }
    }

    fn products(
        s: Simd,
        dtype: DType,
        w: &[u8],
        rb: usize,
        acts: &ActsI16,
        n: usize,
        gemm: bool,
    ) -> Vec<f32> {
        let m = acts.rows();
        let mut y = vec![f32::NAN; m * n];
        // SAFETY: `y` is m x n, exclusively borrowed; the kernels write
        // rows < m and columns < n only.
        let out = unsafe { Out::new(y.as_mut_ptr(), n, 0) };
        // Where level `s` has kernels, they (not the reference) must run,
        // except AVX-512 decode without the byte split its products need.
        #[cfg(target_arch = "x86_64")]
        match kernels(s, dtype) {
            Some(Kernels::Avx512) => {
                let ran = if gemm {
                    super::super::x86_i16::gemm(dtype, w, rb, acts, out)
                } else {
                    super::super::x86_i16::rows(dtype, w, rb, acts, out)
                };
                let split = !acts.lo.is_empty() || decode_layout(s, dtype) != Layout::Split;
                assert_eq!(ran, gemm || split, "{dtype} kernel ran (gemm {gemm})");
                if ran {
                    return y;
                }
            }
            Some(Kernels::Avx2) => {
                let ran = if gemm {
                    super::super::x86_i16_avx2::gemm(dtype, w, rb, acts, out)
                } else {
                    super::super::x86_i16_avx2::rows(dtype, w, rb, acts, out)
                };
                assert!(ran, "{dtype} AVX2 kernel ran (gemm {gemm})");
                return y;
            }
            None => {}
        }
        if gemm {
            super::gemm(s, dtype, w, rb, acts, out);
        } else {
            super::rows(s, dtype, w, rb, acts, out);
        }
        y
    }

    /// The AVX2 rounding has the reference's bits (the AVX-512 one, where
    /// the CPU has it, is what [`quantize`] runs).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_rounding_has_the_bits_of_the_reference() {
        if !super::super::x86_i16_avx2::available() {
            return;
        }
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for blocks in [1, 2, 7] {
            let cols = blocks * BLOCK;
            let mut x: Vec<f32> = (0..cols)
                .map(|i| rng.f() * [1e-3, 1.0, 1e3, 0.0, 1e-36][i / BLOCK % 5])
                .collect();
            if blocks == 7 {
                x[5 * BLOCK + 3] = f32::NAN;
                x[6 * BLOCK + 9] = f32::NEG_INFINITY;
            }
            let (mut q, mut d, mut sums) =
                (vec![0i16; cols], vec![0.0f32; blocks], vec![0.0f32; blocks]);
            let (mut qr, mut dr, mut sr) = (q.clone(), d.clone(), sums.clone());
            assert!(super::super::x86_i16_avx2::quantize_row(
                &x, &mut q, &mut d, &mut sums
            ));
            quantize_row_ref(&x, &mut qr, &mut dr, &mut sr);
            assert_eq!(q, qr, "{blocks} blocks");
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&d), bits(&dr), "{blocks} blocks");
            assert_eq!(sums, sr, "{blocks} blocks");
        }
    }

    /// Rounding, decode and prefill have the bits of the portable reference
    /// for every format, ragged row counts, 1 to 37 blocks, blocks of zeros
    /// and scales from 1e-30 to 1e3 (and 1e-36, which rounds to zero); and the result is within the rounding's
    /// bound of the f64 product of the dequantised weights and the f32
    /// activations.
    #[test]
    fn kernels_have_the_bits_of_the_reference() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        for dtype in KINDS {
            for (n, blocks, m) in [
                (1, 1, 1),
                (3, 2, 5),
                (33, 5, 7),
                (70, 13, 13),
                (4, 4, 4),
                (65, 3, 2),
                // More blocks than a stretch of the AVX2 prefill tile.
                (6, 37, 5),
                // Odd pair counts: a lone pair after whole ones, and a lone
                // block into chains 2 and 3 (AVX2 decode).
                (7, 7, 3),
                (5, 11, 2),
                // A group of 4 activation rows, then one of 2 (AVX2 decode
                // of a short prompt), with a lone block.
                (9, 3, 6),
            ] {
                let cols = blocks * dtype.block_len();
                let nb = cols / BLOCK;
                let w = weights(&mut rng, dtype, n, cols);
                let rb = dtype.bytes_for(cols).unwrap();
                let mut x: Vec<f32> = (0..m * cols)
                    // Tiny blocks (1e-36 rounds to zero) move by one
                    // block per row, so that no chain is always zero.
                    .map(|i| rng.f() * [1e-3, 1.0, 1e3, 1e-30, 1e-36][(i / BLOCK + i / cols) % 5])
                    .collect();
                x[cols - BLOCK..cols].fill(0.0);
                let xm = MatRef::new(&x, m, cols).unwrap();
                let mut acts = ActsI16::default();
                quantize(Simd::detect(), xm, Layout::Split, &mut acts);
                // Every level rounds to the same bits (checked against the
                // reference below).
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                for s in Simd::available() {
                    let mut at = ActsI16::default();
                    quantize(s, xm, Layout::Split, &mut at);
                    assert_eq!(at.q, acts.q, "{dtype} values at {s:?}");
                    assert_eq!(bits(&at.d), bits(&acts.d), "{dtype} scales at {s:?}");
                    assert_eq!(bits(&at.sums), bits(&acts.sums), "{dtype} sums at {s:?}");
                    let split = (&at.lo, &at.hi, &at.neg_quad_q);
                    assert_eq!(
                        split,
                        (&acts.lo, &acts.hi, &acts.neg_quad_q),
                        "{dtype} at {s:?}"
                    );
                }
                for i in 0..m {
                    let mut q = vec![0i16; cols];
                    let (mut d, mut sums) = (vec![0.0f32; nb], vec![0.0f32; nb]);
                    quantize_row_ref(xm.row(i), &mut q, &mut d, &mut sums);
                    assert_eq!(q, acts.q_row(i), "{dtype} row {i}");
                    let db: Vec<u32> = d.iter().map(|v| v.to_bits()).collect();
                    let ab: Vec<u32> = acts.d_row(i).iter().map(|v| v.to_bits()).collect();
                    assert_eq!(db, ab, "{dtype} scales of row {i}");
                    assert_eq!(sums, acts.sums_row(i), "{dtype} block sums of row {i}");
                    for (b, sb) in sums.iter().enumerate() {
                        let want: i32 = q[b * BLOCK..(b + 1) * BLOCK]
                            .iter()
                            .map(|v| i32::from(*v))
                            .sum();
                        assert_eq!(*sb, want as f32, "{dtype} sum of block {b} of row {i}");
                    }
                    let (mut lo, mut hi) = (vec![0u8; cols], vec![0i8; cols]);
                    let mut nq = vec![0i32; cols / 4];
                    split_row_ref(&q, &mut lo, &mut hi, &mut nq);
                    let split = acts.split_row(i);
                    assert_eq!(
                        (&lo[..], &hi[..]),
                        (split.0, split.1),
                        "{dtype} bytes of row {i}"
                    );
                    assert_eq!(nq, split.2, "{dtype} sums of row {i}");
                    for (l, v) in q.iter().enumerate() {
                        let back = 256 * i32::from(hi[l]) + i32::from(lo[l]);
                        assert_eq!(back, i32::from(*v), "{dtype} split of row {i} value {l}");
                    }
                }
                // Without the byte split (prefill's rounding) decode still
                // has the bits, from the reference where it needs the split;
                // with the values laid out in pairs too (the AVX2 kernels
                // lay them out themselves otherwise).
                let mut unsplit = acts.clone();
                quantize(Simd::detect(), xm, Layout::Plain, &mut unsplit);
                assert!(unsplit.lo.is_empty() && unsplit.neg_quad_q.is_empty());
                let mut paired = ActsI16::default();
                quantize(Simd::detect(), xm, Layout::Pairs, &mut paired);
                #[cfg(target_arch = "x86_64")]
                assert_eq!(paired.pairs.len(), m * nb.div_ceil(2), "{dtype} pairs");
                for s in Simd::available() {
                    let dec = products(s, dtype, &w, rb, &acts, n, false);
                    let pre = products(s, dtype, &w, rb, &acts, n, true);
                    for (other, what) in [(&unsplit, "without the split"), (&paired, "with pairs")]
                    {
                        let dec_other = products(s, dtype, &w, rb, other, n, false);
                        assert_eq!(
                            bits(&dec_other),
                            bits(&dec),
                            "{dtype} decode {what} at {s:?}"
                        );
                    }
                    for (k, (dv, pv)) in dec.iter().zip(&pre).enumerate() {
                        let (i, j) = (k / n, k % n);
                        let r = &w[j * rb..(j + 1) * rb];
                        let want =
                            dot_ref(dtype, r, acts.q_row(i), acts.d_row(i), acts.sums_row(i));
                        let what = format!("{dtype} {m}x{n}x{cols} ({i}, {j}) at {s:?}");
                        assert_eq!(dv.to_bits(), want.to_bits(), "decode {what}");
                        assert_eq!(pv.to_bits(), want.to_bits(), "prefill {what}");
                    }
                }
                for i in 0..m {
                    for j in 0..n {
                        let r = &w[j * rb..(j + 1) * rb];
                        let want =
                            dot_ref(dtype, r, acts.q_row(i), acts.d_row(i), acts.sums_row(i));
                        let what = format!("{dtype} {m}x{n}x{cols} ({i}, {j})");
                        let mut wf = vec![0.0f32; cols];
                        super::super::dequantize_row(dtype, r, &mut wf).unwrap();
                        let (mut exact, mut bound) = (0.0f64, 0.0f64);
                        for (l, (wl, xl)) in wf.iter().zip(xm.row(i)).enumerate() {
                            exact += f64::from(*wl) * f64::from(*xl);
                            // Half a rounding step of the block, plus f32 sums.
                            let step = f64::from(acts.d_row(i)[l / BLOCK]);
                            bound +=
                                f64::from(wl.abs()) * (0.5 * step + 1e-6 * f64::from(xl.abs()));
                        }
                        let err = (f64::from(want) - exact).abs();
                        assert!(
                            err <= bound * 1.01 + 1e-30,
                            "{what}: {want} vs {exact} (err {err:e}, bound {bound:e})"
                        );
                    }
                }
            }
        }
    }

    /// A NaN or an infinity among a row's activations makes every output of
    /// that row NaN, in decode and in prefill.
    #[test]
    fn non_finite_activations_give_nan() {
        let mut rng = Rng(3);
        for dtype in KINDS {
            let (n, cols, m) = (9, 3 * dtype.block_len(), 6);
            let w = weights(&mut rng, dtype, n, cols);
            let rb = dtype.bytes_for(cols).unwrap();
            let mut x: Vec<f32> = (0..m * cols).map(|_| rng.f()).collect();
            x[cols + 40] = f32::NAN;
            x[3 * cols + 5] = f32::INFINITY;
            let mut acts = ActsI16::default();
            quantize(
                Simd::detect(),
                MatRef::new(&x, m, cols).unwrap(),
                Layout::Split,
                &mut acts,
            );
            for (s, gemm) in Simd::available()
                .into_iter()
                .flat_map(|s| [(s, false), (s, true)])
            {
                let y = products(s, dtype, &w, rb, &acts, n, gemm);
                for i in 0..m {
                    let bad = i == 1 || i == 3;
                    for j in 0..n {
                        assert_eq!(y[i * n + j].is_nan(), bad, "{dtype} ({i}, {j}) gemm {gemm}");
                    }
                }
            }
        }
    }
}
