//! GGML block formats: bit-exact dequantisation against gguf-py fixtures
//! (scripts/gen-quant-fixtures.py), dot products at every SIMD level against
//! float64 references, and thread-count independence of matvec/matmul.

use patchbay_primitives::quant::{
    dequantize_row, dequantize_row_at, dot_row, matmul_q, matvec_q, quantize_row,
};
use patchbay_primitives::{DType, MatRef, Simd, Threads};
use proptest::prelude::*;
use std::path::PathBuf;

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

fn fixture(name: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/quant")
        .join(name);
    std::fs::read(&p)
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/gen-quant-fixtures.py)", p.display()))
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[test]
fn dequantize_matches_gguf_py_bit_exactly() {
    for dtype in ALL.iter().copied().filter(|d| *d != DType::F32) {
        let blocks = fixture(&format!("{}.blocks", dtype.name()));
        let want = f32s(&fixture(&format!("{}.deq", dtype.name())));
        assert_eq!(dtype.bytes_for(want.len()), Some(blocks.len()), "{dtype}");
        for s in Simd::available() {
            let mut got = vec![f32::NAN; want.len()];
            dequantize_row_at(s, dtype, &blocks, &mut got).unwrap();
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(
                    g.to_bits(),
                    w.to_bits(),
                    "{dtype} at {s:?}: value {i}: {g} vs {w}"
                );
            }
            // Misaligned source: the kernels read bytes, never typed references.
            let mut shifted = vec![0u8; blocks.len() + 1];
            shifted[1..].copy_from_slice(&blocks);
            let mut got2 = vec![0.0; want.len()];
            dequantize_row_at(s, dtype, &shifted[1..], &mut got2).unwrap();
            assert_eq!(got, got2);
        }
    }
}

#[test]
fn quantize_matches_gguf_py_bit_exactly() {
    for dtype in [
        DType::Q4_0,
        DType::Q4_1,
        DType::Q5_0,
        DType::Q5_1,
        DType::Q8_0,
        DType::BF16,
    ] {
        let x = f32s(&fixture(&format!("{}.qin", dtype.name())));
        let want = fixture(&format!("{}.qout", dtype.name()));
        let mut got = vec![0u8; want.len()];
        quantize_row(dtype, &x, &mut got);
        assert_eq!(got, want, "{dtype}");
    }
}

#[test]
fn dequantize_rejects_wrong_lengths() {
    let mut y = vec![0.0; 32];
    assert!(dequantize_row(DType::Q4_0, &[0u8; 17], &mut y).is_err());
    assert!(dequantize_row(DType::Q4_0, &[0u8; 18], &mut y[..16]).is_err());
    assert!(dequantize_row(DType::Q4_0, &[0u8; 18], &mut y).is_ok());
    assert!(dequantize_row(DType::I32, &[0u8; 128], &mut y).is_err());
}

/// A tiny deterministic generator (tests draw seeds from proptest).
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
    fn scale(&mut self) -> [u8; 2] {
        let e = (self.next() % 4) as i32;
        let v = self.normal() * 10f32.powi(-e) * 0.1;
        half::f16::from_f32(v).to_bits().to_le_bytes()
    }
}

/// `n_blocks` random blocks of `dtype`: random bytes, finite random f16 scales.
fn random_blocks(rng: &mut Rng, dtype: DType, n_blocks: usize) -> Vec<u8> {
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
            let s = rng.scale();
            b[o..o + 2].copy_from_slice(&s);
        }
    }
    v
}

fn random_x(rng: &mut Rng, n: usize) -> Vec<f32> {
    // Some activations far larger than the rest, as in real hidden states.
    (0..n)
        .map(|i| rng.normal() * if i % 97 == 5 { 20.0 } else { 1.0 })
        .collect()
}

/// What rounding the activations to int16 may add (zero where it does not apply).
fn act_rounding(s: Simd, dtype: DType, w: &[f32], x: &[f32]) -> f64 {
    patchbay_primitives::quant::exact_rounding_bound(s, dtype, x, w)
}

fn deq(dtype: DType, row: &[u8], n: usize) -> Vec<f32> {
    let mut w = vec![0.0; n];
    dequantize_row_at(Simd::scalar(), dtype, row, &mut w).unwrap();
    w
}

