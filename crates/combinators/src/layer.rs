//! The [`Layer`] trait, the forward-pass context and self-description nodes.

use std::cell::RefCell;

use patchbay_primitives::quant::{self, QMatrix, MATVECS_MAX};
use patchbay_primitives::{kernels, Act, ShapeError, Simd, Threads};

/// Why a forward pass could not run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum LayerError {
    /// An activation had the wrong shape for the layer.
    #[error("{layer}: input has {found} features, expected {expected}")]
    InputDim {
        /// The layer's name.
        layer: &'static str,
        /// Features the layer takes.
        expected: usize,
        /// Features the input has.
        found: usize,
    },
    /// More rows than the state was sized for.
    #[error("{layer}: batch of {rows} rows exceeds the capacity of {max_rows}")]
    BatchTooLarge {
        /// The layer's name.
        layer: &'static str,
        /// Rows asked for.
        rows: usize,
        /// Rows the state holds.
        max_rows: usize,
    },
    /// A position beyond the context the state (KV cache) was sized for.
    #[error("{layer}: position {pos} is beyond the context length {max_context}")]
    ContextFull {
        /// The layer's name.
        layer: &'static str,
        /// Position (first row's position plus rows) asked for.
        pos: usize,
        /// Context the state holds.
        max_context: usize,
    },
    /// A row names a sequence beyond the KV-cache slots the state holds.
    #[error("{layer}: sequence {seq} is beyond the {slots} sequence slot(s) of this state")]
    SequenceSlot {
        /// The layer's name.
        layer: &'static str,
        /// The sequence asked for.
        seq: usize,
        /// Slots the state holds.
        slots: usize,
    },
    /// Attention over whole sequences (an encoder's) was given part of one:
    /// each sequence must come in one run of rows at positions 0, 1, 2, ...
    #[error(
        "{layer}: sequence {seq} must come whole in one call, one run of rows at positions 0, 1, 2, ...; row {row} is at position {pos}"
    )]
    PartialSequence {
        /// The layer's name.
        layer: &'static str,
        /// The sequence.
        seq: usize,
        /// The first row out of place.
        row: usize,
        /// That row's position.
        pos: usize,
    },
    /// A token id outside the vocabulary.
    #[error("{layer}: token id {id} is outside the vocabulary of {vocab}")]
    TokenOutOfRange {
        /// The layer's name.
        layer: &'static str,
        /// The offending id.
        id: u32,
        /// Vocabulary size.
        vocab: usize,
    },
    /// A layer plan does not fit the stack it re-wires.
    #[error("layer plan: {0}")]
    Plan(String),
    /// A forward pass produced a value that is not finite.
    #[error("{layer}: produced a non-finite value")]
    NonFinite {
        /// The layer's name.
        layer: &'static str,
    },
    /// A primitive rejected a shape.
    #[error(transparent)]
    Shape(#[from] ShapeError),
}

/// How much a state must hold: sized once, before the first forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// Most rows (tokens) in one forward call: the prompt batch size.
    pub max_rows: usize,
    /// Most positions a sequence may reach: the KV cache length.
    pub max_context: usize,
    /// Most sequences in one batch: KV-cache slots.
    pub max_seqs: usize,
    /// How a KV cache stores its keys.
    pub key_type: KvType,
    /// How a KV cache stores its values.
    pub value_type: KvType,
}

/// The element type of a KV cache's keys and values.
///
/// ```
/// use patchbay_combinators::{Capacity, KvType};
/// let cap = Capacity::new(8, 4096).with_kv(KvType::F32, KvType::F16);
/// assert_eq!((cap.key_type, cap.value_type), (KvType::F32, KvType::F16));
/// assert_eq!(Capacity::new(8, 4096).key_type, KvType::F32);
/// assert_eq!("f16".parse::<KvType>(), Ok(KvType::F16));
/// assert!("q8".parse::<KvType>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvType {
    /// Exactly the f32 keys and values the projections give (the default).
    #[default]
    F32,
    /// Rounded to f16 (nearest even) as they are cached: half the memory
    /// and half the bytes a long context's attention reads, as llama.cpp's
    /// default cache. Attention then runs on them exactly as on f32 ones, so
    /// the logits stay batch-invariant. Rounded keys move the scores, most
    /// where keys are large (Qwen2.5's); rounded values barely matter.
    F16,
}

