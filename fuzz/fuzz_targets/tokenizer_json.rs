//! HF `tokenizer.json` loading, then a short encode/decode round.
#![no_main]

use libfuzzer_sys::fuzz_target;
use patchbay_models::tokenizer::Tokenizer;

fuzz_target!(|data: &[u8]| {
    let p = patchbay_fuzz::write("tokenizer.json", data);
    if let Ok(t) = Tokenizer::from_hf_json(&p) {
        let ids = t.encode("Hello, world! ünïcödé 123", true);
        let _ = t.decode(&ids);
        let _ = t.decode(&[0, 1, 2, u32::MAX]);
        let _ = (t.bos(), t.eos(), t.vocab_size(), t.chat_template());
    }
});
