//! `patchbay`: run transformer language models on the CPU.

fn main() {
    println!("patchbay {}", env!("CARGO_PKG_VERSION"));
}
