//! The combinators: [`Identity`], [`Series`], [`Parallel`], [`Sum`], [`Gate`],
//! [`Stack`] and [`Loop`].

use crate::layer::{check_in, Capacity, Ctx, Layer, LayerError, Node, Products, Rows};
use crate::plan::{Merge, Plan, PlanStep};
use patchbay_primitives::{kernels, Act};

/// `x -> x`. As the first branch of a [`Sum`] it makes a residual connection.
///
/// ```
/// use patchbay_combinators::{Identity, Layer, Ctx};
/// use patchbay_primitives::{Act, Simd, Threads};
/// let id = Identity::new(3);
/// let (threads, scratch) = (Threads::single(), patchbay_combinators::Scratch::new());
/// let ctx = Ctx::new(Simd::detect(), &threads, &scratch);
/// let x = Act::from_vec(1, 3, vec![1.0, 2.0, 3.0]).unwrap();
/// let y = id.apply(&x, &mut id.new_state(patchbay_combinators::Capacity::new(1, 1)), &ctx).unwrap();
/// assert_eq!(y.as_slice(), x.as_slice());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    dim: usize,
}

impl Identity {
    /// The identity on `dim` features.
    pub fn new(dim: usize) -> Identity {
        Identity { dim }
    }
}

impl Layer for Identity {
    type State = ();
    const IS_IDENTITY: bool = true;

    fn in_dim(&self) -> usize {
        self.dim
    }
    fn out_dim(&self) -> usize {
        self.dim
    }
    fn new_state(&self, _cap: Capacity) {}
    fn forward(&self, x: &Act, y: &mut Act, _: &mut (), _: &Ctx<'_>) -> Result<(), LayerError> {
        check_in("Identity", self.dim, x)?;
        y.copy_from(x);
        Ok(())
    }
    fn describe(&self) -> Node {
        Node::leaf("Identity", self.dim, self.dim, 0)
    }
}

/// Series composition: `x -> B(A(x))`.
///
/// ```
/// use patchbay_combinators::{Series, Identity, Layer, Ctx, Capacity};
/// use patchbay_primitives::{Act, Simd, Threads};
/// let s = Series::new(Identity::new(2), Identity::new(2));
/// let (threads, scratch) = (Threads::single(), patchbay_combinators::Scratch::new());
/// let ctx = Ctx::new(Simd::detect(), &threads, &scratch);
/// let x = Act::from_vec(2, 2, vec![1.0, 2.0, 3.0, 4.0]).unwrap();
/// let y = s.apply(&x, &mut s.new_state(Capacity::new(2, 2)), &ctx).unwrap();
/// assert_eq!(y.as_slice(), x.as_slice());
/// assert_eq!(s.describe().children.len(), 2);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Series<A, B> {
    /// Runs first.
    pub first: A,
    /// Runs on the first's output.
    pub second: B,
}

impl<A: Layer, B: Layer> Series<A, B> {
    /// `x -> second(first(x))`.
    pub fn new(first: A, second: B) -> Self {
        Series { first, second }
    }
}

/// State of a [`Series`]: both children's states (the buffer between them is
/// scratch, borrowed for the call).
#[derive(Debug)]
pub struct SeriesState<SA, SB> {
    /// The first layer's state.
    pub first: SA,
    /// The second layer's state.
    pub second: SB,
}

impl<A: Layer, B: Layer> Layer for Series<A, B> {
    type State = SeriesState<A::State, B::State>;

    fn in_dim(&self) -> usize {
        self.first.in_dim()
    }
    fn out_dim(&self) -> usize {
        self.second.out_dim()
    }
    fn new_state(&self, cap: Capacity) -> Self::State {
        SeriesState {
            first: self.first.new_state(cap),
            second: self.second.new_state(cap),
        }
    }
    fn reset(&self, st: &mut Self::State) {
        self.first.reset(&mut st.first);
        self.second.reset(&mut st.second);
    }
    #[inline]
    fn forward(
        &self,
        x: &Act,
        y: &mut Act,
        st: &mut Self::State,
        ctx: &Ctx<'_>,
    ) -> Result<(), LayerError> {
        let mut mid = ctx.scratch.act();
        self.first.forward(x, &mut mid, &mut st.first, ctx)?;
        self.second.forward(&mid, y, &mut st.second, ctx)
    }
    fn lead_products<'s>(&'s self, out: &mut Products<'s>) -> bool {
        self.first.lead_products(out)
    }
    fn finish(
        &self,
        p: &Act,
        y: &mut Act,
        st: &mut Self::State,
        ctx: &Ctx<'_>,
    ) -> Result<(), LayerError> {
        let mut mid = ctx.scratch.act();
        self.first.finish(p, &mut mid, &mut st.first, ctx)?;
        self.second.forward(&mid, y, &mut st.second, ctx)
    }
    fn describe(&self) -> Node {
        // Flatten right- or left-nested chains so `series![A, B, C]` prints flat.
        let mut children = Vec::new();
        for n in [self.first.describe(), self.second.describe()] {
            if n.name == "Series" {
                children.extend(n.children);
            } else {
                children.push(n);
            }
        }
        Node::wiring("Series", self.in_dim(), self.out_dim(), children)
    }
}

