//! Limits on rendering a tenant's templates: an instruction budget (minijinja's fuel), a cap on
//! the rendered text, and a cap on the memory one render may hold.
//!
//! Fuel and the output cap are minijinja's own and always apply. Memory needs more: minijinja
//! bounds no intermediate value (`"x" * 100000000` is allowed, and `s ~ s` doubles a string
//! without a check), so a straight-line template of a few lines could ask for gigabytes before
//! anything is written. No in-process way exists to fail an allocation gracefully in Rust, so
//! [`BudgetAllocator`] (installed by the runtime as the global allocator) does the one thing it
//! can: a thread rendering under [`within_budget`] that would exceed its budget, or that
//! allocates after its deadline, stops for good there, before the memory is taken. The caller
//! waits on the render with a deadline of its own, refuses the template, and replaces the
//! thread; the stopped thread keeps what it held (at most the budget). The runtime also
//! remembers the template so that it is refused at once afterwards instead of stopping
//! another thread.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// What one render of one template may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TemplateLimits {
    /// minijinja instructions per template render.
    pub fuel: u64,
    /// Bytes of rendered text per template.
    pub max_output_bytes: usize,
    /// Bytes one render may hold at once (enforced by [`BudgetAllocator`] when installed).
    pub max_memory_bytes: usize,
}

impl Default for TemplateLimits {
    /// Generous for prompts: the input is at most 256 KiB by default and the rendered prompt
    /// must fit a model's context (tens of KiB), so a legitimate template stays far below.
    fn default() -> Self {
        Self {
            fuel: 200_000,
            max_output_bytes: 1024 * 1024,
            max_memory_bytes: 64 * 1024 * 1024,
        }
    }
}

/// A `fmt::Write`/`io::Write` sink that refuses to grow past its cap.
pub(crate) struct CappedOutput {
    pub(crate) text: Vec<u8>,
    cap: usize,
    pub(crate) overflowed: bool,
}

impl CappedOutput {
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            text: Vec::new(),
            cap,
            overflowed: false,
        }
    }
}

impl std::io::Write for CappedOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.text.len() + buf.len() > self.cap {
            self.overflowed = true;
            return Err(std::io::Error::other("rendered text is too large"));
        }
        self.text.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

thread_local! {
    /// `usize::MAX`: no budget (every thread but a render's).
    static BUDGET: Cell<usize> = const { Cell::new(usize::MAX) };
    static HELD: Cell<usize> = const { Cell::new(0) };
    static DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Threads stopped for exceeding their render budget since the process started.
static STOPPED: AtomicUsize = AtomicUsize::new(0);

/// Threads [`BudgetAllocator`] has stopped so far (a metric; each holds at most one budget).
pub fn stopped_render_threads() -> usize {
    STOPPED.load(Ordering::Relaxed)
}

/// Runs `f` with this thread's allocations limited to `bytes` held at once and to the time
/// before `deadline`. Past either, the thread stops inside the allocation that would cross
/// the line and never returns: call it only on a thread that can be abandoned (a render
/// pool's), never on an async worker.
pub fn within_budget<T>(bytes: usize, deadline: Instant, f: impl FnOnce() -> T) -> T {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            BUDGET.with(|b| b.set(usize::MAX));
            DEADLINE.with(|d| d.set(None));
        }
    }
    HELD.with(|h| h.set(0));
    DEADLINE.with(|d| d.set(Some(deadline)));
    BUDGET.with(|b| b.set(bytes));
    let _reset = Reset;
    f()
}

/// The system allocator, plus the per-thread budget of [`within_budget`]. Threads outside a
/// budget pay one thread-local read per allocation.
pub struct BudgetAllocator;

#[inline]
fn charge(bytes: usize) {
    let budget = BUDGET.with(Cell::get);
    if budget == usize::MAX {
        return;
    }
    let held = HELD.with(Cell::get).saturating_add(bytes);
    let late = DEADLINE
        .with(Cell::get)
        .is_some_and(|d| Instant::now() >= d);
    if held > budget || late {
        stop_this_thread();
    }
    HELD.with(|h| h.set(held));
}

#[inline]
fn credit(bytes: usize) {
    if BUDGET.with(Cell::get) != usize::MAX {
        HELD.with(|h| h.set(h.get().saturating_sub(bytes)));
    }
}

/// Never returns. Sleeping neither allocates nor unwinds, both of which are forbidden inside
/// an allocator; the budget is lifted first so that nothing this thread still does can stop
/// it twice.
#[cold]
fn stop_this_thread() -> ! {
    BUDGET.with(|b| b.set(usize::MAX));
    STOPPED.fetch_add(1, Ordering::Relaxed);
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

// SAFETY: every method forwards to `System` with the same arguments; the bookkeeping around it
// touches only `const`-initialised thread-locals without destructors, which neither allocate
// nor fail during thread teardown.
unsafe impl GlobalAlloc for BudgetAllocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        charge(layout.size());
        unsafe { System.alloc(layout) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        charge(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        credit(layout.size());
        unsafe { System.dealloc(ptr, layout) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() {
            charge(new_size - layout.size());
        } else {
            credit(layout.size() - new_size);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn capped_output_refuses_to_grow_past_its_cap() {
        let mut out = CappedOutput::new(4);
        assert!(out.write_all(b"abc").is_ok());
        assert!(out.write_all(b"de").is_err());
        assert!(out.overflowed);
        assert_eq!(out.text, b"abc");
    }

    #[test]
    fn the_budget_is_lifted_after_the_call() {
        let far = Instant::now() + Duration::from_secs(60);
        let n = within_budget(1 << 20, far, || vec![0u8; 1000].len());
        assert_eq!(n, 1000);
        assert_eq!(BUDGET.with(Cell::get), usize::MAX);
        assert_eq!(DEADLINE.with(Cell::get), None);
    }
}
