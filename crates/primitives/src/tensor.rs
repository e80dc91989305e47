//! Light tensor types: an owned activation buffer and borrowed row-major views.
//!
//! Activations flow between layers as [`Act`]: a row-major `rows x cols` matrix in
//! which each row is one token. Its storage is allocated once with the largest
//! shape it will hold; [`Act::reshape`] then changes the logical shape without
//! touching the allocator, which is how the decode hot path stays allocation-free.
//!
//! Token ids travel as integers: a token activation has one lane per row that
//! holds the id's 32 bits ([`Act::from_tokens`], [`Act::token`]), never an id
//! converted to a float, so every `u32` id arrives exactly and no kernel does
//! arithmetic on it.

use crate::error::ShapeError;

/// An owned row-major `rows x cols` f32 matrix whose allocation is reused.
#[derive(Clone, Default)]
pub struct Act {
    /// The elements in `data[..rows * cols]`; what follows is left from a
    /// larger shape, so that shrinking and growing again (a layer's scratch
    /// between widths) writes nothing.
    data: Vec<f32>,
    rows: usize,
    cols: usize,
}

impl std::fmt::Debug for Act {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Act")
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .finish_non_exhaustive()
    }
}

impl Act {
    /// An empty buffer that can later hold `max_rows x max_cols` without reallocating.
    pub fn with_capacity(max_rows: usize, max_cols: usize) -> Act {
        Act {
            data: Vec::with_capacity(max_rows.saturating_mul(max_cols)),
            rows: 0,
            cols: max_cols,
        }
    }

    /// A zero-filled `rows x cols` matrix.
    pub fn zeros(rows: usize, cols: usize) -> Act {
        Act {
            data: vec![0.0; rows * cols],
            rows,
            cols,
        }
    }

    /// Wraps `data` as a `rows x cols` matrix, checking its length.
    pub fn from_vec(rows: usize, cols: usize, data: Vec<f32>) -> Result<Act, ShapeError> {
        let expected = rows
            .checked_mul(cols)
            .ok_or(ShapeError::Overflow { what: "Act" })?;
        if data.len() != expected {
            return Err(ShapeError::Len {
                what: "Act::from_vec",
                expected,
                found: data.len(),
            });
        }
        Ok(Act { data, rows, cols })
    }

    /// A `n x 1` activation of token ids, one row per token, each lane holding
    /// the id's bits (see [`Act::token`]).
    ///
    /// ```
    /// use patchbay_primitives::Act;
    /// let ids = Act::from_tokens(&[7, 0, u32::MAX]);
    /// assert_eq!((ids.rows(), ids.cols()), (3, 1));
    /// assert_eq!(ids.tokens().collect::<Vec<_>>(), [7, 0, u32::MAX]);
    /// ```
    pub fn from_tokens(tokens: &[u32]) -> Act {
        let mut act = Act::with_capacity(tokens.len(), 1);
        act.load_tokens(tokens);
        act
    }

    /// Makes `self` the `n x 1` token activation of `tokens`, reusing the
    /// allocation.
    pub fn load_tokens(&mut self, tokens: &[u32]) {
        self.data.clear();
        self.data.extend(tokens.iter().map(|&t| f32::from_bits(t)));
        self.rows = tokens.len();
        self.cols = 1;
    }

    /// Writes token `id` into row `r`'s first lane (a token activation is
    /// `rows x 1`).
    #[inline]
    pub fn set_token(&mut self, r: usize, id: u32) {
        self.row_mut(r)[0] = f32::from_bits(id);
    }

    /// The token id held by row `r` of a token activation.
    #[inline]
    pub fn token(&self, r: usize) -> u32 {
        self.row(r)[0].to_bits()
    }

