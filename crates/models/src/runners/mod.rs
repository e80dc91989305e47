//! The runner layer: what drives a built network — a decoding [`session`]
//! (prompt processing, generation, per-position logits), [`perplexity`] over a
//! text, sentence embeddings from an encoder ([`embed`]), and [`convert`] (exporting a model to another format).

pub mod convert;
pub mod diagnose;
pub mod embed;
pub mod perplexity;
pub mod session;
