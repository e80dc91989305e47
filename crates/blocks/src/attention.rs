//! Self-attention composed from parts, each a [`Layer`]:
//!
//! ```text
//! x ─ projection ─▶ [q | k | v] ─ QkNorm? ─ Rope ─ Attend<mask> ─▶ heads ─ output Linear ─▶ y
//! ```
//!
//! * the **projection** maps a row to `[q | k | v]` side by side: three
//!   [`Linear`]s under a [`Parallel`] fork ([`QkvProjection`], Llama, Gemma,
//!   BERT) or one fused `Linear` (GPT-2's `c_attn`);
//! * [`QkNorm`] RMS-normalises each head of q and k (Gemma 3, Qwen 3);
//! * [`Rope`] rotates each head of q and k at its row's absolute position;
//! * [`Attend`] appends k and v to its KV cache and computes
//!   `softmax(q kᵀ · scale + mask) v` for each head; the mask is a type
//!   ([`Causal`], [`SlidingWindow`], [`Bidirectional`]);
//! * the **output projection** is a plain [`Linear`].
//!
//! So two architectures' attentions differ by their types, not by flags:
//! [`SelfAttention`] is Llama's, [`NormedSelfAttention`] Gemma 3's.

use std::ops::Range;
use std::sync::Arc;

use half::f16;
use patchbay_combinators::{
    check_in, series, Capacity, Ctx, KvType, Layer, LayerError, Node, Parallel,
};
use patchbay_primitives::rope::{self, RopeLayout, RopeTable};
use patchbay_primitives::{convert, gemm, kernels, matmul, Act, MatRef, Simd, Threads};

use crate::{BlockError, Linear, RmsNorm};

/// How many heads of which size: the shape every attention part agrees on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heads {
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads (`n_heads` for multi-head, fewer for grouped-query).
    pub n_kv_heads: usize,
    /// Features per head.
    pub head_dim: usize,
}

impl Heads {
    /// Checked heads: `n_heads` a positive multiple of `n_kv_heads`, `head_dim > 0`.
    pub fn new(n_heads: usize, n_kv_heads: usize, head_dim: usize) -> Result<Heads, BlockError> {
        if n_heads == 0 || n_kv_heads == 0 || !n_heads.is_multiple_of(n_kv_heads) || head_dim == 0 {
            return Err(BlockError::Config(format!(
                "attention heads {n_heads} must be a positive multiple of kv heads {n_kv_heads}, \
                 with a positive head size (found {head_dim})"
            )));
        }
        Ok(Heads {
            n_heads,
            n_kv_heads,
            head_dim,
        })
    }

    /// Width of all query heads.
    pub fn q_width(&self) -> usize {
        self.n_heads * self.head_dim
    }

