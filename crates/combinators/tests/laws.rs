//! Property tests of the combinator laws, with random small linear and
//! non-linear layers.

use patchbay_combinators::{
    residual, AddHalves, Capacity, Ctx, Gate, Identity, Layer, LayerError, LayerExt, Loop, Node,
    Parallel, Plan, Scratch, Series, Stack, Step, Sum,
};
use patchbay_primitives::{Act, Simd, Threads};
use proptest::prelude::*;

/// A dense layer `y = act(W x + b)`, computed naively: the laws do not depend
/// on how a layer computes, only on how combinators wire it.
#[derive(Debug, Clone)]
struct Dense {
    w: Vec<f32>,
    b: Vec<f32>,
    n: usize,
    k: usize,
    tanh: bool,
}

impl Layer for Dense {
    type State = ();
    fn in_dim(&self) -> usize {
        self.k
    }
    fn out_dim(&self) -> usize {
        self.n
    }
    fn new_state(&self, _: Capacity) {}
    fn forward(&self, x: &Act, y: &mut Act, _: &mut (), _: &Ctx<'_>) -> Result<(), LayerError> {
        patchbay_combinators::check_in("Dense", self.k, x)?;
        y.reshape(x.rows(), self.n);
        for r in 0..x.rows() {
            for j in 0..self.n {
                let mut acc = self.b[j];
                for i in 0..self.k {
                    acc += self.w[j * self.k + i] * x.row(r)[i];
                }
                y.row_mut(r)[j] = if self.tanh { acc.tanh() } else { acc };
            }
        }
        Ok(())
    }
    fn describe(&self) -> Node {
        Node::leaf(
            "Dense",
            self.k,
            self.n,
            (self.w.len() + self.b.len()) as u64,
        )
    }
}

/// A layer whose outputs are all one constant (zero and all-ones branches).
#[derive(Debug, Clone)]
struct Constant {
    dim: usize,
    value: f32,
}

impl Layer for Constant {
    type State = ();
    fn in_dim(&self) -> usize {
        self.dim
    }
    fn out_dim(&self) -> usize {
        self.dim
    }
    fn new_state(&self, _: Capacity) {}
    fn forward(&self, x: &Act, y: &mut Act, _: &mut (), _: &Ctx<'_>) -> Result<(), LayerError> {
        y.reshape(x.rows(), self.dim);
        y.as_mut_slice().fill(self.value);
        Ok(())
    }
    fn describe(&self) -> Node {
        Node::leaf("Constant", self.dim, self.dim, 0)
    }
}

fn dense(n: usize, k: usize, tanh: bool) -> impl Strategy<Value = Dense> {
    (
        prop::collection::vec(-1.0f32..1.0, n * k),
        prop::collection::vec(-1.0f32..1.0, n),
    )
        .prop_map(move |(w, b)| Dense { w, b, n, k, tanh })
}

fn act(rows: usize, cols: usize) -> impl Strategy<Value = Act> {
    prop::collection::vec(-3.0f32..3.0, rows * cols)
        .prop_map(move |v| Act::from_vec(rows, cols, v).unwrap())
}

fn run<L: Layer>(l: &L, x: &Act) -> Act {
    let (threads, scratch) = (Threads::single(), Scratch::new());
    let ctx = Ctx::new(Simd::detect(), &threads, &scratch);
    let mut st = l.new_state(Capacity::new(x.rows(), 16));
    l.apply(x, &mut st, &ctx).unwrap()
}

/// Three chained dims and an input.
fn chain() -> impl Strategy<Value = (Dense, Dense, Dense, Act)> {
    (1usize..6, 1usize..9, 1usize..9, 1usize..9, 1usize..5).prop_flat_map(
        |(rows, d0, d1, d2, d3)| {
            (
                dense(d1, d0, true),
                dense(d2, d1, false),
                dense(d3, d2, true),
                act(rows, d0),
            )
        },
    )
}

