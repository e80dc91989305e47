//! Errors raised by primitives.

/// A shape or size check failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShapeError {
    /// A buffer holds a different number of elements than its shape needs.
    #[error("{what}: expected {expected} elements, found {found}")]
    Len {
        /// What was being checked.
        what: &'static str,
        /// Elements the shape needs.
        expected: usize,
        /// Elements present.
        found: usize,
    },
    /// Two operands disagree on a dimension.
    #[error("{what}: dimension mismatch, {left} vs {right}")]
    Mismatch {
        /// What was being checked.
        what: &'static str,
        /// Left operand's dimension.
        left: usize,
        /// Right operand's dimension.
        right: usize,
    },
    /// A shape's element count overflows `usize`.
    #[error("{what}: shape overflows usize")]
    Overflow {
        /// What was being checked.
        what: &'static str,
    },
}
