//! f32 vector kernels, each generic over [`pulp::Simd`] and dispatched on a [`Simd`].
//!
//! (Placeholder bodies; the SIMD implementations land with the kernel work.)

use crate::simd::Simd;

/// `y[i] += x[i]`. Lengths must match.
pub fn add_assign(_s: Simd, y: &mut [f32], x: &[f32]) {
    assert_eq!(y.len(), x.len(), "add_assign: length mismatch");
    for (a, b) in y.iter_mut().zip(x) {
        *a += *b;
    }
}

/// `y[i] *= x[i]`. Lengths must match.
pub fn mul_assign(_s: Simd, y: &mut [f32], x: &[f32]) {
    assert_eq!(y.len(), x.len(), "mul_assign: length mismatch");
    for (a, b) in y.iter_mut().zip(x) {
        *a *= *b;
    }
}
