//! The process-wide memory budgets for model weights and KV caches: one for host memory and
//! one per GPU. A pool reserves before it loads weights or starts a replica; the reservation
//! is released when it is dropped, so memory freed by scaling down is available again without
//! bookkeeping elsewhere.
//!
//! A GPU budget also asks the device how much memory is free right now, because other
//! processes (and llama.cpp's own compute buffers, which are not reserved here) share the
//! card: a load goes ahead only if it fits both what this process has reserved and what the
//! device has free, less a margin.

use std::sync::{Arc, Mutex};

/// Reads a device's free memory now, in bytes; `None` when the device cannot say.
pub type FreeMemoryProbe = Box<dyn Fn() -> Option<u64> + Send + Sync>;

pub struct MemoryBudget {
    /// What is being budgeted, for messages: `memory budget`, `CUDA0 (NVIDIA H200)`.
    name: String,
    limit: u64,
    used: Mutex<u64>,
    probe: Option<(FreeMemoryProbe, u64)>,
}

impl std::fmt::Debug for MemoryBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBudget")
            .field("name", &self.name)
            .field("limit", &self.limit)
            .field("used", &self.used)
            .finish_non_exhaustive()
    }
}

/// Memory held against the budget until dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<MemoryBudget>,
    bytes: u64,
}

impl MemoryBudget {
    pub fn new(limit_bytes: u64) -> Arc<Self> {
        Arc::new(Self {
            name: "memory budget".into(),
            limit: limit_bytes,
            used: Mutex::new(0),
            probe: None,
        })
    }

    /// A device's budget: `limit_bytes` in all, and no more than `probe` says is free less
    /// `margin_bytes` at the moment of each reservation.
    pub fn device(
        name: impl Into<String>,
        limit_bytes: u64,
        probe: FreeMemoryProbe,
        margin_bytes: u64,
    ) -> Arc<Self> {
        Arc::new(Self {
            name: name.into(),
            limit: limit_bytes,
            used: Mutex::new(0),
            probe: Some((probe, margin_bytes)),
        })
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    pub fn used(&self) -> u64 {
        *self.used.lock().expect("budget lock")
    }

    /// Reserves `bytes` for `what`, or says why not.
    pub fn reserve(self: &Arc<Self>, bytes: u64, what: &str) -> Result<Reservation, String> {
        let mut used = self.used.lock().expect("budget lock");
        if *used + bytes > self.limit {
            return Err(format!(
                "{what} needs {} MiB but only {} MiB of the {} MiB {} are free",
                mib(bytes),
                mib(self.limit.saturating_sub(*used)),
                mib(self.limit),
                self.name
            ));
        }
        if bytes > 0 {
            if let Some((probe, margin)) = &self.probe {
                if let Some(free) = probe() {
                    if bytes + margin > free {
                        return Err(format!(
                            "{what} needs {} MiB on {} but the device has {} MiB free (keeping {} MiB spare)",
                            mib(bytes),
                            self.name,
                            mib(free),
                            mib(*margin)
                        ));
                    }
                }
            }
        }
        *used += bytes;
        Ok(Reservation {
            budget: Arc::clone(self),
            bytes,
        })
    }
}

impl Reservation {
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

/// The host budget and one budget per GPU, in llama.cpp's GPU order (`main_gpu` indexes it).
#[derive(Debug, Clone)]
pub struct Budgets {
    pub host: Arc<MemoryBudget>,
    pub gpus: Vec<Arc<MemoryBudget>>,
}

/// Host and GPU memory held together for one set of weights or one replica.
#[derive(Debug, Default)]
pub struct Held {
    pub host: Option<Reservation>,
    pub gpu: Option<Reservation>,
}

impl Held {
    pub fn host_bytes(&self) -> u64 {
        self.host.as_ref().map_or(0, Reservation::bytes)
    }

    pub fn gpu_bytes(&self) -> u64 {
        self.gpu.as_ref().map_or(0, Reservation::bytes)
    }
}

impl Budgets {
    pub fn host_only(host: Arc<MemoryBudget>) -> Self {
        Self {
            host,
            gpus: Vec::new(),
        }
    }