/// Parallel fork: `x -> (A(x), B(x))`, the two outputs side by side in one row
/// (`out_dim = A.out_dim + B.out_dim`), for a merge to consume.
///
/// ```
/// use patchbay_combinators::{Parallel, Identity, Layer, Ctx, Capacity};
/// use patchbay_primitives::{Act, Simd, Threads};
/// let p = Parallel::new(Identity::new(2), Identity::new(2));
/// let (threads, scratch) = (Threads::single(), patchbay_combinators::Scratch::new());
/// let ctx = Ctx::new(Simd::detect(), &threads, &scratch);
/// let x = Act::from_vec(1, 2, vec![1.0, 2.0]).unwrap();
/// let y = p.apply(&x, &mut p.new_state(Capacity::new(1, 1)), &ctx).unwrap();
/// assert_eq!(y.as_slice(), &[1.0, 2.0, 1.0, 2.0]);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Parallel<A, B> {
    /// Left branch.
    pub left: A,
    /// Right branch.
    pub right: B,
}

impl<A: Layer, B: Layer> Parallel<A, B> {
    /// Both branches see the same input.
    pub fn new(left: A, right: B) -> Self {
        Parallel { left, right }
    }
}

/// State of a two-branch combinator: each branch's state.
#[derive(Debug)]
pub struct PairState<SA, SB> {
    /// The left (first) branch's state.
    pub left: SA,
    /// The right (second) branch's state.
    pub right: SB,
}

impl<A: Layer, B: Layer> Layer for Parallel<A, B> {
    type State = PairState<A::State, B::State>;

    fn in_dim(&self) -> usize {
        self.left.in_dim()
    }
    fn out_dim(&self) -> usize {
        self.left.out_dim() + self.right.out_dim()
    }
    fn new_state(&self, cap: Capacity) -> Self::State {
        PairState {
            left: self.left.new_state(cap),
            right: self.right.new_state(cap),
        }
    }
    fn reset(&self, st: &mut Self::State) {
        self.left.reset(&mut st.left);
        self.right.reset(&mut st.right);
    }
    fn forward(
        &self,
        x: &Act,
        y: &mut Act,
        st: &mut Self::State,
        ctx: &Ctx<'_>,
    ) -> Result<(), LayerError> {
        check_in("Parallel", self.in_dim(), x)?;
        if x.rows() == 1 {
            // Decode: branches that are products of `x` alone (q, k and v)
            // take one pass over the pool, straight into `y`.
            let mut products = Products::new();
            if self.products(&mut products) {
                return products.run(x, y, ctx);
            }
        }
        let (mut a, mut b) = (ctx.scratch.act(), ctx.scratch.act());
        self.left.forward(x, &mut a, &mut st.left, ctx)?;
        self.right.forward(x, &mut b, &mut st.right, ctx)?;
        let (da, db) = (a.cols(), b.cols());
        let rows = a.rows().min(b.rows());
        y.reshape(rows, da + db);
        // Branches honouring `Rows::Last` return only their last row; align by the end.
        let (oa, ob) = (a.rows() - rows, b.rows() - rows);
        let (a, b) = (&*a, &*b);
        ctx.for_row_runs(y.as_mut_slice(), da + db, |first, run| {
            for (i, row) in run.chunks_exact_mut(da + db).enumerate() {
                row[..da].copy_from_slice(a.row(oa + first + i));
                row[da..].copy_from_slice(b.row(ob + first + i));
            }
        });
        Ok(())
    }
    fn describe(&self) -> Node {
        Node::wiring(
            "Parallel",
            self.in_dim(),
            self.out_dim(),
            vec![self.left.describe(), self.right.describe()],
        )
    }
    fn products<'s>(&'s self, out: &mut Products<'s>) -> bool {
        self.left.products(out) && self.right.products(out)
    }
}

/// The merge that follows a [`Parallel`]: adds the two halves of each row.
///
/// `Series<Parallel<A, B>, AddHalves>` computes the same as `Sum<A, B>`.
///
/// ```
/// use patchbay_combinators::{AddHalves, Layer, Ctx, Capacity};
/// use patchbay_primitives::{Act, Simd, Threads};
/// let m = AddHalves::new(2);
/// let (threads, scratch) = (Threads::single(), patchbay_combinators::Scratch::new());
/// let ctx = Ctx::new(Simd::detect(), &threads, &scratch);
/// let x = Act::from_vec(1, 4, vec![1.0, 2.0, 10.0, 20.0]).unwrap();
/// let y = m.apply(&x, &mut (), &ctx).unwrap();
/// assert_eq!(y.as_slice(), &[11.0, 22.0]);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddHalves {
    dim: usize,
}

impl AddHalves {
    /// Takes rows of `2 * dim` features and returns `dim`.
    pub fn new(dim: usize) -> AddHalves {
        AddHalves { dim }
    }
}

impl Layer for AddHalves {
    type State = ();
    fn in_dim(&self) -> usize {
        2 * self.dim
    }
    fn out_dim(&self) -> usize {
        self.dim
    }
    fn new_state(&self, _cap: Capacity) {}
    fn forward(&self, x: &Act, y: &mut Act, _: &mut (), ctx: &Ctx<'_>) -> Result<(), LayerError> {
        check_in("AddHalves", 2 * self.dim, x)?;
        y.reshape(x.rows(), self.dim);
        for r in 0..x.rows() {
            let (a, b) = x.row(r).split_at(self.dim);
            let out = y.row_mut(r);
            out.copy_from_slice(a);
            kernels::add_assign(ctx.simd, out, b);
        }
        Ok(())
    }
    fn describe(&self) -> Node {
        Node::leaf("AddHalves", 2 * self.dim, self.dim, 0)
    }
}

