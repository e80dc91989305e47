//! Matrix products: f32 `matmul` through faer and the threaded `matvec` of decoding.
