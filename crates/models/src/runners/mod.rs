//! The runner layer: what drives a built network — a decoding [`session`]
//! (prompt processing, generation, per-position logits), [`perplexity`] over a
//! text, sentence embeddings from an encoder ([`embed`]), re-wired variants
//! measured against the model ([`rewire`]), and [`convert`] (exporting a model to another format).

pub mod convert;
pub mod diagnose;
pub mod embed;
pub mod perplexity;
pub mod rewire;
pub mod session;
