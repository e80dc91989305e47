//! Property tests of the f32 kernels against plain f64 references, at every
//! SIMD level this CPU supports.
//!
//! Lengths run over 1..3000 with extra weight on short and odd lengths (tails
//! shorter than a register) and on exact multiples of 16. Tolerances are stated
//! per kernel; for reductions they are relative to the sum of |terms|.

use patchbay_primitives::kernels;
use patchbay_primitives::{MatRef, Simd};
use proptest::prelude::*;

fn cfg() -> ProptestConfig {
    ProptestConfig::with_cases(64)
}

fn len_strategy() -> impl Strategy<Value = usize> {
    prop_oneof![
        1 => Just(1usize),
        2 => 1usize..40,
        1 => (1usize..100).prop_map(|k| k * 16),
        4 => 1usize..3000,
    ]
}

/// Values uniform in +-scale with scale in {1, 30, 1e4}.
fn values(len: impl Strategy<Value = usize>) -> impl Strategy<Value = Vec<f32>> {
    (len, prop_oneof![Just(1.0f32), Just(30.0), Just(1e4)])
        .prop_flat_map(|(n, sc)| prop::collection::vec(-sc..sc, n))
}

fn pair() -> impl Strategy<Value = (Vec<f32>, Vec<f32>)> {
    len_strategy().prop_flat_map(|n| (values(Just(n)), values(Just(n))))
}

fn levels() -> Vec<Simd> {
    Simd::available()
}

/// Asserts `|got - want| <= tol` element-wise with a useful message.
fn check_close(what: &str, s: Simd, got: &[f32], want: &[f64], tol: impl Fn(usize) -> f64) {
    assert_eq!(got.len(), want.len());
    for i in 0..got.len() {
        let err = (got[i] as f64 - want[i]).abs();
        let t = tol(i);
        assert!(
            err <= t || (got[i] as f64 == want[i]),
            "{what} at {}: index {i} of {}: got {} want {} (err {err:e} > tol {t:e})",
            s.level(),
            got.len(),
            got[i],
            want[i]
        );
    }
}

