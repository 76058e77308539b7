//! The nodes of one deployment keep each other's view of tenancy current through the
//! database: each node writes a heartbeat, counts the live nodes to take its share of every
//! tenant's limits, and drops from its caches the API keys revoked and the tenants changed on
//! any node since its last look. So a revocation or a disabled tenant takes effect everywhere
//! within `tenancy.sync_interval_ms`, and N nodes do not allow N times a tenant's limit.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use super::Tenancy;
use crate::store::Store;

/// How often a node says it is alive, and how long after its last word it counts as gone.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);
const LIVE_WITHIN: Duration = Duration::from_secs(20);
/// Nodes silent this long have their rows removed (by whichever node looks).
const FORGET_AFTER: Duration = Duration::from_secs(3600);
/// Each look reaches back this far before the previous one, so that a revocation stamped by a
/// node whose clock runs behind this one's (or committed late) is still seen.
const OVERLAP: Duration = Duration::from_secs(60);

/// What the sync loop needs: its own handles and its own stop token.
pub struct ClusterSync {
    pub store: Store,
    pub tenancy: Arc<Tenancy>,
    pub node: String,
    pub every: Duration,
    pub stop: CancellationToken,
}

pub async fn run(sync: ClusterSync) {
    let started = Utc::now();
    let mut last_heartbeat: Option<tokio::time::Instant> = None;
    let mut since: DateTime<Utc> = started;
    let mut tick = tokio::time::interval(sync.every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = sync.stop.cancelled() => break,
        }
        if last_heartbeat.is_none_or(|at| at.elapsed() >= HEARTBEAT_EVERY) {
            last_heartbeat = Some(tokio::time::Instant::now());
            if let Err(err) = beat(&sync, started).await {
                tracing::warn!(error = %err, "node heartbeat failed; keeping the last node count");
            }
        }
        let look = Utc::now();
        match forget_changes(&sync, since - OVERLAP).await {
            Ok(()) => since = look,
            Err(err) => tracing::warn!(error = %err, "reading revocations failed; retrying"),
        }
    }
    // Leaving: the other nodes take this one's share at their next count.
    let dead = Utc::now() - FORGET_AFTER;
    if let Err(err) = sync.store.remove_node(&sync.node, dead).await {
        tracing::debug!(error = %err, "could not remove this node's heartbeat");
    }
}

async fn beat(sync: &ClusterSync, started: DateTime<Utc>) -> Result<(), sea_orm::DbErr> {
    sync.store.node_heartbeat(&sync.node, started).await?;
    let live = sync.store.live_nodes(Utc::now() - LIVE_WITHIN).await?;
    let nodes = u32::try_from(live).unwrap_or(u32::MAX).max(1);
    if nodes != sync.tenancy.limits.nodes() {
        tracing::info!(
            nodes,
            "live nodes changed; each takes its share of tenant limits"
        );
    }
    sync.tenancy.limits.set_nodes(nodes);
    Ok(())
}

async fn forget_changes(sync: &ClusterSync, since: DateTime<Utc>) -> Result<(), sea_orm::DbErr> {
    for key in sync.store.keys_revoked_since(since).await? {
        sync.tenancy.forget_key(&key);
    }
    for tenant in sync.store.tenants_updated_since(since).await? {
        sync.tenancy.forget_tenant(&tenant);
    }
    Ok(())
}
