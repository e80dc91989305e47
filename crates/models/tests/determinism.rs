//! Determinism (DESIGN.md principle 5): the same logits, bit for bit, with 1 or
//! 2 threads; and processing a prompt in one batch gives the same bits as
//! processing it token by token.

use patchbay_combinators::{Capacity, Ctx, Layer};
use patchbay_models::catalog;
use patchbay_models::families::llama::{self, LlamaNet};
use patchbay_models::families::{BuildOptions, Model};
use patchbay_models::formats::source::ModelSource;
use patchbay_primitives::{Act, Simd, Threads};

fn load(name: &str) -> Model<LlamaNet> {
    let path = catalog::resolve_model(name).unwrap_or_else(|e| panic!("{e}"));
    let source = ModelSource::open(path).unwrap();
    llama::build(
        &source,
        &BuildOptions {
            max_context: 64,
            plan: None,
        },
    )
    .unwrap()
}

const PROMPT: [u32; 12] = [
    504, 3575, 282, 4649, 314, 1345, 28, 260, 1500, 2088, 17, 198,
];

/// Logits of every prompt position: in one batch, or one token at a time.
fn logits(model: &Model<LlamaNet>, threads: usize, batch: bool) -> Vec<f32> {
    let threads = Threads::new(threads);
    let scratch = patchbay_combinators::Scratch::new();
    let ctx = Ctx::new(Simd::detect(), &threads, &scratch);
    let mut st = model.net.new_state(Capacity::new(PROMPT.len(), 64));
    if batch {
        let x = Act::from_tokens(&PROMPT);
        return model.net.apply(&x, &mut st, &ctx).unwrap().into_vec();
    }
    let mut all = Vec::new();
    let mut y = Act::default();
    for (pos, &id) in PROMPT.iter().enumerate() {
        let x = Act::from_tokens(&[id]);
        model
            .net
            .forward(&x, &mut y, &mut st, &ctx.at(pos))
            .unwrap();
        all.extend_from_slice(y.as_slice());
    }
    all
}

#[test]
fn logits_are_bit_identical_for_one_and_two_threads() {
    let model = load("smollm2-135m");
    for batch in [true, false] {
        let (a, b) = (logits(&model, 1, batch), logits(&model, 2, batch));
        assert!(
            a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
            "batch={batch}: 1 and 2 threads differ"
        );
    }
}

#[test]
fn batch_and_token_by_token_are_bit_identical() {
    // Every output element is reduced in one fixed order, whether its row is
    // computed in a matrix product or alone (batch-invariant kernels).
    let model = load("smollm2-135m");
    let (a, b) = (logits(&model, 2, true), logits(&model, 2, false));
    let differ = a
        .iter()
        .zip(&b)
        .filter(|(x, y)| x.to_bits() != y.to_bits())
        .count();
    assert_eq!(differ, 0, "{differ} of {} logits differ", a.len());
}