/// Additive merge: `x -> A(x) + B(x)`.
///
/// With `A = Identity` this is a residual connection ([`Residual`]), which is
/// computed as `y = B(x); y += x` with no scratch buffer.
///
/// ```
/// use patchbay_combinators::{Residual, Sum, Identity, Layer, Ctx, Capacity};
/// use patchbay_primitives::{Act, Simd, Threads};
/// // x + x = 2x
/// let r: Residual<Identity> = Sum::new(Identity::new(2), Identity::new(2));
/// let (threads, scratch) = (Threads::single(), patchbay_combinators::Scratch::new());
/// let ctx = Ctx::new(Simd::detect(), &threads, &scratch);
/// let x = Act::from_vec(1, 2, vec![1.5, -2.0]).unwrap();
/// let y = r.apply(&x, &mut r.new_state(Capacity::new(1, 1)), &ctx).unwrap();
/// assert_eq!(y.as_slice(), &[3.0, -4.0]);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Sum<A, B> {
    /// First term (the skip path of a residual).
    pub left: A,
    /// Second term.
    pub right: B,
}

impl<A: Layer, B: Layer> Sum<A, B> {
    /// `x -> left(x) + right(x)`.
    pub fn new(left: A, right: B) -> Self {
        Sum { left, right }
    }
}

/// A residual connection `x -> x + F(x)`.
pub type Residual<F> = Sum<Identity, F>;

/// Wraps `f` in a residual connection.
pub fn residual<F: Layer>(f: F) -> Residual<F> {
    Sum::new(Identity::new(f.in_dim()), f)
}

/// Aligns `x`'s rows with `y`'s: when a branch kept only the last rows.
#[inline]
fn tail_rows(x: &Act, rows: usize) -> &[f32] {
    let s = x.as_slice();
    &s[s.len() - rows * x.cols()..]
}

impl<A: Layer, B: Layer> Layer for Sum<A, B> {
    type State = PairState<A::State, B::State>;

    fn in_dim(&self) -> usize {
        self.left.in_dim()
    }
    fn out_dim(&self) -> usize {
        self.right.out_dim()
    }
    fn new_state(&self, cap: Capacity) -> Self::State {
        PairState {
            left: self.left.new_state(cap),
            right: self.right.new_state(cap),
        }
    }
    fn reset(&self, st: &mut Self::State) {
        self.left.reset(&mut st.left);
        self.right.reset(&mut st.right);
    }
    #[inline]
    fn forward(
        &self,
        x: &Act,
        y: &mut Act,
        st: &mut Self::State,
        ctx: &Ctx<'_>,
    ) -> Result<(), LayerError> {
        check_in("Sum", self.in_dim(), x)?;
        self.right.forward(x, y, &mut st.right, ctx)?;
        if A::IS_IDENTITY {
            if y.cols() != x.cols() {
                return Err(LayerError::InputDim {
                    layer: "Residual",
                    expected: x.cols(),
                    found: y.cols(),
                });
            }
            let (rows, cols) = (y.rows(), y.cols());
            let xs = tail_rows(x, rows);
            let simd = ctx.simd;
            ctx.for_row_runs(y.as_mut_slice(), cols, |first, run| {
                kernels::add_assign(simd, run, &xs[first * cols..][..run.len()]);
            });
        } else {
            let mut a = ctx.scratch.act();
            self.left.forward(x, &mut a, &mut st.left, ctx)?;
            if a.cols() != y.cols() {
                return Err(LayerError::InputDim {
                    layer: "Sum",
                    expected: y.cols(),
                    found: a.cols(),
                });
            }
            let rows = y.rows().min(a.rows());
            let skip = y.rows() - rows;
            let cols = y.cols();
            // IEEE addition is commutative, so `B + A` has the bits of `A + B`.
            let out = &mut y.as_mut_slice()[skip * cols..];
            let a = tail_rows(&a, rows);
            for (o, &av) in out.iter_mut().zip(a) {
                *o += av;
            }
        }
        Ok(())
    }
    fn describe(&self) -> Node {
        let name = if A::IS_IDENTITY { "Residual" } else { "Sum" };
        let children = if A::IS_IDENTITY {
            vec![self.right.describe()]
        } else {
            vec![self.left.describe(), self.right.describe()]
        };
        Node::wiring(name, self.in_dim(), self.out_dim(), children)
    }
}

/// Multiplicative gating: `x -> A(x) * B(x)` element-wise (SwiGLU, GeGLU).
///
/// ```
/// use patchbay_combinators::{Gate, Identity, Layer, Ctx, Capacity};
/// use patchbay_primitives::{Act, Simd, Threads};
/// let g = Gate::new(Identity::new(2), Identity::new(2));
/// let (threads, scratch) = (Threads::single(), patchbay_combinators::Scratch::new());
/// let ctx = Ctx::new(Simd::detect(), &threads, &scratch);
/// let x = Act::from_vec(1, 2, vec![3.0, -2.0]).unwrap();
/// let y = g.apply(&x, &mut g.new_state(Capacity::new(1, 1)), &ctx).unwrap();
/// assert_eq!(y.as_slice(), &[9.0, 4.0]);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Gate<A, B> {
    /// The gate branch (e.g. `Linear` then `Silu`).
    pub gate: A,
    /// The value branch (e.g. the up projection).
    pub value: B,
}

