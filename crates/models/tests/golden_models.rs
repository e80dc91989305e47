//! Every causal model against `../shared/golden`, by the five rules of its
//! README (measured against the `exact` answers), through the family registry:
//! Llama (stories260K, SmolLM2, Qwen2.5) and Gemma 3.

mod support;

use std::path::PathBuf;

use patchbay_blocks::{Sampler, SamplerConfig};
use patchbay_combinators::{Capacity, Ctx, KvType, Layer, Loop, Scratch, Series, Step};
use patchbay_models::catalog;
use patchbay_models::families::{self, BuildOptions, CausalLmVisitor, Model};
use patchbay_primitives::{Act, Simd, Threads};
use support::golden::{self, GoldenCase};

fn model_path(name: &str) -> PathBuf {
    catalog::resolve_model(name).unwrap_or_else(|e| panic!("{e}"))
}

fn cases(name: &str) -> Vec<(String, GoldenCase)> {
    let dir = support::golden_dir(name);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (set PATCHBAY_SHARED to the shared folder)",
                dir.display()
            )
        })
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no golden cases in {}", dir.display());
    files
        .into_iter()
        .map(|p| {
            let name = p.file_stem().unwrap().to_string_lossy().into_owned();
            (name, GoldenCase::load(&p).unwrap())
        })
        .collect()
}

/// How the prompt goes through the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Feed {
    /// One batch (prefill: matrix products).
    Batch,
    /// One token per call (decode: matrix-vector products).
    TokenByToken,
}

/// Runs every golden case through a built network.
struct RunCases {
    name: String,
    cases: Vec<(String, GoldenCase)>,
    feed: Feed,
    threads: usize,
    /// How the KV cache stores keys, and values.
    kv: (KvType, KvType),
}

impl CausalLmVisitor for RunCases {
    type Output = Vec<(String, golden::GoldenReport)>;
    fn visit<N: Layer>(self, model: Model<N>) -> Self::Output {
        let threads = Threads::new(self.threads);
        let scratch = Scratch::new();
        let ctx = Ctx::new(Simd::detect(), &threads, &scratch);
        let mut out = Vec::new();
        for (case_name, case) in self.cases {
            let toks = &case.tokens;
            let cap = Capacity::new(toks.len().max(1), 512).with_kv(self.kv.0, self.kv.1);
            let mut st = model.net.new_state(cap);
            let x = Act::from_tokens(toks);
            let rows: Vec<Vec<f32>> = match self.feed {
                Feed::Batch => {
                    let logits = model.net.apply(&x, &mut st, &ctx).unwrap();
                    (0..toks.len()).map(|i| logits.row(i).to_vec()).collect()
                }
                Feed::TokenByToken => {
                    let mut y = Act::default();
                    (0..toks.len())
                        .map(|i| {
                            let xi = Act::from_tokens(&[toks[i]]);
                            model.net.forward(&xi, &mut y, &mut st, &ctx.at(i)).unwrap();
                            y.as_slice().to_vec()
                        })
                        .collect()
                }
            };
            // Greedy continuation through the autoregressive Loop.
            let n = case.exact.greedy.len();
            let sampler = Sampler::new(model.info.vocab, SamplerConfig::greedy()).unwrap();
            let decoder = Loop::autoregressive(Series::new(&model.net, sampler), n);
            let mut dst = decoder.new_state(cap);
            let mut greedy = Vec::new();
            decoder
                .run(&x, &mut dst, &ctx, n, |_, row| {
                    greedy.push(row[0].to_bits()); // a token lane (Act::token)
                    Step::Continue
                })
                .unwrap();
            let report = golden::check(&case, toks, &rows, &greedy);
            let ref_kl = case
                .llamacpp_vs_exact
                .as_ref()
                .map_or(f64::NAN, |d| d.mean_kl);
            let ref_lp = case
                .llamacpp_vs_exact
                .as_ref()
                .map_or(f64::NAN, |d| d.max_abs_logprob_p1);
            eprintln!(
                "{}/{case_name} ({:?}, k {} v {} cache): mean KL {:.3e} (bound {:.1e}; llama.cpp {ref_kl:.3e}), worst |dlogprob| {:.4} (bound {:.3}; llama.cpp {ref_lp:.4}), greedy checked {} steps",
                self.name, self.feed, self.kv.0, self.kv.1, report.mean_kl, report.kl_bound, report.max_abs_logprob, report.logprob_bound, report.greedy_checked
            );
            out.push((case_name, report));
        }
        out
    }
}