impl KvType {
    /// The name the command line takes (`f32`, `f16`).
    pub fn name(self) -> &'static str {
        match self {
            KvType::F32 => "f32",
            KvType::F16 => "f16",
        }
    }
}

impl std::fmt::Display for KvType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for KvType {
    type Err = String;
    fn from_str(s: &str) -> Result<KvType, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" => Ok(KvType::F32),
            "f16" => Ok(KvType::F16),
            _ => Err(format!("{s:?} is not a KV cache type (f32 or f16)")),
        }
    }
}

impl Capacity {
    /// A capacity for batches of up to `max_rows` rows and `max_context` positions.
    pub fn new(max_rows: usize, max_context: usize) -> Capacity {
        Capacity {
            max_rows: max_rows.max(1),
            max_context: max_context.max(1),
            max_seqs: 1,
            key_type: KvType::F32,
            value_type: KvType::F32,
        }
    }

    /// The same capacity with `max_seqs` sequence slots (batches of several
    /// sequences; see [`RowMap`]).
    pub fn with_seqs(self, max_seqs: usize) -> Capacity {
        Capacity {
            max_seqs: max_seqs.max(1),
            ..self
        }
    }

    /// The same capacity with KV caches storing keys as `key_type` and
    /// values as `value_type`.
    pub fn with_kv(self, key_type: KvType, value_type: KvType) -> Capacity {
        Capacity {
            key_type,
            value_type,
            ..self
        }
    }
}

/// Where the rows of a batch belong when a forward pass carries several
/// sequences, as llama.cpp's `llama_batch`: row `r` is the token at position
/// `position(r)` of sequence `sequence(r)` (a KV-cache slot). Attention masks
/// are built per sequence, so rows of different sequences never see each
/// other; a sequence's rows must come in increasing position order.
///
/// ```
/// use patchbay_combinators::RowMap;
/// // Two sequences of 3 and 2 tokens, packed one after the other.
/// let map = RowMap::packed(&[3, 2]);
/// assert_eq!((map.sequence(3), map.position(3)), (1, 0));
/// assert_eq!(map.sequences(), 2);
/// assert!(map.is_last_of_sequence(2) && !map.is_last_of_sequence(1));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RowMap {
    seq: Vec<usize>,
    pos: Vec<usize>,
}

impl RowMap {
    /// An empty map.
    pub fn new() -> RowMap {
        RowMap::default()
    }

    /// Whole sequences of the given lengths one after another, each from
    /// position 0 (a prompt batch, or an encoder batch without padding).
    pub fn packed(lens: &[usize]) -> RowMap {
        let mut map = RowMap::new();
        for (s, &n) in lens.iter().enumerate() {
            for p in 0..n {
                map.push(s, p);
            }
        }
        map
    }

    /// Appends a row: the token at `pos` of sequence `seq`.
    pub fn push(&mut self, seq: usize, pos: usize) {
        self.seq.push(seq);
        self.pos.push(pos);
    }

    /// Forgets every row, keeping the allocation.
    pub fn clear(&mut self) {
        self.seq.clear();
        self.pos.clear();
    }

    /// Rows mapped.
    pub fn len(&self) -> usize {
        self.seq.len()
    }

    /// True when no row is mapped.
    pub fn is_empty(&self) -> bool {
        self.seq.is_empty()
    }

    /// The sequence of row `r`.
    #[inline]
    pub fn sequence(&self, r: usize) -> usize {
        self.seq[r]
    }

    /// The position of row `r` in its sequence.
    #[inline]
    pub fn position(&self, r: usize) -> usize {
        self.pos[r]
    }