    /// Width of all key (or value) heads.
    pub fn kv_width(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// Width of a `[q | k | v]` row.
    pub fn qkv_width(&self) -> usize {
        self.q_width() + 2 * self.kv_width()
    }

    fn detail(&self) -> String {
        format!(
            "heads={} kv={} head_dim={}",
            self.n_heads, self.n_kv_heads, self.head_dim
        )
    }
}

/// Separate q, k and v projections whose outputs sit side by side: `[q | k | v]`.
pub type QkvProjection = Parallel<Parallel<Linear, Linear>, Linear>;

/// Builds a [`QkvProjection`], checking the shapes against `heads`.
pub fn qkv_projection(
    heads: Heads,
    wq: Linear,
    wk: Linear,
    wv: Linear,
) -> Result<QkvProjection, BlockError> {
    let dim = wq.in_dim();
    let checks = [
        ("attn_q", &wq, heads.q_width()),
        ("attn_k", &wk, heads.kv_width()),
        ("attn_v", &wv, heads.kv_width()),
    ];
    for (what, w, out) in checks {
        if w.out_dim() != out || w.in_dim() != dim {
            return Err(BlockError::Shape {
                what,
                expected: vec![out, dim],
                found: vec![w.out_dim(), w.in_dim()],
            });
        }
    }
    Ok(Parallel::new(
        Parallel::new(wq.named("attn_q"), wk.named("attn_k")),
        wv.named("attn_v"),
    ))
}

/// Llama's attention: projections, RoPE, causal attend, output projection.
pub type SelfAttention<M = Causal> = series![QkvProjection, Rope, Attend<M>, Linear];

/// Gemma 3's attention: as [`SelfAttention`] with per-head q/k norms before RoPE.
pub type NormedSelfAttention<M = Causal> = series![QkvProjection, QkNorm, Rope, Attend<M>, Linear];

/// Checks an output projection against `heads` and names it.
pub fn output_projection(heads: Heads, wo: Linear) -> Result<Linear, BlockError> {
    if wo.in_dim() != heads.q_width() {
        return Err(BlockError::Shape {
            what: "attn_output",
            expected: vec![wo.out_dim(), heads.q_width()],
            found: vec![wo.out_dim(), wo.in_dim()],
        });
    }
    Ok(wo.named("attn_output"))
}

/// RMS-normalises each head of q and of k in a `[q | k | v]` row, with one
/// weight of `head_dim` for all query heads and one for all key heads; v
/// passes through.
#[derive(Debug, Clone)]
pub struct QkNorm {
    heads: Heads,
    q: RmsNorm,
    k: RmsNorm,
}

impl QkNorm {
    /// Per-head norms over `heads` (each weight `head_dim` wide).
    pub fn new(heads: Heads, q: RmsNorm, k: RmsNorm) -> Result<QkNorm, BlockError> {
        let hd = heads.head_dim;
        if q.in_dim() != hd || k.in_dim() != hd {
            return Err(BlockError::Config(format!(
                "q/k norm widths {} / {} differ from head size {hd}",
                q.in_dim(),
                k.in_dim()
            )));
        }
        Ok(QkNorm { heads, q, k })
    }
}

impl Layer for QkNorm {
    type State = ();
    fn in_dim(&self) -> usize {
        self.heads.qkv_width()
    }
    fn out_dim(&self) -> usize {
        self.heads.qkv_width()
    }
    fn new_state(&self, _cap: Capacity) {}
    fn forward(&self, x: &Act, y: &mut Act, _: &mut (), ctx: &Ctx<'_>) -> Result<(), LayerError> {
        check_in("QkNorm", self.in_dim(), x)?;
        y.copy_from(x);
        let (qw, kw) = (self.heads.q_width(), self.heads.kv_width());
        for r in 0..x.rows() {
            let (src, dst) = (x.row(r), y.row_mut(r));
            self.q.apply_row(ctx.simd, &src[..qw], &mut dst[..qw]);
            self.k
                .apply_row(ctx.simd, &src[qw..qw + kw], &mut dst[qw..qw + kw]);
        }
        Ok(())
    }
    fn describe(&self) -> Node {
        let hd = self.heads.head_dim;
        Node::wiring(
            "QkNorm",
            self.in_dim(),
            self.out_dim(),
            vec![self.q.describe(), self.k.describe()],
        )
        .with_detail(format!("per head, {hd} wide"))
    }
}

/// Rotary position embedding of each head of q and k in a `[q | k | v]` row,
/// at the row's absolute position in its sequence ([`Ctx::position`]).
#[derive(Debug, Clone)]
pub struct Rope {
    heads: Heads,
    table: Arc<RopeTable>,
    layout: RopeLayout,
}

impl Rope {
    /// Rotates q and k by `table` with the pair `layout` the weights were stored for.
    pub fn new(
        heads: Heads,
        table: Arc<RopeTable>,
        layout: RopeLayout,
    ) -> Result<Rope, BlockError> {
        let (rot, hd) = (table.rot_dim(), heads.head_dim);
        if rot > hd || rot % 2 != 0 {
            return Err(BlockError::Config(format!(
                "rope dimension {rot} does not fit head size {hd} (it must be even and at most the head size)"
            )));
        }
        Ok(Rope {
            heads,
            table,
            layout,
        })
    }

