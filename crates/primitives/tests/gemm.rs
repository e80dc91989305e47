//! `matmul_sequential` (the packed GEMM kernel): every output must have exactly
//! the bits of a plain scalar loop over `k` (one fused multiply-add per term
//! from zero at the SIMD levels; multiply then add at the portable level),
//! whatever the shape, the strides, the thread count and the rows it is
//! computed with; and it must agree with a float64 reference. `matmul_packed`
//! (the same products from `W` packed beforehand, with a bias added as they
//! are stored) must give the bits of `matmul_sequential` followed by adding
//! the bias.

use patchbay_primitives::gemm::{matmul_packed, matmul_sequential, PackedW};
use patchbay_primitives::{Level, MatRef, ShapeError, Simd, Threads};
use proptest::prelude::*;

fn values(len: usize, seed: u64) -> Vec<f32> {
    // xorshift: deterministic, cheap, covers signs and magnitudes in [-2, 2).
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect()
}

/// The scalar loop whose bits every output must have at level `s`.
fn sequential(s: Simd, x: MatRef<'_>, w: MatRef<'_>) -> Vec<f32> {
    let fused = s.level() != Level::Scalar;
    let mut y = Vec::with_capacity(x.rows() * w.rows());
    for i in 0..x.rows() {
        for j in 0..w.rows() {
            let mut acc = 0.0f32;
            for (&a, &b) in x.row(i).iter().zip(w.row(j)) {
                acc = if fused {
                    a.mul_add(b, acc)
                } else {
                    a * b + acc
                };
            }
            y.push(acc);
        }
    }
    y
}

/// `y[i][j] = sum_l x[i][l] w[j][l]` in f64, and the bound `sum |x||w|`.
fn reference(x: MatRef<'_>, w: MatRef<'_>) -> (Vec<f64>, Vec<f64>) {
    let (mut y, mut b) = (Vec::new(), Vec::new());
    for i in 0..x.rows() {
        for j in 0..w.rows() {
            let (mut acc, mut abs) = (0.0f64, 0.0f64);
            for (&a, &c) in x.row(i).iter().zip(w.row(j)) {
                let p = a as f64 * c as f64;
                acc += p;
                abs += p.abs();
            }
            y.push(acc);
            b.push(abs);
        }
    }
    (y, b)
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|f| f.to_bits()).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]

    #[test]
    fn every_output_has_the_bits_of_the_scalar_loop_and_is_close_to_f64(
        m in prop_oneof![Just(1usize), 1usize..20, 1usize..320],
        n in prop_oneof![Just(1usize), 1usize..80, 1usize..300],
        k in prop_oneof![Just(1usize), 1usize..40, 1usize..600],
        pad_x in 0usize..5,
        pad_w in 0usize..5,
        threads in 1usize..4,
        seed in any::<u64>(),
    ) {
        let (xs, ws) = (k + pad_x, k + pad_w);
        let x = values(m * xs, seed);
        let w = values(n * ws, seed ^ 0xABCD);
        let xv = MatRef::with_stride(&x, m, k, xs).unwrap();
        let wv = MatRef::with_stride(&w, n, k, ws).unwrap();
        let (want, bound) = reference(xv, wv);
        let t = Threads::new(threads);
        for s in Simd::available() {
            let mut y = vec![f32::NAN; m * n];
            matmul_sequential(s, &t, xv, wv, &mut y).unwrap();
            let what = format!("{m}x{n}x{k}, {threads} threads, at {}", s.level());
            prop_assert_eq!(bits(&y), bits(&sequential(s, xv, wv)), "{}", what);
            // From a packing made once, with and without a bias.
            let packed = PackedW::new(s, &t, wv);
            prop_assert!(packed.fits(s));
            prop_assert_eq!((packed.rows(), packed.cols()), (n, k));
            let mut yp = vec![f32::NAN; m * n];
            matmul_packed(s, &t, xv, &packed, None, &mut yp).unwrap();
            prop_assert_eq!(bits(&yp), bits(&y), "packed, {}", what);
            let bias = values(n, seed ^ 0x5EED);
            let mut yb = vec![f32::NAN; m * n];
            matmul_packed(s, &t, xv, &packed, Some(&bias), &mut yb).unwrap();
            let mut want_b = y.clone();
            for row in want_b.chunks_exact_mut(n) {
                for (o, b) in row.iter_mut().zip(&bias) {
                    *o += b;
                }
            }
            prop_assert_eq!(bits(&yb), bits(&want_b), "packed with bias, {}", what);
            for (idx, ((&g, &r), &b)) in y.iter().zip(&want).zip(&bound).enumerate() {
                // A sum of k terms in f32 is within k * 2^-24 * sum |terms|.
                let tol = (k as f64 + 1.0) * f32::EPSILON as f64 * b + 1e-30;
                prop_assert!((g as f64 - r).abs() <= tol, "{}: element {}: {} vs {}", what, idx, g, r);
            }
        }
    }
}

