//! The process-wide memory budget for model weights and KV caches. A pool reserves before it
//! loads weights or starts a replica; the reservation is released when it is dropped, so
//! memory freed by scaling down is available again without bookkeeping elsewhere.

use std::sync::{Arc, Mutex};

#[derive(Debug)]
pub struct MemoryBudget {
    limit: u64,
    used: Mutex<u64>,
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
            limit: limit_bytes,
            used: Mutex::new(0),
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
                "{what} needs {} MiB but only {} MiB of the {} MiB budget are free",
                mib(bytes),
                mib(self.limit.saturating_sub(*used)),
                mib(self.limit)
            ));
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

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut used = self.budget.used.lock().expect("budget lock");
        *used = used.saturating_sub(self.bytes);
    }
}

fn mib(bytes: u64) -> u64 {
    bytes.div_ceil(1024 * 1024)
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
}
