//! Encode and decode arbitrary bytes with real tokenizers: byte-level BPE
//! (SmolLM2's GGUF), SentencePiece from a GGUF (Gemma 3), llama2.c
//! (stories260K's tok512.bin) and WordPiece (all-MiniLM-L6-v2's
//! tokenizer.json). The first byte picks the tokenizer and the mode; the rest
//! is text (lossy UTF-8) to encode, or little-endian u32 ids to decode.
#![no_main]

use libfuzzer_sys::fuzz_target;
use patchbay_models::tokenizer::Tokenizer;
use std::sync::OnceLock;

fn tokenizers() -> &'static [Tokenizer] {
    static T: OnceLock<Vec<Tokenizer>> = OnceLock::new();
    T.get_or_init(|| {
        let m = patchbay_fuzz::models_dir();
        let load = |p: std::path::PathBuf| {
            Tokenizer::load(&p)
                .unwrap_or_else(|e| panic!("{}: {e} (run scripts/fetch-models)", p.display()))
        };
        vec![
            load(m.join("SmolLM2-135M-Instruct.Q4_1.gguf")),
            load(m.join("gemma-3-270m-q4_k_m.gguf")),
            load(m.join("stories260K/stories260K.bin")),
            load(m.join("all-MiniLM-L6-v2")),
        ]
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let ts = tokenizers();
    let t = &ts[(sel as usize) % ts.len()];
    if sel & 0x80 == 0 {
        let text = String::from_utf8_lossy(rest);
        let ids = t.encode_with(&text, sel & 0x10 != 0, sel & 0x20 != 0);
        let back = t.decode_special(&ids);
        std::hint::black_box(back);
        let _ = t.decode(&ids);
    } else {
        let ids: Vec<u32> = rest
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let _ = t.decode(&ids);
        let _ = t.decode_special(&ids);
        let mut s = t.stream().with_special(sel & 0x40 != 0);
        for &id in &ids {
            let _ = s.push(id);
            let _ = t.token_piece(id);
            let _ = t.token_text(id);
        }
        let _ = s.finish();
    }
});
