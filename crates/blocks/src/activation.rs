//! Element-wise non-linearities as layers.

use patchbay_combinators::{check_in, Capacity, Ctx, Layer, LayerError, Node};
use patchbay_primitives::{kernels, Act};

macro_rules! activation {
    ($(#[$doc:meta])* $name:ident, $kernel:path, $label:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub struct $name {
            dim: usize,
        }

        impl $name {
            /// The activation on rows of `dim` features.
            pub fn new(dim: usize) -> Self {
                Self { dim }
            }
        }

        impl Layer for $name {
            type State = ();
            fn in_dim(&self) -> usize {
                self.dim
            }
            fn out_dim(&self) -> usize {
                self.dim
            }
            fn new_state(&self, _cap: Capacity) {}
            fn forward(&self, x: &Act, y: &mut Act, _: &mut (), ctx: &Ctx<'_>) -> Result<(), LayerError> {
                check_in($label, self.dim, x)?;
                y.reshape(x.rows(), self.dim);
                if self.dim == 0 {
                    return Ok(());
                }
                let (src, simd) = (x.as_slice(), ctx.simd);
                ctx.for_row_runs(y.as_mut_slice(), self.dim, |first, run| {
                    // Row by row, so the kernel finds its row in L1 right
                    // after the copy instead of in a second pass over the run.
                    let rows = src[first * self.dim..].chunks_exact(self.dim);
                    for (out, row) in run.chunks_exact_mut(self.dim).zip(rows) {
                        out.copy_from_slice(row);
                        $kernel(simd, out);
                    }
                });
                Ok(())
            }
            fn describe(&self) -> Node {
                Node::leaf($label, self.dim, self.dim, 0)
            }
        }
    };
}

activation!(
    /// `x * sigmoid(x)` (the gate of SwiGLU).
    ///
    /// ```
    /// use patchbay_blocks::Silu;
    /// use patchbay_combinators::{Capacity, Ctx, Layer};
    /// use patchbay_primitives::{Act, Simd, Threads};
    /// let (threads, scratch) = (Threads::single(), patchbay_combinators::Scratch::new());
    /// let ctx = Ctx::new(Simd::detect(), &threads, &scratch);
    /// let y = Silu::new(1).apply(&Act::from_vec(1, 1, vec![1.0]).unwrap(), &mut (), &ctx).unwrap();
    /// assert!((y.as_slice()[0] - 0.7310586).abs() < 1e-6);
    /// ```
    Silu,
    kernels::silu,
    "Silu"
);

activation!(
    /// GELU, tanh approximation (GeGLU of Gemma, GPT-2).
    ///
    /// ```
    /// use patchbay_blocks::GeluTanh;
    /// use patchbay_combinators::{Capacity, Ctx, Layer};
    /// use patchbay_primitives::{Act, Simd, Threads};
    /// let (threads, scratch) = (Threads::single(), patchbay_combinators::Scratch::new());
    /// let ctx = Ctx::new(Simd::detect(), &threads, &scratch);
    /// let y = GeluTanh::new(1).apply(&Act::from_vec(1, 1, vec![1.0]).unwrap(), &mut (), &ctx).unwrap();
    /// assert!((y.as_slice()[0] - 0.841192).abs() < 1e-5);
    /// ```
    GeluTanh,
    kernels::gelu_tanh,
    "GeluTanh"
);

activation!(
    /// GELU with the exact error function (BERT).
    ///
    /// ```
    /// use patchbay_blocks::GeluErf;
    /// use patchbay_combinators::{Capacity, Ctx, Layer};
    /// use patchbay_primitives::{Act, Simd, Threads};
    /// let (threads, scratch) = (Threads::single(), patchbay_combinators::Scratch::new());
    /// let ctx = Ctx::new(Simd::detect(), &threads, &scratch);
    /// let y = GeluErf::new(1).apply(&Act::from_vec(1, 1, vec![1.0]).unwrap(), &mut (), &ctx).unwrap();
    /// assert!((y.as_slice()[0] - 0.841345).abs() < 1e-5);
    /// ```
    GeluErf,
    kernels::gelu_erf,
    "GeluErf"
);
