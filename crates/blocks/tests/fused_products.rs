//! Decode's fused products: a [`Parallel`] of quantised `Linear`s (q, k, v)
//! and a [`Gate`] whose branches start with them (gate and up) run their
//! products of one row in one pass over the pool. The row's output has the
//! bits of the same row inside a batch (which runs each product on its own)
//! and of each `Linear` applied alone, at every SIMD level and for 1 and 2
//! threads, with and without biases, for one format or a mix of formats.

use patchbay_blocks::{Linear, Silu};
use patchbay_combinators::{Capacity, Ctx, Gate, Layer, Parallel, Scratch, Series};
use patchbay_primitives::{Act, DType, Simd, Threads};
use proptest::prelude::*;

mod support;
use support::{values, weight};

/// An `out x inp` `Linear` of `dtype` ([`weight`]), with a bias or not.
fn linear(dtype: DType, out: usize, inp: usize, bias: bool, seed: u64) -> Linear {
    let w = weight(dtype, out, inp, seed);
    Linear::new(w, bias.then(|| values(out, seed ^ 7))).unwrap()
}

fn run<L: Layer>(layer: &L, s: Simd, t: &Threads, rows: usize, x: &[f32]) -> Vec<f32> {
    let scratch = Scratch::new();
    let ctx = Ctx::new(s, t, &scratch);
    let x = Act::from_vec(rows, layer.in_dim(), x.to_vec()).unwrap();
    let mut st = layer.new_state(Capacity::new(rows, rows));
    layer.apply(&x, &mut st, &ctx).unwrap().into_vec()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|f| f.to_bits()).collect()
}

const FORMATS: [DType; 5] = [
    DType::Q4_1,
    DType::Q5_0,
    DType::Q8_0,
    DType::Q4_K,
    DType::Q6_K,
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    #[test]
    fn fused_products_have_the_bits_of_the_batch(seed in any::<u64>(), q_out in 1usize..70, kv_out in 1usize..40, ff in 1usize..90, mixed in any::<bool>(), bias in any::<bool>()) {
        let inp = 256;
        let pick = |i: u64| if mixed { FORMATS[((seed >> (8 * i)) % 5) as usize] } else { FORMATS[(seed % 5) as usize] };
        let qkv = Parallel::new(
            Parallel::new(linear(pick(0), q_out, inp, bias, seed), linear(pick(1), kv_out, inp, bias, seed ^ 1)),
            linear(pick(2), kv_out, inp, false, seed ^ 2),
        );
        let glu = Gate::new(
            Series::new(linear(pick(3), ff, inp, bias, seed ^ 3), Silu::new(ff)),
            linear(pick(4), ff, inp, false, seed ^ 4),
        );
        let x = values(3 * inp, seed ^ 5);
        for s in Simd::available() {
            for t in [Threads::single(), Threads::new(2)] {
                let batch = run(&qkv, s, &t, 3, &x);
                let gated = run(&glu, s, &t, 3, &x);
                let width = q_out + 2 * kv_out;
                for i in 0..3 {
                    let row = &x[i * inp..(i + 1) * inp];
                    let one = run(&qkv, s, &t, 1, row);
                    prop_assert_eq!(bits(&one), bits(&batch[i * width..(i + 1) * width]),
                        "qkv row {} at {} ({} threads)", i, s.level(), t.count());
                    let mut alone = run(&qkv.left.left, s, &t, 1, row);
                    alone.extend(run(&qkv.left.right, s, &t, 1, row));
                    alone.extend(run(&qkv.right, s, &t, 1, row));
                    prop_assert_eq!(bits(&one), bits(&alone));
                    let one = run(&glu, s, &t, 1, row);
                    prop_assert_eq!(bits(&one), bits(&gated[i * ff..(i + 1) * ff]),
                        "gate row {} at {} ({} threads)", i, s.level(), t.count());
                    // silu(g) * u, from each Linear alone.
                    let g = run(&glu.gate, s, &t, 1, row);
                    let u = run(&glu.value, s, &t, 1, row);
                    let want: Vec<f32> = g.iter().zip(&u).map(|(a, b)| a * b).collect();
                    prop_assert_eq!(bits(&one), bits(&want));
                }
            }
        }
    }
}

/// A `Linear` of f32 weights is not a quantised product: the fork runs its
/// branches one by one, with the same result as each alone.
#[test]
fn f32_branches_are_not_fused() {
    let inp = 40;
    let p = Parallel::new(
        linear(DType::F32, 5, inp, true, 1),
        linear(DType::Q8_0, 3, 64, false, 2),
    );
    // Mismatched inputs (40 and 64) fail with the layer's error, not a panic.
    let scratch = Scratch::new();
    let t = Threads::single();
    let ctx = Ctx::new(Simd::detect(), &t, &scratch);
    let x = Act::from_vec(1, inp, values(inp, 3)).unwrap();
    assert!(p
        .apply(&x, &mut p.new_state(Capacity::new(1, 1)), &ctx)
        .is_err());
    let p = Parallel::new(
        linear(DType::F32, 5, inp, true, 1),
        linear(DType::F32, 3, inp, false, 2),
    );
    let mut out = run(&p.left, Simd::detect(), &t, 1, x.as_slice());
    out.extend(run(&p.right, Simd::detect(), &t, 1, x.as_slice()));
    assert_eq!(
        bits(&run(&p, Simd::detect(), &t, 1, x.as_slice())),
        bits(&out)
    );
}
