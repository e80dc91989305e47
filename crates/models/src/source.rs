//! One interface over GGUF, safetensors and llama2.c files: tensors by canonical name.