    /// One more than the highest sequence index (slots a state needs).
    pub fn sequences(&self) -> usize {
        self.seq.iter().max().map_or(0, |&s| s + 1)
    }

    /// True when no later row belongs to row `r`'s sequence: the row whose
    /// logits a generator samples from.
    pub fn is_last_of_sequence(&self, r: usize) -> bool {
        let s = self.seq[r];
        !self.seq[r + 1..].contains(&s)
    }
}

/// Which rows of the final output a caller needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Rows {
    /// Every row (scoring a text: perplexity, logits).
    #[default]
    All,
    /// Only the last row of each sequence (generation): heads may skip the
    /// others. With one sequence, the last row.
    Last,
    /// Only the last `n` rows of the batch (all of them if it has fewer):
    /// scoring the tail of a text, as perplexity scores a chunk's second
    /// half. Heads compute those rows only, with the bits they would have
    /// among all the rows.
    Tail(usize),
}

/// Temporary buffers for a forward pass, shared by every layer of a network.
///
/// State that must persist between calls (KV caches, sampler RNG) lives in each
/// layer's [`Layer::State`]; everything else a layer needs only while it runs —
/// the activation between two stages of a [`Series`](crate::Series), a branch
/// output, quantised activations, a dequantised weight panel — it borrows from
/// here and gives back when it returns. At any moment only the buffers on one
/// path of the layer tree are in use, so the workspace holds as many buffers as
/// the network is deep, each as large as the largest use, like llama2.c's
/// `RunState`; it does not grow with the number of layers. Buffers keep their
/// allocation when returned, so once a step of each shape has run, forward
/// passes of that shape do not allocate.
///
/// ```
/// use patchbay_combinators::Scratch;
/// let scratch = Scratch::new();
/// {
///     let mut a = scratch.act();
///     a.reshape(2, 3);
///     let b = scratch.act(); // a second, distinct buffer while `a` is held
///     assert_eq!(b.rows(), 0);
/// } // both go back to the pool
/// assert_eq!(scratch.pooled(), 2);
/// ```
#[derive(Debug, Default)]
pub struct Scratch {
    acts: RefCell<Vec<Act>>,
    vecs: RefCell<Vec<Vec<f32>>>,
}

impl Scratch {
    /// An empty workspace; buffers are created on first use and then reused.
    pub fn new() -> Scratch {
        Scratch::default()
    }

    /// Borrows an activation buffer (contents unspecified; reshape it).
    pub fn act(&self) -> Borrowed<'_, Act> {
        let buf = self.acts.borrow_mut().pop().unwrap_or_default();
        Borrowed {
            pool: &self.acts,
            buf: Some(buf),
        }
    }

    /// Borrows a plain f32 vector (cleared).
    pub fn vec(&self) -> Borrowed<'_, Vec<f32>> {
        let mut buf = self.vecs.borrow_mut().pop().unwrap_or_default();
        buf.clear();
        Borrowed {
            pool: &self.vecs,
            buf: Some(buf),
        }
    }

    /// Buffers currently in the pool (not lent out), of all kinds.
    pub fn pooled(&self) -> usize {
        self.acts.borrow().len() + self.vecs.borrow().len()
    }

    /// Bytes reserved by the pooled buffers (for memory reports).
    pub fn reserved_bytes(&self) -> usize {
        let acts: usize = self.acts.borrow().iter().map(|a| a.capacity() * 4).sum();
        let vecs: usize = self.vecs.borrow().iter().map(|v| v.capacity() * 4).sum();
        acts + vecs
    }
}

/// A buffer lent by a [`Scratch`]; it goes back to the pool when dropped.
#[derive(Debug)]
pub struct Borrowed<'s, T> {
    pool: &'s RefCell<Vec<T>>,
    buf: Option<T>,
}

impl<T> std::ops::Deref for Borrowed<'_, T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        // Present from construction until drop.
        self.buf
            .as_ref()
            .expect("scratch buffer present until drop")
    }
}

impl<T> std::ops::DerefMut for Borrowed<'_, T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        self.buf
            .as_mut()
            .expect("scratch buffer present until drop")
    }
}

