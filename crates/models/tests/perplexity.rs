//! Perplexity of SmolLM2-135M-Instruct Q4_1 on WikiText-2 (test), `--ctx 512
//! --chunks 40`, against llama.cpp's `llama-perplexity`: PPL = 21.4497 +/- 0.64.

mod support;

use patchbay_models::catalog;
use patchbay_models::runners::perplexity::perplexity;
use patchbay_models::runners::session::SessionOptions;

#[test]
fn smollm2_wikitext_perplexity_matches_llama_cpp_within_one_percent() {
    let path = catalog::resolve_model("smollm2-135m").unwrap_or_else(|e| panic!("{e}"));
    let corpus = support::shared_dir().join("corpus/wikitext-2-test.txt");
    let text = std::fs::read_to_string(&corpus)
        .unwrap_or_else(|e| panic!("{}: {e} (set PATCHBAY_SHARED)", corpus.display()));
    let opts = SessionOptions {
        max_context: 512,
        ..SessionOptions::default()
    };
    let mut session = support::llama_session(&path, &opts);
    let tokens = session.tokenizer.encode(&text, true);
    let result = perplexity(&mut session, &tokens, 512, Some(40), |_, _, _| {}).unwrap();
    let reference = 21.4497;
    let rel = (result.ppl() - reference).abs() / reference;
    eprintln!(
        "PPL = {:.4} +/- {:.5} over {} tokens (llama.cpp {reference}, {:.2}% apart)",
        result.ppl(),
        result.std_error(),
        result.count,
        rel * 100.0
    );
    assert_eq!(result.count, 40 * 255);
    assert!(
        rel < 0.01,
        "PPL {} is {:.2}% from llama.cpp's {reference}",
        result.ppl(),
        rel * 100.0
    );
    assert!(
        (result.std_error() - 0.64).abs() < 0.05,
        "std error {}",
        result.std_error()
    );
}
