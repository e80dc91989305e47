//! [`Embedding`]: token ids to vectors, reading (quantised) rows in place.

use patchbay_combinators::{check_in, Capacity, Ctx, Layer, LayerError, Node};
use patchbay_primitives::{kernels, quant, Act, Tensor};

use crate::BlockError;

/// Looks up rows of a `vocab x dim` table. Input rows hold one token id each
/// (a token activation, [`Act::from_tokens`]: integers, not floats); each row
/// is dequantised straight from the table.
/// An optional scale multiplies the result (Gemma scales by `sqrt(dim)`).
///
/// ```
/// use patchbay_blocks::Embedding;
/// use patchbay_combinators::{Capacity, Ctx, Layer};
/// use patchbay_primitives::{Act, Simd, Tensor, Threads};
/// let table = Tensor::from_f32(&[0.0, 0.1, 1.0, 1.1, 2.0, 2.1], vec![3, 2]).unwrap();
/// let emb = Embedding::new(table).unwrap();
/// let (threads, scratch) = (Threads::single(), patchbay_combinators::Scratch::new());
/// let ctx = Ctx::new(Simd::detect(), &threads, &scratch);
/// let ids = Act::from_tokens(&[2, 0]);
/// let y = emb.apply(&ids, &mut (), &ctx).unwrap();
/// assert_eq!(y.as_slice(), &[2.0, 2.1, 0.0, 0.1]);
/// // An id outside the vocabulary is an error, not a panic.
/// assert!(emb.apply(&Act::from_tokens(&[3]), &mut (), &ctx).is_err());
/// ```
#[derive(Debug, Clone)]
pub struct Embedding {
    table: Tensor,
    vocab: usize,
    dim: usize,
    scale: Option<f32>,
}

impl Embedding {
    /// An embedding over `table` (`vocab x dim`, any dtype).
    pub fn new(table: Tensor) -> Result<Embedding, BlockError> {
        let shape = table.shape();
        if shape.len() != 2 {
            return Err(BlockError::Shape {
                what: "Embedding table must be 2-D",
                expected: vec![0, 0],
                found: shape.to_vec(),
            });
        }
        Ok(Embedding {
            vocab: shape[0],
            dim: shape[1],
            table,
            scale: None,
        })
    }

    /// Multiplies every embedding by `scale`.
    pub fn with_scale(mut self, scale: Option<f32>) -> Embedding {
        self.scale = scale;
        self
    }

    /// The table.
    pub fn table(&self) -> &Tensor {
        &self.table
    }

    /// Vocabulary size.
    pub fn vocab(&self) -> usize {
        self.vocab
    }
}

impl Layer for Embedding {
    type State = ();

    fn in_dim(&self) -> usize {
        1
    }
    fn out_dim(&self) -> usize {
        self.dim
    }
    fn new_state(&self, _cap: Capacity) {}
    fn forward(&self, x: &Act, y: &mut Act, _: &mut (), ctx: &Ctx<'_>) -> Result<(), LayerError> {
        check_in("Embedding", 1, x)?;
        y.reshape(x.rows(), self.dim);
        let row_bytes = self.table.bytes().len() / self.vocab.max(1);
        for r in 0..x.rows() {
            let id = x.token(r);
            let i = id as usize;
            if i >= self.vocab {
                return Err(LayerError::TokenOutOfRange {
                    layer: "Embedding",
                    id,
                    vocab: self.vocab,
                });
            }
            let src = &self.table.bytes()[i * row_bytes..(i + 1) * row_bytes];
            let out = y.row_mut(r);
            quant::dequantize_row(self.table.dtype(), src, out)?;
            if let Some(s) = self.scale {
                kernels::scale(ctx.simd, out, s);
            }
        }
        Ok(())
    }
    fn describe(&self) -> Node {
        Node::leaf("Embedding", 1, self.dim, (self.vocab * self.dim) as u64).with_detail(format!(
            "vocab={} {}",
            self.vocab,
            self.table.dtype()
        ))
    }
}

