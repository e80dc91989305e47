//! GGUF: header, metadata, tensor table, every tensor view, then the
//! hyper-parameters a model source reads from it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use patchbay_models::formats::gguf::Gguf;
use patchbay_models::ModelSource;

fuzz_target!(|data: &[u8]| {
    let Ok(g) = Gguf::from_bytes(data, "fuzz.gguf") else {
        return;
    };
    let _ = (g.version(), g.alignment(), g.data_offset());
    for (k, v) in g.metadata() {
        std::hint::black_box((k.len(), v.summary(), v.type_name(), v.as_int(), v.as_f64()));
        if let Some(a) = v.as_array() {
            std::hint::black_box((a.len(), a.to_i64_vec()));
        }
    }
    let _ = g.architecture();
    let _ = g.get_str_array("tokenizer.ggml.tokens");
    let _ = g.get_f32_array("tokenizer.ggml.scores");
    for t in g.tensors() {
        if let Ok(t) = g.tensor(&t.name) {
            patchbay_fuzz::touch(&t);
        }
    }
    if let Ok(src) = ModelSource::from_gguf(g) {
        patchbay_fuzz::touch_tensors(&src);
    }
});
