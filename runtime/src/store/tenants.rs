//! Tenants with their settings, and their API keys.

use chrono::{DateTime, Utc};
use genrt_functions::TenantId;
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DbErr, EntityTrait, FromQueryResult, QueryFilter, QueryOrder,
    QuerySelect, Set,
};
use uuid::Uuid;

use super::entities::{api_key, invocation, tenant};
use super::Store;

pub type TenantRow = tenant::Model;
pub type ApiKeyRow = api_key::Model;

/// Settings an operator sets on a tenant; `None` leaves the configured default.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TenantSettings {
    pub rate_limit_rps: Option<f64>,
    pub rate_limit_burst: Option<u32>,
    pub max_concurrency: Option<u32>,
    pub monthly_token_budget: Option<u64>,
    pub allowed_models: Option<Vec<String>>,
    pub max_private_models: Option<u32>,
    pub max_private_model_mb: Option<u64>,
    pub max_adapters: Option<u32>,
    pub max_adapter_mb: Option<u64>,
}

impl Store {
    pub async fn tenant(&self, id: &TenantId) -> Result<Option<TenantRow>, DbErr> {
        tenant::Entity::find_by_id(id.as_str().to_owned())
            .one(&self.db)
            .await
    }

    pub async fn list_tenants(&self) -> Result<Vec<TenantRow>, DbErr> {
        tenant::Entity::find()
            .order_by_asc(tenant::Column::Id)
            .all(&self.db)
            .await
    }

    /// Creates a tenant; `Ok(None)` when it exists already.
    pub async fn create_tenant(
        &self,
        id: &TenantId,
        settings: &TenantSettings,
        disabled: bool,
    ) -> Result<Option<TenantRow>, DbErr> {
        let now = Utc::now();
        let row = tenant::ActiveModel {
            id: Set(id.as_str().to_owned()),
            disabled: Set(disabled),
            created_at: Set(now),
            updated_at: Set(Some(now)),
            ..Default::default()
        };
        let inserted = tenant::Entity::insert(apply(row, settings))
            .on_conflict(
                OnConflict::column(tenant::Column::Id)
                    .do_nothing()
                    .to_owned(),
            )
            .do_nothing()
            .exec_without_returning(&self.db)
            .await?;
        if !matches!(inserted, sea_orm::TryInsertResult::Inserted(n) if n > 0) {
            return Ok(None);
        }
        self.tenant(id).await
    }

    /// Replaces a tenant's settings (and, when given, its disabled flag).
    pub async fn update_tenant(
        &self,
        id: &TenantId,
        settings: &TenantSettings,
        disabled: Option<bool>,
    ) -> Result<Option<TenantRow>, DbErr> {
        let Some(existing) = self.tenant(id).await? else {
            return Ok(None);
        };
        let mut row = apply(existing.into(), settings);
        if let Some(disabled) = disabled {
            row.disabled = Set(disabled);
        }
        row.updated_at = Set(Some(Utc::now()));
        row.update(&self.db).await.map(Some)
    }

    pub async fn insert_api_key(&self, row: ApiKeyRow) -> Result<(), DbErr> {
        api_key::Entity::insert(api_key::ActiveModel::from(row))
            .exec_without_returning(&self.db)
            .await
            .map(|_| ())
    }

    pub async fn api_key_by_hash(&self, hash: &str) -> Result<Option<ApiKeyRow>, DbErr> {
        api_key::Entity::find()
            .filter(api_key::Column::Hash.eq(hash))
            .one(&self.db)
            .await
    }

    pub async fn list_api_keys(&self, tenant: &TenantId) -> Result<Vec<ApiKeyRow>, DbErr> {
        api_key::Entity::find()
            .filter(api_key::Column::TenantId.eq(tenant.as_str()))
            .order_by_asc(api_key::Column::CreatedAt)
            .all(&self.db)
            .await
    }

    /// Revokes a tenant's key; returns it (with its hash, to drop it from caches), or `None`
    /// when the tenant has no such key.
    pub async fn revoke_api_key(
        &self,
        tenant: &TenantId,
        id: Uuid,
    ) -> Result<Option<ApiKeyRow>, DbErr> {
        let found = api_key::Entity::find_by_id(id)
            .filter(api_key::Column::TenantId.eq(tenant.as_str()))
            .one(&self.db)
            .await?;
        let Some(key) = found else { return Ok(None) };
        if key.revoked_at.is_some() {
            return Ok(Some(key));
        }
        let mut row: api_key::ActiveModel = key.into();
        row.revoked_at = Set(Some(Utc::now()));
        row.update(&self.db).await.map(Some)
    }

    pub async fn touch_api_key(&self, id: Uuid) -> Result<(), DbErr> {
        api_key::Entity::update_many()
            .col_expr(api_key::Column::LastUsedAt, Expr::value(Utc::now()))
            .filter(api_key::Column::Id.eq(id))
            .exec(&self.db)
            .await
            .map(|_| ())
    }

    /// Prompt plus completion tokens a tenant's invocations used since `since`.
    pub async fn tokens_since(
        &self,
        tenant: &TenantId,
        since: DateTime<Utc>,
    ) -> Result<u64, DbErr> {
        #[derive(FromQueryResult)]
        struct Sum {
            prompt: Option<i64>,
            completion: Option<i64>,
        }
        let sum = invocation::Entity::find()
            .select_only()
            .column_as(Expr::col(invocation::Column::PromptTokens).sum(), "prompt")
            .column_as(
                Expr::col(invocation::Column::CompletionTokens).sum(),
                "completion",
            )
            .filter(invocation::Column::TenantId.eq(tenant.as_str()))
            .filter(invocation::Column::CreatedAt.gte(since))
            .into_model::<Sum>()
            .one(&self.db)
            .await?;
        Ok(sum.map_or(0, |s| {
            (s.prompt.unwrap_or(0) + s.completion.unwrap_or(0)).max(0) as u64
        }))
    }
}

fn apply(mut row: tenant::ActiveModel, s: &TenantSettings) -> tenant::ActiveModel {
    row.rate_limit_rps = Set(s.rate_limit_rps);
    row.rate_limit_burst = Set(s.rate_limit_burst.map(|v| v as i32));
    row.max_concurrency = Set(s.max_concurrency.map(|v| v as i32));
    row.monthly_token_budget = Set(s.monthly_token_budget.map(|v| v as i64));
    row.allowed_models = Set(s
        .allowed_models
        .as_ref()
        .map(|m| serde_json::to_string(m).expect("strings serialize")));
    row.max_private_models = Set(s.max_private_models.map(|v| v.min(i32::MAX as u32) as i32));
    row.max_private_model_mb = Set(s
        .max_private_model_mb
        .map(|v| v.min(i64::MAX as u64) as i64));
    row.max_adapters = Set(s.max_adapters.map(|v| v.min(i32::MAX as u32) as i32));
    row.max_adapter_mb = Set(s.max_adapter_mb.map(|v| v.min(i64::MAX as u64) as i64));
    row
}