/// Adds a learned absolute position embedding: row `r` gets
/// `table[ctx.position(r)]` added (BERT, GPT-2), plus an optional constant row
/// added to every position (BERT's token-type-0 embedding, which a
/// single-segment input always uses).
///
/// ```
/// use patchbay_blocks::PositionEmbedding;
/// use patchbay_combinators::{Ctx, Layer, Scratch};
/// use patchbay_primitives::{Act, Simd, Tensor, Threads};
/// let table = Tensor::from_f32(&[0.0, 0.5, 1.0, 1.5], vec![2, 2]).unwrap();
/// let pe = PositionEmbedding::new(table, None).unwrap();
/// let (threads, scratch) = (Threads::single(), Scratch::new());
/// let ctx = Ctx::new(Simd::detect(), &threads, &scratch);
/// let x = Act::from_vec(2, 2, vec![1.0; 4]).unwrap();
/// assert_eq!(pe.apply(&x, &mut (), &ctx).unwrap().as_slice(), &[1.0, 1.5, 2.0, 2.5]);
/// // A position past the table is an error, not a panic.
/// assert!(pe.apply(&x, &mut (), &ctx.at(1)).is_err());
/// ```
#[derive(Debug, Clone)]
pub struct PositionEmbedding {
    table: Tensor,
    n_positions: usize,
    dim: usize,
    constant: Option<Vec<f32>>,
}

impl PositionEmbedding {
    /// Positions from `table` (`n_positions x dim`, any dtype), plus
    /// `constant` (`dim` values) on every row if given.
    pub fn new(table: Tensor, constant: Option<Vec<f32>>) -> Result<PositionEmbedding, BlockError> {
        let shape = table.shape();
        if shape.len() != 2 {
            return Err(BlockError::Shape {
                what: "position embedding table must be 2-D",
                expected: vec![0, 0],
                found: shape.to_vec(),
            });
        }
        let (n_positions, dim) = (shape[0], shape[1]);
        if let Some(c) = &constant {
            if c.len() != dim {
                return Err(BlockError::Shape {
                    what: "position embedding constant row",
                    expected: vec![dim],
                    found: vec![c.len()],
                });
            }
        }
        Ok(PositionEmbedding {
            table,
            n_positions,
            dim,
            constant,
        })
    }

    /// Positions the table covers.
    pub fn n_positions(&self) -> usize {
        self.n_positions
    }
}

impl Layer for PositionEmbedding {
    type State = ();

    fn in_dim(&self) -> usize {
        self.dim
    }
    fn out_dim(&self) -> usize {
        self.dim
    }
    fn new_state(&self, _cap: Capacity) {}
    fn forward(&self, x: &Act, y: &mut Act, _: &mut (), ctx: &Ctx<'_>) -> Result<(), LayerError> {
        check_in("PositionEmbedding", self.dim, x)?;
        y.copy_from(x);
        let row_bytes = self.table.bytes().len() / self.n_positions.max(1);
        let mut row = ctx.scratch.vec();
        row.resize(self.dim, 0.0);
        for r in 0..x.rows() {
            let p = ctx.position(r);
            if p >= self.n_positions {
                return Err(LayerError::ContextFull {
                    layer: "PositionEmbedding",
                    pos: p + 1,
                    max_context: self.n_positions,
                });
            }
            let src = &self.table.bytes()[p * row_bytes..(p + 1) * row_bytes];
            quant::dequantize_row(self.table.dtype(), src, &mut row)?;
            let out = y.row_mut(r);
            kernels::add_assign(ctx.simd, out, &row);
            if let Some(c) = &self.constant {
                kernels::add_assign(ctx.simd, out, c);
            }
        }
        Ok(())
    }
    fn describe(&self) -> Node {
        let params =
            (self.n_positions * self.dim + self.constant.as_ref().map_or(0, Vec::len)) as u64;
        Node::leaf("PositionEmbedding", self.dim, self.dim, params).with_detail(format!(
            "{} positions {}",
            self.n_positions,
            self.table.dtype()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use patchbay_combinators::Scratch;
    use patchbay_primitives::{Simd, Threads};

    /// Ids are integers end to end: one past 2^24, which an f32 cannot hold
    /// (it would round to 2^24), reaches the range check exactly.
    #[test]
    fn ids_above_f32_precision_arrive_exactly() {
        let table = Tensor::from_f32(&[0.0, 1.0], vec![2, 1]).unwrap();
        let emb = Embedding::new(table).unwrap();
        let (threads, scratch) = (Threads::single(), Scratch::new());
        let ctx = Ctx::new(Simd::detect(), &threads, &scratch);
        let id = (1 << 24) + 1;
        match emb.apply(&Act::from_tokens(&[1, id]), &mut (), &ctx) {
            Err(LayerError::TokenOutOfRange { id: got, vocab, .. }) => {
                assert_eq!((got, vocab), (id, 2));
            }
            other => panic!("expected TokenOutOfRange, got {other:?}"),
        }
        let y = emb
            .apply(&Act::from_tokens(&[1, 0]), &mut (), &ctx)
            .unwrap();
        assert_eq!(y.as_slice(), &[1.0, 0.0]);
    }
}
