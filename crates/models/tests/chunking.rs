//! Batch invariance end to end (issue: "Logits are bit-identical whether a
//! text is processed in one batch, token by token, or in chunks of any size,
//! and for any thread count"): random chunkings of a prompt, at every SIMD
//! level this CPU has, with 1 and 2 threads, give the one-batch logits bit for
//! bit on the default (exact) path, for stories260K and SmolLM2, with the
//! default f32 KV cache and with keys and values cached in f16.

use patchbay_combinators::{Capacity, Ctx, KvType, Layer, Scratch};
use patchbay_models::catalog;
use patchbay_models::families::llama::{self, LlamaNet};
use patchbay_models::families::{BuildOptions, Model};
use patchbay_models::formats::source::ModelSource;
use patchbay_primitives::{Act, Simd, Threads};
use proptest::prelude::*;

fn load(name: &str) -> Model<LlamaNet> {
    let path = catalog::resolve_model(name).unwrap_or_else(|e| panic!("{e}"));
    let source = ModelSource::open(path).unwrap();
    let opts = BuildOptions {
        max_context: 64,
        ..BuildOptions::default()
    };
    llama::build(&source, &opts).unwrap()
}

/// How a prompt is fed: SIMD level, threads, KV cache type (keys and values).
#[derive(Clone, Copy)]
struct Feed {
    simd: Simd,
    threads: usize,
    kv: KvType,
}

/// Logits of every position of `prompt`, fed in chunks of the given sizes.
fn logits(model: &Model<LlamaNet>, feed: Feed, prompt: &[u32], chunks: &[usize]) -> Vec<u32> {
    let Feed { simd, threads, kv } = feed;
    let threads = Threads::new(threads);
    let scratch = Scratch::new();
    let mut st = model
        .net
        .new_state(Capacity::new(prompt.len(), 64).with_kv(kv, kv));
    let (mut out, mut y) = (Vec::new(), Act::default());
    let mut pos = 0;
    for &n in chunks {
        let x = Act::from_tokens(&prompt[pos..pos + n]);
        let ctx = Ctx::new(simd, &threads, &scratch).at(pos);
        model.net.forward(&x, &mut y, &mut st, &ctx).unwrap();
        out.extend(y.as_slice().iter().map(|v| v.to_bits()));
        pos += n;
    }
    assert_eq!(pos, prompt.len());
    out
}

/// A random split of `len` rows into chunks (cut after each row with
/// probability 1/3).
fn chunking(len: usize) -> impl Strategy<Value = Vec<usize>> {
    proptest::collection::vec(proptest::bool::weighted(1.0 / 3.0), len - 1).prop_map(move |cuts| {
        let mut chunks = vec![1];
        for cut in cuts {
            if cut {
                chunks.push(1);
            } else {
                *chunks.last_mut().unwrap() += 1;
            }
        }
        chunks
    })
}

fn check(name: &str, prompt: &[u32], cases: u32, kv: KvType) {
    let model = load(name);
    for simd in Simd::available() {
        let feed = |threads| Feed { simd, threads, kv };
        let whole = logits(&model, feed(1), prompt, &[prompt.len()]);
        let by_token = logits(&model, feed(2), prompt, &vec![1; prompt.len()]);
        assert!(
            whole == by_token,
            "{name} {} {kv} cache: one batch vs token by token differ",
            simd.level()
        );
        // The scalar level is slow on SmolLM2: fewer cases there.
        let cases = if simd.level().name() == "scalar" {
            cases.div_ceil(4)
        } else {
            cases
        };
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
            cases,
            failure_persistence: None,
            ..ProptestConfig::default()
        });
        runner
            .run(
                &(chunking(prompt.len()), 1usize..=2),
                |(chunks, threads)| {
                    let got = logits(&model, feed(threads), prompt, &chunks);
                    prop_assert!(
                        got == whole,
                        "{} {} {kv} cache: chunks {:?} with {} thread(s) differ from one batch",
                        name,
                        simd.level(),
                        chunks,
                        threads
                    );
                    Ok(())
                },
            )
            .unwrap();
    }
}

fn stories_prompt() -> Vec<u32> {
    (0..40).map(|i| (i * 37 + 11) % 512).collect()
}

const SMOLLM2_PROMPT: [u32; 14] = [
    504, 3575, 282, 4649, 314, 1345, 28, 260, 1500, 2088, 17, 198, 9, 44,
];

#[test]
fn stories260k_any_chunking_any_threads_any_simd_is_bit_identical() {
    check("stories260k", &stories_prompt(), 32, KvType::F32);
}

#[test]
fn smollm2_any_chunking_any_threads_any_simd_is_bit_identical() {
    check("smollm2-135m", &SMOLLM2_PROMPT, 6, KvType::F32);
}

#[test]
fn stories260k_with_an_f16_cache_is_bit_identical_too() {
    check("stories260k", &stories_prompt(), 16, KvType::F16);
}

#[test]
fn smollm2_with_an_f16_cache_is_bit_identical_too() {
    check("smollm2-135m", &SMOLLM2_PROMPT, 4, KvType::F16);
}
