//! A fair queue: one FIFO lane per key (a tenant, in the pool) that has pending items, and the
//! keys served round-robin. A key that was just served goes to the back of the rotation, and a
//! key that had nothing pending joins at the back, so however long one key's backlog is,
//! another key's next item waits behind at most one item of every other key with pending work.
//! Within one key, items keep their arrival order.
//!
//! Fairness is counted in items, not in the work each one costs: one tenant's long generations
//! still take a slot each, but only one at a time ahead of another tenant's turn.
//!
//! The queue does not bound itself; its owner decides admission from [`FairQueue::len`] and
//! [`FairQueue::len_of`] (see `PoolState::admit`). Memory follows the pending items: a lane is
//! dropped as soon as it empties.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

pub(crate) struct FairQueue<K, T> {
    lanes: HashMap<K, VecDeque<T>>,
    /// Every key with a non-empty lane, once, in the order they will be served.
    rotation: VecDeque<K>,
    len: usize,
}

impl<K: Clone + Eq + Hash, T> FairQueue<K, T> {
    pub(crate) fn new() -> Self {
        Self {
            lanes: HashMap::new(),
            rotation: VecDeque::new(),
            len: 0,
        }
    }

    /// Items pending across all keys.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Items pending for one key.
    pub(crate) fn len_of(&self, key: &K) -> usize {
        self.lanes.get(key).map_or(0, VecDeque::len)
    }

    /// Appends an item to its key's lane; a key with nothing pending joins the rotation at the
    /// back, so arriving never lets a key jump ahead of others already waiting.
    pub(crate) fn push(&mut self, key: K, item: T) {
        match self.lanes.entry(key) {
            Entry::Occupied(lane) => lane.into_mut().push_back(item),
            Entry::Vacant(lane) => {
                self.rotation.push_back(lane.key().clone());
                lane.insert(VecDeque::from([item]));
            }
        }
        self.len += 1;
    }

    /// Takes the oldest item of the key at the front of the rotation, and sends that key to the
    /// back if it has more.
    pub(crate) fn pop(&mut self) -> Option<T> {
        // The rotation and the lanes change together, so the first key always has an item;
        // skipping a key without one keeps a broken invariant from stalling the queue.
        while let Some(key) = self.rotation.pop_front() {
            let Some(lane) = self.lanes.get_mut(&key) else {
                continue;
            };
            let Some(item) = lane.pop_front() else {
                self.lanes.remove(&key);
                continue;
            };
            if lane.is_empty() {
                self.lanes.remove(&key);
            } else {
                self.rotation.push_back(key);
            }
            self.len -= 1;
            return Some(item);
        }
        None
    }

    /// Empties the queue, handing back every item in the order it would have been served.
    pub(crate) fn drain(&mut self) -> Vec<T> {
        let mut items = Vec::with_capacity(self.len);
        while let Some(item) = self.pop() {
            items.push(item);
        }
        items
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(items: &[(&'static str, u32)]) -> FairQueue<&'static str, u32> {
        let mut q = FairQueue::new();
        for &(key, item) in items {
            q.push(key, item);
        }
        q
    }

    #[test]
    fn one_key_is_served_in_arrival_order() {
        let mut q = queue(&[("a", 1), ("a", 2), ("a", 3)]);
        assert_eq!(q.drain(), vec![1, 2, 3]);
        assert!(q.is_empty());
        assert_eq!(q.pop(), None);
    }

    #[test]
    fn keys_take_turns_and_each_keeps_its_order() {
        let mut q = queue(&[
            ("a", 1),
            ("a", 2),
            ("a", 3),
            ("b", 10),
            ("b", 11),
            ("c", 20),
        ]);
        assert_eq!(q.drain(), vec![1, 10, 20, 2, 11, 3]);
    }

    #[test]
    fn a_newcomer_waits_behind_at_most_one_item_of_a_long_backlog() {
        let mut q = FairQueue::new();
        for i in 0..100 {
            q.push("a", i);
        }
        q.push("b", 1000);
        let next_two = [q.pop().unwrap(), q.pop().unwrap()];
        assert!(next_two.contains(&1000), "{next_two:?}");
        assert_eq!(q.drain(), (1..100).collect::<Vec<_>>(), "a's order kept");
    }

    #[test]
    fn a_key_just_served_goes_to_the_back_and_a_returning_key_joins_at_the_back() {
        let mut q = queue(&[("a", 1), ("a", 2), ("b", 10)]);
        assert_eq!(q.pop(), Some(1));
        assert_eq!(q.pop(), Some(10));
        // b has nothing left; when it returns it queues behind a, who is already waiting.
        q.push("b", 11);
        q.push("c", 20);
        assert_eq!(q.drain(), vec![2, 11, 20]);
    }

    #[test]
    fn lengths_follow_pushes_and_pops_and_empty_lanes_are_dropped() {
        let mut q = queue(&[("a", 1), ("b", 2), ("a", 3)]);
        assert_eq!((q.len(), q.len_of(&"a"), q.len_of(&"b")), (3, 2, 1));
        assert_eq!(q.rotation, ["a", "b"]);
        q.pop();
        q.pop();
        assert_eq!((q.len(), q.len_of(&"a"), q.len_of(&"b")), (1, 1, 0));
        assert_eq!(q.rotation, ["a"]);
        q.pop();
        assert_eq!(q.len(), 0);
        assert!(q.rotation.is_empty());
        assert!(
            q.lanes.is_empty(),
            "no lane kept for a key with nothing pending"
        );
        assert_eq!(q.len_of(&"zzz"), 0);
    }
}
