//! HF safetensors checkpoints (single or sharded) and `config.json`, memory-mapped.
