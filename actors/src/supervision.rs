//! Restart policy shared by every supervisor in the tree: how soon a failed child is started
//! again, and when repeated failures stop being retried.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RestartPolicy {
    /// Restarts allowed inside `window` before the supervisor gives up on the child.
    pub max_restarts: usize,
    pub window: Duration,
    /// Delay before the first restart; doubled for each recent restart, up to `max_backoff`.
    pub base_backoff: Duration,
    pub max_backoff: Duration,
    /// A replica whose engine thread has work but makes no progress (no decode step ends) for
    /// this long is declared hung: its jobs are answered `replica_failed` and the replica
    /// fails to its pool, which replaces it like a crashed one. Zero turns the watchdog off.
    pub engine_hang_timeout: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            max_restarts: 5,
            window: Duration::from_secs(60),
            base_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(5),
            // Far above the longest legitimate step (a full prefill chunk on a slow CPU), so
            // that only a thread that is really stuck trips it.
            engine_hang_timeout: Duration::from_secs(60),
        }
    }
}

/// What a supervisor does after a child failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartDecision {
    RestartAfter(Duration),
    /// Too many failures inside the window: stop restarting and report the child failed.
    GiveUp,
}

/// Counts recent restarts of one child. Pure: the caller passes the clock in.
#[derive(Debug, Clone)]
pub struct RestartBudget {
    policy: RestartPolicy,
    recent: VecDeque<Instant>,
    total: u64,
}

impl RestartBudget {
    pub fn new(policy: RestartPolicy) -> Self {
        Self {
            policy,
            recent: VecDeque::new(),
            total: 0,
        }
    }

    pub fn on_failure(&mut self, now: Instant) -> RestartDecision {
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.policy.window)
        {
            self.recent.pop_front();
        }
        if self.recent.len() >= self.policy.max_restarts {
            return RestartDecision::GiveUp;
        }
        let exponent = self.recent.len().min(16) as u32;
        let backoff = self
            .policy
            .base_backoff
            .saturating_mul(2u32.saturating_pow(exponent))
            .min(self.policy.max_backoff);
        self.recent.push_back(now);
        self.total += 1;
        RestartDecision::RestartAfter(backoff)
    }

    /// Restarts since the supervisor started, for metrics.
    pub fn total(&self) -> u64 {
        self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_then_gives_up_inside_the_window() {
        let policy = RestartPolicy {
            max_restarts: 3,
            window: Duration::from_secs(10),
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(250),
            ..RestartPolicy::default()
        };
        let mut budget = RestartBudget::new(policy);
        let t0 = Instant::now();
        assert_eq!(
            budget.on_failure(t0),
            RestartDecision::RestartAfter(Duration::from_millis(100))
        );
        assert_eq!(
            budget.on_failure(t0),
            RestartDecision::RestartAfter(Duration::from_millis(200))
        );
        assert_eq!(
            budget.on_failure(t0),
            RestartDecision::RestartAfter(Duration::from_millis(250))
        );
        assert_eq!(budget.on_failure(t0), RestartDecision::GiveUp);
        assert_eq!(budget.total(), 3);
        // Failures older than the window no longer count.
        let later = t0 + Duration::from_secs(11);
        assert_eq!(
            budget.on_failure(later),
            RestartDecision::RestartAfter(Duration::from_millis(100))
        );
        assert_eq!(budget.total(), 4);
    }
}
