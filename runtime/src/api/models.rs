//! Registered models and their live state.

use actix_web::{web, HttpResponse};

use crate::api::dto::{ModelInfo, ModelList};
use crate::app::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};

/// List registered models with their state (unloaded, loading, ready, failed) and replicas.
#[utoipa::path(get, path = "/v1/models", tag = "models", security(("bearer" = [])),
    responses(
        (status = 200, body = ModelList),
        (status = 401, body = ErrorBody)))]
pub async fn list(state: web::Data<AppState>, _caller: Caller) -> Result<HttpResponse, ApiError> {
    let models = state
        .tree
        .models()
        .await
        .into_iter()
        .map(ModelInfo::from)
        .collect();
    Ok(HttpResponse::Ok().json(ModelList { models }))
}