    /// The table.
    pub fn table(&self) -> &Arc<RopeTable> {
        &self.table
    }
}

impl Layer for Rope {
    type State = ();
    fn in_dim(&self) -> usize {
        self.heads.qkv_width()
    }
    fn out_dim(&self) -> usize {
        self.heads.qkv_width()
    }
    fn new_state(&self, _cap: Capacity) {}
    fn forward(&self, x: &Act, y: &mut Act, _: &mut (), ctx: &Ctx<'_>) -> Result<(), LayerError> {
        check_in("Rope", self.in_dim(), x)?;
        for r in 0..x.rows() {
            let end = ctx.position(r).saturating_add(1);
            if end > self.table.max_pos() {
                return Err(LayerError::ContextFull {
                    layer: "Rope",
                    pos: end,
                    max_context: self.table.max_pos(),
                });
            }
        }
        y.copy_from(x);
        let (qw, kw, hd) = (
            self.heads.q_width(),
            self.heads.kv_width(),
            self.heads.head_dim,
        );
        for r in 0..x.rows() {
            let row = y.row_mut(r);
            let pos = ctx.position(r);
            rope::rope(ctx.simd, &self.table, self.layout, &mut row[..qw], hd, pos);
            rope::rope(
                ctx.simd,
                &self.table,
                self.layout,
                &mut row[qw..qw + kw],
                hd,
                pos,
            );
        }
        Ok(())
    }
    fn describe(&self) -> Node {
        Node::leaf("Rope", self.in_dim(), self.out_dim(), 0).with_detail(format!(
            "{:?} {} of {}",
            self.layout,
            self.table.rot_dim(),
            self.heads.head_dim
        ))
    }
}

/// Which cached positions a query row may see.
pub trait Mask: Clone + std::fmt::Debug + Send + Sync {
    /// The visible key positions for the query at `query` when the cache
    /// holds positions `0..end` (`end` includes the current batch).
    fn visible(&self, query: usize, end: usize) -> Range<usize>;
    /// A short description for the graph.
    fn describe(&self) -> String;
    /// Whether a query sees its whole sequence (an encoder), so that a
    /// sequence is never decoded one row at a time against earlier rows:
    /// - its score products need not share the decode kernel's summation
    ///   order and take the faster plain order of
    ///   [`gemm`](patchbay_primitives::gemm) instead (a row's scores still do
    ///   not depend on the rows beside it);
    /// - [`Attend`] keeps no keys or values between calls: each call must
    ///   hold each of its sequences whole, as one run of rows at positions
    ///   0, 1, 2, ... (else [`LayerError::PartialSequence`]), and attends to
    ///   those rows where they are.
    fn whole_sequence(&self) -> bool {
        false
    }
}

/// Each position sees itself and every earlier one (decoders).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Causal;

impl Mask for Causal {
    #[inline]
    fn visible(&self, query: usize, _end: usize) -> Range<usize> {
        0..query + 1
    }
    fn describe(&self) -> String {
        "causal".into()
    }
}

/// Causal, limited to the last `window` positions including the current one
/// (local layers of Gemma 3, Mistral); `None` is plain causal (Gemma 3's
/// global layers share the type of its local ones).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SlidingWindow {
    /// Positions a query sees, itself included; `None`: all earlier ones.
    pub window: Option<usize>,
}

impl Mask for SlidingWindow {
    #[inline]
    fn visible(&self, query: usize, _end: usize) -> Range<usize> {
        let end = query + 1;
        match self.window {
            Some(w) => end.saturating_sub(w.max(1))..end,
            None => 0..end,
        }
    }
    fn describe(&self) -> String {
        match self.window {
            Some(w) => format!("sliding window {w}"),
            None => "causal".into(),
        }
    }
}

/// Every position sees every position of the sequence (encoders). Each
/// call holds its sequences whole ([`Mask::whole_sequence`]).
///
/// ```
/// use patchbay_blocks::{Attend, Bidirectional, Heads};
/// use patchbay_combinators::{Capacity, Ctx, Layer, Scratch};
/// use patchbay_primitives::{Act, Simd, Threads};
/// let attend = Attend::new(Heads::new(1, 1, 1).unwrap(), Bidirectional);
/// let (threads, scratch) = (Threads::single(), Scratch::new());
/// let ctx = Ctx::new(Simd::detect(), &threads, &scratch);
/// let mut state = attend.new_state(Capacity::new(2, 4));
/// // Equal keys: both positions weigh both values alike, the first too.
/// let x = Act::from_vec(2, 3, vec![1.0, 1.0, 2.0, 1.0, 1.0, 4.0]).unwrap();
/// assert_eq!(attend.apply(&x, &mut state, &ctx).unwrap().as_slice(), &[3.0, 3.0]);
/// // A sequence continued from position 2 is part of one: an error.
/// assert!(attend.apply(&x, &mut state, &ctx.at(2)).is_err());
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bidirectional;

impl Mask for Bidirectional {
    #[inline]
    fn visible(&self, _query: usize, end: usize) -> Range<usize> {
        0..end
    }
    fn describe(&self) -> String {
        "bidirectional".into()
    }
    fn whole_sequence(&self) -> bool {
        true
    }
}

/// Most query rows whose scores are computed in one product.
const RUN_ROWS: usize = 128;

/// Bytes of f32 keys (or values) an f16 cache widens at a time: a piece
/// read while it is in L1 (SmolLM2's tg32 @ d4096 ran 7-10% slower at 1
/// thread with 16 KB or 128 KB pieces).
const WIDE_BYTES: usize = 32 << 10;

/// Position from which one row's heads are spread over the threads: a
/// shorter context's attention costs less than handing it out (tg64 of
/// Gemma 3 at 2 threads ran 5% slower with every row's heads spread).
const SPLIT_HEADS_FROM: usize = 256;

/// Rows from which a batch's keys and values are appended to the cache by
/// every thread (fewer rows, as in decoding, are not worth a dispatch).
const APPEND_SPLIT_ROWS: usize = 64;