impl<T> Drop for Borrowed<'_, T> {
    fn drop(&mut self) {
        if let Some(b) = self.buf.take() {
            self.pool.borrow_mut().push(b);
        }
    }
}

/// What a forward pass needs besides the activations and the state.
///
/// Copy it freely: it is a few words. Combinators pass it down unchanged, except
/// [`Loop`](crate::Loop) which advances `pos` between autoregressive steps.
#[derive(Debug, Clone, Copy)]
pub struct Ctx<'a> {
    /// The SIMD level kernels dispatch to.
    pub simd: Simd,
    /// Worker threads for kernels that split rows.
    pub threads: &'a Threads,
    /// Temporary buffers shared by all layers.
    pub scratch: &'a Scratch,
    /// Absolute position of the first input row in the sequence.
    pub pos: usize,
    /// Which output rows are wanted (layers that can skip work honour it).
    pub rows: Rows,
    /// Where each row belongs when the batch holds several sequences; `None`:
    /// one sequence (slot 0), rows at consecutive positions from `pos`.
    pub map: Option<&'a RowMap>,
    /// Watches the residual stream between the layers of a plain
    /// [`Stack`](crate::Stack) (`None`, the default: nothing is watched and
    /// nothing is copied).
    pub observer: Option<&'a dyn StackObserver>,
}

/// Sees the residual stream between the layers of a [`Stack`](crate::Stack)
/// run without a plan: the input of layer `i` as `observe(i, x)` for
/// `i = 0..n`, then the stack's output as `observe(n, y)`, for every forward
/// call, rows as the call has them. Layers inside the stack run without the
/// observer; a stack with a plan does not call it.
///
/// ```
/// use std::cell::RefCell;
/// use patchbay_combinators::{Capacity, Ctx, Identity, Layer, Scratch, Stack, StackObserver};
/// use patchbay_primitives::{Act, Simd, Threads};
/// #[derive(Debug, Default)]
/// struct Seen(RefCell<Vec<usize>>);
/// impl StackObserver for Seen {
///     fn observe(&self, i: usize, _x: &Act) {
///         self.0.borrow_mut().push(i);
///     }
/// }
/// let s = Stack::new(vec![Identity::new(2); 3]);
/// let (threads, scratch, seen) = (Threads::single(), Scratch::new(), Seen::default());
/// let ctx = Ctx::new(Simd::detect(), &threads, &scratch).with_observer(&seen);
/// let x = Act::from_vec(1, 2, vec![1.0, 2.0]).unwrap();
/// s.apply(&x, &mut s.new_state(Capacity::new(1, 1)), &ctx).unwrap();
/// assert_eq!(*seen.0.borrow(), vec![0, 1, 2, 3]);
/// ```
pub trait StackObserver: std::fmt::Debug {
    /// Layer `i`'s input (`i < n`) or the stack's output (`i == n`).
    fn observe(&self, i: usize, x: &Act);
}

