//! How the delivery loop shares its slots between tenants: in turn, one slot per tenant per
//! lap, never more than a tenant's in-flight cap, so that one tenant's slow or stalled
//! receiver holds a few slots at most and every other tenant's due deliveries go out at once.
//! Pure bookkeeping, free of IO; the loop in [`super::delivery`] asks the store which tenants
//! have due deliveries and claims what [`share_slots`] gives each.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// A tenant with deliveries due now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueTenant {
    pub tenant: String,
    /// How many of its deliveries are due.
    pub due: u64,
}

/// What one round claims: how many deliveries of each tenant, in turn order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Shares {
    /// Tenants given at least one slot, with their count.
    pub claims: Vec<(String, usize)>,
    /// The tenant given the round's last slot: the next round starts after it, so that when
    /// slots are scarce every tenant gets its turn.
    pub last: Option<String>,
}

/// Shares `free` slots between `due` tenants, taken in the order given (the caller rotates
/// it): each lap gives one slot to every tenant that still has due deliveries and is below
/// `cap` counting what it has `in_flight`, until the slots run out or no tenant can take more.
pub fn share_slots(
    due: &[DueTenant],
    in_flight: impl Fn(&str) -> usize,
    free: usize,
    cap: usize,
) -> Shares {
    let mut room: Vec<usize> = due
        .iter()
        .map(|t| {
            let below_cap = cap.saturating_sub(in_flight(&t.tenant));
            usize::try_from(t.due).unwrap_or(usize::MAX).min(below_cap)
        })
        .collect();
    let mut taken = vec![0usize; due.len()];
    let mut left = free;
    let mut last = None;
    while left > 0 {
        let mut gave = false;
        for (i, room) in room.iter_mut().enumerate() {
            if left == 0 {
                break;
            }
            if *room > 0 {
                *room -= 1;
                taken[i] += 1;
                left -= 1;
                last = Some(i);
                gave = true;
            }
        }
        if !gave {
            break;
        }
    }
    Shares {
        claims: due
            .iter()
            .zip(taken)
            .filter(|(_, n)| *n > 0)
            .map(|(t, n)| (t.tenant.clone(), n))
            .collect(),
        last: last.map(|i| due[i].tenant.clone()),
    }
}

/// Deliveries in flight on this node, per tenant. Each delivery holds an [`InFlightGuard`],
/// so its count is given back when the delivery ends, however it ends.
#[derive(Debug, Default)]
pub struct InFlight(Mutex<HashMap<String, usize>>);

impl InFlight {
    pub fn count(&self, tenant: &str) -> usize {
        self.0
            .lock()
            .expect("in-flight lock")
            .get(tenant)
            .copied()
            .unwrap_or(0)
    }

    /// Counts one more delivery of `tenant` until the guard is dropped.
    pub fn enter(self: &Arc<Self>, tenant: &str) -> InFlightGuard {
        *self
            .0
            .lock()
            .expect("in-flight lock")
            .entry(tenant.to_owned())
            .or_default() += 1;
        InFlightGuard {
            in_flight: Arc::clone(self),
            tenant: tenant.to_owned(),
        }
    }
}

#[derive(Debug)]
pub struct InFlightGuard {
    in_flight: Arc<InFlight>,
    tenant: String,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let mut counts = self.in_flight.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = counts.get_mut(&self.tenant) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.tenant);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn due(tenants: &[(&str, u64)]) -> Vec<DueTenant> {
        tenants
            .iter()
            .map(|(tenant, due)| DueTenant {
                tenant: (*tenant).to_owned(),
                due: *due,
            })
            .collect()
    }

    fn claims(shares: &Shares) -> Vec<(&str, usize)> {
        shares
            .claims
            .iter()
            .map(|(t, n)| (t.as_str(), *n))
            .collect()
    }

    #[test]
    fn a_tenant_with_a_backlog_takes_no_more_than_its_cap() {
        let shares = share_slots(&due(&[("a", 1000), ("b", 1)]), |_| 0, 16, 4);
        assert_eq!(claims(&shares), [("a", 4), ("b", 1)]);
        assert_eq!(shares.last.as_deref(), Some("a"));
    }

    #[test]
    fn what_is_in_flight_counts_against_the_cap() {
        let in_flight = |t: &str| if t == "a" { 4 } else { 1 };
        let shares = share_slots(&due(&[("a", 1000), ("b", 1000)]), in_flight, 16, 4);
        assert_eq!(claims(&shares), [("b", 3)]);
        // A stalled tenant at its cap leaves every slot to the others.
        let shares = share_slots(
            &due(&[("a", 1000), ("b", 1)]),
            |t| 4 * usize::from(t == "a"),
            12,
            4,
        );
        assert_eq!(claims(&shares), [("b", 1)]);
    }

    #[test]
    fn scarce_slots_go_one_per_tenant_in_the_order_given() {
        let tenants = due(&[("a", 10), ("b", 10), ("c", 10)]);
        let shares = share_slots(&tenants, |_| 0, 2, 4);
        assert_eq!(claims(&shares), [("a", 1), ("b", 1)]);
        assert_eq!(shares.last.as_deref(), Some("b"));
        let shares = share_slots(&tenants, |_| 0, 5, 4);
        assert_eq!(claims(&shares), [("a", 2), ("b", 2), ("c", 1)]);
        assert_eq!(shares.last.as_deref(), Some("b"));
    }

    #[test]
    fn nothing_is_given_without_free_slots_due_work_or_room() {
        assert_eq!(
            share_slots(&due(&[("a", 3)]), |_| 0, 0, 4),
            Shares::default()
        );
        assert_eq!(share_slots(&[], |_| 0, 16, 4), Shares::default());
        assert_eq!(
            share_slots(&due(&[("a", 0)]), |_| 0, 16, 4),
            Shares::default()
        );
        assert_eq!(
            share_slots(&due(&[("a", 9)]), |_| 7, 16, 4),
            Shares::default()
        );
    }

    #[test]
    fn the_in_flight_count_follows_the_guards() {
        let in_flight = Arc::new(InFlight::default());
        let first = in_flight.enter("a");
        let second = in_flight.enter("a");
        let other = in_flight.enter("b");
        assert_eq!((in_flight.count("a"), in_flight.count("b")), (2, 1));
        drop(first);
        drop(other);
        assert_eq!((in_flight.count("a"), in_flight.count("b")), (1, 0));
        drop(second);
        assert_eq!(in_flight.count("a"), 0);
        assert!(
            in_flight.0.lock().unwrap().is_empty(),
            "idle tenants leave no entry"
        );
    }
}