thread_local! {
    /// Attention scores of a run of query rows, per worker thread (kept
    /// between calls, so decoding does not allocate).
    static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    /// A piece of an f16 cache's keys (then their scores) or values,
    /// widened to f32, per worker thread (kept between calls, as `SCORES`).
    static WIDE: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Scaled dot-product attention over a KV cache: takes `[q | k | v]` rows,
/// appends their keys and values to the cache slot of each row's sequence at
/// its position ([`Ctx::sequence`], [`Ctx::position`]: consecutive positions
/// from `ctx.pos` in one sequence, or a [`RowMap`](patchbay_combinators::RowMap)
/// for several), and returns each query head's `softmax(q kᵀ · scale) v` under
/// the mask within the row's own sequence, heads side by side
/// (`n_heads * head_dim` wide). Under a whole-sequence mask
/// ([`Bidirectional`]) nothing is cached: each call holds its sequences
/// whole and their keys and values are read from its rows.
///
/// ```
/// use patchbay_blocks::{Attend, Causal, Heads};
/// use patchbay_combinators::{Capacity, Ctx, Layer, Scratch};
/// use patchbay_primitives::{Act, Simd, Threads};
/// let attend = Attend::new(Heads::new(1, 1, 2).unwrap(), Causal);
/// let (threads, scratch) = (Threads::single(), Scratch::new());
/// let ctx = Ctx::new(Simd::detect(), &threads, &scratch);
/// let mut cache = attend.new_state(Capacity::new(2, 4));
/// // One position attends only to itself: the output is its value.
/// let x = Act::from_vec(1, 6, vec![1.0, 0.0, 1.0, 0.0, 5.0, 6.0]).unwrap();
/// assert_eq!(attend.apply(&x, &mut cache, &ctx).unwrap().as_slice(), &[5.0, 6.0]);
/// // Past the cache: an error, not a panic.
/// assert!(attend.apply(&x, &mut cache, &ctx.at(4)).is_err());
/// ```
#[derive(Debug, Clone)]
pub struct Attend<M> {
    heads: Heads,
    scale: f32,
    mask: M,
}

/// The keys and values of every position seen so far, one slot per
/// sequence: an [`Attend`]'s state (empty under a whole-sequence mask, which
/// reads each call's own rows).
#[derive(Debug)]
pub struct KvCache {
    /// Keys, `[slot][kv_head][position][head_dim]`.
    k: KvValues,
    /// Values, same layout.
    v: KvValues,
    max_context: usize,
    /// Positions held per slot.
    lens: Vec<usize>,
}

/// A cache's keys or values, as its [`KvType`] stores them.
#[derive(Debug)]
enum KvValues {
    F32(Vec<f32>),
    /// f16 bits: a zeroed `u16` vector is allocated zeroed (pages are
    /// touched only when written), which a vector of `f16` is not.
    F16(Vec<u16>),
}

impl KvValues {
    fn new(kv: KvType, n: usize) -> KvValues {
        match kv {
            KvType::F32 => KvValues::F32(vec![0.0; n]),
            KvType::F16 => KvValues::F16(vec![0; n]),
        }
    }

    fn kv_type(&self) -> KvType {
        match self {
            KvValues::F32(_) => KvType::F32,
            KvValues::F16(_) => KvType::F16,
        }
    }

    /// Stores `src` from element `at` on (rounded to nearest even in f16).
    fn put(&mut self, simd: Simd, at: usize, src: &[f32]) {
        match self {
            KvValues::F32(c) => c[at..at + src.len()].copy_from_slice(src),
            KvValues::F16(c) => {
                let dst = bytemuck::cast_slice_mut::<u16, f16>(&mut c[at..at + src.len()]);
                convert::f32_to_f16(simd, src, dst);
            }
        }
    }
}

impl KvCache {
    /// Positions currently held for the first sequence.
    pub fn len(&self) -> usize {
        self.lens[0]
    }

    /// Positions currently held for sequence `seq` (0 past the slots).
    pub fn len_of(&self, seq: usize) -> usize {
        self.lens.get(seq).copied().unwrap_or(0)
    }

    /// Sequence slots.
    pub fn slots(&self) -> usize {
        self.lens.len()
    }

    /// Forgets sequence `seq` only, so its slot can take a new sequence.
    pub fn clear_sequence(&mut self, seq: usize) {
        if let Some(l) = self.lens.get_mut(seq) {
            *l = 0;
        }
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.lens.iter().all(|&l| l == 0)
    }

    /// Positions the cache can hold.
    pub fn max_context(&self) -> usize {
        self.max_context
    }

    /// How it stores keys, and values.
    pub fn kv_types(&self) -> (KvType, KvType) {
        (self.k.kv_type(), self.v.kv_type())
    }
}

/// A batch's keys (or values) on their way into the cache, many rows at once.
struct CachedRows<'a, L> {
    /// Runs of consecutive rows of one sequence: `(slot, rows)`.
    runs: &'a [(usize, Range<usize>)],
    /// Row `r`'s (slot, position).
    locate: &'a L,
    /// The batch's `[q | k | v]` rows, `xw` wide.
    xs: &'a [f32],
    xw: usize,
    /// The column of kv head 0's keys (or values).
    first_col: usize,
    kv: usize,
    hd: usize,
}

