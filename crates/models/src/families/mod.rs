//! The model-family layer: each architecture as a type built from the
//! combinators, plus everything that architecture means by a file's contents —
//! its HF tensor-name map, its hyper-parameter defaults, which RoPE layout its
//! stored Q/K need, and the shape checks of its tensors.
//!
//! Families read files only through [`crate::formats::ModelSource`]; the
//! runners in [`crate::runners`] drive the networks they build.

pub mod llama;
