//! The dispatcher's routing table: which function actor serves which (tenant, function,
//! version). Generic over the handle type so it can be tested without actors.

use std::collections::{BTreeMap, HashMap};

use genrt_functions::{FunctionName, TenantId};
use ractor::ActorId;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct FunctionKey {
    pub tenant: TenantId,
    pub name: FunctionName,
    pub version: u32,
    /// The spec's digest: an actor serves one spec, and a version number can name another
    /// after a delete and a new deploy.
    pub digest: String,
}

pub(crate) struct RoutingTable<H> {
    by_key: BTreeMap<FunctionKey, (ActorId, H)>,
    by_actor: HashMap<ActorId, FunctionKey>,
}

impl<H: Clone> RoutingTable<H> {
    pub(crate) fn new() -> Self {
        Self {
            by_key: BTreeMap::new(),
            by_actor: HashMap::new(),
        }
    }

    pub(crate) fn get(&self, key: &FunctionKey) -> Option<H> {
        self.by_key.get(key).map(|(_, h)| h.clone())
    }

    pub(crate) fn insert(&mut self, key: FunctionKey, actor: ActorId, handle: H) {
        self.by_actor.insert(actor, key.clone());
        self.by_key.insert(key, (actor, handle));
    }

    /// Removes the entry only if `actor` is still the one serving `key`: an idle notice from
    /// an actor that has since been replaced must not remove its successor.
    pub(crate) fn retire(&mut self, key: &FunctionKey, actor: ActorId) -> Option<H> {
        match self.by_key.get(key) {
            Some((current, _)) if *current == actor => {
                self.by_actor.remove(&actor);
                self.by_key.remove(key).map(|(_, h)| h)
            }
            _ => None,
        }
    }

    /// Forgets an actor that terminated or failed.
    pub(crate) fn forget(&mut self, actor: ActorId) {
        if let Some(key) = self.by_actor.remove(&actor) {
            if self.by_key.get(&key).is_some_and(|(a, _)| *a == actor) {
                self.by_key.remove(&key);
            }
        }
    }

    pub(crate) fn active_versions(&self, tenant: &TenantId, name: &FunctionName) -> Vec<u32> {
        self.by_key
            .keys()
            .filter(|k| &k.tenant == tenant && &k.name == name)
            .map(|k| k.version)
            .collect()
    }

    pub(crate) fn handles(&self) -> impl Iterator<Item = &H> {
        self.by_key.values().map(|(_, h)| h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(tenant: &str, version: u32) -> FunctionKey {
        FunctionKey {
            tenant: TenantId::parse(tenant).unwrap(),
            name: FunctionName::parse("f").unwrap(),
            version,
            digest: String::new(),
        }
    }

    #[test]
    fn a_stale_idle_notice_does_not_remove_the_successor() {
        let mut t = RoutingTable::new();
        let old = ActorId::Local(1);
        let new = ActorId::Local(2);
        t.insert(key("a", 1), old, "old");
        t.forget(old);
        t.insert(key("a", 1), new, "new");
        assert_eq!(t.retire(&key("a", 1), old), None);
        assert_eq!(t.get(&key("a", 1)), Some("new"));
        assert_eq!(t.retire(&key("a", 1), new), Some("new"));
        assert_eq!(t.get(&key("a", 1)), None);
    }

    #[test]
    fn active_versions_are_per_tenant() {
        let mut t = RoutingTable::new();
        t.insert(key("a", 1), ActorId::Local(1), ());
        t.insert(key("a", 2), ActorId::Local(2), ());
        t.insert(key("b", 3), ActorId::Local(3), ());
        let a = TenantId::parse("a").unwrap();
        assert_eq!(
            t.active_versions(&a, &FunctionName::parse("f").unwrap()),
            vec![1, 2]
        );
    }
}
