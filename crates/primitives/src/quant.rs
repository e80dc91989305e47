//! GGML block formats (Q4_0 ... Q6_K): views, dequantisation and dot products.
