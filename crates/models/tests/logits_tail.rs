//! `Session::logits_tail` and `Session::each_logits_tail` (what perplexity
//! scores with, a few rows at a time): the logits of the last `keep`
//! positions only, with the bits those positions have in
//! `Session::logits`, whatever the batch size (one batch, or several with the
//! tail starting inside one of them) and for a tail longer than the text.

use patchbay_combinators::Layer;
use patchbay_models::catalog;
use patchbay_models::runners::session::{self, Session, SessionJob, SessionOptions};

struct Compare {
    prompt: &'static str,
}

impl SessionJob for Compare {
    type Output = ();
    fn run<N: Layer>(self, mut session: Session<N>) {
        let tokens = session.tokenizer.encode(self.prompt, true);
        assert!(tokens.len() > 20, "a prompt of {} tokens", tokens.len());
        let vocab = session.info.vocab;
        let all: Vec<u32> = session
            .logits(&tokens)
            .unwrap()
            .as_slice()
            .iter()
            .map(|v| v.to_bits())
            .collect();
        assert_eq!(all.len(), tokens.len() * vocab);
        for keep in [
            0,
            1,
            6,
            13,
            tokens.len() - 1,
            tokens.len(),
            tokens.len() + 5,
        ] {
            session.reset();
            let tail = session.logits_tail(&tokens, keep).unwrap();
            let rows = keep.min(tokens.len());
            assert_eq!((tail.rows(), tail.cols()), (rows, vocab), "keep {keep}");
            let want = &all[(tokens.len() - rows) * vocab..];
            let same = tail
                .as_slice()
                .iter()
                .zip(want)
                .all(|(a, b)| a.to_bits() == *b);
            assert!(
                same,
                "keep {keep}: the tail's logits differ from those of every position"
            );
            // The same rows handed out a few at a time, in order, whole.
            for per_call in [1, 5, 64] {
                session.reset();
                let mut got: Vec<u32> = Vec::new();
                session
                    .each_logits_tail(&tokens, keep, per_call, |i, part| {
                        assert_eq!(i * vocab, got.len(), "keep {keep}: rows out of order");
                        assert!(part.len() % vocab == 0 && part.len() <= per_call * vocab);
                        got.extend(part.iter().map(|v| v.to_bits()));
                    })
                    .unwrap();
                assert!(
                    got == want,
                    "keep {keep}, {per_call} rows per call: the logits differ from those of every position"
                );
            }
        }
    }
}

fn check(model: &str, batch: usize) {
    let path = catalog::resolve_model(model).unwrap_or_else(|e| panic!("{e}"));
    let opts = SessionOptions {
        threads: 2,
        max_context: 128,
        batch,
        ..SessionOptions::default()
    };
    let job = Compare {
        prompt: "The quick brown fox jumps over the lazy dog, and then it runs far away \
                 into the forest where nobody can find it again.",
    };
    session::with_session(&path, &opts, job).unwrap_or_else(|e| panic!("{model}: {e}"));
}

#[test]
fn smollm2_tail_logits_match_all_logits_in_one_batch() {
    check("smollm2-135m", 512);
}

#[test]
fn smollm2_tail_logits_match_all_logits_in_batches_of_seven() {
    check("smollm2-135m", 7);
}

#[test]
fn stories260k_tail_logits_match_all_logits_in_batches_of_five() {
    check("stories260k", 5);
}