/// Two layers of one shape and an input.
fn pair() -> impl Strategy<Value = (Dense, Dense, Act)> {
    (1usize..6, 1usize..9, 1usize..9, any::<bool>())
        .prop_flat_map(|(rows, k, n, t)| (dense(n, k, t), dense(n, k, !t), act(rows, k)))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn series_is_associative((a, b, c, x) in chain()) {
        let left = Series::new(Series::new(a.clone(), b.clone()), c.clone());
        let right = Series::new(a, Series::new(b, c));
        prop_assert_eq!(run(&left, &x), run(&right, &x));
    }

    #[test]
    fn sum_equals_parallel_then_add((a, b, x) in pair()) {
        let n = a.n;
        let sum = Sum::new(a.clone(), b.clone());
        let par = Parallel::new(a, b).then(AddHalves::new(n));
        let (s, p) = (run(&sum, &x), run(&par, &x));
        // A + B in the same order on both sides: identical bits.
        prop_assert_eq!(s, p);
    }

    #[test]
    fn sum_is_commutative((a, b, x) in pair()) {
        let ab = run(&Sum::new(a.clone(), b.clone()), &x);
        let ba = run(&Sum::new(b, a), &x);
        for (p, q) in ab.as_slice().iter().zip(ba.as_slice()) {
            prop_assert!((p - q).abs() <= 1e-6 * (1.0 + p.abs()), "{} vs {}", p, q);
        }
    }

    #[test]
    fn residual_with_zero_branch_is_identity((rows, d) in (1usize..6, 1usize..12), seed in any::<u64>()) {
        let x = Act::from_vec(rows, d, (0..rows * d).map(|i| ((i as u64 ^ seed) % 97) as f32 - 48.0).collect()).unwrap();
        let r = residual(Constant { dim: d, value: 0.0 });
        prop_assert_eq!(run(&r, &x), x);
    }

    #[test]
    fn gate_with_all_ones_branch_is_the_other((a, _b, x) in pair()) {
        let n = a.n;
        let g = Gate::new(a.clone(), Series::new(a.clone(), Constant { dim: n, value: 1.0 }));
        prop_assert_eq!(run(&g, &x), run(&a, &x));
        let g2 = Gate::new(Series::new(a.clone(), Constant { dim: n, value: 1.0 }), a.clone());
        prop_assert_eq!(run(&g2, &x), run(&a, &x));
    }

    #[test]
    fn loop_of_k_equals_k_nested_series((rows, d) in (1usize..5, 1usize..8), seed in prop::collection::vec(-1.0f32..1.0, 64 + 8), k in 0usize..6) {
        let l = Dense { w: seed[..d * d].to_vec(), b: seed[64..64 + d].to_vec(), n: d, k: d, tanh: true };
        let x = Act::from_vec(rows, d, seed[..rows * d].iter().map(|v| v * 2.0).collect()).unwrap();
        let looped = run(&Loop::repeat(l.clone(), k), &x);
        let mut expect = x.clone();
        for _ in 0..k {
            expect = run(&l, &expect);
        }
        prop_assert_eq!(looped, expect.clone());
        // And as a Stack of k copies of the same weights.
        let stack = if k == 0 { Stack::empty(d) } else { Stack::new(vec![l; k]) };
        let stacked = run(&stack, &x);
        prop_assert_eq!(stacked.as_slice(), expect.as_slice());
    }
}

/// Emits `ctx.pos + row index` per row and counts calls in its state: checks
/// that Loop advances positions and carries state across steps.
#[derive(Debug, Clone)]
struct PosEcho;

impl Layer for PosEcho {
    type State = usize;
    fn in_dim(&self) -> usize {
        1
    }
    fn out_dim(&self) -> usize {
        1
    }
    fn new_state(&self, _: Capacity) -> usize {
        0
    }
    fn reset(&self, calls: &mut usize) {
        *calls = 0;
    }
    fn forward(
        &self,
        x: &Act,
        y: &mut Act,
        calls: &mut usize,
        ctx: &Ctx<'_>,
    ) -> Result<(), LayerError> {
        *calls += 1;
        y.reshape(x.rows(), 1);
        for r in 0..x.rows() {
            y.row_mut(r)[0] = (ctx.pos + r) as f32 * 100.0 + x.row(r)[0];
        }
        Ok(())
    }
    fn describe(&self) -> Node {
        Node::leaf("PosEcho", 1, 1, 0)
    }
}

