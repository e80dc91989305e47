//! llama2.c checkpoints: the header, the tensor table it implies, every view.
#![no_main]

use libfuzzer_sys::fuzz_target;
use patchbay_models::formats::llama2c::Llama2c;
use patchbay_models::ModelSource;

fuzz_target!(|data: &[u8]| {
    let Ok(m) = Llama2c::from_bytes(data, "fuzz.bin") else {
        return;
    };
    let c = m.config();
    std::hint::black_box(format!("{c:?}"));
    for t in m.tensors() {
        if let Ok(t) = m.tensor(&t.name) {
            patchbay_fuzz::touch(&t);
        }
    }
    if let Ok(src) = ModelSource::from_llama2c(m) {
        patchbay_fuzz::touch_tensors(&src);
    }
});
