//! Causal attention over a KV cache, decoded row by row past the position
//! from which one row's heads are spread over the threads (and the heads
//! of a kv head share their products): close to an f64 reference, and bit
//! for bit what one batch gives, for grouped-query shapes and 1 to 3
//! threads, at every level, with keys and values cached in f32 or f16
//! (whose reference takes them rounded to f16).

use patchbay_blocks::{Attend, Causal, Heads, SlidingWindow};
use patchbay_combinators::{Capacity, Ctx, KvType, Layer, Scratch};
use patchbay_primitives::{Act, Simd, Threads};
use proptest::prelude::*;

mod support;
use support::{attention_reference, qkv};

/// Rows decoded one at a time after the prompt: past the head-spreading
/// position (256) with some room.
const ROWS: usize = 300;

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|f| f.to_bits()).collect()
}

/// The first element whose bits differ, with both values.
fn first_difference(a: &[f32], b: &[f32]) -> Option<(usize, f32, f32)> {
    let i = a
        .iter()
        .zip(b)
        .position(|(x, y)| x.to_bits() != y.to_bits())?;
    Some((i, a[i], b[i]))
}

/// The attention of every row: `prompt` rows in one call, then the rest
/// one at a time.
fn run<L: Layer>(
    attend: &L,
    x: &Act,
    prompt: usize,
    threads: usize,
    simd: Simd,
    kv: Kv,
) -> Vec<f32> {
    let (pool, scratch) = (Threads::new(threads), Scratch::new());
    let rows = x.rows();
    let mut state = attend.new_state(Capacity::new(rows, rows).with_kv(kv.0, kv.1));
    let mut out = Vec::with_capacity(rows * attend.out_dim());
    let width = x.cols();
    let mut pos = 0;
    while pos < rows {
        let n = if pos == 0 { prompt } else { 1 };
        let part = Act::from_vec(
            n,
            width,
            x.as_slice()[pos * width..(pos + n) * width].to_vec(),
        )
        .unwrap();
        let ctx = Ctx::new(simd, &pool, &scratch).at(pos);
        out.extend_from_slice(attend.apply(&part, &mut state, &ctx).unwrap().as_slice());
        pos += n;
    }
    out
}

/// How keys, and values, are cached.
type Kv = (KvType, KvType);

const F32: Kv = (KvType::F32, KvType::F32);
const F16: Kv = (KvType::F16, KvType::F16);

/// `x` with its keys, and its values, rounded to f16 where `kv` caches them
/// in f16 (what the cache holds).
fn as_cached(x: &Act, heads: Heads, kv: Kv) -> Act {
    let (qw, kw) = (heads.q_width(), heads.kv_width());
    let mut data = x.as_slice().to_vec();
    for row in data.chunks_exact_mut(x.cols()) {
        for (part, ty) in [(qw..qw + kw, kv.0), (qw + kw..qw + 2 * kw, kv.1)] {
            if ty == KvType::F16 {
                for v in &mut row[part] {
                    *v = half::f16::from_f32(*v).to_f32();
                }
            }
        }
    }
    Act::from_vec(x.rows(), x.cols(), data).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(6))]

    #[test]
    fn decoded_rows_match_one_batch_and_the_reference(
        kv_heads in 1usize..4,
        group in prop_oneof![Just(1usize), Just(2), Just(3), Just(4), Just(7)],
        hd in prop_oneof![Just(1usize), 5usize..20, Just(64)],
        window in prop_oneof![Just(None), Just(Some(100usize))],
        kv in prop_oneof![Just(F32), Just(F16), Just((KvType::F32, KvType::F16)), Just((KvType::F16, KvType::F32))],
        seed in any::<u64>(),
    ) {
        let heads = Heads::new(kv_heads * group, kv_heads, hd).unwrap();
        let attend = Attend::new(heads, SlidingWindow { window });
        let x = qkv(ROWS, heads, seed);
        let cached = as_cached(&x, heads, kv);
        let qw = heads.q_width();
        for s in Simd::available() {
            let whole = run(&attend, &x, ROWS, 1, s, kv);
            for qi in [0, 255, 256, ROWS - 1] {
                let from = window.map_or(0, |w| (qi + 1).saturating_sub(w));
                let want = attention_reference(&cached, heads, qi, from..qi + 1);
                for (d, (g, w)) in whole[qi * qw..][..qw].iter().zip(&want).enumerate() {
                    prop_assert!((*g as f64 - w).abs() <= 1e-5 * (1.0 + w.abs()),
                        "{} {kv:?} cache row {qi} element {d}: {g} vs {w}", s.level());
                }
            }
            for threads in 1..=3 {
                let decoded = run(&attend, &x, 200, threads, s, kv);
                prop_assert!(bits(&decoded) == bits(&whole),
                    "{} heads {:?} window {:?} {kv:?} cache: decoded on {} thread(s) differs from one batch first at {:?}",
                    s.level(), heads, window, threads, first_difference(&decoded, &whole));
            }
        }
    }
}

/// Plain causal attention takes the same path as a window of `None`.
#[test]
fn causal_decodes_as_one_batch_on_two_threads() {
    let heads = Heads::new(9, 3, 64).unwrap();
    let attend = Attend::new(heads, Causal);
    let x = qkv(ROWS, heads, 3);
    for s in Simd::available() {
        for kv in [F32, F16] {
            let whole = run(&attend, &x, ROWS, 1, s, kv);
            let decoded = run(&attend, &x, 1, 2, s, kv);
            assert!(
                bits(&decoded) == bits(&whole),
                "{} {kv:?} cache: first difference at {:?}",
                s.level(),
                first_difference(&decoded, &whole)
            );
        }
    }
}

/// An f16 cache holds what it was asked to: its outputs are those of the
/// f32 cache on keys (or values, or both) rounded to f16, bit for bit, and
/// differ from the f32 cache's on the same rows.
#[test]
fn an_f16_cache_is_the_f32_cache_on_rounded_keys_and_values() {
    let heads = Heads::new(4, 2, 64).unwrap();
    let attend = Attend::new(heads, Causal);
    let x = qkv(ROWS, heads, 5);
    let f16_keys = (KvType::F16, KvType::F32);
    let f16_values = (KvType::F32, KvType::F16);
    for s in Simd::available() {
        let f32_exact = run(&attend, &x, 7, 2, s, F32);
        for kv in [F16, f16_keys, f16_values] {
            let f16 = run(&attend, &x, 7, 2, s, kv);
            let f32_rounded = run(&attend, &as_cached(&x, heads, kv), 7, 2, s, F32);
            assert!(
                bits(&f16) == bits(&f32_rounded),
                "{} {kv:?}: first difference at {:?}",
                s.level(),
                first_difference(&f16, &f32_rounded)
            );
            assert!(
                first_difference(&f16, &f32_exact).is_some(),
                "{} {kv:?}: the f16 cache gave the f32 cache's bits: nothing was rounded",
                s.level()
            );
        }
    }
    let cache = attend.new_state(Capacity::new(1, 8).with_kv(KvType::F16, KvType::F32));
    assert_eq!(cache.kv_types(), (KvType::F16, KvType::F32));
}