proptest! {
    #![proptest_config(cfg())]

    /// dot: tolerance 2e-6 * sum|a_i b_i| (blocked f32 accumulation, 16 terms
    /// per lane plus the lane/accumulator combine, f64 across blocks).
    #[test]
    fn dot_matches_f64((a, b) in pair()) {
        let want: f64 = a.iter().zip(&b).map(|(&x, &y)| x as f64 * y as f64).sum();
        let mag: f64 = a.iter().zip(&b).map(|(&x, &y)| (x as f64 * y as f64).abs()).sum();
        for s in levels() {
            let got = kernels::dot(s, &a, &b) as f64;
            prop_assert!((got - want).abs() <= 2e-6 * mag + 1e-30,
                "{}: n={} got {got} want {want}", s.level(), a.len());
        }
    }

    /// Small integers: every partial sum is exact in f32, so the result must be
    /// exact at every level. Catches a dropped or doubled element, which a
    /// relative tolerance could hide.
    #[test]
    fn dot_and_sum_exact_on_integers(n in len_strategy(), seed in any::<u64>()) {
        let mut r = seed;
        let mut next = || { r = r.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); ((r >> 33) % 17) as f32 - 8.0 };
        let a: Vec<f32> = (0..n).map(|_| next()).collect();
        let b: Vec<f32> = (0..n).map(|_| next()).collect();
        let want_dot: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        let want_sum: f32 = a.iter().sum();
        for s in levels() {
            prop_assert_eq!(kernels::dot(s, &a, &b), want_dot, "dot at {}", s.level());
            prop_assert_eq!(kernels::sum(s, &a), want_sum, "sum at {}", s.level());
        }
    }

    /// sum: tolerance 2e-6 * sum|x_i|.
    #[test]
    fn sum_matches_f64(x in values(len_strategy())) {
        let want: f64 = x.iter().map(|&v| v as f64).sum();
        let mag: f64 = x.iter().map(|&v| (v as f64).abs()).sum();
        for s in levels() {
            let got = kernels::sum(s, &x) as f64;
            prop_assert!((got - want).abs() <= 2e-6 * mag + 1e-30, "{}: got {got} want {want}", s.level());
        }
    }

    /// Element-wise arithmetic: one or two roundings, tolerance
    /// 2.5e-7 * (|first term| + |second term|) per element (FMA or not).
    #[test]
    fn elementwise_match_f64((x, y) in pair(), alpha in -10.0f32..10.0) {
        for s in levels() {
            let mut got = y.clone();
            kernels::axpy(s, alpha, &x, &mut got);
            let want: Vec<f64> = x.iter().zip(&y).map(|(&a, &b)| b as f64 + alpha as f64 * a as f64).collect();
            check_close("axpy", s, &got, &want, |i| 2.5e-7 * ((alpha * x[i]).abs() as f64 + y[i].abs() as f64));

            let mut out = vec![f32::NAN; x.len()];
            kernels::add(s, &x, &y, &mut out);
            let want: Vec<f64> = x.iter().zip(&y).map(|(&a, &b)| a as f64 + b as f64).collect();
            check_close("add", s, &out, &want, |i| 1.2e-7 * (x[i].abs() + y[i].abs()) as f64);

            let mut got = y.clone();
            kernels::add_assign(s, &mut got, &x);
            check_close("add_assign", s, &got, &want, |i| 1.2e-7 * (x[i].abs() + y[i].abs()) as f64);

            let mut got = y.clone();
            kernels::mul_assign(s, &mut got, &x);
            let want: Vec<f64> = x.iter().zip(&y).map(|(&a, &b)| a as f64 * b as f64).collect();
            check_close("mul_assign", s, &got, &want, |i| 1.2e-7 * want[i].abs());

            let mut got = y.clone();
            kernels::scale(s, &mut got, alpha);
            let want: Vec<f64> = y.iter().map(|&b| b as f64 * alpha as f64).collect();
            check_close("scale", s, &got, &want, |i| 1.2e-7 * want[i].abs());
        }
    }

    /// max and argmax are exact: the first index of the largest value.
    #[test]
    fn max_argmax_exact(x in values(len_strategy())) {
        let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let i = x.iter().position(|&v| v == m).unwrap();
        for s in levels() {
            prop_assert_eq!(kernels::max(s, &x), m, "max at {}", s.level());
            prop_assert_eq!(kernels::argmax(s, &x), i, "argmax at {}", s.level());
        }
    }

    /// Many ties (values from a handful of integers) and NaNs sprinkled in:
    /// argmax must return the first maximum and skip NaN.
    #[test]
    fn argmax_ties_and_nan(n in len_strategy(), seed in any::<u64>(), nan_every in 2usize..50) {
        let mut r = seed;
        let x: Vec<f32> = (0..n).map(|k| {
            r = r.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            if k % nan_every == 1 { f32::NAN } else { ((r >> 40) % 4) as f32 }
        }).collect();
        let m = x.iter().copied().filter(|v| !v.is_nan()).fold(f32::NEG_INFINITY, f32::max);
        let want = x.iter().position(|&v| v == m).unwrap_or(0);
        for s in levels() {
            prop_assert_eq!(kernels::argmax(s, &x), want, "argmax at {}", s.level());
            prop_assert_eq!(kernels::max(s, &x), m, "max at {}", s.level());
        }
    }

    /// softmax: per element |got - p| <= 1e-5 * p + 1e-12 (the f32
    /// subtraction x - max costs up to 4e-6 relative for |x - max| near 90;
    /// exp is ~2 ulp), and the probabilities sum to 1 within 1e-5.
    #[test]
    fn softmax_matches_f64(x in values(len_strategy())) {
        let want = softmax_ref(&x);
        for s in levels() {
            let mut got = x.clone();
            kernels::softmax(s, &mut got);
            check_close("softmax", s, &got, &want, |i| 1e-5 * want[i] + 1e-12);
            let total: f64 = got.iter().map(|&p| p as f64).sum();
            prop_assert!((total - 1.0).abs() <= 1e-5, "sum {total}");
        }
    }

    /// Masked rows: a random subset of -inf entries (at least one finite).
    #[test]
    fn softmax_masked(x in values(len_strategy()), seed in any::<u64>(), keep_one_in in 1u64..20) {
        let mut r = seed;
        let mut x = x;
        let n = x.len();
        for v in x.iter_mut() {
            r = r.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            if (r >> 33) % keep_one_in != 0 { *v = f32::NEG_INFINITY; }
        }
        x[(seed as usize) % n] = 0.5;
        let want = softmax_ref(&x);
        for s in levels() {
            let mut got = x.clone();
            kernels::softmax(s, &mut got);
            check_close("softmax masked", s, &got, &want, |i| 1e-5 * want[i] + 1e-12);
            for (g, v) in got.iter().zip(&x) {
                if *v == f32::NEG_INFINITY { prop_assert_eq!(*g, 0.0); }
            }
        }
    }

    /// softmax_scaled has the bits of scaling in place and then softmax, for
    /// any scale (positive, zero, negative, tiny or huge) and masked entries.
    #[test]
    fn softmax_scaled_is_scale_then_softmax(
        x in values(len_strategy()),
        scale in prop_oneof![-4.0f32..4.0, 1e-30f32..1e-20, 1e20f32..1e30, Just(0.0f32), Just(-0.0f32)],
        mask_every in 0usize..5,
    ) {
        let mut x = x;
        if mask_every > 0 {
            for v in x.iter_mut().step_by(mask_every + 1) { *v = f32::NEG_INFINITY; }
        }
        for s in levels() {
            let mut want: Vec<f32> = x.iter().map(|v| v * scale).collect();
            kernels::softmax(s, &mut want);
            let mut got = x.clone();
            kernels::softmax_scaled(s, &mut got, scale);
            let (g, w): (Vec<u32>, Vec<u32>) =
                (got.iter().map(|v| v.to_bits()).collect(), want.iter().map(|v| v.to_bits()).collect());
            prop_assert_eq!(g, w, "{} scale {}", s.level(), scale);
        }
    }

    /// log_sum_exp: |got - ref| <= 2e-6 * (1 + |ref|) (final f32 rounding plus
    /// the ~1e-6 relative error of the exp sum).
    #[test]
    fn log_sum_exp_matches_f64(x in values(len_strategy())) {
        let m = x.iter().map(|&v| v as f64).fold(f64::NEG_INFINITY, f64::max);
        let want = m + x.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln();
        for s in levels() {
            let got = kernels::log_sum_exp(s, &x) as f64;
            prop_assert!((got - want).abs() <= 2e-6 * (1.0 + want.abs()), "{}: got {got} want {want}", s.level());
        }
    }

    /// rms_norm: per element |got - ref| <= 2e-6 * |ref| (three f32 roundings
    /// and the sum of squares' relative error).
    #[test]
    fn rms_norm_matches_f64((x, w) in pair(), eps in prop_oneof![Just(1e-6f32), Just(1e-5)]) {
        let n = x.len() as f64;
        let ms = x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / n;
        let inv = 1.0 / (ms + eps as f64).sqrt();
        let want: Vec<f64> = x.iter().zip(&w).map(|(&a, &b)| a as f64 * inv * b as f64).collect();
        for s in levels() {
            let mut out = vec![f32::NAN; x.len()];
            kernels::rms_norm(s, &x, &w, eps, &mut out);
            check_close("rms_norm", s, &out, &want, |i| 2e-6 * want[i].abs() + 1e-30);
        }
    }

    /// layer_norm, including inputs with a large common offset (mean >> std,
    /// where E[x^2] - E[x]^2 would cancel catastrophically). Per element
    /// |got - ref| <= 1e-6 * ((|x| + |mean| + mean|x|) * inv * |w| + |b|):
    /// the rounding of x - mean is relative to |x| + |mean|, and the computed
    /// mean itself is only accurate relative to mean|x| (cancellation in the
    /// sum).
    #[test]
    fn layer_norm_matches_f64(
        (x, w) in pair(),
        offset in prop_oneof![Just(0.0f32), Just(1e3), Just(-3e4)],
        with_bias in any::<bool>(),
    ) {
        let x: Vec<f32> = x.iter().map(|&v| v * 1e-3 + offset).collect();
        let b: Vec<f32> = w.iter().map(|&v| v * 0.5 - 0.25).collect();
        let eps = 1e-12f32;
        let n = x.len() as f64;
        let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
        let mean_abs = x.iter().map(|&v| (v as f64).abs()).sum::<f64>() / n;
        let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
        let inv = 1.0 / (var + eps as f64).sqrt();
        let bias = if with_bias { Some(&b[..]) } else { None };
        let want: Vec<f64> = (0..x.len()).map(|i| {
            (x[i] as f64 - mean) * inv * w[i] as f64 + bias.map_or(0.0, |b| b[i] as f64)
        }).collect();
        for s in levels() {
            let mut out = vec![f32::NAN; x.len()];
            kernels::layer_norm(s, &x, &w, bias, eps, &mut out);
            check_close("layer_norm", s, &out, &want, |i| {
                1e-6 * ((x[i].abs() as f64 + mean.abs() + mean_abs) * inv * w[i].abs() as f64
                    + bias.map_or(0.0, |b| b[i].abs() as f64)) + 1e-30
            });
        }
    }

    /// silu and fused silu_mul: |got - ref| <= 1e-6 * |ref| + 1e-30 (no
    /// overflow or NaN for large |x|; exp(-x) overflowing gives -0).
    #[test]
    fn silu_matches_f64((x, up) in pair()) {
        let want: Vec<f64> = x.iter().map(|&v| silu_ref(v as f64)).collect();
        for s in levels() {
            let mut got = x.clone();
            kernels::silu(s, &mut got);
            check_close("silu", s, &got, &want, |i| 1e-6 * want[i].abs() + 1e-30);
            let mut got = x.clone();
            kernels::silu_mul(s, &mut got, &up);
            let want2: Vec<f64> = want.iter().zip(&up).map(|(&a, &b)| a * b as f64).collect();
            check_close("silu_mul", s, &got, &want2, |i| 1.2e-6 * want2[i].abs() + 1e-30);
        }
    }

    /// gelu_tanh and gelu_tanh_mul against the f64 tanh formula. The f32
    /// argument u = sqrt(2/pi)(x + 0.044715 x^3) carries ~3 roundings, which
    /// exp turns into a relative error of ~3e-7 * |2u|; hence
    /// |got - ref| <= (2e-6 + 3e-7 * |2u|) * |ref| + 1e-30.
    #[test]
    fn gelu_tanh_matches_f64((x, up) in pair()) {
        let want: Vec<f64> = x.iter().map(|&v| gelu_tanh_ref(v as f64)).collect();
        let tol = |i: usize, w: f64| {
            let v = x[i] as f64;
            let u2 = (2.0 * 0.7978845608028654 * (v + 0.044715 * v * v * v)).abs();
            (2e-6 + 3e-7 * u2) * w.abs() + 1e-30
        };
        for s in levels() {
            let mut got = x.clone();
            kernels::gelu_tanh(s, &mut got);
            check_close("gelu_tanh", s, &got, &want, |i| tol(i, want[i]));
            let mut got = x.clone();
            kernels::gelu_tanh_mul(s, &mut got, &up);
            let want2: Vec<f64> = want.iter().zip(&up).map(|(&a, &b)| a * b as f64).collect();
            check_close("gelu_tanh_mul", s, &got, &want2, |i| tol(i, want2[i]));
        }
    }

    /// gelu_erf against libm's f64 erfc. The rounding of x / sqrt 2 in f32
    /// becomes a relative error of ~1.2e-7 * x^2 / 2 in exp(-x^2 / 2), hence
    /// |got - ref| <= (1.5e-6 + 1e-7 * x^2) * |ref| + 1e-30.
    #[test]
    fn gelu_erf_matches_f64(x in values(len_strategy())) {
        let want: Vec<f64> = x.iter().map(|&v| gelu_erf_ref(v as f64)).collect();
        for s in levels() {
            let mut got = x.clone();
            kernels::gelu_erf(s, &mut got);
            check_close("gelu_erf", s, &got, &want, |i| {
                (1.5e-6 + 1e-7 * (x[i] as f64).powi(2)) * want[i].abs() + 1e-30
            });
        }
    }
}