impl<A: Layer, B: Layer> Gate<A, B> {
    /// `x -> gate(x) * value(x)`.
    pub fn new(gate: A, value: B) -> Self {
        Gate { gate, value }
    }
}

impl<A: Layer, B: Layer> Gate<A, B> {
    /// Decode (one row) when both branches start with products of `x` alone
    /// (gate and up): those products take one pass over the pool, and each
    /// branch finishes from its share of their outputs, the gate's into `y`
    /// and the value's into `b`. `false`: not so, nothing done.
    fn forward_fused(
        &self,
        x: &Act,
        y: &mut Act,
        b: &mut Act,
        st: &mut PairState<A::State, B::State>,
        ctx: &Ctx<'_>,
    ) -> Result<bool, LayerError> {
        if x.rows() != 1 {
            return Ok(false);
        }
        let mut products = Products::new();
        if !self.gate.lead_products(&mut products) {
            return Ok(false);
        }
        let split = products.out_cols();
        if !self.value.lead_products(&mut products) {
            return Ok(false);
        }
        let mut both = ctx.scratch.act();
        products.run(x, &mut both, ctx)?;
        let (mut p_gate, mut p_value) = (ctx.scratch.act(), ctx.scratch.act());
        let row = both.row(0);
        p_gate.reshape(1, split);
        p_gate.as_mut_slice().copy_from_slice(&row[..split]);
        p_value.reshape(1, row.len() - split);
        p_value.as_mut_slice().copy_from_slice(&row[split..]);
        self.gate.finish(&p_gate, y, &mut st.left, ctx)?;
        self.value.finish(&p_value, b, &mut st.right, ctx)?;
        Ok(true)
    }
}

impl<A: Layer, B: Layer> Layer for Gate<A, B> {
    type State = PairState<A::State, B::State>;

    fn in_dim(&self) -> usize {
        self.gate.in_dim()
    }
    fn out_dim(&self) -> usize {
        self.gate.out_dim()
    }
    fn new_state(&self, cap: Capacity) -> Self::State {
        PairState {
            left: self.gate.new_state(cap),
            right: self.value.new_state(cap),
        }
    }
    fn reset(&self, st: &mut Self::State) {
        self.gate.reset(&mut st.left);
        self.value.reset(&mut st.right);
    }
    #[inline]
    fn forward(
        &self,
        x: &Act,
        y: &mut Act,
        st: &mut Self::State,
        ctx: &Ctx<'_>,
    ) -> Result<(), LayerError> {
        check_in("Gate", self.in_dim(), x)?;
        let mut b = ctx.scratch.act();
        if !self.forward_fused(x, y, &mut b, st, ctx)? {
            self.gate.forward(x, y, &mut st.left, ctx)?;
            self.value.forward(x, &mut b, &mut st.right, ctx)?;
        }
        if b.cols() != y.cols() || b.rows() != y.rows() {
            return Err(LayerError::InputDim {
                layer: "Gate",
                expected: y.cols(),
                found: b.cols(),
            });
        }
        let (cols, bs) = (y.cols(), b.as_slice());
        let simd = ctx.simd;
        ctx.for_row_runs(y.as_mut_slice(), cols, |first, run| {
            kernels::mul_assign(simd, run, &bs[first * cols..][..run.len()]);
        });
        Ok(())
    }
    fn describe(&self) -> Node {
        Node::wiring(
            "Gate",
            self.in_dim(),
            self.out_dim(),
            vec![self.gate.describe(), self.value.describe()],
        )
    }
}

/// A homogeneous series: N layers of one type with distinct weights, run in
/// order (a decoder stack), or re-wired by a [`Plan`].
///
/// A plan runs the same layers (the same weights, never copied) in another
/// arrangement: dropped, repeated (weight-tied, each pass with its own state,
/// as a [`Loop`] would), re-ordered, or several from the same input merged as
/// a [`Sum`] of their residual updates or the mean of their outputs. Every
/// layer is still called through its own type: no virtual call per token.
///
/// ```
/// use patchbay_combinators::{Stack, Identity, Layer, Ctx, Capacity, Scratch, Plan};
/// use patchbay_primitives::{Act, Simd, Threads};
/// let s = Stack::new(vec![Identity::new(2); 3]);
/// let (threads, scratch) = (Threads::single(), Scratch::new());
/// let ctx = Ctx::new(Simd::detect(), &threads, &scratch);
/// let x = Act::from_vec(1, 2, vec![1.0, 2.0]).unwrap();
/// let y = s.apply(&x, &mut s.new_state(Capacity::new(1, 1)), &ctx).unwrap();
/// assert_eq!(y.as_slice(), x.as_slice());
/// assert_eq!(s.len(), 3);
/// // Layer 1 twice, layer 0 dropped: three applications of the same weights.
/// let r = s.clone().with_plan(Plan::parse("1x2,2", 3).unwrap()).unwrap();
/// assert_eq!(r.applications(), 3);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Stack<L> {
    /// The layers, first to last.
    pub layers: Vec<L>,
    dim: usize,
    plan: Option<Plan>,
}