impl<'a> Ctx<'a> {
    /// A context at position 0 wanting every row.
    pub fn new(simd: Simd, threads: &'a Threads, scratch: &'a Scratch) -> Ctx<'a> {
        Ctx {
            simd,
            threads,
            scratch,
            pos: 0,
            rows: Rows::All,
            map: None,
            observer: None,
        }
    }

    /// The same context with a [`StackObserver`] watching the stack.
    pub fn with_observer(self, observer: &'a dyn StackObserver) -> Ctx<'a> {
        Ctx {
            observer: Some(observer),
            ..self
        }
    }

    /// The same context at another position.
    pub fn at(self, pos: usize) -> Ctx<'a> {
        Ctx { pos, ..self }
    }

    /// The same context wanting other rows.
    pub fn with_rows(self, rows: Rows) -> Ctx<'a> {
        Ctx { rows, ..self }
    }

    /// The same context over a batch of several sequences laid out by `map`
    /// (one entry per input row).
    pub fn with_map(self, map: &'a RowMap) -> Ctx<'a> {
        Ctx {
            map: Some(map),
            ..self
        }
    }

    /// Absolute position of input row `r` in its sequence.
    #[inline]
    pub fn position(&self, r: usize) -> usize {
        match self.map {
            Some(m) => m.position(r),
            None => self.pos + r,
        }
    }

    /// The sequence (KV-cache slot) input row `r` belongs to.
    #[inline]
    pub fn sequence(&self, r: usize) -> usize {
        match self.map {
            Some(m) => m.sequence(r),
            None => 0,
        }
    }

    /// Calls `f(first_row, rows)` on `y` (rows of `cols` values) cut into runs
    /// of whole rows spread over the threads, or once on all of `y` when it is
    /// too small to be worth handing out (a decode step). For row-wise work
    /// (norms, activations, bias and residual sums): a row's result must not
    /// depend on the run it falls in, so the split never changes a bit.
    ///
    /// ```
    /// use patchbay_combinators::{Ctx, Scratch};
    /// use patchbay_primitives::{Simd, Threads};
    /// let (threads, scratch) = (Threads::new(2), Scratch::new());
    /// let ctx = Ctx::new(Simd::detect(), &threads, &scratch);
    /// let mut y = vec![0.0f32; 3 * 40_000];
    /// ctx.for_row_runs(&mut y, 40_000, |first, rows| {
    ///     for (i, row) in rows.chunks_exact_mut(40_000).enumerate() {
    ///         row.fill((first + i) as f32);
    ///     }
    /// });
    /// assert_eq!((y[0], y[40_000], y[80_000]), (0.0, 1.0, 2.0));
    /// ```
    pub fn for_row_runs<F>(&self, y: &mut [f32], cols: usize, f: F)
    where
        F: Fn(usize, &mut [f32]) + Sync + Send,
    {
        let threads = self.threads.count();
        if cols == 0 || threads == 1 || y.len() < ROW_RUNS_FROM {
            return f(0, y);
        }
        let rows = y.len() / cols;
        let per = rows.div_ceil(threads * 4).max(1);
        self.threads
            .for_each_chunk(y, per * cols, |task, run| f(task * per, run));
    }

    /// Whether row `r` is the last of its sequence in this batch (with
    /// [`Rows::Last`], the rows a head keeps).
    #[inline]
    pub fn is_last_of_sequence(&self, r: usize, rows: usize) -> bool {
        match self.map {
            Some(m) => m.is_last_of_sequence(r),
            None => r + 1 == rows,
        }
    }
}

/// A node of the graph as a layer describes itself.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// What the node is (`Series`, `Linear`, `Attention`, ...).
    pub name: String,
    /// Extra facts worth printing (`heads=9 kv=3`, `q4_1`, `x30`).
    pub detail: String,
    /// Features per row in.
    pub in_dim: usize,
    /// Features per row out.
    pub out_dim: usize,
    /// Parameters owned by this node itself, not counting children.
    pub own_params: u64,
    /// Sub-nodes in data-flow order.
    pub children: Vec<Node>,
}

impl Node {
    /// A leaf node.
    pub fn leaf(name: impl Into<String>, in_dim: usize, out_dim: usize, params: u64) -> Node {
        Node {
            name: name.into(),
            detail: String::new(),
            in_dim,
            out_dim,
            own_params: params,
            children: Vec::new(),
        }
    }

    /// A node that only wires children together.
    pub fn wiring(
        name: impl Into<String>,
        in_dim: usize,
        out_dim: usize,
        children: Vec<Node>,
    ) -> Node {
        Node {
            name: name.into(),
            detail: String::new(),
            in_dim,
            out_dim,
            own_params: 0,
            children,
        }
    }

    /// Adds a detail string.
    pub fn with_detail(mut self, detail: impl Into<String>) -> Node {
        self.detail = detail.into();
        self
    }

    /// Parameters of this node and everything below it.
    pub fn params(&self) -> u64 {
        self.own_params + self.children.iter().map(Node::params).sum::<u64>()
    }

