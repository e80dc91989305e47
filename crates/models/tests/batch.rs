//! Several sequences in one forward pass: a batch of prompts of different
//! lengths, packed into the same forward passes with a KV-cache slot each,
//! gives each prompt the logits (bit for bit, on the default exact path) and
//! the continuation it gets alone.

use patchbay_combinators::{Layer, Step};
use patchbay_models::catalog;
use patchbay_models::runners::session::{
    with_session, Completion, Session, SessionJob, SessionOptions, StopReason,
};
use patchbay_primitives::Act;

const PROMPTS: [&str; 4] = [
    "Once upon a time, there was a little girl named Lily. She loved to play",
    "The",
    "Tom had a big red ball.",
    "One day, a cat and a dog went to the park to see",
];

fn options(batch: usize) -> SessionOptions {
    let mut opts = SessionOptions {
        max_context: 128,
        batch,
        threads: 2,
        ..SessionOptions::default()
    };
    opts.sampler.temperature = 0.0;
    opts
}

/// Largest |a - b| over two equally shaped activations.
fn max_diff(a: &Act, b: &Act) -> f32 {
    assert_eq!((a.rows(), a.cols()), (b.rows(), b.cols()));
    a.as_slice()
        .iter()
        .zip(b.as_slice())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

struct Compare {
    batch_rows: usize,
}

impl SessionJob for Compare {
    type Output = (f32, Vec<Completion>, Vec<Vec<u32>>);
    fn run<N: Layer>(self, mut s: Session<N>) -> Self::Output {
        let seqs: Vec<Vec<u32>> = PROMPTS
            .iter()
            .map(|p| s.tokenizer.encode(p, true))
            .collect();
        let lens: Vec<usize> = seqs.iter().map(Vec::len).collect();
        assert!(
            lens.iter().min() < lens.iter().max(),
            "prompts of different lengths: {lens:?}"
        );
        let together = s.logits_batch(&seqs).expect("batched logits");
        let mut worst = 0.0f32;
        for (seq, batched) in seqs.iter().zip(&together) {
            s.reset();
            let alone = s.logits(seq).expect("logits alone").clone();
            worst = worst.max(max_diff(batched, &alone));
        }
        let completions = s
            .generate_batch(&seqs, 12, |_, _| Step::Continue)
            .expect("batched generation");
        let mut alone = Vec::new();
        for seq in &seqs {
            s.reset();
            let mut out = Vec::new();
            s.generate(seq, 12, |t| {
                out.push(t);
                Step::Continue
            })
            .expect("generation alone");
            alone.push(out);
        }
        eprintln!("batch rows {}: worst |Δlogit| {worst:e}", self.batch_rows);
        (worst, completions, alone)
    }
}

fn check(model: &str) {
    let path = catalog::resolve_model(model).unwrap_or_else(|e| panic!("{e}"));
    // 512 rows: all prompts in one forward pass; 7 rows: sequences split
    // across passes, and passes mixing the end of one with the start of another.
    for batch_rows in [512, 7] {
        let (worst, together, alone) =
            with_session(&path, &options(batch_rows), Compare { batch_rows }).unwrap();
        // The exact path's kernels are batch-invariant: a row's logits do
        // not depend on what else is in its forward pass, to the bit.
        assert_eq!(
            worst, 0.0,
            "{model}: batched logits differ from each sequence alone by {worst:e}"
        );
        for (i, (c, a)) in together.iter().zip(&alone).enumerate() {
            assert_eq!(
                &c.tokens, a,
                "{model}: prompt {i} continues differently in a batch"
            );
            let expected = if a.len() == 12 {
                StopReason::MaxTokens
            } else {
                StopReason::EndOfSequence
            };
            assert_eq!(c.stop, expected, "{model}: prompt {i} stop reason");
        }
    }
}

#[test]
fn stories260k_batch_matches_each_sequence_alone() {
    check("stories260k");
}

#[test]
fn smollm2_batch_matches_each_sequence_alone() {
    check("smollm2-135m");
}

#[test]
fn a_batch_rejects_an_empty_prompt_and_an_overlong_one() {
    struct Bad;
    impl SessionJob for Bad {
        type Output = (String, String);
        fn run<N: Layer>(self, mut s: Session<N>) -> Self::Output {
            let empty = s
                .generate_batch(&[vec![1, 2], vec![]], 4, |_, _| Step::Continue)
                .unwrap_err()
                .to_string();
            let long = s.logits_batch(&[vec![1; 1000]]).unwrap_err().to_string();
            (empty, long)
        }
    }
    let path = catalog::resolve_model("stories260k").unwrap_or_else(|e| panic!("{e}"));
    let (empty, long) = with_session(&path, &options(64), Bad).unwrap();
    assert!(empty.contains("empty"), "{empty}");
    assert!(long.contains("128"), "{long}");
}
