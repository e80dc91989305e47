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

use patchbay_combinators::{check_in, series, Capacity, Ctx, Layer, LayerError, Node, Parallel};
use patchbay_primitives::rope::{self, RopeLayout, RopeTable};
use patchbay_primitives::{gemm, kernels, matmul, Act, MatRef, Threads};

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
    k: Vec<f32>,
    /// Values, same layout.
    v: Vec<f32>,
    max_context: usize,
    /// Positions held per slot.
    lens: Vec<usize>,
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
            k: vec![0.0; n],
            v: vec![0.0; n],
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
            // Append this batch's keys and values to each row's slot. With many
            // rows, one task per (slot, head): its positions are one contiguous
            // region of the cache, so the tasks never share a destination.
            if m < APPEND_SPLIT_ROWS {
                for r in 0..m {
                    let row = x.row(r);
                    let (s, t) = locate(r);
                    for g in 0..kv {
                        let dst = ((s * kv + g) * cap + t) * hd;
                        let src = qw + g * hd;
                        st.k[dst..dst + hd].copy_from_slice(&row[src..src + hd]);
                        st.v[dst..dst + hd].copy_from_slice(&row[src + kw..src + kw + hd]);
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
                    ctx.threads.for_each_chunk(cache, cap * hd, |c, region| {
                        let (s, g) = (c / kv, c % kv);
                        let col = first_col + g * hd;
                        for (_, rows) in runs.iter().filter(|(seq, _)| *seq == s) {
                            for r in rows.clone() {
                                let t = locate(r).1;
                                let src = &xs[r * xw + col..][..hd];
                                // A plain loop: a 32-value copy inline, not a call.
                                for (d, v) in region[t * hd..][..hd].iter_mut().zip(src) {
                                    *d = *v;
                                }
                            }
                        }
                    });
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
        let attend =
            |first: usize, rows: usize, heads: Range<usize>, sub: usize, out: &mut [f32]| {
                out.fill(0.0);
                let one = Threads::single();
                SCORES.with(|cell| {
                    let mut scores = cell.borrow_mut();
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
                        // (or values) for kv head `g`.
                        let kv_rows = |values: bool, g: usize, from: usize, len: usize| {
                            if whole {
                                let col = qw + usize::from(values) * kw + g * hd;
                                let row = starts[seq] + from;
                                MatRef::with_stride(&xs[row * xw + col..], len, hd, xw)
                            } else {
                                let cache = if values { v_cache } else { k_cache };
                                let at = ((seq * kv + g) * cap + from) * hd;
                                MatRef::new(&cache[at..at + len * hd], len, hd)
                            }
                        };
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
                            let keys = match kv_rows(false, g, lo, nk) {
                                Ok(keys) => keys,
                                Err(err) => return fail(err),
                            };
                            // Scores in the order of a matrix product, which
                            // gives each one the same operations whatever the
                            // rows beside it (one row decoding, the heads of a
                            // group, or a whole prompt).
                            let score = |q: Result<MatRef<'_>, _>, out: &mut [f32]| {
                                q.and_then(|q| {
                                    if whole {
                                        gemm::matmul_sequential(simd, &one, q, keys, out)
                                    } else {
                                        matmul::matmul(simd, &one, q, keys, out)
                                    }
                                })
                            };
                            let done = if nq == 1 {
                                // One row: its heads are side by side.
                                let at = (first + i) * xw + head0 * hd;
                                score(MatRef::with_stride(&xs[at..], sub, hd, hd), sc)
                            } else {
                                sc.chunks_exact_mut(nq * nk)
                                    .enumerate()
                                    .try_for_each(|(j, out)| {
                                        let at = (first + i) * xw + (head0 + j) * hd;
                                        score(MatRef::with_stride(&xs[at..], nq, hd, xw), out)
                                    })
                            };
                            if let Err(err) = done {
                                return fail(err);
                            }
                            // Softmax over each row's own span, then the
                            // weighted sum of values: for a row alone, of all
                            // its group's heads at once; for rows sharing a
                            // span, of those rows, head by head.
                            let mut r = i;
                            while r < e {
                                let sp = span(r);
                                let mut r2 = r + 1;
                                while r2 < e && span(r2) == sp {
                                    r2 += 1;
                                }
                                let off = sp.start - lo;
                                let row_of = |j: usize, rr: usize| (j * nq + rr - i) * nk + off;
                                for j in 0..sub {
                                    for rr in r..r2 {
                                        let row = &mut sc[row_of(j, rr)..][..sp.len()];
                                        kernels::softmax_scaled(simd, row, scale);
                                    }
                                }
                                let vals = match kv_rows(true, g, sp.start, sp.len()) {
                                    Ok(v) => v,
                                    Err(err) => return fail(err),
                                };
                                let y_at = |j: usize| r * qw + (head0 - heads.start + j) * hd;
                                if r2 - r == 1 {
                                    kernels::axpy_rows_many(
                                        simd,
                                        &sc[row_of(0, r)..],
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
                                            &sc[row_of(j, r)..],
                                            nk,
                                            r2 - r,
                                            vals,
                                            &mut out[y_at(j)..],
                                            qw,
                                        );
                                    }
                                }
                                r = r2;
                            }
                        }
                        i = e;
                    }
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