impl<L: Fn(usize) -> (usize, usize) + Sync> CachedRows<'_, L> {
    /// Puts every row's `hd` values of each kv head into `cache` (slots of
    /// `cap` positions) with `put(dst, src)`: one task per (slot, kv head),
    /// whose positions are one contiguous region of the cache, so the tasks
    /// never share a destination.
    fn append<T: Send>(
        &self,
        threads: &Threads,
        cache: &mut [T],
        cap: usize,
        put: impl Fn(&mut [T], &[f32]) + Sync,
    ) {
        let hd = self.hd;
        threads.for_each_chunk(cache, cap * hd, |c, region| {
            let (s, g) = (c / self.kv, c % self.kv);
            let col = self.first_col + g * hd;
            for (_, rows) in self.runs.iter().filter(|(seq, _)| *seq == s) {
                for r in rows.clone() {
                    let t = (self.locate)(r).1;
                    put(
                        &mut region[t * hd..][..hd],
                        &self.xs[r * self.xw + col..][..hd],
                    );
                }
            }
        });
    }
}

impl<M: Mask> Attend<M> {
    /// Attention over `heads` with the usual `1/sqrt(head_dim)` scale.
    pub fn new(heads: Heads, mask: M) -> Attend<M> {
        Attend {
            heads,
            scale: 1.0 / (heads.head_dim as f32).sqrt(),
            mask,
        }
    }

    /// Another score scale (Gemma's `query_pre_attn_scalar^-1/2`).
    pub fn with_scale(mut self, scale: f32) -> Attend<M> {
        self.scale = scale;
        self
    }

    /// The mask.
    pub fn mask(&self) -> &M {
        &self.mask
    }

    /// The heads.
    pub fn heads(&self) -> Heads {
        self.heads
    }
}

impl<M: Mask> Layer for Attend<M> {
    type State = KvCache;