#[test]
fn a_row_has_the_same_bits_alone_and_in_any_batch() {
    // Rows past several tasks of rows (288) and steps along k (256).
    let (m, n, k) = (600, 70, 530);
    let x = values(m * k, 5);
    let w = values(n * k, 6);
    let wv = MatRef::new(&w, n, k).unwrap();
    let t = Threads::new(2);
    for s in Simd::available() {
        let mut all = vec![0.0; m * n];
        matmul_sequential(s, &t, MatRef::new(&x, m, k).unwrap(), wv, &mut all).unwrap();
        for (first, rows) in [(0, 1), (599, 1), (287, 2), (5, 300), (100, 7)] {
            let xs = &x[first * k..(first + rows) * k];
            let mut some = vec![0.0; rows * n];
            matmul_sequential(s, &t, MatRef::new(xs, rows, k).unwrap(), wv, &mut some).unwrap();
            assert_eq!(
                bits(&some),
                bits(&all[first * n..(first + rows) * n]),
                "rows {first}..{} at {}",
                first + rows,
                s.level()
            );
        }
    }
}

#[test]
fn shapes_that_do_not_fit_are_errors() {
    let (x, w) = (vec![1.0; 6], vec![1.0; 6]);
    let s = Simd::detect();
    let t = Threads::single();
    let xv = MatRef::new(&x, 2, 3).unwrap();
    let mut y = vec![0.0; 4];
    let e = matmul_sequential(s, &t, xv, MatRef::new(&w, 3, 2).unwrap(), &mut y).unwrap_err();
    assert!(matches!(e, ShapeError::Mismatch { .. }), "{e:?}");
    let mut y = vec![0.0; 3];
    let e = matmul_sequential(s, &t, xv, MatRef::new(&w, 2, 3).unwrap(), &mut y).unwrap_err();
    assert!(matches!(e, ShapeError::Len { .. }), "{e:?}");
    // k = 0: every output is the empty sum.
    let mut y = vec![f32::NAN; 4];
    let empty: [f32; 0] = [];
    matmul_sequential(
        s,
        &t,
        MatRef::new(&empty, 2, 0).unwrap(),
        MatRef::new(&empty, 2, 0).unwrap(),
        &mut y,
    )
    .unwrap();
    assert_eq!(y, [0.0; 4]);
}

#[test]
fn packed_shapes_that_do_not_fit_are_errors() {
    let s = Simd::detect();
    let t = Threads::single();
    let w = vec![1.0; 6];
    let packed = PackedW::new(s, &t, MatRef::new(&w, 3, 2).unwrap());
    let x = vec![1.0; 4];
    let x2 = MatRef::new(&x, 2, 2).unwrap();
    let mut y = vec![0.0; 6];
    // k differs.
    let x1 = MatRef::new(&x[..3], 1, 3).unwrap();
    let e = matmul_packed(s, &t, x1, &packed, None, &mut y[..3]).unwrap_err();
    assert!(matches!(e, ShapeError::Mismatch { .. }), "{e:?}");
    // y too short, bias of the wrong length.
    let e = matmul_packed(s, &t, x2, &packed, None, &mut y[..5]).unwrap_err();
    assert!(matches!(e, ShapeError::Len { .. }), "{e:?}");
    let e = matmul_packed(s, &t, x2, &packed, Some(&[1.0; 2]), &mut y).unwrap_err();
    assert!(matches!(e, ShapeError::Len { .. }), "{e:?}");
    // A packing for one level is refused by a level of another width.
    for other in Simd::available() {
        let r = matmul_packed(other, &t, x2, &packed, None, &mut y);
        if packed.fits(other) {
            r.unwrap();
        } else {
            assert!(matches!(r, Err(ShapeError::Mismatch { .. })), "{r:?}");
        }
    }
    // k = 0: each output is the empty sum plus its bias.
    let empty: [f32; 0] = [];
    let p0 = PackedW::new(s, &t, MatRef::new(&empty, 3, 0).unwrap());
    let mut y = vec![f32::NAN; 6];
    let bias = [0.5, -0.0, 2.0];
    matmul_packed(
        s,
        &t,
        MatRef::new(&empty, 2, 0).unwrap(),
        &p0,
        Some(&bias),
        &mut y,
    )
    .unwrap();
    assert_eq!(bits(&y), bits(&[0.5, 0.0, 2.0, 0.5, 0.0, 2.0]));
}
