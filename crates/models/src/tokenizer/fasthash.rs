//! A fast keyed hash for the tokenizer's tables. Building a 151k-token
//! vocabulary and its 151k merges takes about half a million lookups, which
//! SipHash (std's default) made a third of a model's start-up time. This is a
//! folded-multiply hash over 8-byte words, seeded per process from std's
//! `RandomState` so that a hostile vocabulary cannot choose colliding texts
//! in advance.

use std::hash::BuildHasher;

const K0: u64 = 0x9e37_79b9_7f4a_7c15;
const K1: u64 = 0xbf58_476d_1ce4_e5b9;
const K2: u64 = 0x94d0_49bb_1331_11eb;

/// The 128-bit product's halves xor-ed: every input bit reaches every output bit.
#[inline(always)]
fn fold_mul(a: u64, b: u64) -> u64 {
    let p = (a as u128).wrapping_mul(b as u128);
    (p as u64) ^ ((p >> 64) as u64)
}

/// Hashes `bytes` on from `state`. The tail is read as whole (overlapping)
/// words, not copied into a buffer: a short copy followed by a word load
/// stalls store forwarding, and most tokens are shorter than 8 bytes.
#[inline]
fn absorb(mut state: u64, bytes: &[u8]) -> u64 {
    let n = bytes.len();
    state ^= (n as u64).wrapping_mul(K0);
    let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    let half =
        |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as u64;
    if n >= 8 {
        let mut at = 0;
        while at + 8 <= n {
            state = fold_mul(state ^ word(at), K1);
            at += 8;
        }
        if at < n {
            state = fold_mul(state ^ word(n - 8), K2);
        }
    } else if n >= 4 {
        state = fold_mul(state ^ (half(0) | half(n - 4) << 32), K2);
    } else if n > 0 {
        let b = |i: usize| bytes[i] as u64;
        state = fold_mul(state ^ (b(0) | b(n / 2) << 8 | b(n - 1) << 16), K2);
    }
    state
}

/// A per-process seed: builders made in one process hash alike.
fn process_seed() -> u64 {
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *SEED.get_or_init(|| std::hash::RandomState::new().hash_one(K0))
}

/// The hash of texts with this process's seed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FastState {
    seed: u64,
}

impl Default for FastState {
    fn default() -> Self {
        FastState {
            seed: process_seed(),
        }
    }
}

impl FastState {
    /// The hash of a text (as the tables key them: its bytes alone).
    #[inline]
    pub(crate) fn hash_str(&self, s: &str) -> u64 {
        fold_mul(absorb(self.seed, s.as_bytes()), K0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// Distinct short texts spread over the low bits the tables index by (no
    /// bucket of 4096 holds more than a handful) and over the top 7 bits
    /// hashbrown keeps as each slot's tag.
    #[test]
    fn hashes_spread_over_the_low_bits() {
        let h = FastState::default();
        let mut buckets = vec![0u32; 4096];
        let mut tags = vec![0u32; 128];
        let mut seen = HashSet::new();
        for i in 0..20_000u32 {
            let s = format!("tok{i}");
            let v = h.hash_str(&s);
            assert!(seen.insert(v), "collision at {s}");
            buckets[(v & 4095) as usize] += 1;
            tags[(v >> 57) as usize] += 1;
        }
        assert!(
            *buckets.iter().max().unwrap() < 20,
            "{:?}",
            buckets.iter().max()
        );
        // 156 per tag on average.
        let (lo, hi) = (tags.iter().min().unwrap(), tags.iter().max().unwrap());
        assert!(*lo > 100 && *hi < 220, "tags from {lo} to {hi}");
    }

    /// Texts that differ only in length or in trailing zero bytes hash apart.
    #[test]
    fn length_is_part_of_the_hash() {
        let h = FastState::default();
        assert_ne!(h.hash_str("a"), h.hash_str("a\0"));
        assert_ne!(h.hash_str(""), h.hash_str("\0"));
        assert_ne!(h.hash_str("abcdefgh"), h.hash_str("abcdefgh\0"));
        assert_eq!(h.hash_str("same"), FastState::default().hash_str("same"));
    }
}
