//! The response cache: moka, bounded by entry count, with a time-to-live per entry so that
//! each function's `cache.ttl_s` applies to its own entries.

use std::sync::Arc;
use std::time::{Duration, Instant};

use genrt_actors::{CacheKey, CachedCompletion, ResponseCache};
use moka::sync::Cache;
use moka::Expiry;

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
}

impl MokaResponseCache {
    pub fn new(max_entries: u64, default_ttl: Duration) -> Self {
        Self {
            entries: Cache::builder()
                .max_capacity(max_entries)
                .expire_after(PerEntryTtl)
                .build(),
            default_ttl,
        }
    }

    pub fn entry_count(&self) -> u64 {
        self.entries.entry_count()
    }
}

impl ResponseCache for MokaResponseCache {
    fn get(&self, key: &CacheKey) -> Option<CachedCompletion> {
        self.entries.get(key).map(|e| (*e.value).clone())
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
        let cache = MokaResponseCache::new(100, Duration::from_secs(60));
        let value = CachedCompletion {
            text: "hi".into(),
            usage: Usage::default(),
            finish_reason: FinishReason::Stop,
        };
        cache.insert(key("a"), value.clone(), None);
        assert_eq!(cache.get(&key("a")), Some(value));
        assert_eq!(cache.get(&key("b")), None);
    }
}
