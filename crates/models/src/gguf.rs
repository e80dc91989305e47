//! GGUF v2/v3 reader: header, metadata, tensor infos; tensors are views into the map.
