//! llama2.c checkpoints (`.bin`, v0 header) and their `tokenizer.bin`.
