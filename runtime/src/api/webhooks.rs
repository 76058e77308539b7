//! Outgoing webhooks: the tenant's signing secrets (with rotation) and the record of
//! deliveries and their attempts, with a manual redeliver.

use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::app::AppState;
use crate::error::{ApiError, ErrorBody, ErrorCode};
use crate::store::{AttemptRow, DeliveryRow};
use crate::tenancy::{Caller, Scope};
use crate::webhooks::signing;

#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookSecrets {
    /// Secrets signing this tenant's webhooks now, newest first (`whsec_...`). During a
    /// rotation there are two, and each message carries a signature for each.
    pub secrets: Vec<String>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateSecret {
    /// Seconds the previous secret keeps signing beside the new one (default one day, at most
    /// 30 days).
    #[schema(maximum = 2_592_000)]
    pub overlap_s: Option<u64>,
}

/// The longest `overlap_s`: 30 days.
const MAX_OVERLAP_S: u64 = 30 * 86_400;

#[derive(Debug, Serialize, ToSchema)]
pub struct AttemptInfo {
    pub attempt: u32,
    pub status_code: Option<u16>,
    pub error: Option<String>,
    pub duration_ms: f64,
    pub attempted_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryInfo {
    /// The `webhook-id` header: the same on every attempt.
    pub id: String,
    pub invocation_id: Uuid,
    pub event: String,
    pub url: String,
    /// `pending`, `delivering`, `succeeded`, `failed` (retries used up) or `disabled`
    /// (the endpoint answered 410 Gone).
    pub status: String,
    pub next_attempt_at: DateTime<Utc>,
    pub attempts: Vec<AttemptInfo>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryList {
    pub deliveries: Vec<DeliveryInfo>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DeliveryQuery {
    /// Only this invocation's deliveries.
    pub invocation_id: Option<Uuid>,
    /// At most this many, newest first (1-500, default 100).
    pub limit: Option<u64>,
}

fn info(d: DeliveryRow, attempts: Vec<AttemptRow>) -> DeliveryInfo {
    DeliveryInfo {
        id: d.id,
        invocation_id: d.invocation_id,
        event: d.event,
        url: d.url,
        status: d.status,
        next_attempt_at: d.next_attempt_at,
        attempts: attempts
            .into_iter()
            .map(|a| AttemptInfo {
                attempt: a.attempt.max(0) as u32,
                status_code: a.status_code.map(|c| c as u16),
                error: a.error,
                duration_ms: a.duration_ms,
                attempted_at: a.attempted_at,
            })
            .collect(),
        created_at: d.created_at,
    }
}

/// The secrets that sign this tenant's webhooks (created on first use).
#[utoipa::path(get, path = "/v1/webhooks/secret", tag = "webhooks", security(("bearer" = ["webhooks:write"])),
    responses(
        (status = 200, body = WebhookSecrets),
        (status = 401, body = ErrorBody),
        (status = 403, description = "Lacks `webhooks:write`", body = ErrorBody)))]
pub async fn secret(state: web::Data<AppState>, caller: Caller) -> Result<HttpResponse, ApiError> {
    caller.require(Scope::WebhooksWrite)?;
    let secrets = state
        .store
        .webhook_secrets(caller.tenant.as_str(), signing::generate_secret)
        .await?;
    Ok(HttpResponse::Ok().json(WebhookSecrets { secrets }))
}

/// Start signing with a new secret. The previous one keeps signing too (a second
/// `v1,` signature) for `overlap_s`, so receivers can switch without dropping events.
#[utoipa::path(post, path = "/v1/webhooks/secret/rotate", tag = "webhooks", security(("bearer" = ["webhooks:write"])),
    request_body = RotateSecret,
    responses(
        (status = 200, body = WebhookSecrets),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 422, description = "`overlap_s` is more than 30 days", body = ErrorBody)))]
pub async fn rotate(
    state: web::Data<AppState>,
    caller: Caller,
    body: Option<web::Json<RotateSecret>>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Scope::WebhooksWrite)?;
    let overlap = body.and_then(|b| b.overlap_s).unwrap_or(24 * 3600);
    // An overlap is meant to cover a receiver's switch, not to keep old secrets forever; the
    // bound also keeps the expiry a representable date.
    if overlap > MAX_OVERLAP_S {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!("overlap_s must be at most {MAX_OVERLAP_S} (30 days)"),
        )
        .with_field("overlap_s"));
    }
    let secrets = state
        .store
        .rotate_webhook_secret(
            caller.tenant.as_str(),
            signing::generate_secret(),
            std::time::Duration::from_secs(overlap),
        )
        .await?;
    Ok(HttpResponse::Ok().json(WebhookSecrets { secrets }))
}

/// Deliveries of this tenant's webhooks with every attempt.
#[utoipa::path(get, path = "/v1/webhooks/deliveries", tag = "webhooks", security(("bearer" = ["webhooks:write"]), ("bearer" = ["invocations:read"])),
    params(DeliveryQuery),
    responses(
        (status = 200, body = DeliveryList),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody)))]
pub async fn deliveries(
    state: web::Data<AppState>,
    caller: Caller,
    query: web::Query<DeliveryQuery>,
) -> Result<HttpResponse, ApiError> {
    caller.require_any(&[Scope::WebhooksWrite, Scope::InvocationsRead])?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(
            ApiError::new(ErrorCode::InvalidRequest, "limit must be 1-500").with_field("limit"),
        );
    }
    let rows = state
        .store
        .list_deliveries(caller.tenant.as_str(), query.invocation_id, limit)
        .await?;
    Ok(HttpResponse::Ok().json(DeliveryList {
        deliveries: rows.into_iter().map(|(d, a)| info(d, a)).collect(),
    }))
}

/// Send a delivery again now, with the same `webhook-id` (re-enabling its endpoint if a 410
/// had disabled it).
#[utoipa::path(post, path = "/v1/webhooks/deliveries/{id}/redeliver", tag = "webhooks", security(("bearer" = ["webhooks:write"])),
    params(("id" = String, Path)),
    responses(
        (status = 202, body = DeliveryInfo),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn redeliver(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Scope::WebhooksWrite)?;
    let row = state
        .store
        .redeliver(caller.tenant.as_str(), &id)
        .await?
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::DeliveryNotFound,
                format!("delivery `{id}` not found"),
            )
        })?;
    state.deliveries_wake();
    Ok(HttpResponse::Accepted().json(info(row, Vec::new())))
}