fn softmax_ref(x: &[f32]) -> Vec<f64> {
    let m = x
        .iter()
        .map(|&v| v as f64)
        .fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = x.iter().map(|&v| (v as f64 - m).exp()).collect();
    let t: f64 = e.iter().sum();
    e.iter().map(|v| v / t).collect()
}

fn silu_ref(x: f64) -> f64 {
    x / (1.0 + (-x).exp())
}

/// `0.5 x (1 + tanh(u))`, written as the identical `x / (1 + exp(-2u))` so
/// that the f64 reference itself does not cancel for negative `u`.
fn gelu_tanh_ref(x: f64) -> f64 {
    let u = 0.7978845608028654 * (x + 0.044715 * x * x * x);
    x / (1.0 + (-2.0 * u).exp())
}

fn gelu_erf_ref(x: f64) -> f64 {
    0.5 * x * libm::erfc(-x / std::f64::consts::SQRT_2)
}

/// A dense sweep over the interesting range of the activations (small,
/// moderate and the saturation regions), every level: no NaN, and the same
/// tolerances as the property tests.
#[test]
fn activations_sweep_and_saturation() {
    let mut x: Vec<f32> = (-20000..=20000).map(|i| i as f32 * 1e-3).collect();
    x.extend([
        -1e30, -1e6, -200.0, -100.0, -88.8, -87.5, 87.5, 88.8, 100.0, 1e6, 1e30, 0.0, -0.0, 1e-30,
        -1e-30, 1e-7,
    ]);
    for s in Simd::available() {
        let mut g = x.clone();
        kernels::silu(s, &mut g);
        for (i, (&v, &r)) in x.iter().zip(&g).enumerate() {
            let want = silu_ref(v as f64);
            assert!(!r.is_nan(), "silu NaN at {v}");
            assert!(
                (r as f64 - want).abs() <= 1e-6 * want.abs() + 1e-30,
                "silu {} at {i} x={v}: {r} vs {want}",
                s.level()
            );
        }
        let mut g = x.clone();
        kernels::gelu_tanh(s, &mut g);
        for (&v, &r) in x.iter().zip(&g) {
            let want = gelu_tanh_ref(v as f64);
            let vv = (v as f64).clamp(-1e5, 1e5);
            let u2 = (2.0 * 0.7978845608028654 * (vv + 0.044715 * vv * vv * vv)).abs();
            assert!(!r.is_nan(), "gelu_tanh NaN at {v}");
            assert!(
                (r as f64 - want).abs() <= (2e-6 + 3e-7 * u2) * want.abs() + 1e-30,
                "gelu_tanh {} x={v}: {r} vs {want}",
                s.level()
            );
        }
        let mut g = x.clone();
        kernels::gelu_erf(s, &mut g);
        for (&v, &r) in x.iter().zip(&g) {
            let want = gelu_erf_ref(v as f64);
            assert!(!r.is_nan(), "gelu_erf NaN at {v}");
            let v2 = (v as f64).powi(2).min(1e6);
            assert!(
                (r as f64 - want).abs() <= (1.5e-6 + 1e-7 * v2) * want.abs() + 1e-30,
                "gelu_erf {} x={v}: {r} vs {want}",
                s.level()
            );
        }
        // NaN propagates through the activations.
        for f in [kernels::silu, kernels::gelu_tanh, kernels::gelu_erf] {
            let mut v = vec![f32::NAN; 19];
            f(s, &mut v);
            assert!(v.iter().all(|r| r.is_nan()), "NaN lost at {}", s.level());
        }
    }
}

