//! # patchbay-primitives
//!
//! The numeric floor of patchbay: tensor views over borrowed (often
//! memory-mapped) memory, dtypes and quantised block formats, SIMD kernels with
//! run-time dispatch ([`simd::Simd`]), matrix products, the worker pool, and
//! an allocator that can bound untrusted work ([`alloc::BoundedAlloc`]).
//! It knows nothing about models.

pub mod alloc;
pub mod convert;
pub mod dtype;
pub mod error;
pub mod gemm;
pub mod kernels;
pub mod matmul;
pub mod quant;
pub mod rope;
pub mod simd;
pub mod storage;
pub mod tensor;
pub mod threads;

pub use dtype::DType;
pub use error::ShapeError;
pub use simd::{Level, Simd};
pub use storage::{Storage, Tensor};
pub use tensor::{Act, MatRef};
pub use threads::Threads;
