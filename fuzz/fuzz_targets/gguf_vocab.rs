//! The tokenizer of a GGUF file: vocabulary, scores, types, merges, flags;
//! then a short encode/decode round.
#![no_main]

use libfuzzer_sys::fuzz_target;
use patchbay_models::tokenizer::Tokenizer;

fuzz_target!(|data: &[u8]| {
    let p = patchbay_fuzz::write("vocab.gguf", data);
    if let Ok(t) = Tokenizer::from_gguf(&p) {
        let ids = t.encode("Hello, world! ünïcödé 123 <s></s>", true);
        let _ = t.decode(&ids);
        let _ = t.decode_special(&[0, 1, 2, 3, u32::MAX]);
        let mut s = t.stream();
        for id in [0u32, 1, 2, 300, u32::MAX] {
            let _ = s.push(id);
        }
        let _ = s.finish();
        let _ = (t.bos(), t.eos(), t.vocab_size(), t.add_bos());
    }
});