#[test]
fn softmax_special_rows() {
    for s in Simd::available() {
        for n in [1usize, 7, 16, 17, 33, 1000, 4097] {
            // All -inf except one: exactly one-hot.
            for hot in [0, n / 2, n - 1] {
                let mut x = vec![f32::NEG_INFINITY; n];
                x[hot] = -3.5;
                kernels::softmax(s, &mut x);
                for (i, &p) in x.iter().enumerate() {
                    assert_eq!(
                        p,
                        if i == hot { 1.0 } else { 0.0 },
                        "{} n={n} hot={hot}",
                        s.level()
                    );
                }
            }
            // Fully masked row: zeros, no NaN.
            let mut x = vec![f32::NEG_INFINITY; n];
            kernels::softmax(s, &mut x);
            assert!(x.iter().all(|&p| p == 0.0), "{} n={n}", s.level());
            assert_eq!(
                kernels::log_sum_exp(s, &vec![f32::NEG_INFINITY; n]),
                f32::NEG_INFINITY
            );
            // Equal values: uniform.
            let mut x = vec![1e4f32; n];
            kernels::softmax(s, &mut x);
            for &p in &x {
                assert!(
                    (p as f64 - 1.0 / n as f64).abs() <= 1e-6 / n as f64,
                    "{} n={n}",
                    s.level()
                );
            }
        }
        let mut empty: [f32; 0] = [];
        kernels::softmax(s, &mut empty);
        assert_eq!(kernels::max(s, &[]), f32::NEG_INFINITY);
        assert_eq!(kernels::argmax(s, &[]), 0);
        assert_eq!(kernels::sum(s, &[]), 0.0);
        assert_eq!(kernels::dot(s, &[], &[]), 0.0);
        assert_eq!(kernels::argmax(s, &[f32::NAN, f32::NAN]), 0);
        assert_eq!(
            kernels::argmax(s, &[f32::NAN, f32::NEG_INFINITY, f32::NEG_INFINITY]),
            1
        );
    }
}