#[test]
fn autoregressive_loop_feeds_last_row_back_one_position_on() {
    let l = Loop::autoregressive(PosEcho, 3);
    let (threads, scratch) = (Threads::single(), Scratch::new());
    let ctx = Ctx::new(Simd::detect(), &threads, &scratch);
    let mut st = l.new_state(Capacity::new(4, 16));
    let prompt = Act::from_vec(2, 1, vec![1.0, 2.0]).unwrap();
    let y = l.apply(&prompt, &mut st, &ctx).unwrap();
    // step 0: last prompt row at pos 1 -> 100 + 2 = 102
    // step 1: input 102 at pos 2 -> 302; step 2: input 302 at pos 3 -> 602
    assert_eq!(y.as_slice(), &[102.0, 302.0, 602.0]);
    assert_eq!(*st.body(), 3);

    // `run` can stop early and reports the position reached.
    l.reset(&mut st);
    let mut seen = Vec::new();
    let (steps, pos) = l
        .run(&prompt, &mut st, &ctx, 10, |i, row| {
            seen.push(row[0]);
            if i == 1 {
                Step::Stop
            } else {
                Step::Continue
            }
        })
        .unwrap();
    assert_eq!((steps, pos), (2, 3));
    assert_eq!(seen, vec![102.0, 302.0]);
}