impl<L: Layer> Stack<L> {
    /// A stack of `layers` (each must map `d -> d`; an empty stack is the identity
    /// on the first layer's width, or 0).
    pub fn new(layers: Vec<L>) -> Stack<L> {
        let dim = layers.first().map_or(0, |l| l.in_dim());
        Stack {
            layers,
            dim,
            plan: None,
        }
    }

    /// An empty stack over `dim` features (the identity).
    pub fn empty(dim: usize) -> Stack<L> {
        Stack {
            layers: Vec::new(),
            dim,
            plan: None,
        }
    }

    /// Re-wires the stack by `plan` (over these layers' indices). The identity
    /// plan is dropped, so it runs exactly as the plain stack.
    pub fn with_plan(mut self, plan: Plan) -> Result<Stack<L>, LayerError> {
        let n = self.layers.len();
        for step in plan.steps() {
            let bad = match step {
                PlanStep::Layer(i) => (*i >= n).then_some(*i),
                PlanStep::Repeat { layer, .. } => (*layer >= n).then_some(*layer),
                PlanStep::Parallel { layers, .. } => layers.iter().copied().find(|&i| i >= n),
            };
            if let Some(i) = bad {
                return Err(LayerError::Plan(format!(
                    "layer {i} is out of range: the stack has {n} layers"
                )));
            }
        }
        self.plan = (!plan.is_identity(n)).then_some(plan);
        Ok(self)
    }

    /// The plan in force (`None`: every layer once, in order).
    pub fn plan(&self) -> Option<&Plan> {
        self.plan.as_ref()
    }

    /// Number of layers.
    pub fn len(&self) -> usize {
        self.layers.len()
    }

    /// True when there are no layers.
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    /// Layer applications in one forward pass (the plan's, else `len`).
    pub fn applications(&self) -> usize {
        self.plan
            .as_ref()
            .map_or(self.layers.len(), Plan::layer_applications)
    }

    /// The layer index of each application, in order.
    fn application_layers(&self) -> Vec<usize> {
        match &self.plan {
            None => (0..self.layers.len()).collect(),
            Some(p) => p
                .steps()
                .iter()
                .flat_map(|s| match s {
                    PlanStep::Layer(i) => vec![*i],
                    PlanStep::Repeat { layer, times } => vec![*layer; *times],
                    PlanStep::Parallel { layers, .. } => layers.clone(),
                })
                .collect(),
        }
    }
}

/// State of a [`Stack`]: one state per layer application (a repeated layer
/// has one per pass: each pass caches its own keys and values).
#[derive(Debug)]
pub struct StackState<S> {
    /// Per-application states, in order.
    pub layers: Vec<S>,
}

/// `(src, dst)` for the next stage: the input, or one buffer read and the other written.
fn stage<'b>(
    x: &'b Act,
    bufs: &'b mut [&mut Act; 2],
    cur: Option<usize>,
) -> (&'b Act, &'b mut Act, usize) {
    let [a, b] = bufs;
    match cur {
        None => (x, &mut **a, 0),
        Some(0) => (&**a, &mut **b, 1),
        Some(_) => (&**b, &mut **a, 0),
    }
}

impl<L: Layer> Layer for Stack<L> {
    type State = StackState<L::State>;

    fn in_dim(&self) -> usize {
        self.layers.first().map_or(self.dim, |l| l.in_dim())
    }
    fn out_dim(&self) -> usize {
        self.layers.last().map_or(self.dim, |l| l.out_dim())
    }
    fn new_state(&self, cap: Capacity) -> Self::State {
        StackState {
            layers: self
                .application_layers()
                .into_iter()
                .map(|i| self.layers[i].new_state(cap))
                .collect(),
        }
    }
    fn reset(&self, st: &mut Self::State) {
        for (i, s) in self.application_layers().into_iter().zip(&mut st.layers) {
            self.layers[i].reset(s);
        }
    }
    fn forward(
        &self,
        x: &Act,
        y: &mut Act,
        st: &mut Self::State,
        ctx: &Ctx<'_>,
    ) -> Result<(), LayerError> {
        let n = self.layers.len();
        if n == 0 {
            check_in("Stack", self.dim, x)?;
            y.copy_from(x);
            return Ok(());
        }
        let Some(plan) = &self.plan else {
            if let Some(obs) = ctx.observer {
                return self.forward_observed(obs, x, y, st, ctx);
            }
            return self.forward_in_order(x, y, st, ctx);
        };
        let unobserved = Ctx {
            observer: None,
            ..*ctx
        };
        let ctx = &unobserved;
        let (mut a, mut b) = (ctx.scratch.act(), ctx.scratch.act());
        self.forward_plan(plan, x, y, &mut [&mut a, &mut b], st, ctx)
    }
    fn describe(&self) -> Node {
        let children: Vec<Node> = match &self.plan {
            None => self.layers.iter().map(Layer::describe).collect(),
            Some(p) => p
                .steps()
                .iter()
                .map(|s| match s {
                    PlanStep::Layer(i) => self.layers[*i].describe(),
                    PlanStep::Repeat { layer, times } => Node::wiring(
                        "Loop",
                        self.dim,
                        self.dim,
                        vec![self.layers[*layer].describe()],
                    )
                    .with_detail(format!("repeat x{times}, layer {layer}")),
                    PlanStep::Parallel { layers, merge } => {
                        let list: Vec<String> = layers.iter().map(|i| i.to_string()).collect();
                        let (name, what) = match merge {
                            Merge::SumUpdates => ("Sum", "residual updates"),
                            Merge::Mean => ("Mean", "outputs"),
                        };
                        Node::wiring(
                            name,
                            self.dim,
                            self.dim,
                            layers.iter().map(|&i| self.layers[i].describe()).collect(),
                        )
                        .with_detail(format!("{what} of layers {}", list.join("|")))
                    }
                })
                .collect(),
        };
        let detail = match &self.plan {
            None => format!("x{}", self.layers.len()),
            Some(p) => format!("x{} plan {p}", p.layer_applications()),
        };
        Node::wiring("Stack", self.in_dim(), self.out_dim(), children).with_detail(detail)
    }
}