/// Values per row for `blocks` blocks; float formats get an odd count.
fn row_len(dtype: DType, blocks: usize) -> usize {
    if dtype.is_quantized() {
        blocks * dtype.block_len()
    } else {
        blocks * 37 + 3
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Every level dequantises to the portable code's bits (the SIMD
    /// dequantisers included), for any bytes: scales with any f16 bits
    /// (subnormal, infinite, NaN) and any quants. NaN only has to stay NaN.
    #[test]
    fn dequantize_at_every_level_matches_portable_for_any_bytes(
        bytes in proptest::collection::vec(any::<u8>(), 210 * 6),
        blocks in 1usize..6,
    ) {
        for dtype in ALL.iter().copied().filter(|d| d.is_quantized()) {
            let nb = if dtype.block_len() == 256 { blocks } else { blocks * 5 + 1 };
            let src = &bytes[..(nb * dtype.block_bytes()).min(bytes.len() / dtype.block_bytes() * dtype.block_bytes())];
            let n = src.len() / dtype.block_bytes() * dtype.block_len();
            let want = deq(dtype, src, n);
            for s in Simd::available() {
                let mut got = vec![0.0f32; n];
                dequantize_row_at(s, dtype, src, &mut got).unwrap();
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    prop_assert!(g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
                        "{dtype} {s:?} value {i}: {g} vs {w}");
                }
            }
        }
    }

    /// dot_row (exact float math) at every level vs f64 dot of the dequantised row.
    /// Tolerance: 2e-5 * sum |w_i x_i| (f32 accumulation over up to ~3000 terms).
    #[test]
    fn dot_row_matches_f64(seed in any::<u64>(), blocks in 1usize..48) {
        let mut rng = Rng(seed);
        for dtype in ALL {
            // Odd block counts too (a 576-wide row is 18 blocks of 32, 9 pairs).
            let nb = if dtype.block_len() == 256 { blocks.div_ceil(6) } else { blocks * 2 - (seed % 2) as usize };
            let n = row_len(dtype, nb);
            let row = random_blocks(&mut rng, dtype, n / dtype.block_len());
            let x = random_x(&mut rng, n);
            let w = deq(dtype, &row, n);
            let want: f64 = w.iter().zip(&x).map(|(a, b)| *a as f64 * *b as f64).sum();
            let mag: f64 = w.iter().zip(&x).map(|(a, b)| (*a as f64 * *b as f64).abs()).sum();
            for s in Simd::available() {
                let got = dot_row(s, dtype, &row, &x) as f64;
                let tol = 2e-5 * mag + act_rounding(s, dtype, &w, &x) + 1e-30;
                prop_assert!((got - want).abs() <= tol,
                    "{dtype} {s:?} n={n}: {got} vs {want} (mag {mag})");
            }
        }
    }

    /// quantize -> dequantize stays within one quantisation step per value.
    #[test]
    fn quantize_round_trip_within_a_step(seed in any::<u64>(), blocks in 1usize..20) {
        let mut rng = Rng(seed);
        for dtype in [DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q5_1, DType::Q8_0] {
            let n = blocks * 32;
            let mut x = random_x(&mut rng, n);
            if seed % 3 == 0 {
                for v in &mut x { *v += 3.0; } // all-positive blocks
            }
            let mut q = vec![0u8; dtype.bytes_for(n).unwrap()];
            quantize_row(dtype, &x, &mut q);
            let y = deq(dtype, &q, n);
            let levels = match dtype { DType::Q4_0 | DType::Q4_1 => 15.0, DType::Q8_0 => 254.0, _ => 31.0 };
            for (xb, yb) in x.chunks(32).zip(y.chunks(32)) {
                let (lo, hi) = xb.iter().fold((f32::MAX, f32::MIN), |(a, b), v| (a.min(*v), b.max(*v)));
                let amax = lo.abs().max(hi.abs());
                let range = match dtype { DType::Q4_1 | DType::Q5_1 => hi - lo, _ => 2.0 * amax };
                // One step, plus f16 rounding of the scale (and min).
                let step = range / levels;
                let tol = step * 1.01 + amax * 2e-3;
                for (a, b) in xb.iter().zip(yb) {
                    prop_assert!((a - b).abs() <= tol, "{dtype}: {a} -> {b} (step {step})");
                }
            }
        }
    }

    /// matmul_q vs f64 product of the dequantised weights; threads 1/2/3 bit-identical.
    /// Widths of 32-block formats are odd multiples of 32 too (288 = 9 blocks).
    #[test]
    fn matmul_q_matches_f64(seed in any::<u64>(), m in 1usize..9, rows in 1usize..150, kb in 1usize..3) {
        let mut rng = Rng(seed);
        for dtype in [DType::Q4_1, DType::Q8_0, DType::Q4_K, DType::F16] {
            let cols = match dtype.block_len() {
                256 => kb * 256,
                32 => kb * 288 - 32 * (seed % 2) as usize,
                _ => kb * 40 + 1,
            };
            let w = random_blocks(&mut rng, dtype, rows * cols / dtype.block_len());
            let x = random_x(&mut rng, m * cols);
            let wd = deq(dtype, &w, rows * cols);
            let mut first: Option<Vec<f32>> = None;
            for t in [1, 2, 3] {
                let mut y = vec![0.0; m * rows];
                matmul_q(Simd::detect(), &Threads::new(t), dtype, &w, rows, cols,
                    MatRef::new(&x, m, cols).unwrap(), &mut y).unwrap();
                for i in 0..m {
                    for r in 0..rows {
                        let (mut want, mut mag) = (0.0f64, 0.0f64);
                        for k in 0..cols {
                            let p = x[i * cols + k] as f64 * wd[r * cols + k] as f64;
                            want += p;
                            mag += p.abs();
                        }
                        let got = y[i * rows + r] as f64;
                        let extra = act_rounding(Simd::detect(), dtype,
                            &wd[r * cols..(r + 1) * cols], &x[i * cols..(i + 1) * cols]);
                        prop_assert!((got - want).abs() <= 2e-5 * mag + extra + 1e-30,
                            "{dtype} ({i},{r}): {got} vs {want}");
                    }
                }
                match &first {
                    None => first = Some(y),
                    Some(f) => prop_assert!(f.iter().zip(&y).all(|(a, b)| a.to_bits() == b.to_bits())),
                }
            }
        }
    }
}

