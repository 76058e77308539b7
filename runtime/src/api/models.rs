//! Registered models and their live state.

use actix_web::{web, HttpResponse};

use genrt_functions::ModelId;

use crate::api::dto::{DeviceInfo, DeviceList, ModelInfo, ModelList};
use crate::api::functions::READ;
use crate::app::AppState;
use crate::error::{ApiError, ErrorBody, ErrorCode};
use crate::tenancy::Caller;

/// List registered models with their state (unloaded, loading, ready, failed) and replicas.
#[utoipa::path(get, path = "/v1/models", tag = "models", security(("bearer" = ["functions:write"]), ("bearer" = ["functions:invoke"])),
    responses(
        (status = 200, body = ModelList),
        (status = 401, body = ErrorBody)))]
pub async fn list(state: web::Data<AppState>, caller: Caller) -> Result<HttpResponse, ApiError> {
    caller.require_any(&READ)?;
    let models = state
        .tree
        .models()
        .await
        .into_iter()
        .map(ModelInfo::from)
        .collect();
    Ok(HttpResponse::Ok().json(ModelList { models }))
}

/// One model: state, replicas, busy slots, queue depth, memory and the last scaling decision.
#[utoipa::path(get, path = "/v1/models/{id}", tag = "models", security(("bearer" = ["functions:write"]), ("bearer" = ["functions:invoke"])),
    params(("id" = String, Path)),
    responses(
        (status = 200, body = ModelInfo),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn get(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    caller.require_any(&READ)?;
    let id = ModelId::new(id.into_inner());
    let status = state
        .tree
        .models()
        .await
        .into_iter()
        .find(|m| m.id == id)
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::ModelNotFound,
                format!("model `{id}` is not registered"),
            )
        })?;
    Ok(HttpResponse::Ok().json(ModelInfo::from(status)))
}

/// The llama.cpp backends this node loaded (from `engine.backends_dir`, the binary's folder or
/// the build's) and their devices with free memory as of now: where models without
/// `n_gpu_layers` put their layers.
#[utoipa::path(get, path = "/v1/devices", tag = "models", security(("bearer" = ["functions:write"]), ("bearer" = ["functions:invoke"])),
    responses(
        (status = 200, body = DeviceList),
        (status = 401, body = ErrorBody)))]
pub async fn devices(state: web::Data<AppState>, caller: Caller) -> Result<HttpResponse, ApiError> {
    caller.require_any(&READ)?;
    let devices: Vec<DeviceInfo> = state
        .tree
        .devices()
        .into_iter()
        .map(|d| DeviceInfo {
            gpu: d.takes_layers(),
            index: d.index,
            name: d.name,
            description: d.description,
            backend: d.backend,
            kind: d.kind.as_str().to_owned(),
            memory_total_bytes: d.memory_total_bytes,
            memory_free_bytes: d.memory_free_bytes,
        })
        .collect();
    Ok(HttpResponse::Ok().json(DeviceList {
        backends_dir: state.backends.dir.display().to_string(),
        backends: state.backends.backends.clone(),
        gpu_offload: devices.iter().any(|d| d.gpu),
        devices,
    }))
}
