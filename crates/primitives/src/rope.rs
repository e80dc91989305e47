//! Rotary position embeddings: precomputed tables, interleaved and half-split layouts.