/// exp itself (through softmax of a two-element row [x, 0] would hide it, so
/// check log_sum_exp and softmax over a range wide enough to hit subnormal
/// results): exp(d) for d in [-103, 0] relative error <= 4 ulp while normal.
#[test]
fn exp_range_through_softmax() {
    for s in Simd::available() {
        for k in 0..=2060 {
            let d = -(k as f32) * 0.05;
            let mut x = [0.0f32, d];
            kernels::softmax(s, &mut x);
            let e = (d as f64).exp();
            let want1 = e / (1.0 + e);
            let err = (x[1] as f64 - want1).abs();
            let tol = if want1 > 1.2e-38 { 5e-7 * want1 } else { 3e-45 };
            assert!(err <= tol, "{} d={d}: {} vs {want1}", s.level(), x[1]);
        }
    }
}

#[test]
#[should_panic(expected = "length mismatch")]
fn mismatched_lengths_panic() {
    kernels::dot(Simd::detect(), &[1.0, 2.0], &[1.0]);
}

proptest! {
    #![proptest_config(cfg())]

    /// dot_rows and axpy_rows (attention's score and value loops): bit for bit
    /// what dot and axpy give row by row, and close to an f64 reference.
    #[test]
    fn row_batched_dot_and_axpy_match_the_single_row_kernels(
        d in prop_oneof![Just(1usize), 1usize..40, Just(64), Just(256)],
        n in prop_oneof![Just(1usize), 1usize..70],
        seed in any::<u64>(),
    ) {
        let mut r = seed;
        let mut next = || { r = r.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); ((r >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0 };
        let q: Vec<f32> = (0..d).map(|_| next()).collect();
        let rows: Vec<f32> = (0..n * d).map(|_| next()).collect();
        let w: Vec<f32> = (0..n).map(|_| next()).collect();
        for s in levels() {
            let mut got = vec![0.0; n];
            kernels::dot_rows(s, &q, &rows, &mut got);
            for (j, row) in rows.chunks_exact(d).enumerate() {
                prop_assert_eq!(got[j].to_bits(), kernels::dot(s, &q, row).to_bits(), "dot_rows row {} at {}", j, s.level());
                let want: f64 = q.iter().zip(row).map(|(&a, &b)| a as f64 * b as f64).sum();
                let mag: f64 = q.iter().zip(row).map(|(&a, &b)| (a as f64 * b as f64).abs()).sum();
                prop_assert!((got[j] as f64 - want).abs() <= 2e-6 * mag + 1e-30);
            }
            let mut batched = vec![0.5f32; d];
            kernels::axpy_rows(s, &w, &rows, &mut batched);
            let mut one_by_one = vec![0.5f32; d];
            for (&a, row) in w.iter().zip(rows.chunks_exact(d)) {
                kernels::axpy(s, a, row, &mut one_by_one);
            }
            prop_assert_eq!(&batched, &one_by_one, "axpy_rows at {}", s.level());
            let want: Vec<f64> = (0..d).map(|i| 0.5 + (0..n).map(|j| w[j] as f64 * rows[j * d + i] as f64).sum::<f64>()).collect();
            check_close("axpy_rows", s, &batched, &want, |_| 1e-5 * (n as f64 + 1.0));
        }
    }
}

proptest! {
    #![proptest_config(cfg())]

    /// axpy_rows_many (several queries' weighted sums of the same values):
    /// each output row bit for bit what axpy_rows gives it alone, with strided
    /// weights, values and outputs, and close to an f64 reference; values
    /// up to 130 KB, past the size from which they are fetched ahead.
    #[test]
    fn many_row_axpy_matches_one_row_at_a_time(
        d in prop_oneof![Just(1usize), 1usize..40, Just(32), Just(64), Just(80)],
        n in prop_oneof![Just(1usize), 1usize..70, 200usize..400],
        nr in 1usize..10,
        pad in 0usize..5,
        seed in any::<u64>(),
    ) {
        let mut r = seed;
        let mut next = || { r = r.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); ((r >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0 };
        let (w_ld, y_ld, rows_ld) = (n + pad, d + 2 * pad + 1, d + pad);
        let strided: Vec<f32> = (0..n * rows_ld).map(|_| next()).collect();
        let rows: Vec<f32> = strided.chunks(rows_ld).flat_map(|r| r[..d].to_vec()).collect();
        let w: Vec<f32> = (0..nr * w_ld).map(|_| next()).collect();
        let y0: Vec<f32> = (0..nr * y_ld).map(|_| next()).collect();
        for s in levels() {
            let mut got = y0.clone();
            let values = MatRef::with_stride(&strided, n, d, rows_ld).unwrap();
            kernels::axpy_rows_many(s, &w, w_ld, nr, values, &mut got, y_ld);
            for i in 0..nr {
                let mut alone = y0[i * y_ld..i * y_ld + d].to_vec();
                kernels::axpy_rows(s, &w[i * w_ld..i * w_ld + n], &rows, &mut alone);
                let row = &got[i * y_ld..i * y_ld + d];
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                prop_assert_eq!(bits(row), bits(&alone), "row {} at {}", i, s.level());
                // Padding between output rows is left alone.
                prop_assert_eq!(bits(&got[i * y_ld + d..(i + 1) * y_ld]), bits(&y0[i * y_ld + d..(i + 1) * y_ld]));
                let want: Vec<f64> = (0..d).map(|c| y0[i * y_ld + c] as f64 + (0..n).map(|j| w[i * w_ld + j] as f64 * rows[j * d + c] as f64).sum::<f64>()).collect();
                check_close("axpy_rows_many", s, row, &want, |_| 1e-5 * (n as f64 + 1.0));
            }
        }
    }
}
