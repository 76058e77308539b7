//! Stored invocation records.

use actix_web::{web, HttpResponse};
use uuid::Uuid;

use crate::api::dto::InvocationRecord;
use crate::app::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody, ErrorCode};

/// One invocation as stored: input, output or error, usage and timings.
#[utoipa::path(get, path = "/v1/invocations/{id}", tag = "invocations", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Invocation id")),
    responses(
        (status = 200, body = InvocationRecord),
        (status = 401, body = ErrorBody),
        (status = 404, description = "No such invocation for this tenant", body = ErrorBody)))]
pub async fn get(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let not_found = || {
        ApiError::new(
            ErrorCode::InvocationNotFound,
            format!("invocation `{id}` not found"),
        )
    };
    let uuid = Uuid::parse_str(&id).map_err(|_| not_found())?;
    let row = state
        .records
        .get(&caller.tenant, uuid)
        .await?
        .ok_or_else(not_found)?;
    Ok(HttpResponse::Ok().json(InvocationRecord::from(row)))
}
