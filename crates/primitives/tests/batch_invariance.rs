//! Batch invariance of the exact products: a row of `X · Wᵀ` has the same bits
//! whatever number of rows it is computed with (alone, inside a prompt, packed
//! with other sequences), at every SIMD level and thread count, for f32 weights
//! (`matmul` / `matvec`) and for every weight format in exact mode
//! (`matmul_q` / `matvec_q`); plus the kernels against float64 references at
//! sizes around the SIMD widths and tile sizes (1, below a vector, ragged).
//!
//! Tolerance against the f64 reference: `|y - r| <= 1e-5 * sum |x||w| + 1e-30`
//! per element (see tests/matmul.rs: one accumulator of `L` lanes has error
//! well below `k / L * 2^-24 * sum |x||w|`, and `k <= 600` here).

use patchbay_primitives::matmul::{matmul, matvec};
use patchbay_primitives::quant::{
    dequantize_row_at, exact_rounding_bound, exact_rounds_activations, matmul_q, matvec_q,
    matvecs_q, QMatrix,
};
use patchbay_primitives::{DType, MatRef, Simd, Threads};
use proptest::prelude::*;

const REL_TOL: f64 = 1e-5;

const ALL: [DType; 11] = [
    DType::F32,
    DType::F16,
    DType::BF16,
    DType::Q4_0,
    DType::Q4_1,
    DType::Q5_0,
    DType::Q5_1,
    DType::Q8_0,
    DType::Q4_K,
    DType::Q5_K,
    DType::Q6_K,
];

/// A tiny deterministic generator (proptest draws the seeds).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
    fn normal(&mut self) -> f32 {
        let (a, b) = (self.unit().max(1e-7), self.unit());
        (-2.0 * a.ln()).sqrt() * (std::f32::consts::TAU * b).cos()
    }
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.normal()).collect()
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// `rows` rows of `dtype` with `cols` values each: random bytes with finite,
/// modest f16 scales (or random floats for the float formats).
fn random_weights(rng: &mut Rng, dtype: DType, rows: usize, cols: usize) -> Vec<u8> {
    let n_blocks = rows * cols / dtype.block_len();
    let bb = dtype.block_bytes();
    let mut v: Vec<u8> = (0..n_blocks * bb).map(|_| rng.next() as u8).collect();
    let offsets: &[usize] = match dtype {
        DType::Q4_0 | DType::Q5_0 | DType::Q8_0 => &[0],
        DType::Q4_1 | DType::Q5_1 | DType::Q4_K | DType::Q5_K => &[0, 2],
        DType::Q6_K => &[208],
        DType::F16 | DType::BF16 => {
            for c in v.chunks_exact_mut(2) {
                let x = rng.normal();
                let bits = if dtype == DType::F16 {
                    half::f16::from_f32(x).to_bits()
                } else {
                    half::bf16::from_f32(x).to_bits()
                };
                c.copy_from_slice(&bits.to_le_bytes());
            }
            &[]
        }
        DType::F32 => {
            for c in v.chunks_exact_mut(4) {
                c.copy_from_slice(&rng.normal().to_le_bytes());
            }
            &[]
        }
        _ => unreachable!(),
    };
    for b in v.chunks_exact_mut(bb) {
        for &o in offsets {
            let s = half::f16::from_f32(rng.normal() * 0.01).to_bits();
            b[o..o + 2].copy_from_slice(&s.to_le_bytes());
        }
    }
    v
}

/// Values per row: `blocks` blocks for the block formats, any count (odd,
/// below a vector, ragged) for the float formats.
fn cols_for(dtype: DType, blocks: usize, odd: usize) -> usize {
    if dtype.is_quantized() {
        blocks * dtype.block_len()
    } else {
        odd
    }
}

/// f64 reference of `x (m x k) · wᵀ (n x k)` and the bound `sum |x||w|`.
fn reference(x: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> (Vec<f64>, Vec<f64>) {
    let mut y = vec![0.0; m * n];
    let mut b = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            let (mut acc, mut abs) = (0.0f64, 0.0f64);
            for l in 0..k {
                let p = x[i * k + l] as f64 * w[j * k + l] as f64;
                acc += p;
                abs += p.abs();
            }
            y[i * n + j] = acc;
            b[i * n + j] = abs;
        }
    }
    (y, b)
}

