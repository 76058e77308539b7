//! Who is calling and what they may do: credentials (JWTs and API keys) resolve to a
//! [`Caller`] with its tenant and scopes; the tenant's settings decide whether and how much it
//! may call (disabled tenants, rate limit, concurrency cap, monthly token budget, allowed
//! models).

mod caller;
pub mod cluster;
pub mod keys;
pub mod limits;
pub mod scopes;

pub use caller::{Caller, Credential};
pub use limits::{ConcurrencyPermit, Limits, TenantLimits};
pub use scopes::{Scope, Scopes};

use std::sync::Arc;
use std::time::Duration;

use chrono::{Datelike, TimeZone, Utc};
use genrt_functions::TenantId;
use sea_orm::DbErr;
use uuid::Uuid;

use crate::config::TenancyConfig;
use crate::error::{ApiError, ErrorCode};
use crate::read_ahead::{Lookup, ReadAhead, Ticket};
use crate::store::{ApiKeyRow, Store, TenantRow};

/// A verified API key.
#[derive(Debug, Clone)]
pub struct KeyGrant {
    pub key_id: Uuid,
    pub tenant: TenantId,
    pub scopes: Scopes,
    pub expires_at: Option<chrono::DateTime<Utc>>,
}

pub struct Tenancy {
    store: Store,
    defaults: TenancyConfig,
    pub limits: Limits,
    /// Reread in the background while in use, so that a busy tenant's requests never wait
    /// for its row; another node's change is seen within `cache_ttl_s`.
    settings: ReadAhead<TenantId, Arc<TenantLimits>>,
    /// Keys by the hash of their secret; `None` caches "no such key" so that a flood of bad
    /// keys does not reach the database each time. Reread like `settings`: a key revoked on
    /// another node stops working within `cache_ttl_s`.
    keys: ReadAhead<String, Option<Arc<KeyGrant>>>,
}

impl Tenancy {
    pub fn new(store: Store, defaults: TenancyConfig) -> Self {
        let ttl = Duration::from_secs(defaults.cache_ttl_s.max(1));
        Self {
            store,
            defaults,
            limits: Limits::default(),
            settings: ReadAhead::new(100_000, ttl),
            keys: ReadAhead::new(100_000, ttl),
        }
    }

    /// The limits in force for a tenant. A tenant without a row (a JWT for a tenant nobody
    /// created yet) gets one, with the defaults, on its first request: it is then listed,
    /// and an operator can disable or limit it like any other. (One that must never run can
    /// be created disabled before its first token is used.)
    pub async fn limits_of(&self, tenant: &TenantId) -> Result<Arc<TenantLimits>, DbErr> {
        let ticket = match self.settings.get(tenant) {
            Lookup::Hit(limits) => return Ok(limits),
            Lookup::Reread(limits, ticket) => {
                let (store, settings) = (self.store.clone(), self.settings.clone());
                let (defaults, tenant) = (self.defaults.clone(), tenant.clone());
                self.settings
                    .in_background("rereading a tenant's settings", async move {
                        read_limits(&store, &settings, &defaults, ticket, &tenant).await
                    });
                return Ok(limits);
            }
            Lookup::Miss(ticket) => ticket,
        };
        read_limits(&self.store, &self.settings, &self.defaults, ticket, tenant).await
    }

    pub fn resolve(&self, row: Option<&TenantRow>) -> TenantLimits {
        resolve(&self.defaults, row)
    }

    /// Called after a tenant's settings change on this node.
    pub fn forget_tenant(&self, tenant: &TenantId) {
        self.settings.invalidate(tenant);
    }

    pub async fn verify_key(&self, secret: &str) -> Result<Arc<KeyGrant>, ApiError> {
        let hash = keys::hash(secret);
        let grant = match self.keys.get(&hash) {
            Lookup::Hit(grant) => grant,
            Lookup::Reread(grant, ticket) => {
                let (store, keys) = (self.store.clone(), self.keys.clone());
                self.keys.in_background("rereading an API key", async move {
                    read_key(&store, &keys, ticket, hash).await
                });
                grant
            }
            Lookup::Miss(ticket) => read_key(&self.store, &self.keys, ticket, hash).await?,
        };
        let invalid = || ApiError::new(ErrorCode::InvalidApiKey, "the API key is not valid");
        let grant = grant.ok_or_else(invalid)?;
        if grant.expires_at.is_some_and(|e| e <= Utc::now()) {
            return Err(ApiError::new(
                ErrorCode::InvalidApiKey,
                "the API key has expired",
            ));
        }
        Ok(grant)
    }

    /// Called after a key is revoked on this node.
    pub fn forget_key(&self, row: &ApiKeyRow) {
        self.keys.invalidate(&row.hash);
    }