impl<L: Layer> Stack<L> {
    /// Every layer once, in order, ping-ponging between two scratch buffers.
    fn forward_in_order(
        &self,
        x: &Act,
        y: &mut Act,
        st: &mut StackState<L::State>,
        ctx: &Ctx<'_>,
    ) -> Result<(), LayerError> {
        let n = self.layers.len();
        let (mut ping, mut pong) = (ctx.scratch.act(), ctx.scratch.act());
        for (i, (layer, s)) in self.layers.iter().zip(st.layers.iter_mut()).enumerate() {
            let last = i + 1 == n;
            // Even steps read the previous step's output from `ping`, odd ones from `pong`.
            let (src, dst): (&Act, &mut Act) = match (i, i % 2) {
                (0, _) => (x, if last { &mut *y } else { &mut *ping }),
                (_, 1) => (&*ping, if last { &mut *y } else { &mut *pong }),
                _ => (&*pong, if last { &mut *y } else { &mut *ping }),
            };
            layer.forward(src, dst, s, ctx)?;
        }
        Ok(())
    }

    /// [`Stack::forward_in_order`] with `obs` shown each layer's input and
    /// the output; the layers themselves run without the observer.
    fn forward_observed(
        &self,
        obs: &dyn crate::layer::StackObserver,
        x: &Act,
        y: &mut Act,
        st: &mut StackState<L::State>,
        ctx: &Ctx<'_>,
    ) -> Result<(), LayerError> {
        let inner = Ctx {
            observer: None,
            ..*ctx
        };
        let (mut a, mut b) = (ctx.scratch.act(), ctx.scratch.act());
        let mut bufs = [&mut *a, &mut *b];
        let mut cur: Option<usize> = None;
        for (i, (layer, s)) in self.layers.iter().zip(st.layers.iter_mut()).enumerate() {
            let (src, dst, d) = stage(x, &mut bufs, cur);
            obs.observe(i, src);
            layer.forward(src, dst, s, &inner)?;
            cur = Some(d);
        }
        match cur {
            Some(d) => y.copy_from(bufs[d]),
            None => y.copy_from(x),
        }
        obs.observe(self.layers.len(), y);
        Ok(())
    }

    fn forward_plan(
        &self,
        plan: &Plan,
        x: &Act,
        y: &mut Act,
        bufs: &mut [&mut Act; 2],
        st: &mut StackState<L::State>,
        ctx: &Ctx<'_>,
    ) -> Result<(), LayerError> {
        let mut states = st.layers.iter_mut();
        let mut next_state = || {
            states.next().ok_or(LayerError::Plan(
                "the state was built for another plan".into(),
            ))
        };
        let mut cur: Option<usize> = None;
        for step in plan.steps() {
            match step {
                PlanStep::Layer(i) => {
                    let (src, dst, d) = stage(x, bufs, cur);
                    self.layers[*i].forward(src, dst, next_state()?, ctx)?;
                    cur = Some(d);
                }
                PlanStep::Repeat { layer, times } => {
                    for _ in 0..*times {
                        let (src, dst, d) = stage(x, bufs, cur);
                        self.layers[*layer].forward(src, dst, next_state()?, ctx)?;
                        cur = Some(d);
                    }
                }
                PlanStep::Parallel { layers, merge } => {
                    let (src, acc, d) = stage(x, bufs, cur);
                    let mut tmp = ctx.scratch.act();
                    for (j, &i) in layers.iter().enumerate() {
                        let out: &mut Act = if j == 0 { &mut *acc } else { &mut tmp };
                        self.layers[i].forward(src, out, next_state()?, ctx)?;
                        if j == 0 {
                            continue;
                        }
                        if tmp.rows() != acc.rows() || tmp.cols() != acc.cols() {
                            return Err(LayerError::Plan(
                                "parallel layers returned different shapes".into(),
                            ));
                        }
                        match merge {
                            // acc = L0(x) + Σ (Lj(x) - x)
                            Merge::SumUpdates => {
                                let skip = src.rows() - tmp.rows();
                                let xs = &src.as_slice()[skip * src.cols()..];
                                for ((a, &t), &xv) in
                                    acc.as_mut_slice().iter_mut().zip(tmp.as_slice()).zip(xs)
                                {
                                    *a += t - xv;
                                }
                            }
                            Merge::Mean => {
                                kernels::add_assign(ctx.simd, acc.as_mut_slice(), tmp.as_slice())
                            }
                        }
                    }
                    if *merge == Merge::Mean {
                        kernels::scale(ctx.simd, acc.as_mut_slice(), 1.0 / layers.len() as f32);
                    }
                    cur = Some(d);
                }
            }
        }
        match cur {
            Some(d) => y.copy_from(bufs[d]),
            None => y.copy_from(x),
        }
        Ok(())
    }
}