    /// The token ids of a token activation, one per row.
    pub fn tokens(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.rows).map(|r| self.token(r))
    }

    /// Sets the logical shape; contents are unspecified afterwards (elements
    /// never used by any shape before are 0).
    ///
    /// Does not allocate when `rows * cols` fits the capacity reserved so far,
    /// and writes nothing unless the shape is the largest yet.
    #[inline]
    pub fn reshape(&mut self, rows: usize, cols: usize) {
        let len = rows * cols;
        if self.data.len() < len {
            self.data.resize(len, 0.0);
        }
        self.rows = rows;
        self.cols = cols;
    }

    /// Makes `self` a copy of `src` (reusing the allocation).
    #[inline]
    pub fn copy_from(&mut self, src: &Act) {
        self.data.clear();
        self.data.extend_from_slice(src.as_slice());
        self.rows = src.rows;
        self.cols = src.cols;
    }

    /// Number of rows (tokens).
    #[inline]
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns (features).
    #[inline]
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Elements the allocation can hold without growing.
    pub fn capacity(&self) -> usize {
        self.data.capacity()
    }

    /// All elements, row-major.
    #[inline]
    pub fn as_slice(&self) -> &[f32] {
        &self.data[..self.rows * self.cols]
    }

    /// All elements, row-major, mutable.
    #[inline]
    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        &mut self.data[..self.rows * self.cols]
    }

    /// Row `i`. Panics if `i >= rows` (an internal invariant, not user input).
    #[inline]
    pub fn row(&self, i: usize) -> &[f32] {
        &self.as_slice()[i * self.cols..(i + 1) * self.cols]
    }

    /// Row `i`, mutable.
    #[inline]
    pub fn row_mut(&mut self, i: usize) -> &mut [f32] {
        let cols = self.cols;
        &mut self.as_mut_slice()[i * cols..(i + 1) * cols]
    }

    /// A borrowed view of the whole matrix.
    #[inline]
    pub fn view(&self) -> MatRef<'_> {
        MatRef {
            data: self.as_slice(),
            rows: self.rows,
            cols: self.cols,
            stride: self.cols,
        }
    }

    /// Consumes the buffer, returning its elements.
    pub fn into_vec(mut self) -> Vec<f32> {
        self.data.truncate(self.rows * self.cols);
        self.data
    }
}

/// Equal shapes and elements (whatever a larger shape left behind).
impl PartialEq for Act {
    fn eq(&self, other: &Act) -> bool {
        (self.rows, self.cols) == (other.rows, other.cols) && self.as_slice() == other.as_slice()
    }
}

/// A borrowed row-major f32 matrix view with a row stride (in elements).
#[derive(Debug, Clone, Copy)]
pub struct MatRef<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    stride: usize,
}

impl<'a> MatRef<'a> {
    /// A dense `rows x cols` view of `data`.
    pub fn new(data: &'a [f32], rows: usize, cols: usize) -> Result<Self, ShapeError> {
        Self::with_stride(data, rows, cols, cols)
    }

    /// A view whose rows start `stride` elements apart (`stride >= cols`).
    pub fn with_stride(
        data: &'a [f32],
        rows: usize,
        cols: usize,
        stride: usize,
    ) -> Result<Self, ShapeError> {
        if stride < cols {
            return Err(ShapeError::Mismatch {
                what: "MatRef stride < cols",
                left: stride,
                right: cols,
            });
        }
        let needed = if rows == 0 {
            0
        } else {
            (rows - 1)
                .checked_mul(stride)
                .and_then(|n| n.checked_add(cols))
                .ok_or(ShapeError::Overflow { what: "MatRef" })?
        };
        if data.len() < needed {
            return Err(ShapeError::Len {
                what: "MatRef",
                expected: needed,
                found: data.len(),
            });
        }
        Ok(MatRef {
            data,
            rows,
            cols,
            stride,
        })
    }

    /// Number of rows.
    #[inline]
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns.
    #[inline]
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Distance between row starts, in elements.
    #[inline]
    pub fn stride(&self) -> usize {
        self.stride
    }

    /// Row `i`.
    #[inline]
    pub fn row(&self, i: usize) -> &'a [f32] {
        &self.data[i * self.stride..i * self.stride + self.cols]
    }

    /// The underlying slice (from the first element of row 0).
    #[inline]
    pub fn as_slice(&self) -> &'a [f32] {
        self.data
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reshape_within_capacity_keeps_allocation() {
        let mut a = Act::with_capacity(4, 8);
        let ptr = a.as_slice().as_ptr();
        a.reshape(4, 8);
        let ptr2 = a.as_slice().as_ptr();
        a.reshape(1, 8);
        a.reshape(2, 16);
        assert_eq!(a.as_slice().as_ptr(), ptr2);
        assert!(ptr.is_null() || ptr == ptr2 || a.capacity() >= 32);
        assert_eq!((a.rows(), a.cols()), (2, 16));
    }

    #[test]
    fn from_vec_checks_length() {
        assert!(Act::from_vec(2, 3, vec![0.0; 6]).is_ok());
        assert!(matches!(
            Act::from_vec(2, 3, vec![0.0; 5]),
            Err(ShapeError::Len { .. })
        ));
        assert!(Act::from_vec(usize::MAX, 2, vec![]).is_err());
    }

    #[test]
    fn matref_checks_bounds() {
        let v = vec![0.0f32; 10];
        assert!(MatRef::new(&v, 2, 5).is_ok());
        assert!(MatRef::new(&v, 3, 4).is_err());
        assert!(MatRef::with_stride(&v, 2, 4, 6).is_ok());
        assert!(MatRef::with_stride(&v, 2, 4, 3).is_err());
        assert!(MatRef::with_stride(&v, usize::MAX, 4, 6).is_err());
        let m = MatRef::with_stride(&v, 2, 4, 6).unwrap();
        assert_eq!(m.row(1).len(), 4);
    }
}