fn run_model(name: &str, feed: Feed, kv: (KvType, KvType)) -> Vec<(String, golden::GoldenReport)> {
    let source = families::open(model_path(name)).unwrap();
    let opts = BuildOptions {
        max_context: 512,
        plan: None,
    };
    let job = RunCases {
        name: name.to_string(),
        cases: cases(name),
        feed,
        threads: 2,
        kv,
    };
    families::with_causal_lm(&source, &opts, job).unwrap()
}

fn assert_agrees(name: &str, feed: Feed) {
    assert_agrees_with(name, feed, (KvType::F32, KvType::F32));
}

fn assert_agrees_with(name: &str, feed: Feed, kv: (KvType, KvType)) {
    let reports = run_model(name, feed, kv);
    let failures: Vec<String> = reports
        .iter()
        .flat_map(|(c, r)| {
            r.failures
                .iter()
                .map(move |f| format!("{name}/{c} ({kv:?} cache): {f}"))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "golden disagreements:\n{}",
        failures.join("\n")
    );
}

#[test]
fn stories260k_agrees_with_golden() {
    assert_agrees("stories260k", Feed::Batch);
}

#[test]
fn smollm2_agrees_with_golden_exact() {
    assert_agrees("smollm2-135m", Feed::Batch);
}

#[test]
fn smollm2_agrees_with_golden_exact_token_by_token() {
    assert_agrees("smollm2-135m", Feed::TokenByToken);
}

#[test]
fn qwen25_agrees_with_golden_exact() {
    assert_agrees("qwen2.5-0.5b", Feed::Batch);
}

#[test]
fn qwen25_agrees_with_golden_exact_token_by_token() {
    assert_agrees("qwen2.5-0.5b", Feed::TokenByToken);
}

#[test]
fn gemma3_agrees_with_golden_exact() {
    assert_agrees("gemma3-270m", Feed::Batch);
}

#[test]
fn gemma3_agrees_with_golden_exact_token_by_token() {
    assert_agrees("gemma3-270m", Feed::TokenByToken);
}

// Values cached in f16 (an option, as llama.cpp's default cache) barely move
// the logits: every rule holds. Keys in f16 move the scores more: every rule
// holds on SmolLM2 and Gemma 3, but on Qwen2.5 (large keys) the `code` case's
// mean KL is 1.2e-4, over the 1e-4 floor, and on stories260K's `dog` 9.9e-5
// is at it (README, "KV cache"). Batch invariance with both in f16 is
// tests/chunking.rs's.

const F16_VALUES: (KvType, KvType) = (KvType::F32, KvType::F16);

#[test]
fn stories260k_agrees_with_golden_with_f16_values() {
    assert_agrees_with("stories260k", Feed::Batch, F16_VALUES);
}

#[test]
fn smollm2_agrees_with_golden_exact_with_f16_values() {
    assert_agrees_with("smollm2-135m", Feed::Batch, F16_VALUES);
}

#[test]
fn qwen25_agrees_with_golden_exact_with_f16_values() {
    assert_agrees_with("qwen2.5-0.5b", Feed::Batch, F16_VALUES);
}

#[test]
fn gemma3_agrees_with_golden_exact_with_f16_values() {
    assert_agrees_with("gemma3-270m", Feed::Batch, F16_VALUES);
}

const F16_BOTH: (KvType, KvType) = (KvType::F16, KvType::F16);

#[test]
fn smollm2_agrees_with_golden_exact_with_f16_keys_and_values() {
    assert_agrees_with("smollm2-135m", Feed::Batch, F16_BOTH);
}

#[test]
fn gemma3_agrees_with_golden_exact_with_f16_keys_and_values() {
    assert_agrees_with("gemma3-270m", Feed::Batch, F16_BOTH);
}
