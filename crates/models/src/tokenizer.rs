//! Tokenizers: GGUF-embedded BPE (gpt2) and SentencePiece-style (llama), llama2.c, HF tokenizer.json.