#[test]
fn wrong_input_width_is_an_error_not_a_panic() {
    let (threads, scratch) = (Threads::single(), Scratch::new());
    let ctx = Ctx::new(Simd::detect(), &threads, &scratch);
    let r = residual(Identity::new(4));
    let x = Act::zeros(1, 3);
    let err = r
        .apply(&x, &mut r.new_state(Capacity::new(1, 1)), &ctx)
        .unwrap_err();
    assert!(
        matches!(
            err,
            LayerError::InputDim {
                expected: 4,
                found: 3,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn describe_prints_the_tree_with_parameter_counts() {
    let a = Dense {
        w: vec![0.0; 6],
        b: vec![0.0; 3],
        n: 3,
        k: 2,
        tanh: false,
    };
    let b = Dense {
        w: vec![0.0; 9],
        b: vec![0.0; 3],
        n: 3,
        k: 3,
        tanh: true,
    };
    let model = a.then(residual(Gate::new(b.clone(), b)));
    let node = model.describe();
    assert_eq!(node.params(), 9 + 12 + 12);
    let tree = node.tree();
    assert!(tree.contains("Residual"), "{tree}");
    assert!(tree.contains("Gate"), "{tree}");
    // Series, Dense, Residual, Gate, Dense, Dense.
    assert_eq!(tree.lines().count(), 6, "{tree}");
}

/// Four residual blocks of one width and an input.
fn blocks() -> impl Strategy<Value = (Vec<Dense>, Act)> {
    (1usize..5, 1usize..7)
        .prop_flat_map(|(rows, d)| (prop::collection::vec(dense(d, d, true), 4), act(rows, d)))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn identity_plan_is_bit_identical((layers, x) in blocks()) {
        let plain = Stack::new(layers.clone());
        let planned = Stack::new(layers).with_plan(Plan::identity(4)).unwrap();
        prop_assert!(planned.plan().is_none());
        prop_assert_eq!(run(&plain, &x), run(&planned, &x));
    }

    #[test]
    fn plans_match_stacks_built_by_hand((layers, x) in blocks()) {
        let l = |i: usize| layers[i].clone();
        // Drop layer 1.
        let dropped = Stack::new(layers.clone()).with_plan(Plan::parse("0,2-3", 4).unwrap()).unwrap();
        let by_hand = l(0).then(l(2)).then(l(3));
        prop_assert_eq!(run(&dropped, &x), run(&by_hand, &x));
        // Layer 2 three times: a weight-tied Loop.
        let repeated = Stack::new(layers.clone()).with_plan(Plan::parse("0-1,2x3,3", 4).unwrap()).unwrap();
        let by_hand = l(0).then(l(1)).then(Loop::repeat(l(2), 3)).then(l(3));
        prop_assert_eq!(run(&repeated, &x), run(&by_hand, &x));
        // Swapped and reversed.
        let reversed = Stack::new(layers.clone()).with_plan(Plan::parse("3-0", 4).unwrap()).unwrap();
        let by_hand = l(3).then(l(2)).then(l(1)).then(l(0));
        prop_assert_eq!(run(&reversed, &x), run(&by_hand, &x));
    }

    #[test]
    fn parallel_plans_merge_updates_or_outputs((layers, x) in blocks()) {
        let stack = Stack::new(layers.clone());
        let sum = stack.clone().with_plan(Plan::parse("(1|2)", 4).unwrap()).unwrap();
        let mean = stack.with_plan(Plan::parse("(1|2)/mean", 4).unwrap()).unwrap();
        let (a, b) = (run(&layers[1], &x), run(&layers[2], &x));
        let ys = run(&sum, &x);
        let ym = run(&mean, &x);
        for i in 0..x.as_slice().len() {
            let (xa, aa, bb) = (x.as_slice()[i], a.as_slice()[i], b.as_slice()[i]);
            prop_assert!((ys.as_slice()[i] - (aa + (bb - xa))).abs() <= 1e-6);
            prop_assert!((ym.as_slice()[i] - (aa + bb) / 2.0).abs() <= 1e-6);
        }
    }
}

/// Adds how often it has run (since its state was made) to its input: a
/// stand-in for a layer whose state (a KV cache) records its past.
#[derive(Debug, Clone)]
struct Counter;

impl Layer for Counter {
    type State = usize;
    fn in_dim(&self) -> usize {
        1
    }
    fn out_dim(&self) -> usize {
        1
    }
    fn new_state(&self, _: Capacity) -> usize {
        0
    }
    fn forward(&self, x: &Act, y: &mut Act, n: &mut usize, _: &Ctx<'_>) -> Result<(), LayerError> {
        y.copy_from(x);
        y.as_mut_slice().iter_mut().for_each(|v| *v += *n as f32);
        *n += 1;
        Ok(())
    }
    fn describe(&self) -> Node {
        Node::leaf("Counter", 1, 1, 0)
    }
}

#[test]
fn repeated_passes_keep_their_own_state() {
    let (threads, scratch) = (Threads::single(), Scratch::new());
    let ctx = Ctx::new(Simd::detect(), &threads, &scratch);
    let x = Act::from_vec(1, 1, vec![10.0]).unwrap();
    // A weight-tied Loop: each pass has its own state, so each sees a fresh count.
    let l = Loop::repeat(Counter, 3);
    let mut st = l.new_state(Capacity::new(1, 1));
    assert_eq!(l.apply(&x, &mut st, &ctx).unwrap().as_slice(), &[10.0]);
    assert_eq!(l.apply(&x, &mut st, &ctx).unwrap().as_slice(), &[13.0]);
    // So does a repeat in a plan: two passes of layer 0, then layer 1.
    let s = Stack::new(vec![Counter, Counter])
        .with_plan(Plan::parse("0x2,1", 2).unwrap())
        .unwrap();
    let mut st = s.new_state(Capacity::new(1, 1));
    assert_eq!(st.layers.len(), 3);
    assert_eq!(s.apply(&x, &mut st, &ctx).unwrap().as_slice(), &[10.0]);
    assert_eq!(s.apply(&x, &mut st, &ctx).unwrap().as_slice(), &[13.0]);
    let tree = s.describe().tree();
    assert!(tree.contains("Loop [repeat x2, layer 0]"), "{tree}");
}

#[test]
fn a_plan_for_more_layers_than_the_stack_is_an_error() {
    let plan = Plan::parse("0-5", 8).unwrap();
    let err = Stack::new(vec![Counter, Counter])
        .with_plan(plan)
        .unwrap_err();
    assert!(err.to_string().contains("out of range"), "{err}");
}

#[test]
fn scratch_is_shared_not_per_layer() {
    // Thirty layers borrow from one pool: it holds a few buffers, not thirty.
    let (threads, scratch) = (Threads::single(), Scratch::new());
    let ctx = Ctx::new(Simd::detect(), &threads, &scratch);
    let s = Stack::new(vec![residual(Identity::new(8).then(Identity::new(8))); 30]);
    let mut st = s.new_state(Capacity::new(4, 4));
    s.apply(&Act::zeros(4, 8), &mut st, &ctx).unwrap();
    assert!(scratch.pooled() <= 4, "{} buffers pooled", scratch.pooled());
}