/// How a [`Loop`] feeds its body's output back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feedback {
    /// Weight-tied repetition: the whole output re-enters at the same positions,
    /// `iterations` times.
    Repeat {
        /// Number of passes through the body.
        iterations: usize,
    },
    /// Autoregression: the body's last output row is the next input, one
    /// position further on; the body's state (the KV cache) carries the past.
    /// The loop's output stacks the rows produced at each step.
    Autoregressive {
        /// Number of steps (outputs produced).
        steps: usize,
    },
}

/// Recurrence: the body's output re-enters the body, its state carried across
/// iterations.
///
/// ```
/// use patchbay_combinators::{Loop, Gate, Identity, Layer, Ctx, Capacity};
/// use patchbay_primitives::{Act, Simd, Threads};
/// // Squaring three times: x^8.
/// let l = Loop::repeat(Gate::new(Identity::new(1), Identity::new(1)), 3);
/// let (threads, scratch) = (Threads::single(), patchbay_combinators::Scratch::new());
/// let ctx = Ctx::new(Simd::detect(), &threads, &scratch);
/// let x = Act::from_vec(1, 1, vec![2.0]).unwrap();
/// let y = l.apply(&x, &mut l.new_state(Capacity::new(1, 1)), &ctx).unwrap();
/// assert_eq!(y.as_slice(), &[256.0]);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Loop<B> {
    /// The recurrent body (`in_dim == out_dim`).
    pub body: B,
    /// How outputs are fed back.
    pub feedback: Feedback,
}

/// State of a [`Loop`]: the body's states.
///
/// Autoregression carries one state across its steps (the KV cache holds the
/// past). Weight-tied repetition keeps one state per pass: each pass sees
/// different inputs at the same positions, so each caches its own keys and
/// values.
#[derive(Debug)]
pub struct LoopState<S> {
    passes: Vec<S>,
}

impl<S> LoopState<S> {
    /// The body's state (the first pass's, for repetition).
    pub fn body(&self) -> &S {
        &self.passes[0]
    }

    /// The body's state, mutable.
    pub fn body_mut(&mut self) -> &mut S {
        &mut self.passes[0]
    }
}

/// What a step callback tells [`Loop::run`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Feed this output back and go on.
    Continue,
    /// Stop after this step.
    Stop,
}

impl<B: Layer> Loop<B> {
    /// Weight-tied repetition `iterations` times.
    pub fn repeat(body: B, iterations: usize) -> Loop<B> {
        Loop {
            body,
            feedback: Feedback::Repeat { iterations },
        }
    }

    /// Autoregressive decoding for up to `steps` steps.
    pub fn autoregressive(body: B, steps: usize) -> Loop<B> {
        Loop {
            body,
            feedback: Feedback::Autoregressive { steps },
        }
    }

    /// Runs the autoregressive loop from `x` (the prompt, processed as one batch
    /// at `ctx.pos`), calling `on_step(step, output_row)` after each step; the
    /// callback may stop early. Returns the number of steps taken and the
    /// position after the last fed-back row.
    ///
    /// The body runs with [`Rows::Last`], so heads compute only what is fed back.
    /// Steady-state steps do not allocate.
    pub fn run(
        &self,
        x: &Act,
        st: &mut LoopState<B::State>,
        ctx: &Ctx<'_>,
        max_steps: usize,
        mut on_step: impl FnMut(usize, &[f32]) -> Step,
    ) -> Result<(usize, usize), LayerError> {
        let ctx = ctx.with_rows(Rows::Last);
        let mut pos = ctx.pos;
        let body = st.body_mut();
        let (mut a, mut b) = (ctx.scratch.act(), ctx.scratch.act());
        // Step 0 consumes the whole prompt.
        self.body.forward(x, &mut a, body, &ctx.at(pos))?;
        pos += x.rows();
        let mut steps = 0;
        while steps < max_steps {
            let last = a.rows().saturating_sub(1);
            let keep_going = on_step(steps, a.row(last));
            steps += 1;
            if keep_going == Step::Stop || steps == max_steps {
                break;
            }
            // Feed the last row back as a one-row input at the next position.
            let cols = a.cols();
            b.reshape(1, cols);
            b.as_mut_slice().copy_from_slice(a.row(last));
            self.body.forward(&b, &mut a, body, &ctx.at(pos))?;
            pos += 1;
        }
        Ok((steps, pos))
    }
}

impl<B: Layer> Layer for Loop<B> {
    type State = LoopState<B::State>;

