//! `convert` exports SmolLM2 and Gemma 3 as HF safetensors directories that loads through
//! the safetensors path of the same Model<LlamaNet> type and computes the same float
//! math as the GGUF (it holds the dequantised weights): mean KL under 1e-6 and
//! every logit within 1e-2, on every golden case, which also still agrees
//! with the golden `exact` answers. Its tokenizer.json gives the golden ids.
//! Gemma 3 (norm weights exported as HF's `w`, not GGUF's `1 + w`) loads
//! through the HF path of Model<Gemma3Net> and gives the GGUF's logits on the
//! `capital` golden prompt, with the same greedy choice at every position.

mod support;

use patchbay_combinators::{Capacity, Ctx, Layer};
use patchbay_models::catalog;
use patchbay_models::families::gemma3;
use patchbay_models::families::llama;
use patchbay_models::families::{BuildOptions, Model};
use patchbay_models::formats::source::{Format, ModelSource};
use patchbay_models::runners::convert::{to_safetensors, ExportDType};
use patchbay_models::tokenizer::Tokenizer;
use patchbay_primitives::quant::DotMode;
use patchbay_primitives::{Act, Simd, Threads};
use support::golden::{self, GoldenCase};

fn logits<N: Layer>(model: &Model<N>, tokens: &[u32]) -> Vec<Vec<f32>> {
    let threads = Threads::new(2);
    let scratch = patchbay_combinators::Scratch::new();
    let ctx = Ctx::new(Simd::detect(), &threads, &scratch);
    let mut st = model.net.new_state(Capacity::new(tokens.len(), 512));
    let x = Act::from_vec(tokens.len(), 1, tokens.iter().map(|&t| t as f32).collect()).unwrap();
    let y = model.net.apply(&x, &mut st, &ctx).unwrap();
    (0..tokens.len()).map(|i| y.row(i).to_vec()).collect()
}

fn log_softmax(x: &[f32]) -> Vec<f64> {
    let m = x.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
    let lse = m + x.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln();
    x.iter().map(|&v| v as f64 - lse).collect()
}

#[test]
fn converted_smollm2_matches_the_gguf_and_the_goldens() {
    let gguf = catalog::resolve_model("smollm2-135m").unwrap_or_else(|e| panic!("{e}"));
    let dir = std::env::temp_dir().join(format!("patchbay-convert-{}", std::process::id()));
    let files = to_safetensors(&gguf, &dir, ExportDType::F32).unwrap();
    assert_eq!(files.len(), 4);
    let opts = BuildOptions {
        dot_mode: DotMode::Exact,
        max_context: 512,
        plan: None,
    };
    let original = llama::build(&ModelSource::open(&gguf).unwrap(), &opts).unwrap();
    let source = patchbay_models::families::open(&dir).unwrap();
    assert_eq!(source.format(), Format::Safetensors);
    let converted = llama::build(&source, &opts).unwrap();
    let tokenizer = Tokenizer::load(&dir).unwrap();
    let cases = support::golden_dir("smollm2-135m");
    let mut n = 0;
    for entry in std::fs::read_dir(&cases).unwrap() {
        let path = entry.unwrap().path();
        let case = GoldenCase::load(&path).unwrap();
        let ids = tokenizer.encode(&case.prompt, case.add_special);
        assert_eq!(ids, case.tokens, "{}: tokenizer.json ids", path.display());
        let (a, b) = (
            logits(&original, &case.tokens),
            logits(&converted, &case.tokens),
        );
        let mut kl = 0.0;
        for (ra, rb) in a.iter().zip(&b) {
            let worst = ra
                .iter()
                .zip(rb)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0f32, f32::max);
            assert!(worst < 1e-2, "{}: logit differs by {worst}", path.display());
            let (pa, pb) = (log_softmax(ra), log_softmax(rb));
            kl += pa
                .iter()
                .zip(&pb)
                .map(|(p, q)| p.exp() * (p - q))
                .sum::<f64>();
        }
        let mean_kl = kl / a.len() as f64;
        assert!(mean_kl < 1e-6, "{}: mean KL {mean_kl}", path.display());
        // Rules 1-4 against the exact answers (greedy is covered by the GGUF tests).
        let report = golden::check(&case, &ids, &b, &case.exact.greedy);
        assert!(report.agrees(), "{}: {:?}", path.display(), report.failures);
        n += 1;
    }
    assert_eq!(n, 6);
    let _ = std::fs::remove_dir_all(&dir);
}

