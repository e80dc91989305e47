//! f16 / bf16 <-> f32 conversion.
