//! safetensors: one file from memory (first byte even), or a directory with
//! `model.safetensors.index.json` and a shard (first byte odd: two bytes of
//! index length, the index, then the shard).
#![no_main]

use libfuzzer_sys::fuzz_target;
use patchbay_models::formats::safetensors::{Checkpoint, HfConfig, SafetensorsFile};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        if let Ok(f) = SafetensorsFile::from_bytes(rest, "fuzz.safetensors") {
            let _ = f.metadata().len();
            for t in f.tensors() {
                if let Ok(t) = f.tensor(&t.name) {
                    patchbay_fuzz::touch(&t);
                }
            }
        }
        // The same bytes as a config.json.
        if let Ok(text) = std::str::from_utf8(rest) {
            if let Ok(c) = HfConfig::parse(text, "config.json") {
                let _ = c.model_type();
                let _ = c.opt_usize("hidden_size");
                let _ = c.opt_f64("rms_norm_eps");
                let _ = c.opt_bool("tie_word_embeddings");
            }
        }
        return;
    }
    if rest.len() < 2 {
        return;
    }
    let n = u16::from_le_bytes([rest[0], rest[1]]) as usize;
    let rest = &rest[2..];
    let (index, shard) = rest.split_at(n.min(rest.len()));
    let dir = patchbay_fuzz::scratch().join("st");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("model.safetensors.index.json"), index).unwrap();
    std::fs::write(dir.join("model-00001-of-00001.safetensors"), shard).unwrap();
    if let Ok(ck) = Checkpoint::open(&dir) {
        let names: Vec<String> = ck.tensors().map(|t| t.name.clone()).collect();
        for name in names {
            if let Ok(t) = ck.tensor(&name) {
                patchbay_fuzz::touch(&t);
            }
        }
    }
});
