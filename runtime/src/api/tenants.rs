//! The operator's API (scope `admin`): tenants and their limits.

use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use genrt_functions::TenantId;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::app::AppState;
use crate::error::{ApiError, ErrorBody, ErrorCode};
use crate::store::{TenantRow, TenantSettings};
use crate::tenancy::{Caller, Scope};

/// A tenant's limits; unset ones use the server's defaults (`[tenancy]` in the config).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantLimitsBody {
    /// Sustained requests per second; 0 disables the limit.
    pub rate_limit_rps: Option<f64>,
    pub rate_limit_burst: Option<u32>,
    /// Synchronous and streaming invocations running at once; 0 is no cap.
    pub max_concurrency: Option<u32>,
    /// Prompt + completion tokens per calendar month (UTC); 0 is no budget.
    pub monthly_token_budget: Option<u64>,
    /// Model ids this tenant may use; unset allows all.
    pub allowed_models: Option<Vec<String>>,
    /// Models this tenant may register for itself (`models:write`); 0: none.
    pub max_private_models: Option<u32>,
    /// MiB those models may take together; 0 is no cap beyond `registry.max_file_mb` each.
    pub max_private_model_mb: Option<u64>,
    /// LoRA adapters this tenant may register for itself (`models:write`); 0: none.
    pub max_adapters: Option<u32>,
    /// MiB those adapters may take together; 0 is no cap beyond `registry.max_file_mb` each.
    pub max_adapter_mb: Option<u64>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    /// 1-64 of a-z, 0-9, '-', '_'.
    pub id: String,
    /// Create it disabled: its credentials are refused from the first request, so a tenant
    /// can be blocked before anyone has used a token for it.
    #[serde(default)]
    pub disabled: bool,
    #[serde(default, flatten)]
    pub limits: TenantLimitsBody,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateTenant {
    pub disabled: Option<bool>,
    #[serde(default, flatten)]
    pub limits: TenantLimitsBody,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TenantInfo {
    pub id: String,
    pub disabled: bool,
    #[serde(flatten)]
    pub limits: TenantLimitsBody,
    pub created_at: DateTime<Utc>,
    pub updated_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TenantList {
    pub tenants: Vec<TenantInfo>,
}

impl From<TenantRow> for TenantInfo {
    fn from(r: TenantRow) -> Self {
        Self {
            id: r.id,
            disabled: r.disabled,
            limits: TenantLimitsBody {
                rate_limit_rps: r.rate_limit_rps,
                rate_limit_burst: r.rate_limit_burst.map(|v| v.max(0) as u32),
                max_concurrency: r.max_concurrency.map(|v| v.max(0) as u32),
                monthly_token_budget: r.monthly_token_budget.map(|v| v.max(0) as u64),
                allowed_models: r
                    .allowed_models
                    .as_deref()
                    .and_then(|m| serde_json::from_str(m).ok()),
                max_private_models: r.max_private_models.map(|v| v.max(0) as u32),
                max_private_model_mb: r.max_private_model_mb.map(|v| v.max(0) as u64),
                max_adapters: r.max_adapters.map(|v| v.max(0) as u32),
                max_adapter_mb: r.max_adapter_mb.map(|v| v.max(0) as u64),
            },
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

impl TenantLimitsBody {
    fn to_settings(&self, state: &AppState) -> Result<TenantSettings, ApiError> {
        if let Some(rps) = self.rate_limit_rps {
            if !rps.is_finite() || rps < 0.0 {
                return Err(ApiError::new(
                    ErrorCode::InvalidRequest,
                    "rate_limit_rps must be a non-negative number",
                )
                .with_field("rate_limit_rps"));
            }
        }
        if let Some(models) = &self.allowed_models {
            if let Some(m) = models.iter().find(|m| {
                state
                    .tree
                    .model(&genrt_functions::ModelId::new(m.as_str()))
                    .is_none()
            }) {
                return Err(ApiError::new(
                    ErrorCode::UnknownModel,
                    format!("model `{m}` is not registered"),
                )
                .with_field("allowed_models"));
            }
        }
        Ok(TenantSettings {
            rate_limit_rps: self.rate_limit_rps,
            rate_limit_burst: self.rate_limit_burst,
            max_concurrency: self.max_concurrency,
            monthly_token_budget: self.monthly_token_budget,
            allowed_models: self.allowed_models.clone(),
            max_private_models: self.max_private_models,
            max_private_model_mb: self.max_private_model_mb,
            max_adapters: self.max_adapters,
            max_adapter_mb: self.max_adapter_mb,
        })
    }
}

fn tenant_id(raw: &str) -> Result<TenantId, ApiError> {
    TenantId::parse(raw).map_err(|_| tenant_not_found(raw))
}

fn tenant_not_found(id: &str) -> ApiError {
    ApiError::new(
        ErrorCode::TenantNotFound,
        format!("tenant `{id}` not found"),
    )
}

/// Create a tenant with its limits.
#[utoipa::path(post, path = "/v1/admin/tenants", tag = "admin", security(("bearer" = ["admin"])),
    request_body = CreateTenant,
    responses(
        (status = 201, body = TenantInfo),
        (status = 401, body = ErrorBody),
        (status = 403, description = "Lacks `admin`", body = ErrorBody),
        (status = 409, description = "The tenant exists", body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub async fn create(
    state: web::Data<AppState>,
    caller: Caller,
    body: web::Json<CreateTenant>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Scope::Admin)?;
    let id = TenantId::parse(&body.id)?;
    let settings = body.limits.to_settings(&state)?;
    let row = state
        .store
        .create_tenant(&id, &settings, body.disabled)
        .await?
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::TenantExists,
                format!("tenant `{}` exists", id.as_str()),
            )
        })?;
    state.tenancy.forget_tenant(&id);
    Ok(HttpResponse::Created().json(TenantInfo::from(row)))
}

/// Every tenant.
#[utoipa::path(get, path = "/v1/admin/tenants", tag = "admin", security(("bearer" = ["admin"])),
    responses(
        (status = 200, body = TenantList),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody)))]