    fn in_dim(&self) -> usize {
        self.heads.qkv_width()
    }
    fn out_dim(&self) -> usize {
        self.heads.q_width()
    }
    fn new_state(&self, cap: Capacity) -> KvCache {
        // A whole-sequence mask reads each call's own rows: nothing to keep.
        let n = if self.mask.whole_sequence() {
            0
        } else {
            self.heads.kv_width() * cap.max_context * cap.max_seqs
        };
        KvCache {
            k: KvValues::new(cap.key_type, n),
            v: KvValues::new(cap.value_type, n),
            max_context: cap.max_context,
            lens: vec![0; cap.max_seqs],
        }
    }
    fn reset(&self, st: &mut KvCache) {
        st.lens.fill(0);
    }
    fn forward(
        &self,
        x: &Act,
        y: &mut Act,
        st: &mut KvCache,
        ctx: &Ctx<'_>,
    ) -> Result<(), LayerError> {
        check_in("Attend", self.in_dim(), x)?;
        let m = x.rows();
        let Heads {
            n_heads: h,
            n_kv_heads: kv,
            head_dim: hd,
        } = self.heads;
        let (qw, kw) = (self.heads.q_width(), self.heads.kv_width());
        let cap = st.max_context;
        let slots = st.lens.len();
        for r in 0..m {
            let (s, end) = (ctx.sequence(r), ctx.position(r).saturating_add(1));
            if s >= slots {
                return Err(LayerError::SequenceSlot {
                    layer: "Attend",
                    seq: s,
                    slots,
                });
            }
            if end > cap {
                return Err(LayerError::ContextFull {
                    layer: "Attend",
                    pos: end,
                    max_context: cap,
                });
            }
        }
        let (map, pos0) = (ctx.map, ctx.pos);
        let locate = move |r: usize| match map {
            Some(m) => (m.sequence(r), m.position(r)),
            None => (0, pos0 + r),
        };
        let (xs, xw) = (x.as_slice(), x.cols());
        let whole = self.mask.whole_sequence();
        // With a whole-sequence mask, the first row of each sequence here
        // (its keys and values are read where they are); else the cache.
        let mut starts: Vec<usize> = Vec::new();
        if whole {
            starts = vec![usize::MAX; slots];
            st.lens.fill(0);
            let mut r = 0;
            while r < m {
                let s = locate(r).0;
                let mut e = r;
                while e < m && locate(e).0 == s {
                    let pos = locate(e).1;
                    if pos != e - r || starts[s] != usize::MAX {
                        return Err(LayerError::PartialSequence {
                            layer: "Attend",
                            seq: s,
                            row: e,
                            pos,
                        });
                    }
                    e += 1;
                }
                starts[s] = r;
                st.lens[s] = e - r;
                r = e;
            }
        } else {
            // Append this batch's keys and values to each row's slot (with
            // many rows, on every thread: see `CachedRows`).
            if m < APPEND_SPLIT_ROWS {
                for r in 0..m {
                    let row = x.row(r);
                    let (s, t) = locate(r);
                    for g in 0..kv {
                        let dst = ((s * kv + g) * cap + t) * hd;
                        let src = qw + g * hd;
                        st.k.put(ctx.simd, dst, &row[src..src + hd]);
                        st.v.put(ctx.simd, dst, &row[src + kw..src + kw + hd]);
                    }
                }
            } else {
                // Runs of consecutive rows of one sequence, so a task skips the
                // other sequences' rows in one step.
                let mut runs: Vec<(usize, Range<usize>)> = Vec::new();
                for r in 0..m {
                    let s = locate(r).0;
                    match runs.last_mut() {
                        Some((last, rows)) if *last == s => rows.end = r + 1,
                        _ => runs.push((s, r..r + 1)),
                    }
                }
                for (cache, first_col) in [(&mut st.k, qw), (&mut st.v, qw + kw)] {
                    let rows = CachedRows {
                        runs: &runs,
                        locate: &locate,
                        xs,
                        xw,
                        first_col,
                        kv,
                        hd,
                    };
                    match cache {
                        KvValues::F32(cache) => {
                            rows.append(ctx.threads, cache, cap, |dst, src| {
                                // A plain loop: a 32-value copy inline, not a call.
                                for (d, v) in dst.iter_mut().zip(src) {
                                    *d = *v;
                                }
                            })
                        }
                        KvValues::F16(cache) => {
                            let simd = ctx.simd;
                            rows.append(ctx.threads, cache, cap, |dst, src| {
                                convert::f32_to_f16(simd, src, bytemuck::cast_slice_mut(dst))
                            })
                        }
                    }
                }
            }
            // A sequence now holds everything up to its last row here; one
            // sequence at consecutive positions ends exactly there (a re-run from
            // an earlier position forgets what came after).
            match ctx.map {
                None => st.lens[0] = ctx.pos.saturating_add(m),
                Some(_) => {
                    for r in 0..m {
                        let s = ctx.sequence(r);
                        st.lens[s] = st.lens[s].max(ctx.position(r) + 1);
                    }
                }
            }
        }
        // Scores, softmax and the weighted sum of values, per row and head.
        let group = h / kv;
        y.reshape(m, qw);
        let (k_cache, v_cache, lens) = (&st.k, &st.v, &st.lens);
        let (scale, mask, simd) = (self.scale, &self.mask, ctx.simd);
        let failed = std::sync::Mutex::new(None);
        let fail = |err: patchbay_primitives::ShapeError| {
            if let Ok(mut f) = failed.lock() {
                f.get_or_insert(err);
            }
        };
        // A run's scores hold all heads of a group: fewer rows per run keep
        // them as small as one head's run of `RUN_ROWS`.
        let run_rows = (RUN_ROWS / group).max(1);
        // Rows `first..first + rows`, heads `heads` (whole groups of `sub`
        // heads sharing a kv head) into `out`: row `r`'s head `head` at
        // `r * qw + (head - heads.start) * hd`.
        let attend = |first: usize,
                      rows: usize,
                      heads: Range<usize>,
                      sub: usize,
                      out: &mut [f32]| {
            out.fill(0.0);
            let one = Threads::single();
            SCORES.with(|cell| {
                WIDE.with(|wide_cell| {
                    let mut scores = cell.borrow_mut();
                    let mut wide = wide_cell.borrow_mut();
                    // Runs of consecutive rows of one sequence: their scores
                    // against the keys any of them sees form one product.
                    let mut i = 0;
                    while i < rows {
                        let seq = locate(first + i).0;
                        let mut e = i + 1;
                        while e < rows && e - i < run_rows && locate(first + e).0 == seq {
                            e += 1;
                        }
                        let span = |r: usize| mask.visible(locate(first + r).1, lens[seq]);
                        let (lo, hi) = (i..e).fold((usize::MAX, 0), |(lo, hi), r| {
                            let sp = span(r);
                            (lo.min(sp.start), hi.max(sp.end))
                        });
                        let (nq, nk) = (e - i, hi.saturating_sub(lo));
                        if nk == 0 {
                            i = e;
                            continue;
                        }
                        // Rows `from..from + len` of the sequence's keys
                        // (or values) for kv head `g`, where they lie: the
                        // call's rows, or an f32 cache.
                        let kv_rows = |values: bool, g: usize, from: usize, len: usize| {
                            let cache = if values { v_cache } else { k_cache };
                            match cache {
                                _ if whole => {
                                    let col = qw + usize::from(values) * kw + g * hd;
                                    let row = starts[seq] + from;
                                    MatRef::with_stride(&xs[row * xw + col..], len, hd, xw)
                                }
                                KvValues::F32(cache) => {
                                    let at = ((seq * kv + g) * cap + from) * hd;
                                    MatRef::new(&cache[at..at + len * hd], len, hd)
                                }
                                KvValues::F16(_) => unreachable!("f16 rows are widened"),
                            }
                        };
                        // Rows `from..from + len` of an f16 cache's keys (or
                        // values) of kv head `g`, widened into the start of
                        // `wide` (exactly: attention then runs on them as on
                        // f32 ones); nothing for an f32 cache.
                        let widen = |values: bool,
                                     g: usize,
                                     from: usize,
                                     len: usize,
                                     wide: &mut Vec<f32>| {
                            let cache = if values { v_cache } else { k_cache };
                            let KvValues::F16(cache) = cache else {
                                return;
                            };
                            let at = ((seq * kv + g) * cap + from) * hd;
                            if wide.len() < len * hd {
                                wide.resize(len * hd, 0.0);
                            }
                            let src = bytemuck::cast_slice::<u16, f16>(&cache[at..at + len * hd]);
                            convert::f16_to_f32(simd, src, &mut wide[..len * hd]);
                        };
                        let f16_keys = matches!(k_cache, KvValues::F16(_)) && !whole;
                        let f16_values = matches!(v_cache, KvValues::F16(_)) && !whole;
                        // Keys (values) per widened piece: about `WIDE_BYTES`
                        // of f32s, so a piece stays in L1 or L2 while it is read.
                        let piece = (WIDE_BYTES / 4 / hd.max(1)).max(1);
                        // The heads of one kv head read the same keys and
                        // values: their scores and weighted sums share the
                        // loads. Head `j` of the group, row `r` of the run:
                        // scores row `j * nq + r`.
                        let need = sub * nq * nk;
                        if scores.len() < need {
                            // At least the whole cache, so a growing context
                            // does not reallocate while decoding.
                            scores.resize(need.max(sub * cap), 0.0);
                        }
                        for head0 in heads.clone().step_by(sub) {
                            let g = head0 / group;
                            let sc = &mut scores[..need];
                            // Scores in the order of a matrix product, which
                            // gives each one the same operations whatever the
                            // rows beside it (one row decoding, the heads of a
                            // group, or a whole prompt), and whatever keys
                            // beside it (f16 keys go in pieces).
                            let score = |q: MatRef<'_>, keys: MatRef<'_>, out: &mut [f32]| {
                                if whole {
                                    gemm::matmul_sequential(simd, &one, q, keys, out)
                                } else {
                                    matmul::matmul(simd, &one, q, keys, out)
                                }
                            };
                            // Query `j`'s rows (one row: its heads side by side,
                            // as `j` = 0 of `sub` rows).
                            let queries = |j: usize| {
                                if nq == 1 {
                                    let at = (first + i) * xw + head0 * hd;
                                    MatRef::with_stride(&xs[at..], sub, hd, hd)
                                } else {
                                    let at = (first + i) * xw + (head0 + j) * hd;
                                    MatRef::with_stride(&xs[at..], nq, hd, xw)
                                }
                            };
                            let (n_queries, q_rows) = if nq == 1 { (1, sub) } else { (sub, nq) };
                            let done = if f16_keys {
                                // A piece of keys widened at a time, for every
                                // query; its scores go to the end of `wide`,
                                // then to their rows.
                                let at = piece * hd;
                                if wide.len() < at + q_rows * piece {
                                    wide.resize(at + q_rows * piece, 0.0);
                                }
                                (0..nk).step_by(piece).try_for_each(|c0| {
                                    let len = piece.min(nk - c0);
                                    widen(false, g, lo + c0, len, &mut wide);
                                    let (keys, tmp) = wide.split_at_mut(at);
                                    let keys = MatRef::new(&keys[..len * hd], len, hd)?;
                                    let tmp = &mut tmp[..q_rows * len];
                                    for j in 0..n_queries {
                                        score(queries(j)?, keys, tmp)?;
                                        let rows = &mut sc[j * q_rows * nk..][..q_rows * nk];
                                        for (row, t) in
                                            rows.chunks_exact_mut(nk).zip(tmp.chunks_exact(len))
                                        {
                                            row[c0..c0 + len].copy_from_slice(t);
                                        }
                                    }
                                    Ok(())
                                })
                            } else {
                                kv_rows(false, g, lo, nk).and_then(|keys| {
                                    (0..n_queries).try_for_each(|j| {
                                        let rows = &mut sc[j * q_rows * nk..][..q_rows * nk];
                                        score(queries(j)?, keys, rows)
                                    })
                                })
                            };
                            if let Err(err) = done {
                                return fail(err);
                            }
                            // Softmax over each row's own span, then the
                            // weighted sum of values: for a row alone, of all
                            // its group's heads at once; for rows sharing a
                            // span, of those rows, head by head.
                            let group_at = |r: usize| {
                                let sp = span(r);
                                let mut r2 = r + 1;
                                while r2 < e && span(r2) == sp {
                                    r2 += 1;
                                }
                                (sp, r2)
                            };
                            let mut r = i;
                            while r < e {
                                let (sp, r2) = group_at(r);
                                for j in 0..sub {
                                    for rr in r..r2 {
                                        let at = (j * nq + rr - i) * nk + sp.start - lo;
                                        kernels::softmax_scaled(
                                            simd,
                                            &mut sc[at..][..sp.len()],
                                            scale,
                                        );
                                    }
                                }
                                r = r2;
                            }
                            // Rows `r..r2` (one span) weigh `vals`, the values
                            // of positions `from..`.
                            let weigh = |sc: &[f32],
                                         out: &mut [f32],
                                         r: usize,
                                         r2: usize,
                                         from: usize,
                                         vals: MatRef<'_>| {
                                let w_at = |j: usize| (j * nq + r - i) * nk + from - lo;
                                let y_at = |j: usize| r * qw + (head0 - heads.start + j) * hd;
                                if r2 - r == 1 {
                                    kernels::axpy_rows_many(
                                        simd,
                                        &sc[w_at(0)..],
                                        nq * nk,
                                        sub,
                                        vals,
                                        &mut out[y_at(0)..],
                                        hd,
                                    );
                                } else {
                                    for j in 0..sub {
                                        kernels::axpy_rows_many(
                                            simd,
                                            &sc[w_at(j)..],
                                            nk,
                                            r2 - r,
                                            vals,
                                            &mut out[y_at(j)..],
                                            qw,
                                        );
                                    }
                                }
                            };
                            if !f16_values {
                                let mut r = i;
                                while r < e {
                                    let (sp, r2) = group_at(r);
                                    match kv_rows(true, g, sp.start, sp.len()) {
                                        Ok(vals) => weigh(sc, out, r, r2, sp.start, vals),
                                        Err(err) => return fail(err),
                                    }
                                    r = r2;
                                }
                                continue;
                            }
                            // f16 values: a piece widened at a time for every
                            // row that sees it. Bit for bit the same: each
                            // output still takes its multiply-adds in the order
                            // of the keys, piece after piece.
                            for c0 in (0..nk).step_by(piece) {
                                let len = piece.min(nk - c0);
                                let (a, b) = (lo + c0, lo + c0 + len);
                                widen(true, g, a, len, &mut wide);
                                let mut r = i;
                                while r < e {
                                    let (sp, r2) = group_at(r);
                                    let (from, to) = (sp.start.max(a), sp.end.min(b));
                                    if from < to {
                                        let at = (from - a) * hd..(to - a) * hd;
                                        match MatRef::new(&wide[at], to - from, hd) {
                                            Ok(vals) => weigh(sc, out, r, r2, from, vals),
                                            Err(err) => return fail(err),
                                        }
                                    }
                                    r = r2;
                                }
                            }
                        }
                        i = e;
                    }
                })
            })
        };
        let threads = ctx.threads.count();
        if m == 1 && threads > 1 && ctx.position(0) >= SPLIT_HEADS_FROM {
            // One row (decoding): its heads spread over the threads, in
            // tasks of `sub` heads of one group: the largest such tasks
            // that still give every thread one. Reading a group's keys and
            // values once outweighs an even split: SmolLM2's tg32 @ d4096 at
            // 2 threads ran 1.18x faster in 3 tasks of a group (2 + 1) than
            // in 9 of a head.
            let sub = (1..=group)
                .rev()
                .filter(|d| group.is_multiple_of(*d))
                .find(|d| h / d >= threads)
                .unwrap_or(1);
            ctx.threads
                .for_each_chunk(y.as_mut_slice(), sub * hd, |task, out| {
                    attend(0, 1, task * sub..(task + 1) * sub, sub, out)
                });
        } else {
            // Rows are independent once the cache holds the batch: spread
            // them over the threads in runs.
            let per_task = m.div_ceil(threads * 4).max(1);
            ctx.threads
                .for_each_chunk(y.as_mut_slice(), per_task * qw, |task, out| {
                    let rows = out.len() / qw;
                    attend(task * per_task, rows, 0..h, group, out)
                });
        }
        if let Some(err) = failed.into_inner().ok().flatten() {
            return Err(err.into());
        }
        Ok(())
    }
    fn describe(&self) -> Node {
        Node::leaf("Attend", self.in_dim(), self.out_dim(), 0).with_detail(format!(
            "{} {}",
            self.heads.detail(),
            self.mask.describe()
        ))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn decode_tests_reach_the_position_where_heads_spread() {
        // tests/attention_decode.rs decodes rows 200..300 one at a time.
        const { assert!(super::SPLIT_HEADS_FROM > 200 && super::SPLIT_HEADS_FROM < 290) };
    }
}
