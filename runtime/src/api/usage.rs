//! What a tenant used: the business layer of monitoring.

use actix_web::{web, HttpResponse};
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::app::AppState;
use crate::error::{ApiError, ErrorBody, ErrorCode};
use crate::store::UsageGroup;
use crate::tenancy::{Caller, Scope};

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct UsageQuery {
    /// Start, inclusive (RFC 3339). Default: 30 days before `to`.
    pub from: Option<DateTime<Utc>>,
    /// End, exclusive (RFC 3339). Default: now.
    pub to: Option<DateTime<Utc>>,
    /// `function` (default), `day` (UTC), `mode` (how the work started: `sync`, `stream`,
    /// `async`, ..., `shadow` for shadow copies, `prewarm`, `evaluate`) or `error_code` (the
    /// invocations that ended with an error, by its code).
    pub group_by: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UsageEntry {
    /// The function name, the day as YYYY-MM-DD, the mode or the error code.
    pub key: String,
    pub invocations: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cache_hits: u64,
    /// Invocations that failed (refused requests are not invocations).
    pub errors: u64,
    /// When the group's newest invocation was made.
    pub last_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UsageReport {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub group_by: String,
    pub usage: Vec<UsageEntry>,
    pub total: UsageEntry,
    /// Tokens used this calendar month, and the monthly budget (0: none).
    pub month_tokens: u64,
    pub monthly_token_budget: u64,
}

/// Invocations, tokens, cache hits and errors of the caller's tenant, by function, day, mode
/// or error code.
#[utoipa::path(get, path = "/v1/usage", tag = "usage", security(("bearer" = ["invocations:read"])),
    params(UsageQuery),
    responses(
        (status = 200, body = UsageReport),
        (status = 401, body = ErrorBody),
        (status = 403, description = "Lacks `invocations:read`", body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub async fn get(
    state: web::Data<AppState>,
    caller: Caller,
    query: web::Query<UsageQuery>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Scope::InvocationsRead)?;
    let q = query.into_inner();
    let to = q.to.unwrap_or_else(Utc::now);
    let from = q.from.unwrap_or(to - Duration::days(30));
    if from >= to {
        return Err(
            ApiError::new(ErrorCode::InvalidRequest, "from must be before to").with_field("from"),
        );
    }
    let (group, name) = match q.group_by.as_deref() {
        None | Some("function") => (UsageGroup::Function, "function"),
        Some("day") => (UsageGroup::Day, "day"),
        Some("mode") => (UsageGroup::Mode, "mode"),
        Some("error_code") => (UsageGroup::ErrorCode, "error_code"),
        Some(other) => {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                format!(
                    "group_by must be `function`, `day`, `mode` or `error_code`, not `{other}`"
                ),
            )
            .with_field("group_by"))
        }
    };
    let rows = state
        .store
        .usage(caller.tenant.as_str(), from, to, group)
        .await?;
    let n = |v: Option<i64>| v.unwrap_or(0).max(0) as u64;
    let usage: Vec<UsageEntry> = rows
        .into_iter()
        .map(|r| UsageEntry {
            key: r.key,
            invocations: r.invocations.max(0) as u64,
            prompt_tokens: n(r.prompt_tokens),
            completion_tokens: n(r.completion_tokens),
            cache_hits: n(r.cache_hits),
            errors: n(r.errors),
            last_at: r.last_at,
        })
        .collect();
    let total = UsageEntry {
        key: "total".into(),
        invocations: usage.iter().map(|u| u.invocations).sum(),
        prompt_tokens: usage.iter().map(|u| u.prompt_tokens).sum(),
        completion_tokens: usage.iter().map(|u| u.completion_tokens).sum(),
        cache_hits: usage.iter().map(|u| u.cache_hits).sum(),
        errors: usage.iter().map(|u| u.errors).sum(),
        last_at: usage.iter().filter_map(|u| u.last_at).max(),
    };
    let month_tokens = state.tenancy.usage_this_month(&caller.tenant).await?;
    Ok(HttpResponse::Ok().json(UsageReport {
        from,
        to,
        group_by: name.into(),
        usage,
        total,
        month_tokens,
        monthly_token_budget: caller.limits.monthly_token_budget,
    }))
}