    /// Renders the tree, one node a line, indented by depth.
    pub fn tree(&self) -> String {
        let mut out = String::new();
        self.write_tree(&mut out, "", true, true);
        out
    }

    fn write_tree(&self, out: &mut String, prefix: &str, last: bool, root: bool) {
        use std::fmt::Write;
        let branch = if root {
            ""
        } else if last {
            "└─ "
        } else {
            "├─ "
        };
        let detail = if self.detail.is_empty() {
            String::new()
        } else {
            format!(" [{}]", self.detail)
        };
        let _ = writeln!(
            out,
            "{prefix}{branch}{}{detail} {}→{} params={}",
            self.name,
            self.in_dim,
            self.out_dim,
            self.params()
        );
        let child_prefix = if root {
            String::new()
        } else {
            format!("{prefix}{}", if last { "   " } else { "│  " })
        };
        for (i, c) in self.children.iter().enumerate() {
            c.write_tree(out, &child_prefix, i + 1 == self.children.len(), false);
        }
    }
}

impl std::fmt::Display for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.tree())
    }
}

/// A stage of a pipeline: maps a `rows x in_dim` activation to `rows' x out_dim`.
///
/// Sizes are run-time values; the wiring is the type. A layer owns its weights
/// (usually views into a memory map) and is immutable during a forward pass;
/// what must persist between calls — KV caches, sampler RNGs — lives in its
/// [`Layer::State`], built once by [`Layer::new_state`] for a [`Capacity`];
/// temporary buffers come from the [`Scratch`] in the [`Ctx`], shared by the
/// whole network. `forward` must not allocate once the state exists and the
/// scratch has served a call of the same shape.
pub trait Layer {
    /// Mutable per-sequence state that persists between calls: caches, RNG.
    type State;

    /// True only for [`Identity`](crate::Identity): lets [`Sum`](crate::Sum)
    /// specialise the residual `x + F(x)` without a scratch copy.
    const IS_IDENTITY: bool = false;

    /// Features per input row.
    fn in_dim(&self) -> usize;

    /// Features per output row.
    fn out_dim(&self) -> usize;

    /// Builds the state for up to `cap.max_rows` rows per call and
    /// `cap.max_context` positions.
    fn new_state(&self, cap: Capacity) -> Self::State;

    /// Forgets everything a sequence left in the state (KV cache contents,
    /// sampler history) without freeing memory.
    fn reset(&self, _state: &mut Self::State) {}

    /// Computes `y = self(x)`; `y` is reshaped as needed.
    fn forward(
        &self,
        x: &Act,
        y: &mut Act,
        state: &mut Self::State,
        ctx: &Ctx<'_>,
    ) -> Result<(), LayerError>;

    /// Describes this node and its children.
    fn describe(&self) -> Node;

    /// Lists the matrix products of its input that this layer is, when it is
    /// nothing else (a quantised `Linear`, a [`Parallel`](crate::Parallel) of
    /// them), their outputs side by side in the order listed; `false` (the
    /// default) when it is anything else or the list is full. Lets a fork run
    /// its branches' products of one row in one pass over the pool
    /// ([`Products::run`]).
    fn products<'s>(&'s self, _out: &mut Products<'s>) -> bool {
        false
    }

    /// Lists the products this layer starts with, when it starts with
    /// products of its input alone: [`Layer::products`] (the default), or
    /// the first stage's of a [`Series`](crate::Series). [`Layer::finish`]
    /// computes the rest from their outputs.
    fn lead_products<'s>(&'s self, out: &mut Products<'s>) -> bool {
        self.products(out)
    }

    /// Computes `y = self(x)` from `p`, the outputs (side by side) of the
    /// products that [`Layer::lead_products`] listed, for `x`. The default,
    /// for a layer that is nothing but its products, copies `p`.
    fn finish(
        &self,
        p: &Act,
        y: &mut Act,
        _state: &mut Self::State,
        _ctx: &Ctx<'_>,
    ) -> Result<(), LayerError> {
        y.reshape(p.rows(), p.cols());
        y.as_mut_slice().copy_from_slice(p.as_slice());
        Ok(())
    }

    /// Runs `self` on `x` into a fresh buffer (convenience; allocates).
    fn apply(&self, x: &Act, state: &mut Self::State, ctx: &Ctx<'_>) -> Result<Act, LayerError> {
        let mut y = Act::with_capacity(x.rows(), self.out_dim());
        self.forward(x, &mut y, state, ctx)?;
        Ok(y)
    }
}

