//! A global allocator that can bound the memory one piece of untrusted work
//! may hold.
//!
//! Some work runs code that arrives with a model file: a chat template is a
//! small program, and `{% set s = s ~ s %}` in a loop doubles a string forty
//! times in a few hundred instructions. A bound on instructions cannot catch
//! that, and an allocation failure in Rust aborts the process. So a program
//! that installs [`BoundedAlloc`] as its global allocator can run such work
//! inside [`with_memory_bound`]: the bytes allocated (net of those freed) by
//! the calling thread inside the scope are counted, and a request that would
//! take them past the bound calls the allocator's `on_exceeded` handler, which
//! ends the process with a message instead of letting it grow.
//!
//! Without [`BoundedAlloc`] installed, [`with_memory_bound`] only runs the
//! work: the bound is the installing program's choice.
//!
//! ```
//! use patchbay_primitives::alloc::with_memory_bound;
//!
//! let s = with_memory_bound(1 << 20, "a small job", || "ab".repeat(100));
//! assert_eq!(s.len(), 200);
//! ```

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// The bound of the scope running on this thread.
#[derive(Clone, Copy)]
struct Bound {
    /// Most bytes the scope may hold (0: no scope).
    limit: usize,
    /// Bytes allocated minus bytes freed on this thread since the scope began
    /// (negative when it frees memory allocated before).
    held: isize,
    /// What the scope runs, for the message.
    what: &'static str,
}

const NO_BOUND: Bound = Bound {
    limit: 0,
    held: 0,
    what: "",
};

thread_local! {
    // `const` and without `Drop`: reading it never allocates, so the
    // allocator itself may use it.
    static BOUND: Cell<Bound> = const { Cell::new(NO_BOUND) };
}

/// What [`BoundedAlloc`] does when a scope would exceed its bound: `what` is
/// the scope's description and `limit` its bound in bytes. It must not
/// return; it may allocate (the scope is closed before it is called).
pub type OnExceeded = fn(what: &'static str, limit: usize) -> !;

/// The system allocator, counting the bytes of [`with_memory_bound`] scopes.
///
/// Outside a scope it adds one thread-local read per call.
#[derive(Debug)]
pub struct BoundedAlloc {
    on_exceeded: OnExceeded,
}

impl BoundedAlloc {
    /// An allocator whose exceeded bounds end the process with exit code 1
    /// after printing `error: WHAT needed more than N MB of memory and was
    /// stopped` on stderr.
    pub const fn new() -> Self {
        BoundedAlloc {
            on_exceeded: exit_on_exceeded,
        }
    }

    /// An allocator calling `on_exceeded` when a bound is exceeded.
    pub const fn with_handler(on_exceeded: OnExceeded) -> Self {
        BoundedAlloc { on_exceeded }
    }

    /// Counts `delta` more bytes held by this thread's scope; past the bound
    /// it closes the scope and calls the handler.
    #[inline]
    fn count(&self, delta: isize) {
        let Ok(b) = BOUND.try_with(Cell::get) else {
            return;
        };
        if b.limit == 0 {
            return;
        }
        let held = b.held.saturating_add(delta);
        if delta > 0 && held > b.limit as isize {
            BOUND.with(|c| c.set(NO_BOUND));
            (self.on_exceeded)(b.what, b.limit);
        }
        BOUND.with(|c| c.set(Bound { held, ..b }));
    }
}

impl Default for BoundedAlloc {
    fn default() -> Self {
        Self::new()
    }
}

/// The default [`OnExceeded`]: prints `error: WHAT needed more than N MB of
/// memory and was stopped` on stderr and exits with code 1.
pub fn exit_on_exceeded(what: &'static str, limit: usize) -> ! {
    eprintln!(
        "error: {what} needed more than {} MB of memory and was stopped",
        limit >> 20
    );
    std::process::exit(1)
}

// SAFETY: every call is forwarded unchanged to `System`, which upholds the
// `GlobalAlloc` contract; the counting before it only reads and writes a
// thread-local `Cell` that never allocates, and never unwinds (the handler
// diverges by exiting, not by panicking, as its documentation requires).
unsafe impl GlobalAlloc for BoundedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.count(layout.size() as isize);
        // SAFETY: the caller's `layout` contract is passed through.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        self.count(layout.size() as isize);
        // SAFETY: as in `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        self.count(-(layout.size() as isize));
        // SAFETY: `ptr` came from this allocator, so from `System`, with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        self.count(new_size as isize - layout.size() as isize);
        // SAFETY: as in `dealloc`, and `new_size` is the caller's valid size.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Runs `work` with the bytes it allocates on this thread bounded by `limit`
/// (when the program's global allocator is [`BoundedAlloc`]); `what` names the
/// work in the message if it goes past. Scopes do not nest: an inner scope
/// replaces the outer one until it ends. A `limit` of 0 means no bound.
pub fn with_memory_bound<T>(limit: usize, what: &'static str, work: impl FnOnce() -> T) -> T {
    struct Restore(Bound);
    impl Drop for Restore {
        fn drop(&mut self) {
            let _ = BOUND.try_with(|c| c.set(self.0));
        }
    }
    let outer = BOUND.with(|c| {
        c.replace(Bound {
            limit,
            held: 0,
            what,
        })
    });
    let _restore = Restore(outer);
    work()
}

/// Bytes held (allocated minus freed) on this thread inside the current
/// [`with_memory_bound`] scope; `None` outside one. Counted only when
/// [`BoundedAlloc`] is the global allocator.
pub fn held_in_scope() -> Option<isize> {
    let b = BOUND.with(Cell::get);
    (b.limit != 0).then_some(b.held)
}
