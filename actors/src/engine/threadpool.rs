//! The CPU threads of one llama.cpp context: a ggml thread pool that the context's owner
//! creates, attaches and frees.
//!
//! Why not OpenMP, llama-cpp-2's default build: there, ggml synchronises a context's threads
//! with libgomp barriers (hundreds per decode step), and libgomp's waiting policy is one
//! setting for the whole process, read once when it loads. Decoding wants threads that spin at
//! those barriers: a thread that sleeps costs more to wake than the graph node it waited for
//! (two threads decoded 16 streams at 107–122 tokens/s with libgomp's defaults, 159–178 told
//! to spin). But the same spin then held a core for milliseconds after every decode step,
//! exactly when the step's caller, its HTTP response and the next requests needed it: on the
//! 2-core machines a one-token invocation's runtime overhead had a p99 of 3–6 ms spinning and
//! about 2 ms with the spin off, which made decoding 3× slower (`GOMP_SPINCOUNT` 300000 vs 0).
//!
//! ggml's own pool keeps the two apart: inside a graph its threads always spin at barriers,
//! and between graphs they wait as `poll` says. The engine uses `poll = 0`: they sleep as soon
//! as a step's graph is done, and the next step wakes them (one futex wake per step,
//! microseconds against steps of milliseconds).
//!
//! A context leases its pool and gives it back when it ends, for the next context of the same
//! shape: a replica that scales to zero leaves its threads asleep (no CPU, their stacks only)
//! rather than ending them, so that a cold start does not start threads again and the process
//! does not churn threads (and their malloc arenas) at every scale-to-zero cycle.
//!
//! With llama.cpp's CPU code in loadable modules, the pool's constructor is found through the
//! CPU module's registry, as llama.cpp's own tools find it.

use std::ffi::{c_void, CStr};
use std::ptr::NonNull;
use std::sync::Mutex;

use llama_cpp_sys_2 as sys;

type ThreadPoolNew =
    unsafe extern "C" fn(*mut sys::ggml_threadpool_params) -> *mut sys::ggml_threadpool;
type ThreadPoolFree = unsafe extern "C" fn(*mut sys::ggml_threadpool);

/// Between graphs, the engine's threads sleep at once (see the module's comment).
pub const ENGINE_POLL: u32 = 0;
/// llama.cpp's default (`ggml_threadpool_params_default`): its tools' threads poll a while
/// between graphs.
pub const LLAMA_CPP_POLL: u32 = 50;

/// Owns a ggml thread pool; freed on drop.
pub struct ThreadPool {
    ptr: NonNull<sys::ggml_threadpool>,
    free: ThreadPoolFree,
    shape: (i32, u32),
}

// SAFETY: a ggml pool may be driven from any thread, one graph at a time; a pool is used only
// through a `Lease`, which one context holds at a time.
unsafe impl Send for ThreadPool {}

/// Pools whose contexts ended, waiting for the next context of their shape (threads, poll).
/// At most as many as contexts ever ran at once.
static SPARE: Mutex<Vec<ThreadPool>> = Mutex::new(Vec::new());

/// A pool held by one context; back to the spares on drop, which must come after the context
/// is freed (declare the lease before it).
pub struct Lease(Option<ThreadPool>);

impl Lease {
    /// A spare pool of this shape, or a new one; `None` where the CPU module offers no pools
    /// (llama.cpp then makes one per graph).
    pub fn take(threads: i32, poll: u32) -> Option<Self> {
        let threads = threads.max(1);
        let spare = {
            let mut spare = SPARE.lock().expect("spare pools lock");
            let found = spare.iter().position(|p| p.shape == (threads, poll));
            found.map(|i| spare.swap_remove(i))
        };
        spare
            .or_else(|| ThreadPool::new(threads, poll))
            .map(|p| Self(Some(p)))
    }

    /// Makes `ctx` compute on this pool, for single tokens and batches alike.
    ///
    /// # Safety
    /// `ctx` is a live context, freed before this lease is dropped.
    pub(crate) unsafe fn attach(&self, ctx: *mut sys::llama_context) {
        let pool = self.0.as_ref().expect("held until dropped");
        // SAFETY: per this function's contract.
        unsafe { sys::llama_attach_threadpool(ctx, pool.ptr.as_ptr(), pool.ptr.as_ptr()) }
    }

    /// Ends the pool now instead of keeping it for the next context: its threads stop at once,
    /// where a pool that polls (as [`LLAMA_CPP_POLL`] does) would otherwise keep spinning for
    /// a while after its last graph, on cores that something else is about to be measured on.
    ///
    /// # Safety
    /// No context is attached to the pool any more (the one it served has been freed).
    pub unsafe fn discard(mut self) {
        drop(self.0.take());
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(pool) = self.0.take() {
            SPARE.lock().expect("spare pools lock").push(pool);
        }
    }
}

impl ThreadPool {
    fn new(threads: i32, poll: u32) -> Option<Self> {
        // SAFETY: the registry is a static of the loaded CPU module; the names are
        // NUL-terminated; the functions found have the signatures of ggml-cpu.h.
        unsafe {
            let reg = sys::ggml_backend_reg_by_name(c"CPU".as_ptr());
            if reg.is_null() {
                return None;
            }
            let lookup = |name: &CStr| sys::ggml_backend_reg_get_proc_address(reg, name.as_ptr());
            let (new, free) = (
                lookup(c"ggml_threadpool_new"),
                lookup(c"ggml_threadpool_free"),
            );
            if new.is_null() || free.is_null() {
                return None;
            }
            let new = std::mem::transmute::<*mut c_void, ThreadPoolNew>(new);
            let free = std::mem::transmute::<*mut c_void, ThreadPoolFree>(free);
            let mut params = sys::ggml_threadpool_params_default(threads);
            params.poll = poll;
            let ptr = NonNull::new(new(&mut params))?;
            Some(Self {
                ptr,
                free,
                shape: (threads, poll),
            })
        }
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        // SAFETY: created by the module's `ggml_threadpool_new`, freed once.
        unsafe { (self.free)(self.ptr.as_ptr()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_come_from_the_cpu_module_and_are_reused_by_shape() {
        crate::engine::llama_backend().expect("backend");
        // A shape no other test uses, so that the spares seen here are this test's.
        let lease = Lease::take(3, 7).expect("a pool from the CPU module");
        let ptr = lease.0.as_ref().unwrap().ptr;
        drop(lease);
        let other = Lease::take(3, 8).expect("another shape");
        assert_ne!(
            other.0.as_ref().unwrap().ptr,
            ptr,
            "a new pool for another shape"
        );
        let again = Lease::take(3, 7).expect("the spare");
        assert_eq!(
            again.0.as_ref().unwrap().ptr,
            ptr,
            "the spare pool taken again"
        );
    }
}
