//! # patchbay-blocks
//!
//! Transformer building blocks implementing [`patchbay_combinators::Layer`].
