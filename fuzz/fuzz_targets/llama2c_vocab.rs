//! llama2.c's `tokenizer.bin`, then a short encode/decode round.
#![no_main]

use libfuzzer_sys::fuzz_target;
use patchbay_models::tokenizer::Llama2cTokenizer;

fuzz_target!(|data: &[u8]| {
    if let Ok(t) = Llama2cTokenizer::from_bytes(data) {
        let ids = t.encode("Once upon a time, ünïcödé 123", true, true);
        let mut prev = None;
        for &id in ids.iter().chain(&[0, 1, 2, 3, 258, u32::MAX]) {
            let _ = t.piece_bytes(prev, id);
            let _ = (t.raw_piece(id), t.score(id));
            prev = Some(id);
        }
        let _ = t.vocab_size();
    }
});
