//! What the x86-64 kernels share: the CPU features each family needs, and
//! how far ahead the weight streams prefetch.

/// Whether the CPU has the AVX-512 features (F, BW, VL, VNNI) and F16C/FMA
/// that the AVX-512 int16 kernels are compiled for.
pub fn has_vnni() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512vl")
        && std::arch::is_x86_feature_detected!("avx512vnni")
        && std::arch::is_x86_feature_detected!("f16c")
        && std::arch::is_x86_feature_detected!("fma")
}

/// Whether the CPU has AVX2, FMA and F16C, which the AVX2 kernels are compiled for.
pub fn has_avx2() -> bool {
    std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
        && std::arch::is_x86_feature_detected!("f16c")
}

/// How far ahead the kernels that read `ROWS` consecutive rows at a time
/// prefetch: a whole number of tiles, so that each row's stream asks for the
/// same offset of a row not yet read (a plain distance lands inside the tile
/// being read), at least the least distance given but never past the rows
/// left, which other threads may be reading (0 when none are left: the block
/// being read). Streaming Q8_0 matrices too large for the caches (4864 x 640
/// and 4864 x 1024, one thread, AVX-512 on AMD Zen 5) went from 7-8 to 15-18
/// GB/s for the exact kernel (and from 11-13 to 18-25 for an int8 one since
/// removed).
///
/// Made once per matrix, so that a tile's distance needs no division: with
/// divisions per tile (a tile of SmolLM2's 576-column rows is a few hundred
/// cycles of products), decode ran 5-20% slower on an AMD EPYC (AVX2).
#[derive(Clone, Copy)]
pub(super) struct Ahead<const ROWS: usize> {
    /// The least distance in whole tiles.
    least_tiles: usize,
    /// Bytes per tile.
    tile_bytes: usize,
}

impl<const ROWS: usize> Ahead<ROWS> {
    /// At least [`TILE_PREFETCH`] bytes ahead, over rows of `row_bytes`.
    pub(super) fn new(row_bytes: usize) -> Self {
        Self::at_least(TILE_PREFETCH, row_bytes)
    }

    /// At least `least` bytes ahead, over rows of `row_bytes`.
    pub(super) fn at_least(least: usize, row_bytes: usize) -> Self {
        let tile_bytes = ROWS * row_bytes;
        let least_tiles = if tile_bytes == 0 {
            0
        } else {
            least.div_ceil(tile_bytes)
        };
        Self {
            least_tiles,
            tile_bytes,
        }
    }

    /// The distance for a tile with `rows_left` rows after it.
    #[inline(always)]
    pub(super) fn distance(&self, rows_left: usize) -> usize {
        self.least_tiles.min(rows_left / ROWS) * self.tile_bytes
    }
}

/// The least distance of [`Ahead::new`]: about the bytes in flight that hide
/// the memory latency at full read bandwidth.
const TILE_PREFETCH: usize = 8192;

#[cfg(test)]
mod tests {
    use super::Ahead;
    use proptest::prelude::*;

    /// The distance by its definition, with the divisions it saves.
    fn by_division(least: usize, tile_bytes: usize, left_bytes: usize) -> usize {
        let tile = tile_bytes.max(1);
        (least.div_ceil(tile) * tile).min(left_bytes / tile * tile)
    }

    proptest! {
        #[test]
        fn distance_is_whole_tiles_within_the_rows_left(
            least in 0usize..20_000,
            row_bytes in 1usize..5_000,
            rows_left in 0usize..300,
        ) {
            prop_assert_eq!(
                Ahead::<4>::at_least(least, row_bytes).distance(rows_left),
                by_division(least, 4 * row_bytes, rows_left * row_bytes)
            );
            prop_assert_eq!(
                Ahead::<1>::at_least(least, row_bytes).distance(rows_left),
                by_division(least, row_bytes, rows_left * row_bytes)
            );
        }
    }
}
