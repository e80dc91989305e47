//! Inputs the fuzz targets (`fuzz/`, `scripts/fuzz`) found to crash or hang a
//! reader, each kept here as bytes so that CI sees it fixed, plus the bounds
//! that make hostile chat templates and safetensors indexes safe.

// Chat templates render under their memory bound here as in the binary: a
// rendering that went past it would end this test process with an error.
#[global_allocator]
static ALLOC: patchbay_primitives::alloc::BoundedAlloc =
    patchbay_primitives::alloc::BoundedAlloc::new();

use std::path::PathBuf;
use std::time::{Duration, Instant};

use patchbay_models::formats::safetensors::Checkpoint;
use patchbay_models::tokenizer::chat::{TEMPLATE_FUEL, TEMPLATE_RECURSION};
use patchbay_models::tokenizer::{render_chat, ChatMessage, Tokenizer};

/// A fresh directory for one test's files.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "patchbay-fuzz-regressions-{}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// fuzz target `tokenizer_json`: a JSON syntax error inside `"decoder"` made
/// the `tokenizers` crate panic (`expect("Helper")`) instead of returning an
/// error.
#[test]
fn tokenizer_json_with_a_syntax_error_in_the_decoder_is_an_error() {
    let json = br#"{"version": "1.0", "truncation": null, "padding": null, "added_tokens": [{"id": 6, "content": "<|endoftext|>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}], "normalizer": null, "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}, "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true}, "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets" "byte_fallback": false, "vocab": {"a": 0, "b": 1, "c": 2, "ab": 3, "abc": 4, "\u0120": 5, "<|endoftext|>": 6}, "merges": ["a b", "ab c"]}}"#;
    let dir = scratch("tokenizer-json");
    let path = dir.join("tokenizer.json");
    std::fs::write(&path, json).unwrap();
    let err = Tokenizer::from_hf_json(&path).unwrap_err().to_string();
    assert!(
        err.contains("tokenizer.json") && err.contains("not valid JSON") && err.contains("column"),
        "{err}"
    );
    // The same file with the syntax repaired loads.
    let fixed = String::from_utf8_lossy(json).replace(
        r#""trim_offsets" "byte_fallback": false,"#,
        r#""trim_offsets": true, "use_regex": true}, "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,"#,
    );
    std::fs::write(&path, fixed).unwrap();
    let t = Tokenizer::from_hf_json(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(t.encode("abc", false), vec![4]);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Deeply nested JSON stops at serde_json's depth limit with an error.
#[test]
fn deeply_nested_tokenizer_json_is_an_error() {
    let dir = scratch("nested");
    let path = dir.join("tokenizer.json");
    let depth = 100_000;
    let json = format!(
        r#"{{"decoder": {}{}}}"#,
        "[".repeat(depth),
        "]".repeat(depth)
    );
    std::fs::write(&path, json).unwrap();
    let err = Tokenizer::from_hf_json(&path).unwrap_err().to_string();
    assert!(err.contains("not valid JSON"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn messages(n: usize) -> Vec<ChatMessage> {
    (0..n)
        .map(|i| {
            let role = if i % 2 == 0 { "user" } else { "assistant" };
            ChatMessage::new(role, format!("message {i}"))
        })
        .collect()
}

/// Renders and returns (result, time taken).
fn render(template: &str) -> (Result<String, String>, Duration) {
    let t0 = Instant::now();
    let r = render_chat(template, &messages(2), true, "<s>", "</s>").map_err(|e| e.to_string());
    (r, t0.elapsed())
}

#[test]
fn a_chat_template_with_a_huge_loop_runs_out_of_fuel() {
    // 10^10 iterations unbounded; the fuel stops it after TEMPLATE_FUEL steps.
    let (r, took) = render(
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}done",
    );
    let err = r.unwrap_err();
    assert!(
        err.contains(&TEMPLATE_FUEL.to_string()) && err.contains("instructions"),
        "{err}"
    );
    assert!(took < Duration::from_secs(30), "took {took:?}");
}

#[test]
fn a_chat_template_that_recurses_forever_is_an_error() {
    let (r, _) = render("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}");
    let err = r.unwrap_err();
    assert!(err.contains("recursion"), "{err}");
    // Nesting within the limit is fine (a macro call takes a few frames).
    let depth = TEMPLATE_RECURSION / 10;
    let tpl = format!(
        "{{% macro f(n) %}}{{% if n < {depth} %}}{{{{ f(n + 1) }}}}{{% else %}}{{{{ n }}}}{{% endif %}}{{% endmacro %}}{{{{ f(0) }}}}"
    );
    let (r, _) = render(&tpl);
    assert_eq!(r.unwrap(), depth.to_string());
}

#[test]
fn a_long_conversation_renders_within_the_fuel() {
    // Gemma 3's template over 2,000 messages: far more than a chat holds.
    let tpl = patchbay_models::tokenizer::chat::GEMMA_TEMPLATE;
    let out = render_chat(tpl, &messages(2000), true, "<bos>", "<eos>").unwrap();
    assert!(
        out.contains("message 1999<end_of_turn>"),
        "{}",
        &out[out.len() - 200..]
    );
}

#[test]
fn a_repeated_string_too_large_is_an_error() {
    let (r, _) = render("{{ 'x' * 1000000000000 }}");
    assert!(r.unwrap_err().contains("too large"));
}

#[test]
fn an_indentation_too_wide_is_an_error_not_an_allocation() {
    // Both filters would build a string of 10^12 spaces before writing a line.
    for tpl in [
        "{{ 'a\nb' | indent(1000000000000) }}",
        "{{ 'a\nb' | indent(width=1000000000000) }}",
        "{{ messages | tojson(indent=1000000000000) }}",
    ] {
        let (r, _) = render(tpl);
        let err = r.unwrap_err();
        assert!(err.contains("wider than"), "{tpl}: {err}");
    }
}

#[test]
fn indent_behaves_as_jinja_within_the_bound() {
    let cases = [
        ("{{ 'a\nb\n\nc\n' | indent(2) }}", "a\n  b\n\n  c"),
        ("{{ 'a\nb' | indent(2, true) }}", "  a\n  b"),
        ("{{ 'a\n\nb' | indent(width=1, blank=true) }}", "a\n \n b"),
        ("{{ 'a\nb' | indent }}", "a\n    b"),
    ];
    for (tpl, want) in cases {
        let (r, _) = render(tpl);
        assert_eq!(r.unwrap(), want, "{tpl}");
    }
}

/// fuzz target `tokenizer_json`: templates that `tokenizers` loads and then
/// panics on when it encodes. Its processors deserialise untagged, so a
/// template whose `type` key is mangled still loads as a template.
#[test]
fn a_template_tokenizers_would_panic_on_is_refused() {
    let dir = scratch("template-token");
    let piece = |kind: &str, id: &str| format!(r#"{{"{kind}":{{"id":"{id}","type_id":0}}}}"#);
    let template = |pieces: &[(&str, &str)]| {
        let p: Vec<String> = pieces.iter().map(|(k, id)| piece(k, id)).collect();
        format!("[{}]", p.join(","))
    };
    let cls_a_sep = [
        ("SpecialToken", "[CLS]"),
        ("Sequence", "A"),
        ("SpecialToken", "[SEP]"),
    ];
    let pair = template(&[
        ("SpecialToken", "[CLS]"),
        ("Sequence", "A"),
        ("SpecialToken", "[SEP]"),
        ("Sequence", "B"),
        ("SpecialToken", "[SEP]"),
    ]);
    let sep_ids = |ids: &str| {
        format!(
            r#"{{"[CLS]":{{"id":"[CLS]","ids":[1],"tokens":["[CLS]"]}},"[SEP]":{{"id":"[SEP]","ids":{ids},"tokens":["[SEP]"]}}}}"#
        )
    };
    let processor = |type_key: &str, single: &str, special: &str| {
        format!(
            r#"{{"{type_key}":"TemplateProcessing","single":{single},"pair":{pair},"special_tokens":{special}}}"#
        )
    };
    let json = |post_processor: &str| {
        format!(
            r#"{{"version":"1.0","added_tokens":[],"normalizer":null,"pre_tokenizer":{{"type":"Whitespace"}},
            "post_processor":{post_processor},
            "decoder":null,"model":{{"type":"WordLevel","vocab":{{"[UNK]":0,"[CLS]":1,"[SEP]":2,"hello":3}},"unk_token":"[UNK]"}}}}"#
        )
    };
    let undefined = template(&[
        ("SpecialToken", "[CLS]"),
        ("Sequence", "A"),
        ("SpecialToken", "E]PS["),
    ]);
    let good = template(&cls_a_sep);
    let cases = [
        // What the fuzzer found first: an undefined token in `single`.
        (
            processor("type", &undefined, &sep_ids("[2]")),
            Some("\"E]PS[\""),
        ),
        // crash-04740fdc: the same behind a mangled `type` key.
        (
            processor("pre_tokenitype", &undefined, &sep_ids("[2]")),
            Some("\"E]PS[\""),
        ),
        // ... and inside a `Sequence` of processors.
        (
            format!(
                r#"{{"type":"Sequence","processors":[{{"type":"ByteLevel","add_prefix_space":false,"trim_offsets":false,"use_regex":false}},{}]}}"#,
                processor("type", &undefined, &sep_ids("[2]"))
            ),
            Some("\"E]PS[\""),
        ),
        // `single` takes one text: the second sequence B would index past it.
        (
            processor(
                "type",
                &template(&[("Sequence", "A"), ("Sequence", "B")]),
                &sep_ids("[2]"),
            ),
            Some("uses the second sequence B"),
        ),
        // ids and tokens of a special token must pair up.
        (
            processor("type", &good, &sep_ids("[2,2]")),
            Some("2 ids but 1 tokens"),
        ),
        (processor("type", &good, &sep_ids("[2]")), None),
        (processor("tipe", &good, &sep_ids("[2]")), None),
    ];
    let path = dir.join("tokenizer.json");
    for (post_processor, bad) in cases {
        std::fs::write(&path, json(&post_processor)).unwrap();
        match (Tokenizer::from_hf_json(&path), bad) {
            (Err(e), Some(want)) => {
                let e = e.to_string();
                assert!(
                    e.contains(want) && e.contains("post_processor"),
                    "{post_processor}: {e}"
                );
            }
            (Ok(t), None) => assert_eq!(t.encode("hello", true), vec![1, 3, 2]),
            (r, _) => panic!("{post_processor}: {:?} (want {bad:?})", r.map(|_| ())),
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// fuzz target `safetensors`: an index may only name shards beside it.
#[test]
fn a_safetensors_index_naming_a_path_elsewhere_is_refused() {
    let dir = scratch("index");
    let sub = dir.join("model");
    std::fs::create_dir_all(&sub).unwrap();
    // A valid one-tensor safetensors file outside the model directory.
    let header = br#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(header);
    file.extend_from_slice(&1.0f32.to_le_bytes());
    std::fs::write(dir.join("outside.safetensors"), &file).unwrap();
    for shard in ["../outside.safetensors", "/etc/passwd", "..", "", "a\\b"] {
        let index = serde_json::json!({ "weight_map": { "w": shard } });
        std::fs::write(sub.join("model.safetensors.index.json"), index.to_string()).unwrap();
        let err = Checkpoint::open(&sub).unwrap_err().to_string();
        assert!(
            err.contains("not a plain file name") && err.contains("model.safetensors.index.json"),
            "{shard:?}: {err}"
        );
    }
    // A shard beside the index is read.
    std::fs::write(sub.join("model-00001-of-00001.safetensors"), &file).unwrap();
    let index = serde_json::json!({ "weight_map": { "w": "model-00001-of-00001.safetensors" } });
    std::fs::write(sub.join("model.safetensors.index.json"), index.to_string()).unwrap();
    let ck = Checkpoint::open(&sub).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ck.tensor("w").unwrap().as_f32().unwrap(), &[1.0]);
    std::fs::remove_dir_all(&dir).unwrap();
}