pub async fn list(state: web::Data<AppState>, caller: Caller) -> Result<HttpResponse, ApiError> {
    caller.require(Scope::Admin)?;
    let tenants = state.store.list_tenants().await?;
    Ok(HttpResponse::Ok().json(TenantList {
        tenants: tenants.into_iter().map(TenantInfo::from).collect(),
    }))
}

/// One tenant.
#[utoipa::path(get, path = "/v1/admin/tenants/{id}", tag = "admin", security(("bearer" = ["admin"])),
    params(("id" = String, Path)),
    responses(
        (status = 200, body = TenantInfo),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn get(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Scope::Admin)?;
    let tenant = tenant_id(&id)?;
    let row = state
        .store
        .tenant(&tenant)
        .await?
        .ok_or_else(|| tenant_not_found(&id))?;
    Ok(HttpResponse::Ok().json(TenantInfo::from(row)))
}

/// Change a tenant's limits (fields given replace the stored ones; others stay), or disable (`"disabled": true`) and re-enable it. A disabled
/// tenant's credentials get 403 `tenant_disabled`; its queued work fails when it comes up.
#[utoipa::path(patch, path = "/v1/admin/tenants/{id}", tag = "admin", security(("bearer" = ["admin"])),
    params(("id" = String, Path)),
    request_body = UpdateTenant,
    responses(
        (status = 200, body = TenantInfo),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub async fn update(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
    body: web::Json<UpdateTenant>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Scope::Admin)?;
    let tenant = tenant_id(&id)?;
    let existing = state
        .store
        .tenant(&tenant)
        .await?
        .ok_or_else(|| tenant_not_found(&id))?;
    let old = TenantInfo::from(existing).limits;
    let new = &body.limits;
    let merged = TenantLimitsBody {
        rate_limit_rps: new.rate_limit_rps.or(old.rate_limit_rps),
        rate_limit_burst: new.rate_limit_burst.or(old.rate_limit_burst),
        max_concurrency: new.max_concurrency.or(old.max_concurrency),
        monthly_token_budget: new.monthly_token_budget.or(old.monthly_token_budget),
        allowed_models: new.allowed_models.clone().or(old.allowed_models),
        max_private_models: new.max_private_models.or(old.max_private_models),
        max_private_model_mb: new.max_private_model_mb.or(old.max_private_model_mb),
        max_adapters: new.max_adapters.or(old.max_adapters),
        max_adapter_mb: new.max_adapter_mb.or(old.max_adapter_mb),
    };
    let settings = merged.to_settings(&state)?;
    let row = state
        .store
        .update_tenant(&tenant, &settings, body.disabled)
        .await?
        .ok_or_else(|| tenant_not_found(&id))?;
    state.tenancy.forget_tenant(&tenant);
    Ok(HttpResponse::Ok().json(TenantInfo::from(row)))
}