fn assert_close(got: &[f32], want: &[f64], bound: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (e, ((&g, &r), &b)) in got.iter().zip(want).zip(bound).enumerate() {
        let err = (g as f64 - r).abs();
        assert!(
            err <= REL_TOL * b + 1e-30,
            "{what}: element {e}: {g} vs {r} (err {err:e}, bound {b:e})"
        );
    }
}

/// `bound` widened by what rounding the activations to int16 may add at
/// level `s` (relative to `REL_TOL`, as `assert_close` scales it).
#[allow(clippy::too_many_arguments)]
fn with_act_rounding(
    s: Simd,
    dtype: DType,
    x: &[f32],
    w: &[f32],
    m: usize,
    n: usize,
    k: usize,
    bound: &[f64],
) -> Vec<f64> {
    let mut b = bound.to_vec();
    for i in 0..m {
        for j in 0..n {
            let extra =
                exact_rounding_bound(s, dtype, &x[i * k..(i + 1) * k], &w[j * k..(j + 1) * k]);
            b[i * n + j] += extra / REL_TOL;
        }
    }
    b
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|f| f.to_bits()).collect()
}

fn f32_product(
    s: Simd,
    t: &Threads,
    x: &[f32],
    m: usize,
    w: &[f32],
    n: usize,
    k: usize,
) -> Vec<f32> {
    let mut y = vec![f32::NAN; m * n];
    let xm = MatRef::new(x, m, k).unwrap();
    matmul(s, t, xm, MatRef::new(w, n, k).unwrap(), &mut y).unwrap();
    y
}

#[allow(clippy::too_many_arguments)]
fn q_product(
    s: Simd,
    t: &Threads,
    dtype: DType,
    w: &[u8],
    n: usize,
    k: usize,
    x: &[f32],
    m: usize,
) -> Vec<f32> {
    let mut y = vec![f32::NAN; m * n];
    let xm = MatRef::new(x, m, k).unwrap();
    matmul_q(s, t, dtype, w, n, k, xm, &mut y).unwrap();
    y
}

fn q_matvec(
    s: Simd,
    t: &Threads,
    dtype: DType,
    w: &[u8],
    n: usize,
    k: usize,
    x: &[f32],
) -> Vec<f32> {
    let mut y = vec![f32::NAN; n];
    matvec_q(s, t, dtype, w, n, k, x, &mut y).unwrap();
    y
}

