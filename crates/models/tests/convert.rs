//! `convert` exports stories260K (llama2.c) as an HF Llama directory that
//! patchbay runs with the llama2.c model's logits (within 1e-4) and whose
//! tokenizer.json gives run.c's ids. It never overwrites a non-empty directory
//! without `force`, replaces files by renaming (an open old file stays whole),
//! and leaves no temporary file when it fails.
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
use patchbay_models::runners::convert::{
    convert, to_safetensors, ConvertError, ConvertOptions, ExportDType,
};
use patchbay_models::tokenizer::Tokenizer;
use patchbay_primitives::quant::exact_rounds_activations;
use patchbay_primitives::{Act, DType, Simd, Threads};
use support::golden::{self, GoldenCase};

/// The best level (up to `Simd::detect`'s) whose exact products keep f32
/// activations. There the GGUF's quantised weights meet the activations in
/// the arithmetic of the converted f32 weights, so the comparison measures
/// the conversion alone. Where quantised weights round activations to
/// int16 (SmolLM2's Q4_1 at the AVX2 level, Q8_0 and Q4_1 at AVX-512), the
/// golden tests check that rounding.
fn f32_level() -> Simd {
    let cap = Simd::detect().level();
    Simd::available()
        .into_iter()
        .rfind(|s| {
            s.level() <= cap
                && [DType::Q8_0, DType::Q4_1]
                    .iter()
                    .all(|d| !exact_rounds_activations(*s, *d))
        })
        .unwrap_or_else(Simd::scalar)
}

