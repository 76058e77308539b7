//! Per-tenant admission: a token-bucket rate limit (governor's GCRA), a cap on invocations
//! running at once, and a monthly token budget. All three are decided at the edge, before any
//! work is queued, and answered with 429 and a Retry-After.
//!
//! The counters live in this process. A tenant's limits are for the tenant, not per node: with
//! N live nodes (counted from the database's heartbeats, see `tenancy::cluster`) each node
//! enforces 1/N of the rate (rounded up for the burst) and of each concurrency cap (rounded
//! up, at least 1), so three nodes do not allow three times the limit. This assumes the load
//! balancer spreads a tenant's requests over the nodes, as round-robin and least-connection
//! balancing do; a tenant pinned to one node gets only that node's share. The budget is read
//! from the database (the sum of recorded usage) and refreshed every `BUDGET_REFRESH`, so
//! nodes agree within that time.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{Datelike, Utc};
use genrt_functions::TenantId;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::error::{ApiError, ErrorCode};

/// The limits in force for one tenant: its own settings over the configured defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantLimits {
    pub disabled: bool,
    /// 0 disables the rate limit.
    pub rate_limit_rps: f64,
    pub rate_limit_burst: u32,
    /// 0 is no cap.
    pub max_concurrency: u32,
    /// Streams open at once (counted besides `max_concurrency`); 0 is no cap.
    pub max_concurrent_streams: u32,
    /// Prewarm requests running at once; 0 is no cap.
    pub max_concurrent_prewarms: u32,
    /// 0 is no budget.
    pub monthly_token_budget: u64,
    /// `None` allows every model.
    pub allowed_models: Option<Vec<String>>,
    /// Models the tenant may register for itself (`POST /v1/models` with `models:write`);
    /// 0: none.
    pub max_private_models: u32,
    /// MiB those models may take together; 0 is no cap beyond `registry.max_file_mb` each.
    pub max_private_model_mb: u64,
    /// LoRA adapters the tenant may register for itself; 0: none.
    pub max_adapters: u32,
    /// MiB those adapters may take together; 0 is no cap beyond `registry.max_file_mb` each.
    pub max_adapter_mb: u64,
}

impl TenantLimits {
    /// Whether the tenant may use `model`; for `base:adapter`, whether it may use the base.
    pub fn allows_model(&self, model: &str) -> bool {
        let base = model.split_once(':').map_or(model, |(base, _)| base);
        self.allowed_models
            .as_ref()
            .is_none_or(|m| m.iter().any(|x| x == base))
    }
}

/// How long a tenant's budget use, read from the database, is trusted before rereading.
const BUDGET_REFRESH: Duration = Duration::from_secs(30);

struct Bucket {
    rps: f64,
    burst: u32,
    limiter: DefaultDirectRateLimiter,
}

#[derive(Clone, Copy)]
struct Meter {
    month: (i32, u32),
    used: u64,
    read_at: Instant,
}

#[derive(Default)]
pub struct Limits {
    buckets: Mutex<HashMap<TenantId, Bucket>>,
    running: Mutex<HashMap<TenantId, Arc<AtomicU32>>>,
    streams: Mutex<HashMap<TenantId, Arc<AtomicU32>>>,
    prewarms: Mutex<HashMap<TenantId, Arc<AtomicU32>>>,
    meters: Mutex<HashMap<TenantId, Meter>>,
    /// Live nodes sharing each tenant's limits; 0 before the first count reads as 1.
    nodes: AtomicU32,
}

/// One running invocation counted against its tenant's cap; dropping it (however the request
/// ends) frees the place.
pub struct ConcurrencyPermit {
    counter: Arc<AtomicU32>,
    /// A second place held for as long as this one (a stream's place besides its invocation's).
    also: Option<Box<ConcurrencyPermit>>,
}

impl ConcurrencyPermit {
    /// One permit that holds both places and frees both when dropped.
    pub fn and(mut self, other: ConcurrencyPermit) -> Self {
        self.also = Some(Box::new(other));
        self
    }
}

impl Drop for ConcurrencyPermit {
    fn drop(&mut self) {
        self.counter.fetch_sub(1, Ordering::AcqRel);
    }
}

/// This node's share of `cap` (0: no cap) when `nodes` nodes share it: rounded up, so that no
/// node's share is 0.
fn share(cap: u32, nodes: u32) -> u32 {
    if cap == 0 {
        0
    } else {
        cap.div_ceil(nodes.max(1))
    }
}

/// Takes one of `cap` places (0: no cap) in the tenant's counter of `counters`.
fn take_place(
    counters: &Mutex<HashMap<TenantId, Arc<AtomicU32>>>,
    tenant: &TenantId,
    cap: u32,
    what: &str,
) -> Result<ConcurrencyPermit, ApiError> {
    let counter = Arc::clone(
        counters
            .lock()
            .expect("counters lock")
            .entry(tenant.clone())
            .or_default(),
    );
    let cap = if cap == 0 { u32::MAX } else { cap };
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < cap).then_some(n + 1)
        })
        .map_err(|_| {
            ApiError::new(
                ErrorCode::ConcurrencyLimited,
                format!("at most {cap} {what} at once for this tenant"),
            )
        })?;
    Ok(ConcurrencyPermit {
        counter,
        also: None,
    })
}

