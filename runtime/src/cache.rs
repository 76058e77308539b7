//! The response cache: moka, bounded by entry count, with a time-to-live per entry so that
//! each function's `cache.ttl_s` applies to its own entries. Lookups and evictions are
//! counted in the node's metrics.

use std::sync::Arc;
use std::time::{Duration, Instant};

use genrt_actors::{CacheKey, CachedCompletion, ResponseCache};
use moka::notification::RemovalCause;
use moka::sync::Cache;
use moka::Expiry;

use crate::telemetry::Metrics;

#[derive(Clone)]
struct Entry {
    value: Arc<CachedCompletion>,
    ttl: Duration,
}

struct PerEntryTtl;

impl Expiry<CacheKey, Entry> for PerEntryTtl {
    fn expire_after_create(
        &self,
        _key: &CacheKey,
        entry: &Entry,
        _now: Instant,
    ) -> Option<Duration> {
        Some(entry.ttl)
    }
}

pub struct MokaResponseCache {
    entries: Cache<CacheKey, Entry>,
    default_ttl: Duration,
    metrics: Arc<Metrics>,
}

impl MokaResponseCache {
    pub fn new(max_entries: u64, default_ttl: Duration, metrics: Arc<Metrics>) -> Self {
        let counted = Arc::clone(&metrics);
        Self {
            entries: Cache::builder()
                .max_capacity(max_entries)
                .expire_after(PerEntryTtl)
                // Replaced and explicitly removed entries are not evictions.
                .eviction_listener(move |_key, _entry, cause| match cause {
                    RemovalCause::Size => counted.cache_eviction("size"),
                    RemovalCause::Expired => counted.cache_eviction("expired"),
                    RemovalCause::Explicit | RemovalCause::Replaced => {}
                })
                .build(),
            default_ttl,
            metrics,
        }
    }

    pub fn entry_count(&self) -> u64 {
        self.entries.entry_count()
    }
}

impl ResponseCache for MokaResponseCache {
    fn get(&self, key: &CacheKey) -> Option<CachedCompletion> {
        let found = self.entries.get(key).map(|e| (*e.value).clone());
        self.metrics.cache_lookup(found.is_some());
        found
    }

    fn insert(&self, key: CacheKey, value: CachedCompletion, ttl: Option<Duration>) {
        let entry = Entry {
            value: Arc::new(value),
            ttl: ttl.unwrap_or(self.default_ttl),
        };
        self.entries.insert(key, entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use genrt_actors::{FinishReason, Usage};
    use genrt_functions::TenantId;

    fn key(tenant: &str) -> CacheKey {
        CacheKey {
            tenant: TenantId::parse(tenant).unwrap(),
            digest: "d".into(),
        }
    }

    #[test]
    fn entries_are_per_tenant() {
        let metrics = Metrics::new(&Default::default()).unwrap();
        let cache = MokaResponseCache::new(100, Duration::from_secs(60), Arc::clone(&metrics));
        let value = CachedCompletion {
            text: "hi".into(),
            usage: Usage::default(),
            finish_reason: FinishReason::Stop,
        };
        cache.insert(key("a"), value.clone(), None);
        assert_eq!(cache.get(&key("a")), Some(value));
        assert_eq!(cache.get(&key("b")), None);
        let text = metrics.render();
        assert!(text.contains("genrt_cache_hits_total 1"), "{text}");
        assert!(text.contains("genrt_cache_misses_total 1"), "{text}");
    }
}