/// Row counts to embed a row in: 1, around the tile heights (2, 3, 4, 5) and
/// larger ragged counts.
const OTHER_M: [usize; 7] = [2, 3, 4, 5, 7, 9, 17];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// `matvecs_q` gives each matrix the bits of `matvec_q` alone, at every
    /// level and for 1 and 2 threads: matrices of one format (one pass over
    /// the pool, tasks across the matrices' boundaries) or of several
    /// (Q4_K beside Q6_K as in Q4_K_M files, or any mix).
    #[test]
    fn products_of_one_input_have_the_bits_of_each_alone(seed in any::<u64>(), count in 1usize..5, mixed in any::<bool>(), superblocks in 1usize..3) {
        let mut rng = Rng(seed);
        let k = superblocks * 256;
        let x = rng.vec(k);
        // The block formats.
        let quantised: Vec<DType> = ALL.into_iter().filter(|d| d.is_quantized()).collect();
        let first = quantised[rng.below(quantised.len())];
        let mats: Vec<(DType, usize, Vec<u8>)> = (0..count)
            .map(|_| {
                let dtype = if mixed { quantised[rng.below(quantised.len())] } else { first };
                let rows = 1 + rng.below(150);
                (dtype, rows, random_weights(&mut rng, dtype, rows, k))
            })
            .collect();
        let views: Vec<QMatrix<'_>> = mats
            .iter()
            .map(|(dtype, rows, w)| QMatrix { dtype: *dtype, w, rows: *rows })
            .collect();
        let total: usize = mats.iter().map(|m| m.1).sum();
        for s in Simd::available() {
            let alone: Vec<f32> = mats
                .iter()
                .flat_map(|(dtype, rows, w)| q_matvec(s, &Threads::single(), *dtype, w, *rows, k, &x))
                .collect();
            for t in [Threads::single(), Threads::new(2)] {
                let mut y = vec![f32::NAN; total];
                matvecs_q(s, &t, &views, &x, &mut y).unwrap();
                prop_assert_eq!(bits(&y), bits(&alone), "{:?} at {} with {} threads",
                    mats.iter().map(|m| (m.0, m.1)).collect::<Vec<_>>(), s.level(), t.count());
                let mut short = vec![0.0; total - 1];
                prop_assert!(matvecs_q(s, &t, &views, &x, &mut short).is_err());
                prop_assert!(matvecs_q(s, &t, &views, &x[1..], &mut y).is_err());
            }
        }
    }

    /// f32 weights: every row of the m-row product, at every level and for 1
    /// and 2 threads, has the bits of the same row computed alone by `matvec`
    /// and by a one-row `matmul`, and inside products of other row counts (at
    /// another position); all within the tolerance of the f64 reference.
    #[test]
    fn f32_rows_are_batch_invariant(seed in any::<u64>(), m in 1usize..12, n in 1usize..70, k in 1usize..600) {
        let mut rng = Rng(seed);
        let x = rng.vec(m * k);
        let w = rng.vec(n * k);
        let (want, bound) = reference(&x, &w, m, n, k);
        let wm = MatRef::new(&w, n, k).unwrap();
        for s in Simd::available() {
            for t in [Threads::single(), Threads::new(2)] {
                let y = f32_product(s, &t, &x, m, &w, n, k);
                assert_close(&y, &want, &bound, &format!("matmul {m}x{n}x{k} at {}", s.level()));
                for i in 0..m {
                    let row = &x[i * k..(i + 1) * k];
                    let mut alone = vec![f32::NAN; n];
                    matvec(s, &t, wm, row, &mut alone).unwrap();
                    prop_assert_eq!(bits(&alone), bits(&y[i * n..(i + 1) * n]),
                        "matvec vs row {} of {}x{}x{} at {}", i, m, n, k, s.level());
                    let one = f32_product(s, &t, row, 1, &w, n, k);
                    prop_assert_eq!(bits(&one), bits(&alone));
                    // The row inside another batch, at a random position.
                    let other = OTHER_M[rng.below(OTHER_M.len())];
                    let at = rng.below(other);
                    let mut xb = rng.vec(other * k);
                    xb[at * k..(at + 1) * k].copy_from_slice(row);
                    let yb = f32_product(s, &t, &xb, other, &w, n, k);
                    prop_assert_eq!(bits(&yb[at * n..(at + 1) * n]), bits(&alone),
                        "row {} as row {} of {}, n={} k={} at {}", i, at, other, n, k, s.level());
                }
            }
        }
    }

    /// Every weight format in exact mode: each row of `matmul_q` (m rows) has
    /// the bits of `matvec_q` (exact) of that row, and of the same row inside
    /// products of other row counts (the fused small-batch path and the
    /// dequantised-panel path), at every level and for 1 and 2 threads; and
    /// it is the f32 kernel's result on the dequantised matrix, bit for bit.
    #[test]
    fn quantised_rows_are_batch_invariant(seed in any::<u64>(), m in 1usize..10, n in 1usize..80, blocks in 1usize..3, odd in 1usize..300) {
        let mut rng = Rng(seed);
        for dtype in ALL {
            let k = cols_for(dtype, blocks, odd);
            let w = random_weights(&mut rng, dtype, n, k);
            let x = rng.vec(m * k);
            let mut wf = vec![0.0f32; n * k];
            dequantize_row_at(Simd::scalar(), dtype, &w, &mut wf).unwrap();
            let (want, bound) = reference(&x, &wf, m, n, k);
            for s in Simd::available() {
                let t1 = Threads::single();
                let y = q_product(s, &t1, dtype, &w, n, k, &x, m);
                if exact_rounds_activations(s, dtype) {
                    let bound = with_act_rounding(s, dtype, &x, &wf, m, n, k, &bound);
                    assert_close(&y, &want, &bound, &format!("matmul_q {dtype} {m}x{n}x{k} at {}", s.level()));
                } else {
                    assert_close(&y, &want, &bound, &format!("matmul_q {dtype} {m}x{n}x{k} at {}", s.level()));
                    prop_assert_eq!(bits(&y), bits(&f32_product(s, &t1, &x, m, &wf, n, k)),
                        "{} matmul_q vs matmul on dequantised weights at {}", dtype, s.level());
                }
                let y2 = q_product(s, &Threads::new(2), dtype, &w, n, k, &x, m);
                prop_assert_eq!(bits(&y), bits(&y2), "{} 1 vs 2 threads", dtype);
                for i in 0..m {
                    let row = &x[i * k..(i + 1) * k];
                    let alone = q_matvec(s, &t1, dtype, &w, n, k, row);
                    prop_assert_eq!(bits(&alone), bits(&y[i * n..(i + 1) * n]),
                        "{} matvec_q vs row {} of {}x{}x{} at {}", dtype, i, m, n, k, s.level());
                    prop_assert_eq!(bits(&q_matvec(s, &Threads::new(2), dtype, &w, n, k, row)), bits(&alone));
                    let one = q_product(s, &t1, dtype, &w, n, k, row, 1);
                    prop_assert_eq!(bits(&one), bits(&alone));
                    let other = OTHER_M[rng.below(OTHER_M.len())];
                    let at = rng.below(other);
                    let mut xb = rng.vec(other * k);
                    xb[at * k..(at + 1) * k].copy_from_slice(row);
                    let yb = q_product(s, &t1, dtype, &w, n, k, &xb, other);
                    prop_assert_eq!(bits(&yb[at * n..(at + 1) * n]), bits(&alone),
                        "{} row {} as row {} of {}, n={} k={} at {}", dtype, i, at, other, n, k, s.level());
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    /// Rows long enough to be cut into steps along `k` with the accumulators
    /// kept in memory between steps (several rows of `X`): still the bits of
    /// each row alone, at every level, for f32 and block-format weights, and
    /// within the tolerance of the f64 reference.
    #[test]
    fn long_rows_are_batch_invariant(seed in any::<u64>(), m in 5usize..12, n in 1usize..40, kb in 25usize..45, odd in 0usize..32) {
        let mut rng = Rng(seed);
        let t = Threads::new(2);
        for dtype in [DType::F32, DType::Q8_0, DType::Q4_1] {
            let k = if dtype == DType::F32 { kb * 32 + odd } else { kb * 32 };
            let w = random_weights(&mut rng, dtype, n, k);
            let x = rng.vec(m * k);
            let mut wf = vec![0.0f32; n * k];
            dequantize_row_at(Simd::scalar(), dtype, &w, &mut wf).unwrap();
            let (want, bound) = reference(&x, &wf, m, n, k);
            for s in Simd::available() {
                let y = q_product(s, &t, dtype, &w, n, k, &x, m);
                if exact_rounds_activations(s, dtype) {
                    let bound = with_act_rounding(s, dtype, &x, &wf, m, n, k, &bound);
                    assert_close(&y, &want, &bound, &format!("{dtype} {m}x{n}x{k} at {}", s.level()));
                } else {
                    assert_close(&y, &want, &bound, &format!("{dtype} {m}x{n}x{k} at {}", s.level()));
                    prop_assert_eq!(bits(&y), bits(&f32_product(s, &t, &x, m, &wf, n, k)));
                }
                for i in 0..m {
                    let alone = q_matvec(s, &t, dtype, &w, n, k, &x[i * k..(i + 1) * k]);
                    prop_assert_eq!(bits(&alone), bits(&y[i * n..(i + 1) * n]),
                        "{} row {} of {}x{}x{} at {}", dtype, i, m, n, k, s.level());
                }
            }
        }
    }
}

/// Model-sized shapes (SmolLM2's 576 and 1536 widths, a ragged row count),
/// where the blocking over weight rows and the dequantised panels differ from
/// the small random cases: a row computed alone equals its row in a prompt.
#[test]
fn rows_are_batch_invariant_at_model_shapes() {
    let mut rng = Rng(7);
    let t = Threads::new(2);
    for (n, k) in [(576, 1536), (1536, 576), (200, 4864)] {
        let m = 13;
        let x = rng.vec(m * k);
        let w = rng.vec(n * k);
        for s in Simd::available() {
            let y = f32_product(s, &t, &x, m, &w, n, k);
            for dtype in [DType::Q4_1, DType::Q4_K, DType::Q6_K, DType::Q8_0] {
                if k % dtype.block_len() != 0 {
                    continue;
                }
                let wq = random_weights(&mut rng, dtype, n, k);
                let yq = q_product(s, &t, dtype, &wq, n, k, &x, m);
                for i in [0, 5, 12] {
                    let row = &x[i * k..(i + 1) * k];
                    let alone = q_matvec(s, &t, dtype, &wq, n, k, row);
                    assert_eq!(
                        bits(&alone),
                        bits(&yq[i * n..(i + 1) * n]),
                        "{dtype} {n}x{k} row {i} at {}",
                        s.level()
                    );
                }
            }
            for i in [0, 6, 12] {
                let mut alone = vec![0.0; n];
                matvec(
                    s,
                    &t,
                    MatRef::new(&w, n, k).unwrap(),
                    &x[i * k..(i + 1) * k],
                    &mut alone,
                )
                .unwrap();
                assert_eq!(
                    bits(&alone),
                    bits(&y[i * n..(i + 1) * n]),
                    "f32 {n}x{k} row {i} at {}",
                    s.level()
                );
            }
        }
    }
}

/// Prompts of hundreds of rows (encoder batches), cut into blocks of rows as
/// well as of weight rows, with rows long and short: every row equals the row
/// alone, at every level and thread count.
#[test]
fn many_rows_are_batch_invariant() {
    let mut rng = Rng(11);
    for (m, n, k) in [(300, 70, 384), (97, 45, 1536), (261, 9, 100)] {
        let x = rng.vec(m * k);
        let w = rng.vec(n * k);
        for s in Simd::available() {
            let y = f32_product(s, &Threads::new(2), &x, m, &w, n, k);
            let y1 = f32_product(s, &Threads::single(), &x, m, &w, n, k);
            assert_eq!(
                bits(&y),
                bits(&y1),
                "{m}x{n}x{k} 1 vs 2 threads at {}",
                s.level()
            );
            let (want, bound) = reference(&x, &w, m, n, k);
            assert_close(
                &y,
                &want,
                &bound,
                &format!("matmul {m}x{n}x{k} at {}", s.level()),
            );
            for i in (0..m).step_by(37).chain([m - 1]) {
                let mut alone = vec![0.0; n];
                matvec(
                    s,
                    &Threads::new(2),
                    MatRef::new(&w, n, k).unwrap(),
                    &x[i * k..(i + 1) * k],
                    &mut alone,
                )
                .unwrap();
                assert_eq!(
                    bits(&alone),
                    bits(&y[i * n..(i + 1) * n]),
                    "f32 {m}x{n}x{k} row {i} at {}",
                    s.level()
                );
            }
        }
    }
}

/// Rows of zero length: every product is zero (no output left unwritten).
#[test]
fn empty_rows_give_zeros() {
    let t = Threads::new(2);
    for s in Simd::available() {
        for m in [1, 3, 9] {
            let x: Vec<f32> = Vec::new();
            let xm = MatRef::new(&x, m, 0).unwrap();
            let mut y = vec![f32::NAN; m * 5];
            matmul_q(s, &t, DType::F32, &[], 5, 0, xm, &mut y).unwrap();
            assert!(y.iter().all(|v| *v == 0.0), "matmul_q m={m}: {y:?}");
            let mut y = vec![f32::NAN; m * 5];
            matmul(s, &t, xm, MatRef::new(&x, 5, 0).unwrap(), &mut y).unwrap();
            assert!(y.iter().all(|v| *v == 0.0), "matmul m={m}: {y:?}");
        }
        let mut y = vec![f32::NAN; 5];
        matvec_q(s, &t, DType::F32, &[], 5, 0, &[], &mut y).unwrap();
        assert!(y.iter().all(|v| *v == 0.0), "matvec_q: {y:?}");
    }
}