    /// Tokens the tenant used this calendar month (UTC).
    pub async fn usage_this_month(&self, tenant: &TenantId) -> Result<u64, DbErr> {
        if let Some(used) = self.limits.known_usage(tenant) {
            return Ok(used);
        }
        let now = Utc::now();
        let start = Utc
            .with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0)
            .single()
            .unwrap_or(now);
        let used = self.store.tokens_since(tenant, start).await?;
        self.limits.set_usage(tenant, used);
        Ok(used)
    }

    /// Refuses new work once the monthly budget is used up.
    pub async fn check_budget(
        &self,
        tenant: &TenantId,
        limits: &TenantLimits,
    ) -> Result<(), ApiError> {
        if limits.monthly_token_budget == 0 {
            return Ok(());
        }
        let used = self.usage_this_month(tenant).await?;
        Limits::check_budget(limits, used)
    }

    pub fn record_usage(&self, tenant: &TenantId, tokens: u64) {
        self.limits.add_usage(tenant, tokens);
    }
}

/// The limits in force for a tenant: its row's settings over the configured defaults.
fn resolve(d: &TenancyConfig, row: Option<&TenantRow>) -> TenantLimits {
    TenantLimits {
        disabled: row.is_some_and(|r| r.disabled),
        rate_limit_rps: row
            .and_then(|r| r.rate_limit_rps)
            .unwrap_or(d.rate_limit_rps),
        rate_limit_burst: row
            .and_then(|r| r.rate_limit_burst)
            .map_or(d.rate_limit_burst, |v| v.max(0) as u32),
        max_concurrency: row
            .and_then(|r| r.max_concurrency)
            .map_or(d.max_concurrency, |v| v.max(0) as u32),
        max_concurrent_streams: d.max_concurrent_streams,
        max_concurrent_prewarms: d.max_concurrent_prewarms,
        monthly_token_budget: row
            .and_then(|r| r.monthly_token_budget)
            .map_or(d.monthly_token_budget, |v| v.max(0) as u64),
        allowed_models: row
            .and_then(|r| r.allowed_models.as_deref())
            .and_then(|m| serde_json::from_str(m).ok()),
        max_private_models: row
            .and_then(|r| r.max_private_models)
            .map_or(d.max_private_models, |v| v.max(0) as u32),
        max_private_model_mb: row
            .and_then(|r| r.max_private_model_mb)
            .map_or(d.max_private_model_mb, |v| v.max(0) as u64),
        max_adapters: row
            .and_then(|r| r.max_adapters)
            .map_or(d.max_adapters, |v| v.max(0) as u32),
        max_adapter_mb: row
            .and_then(|r| r.max_adapter_mb)
            .map_or(d.max_adapter_mb, |v| v.max(0) as u64),
    }
}

/// Reads a tenant's row (creating it, with the defaults, for a tenant not seen before) and
/// caches its limits.
async fn read_limits(
    store: &Store,
    settings: &ReadAhead<TenantId, Arc<TenantLimits>>,
    defaults: &TenancyConfig,
    ticket: Ticket,
    tenant: &TenantId,
) -> Result<Arc<TenantLimits>, DbErr> {
    let mut row = store.tenant(tenant).await?;
    if row.is_none() {
        // Another node may create it at the same moment: the insert then does nothing and
        // the reread finds that node's row.
        store
            .create_tenant(tenant, &crate::store::TenantSettings::default(), false)
            .await?;
        row = store.tenant(tenant).await?;
    }
    let limits = Arc::new(resolve(defaults, row.as_ref()));
    settings.insert(ticket, tenant.clone(), Arc::clone(&limits));
    Ok(limits)
}

/// Reads an API key by its hash and caches what it grants (`None`: no such key, or revoked).
async fn read_key(
    store: &Store,
    keys: &ReadAhead<String, Option<Arc<KeyGrant>>>,
    ticket: Ticket,
    hash: String,
) -> Result<Option<Arc<KeyGrant>>, DbErr> {
    let row = store.api_key_by_hash(&hash).await?;
    let grant = row
        .filter(|k| k.revoked_at.is_none())
        .and_then(grant_of)
        .map(Arc::new);
    if let Some(g) = &grant {
        // Best effort, once per read: a listing shows roughly when a key was last used
        // without a write on every request.
        let store = store.clone();
        let id = g.key_id;
        tokio::spawn(async move {
            let _ = store.touch_api_key(id).await;
        });
    }
    keys.insert(ticket, hash, grant.clone());
    Ok(grant)
}

fn grant_of(row: ApiKeyRow) -> Option<KeyGrant> {
    Some(KeyGrant {
        key_id: row.id,
        tenant: TenantId::parse(&row.tenant_id).ok()?,
        scopes: Scopes::parse_lenient(row.scopes.split_whitespace()),
        expires_at: row.expires_at,
    })
}