/// One matrix product of a layer's input, as [`Layer::products`] lists it:
/// quantised weights (`rows x cols`, GGML layout) and an optional bias.
#[derive(Debug, Clone, Copy)]
pub struct ProductRef<'a> {
    /// The layer's name, for errors.
    pub name: &'static str,
    /// The weights.
    pub matrix: QMatrix<'a>,
    /// Features per input row.
    pub cols: usize,
    /// Added to the output, one per row of the weights.
    pub bias: Option<&'a [f32]>,
}

/// The products of one input that a fork runs together (see
/// [`Layer::products`]): at most [`MATVECS_MAX`].
#[derive(Debug, Clone, Default)]
pub struct Products<'a> {
    list: [Option<ProductRef<'a>>; MATVECS_MAX],
    len: usize,
}

impl<'a> Products<'a> {
    /// An empty list.
    pub fn new() -> Products<'a> {
        Products::default()
    }

    /// Appends `p`; `false` when the list is full.
    pub fn push(&mut self, p: ProductRef<'a>) -> bool {
        match self.list.get_mut(self.len) {
            Some(slot) => {
                *slot = Some(p);
                self.len += 1;
                true
            }
            None => false,
        }
    }

    /// Products listed.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether none is listed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Output features of all the products, side by side.
    pub fn out_cols(&self) -> usize {
        self.iter().map(|p| p.matrix.rows).sum()
    }

    fn iter(&self) -> impl Iterator<Item = &ProductRef<'a>> {
        self.list[..self.len].iter().flatten()
    }

    /// Computes every product of the one row `x` into `y` (reshaped to one
    /// row of [`Products::out_cols`]), in one pass over the pool
    /// ([`quant::matvecs_q`]): the bits of each product computed alone.
    pub fn run(&self, x: &Act, y: &mut Act, ctx: &Ctx<'_>) -> Result<(), LayerError> {
        if x.rows() != 1 {
            return Err(LayerError::Shape(ShapeError::Len {
                what: "Products::run rows",
                expected: 1,
                found: x.rows(),
            }));
        }
        // The matrices as one array without allocating: unlisted slots are
        // empty matrices, which add no rows.
        let none = QMatrix {
            dtype: patchbay_primitives::DType::Q8_0,
            w: &[],
            rows: 0,
        };
        let mut mats = [none; MATVECS_MAX];
        for (m, p) in mats.iter_mut().zip(self.iter()) {
            check_in(p.name, p.cols, x)?;
            *m = p.matrix;
        }
        y.reshape(1, self.out_cols());
        let out = y.as_mut_slice();
        quant::matvecs_q(ctx.simd, ctx.threads, &mats[..self.len], x.row(0), out)?;
        let mut first = 0;
        for p in self.iter() {
            let rows = p.matrix.rows;
            if let Some(b) = p.bias {
                kernels::add_assign(ctx.simd, &mut out[first..first + rows], b);
            }
            first += rows;
        }
        Ok(())
    }
}

/// Checks the input's feature count against the layer's.
#[inline]
pub fn check_in(layer: &'static str, expected: usize, x: &Act) -> Result<(), LayerError> {
    if x.cols() != expected {
        return Err(LayerError::InputDim {
            layer,
            expected,
            found: x.cols(),
        });
    }
    Ok(())
}

/// Values below which [`Ctx::for_row_runs`] works on the calling thread: a
/// hand-off to the pool costs about as much as a few thousand element-wise
/// operations.
const ROW_RUNS_FROM: usize = 1 << 14;
