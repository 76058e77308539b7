//! A cache for rows that the request path reads from the database (function heads and
//! versions, tenant settings, API keys) in which hot entries never make a request wait: an
//! entry looked up after half its time to live is returned at once and reread in the
//! background, so a key used more often than that stays cached for good, while no entry is
//! ever served older than its time to live (another node's change is still seen within it).
//! Before this, every expiry put one request of every hot function or tenant behind a
//! database read: the overhead's p99.
//!
//! Written here because moka 0.12, which stores the entries, has no refresh-ahead (no
//! `refresh_after_write`); what this adds is the age check and one reread at a time.
//!
//! A change made on this node calls [`ReadAhead::invalidate`]; a read that started before it
//! (a reread in flight, a request's miss) then stores nothing, so it cannot put the old row
//! back.

use std::hash::Hash;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::sync::Cache;

/// Cheap to clone; clones share the entries.
#[derive(Clone)]
pub(crate) struct ReadAhead<K, V> {
    cache: Cache<K, Arc<Entry<V>>>,
    reread_after: Duration,
    /// Bumped by every invalidation: a read that started before one is not stored.
    generation: Arc<AtomicU64>,
}

struct Entry<V> {
    value: V,
    read_at: Instant,
    /// A reread has been handed out for this entry (one at a time; a failed one leaves the
    /// entry to expire, and the next lookup reads it in the request).
    rereading: AtomicBool,
}

/// Permission to store what a database read returns, taken before the read.
#[must_use]
pub(crate) struct Ticket(u64);

pub(crate) enum Lookup<V> {
    /// Fresh: use it.
    Hit(V),
    /// Use it, and reread it in the background with this ticket (it is past half its life).
    Reread(V, Ticket),
    /// Not cached: read it now, then store it with this ticket.
    Miss(Ticket),
}

impl<K, V> ReadAhead<K, V>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    pub(crate) fn new(capacity: u64, ttl: Duration) -> Self {
        Self {
            cache: Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl)
                .build(),
            reread_after: ttl / 2,
            generation: Arc::new(AtomicU64::new(0)),
        }
    }

    pub(crate) fn get(&self, key: &K) -> Lookup<V> {
        // Taken before the lookup: a miss's read then starts after it.
        let ticket = Ticket(self.generation.load(Ordering::Acquire));
        match self.cache.get(key) {
            None => Lookup::Miss(ticket),
            Some(entry) => {
                let old = entry.read_at.elapsed() >= self.reread_after;
                if old && !entry.rereading.swap(true, Ordering::AcqRel) {
                    Lookup::Reread(entry.value.clone(), ticket)
                } else {
                    Lookup::Hit(entry.value.clone())
                }
            }
        }
    }

    /// Stores what a read returned, unless this node changed something since its ticket
    /// was taken.
    pub(crate) fn insert(&self, ticket: Ticket, key: K, value: V) {
        if self.generation.load(Ordering::Acquire) != ticket.0 {
            return;
        }
        let entry = Entry {
            value,
            read_at: Instant::now(),
            rereading: AtomicBool::new(false),
        };
        self.cache.insert(key, Arc::new(entry));
    }

    /// A reread found nothing (deleted meanwhile, here or on another node): the entry goes.
    pub(crate) fn remove(&self, key: &K) {
        self.cache.invalidate(key);
    }

    /// After a change on this node: the entry goes, and reads already under way store nothing.
    pub(crate) fn invalidate(&self, key: &K) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.cache.invalidate(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hit_past_half_its_life_hands_out_one_reread_and_stays_served() {
        let cache = ReadAhead::new(10, Duration::from_secs(1));
        let Lookup::Miss(ticket) = cache.get(&1) else {
            panic!("an empty cache has no hit")
        };
        cache.insert(ticket, 1, "first");
        assert!(matches!(cache.get(&1), Lookup::Hit("first")));
        std::thread::sleep(Duration::from_millis(550));
        let Lookup::Reread("first", ticket) = cache.get(&1) else {
            panic!("past half its life, the first lookup rereads")
        };
        // Meanwhile, others are served without a second reread.
        assert!(matches!(cache.get(&1), Lookup::Hit("first")));
        cache.insert(ticket, 1, "second");
        assert!(matches!(cache.get(&1), Lookup::Hit("second")));
    }

    #[test]
    fn nothing_is_served_past_its_time_to_live() {
        let cache = ReadAhead::new(10, Duration::from_millis(100));
        let Lookup::Miss(ticket) = cache.get(&1) else {
            panic!("an empty cache has no hit")
        };
        cache.insert(ticket, 1, "row");
        std::thread::sleep(Duration::from_millis(150));
        assert!(matches!(cache.get(&1), Lookup::Miss(_)));
    }

    #[test]
    fn a_read_that_started_before_a_change_stores_nothing() {
        let cache = ReadAhead::new(10, Duration::from_secs(60));
        let Lookup::Miss(before) = cache.get(&1) else {
            panic!("an empty cache has no hit")
        };
        cache.invalidate(&1);
        cache.insert(before, 1, "old row");
        assert!(matches!(cache.get(&1), Lookup::Miss(_)));
        let Lookup::Miss(after) = cache.get(&1) else {
            panic!("still empty")
        };
        cache.insert(after, 1, "new row");
        assert!(matches!(cache.get(&1), Lookup::Hit("new row")));
        cache.remove(&1);
        assert!(matches!(cache.get(&1), Lookup::Miss(_)));
    }
}
