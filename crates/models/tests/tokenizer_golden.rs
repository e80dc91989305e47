//! Exactness against the golden token ids (llama.cpp for the GGUF models,
//! run.c for stories260K, HF `tokenizers` for MiniLM).

mod support;

use std::path::PathBuf;

use patchbay_models::catalog;
use patchbay_models::tokenizer::Tokenizer;

fn model_path(name: &str) -> PathBuf {
    let m = catalog::known(name).unwrap_or_else(|| panic!("unknown model {name}"));
    let p = catalog::models_dir().join(m.file);
    assert!(p.exists(), "{}", catalog::fetch_hint(name));
    p
}

fn load(name: &str) -> Tokenizer {
    let p = model_path(name);
    Tokenizer::load(&p).unwrap_or_else(|e| panic!("loading the tokenizer of {}: {e}", p.display()))
}

/// (file, prompt, add_special, tokens) of every case of a model's golden folder.
fn cases(name: &str) -> Vec<(String, String, bool, Vec<u32>)> {
    let dir = support::golden_dir(name);
    let mut out = Vec::new();
    let rd = std::fs::read_dir(&dir).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (set PATCHBAY_SHARED to the shared directory)",
            dir.display()
        )
    });
    for e in rd {
        let p = e.unwrap().path();
        if p.extension().and_then(|s| s.to_str()) != Some("json") {
            continue;
        }
        let j: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        let prompt = j["prompt"].as_str().expect("prompt").to_string();
        let add_special = j["add_special"].as_bool().expect("add_special");
        let tokens = j["tokens"]
            .as_array()
            .expect("tokens")
            .iter()
            .map(|t| t.as_u64().unwrap() as u32)
            .collect();
        out.push((p.display().to_string(), prompt, add_special, tokens));
    }
    out.sort();
    assert!(!out.is_empty(), "no golden cases in {}", dir.display());
    out
}

fn check_golden(name: &str) {
    let tok = load(name);
    for (file, prompt, add_special, want) in cases(name) {
        let got = tok.encode(&prompt, add_special);
        assert_eq!(got, want, "{file}: token ids differ for {prompt:?}");
        // Decoding the ids gives the prompt back (control tokens rendered).
        let back = tok.decode_special(&got);
        let back = match tok.bos() {
            Some(b) if add_special && tok.add_bos() && got.first() == Some(&b) => {
                let bos_text = tok.decode_special(&[b]);
                back.strip_prefix(bos_text.as_str())
                    .unwrap_or(&back)
                    .to_string()
            }
            _ => back,
        };
        assert_eq!(back, prompt, "{file}: decode(encode(prompt)) differs");
    }
}

#[test]
fn smollm2_matches_llama_cpp() {
    check_golden("smollm2-135m");
}

#[test]
fn qwen25_matches_llama_cpp() {
    check_golden("qwen2.5-0.5b");
}

#[test]
fn gemma3_matches_llama_cpp() {
    check_golden("gemma3-270m");
}

#[test]
fn stories260k_matches_run_c() {
    check_golden("stories260k");
}

#[test]
fn minilm_matches_hf_tokenizers() {
    let tok = load("minilm-l6-v2");
    let p = support::golden_dir("minilm-l6-v2").join("sentences.json");
    let j: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    let sentences = j["sentences"].as_array().expect("sentences");
    assert!(!sentences.is_empty());
    for s in sentences {
        let text = s["text"].as_str().unwrap();
        // The ids are stored as a JSON array or as a string holding one.
        let want: Vec<u32> = match &s["tokens"] {
            serde_json::Value::String(x) => serde_json::from_str(x).unwrap(),
            v => serde_json::from_value(v.clone()).unwrap(),
        };
        assert_eq!(tok.encode(text, true), want, "{text:?}");
        // Uncased WordPiece (accents stripped, CJK split): ASCII text decodes
        // back lower-cased.
        if text.is_ascii() {
            assert_eq!(tok.decode(&want), text.to_lowercase(), "{text:?}");
        }
    }
}