/// Says, in a refusal, that the limit is shared by several nodes.
fn shared_by(nodes: u32) -> String {
    if nodes > 1 {
        format!(" (this node's share of {nodes} nodes)")
    } else {
        String::new()
    }
}

fn this_month() -> (i32, u32) {
    let now = Utc::now();
    (now.year(), now.month())
}

impl Limits {
    /// Sets how many live nodes share each tenant's limits.
    pub fn set_nodes(&self, nodes: u32) {
        self.nodes.store(nodes.max(1), Ordering::Release);
    }

    pub fn nodes(&self) -> u32 {
        self.nodes.load(Ordering::Acquire).max(1)
    }

    /// Takes one request from the tenant's bucket (this node's share of it).
    pub fn check_rate(&self, tenant: &TenantId, limits: &TenantLimits) -> Result<(), ApiError> {
        if limits.rate_limit_rps <= 0.0 {
            return Ok(());
        }
        let nodes = self.nodes();
        let rps = limits.rate_limit_rps / f64::from(nodes);
        let burst = share(limits.rate_limit_burst.max(1), nodes);
        let mut buckets = self.buckets.lock().expect("buckets lock");
        let stale = buckets
            .get(tenant)
            .is_none_or(|b| b.rps != rps || b.burst != burst);
        if stale {
            let period = Duration::from_secs_f64(1.0 / rps);
            let burst = NonZeroU32::new(burst.max(1)).expect("at least 1");
            let quota = Quota::with_period(period)
                .unwrap_or_else(|| Quota::per_second(NonZeroU32::MAX))
                .allow_burst(burst);
            buckets.insert(
                tenant.clone(),
                Bucket {
                    rps,
                    burst: burst.get(),
                    limiter: RateLimiter::direct(quota),
                },
            );
        }
        let bucket = buckets.get(tenant).expect("inserted above");
        bucket.limiter.check().map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            ApiError::new(
                ErrorCode::RateLimited,
                format!(
                    "rate limit of {} requests/s (burst {}) exceeded{}",
                    limits.rate_limit_rps,
                    limits.rate_limit_burst,
                    shared_by(nodes)
                ),
            )
            .retry_after(wait.as_secs_f64().ceil() as u32)
        })
    }

    /// Counts one more running invocation, unless the tenant is at its cap.
    pub fn acquire(
        &self,
        tenant: &TenantId,
        limits: &TenantLimits,
    ) -> Result<ConcurrencyPermit, ApiError> {
        take_place(
            &self.running,
            tenant,
            share(limits.max_concurrency, self.nodes()),
            "invocations may run",
        )
    }

    /// Counts one more open stream, unless the tenant is at its stream cap. A stream holds a
    /// connection and a task for as long as the client reads, so it has a cap of its own.
    pub fn acquire_stream(
        &self,
        tenant: &TenantId,
        limits: &TenantLimits,
    ) -> Result<ConcurrencyPermit, ApiError> {
        take_place(
            &self.streams,
            tenant,
            share(limits.max_concurrent_streams, self.nodes()),
            "streams may be open",
        )
    }

    /// Counts one more running prewarm request: prewarming is the tenant's own, so one
    /// tenant's cannot hold back another's.
    pub fn acquire_prewarm(
        &self,
        tenant: &TenantId,
        limits: &TenantLimits,
    ) -> Result<ConcurrencyPermit, ApiError> {
        take_place(
            &self.prewarms,
            tenant,
            share(limits.max_concurrent_prewarms, self.nodes()),
            "prewarm requests may run",
        )
    }

    pub fn running(&self, tenant: &TenantId) -> u32 {
        self.running
            .lock()
            .expect("running lock")
            .get(tenant)
            .map_or(0, |c| c.load(Ordering::Acquire))
    }

    /// The tokens used this month as last known, or `None` when it must be read again.
    pub fn known_usage(&self, tenant: &TenantId) -> Option<u64> {
        let meters = self.meters.lock().expect("meters lock");
        let m = meters.get(tenant)?;
        (m.month == this_month() && m.read_at.elapsed() < BUDGET_REFRESH).then_some(m.used)
    }

    pub fn set_usage(&self, tenant: &TenantId, used: u64) {
        self.meters.lock().expect("meters lock").insert(
            tenant.clone(),
            Meter {
                month: this_month(),
                used,
                read_at: Instant::now(),
            },
        );
    }

    /// Adds tokens just spent, so that the budget holds between rereads.
    pub fn add_usage(&self, tenant: &TenantId, tokens: u64) {
        if let Some(m) = self.meters.lock().expect("meters lock").get_mut(tenant) {
            if m.month == this_month() {
                m.used += tokens;
            }
        }
    }

    pub fn check_budget(limits: &TenantLimits, used: u64) -> Result<(), ApiError> {
        if limits.monthly_token_budget == 0 || used < limits.monthly_token_budget {
            return Ok(());
        }
        let now = Utc::now();
        let (y, m) = if now.month() == 12 {
            (now.year() + 1, 1)
        } else {
            (now.year(), now.month() + 1)
        };
        let next = chrono::NaiveDate::from_ymd_opt(y, m, 1)
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .map(|d| d.and_utc());
        let wait = next.map_or(3600, |n| (n - now).num_seconds().max(1) as u32);
        Err(ApiError::new(
            ErrorCode::QuotaExhausted,
            format!(
                "the monthly budget of {} tokens is used up ({used} used)",
                limits.monthly_token_budget
            ),
        )
        .retry_after(wait))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> TenantLimits {
        TenantLimits {
            disabled: false,
            rate_limit_rps: 1.0,
            rate_limit_burst: 3,
            max_concurrency: 2,
            max_concurrent_streams: 1,
            max_concurrent_prewarms: 1,
            monthly_token_budget: 100,
            allowed_models: None,
            max_private_models: 0,
            max_private_model_mb: 0,
            max_adapters: 8,
            max_adapter_mb: 512,
        }
    }

    #[test]
    fn the_bucket_allows_its_burst_then_refuses_with_a_wait() {
        let l = Limits::default();
        let t = TenantId::parse("acme").unwrap();
        for _ in 0..3 {
            l.check_rate(&t, &limits()).unwrap();
        }
        let err = l.check_rate(&t, &limits()).unwrap_err();
        assert_eq!(err.code, ErrorCode::RateLimited);
        assert_eq!(err.retry_after, Some(1));
        // Another tenant has its own bucket.
        l.check_rate(&TenantId::parse("other").unwrap(), &limits())
            .unwrap();
    }

    #[test]
    fn several_nodes_each_enforce_their_share() {
        let l = Limits::default();
        let t = TenantId::parse("acme").unwrap();
        let mut wide = limits();
        wide.rate_limit_burst = 6;
        wide.max_concurrency = 4;
        l.set_nodes(2);
        // Half the burst and half the concurrency on each of two nodes.
        for _ in 0..3 {
            l.check_rate(&t, &wide).unwrap();
        }
        let err = l.check_rate(&t, &wide).unwrap_err();
        assert!(err.message.contains("share of 2 nodes"), "{}", err.message);
        let _a = l.acquire(&t, &wide).unwrap();
        let _b = l.acquire(&t, &wide).unwrap();
        assert!(l.acquire(&t, &wide).is_err());
        // Shares round up: three nodes sharing a cap of 1 each still admit one.
        l.set_nodes(3);
        assert_eq!(share(1, 3), 1);
        assert_eq!(share(64, 3), 22);
        assert_eq!(share(0, 3), 0, "no cap stays no cap");
        // Back to one node: the whole limit again (the bucket is rebuilt).
        l.set_nodes(1);
        let u = TenantId::parse("other").unwrap();
        for _ in 0..6 {
            l.check_rate(&u, &wide).unwrap();
        }
    }

    #[test]
    fn permits_count_running_work_and_free_on_drop() {
        let l = Limits::default();
        let t = TenantId::parse("acme").unwrap();
        let a = l.acquire(&t, &limits()).unwrap();
        let _b = l.acquire(&t, &limits()).unwrap();
        assert_eq!(
            l.acquire(&t, &limits()).err().unwrap().code,
            ErrorCode::ConcurrencyLimited
        );
        drop(a);
        assert_eq!(l.running(&t), 1);
        l.acquire(&t, &limits()).unwrap();
    }

    #[test]
    fn streams_have_their_own_cap_and_a_joint_permit_frees_both() {
        let l = Limits::default();
        let t = TenantId::parse("acme").unwrap();
        let joint = l
            .acquire(&t, &limits())
            .unwrap()
            .and(l.acquire_stream(&t, &limits()).unwrap());
        let err = l.acquire_stream(&t, &limits()).err().unwrap();
        assert_eq!(err.code, ErrorCode::ConcurrencyLimited);
        assert!(err.message.contains("streams"), "{}", err.message);
        // A synchronous invocation is not a stream: the invocation cap still has room.
        let _sync = l.acquire(&t, &limits()).unwrap();
        drop(joint);
        l.acquire_stream(&t, &limits()).unwrap();
        assert_eq!(l.running(&t), 1);
    }

    #[test]
    fn the_budget_refuses_once_used_up() {
        Limits::check_budget(&limits(), 99).unwrap();
        let err = Limits::check_budget(&limits(), 100).unwrap_err();
        assert_eq!(err.code, ErrorCode::QuotaExhausted);
        assert!(err.retry_after.unwrap() >= 1);
        let unlimited = TenantLimits {
            monthly_token_budget: 0,
            ..limits()
        };
        Limits::check_budget(&unlimited, u64::MAX).unwrap();
    }
}
