//! Invocation records: one, a filtered page of them, and cancellation.

use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use utoipa::IntoParams;
use uuid::Uuid;

use crate::api::dto::{InvocationPage, InvocationRecord};
use crate::app::AppState;
use crate::error::{ApiError, ErrorBody, ErrorCode};
use crate::invocation::Mode;
use crate::store::InvocationFilter;
use crate::tenancy::{Caller, Scope};

const STATUSES: [&str; 5] = ["queued", "running", "succeeded", "failed", "cancelled"];
const MAX_PAGE: u64 = 200;

pub(crate) fn invocation_not_found(id: &str) -> ApiError {
    ApiError::new(
        ErrorCode::InvocationNotFound,
        format!("invocation `{id}` not found"),
    )
}

/// One invocation as stored: input, output or error, usage and timings.
#[utoipa::path(get, path = "/v1/invocations/{id}", tag = "invocations", security(("bearer" = ["invocations:read"])),
    params(("id" = Uuid, Path, description = "Invocation id")),
    responses(
        (status = 200, body = InvocationRecord),
        (status = 401, body = ErrorBody),
        (status = 403, description = "Lacks `invocations:read`", body = ErrorBody),
        (status = 404, description = "No such invocation for this tenant", body = ErrorBody)))]
pub async fn get(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Scope::InvocationsRead)?;
    let uuid = Uuid::parse_str(&id).map_err(|_| invocation_not_found(&id))?;
    let row = state
        .records
        .get(&caller.tenant, uuid)
        .await?
        .ok_or_else(|| invocation_not_found(&id))?;
    Ok(HttpResponse::Ok().json(InvocationRecord::from(row)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only this function's invocations.
    pub function: Option<String>,
    /// `queued`, `running`, `succeeded`, `failed` or `cancelled`.
    pub status: Option<String>,
    /// How the work started: `sync`, `stream`, `async`, `batch`, `trigger`, `evaluate`,
    /// `prewarm`, `openai`, `openai_stream` or `shadow`.
    pub mode: Option<String>,
    /// Made at or after this time (RFC 3339).
    pub from: Option<DateTime<Utc>>,
    /// Made before this time (RFC 3339).
    pub to: Option<DateTime<Utc>>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Page size, 1-200 (default 50).
    pub limit: Option<u64>,
}

/// The caller's invocations, newest first, a page at a time: pass `next_cursor` back as
/// `cursor` until it is null.
#[utoipa::path(get, path = "/v1/invocations", tag = "invocations", security(("bearer" = ["invocations:read"])),
    params(ListQuery),
    responses(
        (status = 200, body = InvocationPage),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 422, description = "Bad status, cursor or limit", body = ErrorBody)))]
pub async fn list(
    state: web::Data<AppState>,
    caller: Caller,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Scope::InvocationsRead)?;
    let q = query.into_inner();
    if let Some(s) = &q.status {
        if !STATUSES.contains(&s.as_str()) {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                format!("unknown status `{s}`; one of {}", STATUSES.join(", ")),
            )
            .with_field("status"));
        }
    }
    if let Some(m) = &q.mode {
        if Mode::parse(m).is_none() {
            let known: Vec<&str> = Mode::ALL.iter().map(|m| m.as_str()).collect();
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                format!("unknown mode `{m}`; one of {}", known.join(", ")),
            )
            .with_field("mode"));
        }
    }
    let limit = q.limit.unwrap_or(50);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(
            ApiError::new(ErrorCode::InvalidRequest, "limit must be 1-200").with_field("limit"),
        );
    }
    let before = q
        .cursor
        .as_deref()
        .map(|c| {
            Uuid::parse_str(c).map_err(|_| {
                ApiError::new(ErrorCode::InvalidRequest, "the cursor is not valid")
                    .with_field("cursor")
            })
        })
        .transpose()?;
    if let (Some(from), Some(to)) = (q.from, q.to) {
        if from >= to {
            return Err(
                ApiError::new(ErrorCode::InvalidRequest, "from must be before to")
                    .with_field("from"),
            );
        }
    }
    let filter = InvocationFilter {
        function: q.function,
        status: q.status,
        mode: q.mode,
        from: q.from,
        to: q.to,
        batch: None,
        before,
    };
    // One more than asked tells whether another page exists.
    let mut rows = state
        .store
        .list_invocations(caller.tenant.as_str(), &filter, limit + 1)
        .await?;
    let more = rows.len() as u64 > limit;
    rows.truncate(limit as usize);
    let next_cursor = more
        .then(|| rows.last().map(|r| r.id.to_string()))
        .flatten();
    Ok(HttpResponse::Ok().json(InvocationPage {
        invocations: rows.into_iter().map(InvocationRecord::from).collect(),
        next_cursor,
    }))
}

/// Cancel a queued or running invocation. Queued work is cancelled at once; a running
/// generation stops within one decode step on its node (another node notices within its
/// poll interval). Finished invocations answer 409 `not_cancellable`.
#[utoipa::path(post, path = "/v1/invocations/{id}/cancel", tag = "invocations", security(("bearer" = ["functions:invoke"])),
    params(("id" = Uuid, Path, description = "Invocation id")),
    responses(
        (status = 202, description = "Cancelled, or cancellation requested", body = InvocationRecord),
        (status = 401, body = ErrorBody),
        (status = 403, description = "Lacks `functions:invoke`", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "Already finished", body = ErrorBody)))]
pub async fn cancel(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Scope::FunctionsInvoke)?;
    let uuid = Uuid::parse_str(&id).map_err(|_| invocation_not_found(&id))?;
    let row = state
        .store
        .request_cancel(caller.tenant.as_str(), uuid)
        .await?
        .ok_or_else(|| invocation_not_found(&id))?;
    match row.status.as_str() {
        "cancelled" => Ok(HttpResponse::Accepted().json(InvocationRecord::from(row))),
        "running" => {
            state.queue.cancel_local(uuid);
            Ok(HttpResponse::Accepted().json(InvocationRecord::from(row)))
        }
        status => Err(ApiError::new(
            ErrorCode::NotCancellable,
            format!("the invocation is already {status}"),
        )),
    }
}
