//! Sentence pooling: [`MeanPool`] (one row per sequence) and [`L2Normalize`].

use patchbay_combinators::{check_in, Capacity, Ctx, Layer, LayerError, Node};
use patchbay_primitives::{kernels, Act};

/// Averages the rows of each sequence into one row: every run of consecutive
/// input rows with the same `ctx.sequence(r)` becomes one output row, in
/// order (sentence-transformers' mean pooling; the sequences hold no padding,
/// so every row counts).
///
/// ```
/// use patchbay_blocks::MeanPool;
/// use patchbay_combinators::{Ctx, Layer, Scratch};
/// use patchbay_primitives::{Act, Simd, Threads};
/// let pool = MeanPool::new(2);
/// let (threads, scratch) = (Threads::single(), Scratch::new());
/// let ctx = Ctx::new(Simd::detect(), &threads, &scratch);
/// let x = Act::from_vec(3, 2, vec![1.0, 2.0, 3.0, 4.0, 5.0, 9.0]).unwrap();
/// // One sequence of three rows: one row, their mean.
/// assert_eq!(pool.apply(&x, &mut (), &ctx).unwrap().as_slice(), &[3.0, 5.0]);
/// // No rows: no sequence, no output row.
/// assert_eq!(pool.apply(&Act::zeros(0, 2), &mut (), &ctx).unwrap().rows(), 0);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MeanPool {
    dim: usize,
}

impl MeanPool {
    /// Mean pooling over rows of `dim` features.
    pub fn new(dim: usize) -> MeanPool {
        MeanPool { dim }
    }
}

impl Layer for MeanPool {
    type State = ();

    fn in_dim(&self) -> usize {
        self.dim
    }
    fn out_dim(&self) -> usize {
        self.dim
    }
    fn new_state(&self, _cap: Capacity) {}
    fn forward(&self, x: &Act, y: &mut Act, _: &mut (), ctx: &Ctx<'_>) -> Result<(), LayerError> {
        check_in("MeanPool", self.dim, x)?;
        let n = x.rows();
        let runs = (0..n)
            .filter(|&r| r == 0 || ctx.sequence(r) != ctx.sequence(r - 1))
            .count();
        y.reshape(runs, self.dim);
        let mut out = 0;
        let mut start = 0;
        while start < n {
            let seq = ctx.sequence(start);
            let mut end = start + 1;
            while end < n && ctx.sequence(end) == seq {
                end += 1;
            }
            let row = y.row_mut(out);
            row.copy_from_slice(x.row(start));
            for r in start + 1..end {
                kernels::add_assign(ctx.simd, row, x.row(r));
            }
            kernels::scale(ctx.simd, row, 1.0 / (end - start) as f32);
            out += 1;
            start = end;
        }
        Ok(())
    }
    fn describe(&self) -> Node {
        Node::leaf("MeanPool", self.dim, self.dim, 0).with_detail("one row per sequence")
    }
}

/// Scales each row to unit Euclidean length (a zero row stays zero), as
/// sentence-transformers' `Normalize` module does.
///
/// ```
/// use patchbay_blocks::L2Normalize;
/// use patchbay_combinators::{Ctx, Layer, Scratch};
/// use patchbay_primitives::{Act, Simd, Threads};
/// let norm = L2Normalize::new(2);
/// let (threads, scratch) = (Threads::single(), Scratch::new());
/// let ctx = Ctx::new(Simd::detect(), &threads, &scratch);
/// let x = Act::from_vec(2, 2, vec![3.0, 4.0, 0.0, 0.0]).unwrap();
/// let y = norm.apply(&x, &mut (), &ctx).unwrap();
/// assert_eq!(y.as_slice(), &[0.6, 0.8, 0.0, 0.0]);
/// // A row of the wrong width is an error.
/// assert!(norm.apply(&Act::zeros(1, 3), &mut (), &ctx).is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct L2Normalize {
    dim: usize,
}

impl L2Normalize {
    /// L2 normalisation of rows of `dim` features.
    pub fn new(dim: usize) -> L2Normalize {
        L2Normalize { dim }
    }
}

impl Layer for L2Normalize {
    type State = ();

    fn in_dim(&self) -> usize {
        self.dim
    }
    fn out_dim(&self) -> usize {
        self.dim
    }
    fn new_state(&self, _cap: Capacity) {}
    fn forward(&self, x: &Act, y: &mut Act, _: &mut (), ctx: &Ctx<'_>) -> Result<(), LayerError> {
        check_in("L2Normalize", self.dim, x)?;
        y.copy_from(x);
        for r in 0..y.rows() {
            let row = y.row_mut(r);
            // Accumulate in f64: the norm of a few hundred f32 values.
            let norm = row
                .iter()
                .map(|&v| f64::from(v) * f64::from(v))
                .sum::<f64>()
                .sqrt();
            if norm > 0.0 {
                // sentence-transformers divides by max(norm, 1e-12).
                let inv = (1.0 / norm.max(1e-12)) as f32;
                kernels::scale(ctx.simd, row, inv);
            }
            if row.iter().any(|v| !v.is_finite()) {
                return Err(LayerError::NonFinite {
                    layer: "L2Normalize",
                });
            }
        }
        Ok(())
    }
    fn describe(&self) -> Node {
        Node::leaf("L2Normalize", self.dim, self.dim, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use patchbay_combinators::Scratch;
    use patchbay_primitives::{Simd, Threads};

    #[test]
    fn mean_then_normalise_matches_f64() {
        let (threads, scratch) = (Threads::single(), Scratch::new());
        let ctx = Ctx::new(Simd::detect(), &threads, &scratch);
        let (rows, dim) = (7, 37);
        let data: Vec<f32> = (0..rows * dim)
            .map(|i| ((i * 7919 % 113) as f32 - 56.0) / 13.0)
            .collect();
        let x = Act::from_vec(rows, dim, data.clone()).unwrap();
        let pooled = MeanPool::new(dim).apply(&x, &mut (), &ctx).unwrap();
        let y = L2Normalize::new(dim).apply(&pooled, &mut (), &ctx).unwrap();
        assert_eq!((y.rows(), y.cols()), (1, dim));
        let mean: Vec<f64> = (0..dim)
            .map(|c| (0..rows).map(|r| f64::from(data[r * dim + c])).sum::<f64>() / rows as f64)
            .collect();
        let norm = mean.iter().map(|v| v * v).sum::<f64>().sqrt();
        for (c, m) in mean.iter().enumerate() {
            let got = f64::from(y.row(0)[c]);
            assert!((got - m / norm).abs() < 1e-6, "{c}: {got} vs {}", m / norm);
        }
    }
}