#[test]
fn matvec_is_bit_identical_for_any_thread_count_and_matches_dot_row() {
    let mut rng = Rng(7);
    for dtype in ALL {
        let (rows, cols) = (75, if dtype.is_quantized() { 512 } else { 300 });
        let w = random_blocks(&mut rng, dtype, rows * cols / dtype.block_len());
        let x = random_x(&mut rng, cols);
        let rb = dtype.bytes_for(cols).unwrap();
        for s in Simd::available() {
            let mut first: Option<Vec<f32>> = None;
            for t in [1, 2, 3] {
                let mut y = vec![0.0; rows];
                matvec_q(s, &Threads::new(t), dtype, &w, rows, cols, &x, &mut y).unwrap();
                match &first {
                    None => first = Some(y),
                    Some(f) => assert!(
                        f.iter().zip(&y).all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{dtype} {s:?}: thread count {t} changed the result"
                    ),
                }
            }
            for (r, yv) in first.unwrap().iter().enumerate() {
                let want = dot_row(s, dtype, &w[r * rb..(r + 1) * rb], &x);
                assert_eq!(yv.to_bits(), want.to_bits(), "{dtype} {s:?} row {r}");
            }
        }
    }
}

#[test]
fn matvec_checks_shapes() {
    let t = Threads::single();
    let s = Simd::detect();
    let w = vec![0u8; 4 * 20];
    let x = vec![0.0; 32];
    let mut y = vec![0.0; 4];
    let mv = |w: &[u8], cols: usize, x: &[f32], y: &mut [f32]| {
        matvec_q(s, &t, DType::Q4_1, w, 4, cols, x, y)
    };
    assert!(mv(&w, 32, &x, &mut y).is_ok());
    assert!(mv(&w, 31, &x, &mut y).is_err());
    assert!(mv(&w[1..], 32, &x, &mut y).is_err());
    assert!(mv(&w, 32, &x[1..], &mut y).is_err());
    assert!(mv(&w, 32, &x, &mut y[1..]).is_err());
    let xm = MatRef::new(&x, 1, 32).unwrap();
    assert!(matmul_q(s, &t, DType::Q4_1, &w, 4, 32, xm, &mut y).is_ok());
    assert!(matmul_q(s, &t, DType::Q4_1, &w, 4, 32, xm, &mut y[1..]).is_err());
}

