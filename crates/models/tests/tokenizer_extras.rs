//! Hand-written texts (whitespace runs, newlines, digits, contractions, emoji,
//! CJK, ...) checked against ids from independent implementations (see
//! `data/tokenizer_extras.json`), plus round trips, streaming decode and
//! chat templates.

use std::path::PathBuf;

use patchbay_models::catalog;
use patchbay_models::tokenizer::{render_chat, ChatMessage, Tokenizer};

fn load(name: &str) -> Tokenizer {
    let m = catalog::known(name).unwrap();
    let p: PathBuf = catalog::models_dir().join(m.file);
    assert!(p.exists(), "{}", catalog::fetch_hint(name));
    Tokenizer::load(&p).unwrap()
}

/// A session builds a GGUF model's tokenizer from the parse of the file it
/// made for the network: it must be the tokenizer the file gives alone.
#[test]
fn gguf_tokenizer_from_the_parsed_file_is_the_files() {
    let x = extras();
    let texts = x["texts"].as_array().unwrap();
    for name in ["smollm2-135m", "qwen2.5-0.5b", "gemma3-270m"] {
        let m = catalog::known(name).unwrap();
        let p: PathBuf = catalog::models_dir().join(m.file);
        assert!(p.exists(), "{}", catalog::fetch_hint(name));
        let alone = Tokenizer::load(&p).unwrap();
        let gguf = patchbay_models::formats::gguf::Gguf::open(&p).unwrap();
        let parsed = Tokenizer::from_parsed_gguf(&gguf).unwrap();
        assert_eq!(parsed.vocab_size(), alone.vocab_size(), "{name}");
        assert_eq!(
            (parsed.bos(), parsed.eos()),
            (alone.bos(), alone.eos()),
            "{name}"
        );
        assert_eq!(parsed.chat_template(), alone.chat_template(), "{name}");
        for t in texts {
            let t = t.as_str().unwrap();
            let ids = alone.encode_with(t, true, true);
            assert_eq!(parsed.encode_with(t, true, true), ids, "{name}: {t:?}");
            assert_eq!(parsed.decode_special(&ids), alone.decode_special(&ids));
        }
    }
}

fn extras() -> serde_json::Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/tokenizer_extras.json");
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

fn check_extras(name: &str) {
    let tok = load(name);
    let x = extras();
    let texts = x["texts"].as_array().unwrap();
    let want = x[name].as_array().unwrap();
    assert_eq!(texts.len(), want.len());
    for (t, w) in texts.iter().zip(want) {
        let t = t.as_str().unwrap();
        let w: Vec<u32> = serde_json::from_value(w.clone()).unwrap();
        let got = tok.encode_with(t, false, true);
        assert_eq!(got, w, "{name}: ids differ for {t:?}");
        assert_eq!(tok.decode_special(&got), t, "{name}: round trip of {t:?}");
        // Streaming decode one id at a time gives the same text.
        let mut s = tok.stream().with_special(true);
        let mut streamed: String = got.iter().map(|&id| s.push(id)).collect();
        streamed.push_str(&s.finish());
        assert_eq!(streamed, t, "{name}: streamed decode of {t:?}");
    }
}

#[test]
fn smollm2_extras() {
    check_extras("smollm2-135m");
}

#[test]
fn qwen25_extras() {
    check_extras("qwen2.5-0.5b");
}

#[test]
fn gemma3_extras() {
    check_extras("gemma3-270m");
}

#[test]
fn special_tokens_are_text_without_parse_special() {
    let tok = load("qwen2.5-0.5b");
    let with = tok.encode("<|im_start|>user", true);
    assert_eq!(with[0], 151644);
    let without = tok.encode_with("<|im_start|>user", false, false);
    assert!(!without.contains(&151644), "{without:?}");
    assert_eq!(tok.decode(&without), "<|im_start|>user");
    assert!(tok.is_eog(151645)); // <|im_end|>
    assert!(tok.is_eog(151643)); // <|endoftext|>
    assert!(!tok.is_eog(151644));
}