fn logits<N: Layer>(model: &Model<N>, tokens: &[u32]) -> Vec<Vec<f32>> {
    let threads = Threads::new(2);
    let scratch = patchbay_combinators::Scratch::new();
    let ctx = Ctx::new(f32_level(), &threads, &scratch);
    let mut st = model.net.new_state(Capacity::new(tokens.len(), 512));
    let x = Act::from_tokens(tokens);
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

/// A fresh, absent temporary path for one test.
fn temp_out(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("patchbay-convert-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// The names in `dir`, sorted.
fn listing(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

const EXPORTED: [&str; 4] = [
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
];

#[test]
fn converted_stories260k_matches_llama2c() {
    let bin = catalog::resolve_model("stories260k").unwrap_or_else(|e| panic!("{e}"));
    let dir = temp_out("stories");
    let files = to_safetensors(&bin, &dir, ExportDType::F32).unwrap();
    assert_eq!(files.len(), 4);
    assert_eq!(listing(&dir), EXPORTED);

    let original_source = ModelSource::open(&bin).unwrap();
    assert_eq!(original_source.format(), Format::Llama2c);
    let l2c = original_source.llama2c().unwrap().config().to_owned();
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["architectures"][0], "LlamaForCausalLM");
    assert_eq!(config["model_type"], "llama");
    assert_eq!(config["rope_theta"].as_f64(), Some(10000.0));
    assert_eq!(config["rms_norm_eps"].as_f64(), Some(1e-5));
    assert_eq!(config["tie_word_embeddings"], l2c.shared_classifier);
    assert_eq!(config["bos_token_id"], 1);
    assert_eq!(config["eos_token_id"], 2);
    assert_eq!(config["hidden_size"], l2c.dim);
    assert_eq!(config["intermediate_size"], l2c.hidden_dim);
    assert_eq!(config["num_hidden_layers"], l2c.n_layers);
    assert_eq!(config["num_attention_heads"], l2c.n_heads);
    assert_eq!(config["num_key_value_heads"], l2c.n_kv_heads);
    assert_eq!(config["vocab_size"], l2c.vocab_size);
    assert_eq!(config["max_position_embeddings"], l2c.seq_len);
    assert_eq!(config["torch_dtype"], "float32");
    // The exported tokenizer knows the special tokens, so generation from the
    // converted directory stops at EOS as it does from the original.
    let tok = Tokenizer::load(&dir).unwrap();
    assert_eq!((tok.bos(), tok.eos()), (Some(1), Some(2)));
    assert!(tok.is_eog(2) && !tok.is_eog(3));

    let source = patchbay_models::families::open(&dir).unwrap();
    assert_eq!(source.format(), Format::Safetensors);
    assert_eq!(
        llama::rope_layout(&source),
        patchbay_primitives::rope::RopeLayout::HalfSplit
    );
    // Q rows are in HF's half-split order: HF row h*hd + t*hd/2 + j is
    // llama2.c row h*hd + 2j + t.
    let rows = |s: &ModelSource, name: &str| {
        let t = s.tensor(name).unwrap();
        let mut v = vec![0.0f32; t.numel()];
        patchbay_primitives::quant::dequantize_row(t.dtype(), t.bytes(), &mut v).unwrap();
        v
    };
    let hd = l2c.dim / l2c.n_heads;
    for name in ["blk.0.attn_q.weight", "blk.0.attn_k.weight"] {
        let (a, b) = (rows(&original_source, name), rows(&source, name));
        assert_eq!(a.len(), b.len());
        let d = l2c.dim;
        for h in 0..a.len() / d / hd {
            for j in 0..hd / 2 {
                for t in 0..2 {
                    let (src, dst) = (h * hd + 2 * j + t, h * hd + t * hd / 2 + j);
                    assert_eq!(
                        a[src * d..(src + 1) * d],
                        b[dst * d..(dst + 1) * d],
                        "{name}"
                    );
                }
            }
        }
    }

    let opts = BuildOptions {
        max_context: 512,
        plan: None,
    };
    let original = llama::build(&original_source, &opts).unwrap();
    let converted = llama::build(&source, &opts).unwrap();
    let original_tok = Tokenizer::load(&bin).unwrap();
    assert!(matches!(original_tok, Tokenizer::Llama2c(_)));
    let tokenizer = Tokenizer::load(&dir).unwrap();
    assert!(matches!(tokenizer, Tokenizer::HfJson(_)));
    let cases = support::golden_dir("stories260k");
    let mut n = 0;
    let golden = std::fs::read_dir(&cases).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (set PATCHBAY_SHARED to the shared reference data)",
            cases.display()
        )
    });
    for entry in golden {
        let path = entry.unwrap().path();
        let case = GoldenCase::load(&path).unwrap();
        let ids = tokenizer.encode(&case.prompt, case.add_special);
        assert_eq!(ids, case.tokens, "{}: tokenizer.json ids", path.display());
        assert_eq!(
            ids,
            original_tok.encode(&case.prompt, case.add_special),
            "{}: original tokenizer ids",
            path.display()
        );
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
            assert!(
                worst < 1e-4,
                "{} position {pos}: logit differs by {worst}",
                path.display()
            );
        }
        n += 1;
    }
    assert_eq!(n, 3, "golden cases in {}", cases.display());
    // Beyond the goldens: text with no single-token spelling (byte fallback),
    // newlines, digits, punctuation and repeated spaces encode alike.
    for text in [
        "Lily and Ben were best friends. They played every day!",
        "Tim said, \"I can't find my 3 red balls...\"\n\nMom smiled.",
        "  two  spaces and a tab\tand émojis 🐶 日本",
        "x",
    ] {
        for special in [true, false] {
            assert_eq!(
                tokenizer.encode(text, special),
                original_tok.encode(text, special),
                "{text:?} (add_special {special})"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn convert_never_overwrites_without_force_and_replaces_by_rename() {
    let bin = catalog::resolve_model("stories260k").unwrap_or_else(|e| panic!("{e}"));
    let dir = temp_out("force");
    to_safetensors(&bin, &dir, ExportDType::F32).unwrap();
    let st = dir.join("model.safetensors");
    let first = std::fs::read(&st).unwrap();
    // Mark the first result so that it is seen to survive.
    let cfg_path = dir.join("config.json");
    let marked = std::fs::read_to_string(&cfg_path).unwrap() + "\n";
    std::fs::write(&cfg_path, &marked).unwrap();

    let err = to_safetensors(&bin, &dir, ExportDType::F16).unwrap_err();
    assert!(
        matches!(&err, ConvertError::OutputNotEmpty { dir: d } if d == &dir),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("--force") && msg.contains(&*dir.to_string_lossy()),
        "{msg}"
    );
    assert_eq!(listing(&dir), EXPORTED);
    assert_eq!(std::fs::read(&st).unwrap(), first);
    assert_eq!(std::fs::read_to_string(&cfg_path).unwrap(), marked);

    // With force the files are replaced by new ones (a reader of the old
    // file still has it, whole).
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    let mut old = std::fs::File::open(&st).unwrap();
    let old_inode = std::fs::metadata(&st).unwrap().ino();
    let opts = ConvertOptions {
        dtype: ExportDType::F16,
        force: true,
    };
    convert(&bin, &dir, &opts).unwrap();
    assert_eq!(listing(&dir), EXPORTED);
    assert_ne!(std::fs::metadata(&st).unwrap().ino(), old_inode);
    let mut old_bytes = Vec::new();
    old.read_to_end(&mut old_bytes).unwrap();
    assert_eq!(old_bytes, first);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    assert_eq!(config["torch_dtype"], "float16");
    let source = patchbay_models::families::open(&dir).unwrap();
    assert_eq!(
        source.tensor("token_embd.weight").unwrap().dtype(),
        patchbay_primitives::DType::F16
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_failing_convert_leaves_no_files() {
    let bin = catalog::resolve_model("stories260k").unwrap_or_else(|e| panic!("{e}"));
    // An encoder: refused before anything is written; the directory is not created.
    let bert = catalog::resolve_model("minilm-l6-v2").unwrap_or_else(|e| panic!("{e}"));
    let dir = temp_out("fail");
    let err = to_safetensors(&bert, &dir, ExportDType::F32).unwrap_err();
    assert!(err.to_string().contains("encoder"), "{err}");
    assert!(!dir.exists(), "{} was created", dir.display());

    // An output path below a regular file cannot be created.
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let err = to_safetensors(&bin, &file.join("out"), ExportDType::F32).unwrap_err();
    assert!(matches!(err, ConvertError::Model(_)), "{err}");
    assert_eq!(listing(&dir), ["a-file"]);

    // A final name taken by a directory fails after the temporary files are
    // written: they are removed and nothing is renamed into place.
    let out = dir.join("out");
    std::fs::create_dir_all(out.join("config.json")).unwrap();
    let opts = ConvertOptions {
        dtype: ExportDType::F32,
        force: true,
    };
    let err = convert(&bin, &out, &opts).unwrap_err();
    assert!(err.to_string().contains("config.json"), "{err}");
    assert_eq!(listing(&out), ["config.json"]);
    assert!(listing(&out.join("config.json")).is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}
