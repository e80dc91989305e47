//! `matmul` and `matvec` against a plain f64 reference, bit-identity across thread
//! counts, and shape errors.
//!
//! Tolerance (both kernels): each output element `y` with f64 reference `r` must
//! satisfy `|y - r| <= 1e-5 * sum_l |x_l| |w_l| + 1e-30`. An f32 dot product of
//! length `k` accumulated in any order has error at most about
//! `k * 2^-24 * sum |x||w|`; blocked/multi-accumulator sums (faer, our 2-lane
//! kernel) are far tighter, so `1e-5` (about 168 ulp-of-the-bound) covers every
//! `k` tested here (< 400) with margin while still catching wrong indexing, a
//! dropped tail or a double-counted block (those are errors of order 1 relative).

use patchbay_primitives::matmul::{matmul, matvec};
use patchbay_primitives::{MatRef, ShapeError, Simd, Threads};
use proptest::prelude::*;

const REL_TOL: f64 = 1e-5;

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

/// Reference `y[i][j] = sum_l x[i][l] w[j][l]` in f64, plus the bound `sum |x||w|`.
fn reference(
    x: &[f32],
    xs: usize,
    w: &[f32],
    ws: usize,
    m: usize,
    n: usize,
    k: usize,
) -> (Vec<f64>, Vec<f64>) {
    let mut y = vec![0.0; m * n];
    let mut b = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            let (mut acc, mut abs) = (0.0f64, 0.0f64);
            for l in 0..k {
                let p = x[i * xs + l] as f64 * w[j * ws + l] as f64;
                acc += p;
                abs += p.abs();
            }
            y[i * n + j] = acc;
            b[i * n + j] = abs;
        }
    }
    (y, b)
}