    fn in_dim(&self) -> usize {
        self.body.in_dim()
    }
    fn out_dim(&self) -> usize {
        self.body.out_dim()
    }
    fn new_state(&self, cap: Capacity) -> Self::State {
        let passes = match self.feedback {
            Feedback::Repeat { iterations } => iterations.max(1),
            Feedback::Autoregressive { .. } => 1,
        };
        LoopState {
            passes: (0..passes).map(|_| self.body.new_state(cap)).collect(),
        }
    }
    fn reset(&self, st: &mut Self::State) {
        for s in &mut st.passes {
            self.body.reset(s);
        }
    }
    fn forward(
        &self,
        x: &Act,
        y: &mut Act,
        st: &mut Self::State,
        ctx: &Ctx<'_>,
    ) -> Result<(), LayerError> {
        check_in("Loop", self.in_dim(), x)?;
        match self.feedback {
            Feedback::Repeat { iterations } => {
                if iterations == 0 {
                    y.copy_from(x);
                    return Ok(());
                }
                if st.passes.len() < iterations {
                    return Err(LayerError::Plan(format!(
                        "Loop: state holds {} passes, {iterations} asked",
                        st.passes.len()
                    )));
                }
                let (mut a, mut b) = (ctx.scratch.act(), ctx.scratch.act());
                for (i, body) in st.passes.iter_mut().enumerate().take(iterations) {
                    let last = i + 1 == iterations;
                    let (src, dst): (&Act, &mut Act) = match (i, i % 2) {
                        (0, _) => (x, if last { &mut *y } else { &mut *a }),
                        (_, 1) => (&*a, if last { &mut *y } else { &mut *b }),
                        _ => (&*b, if last { &mut *y } else { &mut *a }),
                    };
                    self.body.forward(src, dst, body, ctx)?;
                }
                Ok(())
            }
            Feedback::Autoregressive { steps } => {
                let cols = self.out_dim();
                y.reshape(0, cols);
                let mut out = std::mem::take(y);
                out.reshape(steps, cols);
                let res = self.run(x, st, ctx, steps, |i, row| {
                    out.row_mut(i).copy_from_slice(row);
                    Step::Continue
                });
                *y = out;
                res.map(|_| ())
            }
        }
    }
    fn describe(&self) -> Node {
        let detail = match self.feedback {
            Feedback::Repeat { iterations } => format!("repeat x{iterations}"),
            Feedback::Autoregressive { steps } => format!("autoregressive, {steps} steps"),
        };
        Node::wiring(
            "Loop",
            self.in_dim(),
            self.out_dim(),
            vec![self.body.describe()],
        )
        .with_detail(detail)
    }
}

/// Builder methods available on every layer.
pub trait LayerExt: Layer + Sized {
    /// `self` then `next`: `Series<Self, N>`.
    fn then<N: Layer>(self, next: N) -> Series<Self, N> {
        Series::new(self, next)
    }
}

impl<L: Layer> LayerExt for L {}

/// Flat type-level sugar for left-nested [`Series`] chains:
/// `series![A, B, C]` is `Series<Series<A, B>, C>`, the type `a.then(b).then(c)` builds.
///
/// ```
/// use patchbay_combinators::{series, Identity, Series, LayerExt};
/// type Three = series![Identity, Identity, Identity];
/// let s: Three = Identity::new(4).then(Identity::new(4)).then(Identity::new(4));
/// let _: Series<Series<Identity, Identity>, Identity> = s;
/// ```
#[macro_export]
macro_rules! series {
    ($a:ty $(,)?) => { $a };
    ($a:ty, $b:ty $(, $rest:ty)* $(,)?) => {
        $crate::series!(@acc $crate::Series<$a, $b> $(, $rest)*)
    };
    (@acc $acc:ty) => { $acc };
    (@acc $acc:ty, $next:ty $(, $rest:ty)*) => {
        $crate::series!(@acc $crate::Series<$acc, $next> $(, $rest)*)
    };
}

/// A borrowed layer is a layer: lets a loop or series use a model it does not
/// own (`Series<&Model, Sampler>`), so one set of weights serves many pipelines.
impl<L: Layer + ?Sized> Layer for &L {
    type State = L::State;
    const IS_IDENTITY: bool = L::IS_IDENTITY;

    fn in_dim(&self) -> usize {
        (**self).in_dim()
    }
    fn out_dim(&self) -> usize {
        (**self).out_dim()
    }
    fn new_state(&self, cap: Capacity) -> Self::State {
        (**self).new_state(cap)
    }
    fn reset(&self, st: &mut Self::State) {
        (**self).reset(st)
    }
    #[inline]
    fn forward(
        &self,
        x: &Act,
        y: &mut Act,
        st: &mut Self::State,
        ctx: &Ctx<'_>,
    ) -> Result<(), LayerError> {
        (**self).forward(x, y, st, ctx)
    }
    fn describe(&self) -> Node {
        (**self).describe()
    }
    fn products<'s>(&'s self, out: &mut Products<'s>) -> bool {
        (**self).products(out)
    }
    fn lead_products<'s>(&'s self, out: &mut Products<'s>) -> bool {
        (**self).lead_products(out)
    }
    fn finish(
        &self,
        p: &Act,
        y: &mut Act,
        st: &mut Self::State,
        ctx: &Ctx<'_>,
    ) -> Result<(), LayerError> {
        (**self).finish(p, y, st, ctx)
    }
}