#[test]
fn byte_fallback_and_partial_utf8_stream() {
    // stories260K has 512 tokens: most non-ASCII text falls back to bytes.
    let tok = load("stories260k");
    let text = "Tim saw a 🐶 and said héllo";
    let ids = tok.encode(text, true);
    assert_eq!(ids[0], 1);
    assert!(
        ids.iter().any(|&i| (3..259).contains(&i)),
        "expected byte tokens in {ids:?}"
    );
    assert_eq!(tok.decode(&ids), text);
    let mut s = tok.stream();
    let mut parts = Vec::new();
    for &id in &ids {
        parts.push(s.push(id));
    }
    assert!(s.finish().is_empty());
    // No part ends inside a character, and the dog's 4 bytes arrive at once.
    assert!(parts.iter().any(|p| p.contains('🐶')));
    assert_eq!(parts.concat(), text);
    // An incomplete character at the end becomes U+FFFD on finish.
    let mut s = tok.stream();
    let dog: Vec<u32> = "🐶".bytes().map(|b| b as u32 + 3).collect();
    assert_eq!(s.push(dog[0]), "");
    assert_eq!(s.push(dog[1]), "");
    assert_eq!(s.finish(), "\u{FFFD}");
}

#[test]
fn gemma_builds_fast_and_decodes_byte_tokens() {
    let m = catalog::known("gemma3-270m").unwrap();
    let p = catalog::models_dir().join(m.file);
    assert!(p.exists(), "{}", catalog::fetch_hint("gemma3-270m"));
    let v = patchbay_models::tokenizer::gguf_vocab::read_vocab(&p).unwrap();
    assert_eq!(v.tokens.len(), 262_144);
    let t0 = std::time::Instant::now();
    let tok = Tokenizer::from_vocab(v).unwrap();
    let dt = t0.elapsed();
    assert!(
        dt.as_secs_f64() < 1.0,
        "building the Gemma tokenizer took {dt:?}"
    );
    let nl = tok.token_id("<0x0A>").unwrap();
    assert_eq!(tok.token_piece(nl), b"\n");
    assert!(tok.is_eog(tok.token_id("<end_of_turn>").unwrap()));
    assert_eq!(tok.bos(), Some(2));
}

fn sys_user() -> Vec<ChatMessage> {
    vec![
        ChatMessage::new("system", "You are terse."),
        ChatMessage::new("user", "Hi there!"),
    ]
}

#[test]
fn smollm2_chat_template() {
    let tok = load("smollm2-135m");
    let t = tok.chat_template().expect("template in the GGUF");
    let out = render_chat(t, &sys_user(), true, "<|im_start|>", "<|im_end|>").unwrap();
    assert_eq!(
        out,
        "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi there!<|im_end|>\n<|im_start|>assistant\n"
    );
    // Without a system message the template inserts its default one.
    let out = render_chat(t, &sys_user()[1..], false, "", "").unwrap();
    assert_eq!(
        out,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi there!<|im_end|>\n"
    );
}

#[test]
fn qwen25_chat_template() {
    let tok = load("qwen2.5-0.5b");
    let t = tok.chat_template().expect("template in the GGUF");
    let out = render_chat(t, &sys_user(), true, "", "<|im_end|>").unwrap();
    assert_eq!(
        out,
        "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi there!<|im_end|>\n<|im_start|>assistant\n"
    );
    let out = render_chat(t, &sys_user()[1..], true, "", "").unwrap();
    assert_eq!(
        out,
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi there!<|im_end|>\n<|im_start|>assistant\n"
    );
    // The rendered prompt tokenizes with the specials parsed.
    let ids = tok.encode(&out, true);
    assert_eq!(ids[0], 151644);
}

#[test]
fn gemma3_chat_template() {
    let tok = load("gemma3-270m");
    let t = tok.chat_template().expect("built-in Gemma template");
    let out = render_chat(t, &sys_user(), true, "<bos>", "<eos>").unwrap();
    assert_eq!(
        out,
        "<bos><start_of_turn>user\nYou are terse.\n\nHi there!<end_of_turn>\n<start_of_turn>model\n"
    );
    // Roles must alternate.
    let bad = vec![ChatMessage::new("user", "a"), ChatMessage::new("user", "b")];
    assert!(render_chat(t, &bad, true, "<bos>", "<eos>").is_err());
    // The golden chat prompt is what the template gives for that question.
    let q = vec![ChatMessage::new(
        "user",
        "What is the tallest mountain in the world?",
    )];
    let out = render_chat(t, &q, true, "<bos>", "<eos>").unwrap();
    let ids = tok.encode_with(&out, false, true);
    assert_eq!(
        ids,
        [
            2, 105, 2364, 107, 3689, 563, 506, 92900, 10565, 528, 506, 1902, 236881, 106, 107, 105,
            4368, 107
        ]
    );
}
