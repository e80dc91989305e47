//! Bidirectional (encoder) attention over packed sequences: no cache, keys
//! and values read from the call's own rows. Checked against an f64
//! reference, against each sequence alone, and for the calls it must refuse.

use patchbay_blocks::{Attend, Bidirectional, Heads};
use patchbay_combinators::{Capacity, Ctx, Layer, LayerError, RowMap, Scratch};
use patchbay_primitives::{Act, Simd, Threads};
use proptest::prelude::*;

mod support;
use support::{attention_reference, qkv};

/// softmax(q kᵀ / sqrt(hd)) v within each sequence, in f64.
fn reference(x: &Act, heads: Heads, lens: &[usize]) -> Vec<f64> {
    let mut out = Vec::with_capacity(x.rows() * heads.q_width());
    let mut start = 0;
    for &n in lens {
        for qi in start..start + n {
            out.extend(attention_reference(x, heads, qi, start..start + n));
        }
        start += n;
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Packed sequences of different lengths, on 1 to 3 threads and at every
    /// level: close to the f64 reference, and each sequence's rows bit for
    /// bit what the sequence gives alone.
    #[test]
    fn packed_sequences_match_the_reference_and_each_alone(
        lens in prop::collection::vec(1usize..40, 1..5),
        kv_heads in 1usize..3,
        group in 1usize..3,
        hd in prop_oneof![Just(1usize), 1usize..20, Just(32)],
        threads in 1usize..4,
        seed in any::<u64>(),
    ) {
        let heads = Heads::new(kv_heads * group, kv_heads, hd).unwrap();
        let attend = Attend::new(heads, Bidirectional);
        let rows: usize = lens.iter().sum();
        let x = qkv(rows, heads, seed);
        let want = reference(&x, heads, &lens);
        let longest = *lens.iter().max().unwrap();
        let (pool, scratch) = (Threads::new(threads), Scratch::new());
        let map = RowMap::packed(&lens);
        for s in Simd::available() {
            let ctx = Ctx::new(s, &pool, &scratch).with_map(&map);
            let cap = Capacity::new(rows, longest).with_seqs(lens.len());
            let mut state = attend.new_state(cap);
            let got = attend.apply(&x, &mut state, &ctx).unwrap();
            for (i, (g, w)) in got.as_slice().iter().zip(&want).enumerate() {
                prop_assert!((*g as f64 - w).abs() <= 1e-5 * (1.0 + w.abs()),
                    "{} element {i}: {g} vs {w}", s.level());
            }
            let mut start = 0;
            for &n in &lens {
                let one = Act::from_vec(n, heads.qkv_width(),
                    x.as_slice()[start * heads.qkv_width()..(start + n) * heads.qkv_width()].to_vec()).unwrap();
                let mut st1 = attend.new_state(Capacity::new(n, n));
                let alone = attend.apply(&one, &mut st1, &Ctx::new(s, &Threads::single(), &scratch)).unwrap();
                let packed = &got.as_slice()[start * heads.q_width()..(start + n) * heads.q_width()];
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                prop_assert_eq!(bits(alone.as_slice()), bits(packed), "{} sequence at row {}", s.level(), start);
                start += n;
            }
        }
    }
}

/// Part of a sequence is refused with an error naming it: a sequence split
/// into two runs, one not starting at position 0, one with a gap, one that
/// starts again, and one continued in a second call.
#[test]
fn part_of_a_sequence_is_an_error() {
    let heads = Heads::new(2, 1, 4).unwrap();
    let attend = Attend::new(heads, Bidirectional);
    let (pool, scratch) = (Threads::single(), Scratch::new());
    let cases: [&[(usize, usize)]; 5] = [
        &[(0, 0), (0, 1), (1, 0), (0, 2)],
        &[(0, 1), (0, 2)],
        &[(0, 0), (0, 2)],
        &[(0, 0), (1, 0), (1, 2)],
        &[(0, 0), (1, 0), (0, 0)],
    ];
    for rows in cases {
        let mut map = RowMap::new();
        for &(s, p) in rows {
            map.push(s, p);
        }
        let x = qkv(rows.len(), heads, 7);
        let mut state = attend.new_state(Capacity::new(8, 8).with_seqs(2));
        let ctx = Ctx::new(Simd::detect(), &pool, &scratch).with_map(&map);
        let err = attend.apply(&x, &mut state, &ctx).unwrap_err();
        assert!(
            matches!(err, LayerError::PartialSequence { .. }),
            "{rows:?}: {err}"
        );
        assert!(err.to_string().contains("whole"), "{err}");
    }
    // Whole in one call, then continued from position 3 in the next.
    let x = qkv(3, heads, 9);
    let mut state = attend.new_state(Capacity::new(8, 8));
    let ctx = Ctx::new(Simd::detect(), &pool, &scratch);
    attend.apply(&x, &mut state, &ctx).unwrap();
    let err = attend.apply(&x, &mut state, &ctx.at(3)).unwrap_err();
    assert!(
        matches!(
            err,
            LayerError::PartialSequence {
                seq: 0,
                row: 0,
                pos: 3,
                ..
            }
        ),
        "{err}"
    );
}