/// The decode path (`matvec_q`, one activation row) agrees with the prefill
/// path (`matmul_q` on that one row) and with f64 references, for every format,
/// at every SIMD level, on 1-3 threads, at the widths real
/// models have: 576 (18 blocks of 32, i.e. 9 pairs of 64), 640, 96 (3 blocks)
/// and, for the K-quants, 768 and 256. The row counts split into several
/// thread chunks with a ragged last chunk (4099 rows: chunks of 528 on two
/// threads, the last 403 rows long, which ends in three rows left over by
/// the four-row kernel), and one case is SmolLM2's tied LM head itself: Q8_0,
/// 49152 x 576.
///
/// Bounds: each result within 2e-5 * sum |w_i x_i| of the f64 dot product of
/// the dequantised row with `x` (plus the int16 rounding of the activations
/// where the level rounds them); so `matvec_q` and `matmul_q` are within
/// 4e-5 * sum |w_i x_i| of each other. Results are bit-identical for every
/// thread count.
#[test]
fn matvec_q_equals_matmul_q_row_and_f64_at_model_shapes() {
    let mut rng = Rng(0x5eed_0576);
    let mut cases = vec![(DType::Q8_0, 49152, 576)];
    for dtype in ALL {
        let widths: &[usize] = if dtype.block_len() == 256 {
            &[768, 256]
        } else {
            &[576, 640, 96]
        };
        for &cols in widths {
            cases.push((dtype, 4099, cols));
        }
    }
    let pools: Vec<Threads> = [1, 2, 3].into_iter().map(Threads::new).collect();
    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<u32>>();
    for (dtype, rows, cols) in cases {
        let bl = dtype.block_len();
        let w = random_blocks(&mut rng, dtype, rows * cols / bl);
        let x = random_x(&mut rng, cols);
        let rb = dtype.bytes_for(cols).unwrap();
        // f64 references of the dequantised rows with x.
        let mut wrow = vec![0.0f32; cols];
        let mut want_x = Vec::with_capacity(rows);
        for r in 0..rows {
            dequantize_row_at(Simd::scalar(), dtype, &w[r * rb..(r + 1) * rb], &mut wrow).unwrap();
            let (mut want, mut mag) = (0.0f64, 0.0f64);
            for (a, b) in wrow.iter().zip(&x) {
                let p = *a as f64 * *b as f64;
                want += p;
                mag += p.abs();
            }
            want_x.push((want, mag));
        }
        let case = format!("{dtype} {rows}x{cols}");
        for s in Simd::available() {
            // One product on every pool, whose results must have the same bits.
            let on_every_pool = |what: &str, product: &dyn Fn(&Threads, &mut [f32])| {
                let mut first: Option<Vec<f32>> = None;
                for th in &pools {
                    let mut y = vec![f32::NAN; rows];
                    product(th, &mut y);
                    match &first {
                        None => first = Some(y),
                        Some(f) => assert!(
                            bits(f) == bits(&y),
                            "{case} {s:?}: {} threads changed {what}",
                            th.count()
                        ),
                    }
                }
                first.unwrap()
            };
            let y_exact = on_every_pool("matvec_q", &|th, y| {
                matvec_q(s, th, dtype, &w, rows, cols, &x, y).unwrap()
            });
            let xm = MatRef::new(&x, 1, cols).unwrap();
            let y_mm = on_every_pool("matmul_q", &|th, y| {
                matmul_q(s, th, dtype, &w, rows, cols, xm, y).unwrap()
            });
            for r in 0..rows {
                let (want, mag) = want_x[r];
                let mut tol = 2e-5 * mag + 1e-30;
                if dtype.is_quantized() {
                    dequantize_row_at(Simd::scalar(), dtype, &w[r * rb..(r + 1) * rb], &mut wrow)
                        .unwrap();
                    tol += act_rounding(s, dtype, &wrow, &x);
                }
                let (ge, gm) = (y_exact[r] as f64, y_mm[r] as f64);
                assert!(
                    (ge - want).abs() <= tol,
                    "{case} {s:?} row {r}: matvec_q {ge} vs f64 {want} (mag {mag})"
                );
                assert!(
                    (gm - want).abs() <= tol,
                    "{case} {s:?} row {r}: matmul_q {gm} vs f64 {want} (mag {mag})"
                );
            }
        }
    }
}
