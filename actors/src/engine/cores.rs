//! Turns at the machine's cores for the llama.cpp contexts of this process.
//!
//! Why: inside a graph, ggml's threads wait for each other at barriers by spinning (hundreds
//! of barriers per decode step; see `threadpool`). That is the fast way while a context's
//! threads have a core each, and a collapse when they do not: two contexts of two threads on
//! two cores leave a thread spinning for a whole scheduler slice at a barrier whose partner is
//! descheduled. Measured on the 2-core machines with two servers in one process (the e2e
//! example test, each running the same generations): 14.8 s one after the other, 22–29 s at
//! once; a CI run of it timed a 60-second invocation out. A node runs several models and
//! replicas, so this is not only a test's problem.
//!
//! So a CPU context computes a graph only while it holds a turn of as many cores as it has
//! threads (at most the machine's), given in arrival order: the steps of contexts that would
//! not fit side by side take turns, as a CPU can only run them anyway, and none starves. A turn
//! spans one `llama_decode` (milliseconds); sampling and everything else run outside it.
//! Contexts whose layers are all on a GPU do not take turns: their CPU threads barely run.

use std::sync::{Condvar, Mutex, OnceLock};

/// Counting cores in arrival order.
pub(crate) struct Cores {
    total: u32,
    state: Mutex<State>,
    changed: Condvar,
}

struct State {
    free: u32,
    /// The next ticket to hand out, and the ticket whose turn is next.
    next: u64,
    serving: u64,
}

/// Cores held for one graph; given back on drop.
pub(crate) struct Turn<'a> {
    cores: &'a Cores,
    held: u32,
}

impl Cores {
    pub(crate) fn new(total: u32) -> Self {
        let total = total.max(1);
        Self {
            total,
            state: Mutex::new(State {
                free: total,
                next: 0,
                serving: 0,
            }),
            changed: Condvar::new(),
        }
    }

    /// The process's cores: what the scheduler lets it use (cgroup quotas and CPU affinity
    /// included, as `available_parallelism` reads them).
    pub(crate) fn machine() -> &'static Self {
        static CORES: OnceLock<Cores> = OnceLock::new();
        CORES.get_or_init(|| {
            Self::new(std::thread::available_parallelism().map_or(1, |n| n.get() as u32))
        })
    }

    /// Waits for `threads` cores (at most all of them), after every earlier caller.
    pub(crate) fn turn(&self, threads: u32) -> Turn<'_> {
        let want = threads.clamp(1, self.total);
        let mut state = self.state.lock().expect("cores lock");
        let ticket = state.next;
        state.next += 1;
        while state.serving != ticket || state.free < want {
            state = self.changed.wait(state).expect("cores lock");
        }
        state.free -= want;
        state.serving += 1;
        drop(state);
        // The next ticket may fit in what is left.
        self.changed.notify_all();
        Turn {
            cores: self,
            held: want,
        }
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let mut state = self.cores.state.lock().expect("cores lock");
        state.free += self.held;
        drop(state);
        self.cores.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::{mpsc, Arc};
    use std::time::Duration;

    #[test]
    fn turns_never_hold_more_cores_than_there_are() {
        let cores = Arc::new(Cores::new(2));
        let in_use = Arc::new(AtomicU32::new(0));
        let most = Arc::new(AtomicU32::new(0));
        let workers: Vec<_> = [2, 2, 1, 1, 5]
            .into_iter()
            .map(|threads| {
                let (cores, in_use, most) = (cores.clone(), in_use.clone(), most.clone());
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        let turn = cores.turn(threads);
                        let now = in_use.fetch_add(turn.held, Ordering::SeqCst) + turn.held;
                        most.fetch_max(now, Ordering::SeqCst);
                        std::thread::yield_now();
                        in_use.fetch_sub(turn.held, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        assert_eq!(
            most.load(Ordering::SeqCst),
            2,
            "at most the two cores, and both used"
        );
        assert_eq!(cores.state.lock().unwrap().free, 2, "every core given back");
    }

    #[test]
    fn turns_come_in_arrival_order_and_a_small_one_waits_behind_a_big_one() {
        let cores = Arc::new(Cores::new(2));
        let first = cores.turn(1);
        let (tx, rx) = mpsc::channel();
        // A turn of two cores arrives and waits for the one held.
        let big = {
            let (cores, tx) = (cores.clone(), tx.clone());
            std::thread::spawn(move || {
                let _turn = cores.turn(2);
                tx.send("big").unwrap();
            })
        };
        while cores.state.lock().unwrap().next < 2 {
            std::thread::yield_now();
        }
        // A turn of one core would fit beside `first`, but the big one came before it.
        let small = {
            let (cores, tx) = (cores.clone(), tx.clone());
            std::thread::spawn(move || {
                let _turn = cores.turn(1);
                tx.send("small").unwrap();
            })
        };
        assert!(
            rx.recv_timeout(Duration::from_millis(200)).is_err(),
            "nothing runs while the first turn holds a core and the big one is next"
        );
        drop(first);
        assert_eq!(rx.recv().unwrap(), "big");
        assert_eq!(rx.recv().unwrap(), "small");
        big.join().unwrap();
        small.join().unwrap();
    }
}