fn argmax(x: &[f32]) -> usize {
    x.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
            if v > bv {
                (i, v)
            } else {
                (bi, bv)
            }
        })
        .0
}

#[test]
fn converted_gemma3_matches_the_gguf() {
    let gguf = catalog::resolve_model("gemma3-270m").unwrap_or_else(|e| panic!("{e}"));
    let dir = std::env::temp_dir().join(format!("patchbay-convert-gemma3-{}", std::process::id()));
    let files = to_safetensors(&gguf, &dir, ExportDType::F32).unwrap();
    assert_eq!(files.len(), 4);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["model_type"], "gemma3_text");
    assert_eq!(config["architectures"][0], "Gemma3ForCausalLM");
    assert_eq!(config["tie_word_embeddings"], true);
    let opts = BuildOptions {
        dot_mode: DotMode::Exact,
        max_context: 512,
        plan: None,
    };
    let gguf_source = ModelSource::open(&gguf).unwrap();
    let source = patchbay_models::families::open(&dir).unwrap();
    assert_eq!(source.format(), Format::Safetensors);
    // The HF config reads back as the GGUF's hyper-parameters.
    let (a, b) = (
        gemma3::Gemma3Config::from_source(&gguf_source).unwrap(),
        gemma3::Gemma3Config::from_source(&source).unwrap(),
    );
    assert_eq!(a.norm_offset, 0.0);
    assert_eq!(b.norm_offset, 1.0);
    assert_eq!(
        gemma3::Gemma3Config {
            norm_offset: 0.0,
            ..b.clone()
        },
        a
    );
    // Norms are stored as HF's `w` (GGUF's `1 + w` minus 1).
    let norm = |s: &ModelSource| {
        let t = s.try_tensor("blk.0.attn_norm.weight").unwrap().unwrap();
        let mut v = vec![0.0f32; t.numel()];
        patchbay_primitives::quant::dequantize_row(t.dtype(), t.bytes(), &mut v).unwrap();
        v
    };
    for (g, h) in norm(&gguf_source).iter().zip(norm(&source)) {
        assert!((g - 1.0 - h).abs() < 1e-6, "norm {g} vs {h}");
    }
    let original = gemma3::build(&gguf_source, &opts).unwrap();
    let converted = gemma3::build(&source, &opts).unwrap();
    // The exported tokenizer.json gives the golden ids of every case.
    let tokenizer = Tokenizer::load(&dir).unwrap();
    let cases = support::golden_dir("gemma3-270m");
    for entry in std::fs::read_dir(&cases).unwrap() {
        let path = entry.unwrap().path();
        let case = GoldenCase::load(&path).unwrap();
        let ids = tokenizer.encode(&case.prompt, case.add_special);
        assert_eq!(ids, case.tokens, "{}: tokenizer.json ids", path.display());
    }
    let case = GoldenCase::load(&cases.join("capital.json")).unwrap();
    let (a, b) = (
        logits(&original, &case.tokens),
        logits(&converted, &case.tokens),
    );
    assert_eq!(a.len(), case.tokens.len());
    for (pos, (ra, rb)) in a.iter().zip(&b).enumerate() {
        let worst = ra
            .iter()
            .zip(rb)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(worst < 1e-2, "position {pos}: logit differs by {worst}");
        assert_eq!(argmax(ra), argmax(rb), "position {pos}: greedy choice");
    }
    let report = golden::check(&case, &case.tokens, &b, &case.exact.greedy);
    assert!(report.agrees(), "{:?}", report.failures);
    let _ = std::fs::remove_dir_all(&dir);
}