fn check_close(got: &[f32], want: &[f64], bound: &[f64], what: &str) {
    assert_eq!(got.len(), want.len());
    for (idx, ((&g, &r), &b)) in got.iter().zip(want).zip(bound).enumerate() {
        let err = (g as f64 - r).abs();
        assert!(
            err <= REL_TOL * b + 1e-30,
            "{what}: element {idx}: got {g}, want {r}, err {err}, bound {}",
            REL_TOL * b
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn matmul_matches_f64_reference(
        m in prop_oneof![Just(1usize), 1usize..40, 1usize..300],
        n in prop_oneof![Just(1usize), 1usize..300],
        k in prop_oneof![Just(1usize), 1usize..300],
        pad_x in 0usize..5,
        pad_w in 0usize..5,
        seed in any::<u64>(),
    ) {
        let (xs, ws) = (k + pad_x, k + pad_w);
        let x = values(m * xs, seed);
        let w = values(n * ws, seed ^ 0xABCD);
        let (want, bound) = reference(&x, xs, &w, ws, m, n, k);
        let xv = MatRef::with_stride(&x, m, k, xs).unwrap();
        let wv = MatRef::with_stride(&w, n, k, ws).unwrap();
        let t = Threads::new(2);
        for s in Simd::available() {
            let mut y = vec![f32::NAN; m * n];
            matmul(s, &t, xv, wv, &mut y).unwrap();
            check_close(&y, &want, &bound, &format!("matmul {m}x{n}x{k} at {}", s.level()));
        }
    }

    #[test]
    fn matvec_matches_f64_reference(
        n in prop_oneof![Just(1usize), 1usize..300],
        k in prop_oneof![Just(1usize), 1usize..16, 1usize..3000],
        pad_w in 0usize..5,
        seed in any::<u64>(),
    ) {
        let ws = k + pad_w;
        let x = values(k, seed);
        let w = values(n * ws, seed ^ 0x1234);
        let (want, bound) = reference(&x, k, &w, ws, 1, n, k);
        let wv = MatRef::with_stride(&w, n, k, ws).unwrap();
        let t = Threads::new(2);
        for s in Simd::available() {
            let mut y = vec![f32::NAN; n];
            matvec(s, &t, wv, &x, &mut y).unwrap();
            check_close(&y, &want, &bound, &format!("matvec {n}x{k} at {}", s.level()));
        }
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|f| f.to_bits()).collect()
}

#[test]
fn matmul_bit_identical_across_thread_counts() {
    let pools = [Threads::new(1), Threads::new(2), Threads::new(3)];
    // Sizes spanning several chunks, a ragged last chunk, and faer's small-size path.
    for &(m, n, k) in &[
        (7, 1000, 333),
        (64, 517, 96),
        (1, 300, 1000),
        (130, 129, 17),
    ] {
        let x = values(m * k, 11);
        let w = values(n * k, 12);
        let xv = MatRef::new(&x, m, k).unwrap();
        let wv = MatRef::new(&w, n, k).unwrap();
        for s in Simd::available() {
            let runs: Vec<Vec<u32>> = pools
                .iter()
                .map(|t| {
                    let mut y = vec![0.0; m * n];
                    matmul(s, t, xv, wv, &mut y).unwrap();
                    bits(&y)
                })
                .collect();
            assert_eq!(runs[0], runs[1], "matmul {m}x{n}x{k}: 1 vs 2 threads");
            assert_eq!(runs[0], runs[2], "matmul {m}x{n}x{k}: 1 vs 3 threads");
        }
    }
}

#[test]
fn matvec_bit_identical_across_thread_counts() {
    let pools = [Threads::new(1), Threads::new(2), Threads::new(3)];
    for &(n, k) in &[(1000, 333), (577, 1536), (3, 5), (4096, 64)] {
        let x = values(k, 21);
        let w = values(n * k, 22);
        let wv = MatRef::new(&w, n, k).unwrap();
        for s in Simd::available() {
            let runs: Vec<Vec<u32>> = pools
                .iter()
                .map(|t| {
                    let mut y = vec![0.0; n];
                    matvec(s, t, wv, &x, &mut y).unwrap();
                    bits(&y)
                })
                .collect();
            assert_eq!(runs[0], runs[1], "matvec {n}x{k}: 1 vs 2 threads");
            assert_eq!(runs[0], runs[2], "matvec {n}x{k}: 1 vs 3 threads");
        }
    }
}

#[test]
fn matvec_row_result_independent_of_grouping() {
    // A row's bits must not depend on whether it went through the 4-row or the
    // 1-row kernel: compute each row alone (n = 1) and compare with the full run.
    let (n, k) = (11, 203);
    let x = values(k, 31);
    let w = values(n * k, 32);
    for s in Simd::available() {
        let mut full = vec![0.0; n];
        matvec(
            s,
            &Threads::single(),
            MatRef::new(&w, n, k).unwrap(),
            &x,
            &mut full,
        )
        .unwrap();
        for i in 0..n {
            let mut one = [0.0f32];
            let row = MatRef::new(&w[i * k..(i + 1) * k], 1, k).unwrap();
            matvec(s, &Threads::single(), row, &x, &mut one).unwrap();
            assert_eq!(
                one[0].to_bits(),
                full[i].to_bits(),
                "row {i} at {}",
                s.level()
            );
        }
    }
}

#[test]
fn empty_and_zero_k() {
    let t = Threads::new(2);
    let s = Simd::detect();
    let empty: [f32; 0] = [];
    // k = 0: every output is an empty sum.
    let x = MatRef::new(&empty, 3, 0).unwrap();
    let w = MatRef::new(&empty, 4, 0).unwrap();
    let mut y = vec![f32::NAN; 12];
    matmul(s, &t, x, w, &mut y).unwrap();
    assert!(y.iter().all(|&v| v == 0.0));
    let mut y = vec![f32::NAN; 4];
    matvec(s, &t, w, &empty, &mut y).unwrap();
    assert!(y.iter().all(|&v| v == 0.0));
    // m = 0 or n = 0: nothing to write.
    let data = [1.0f32; 8];
    let x0 = MatRef::new(&data, 0, 4).unwrap();
    let w2 = MatRef::new(&data, 2, 4).unwrap();
    matmul(s, &t, x0, w2, &mut []).unwrap();
    let w0 = MatRef::new(&data, 0, 4).unwrap();
    matvec(s, &t, w0, &data[..4], &mut []).unwrap();
}

#[test]
fn shape_errors_are_returned() {
    let t = Threads::new(2);
    let s = Simd::detect();
    let data = vec![1.0f32; 64];
    let x = MatRef::new(&data, 2, 8).unwrap();
    let w = MatRef::new(&data, 3, 8).unwrap();
    let w_bad_k = MatRef::new(&data, 3, 7).unwrap();

    let mut y = vec![0.0; 6];
    assert!(matches!(
        matmul(s, &t, x, w_bad_k, &mut y),
        Err(ShapeError::Mismatch {
            left: 8,
            right: 7,
            ..
        })
    ));
    let mut short = vec![0.0; 5];
    assert!(matches!(
        matmul(s, &t, x, w, &mut short),
        Err(ShapeError::Len {
            expected: 6,
            found: 5,
            ..
        })
    ));
    let mut long = vec![0.0; 7];
    assert!(matches!(
        matmul(s, &t, x, w, &mut long),
        Err(ShapeError::Len {
            expected: 6,
            found: 7,
            ..
        })
    ));
    matmul(s, &t, x, w, &mut y).unwrap();
    assert!(y.iter().all(|&v| v == 8.0));

    let mut yv = vec![0.0; 3];
    assert!(matches!(
        matvec(s, &t, w, &data[..7], &mut yv),
        Err(ShapeError::Mismatch {
            left: 7,
            right: 8,
            ..
        })
    ));
    assert!(matches!(
        matvec(s, &t, w, &data[..8], &mut yv[..2]),
        Err(ShapeError::Len {
            expected: 3,
            found: 2,
            ..
        })
    ));
    matvec(s, &t, w, &data[..8], &mut yv).unwrap();
    assert!(yv.iter().all(|&v| v == 8.0));
}
