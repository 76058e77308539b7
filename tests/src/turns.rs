//! Turns for the tests of one binary: cargo runs a binary's tests on parallel threads of one
//! process, so a test that measures latency or the process's memory must not share the
//! machine (or the process's RSS) with another test loading a model at the same moment.

use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// One per test binary, as a `static`.
pub struct Turns(RwLock<()>);

/// Held for the length of a test; dropping it lets the others in.
pub enum Turn {
    Shared(#[allow(dead_code)] RwLockReadGuard<'static, ()>),
    Alone(#[allow(dead_code)] RwLockWriteGuard<'static, ()>),
}

impl Turns {
    pub const fn new() -> Self {
        Self(RwLock::const_new(()))
    }

    /// Runs beside the other shared tests.
    pub async fn shared(&'static self) -> Turn {
        Turn::Shared(self.0.read().await)
    }

    /// Waits for every other test holding a turn to finish, and keeps them out.
    pub async fn alone(&'static self) -> Turn {
        Turn::Alone(self.0.write().await)
    }
}

impl Default for Turns {
    fn default() -> Self {
        Self::new()
    }
}
