//! Layer plans on trained models: the identity plan is the model to the bit,
//! and dropped, repeated or parallel layers equal networks built by hand.

use patchbay_combinators::{Capacity, Ctx, Layer, Merge, Plan, PlanStep, Scratch};
use patchbay_models::catalog;
use patchbay_models::families::gemma3::{self, Gemma3Net};
use patchbay_models::families::llama::{self, LlamaNet};
use patchbay_models::families::{BuildOptions, Model};
use patchbay_models::formats::source::ModelSource;
use patchbay_primitives::{Act, Simd, Threads};

fn source(name: &str) -> ModelSource {
    let path = catalog::resolve_model(name).unwrap_or_else(|e| panic!("{e}"));
    patchbay_models::families::open(path).unwrap()
}

fn opts(plan: Option<&str>, n_layers: usize) -> BuildOptions {
    BuildOptions {
        max_context: 64,
        plan: plan.map(|p| Plan::parse(p, n_layers).unwrap()),
    }
}

fn logits<N: Layer>(net: &N, tokens: &[u32]) -> Vec<f32> {
    let (threads, scratch) = (Threads::new(2), Scratch::new());
    let ctx = Ctx::new(Simd::detect(), &threads, &scratch);
    let mut st = net.new_state(Capacity::new(tokens.len(), 64));
    let x = Act::from_tokens(tokens);
    net.apply(&x, &mut st, &ctx).unwrap().into_vec()
}

const TOKENS: [u32; 5] = [504, 3575, 282, 4649, 314];

fn llama(name: &str, plan: Option<&str>) -> Model<LlamaNet> {
    let s = source(name);
    let n = s.hparams().n_layer;
    llama::build(&s, &opts(plan, n)).unwrap()
}

#[test]
fn identity_plan_is_bit_identical_on_smollm2() {
    let plain = logits(&llama("smollm2-135m", None).net, &TOKENS);
    for plan in ["0-29", "all", "0-9,10-29"] {
        let same = logits(&llama("smollm2-135m", Some(plan)).net, &TOKENS);
        assert!(plain == same, "plan {plan} changed the logits");
    }
}

#[test]
fn dropped_and_repeated_layers_match_networks_built_by_hand() {
    let base = llama("smollm2-135m", None);
    let plain = logits(&base.net, &TOKENS);
    // Drop layer 10: the stack is `net.first.first.second` in
    // series![Embedding, Stack<LlamaBlock>, RmsNorm, LmHead].
    let mut by_hand = base.net.clone();
    by_hand.first.first.second.layers.remove(10);
    let planned = logits(&llama("smollm2-135m", Some("0-9,11-29")).net, &TOKENS);
    assert!(planned == logits(&by_hand, &TOKENS));
    assert!(planned != plain, "dropping a layer changed nothing");
    // Layer 5 twice: by hand, a second copy of its (borrowed, not copied) weights.
    let mut by_hand = base.net.clone();
    let five = by_hand.first.first.second.layers[5].clone();
    by_hand.first.first.second.layers.insert(5, five);
    let planned = logits(&llama("smollm2-135m", Some("0-4,5x2,6-29")).net, &TOKENS);
    assert!(planned == logits(&by_hand, &TOKENS));
    // Swap 3 and 4.
    let mut by_hand = base.net.clone();
    by_hand.first.first.second.layers.swap(3, 4);
    let planned = logits(&llama("smollm2-135m", Some("0-2,4,3,5-29")).net, &TOKENS);
    assert!(planned == logits(&by_hand, &TOKENS));
}

#[test]
fn parallel_layers_sum_their_residual_updates() {
    // On stories260K: run layers 1 and 2 from the same input, by the plan and
    // by hand from the per-layer outputs.
    let s = source("stories260k");
    let model = llama::build(&s, &opts(None, 5)).unwrap();
    let plan = Plan::from_steps(
        vec![
            PlanStep::Layer(0),
            PlanStep::Parallel {
                layers: vec![1, 2],
                merge: Merge::SumUpdates,
            },
            PlanStep::Layer(3),
            PlanStep::Layer(4),
        ],
        5,
    )
    .unwrap();
    let planned = llama::build(
        &s,
        &BuildOptions {
            plan: Some(plan),
            ..opts(None, 5)
        },
    )
    .unwrap();
    let tokens = [1, 403, 407, 261];
    let y = logits(&planned.net, &tokens);
    assert!(y.iter().all(|v| v.is_finite()));
    assert!(y != logits(&model.net, &tokens));
    // By hand: h = L0(e); u = L1(h) + L2(h) - h; then L3, L4, norm, head.
    let net = &model.net;
    let (threads, scratch) = (Threads::single(), Scratch::new());
    let ctx = Ctx::new(Simd::detect(), &threads, &scratch);
    let cap = Capacity::new(4, 64);
    let stack = &net.first.first.second;
    let x = Act::from_tokens(&tokens);
    let e = net.first.first.first.apply(&x, &mut (), &ctx).unwrap();
    let run = |i: usize, a: &Act| {
        let l = &stack.layers[i];
        l.apply(a, &mut l.new_state(cap), &ctx).unwrap()
    };
    let h = run(0, &e);
    let (a, b) = (run(1, &h), run(2, &h));
    let mut u = a.clone();
    for ((o, &bv), &hv) in u
        .as_mut_slice()
        .iter_mut()
        .zip(b.as_slice())
        .zip(h.as_slice())
    {
        *o += bv - hv;
    }
    let z = run(4, &run(3, &u));
    let n = net.first.second.apply(&z, &mut (), &ctx).unwrap();
    let out = net.second.apply(&n, &mut (), &ctx).unwrap();
    assert!(
        y == out.into_vec(),
        "parallel plan differs from the hand-built sum"
    );
}

#[test]
fn gemma3_takes_plans_too() {
    let s = source("gemma3-270m");
    let build =
        |plan: Option<&str>| -> Model<Gemma3Net> { gemma3::build(&s, &opts(plan, 18)).unwrap() };
    let tokens = [2, 818, 5279, 529, 7001, 563];
    let plain = logits(&build(None).net, &tokens);
    assert!(plain == logits(&build(Some("0-17")).net, &tokens));
    let dropped = build(Some("0-4,6-17"));
    assert_eq!(dropped.net.first.first.second.applications(), 17);
    assert!(plain != logits(&dropped.net, &tokens));
}

#[test]
fn a_plan_beyond_the_model_is_a_clear_error() {
    let s = source("stories260k");
    let plan = Plan::parse("0-7", 8).unwrap();
    let err = llama::build(
        &s,
        &BuildOptions {
            plan: Some(plan),
            ..opts(None, 5)
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("out of range"), "{err}");
}
