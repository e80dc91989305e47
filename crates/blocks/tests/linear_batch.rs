//! `Linear` is batch-invariant: a row's output has the same bits whether the
//! row goes through the layer alone (decoding), inside a prompt, or packed
//! with other sequences' rows, for f32 and quantised weights (exact mode), at
//! every SIMD level and for 1 and 2 threads; and it agrees with an f64
//! reference of the dequantised weights (plus bias).

use patchbay_blocks::{Linear, SumOrder};
use patchbay_combinators::{Capacity, Ctx, Layer, Scratch};
use patchbay_primitives::gemm::matmul_sequential;
use patchbay_primitives::quant::{dequantize_row, exact_rounding_bound};
use patchbay_primitives::{Act, DType, MatRef, Simd, Tensor, Threads};
use proptest::prelude::*;

mod support;
use support::{values, weight};

fn run(lin: &Linear, s: Simd, t: &Threads, rows: usize, x: Vec<f32>) -> Vec<f32> {
    let scratch = Scratch::new();
    let ctx = Ctx::new(s, t, &scratch);
    let x = Act::from_vec(rows, lin.in_dim(), x).unwrap();
    lin.new_state(Capacity::new(rows.max(1), rows.max(1)));
    lin.apply(&x, &mut (), &ctx).unwrap().into_vec()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|f| f.to_bits()).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    #[test]
    fn rows_do_not_depend_on_the_batch(seed in any::<u64>(), m in 2usize..12, out in 1usize..90, blocks in 1usize..4, bias in any::<bool>()) {
        for dtype in [DType::F32, DType::Q4_0, DType::Q4_1, DType::Q8_0] {
            let inp = blocks * 32;
            let w = weight(dtype, out, inp, seed);
            let mut wf = vec![0.0f32; out * inp];
            dequantize_row(dtype, w.bytes(), &mut wf).unwrap();
            let b = bias.then(|| values(out, seed ^ 1));
            let lin = Linear::new(w, b.clone()).unwrap();
            let x = values(m * inp, seed ^ 2);
            for s in Simd::available() {
                for t in [Threads::single(), Threads::new(2)] {
                    let y = run(&lin, s, &t, m, x.clone());
                    for i in 0..m {
                        let row = x[i * inp..(i + 1) * inp].to_vec();
                        let alone = run(&lin, s, &t, 1, row.clone());
                        prop_assert_eq!(bits(&alone), bits(&y[i * out..(i + 1) * out]),
                            "{} row {} of {} at {}", dtype, i, m, s.level());
                        // The same row as the last of a batch of 3 other rows.
                        let mut packed = values(3 * inp, seed ^ 3 ^ i as u64);
                        packed.extend_from_slice(&row);
                        let yp = run(&lin, s, &t, 4, packed);
                        prop_assert_eq!(bits(&yp[3 * out..]), bits(&alone));
                        for (j, &got) in alone.iter().enumerate() {
                            let (mut r, mut mag) = (b.as_ref().map_or(0.0, |b| b[j] as f64), 0.0f64);
                            for (xv, wv) in row.iter().zip(&wf[j * inp..(j + 1) * inp]) {
                                r += *xv as f64 * *wv as f64;
                                mag += (*xv as f64 * *wv as f64).abs();
                            }
                            let extra = exact_rounding_bound(s, dtype, &row, &wf[j * inp..(j + 1) * inp]);
                            prop_assert!((got as f64 - r).abs() <= 1e-5 * (mag + r.abs()) + extra + 1e-30,
                                "{} output {}: {} vs {}", dtype, j, got, r);
                        }
                    }
                }
            }
        }
    }
}

/// A plain-order f32 projection keeps its weight packed after the first call
/// (for the level of that call) and adds its bias as products are stored: at
/// every level, on every call, each output has the bits of
/// `matmul_sequential` followed by adding the bias.
#[test]
fn a_packed_plain_order_projection_has_the_bits_of_the_product_plus_bias() {
    let (m, out, inp) = (13, 37, 70);
    let w = values(out * inp, 7);
    let b = values(out, 8);
    let x = values(m * inp, 9);
    let lin = Linear::new(
        Tensor::from_f32(&w, vec![out, inp]).unwrap(),
        Some(b.clone()),
    )
    .unwrap()
    .with_order(SumOrder::Sequential);
    let (xv, wv) = (
        MatRef::new(&x, m, inp).unwrap(),
        MatRef::new(&w, out, inp).unwrap(),
    );
    // Each level twice: the first level's calls find the packing made for
    // them, the others pack for themselves.
    for s in Simd::available().into_iter().chain(Simd::available()) {
        for t in [Threads::single(), Threads::new(2)] {
            let mut want = vec![0.0; m * out];
            matmul_sequential(s, &t, xv, wv, &mut want).unwrap();
            for row in want.chunks_exact_mut(out) {
                for (o, b) in row.iter_mut().zip(&b) {
                    *o += b;
                }
            }
            let got = run(&lin, s, &t, m, x.clone());
            assert_eq!(bits(&got), bits(&want), "at {}", s.level());
        }
    }
}