    /// Reserves `host` bytes of host memory and `gpu` bytes on GPU `ordinal`, both or neither.
    pub fn reserve(
        &self,
        host: u64,
        gpu: Option<(usize, u64)>,
        what: &str,
    ) -> Result<Held, String> {
        let gpu = match gpu {
            Some((ordinal, bytes)) => {
                let budget = self
                    .gpus
                    .get(ordinal)
                    .ok_or_else(|| format!("{what}: GPU {ordinal} has no budget"))?;
                Some(budget.reserve(bytes, what)?)
            }
            None => None,
        };
        // A refusal here drops the GPU reservation just taken.
        let host = self.host.reserve(host, what)?;
        Ok(Held {
            host: Some(host),
            gpu,
        })
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut used = self.budget.used.lock().expect("budget lock");
        *used = used.saturating_sub(self.bytes);
    }
}

fn mib(bytes: u64) -> u64 {
    bytes.div_ceil(1024 * 1024)
}

/// Makes memory freed by an unloaded replica go back to the system. glibc's malloc raises its
/// mmap threshold (up to 32 MiB) each time a large mmapped block is freed, and serves blocks
/// under it from its arenas from then on, which keep freed memory resident (`malloc_trim`
/// does not shrink a thread arena's top): after the first unload freed a replica's buffers,
/// each later load and unload left up to 10 MiB more resident every few scale-to-zero cycles
/// (RSS 44 → 66 MiB in five cycles of `genrt-bench`; 43 → 49 in eight with this, 44 → 45 in
/// five; benchmarks/README).
/// Setting the thresholds, at glibc's own initial values, turns that adjustment off: blocks of
/// 128 KiB and more are mapped and unmapped, as they were before the first unload. Called at
/// start, before the engine allocates; a no-op off glibc.
pub fn fix_malloc_thresholds() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes the allocator's parameters.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 * 1024);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_are_refused_over_the_limit_and_released_on_drop() {
        let budget = MemoryBudget::new(100 * 1024 * 1024);
        let a = budget.reserve(60 * 1024 * 1024, "weights").unwrap();
        let err = budget.reserve(50 * 1024 * 1024, "replica").unwrap_err();
        assert!(err.contains("needs 50 MiB but only 40 MiB"), "{err}");
        drop(a);
        assert!(budget.reserve(50 * 1024 * 1024, "replica").is_ok());
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn a_device_budget_also_needs_the_memory_to_be_free_now() {
        use std::sync::atomic::{AtomicU64, Ordering};
        const MIB: u64 = 1024 * 1024;
        let free = Arc::new(AtomicU64::new(1000 * MIB));
        let probe_free = Arc::clone(&free);
        let gpu = MemoryBudget::device(
            "CUDA0 (test)",
            2000 * MIB,
            Box::new(move || Some(probe_free.load(Ordering::SeqCst))),
            100 * MIB,
        );
        // Within the limit, but not within what is free less the margin.
        let err = gpu.reserve(950 * MIB, "weights").unwrap_err();
        assert!(
            err.contains("needs 950 MiB on CUDA0 (test) but the device has 1000 MiB free (keeping 100 MiB spare)"),
            "{err}"
        );
        assert_eq!(gpu.used(), 0);
        let held = gpu.reserve(800 * MIB, "weights").unwrap();
        // Another process took the card's memory: the limit alone would allow this.
        free.store(300 * MIB, Ordering::SeqCst);
        assert!(gpu.reserve(500 * MIB, "replica").is_err());
        drop(held);
        assert_eq!(gpu.used(), 0);

        let budgets = Budgets {
            host: MemoryBudget::new(100 * MIB),
            gpus: vec![gpu],
        };
        free.store(1500 * MIB, Ordering::SeqCst);
        // The host refuses: the GPU reservation taken first must be released with it.
        assert!(budgets
            .reserve(200 * MIB, Some((0, 500 * MIB)), "replica")
            .is_err());
        assert_eq!(budgets.gpus[0].used(), 0);
        let held = budgets
            .reserve(50 * MIB, Some((0, 500 * MIB)), "replica")
            .unwrap();
        assert_eq!((held.host_bytes(), held.gpu_bytes()), (50 * MIB, 500 * MIB));
        assert!(budgets
            .reserve(0, Some((1, 1)), "x")
            .unwrap_err()
            .contains("GPU 1"));
    }
}
