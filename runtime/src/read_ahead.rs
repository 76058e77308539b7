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

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use moka::sync::Cache;

/// The longest a read may take and still be stored. A change's mark is kept this long, so a
/// read that began before the change and ends after its mark is gone is refused by age.
const LONGEST_READ: Duration = Duration::from_secs(30);

/// Cheap to clone; clones share the entries.
pub(crate) struct ReadAhead<K, V> {
    inner: Arc<Inner<K, V>>,
}

impl<K, V> Clone for ReadAhead<K, V> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

struct Inner<K, V> {
    cache: Cache<K, Arc<Entry<V>>>,
    /// The runtime that built this cache (the server's), for rereads. A lookup runs on
    /// whatever thread serves its request, often an HTTP worker's own single-threaded
    /// runtime, which `tokio::spawn` would give the reread to: its database round trips
    /// would then share that thread with the responses it serves.
    background: Option<tokio::runtime::Handle>,
    reread_after: Duration,
    /// Counts this node's changes; a ticket holds the count at the time it was taken.
    changes: AtomicU64,
    /// Stores and changes take turns under this lock, so that a store cannot check for
    /// changes, then lose the race to one and put back the row it removed. Lookups never
    /// take it.
    marks: Mutex<Marks<K>>,
}

/// What changed on this node lately, by count: per key, so that a change to one row does not
/// cancel the reads of the others (the cluster sync forgets a changed row every second for a
/// minute), and for all keys at once.
struct Marks<K> {
    keys: HashMap<K, (u64, Instant)>,
    all: u64,
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
pub(crate) struct Ticket {
    changes: u64,
    taken: Instant,
}

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
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    pub(crate) fn new(capacity: u64, ttl: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                cache: Cache::builder()
                    .max_capacity(capacity)
                    .time_to_live(ttl)
                    .build(),
                background: tokio::runtime::Handle::try_current().ok(),
                reread_after: ttl / 2,
                changes: AtomicU64::new(0),
                marks: Mutex::new(Marks {
                    keys: HashMap::new(),
                    all: 0,
                }),
            }),
        }
    }

    pub(crate) fn get(&self, key: &K) -> Lookup<V> {
        // Taken before the lookup: a miss's read then starts after it.
        let ticket = Ticket {
            changes: self.inner.changes.load(Ordering::Acquire),
            taken: Instant::now(),
        };
        match self.inner.cache.get(key) {
            None => Lookup::Miss(ticket),
            Some(entry) => {
                let old = entry.read_at.elapsed() >= self.inner.reread_after;
                if old && !entry.rereading.swap(true, Ordering::AcqRel) {
                    Lookup::Reread(entry.value.clone(), ticket)
                } else {
                    Lookup::Hit(entry.value.clone())
                }
            }
        }
    }

    /// Stores what a read returned, unless this node changed that row (or all rows) since
    /// its ticket was taken.
    pub(crate) fn insert(&self, ticket: Ticket, key: K, value: V) {
        let marks = self.inner.marks.lock().unwrap_or_else(|e| e.into_inner());
        // Checked under the lock: a change's mark is dropped (in `invalidate`) only once
        // every read that began before it is this old.
        let changed = ticket.taken.elapsed() >= LONGEST_READ
            || marks.all > ticket.changes
            || marks
                .keys
                .get(&key)
                .is_some_and(|(count, _)| *count > ticket.changes);
        if changed {
            return;
        }
        let entry = Entry {
            value,
            read_at: Instant::now(),
            rereading: AtomicBool::new(false),
        };
        self.inner.cache.insert(key, Arc::new(entry));
    }

    /// Runs a reread in the background, on the runtime that built this cache; a failure is
    /// logged (`what` failed) and leaves the entry to expire.
    pub(crate) fn in_background<T, E>(
        &self,
        what: &'static str,
        reread: impl std::future::Future<Output = Result<T, E>> + Send + 'static,
    ) where
        E: std::fmt::Display,
    {
        let reread = async move {
            if let Err(e) = reread.await {
                tracing::warn!(error = %e, "{what} failed");
            }
        };
        match &self.inner.background {
            Some(runtime) => drop(runtime.spawn(reread)),
            None => drop(tokio::spawn(reread)),
        }
    }

    /// A reread found nothing (deleted meanwhile, here or on another node): the entry goes.
    pub(crate) fn remove(&self, key: &K) {
        self.inner.cache.invalidate(key);
    }

    /// After a change on this node: the entry goes, and reads of it already under way store
    /// nothing.
    pub(crate) fn invalidate(&self, key: &K) {
        let mut marks = self.inner.marks.lock().unwrap_or_else(|e| e.into_inner());
        let count = self.inner.changes.fetch_add(1, Ordering::AcqRel) + 1;
        // Marks older than the longest read can refuse nothing any more.
        marks.keys.retain(|_, (_, at)| at.elapsed() < LONGEST_READ);
        marks.keys.insert(key.clone(), (count, Instant::now()));
        self.inner.cache.invalidate(key);
    }

    /// After a change on this node to every row that `matches` (a function deleted: all its
    /// versions): those entries go, and every read under way stores nothing (which rows it
    /// reads is not known beforehand; such changes are rare).
    pub(crate) fn invalidate_if(&self, matches: impl Fn(&K) -> bool) {
        let mut marks = self.inner.marks.lock().unwrap_or_else(|e| e.into_inner());
        marks.all = self.inner.changes.fetch_add(1, Ordering::AcqRel) + 1;
        let gone: Vec<Arc<K>> = self
            .inner
            .cache
            .iter()
            .map(|(key, _)| key)
            .filter(|key| matches(key))
            .collect();
        for key in gone {
            self.inner.cache.invalidate(&*key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn miss<V>(lookup: Lookup<V>) -> Ticket {
        match lookup {
            Lookup::Miss(ticket) => ticket,
            _ => panic!("expected a miss"),
        }
    }

    #[test]
    fn a_hit_past_half_its_life_hands_out_one_reread_and_stays_served() {
        let cache = ReadAhead::new(10, Duration::from_secs(1));
        let ticket = miss(cache.get(&1));
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
        let ticket = miss(cache.get(&1));
        cache.insert(ticket, 1, "row");
        std::thread::sleep(Duration::from_millis(150));
        assert!(matches!(cache.get(&1), Lookup::Miss(_)));
    }

    #[test]
    fn a_reread_that_never_stores_leaves_the_entry_to_expire() {
        let cache = ReadAhead::new(10, Duration::from_millis(200));
        let ticket = miss(cache.get(&1));
        cache.insert(ticket, 1, "row");
        std::thread::sleep(Duration::from_millis(110));
        let Lookup::Reread("row", _failed) = cache.get(&1) else {
            panic!("past half its life, the first lookup rereads")
        };
        std::thread::sleep(Duration::from_millis(120));
        assert!(matches!(cache.get(&1), Lookup::Miss(_)));
    }

    #[test]
    fn a_read_that_started_before_a_change_stores_nothing() {
        let cache = ReadAhead::new(10, Duration::from_secs(60));
        let before = miss(cache.get(&1));
        cache.invalidate(&1);
        cache.insert(before, 1, "old row");
        assert!(matches!(cache.get(&1), Lookup::Miss(_)));
        let after = miss(cache.get(&1));
        cache.insert(after, 1, "new row");
        assert!(matches!(cache.get(&1), Lookup::Hit("new row")));
        cache.remove(&1);
        assert!(matches!(cache.get(&1), Lookup::Miss(_)));
    }

    #[test]
    fn a_reread_under_way_during_a_change_stores_nothing() {
        let cache = ReadAhead::new(10, Duration::from_millis(400));
        let ticket = miss(cache.get(&1));
        cache.insert(ticket, 1, "old row");
        std::thread::sleep(Duration::from_millis(210));
        let Lookup::Reread("old row", reread) = cache.get(&1) else {
            panic!("past half its life, the first lookup rereads")
        };
        cache.invalidate(&1);
        cache.insert(reread, 1, "old row, read before the change");
        assert!(matches!(cache.get(&1), Lookup::Miss(_)));
    }

    #[test]
    fn a_change_to_one_row_leaves_the_reads_of_others_stored() {
        let cache = ReadAhead::new(10, Duration::from_secs(60));
        let other = miss(cache.get(&2));
        cache.invalidate(&1);
        cache.insert(other, 2, "row 2");
        assert!(matches!(cache.get(&2), Lookup::Hit("row 2")));
    }

    #[test]
    fn a_change_to_many_rows_removes_them_and_every_read_under_way() {
        let cache = ReadAhead::new(10, Duration::from_secs(60));
        for key in [1, 2, 3] {
            let ticket = miss(cache.get(&key));
            cache.insert(ticket, key, "row");
        }
        let under_way = miss(cache.get(&4));
        cache.invalidate_if(|key| *key <= 2);
        assert!(matches!(cache.get(&1), Lookup::Miss(_)));
        assert!(matches!(cache.get(&2), Lookup::Miss(_)));
        assert!(matches!(cache.get(&3), Lookup::Hit("row")));
        cache.insert(under_way, 4, "read before the change");
        assert!(matches!(cache.get(&4), Lookup::Miss(_)));
    }

    /// The race a store loses to a change: whichever of the two gets there first, once the
    /// change has returned the old row is not cached. Without the lock shared by stores and
    /// changes, a store could check, lose its thread to the change, then put the row back.
    #[test]
    fn a_store_racing_a_change_never_puts_the_old_row_back() {
        let cache = ReadAhead::new(10, Duration::from_secs(60));
        for _ in 0..2_000 {
            let ticket = miss(cache.get(&1));
            let barrier = Arc::new(std::sync::Barrier::new(2));
            let store = {
                let (cache, barrier) = (cache.clone(), Arc::clone(&barrier));
                std::thread::spawn(move || {
                    barrier.wait();
                    cache.insert(ticket, 1, "old row");
                })
            };
            barrier.wait();
            cache.invalidate(&1);
            store.join().expect("the store ran");
            assert!(
                matches!(cache.get(&1), Lookup::Miss(_)),
                "the old row came back after the change"
            );
        }
    }

    #[test]
    fn marks_of_old_changes_are_dropped() {
        let cache: ReadAhead<u32, &str> = ReadAhead::new(10, Duration::from_secs(60));
        for key in 0..100 {
            cache.invalidate(&key);
        }
        let marks = cache.inner.marks.lock().unwrap().keys.len();
        assert_eq!(marks, 100, "recent changes are all marked");
        cache
            .inner
            .marks
            .lock()
            .unwrap()
            .keys
            .values_mut()
            .for_each(|(_, at)| {
                *at = Instant::now()
                    .checked_sub(LONGEST_READ)
                    .expect("a clock that old")
            });
        cache.invalidate(&1000);
        assert_eq!(cache.inner.marks.lock().unwrap().keys.len(), 1);
    }
}
