//! Registered models and their live state; registering and deleting them (`admin`). The
//! registry itself is `crate::registry`; these handlers translate.

use actix_web::{web, HttpResponse};

use genrt_functions::{ModelId, TenantId};

use crate::api::dto::{
    AdapterInfo, AdapterList, DeviceInfo, DeviceList, ModelInfo, ModelList, ModelSourceSpec,
    RegisterAdapter, RegisterModel,
};
use crate::app::AppState;
use crate::error::{ApiError, ErrorBody, ErrorCode};
use crate::registry::{AdapterRegistration, ModelRegistry, Registration, Source};
use crate::store::ModelRow;
use crate::tenancy::{Caller, Scope};

/// Who may read the models: deployers and invokers (to choose one), and the operator.
const READ: [Scope; 3] = [Scope::FunctionsWrite, Scope::FunctionsInvoke, Scope::Admin];

/// Every model this node serves, then the registry's others, each with its registry entry:
/// those `caller` may see (another tenant's own models are not there at all).
async fn infos(state: &AppState, caller: &Caller) -> Result<Vec<ModelInfo>, ApiError> {
    let statuses = state.tree.models().await;
    let rows: Vec<ModelRow> = state
        .registry
        .rows()
        .await?
        .into_iter()
        .filter(|r| ModelRegistry::visible(r, caller))
        .collect();
    let hidden = |id: &ModelId| {
        state
            .tree
            .model(id)
            .is_some_and(|m| !caller.scopes.contains(Scope::Admin) && !m.visible_to(&caller.tenant))
    };
    let row = |id: &str| rows.iter().find(|r| r.id == id);
    let mut out: Vec<ModelInfo> = statuses
        .into_iter()
        .filter(|s| !hidden(&s.id))
        .map(|s| {
            let draining = state.tree.is_draining(&s.id);
            let r = row(s.id.as_str());
            ModelInfo::served(s, r, draining)
        })
        .collect();
    for r in &rows {
        if !out.iter().any(|m| m.id == r.id) {
            out.push(registered(r));
        }
    }
    Ok(out)
}

fn registered(row: &ModelRow) -> ModelInfo {
    let settings = crate::registry::row_config(row).ok();
    ModelInfo::registered(row, settings.as_ref())
}

async fn info(state: &AppState, caller: &Caller, id: &str) -> Result<ModelInfo, ApiError> {
    infos(state, caller)
        .await?
        .into_iter()
        .find(|m| m.id == id)
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::ModelNotFound,
                format!("model `{id}` is not registered"),
            )
        })
}

fn accepted(info: ModelInfo) -> HttpResponse {
    HttpResponse::Accepted()
        .insert_header(("Location", format!("/v1/models/{}", info.id)))
        .json(info)
}

/// Registers a model: the operator (`admin`) a public one, or a private one for a tenant
/// (`owner`); a tenant (`models:write`) one of its own, named `<tenant>.<name>`, by URL or
/// upload, within its `max_private_models` and `max_private_model_mb` (`model_quota_exceeded`
/// otherwise). A tenant's own models are invisible to other tenants (404 everywhere). The
/// answer is `202` with the model `registering` (or
/// `awaiting_upload` for an upload); the file is fetched or hashed, checked against `sha256`,
/// and validated in the background; `GET /v1/models/{id}` shows the progress, then `ready`
/// (served) or `failed` with a code. Functions may use the model once it is ready.
#[utoipa::path(post, path = "/v1/models", tag = "models", operation_id = "models_register", security(("bearer" = ["admin"]), ("bearer" = ["models:write"])),
    request_body = RegisterModel,
    responses(
        (status = 202, description = "Accepted; registration runs in the background", body = ModelInfo),
        (status = 401, body = ErrorBody),
        (status = 403, description = "Lacks `admin` or `models:write`; `model_quota_exceeded`", body = ErrorBody),
        (status = 409, description = "`model_exists`", body = ErrorBody),
        (status = 422, description = "`invalid_request`, `invalid_model_source`", body = ErrorBody)))]
pub async fn register(
    state: web::Data<AppState>,
    caller: Caller,
    body: web::Json<RegisterModel>,
) -> Result<HttpResponse, ApiError> {
    caller.require_any(&[Scope::Admin, Scope::ModelsWrite])?;
    let body = body.into_inner();
    let owner = owner(&caller, body.owner)?;
    let source = source(body.source)?;
    let row = state
        .registry
        .register(Registration {
            id: ModelId::new(body.id),
            source,
            sha256: body.sha256,
            settings: body.settings.unwrap_or_default(),
            quantize: body.quantize,
            requantize: body.requantize,
            owner,
        })
        .await?;
    Ok(accepted(registered(&row)))
}

/// Whose registration this is: the operator's (public, or for `owner`), or the caller
/// tenant's own.
fn owner(caller: &Caller, owner: Option<String>) -> Result<Option<TenantId>, ApiError> {
    Ok(match (caller.scopes.contains(Scope::Admin), owner) {
        (true, None) => None,
        (true, Some(owner)) => Some(TenantId::parse(&owner).map_err(|_| {
            ApiError::new(
                ErrorCode::InvalidRequest,
                format!("owner `{owner}` is not a tenant id"),
            )
            .with_field("owner")
        })?),
        (false, None) => Some(caller.tenant.clone()),
        (false, Some(_)) => {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                "owner is the operator's: a tenant's registration is its own",
            )
            .with_field("owner"))
        }
    })
}

fn source(spec: ModelSourceSpec) -> Result<Source, ApiError> {
    match spec {
        ModelSourceSpec {
            path: Some(path),
            url: None,
            upload: None | Some(false),
        } => Ok(Source::Path(path)),
        ModelSourceSpec {
            path: None,
            url: Some(url),
            upload: None | Some(false),
        } => Ok(Source::Url(url)),
        ModelSourceSpec {
            path: None,
            url: None,
            upload: Some(true),
        } => Ok(Source::Upload),
        _ => Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "source must be exactly one of {\"path\": ...}, {\"url\": ...} or {\"upload\": true}",
        )
        .with_field("source")),
    }
}

/// The file of a model registered with `{"upload": true}` (`admin`, or the tenant whose own
/// model it is), as the raw request body
/// (`application/octet-stream`). Streamed to the model store and hashed on the way, never
/// held in memory; larger than `registry.max_file_mb` or another sha256 fails the
/// registration at once (`model_too_large`, `model_sha256_mismatch`). Then validated in the
/// background like the other sources.
#[utoipa::path(put, path = "/v1/models/{id}/file", tag = "models", operation_id = "models_upload", security(("bearer" = ["admin"]), ("bearer" = ["models:write"])),
    params(("id" = String, Path)),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses(
        (status = 202, description = "Received; validation runs in the background", body = ModelInfo),
        (status = 401, body = ErrorBody),
        (status = 403, description = "Lacks `admin`", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "`model_not_awaiting_upload`; `model_draining` when the model was deleted during the upload", body = ErrorBody),
        (status = 422, description = "`model_sha256_mismatch`, `model_too_large`, `model_truncated`", body = ErrorBody)))]
pub async fn upload(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    caller.require_any(&[Scope::Admin, Scope::ModelsWrite])?;
    let row = state.registry.upload(&id, &caller, body).await?;
    Ok(accepted(registered(&row)))
}

/// Deletes a model (`admin`; a tenant with `models:write` its own): new invocations are refused at once with `model_draining`,
/// running and queued work finishes (up to `registry.drain_timeout_s`), the replicas stop on
/// every node, then the entry goes and the file the registry wrote is removed when no other
/// model uses it. A registration still in progress is cancelled. `202` with the model
/// `deleting`; `GET` answers `404` once it is gone.
#[utoipa::path(delete, path = "/v1/models/{id}", tag = "models", operation_id = "models_delete", security(("bearer" = ["admin"]), ("bearer" = ["models:write"])),
    params(("id" = String, Path)),
    responses(
        (status = 202, description = "Draining", body = ModelInfo),
        (status = 401, body = ErrorBody),
        (status = 403, description = "Lacks `admin`", body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn delete(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    caller.require_any(&[Scope::Admin, Scope::ModelsWrite])?;
    let row = state.registry.delete(&id, &caller).await?;
    // Still served here (draining), or already gone: then the entry as the DELETE left it.
    let info = match info(&state, &caller, &id).await {
        Ok(info) => info,
        Err(_) => registered(&row),
    };
    Ok(accepted(info))
}

/// List models: those this node serves with their live state, and every registry entry
/// (registering, failed, ...) with its source, sha256, progress and what its file holds.
#[utoipa::path(get, path = "/v1/models", tag = "models", security(("bearer" = ["functions:write"]), ("bearer" = ["functions:invoke"]), ("bearer" = ["admin"])),
    responses(
        (status = 200, body = ModelList),
        (status = 401, body = ErrorBody)))]
pub async fn list(state: web::Data<AppState>, caller: Caller) -> Result<HttpResponse, ApiError> {
    caller.require_any(&READ)?;
    let models = infos(&state, &caller).await?;
    Ok(HttpResponse::Ok().json(ModelList { models }))
}

/// One model: state, replicas, busy slots, queue depth, memory and the last scaling decision;
/// its registry entry (registration progress, the file's architecture, parameters,
/// quantization, context length, size and sha256, or why it failed).
#[utoipa::path(get, path = "/v1/models/{id}", tag = "models", security(("bearer" = ["functions:write"]), ("bearer" = ["functions:invoke"]), ("bearer" = ["admin"])),
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
    Ok(HttpResponse::Ok().json(info(&state, &caller, &id).await?))
}

/// The llama.cpp backends this node loaded (from `engine.backends_dir`, the binary's folder or
/// the build's) and their devices with free memory as of now: where models without
/// `n_gpu_layers` put their layers.
#[utoipa::path(get, path = "/v1/devices", tag = "models", security(("bearer" = ["functions:write"]), ("bearer" = ["functions:invoke"]), ("bearer" = ["admin"])),
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

fn adapter_info(state: &AppState, row: &ModelRow) -> AdapterInfo {
    let served = state.tree.adapters().iter().any(|(m, n, a)| {
        crate::registry::adapter_id(m, n) == row.id && Some(&a.sha256) == row.sha256.as_ref()
    });
    AdapterInfo::new(row, served)
}

fn adapter_accepted(info: AdapterInfo) -> HttpResponse {
    HttpResponse::Accepted()
        .insert_header((
            "Location",
            format!("/v1/models/{}/adapters/{}", info.model, info.id),
        ))
        .json(info)
}

/// Registers a LoRA adapter of model `id`: the operator (`admin`) a public one (or a private
/// one for `owner`); a tenant (`models:write`) one of its own, named `<tenant>.<name>`, by URL
/// or upload, within its `max_adapters` and `max_adapter_mb` (`adapter_quota_exceeded`). The
/// sources and states are a model's; validation checks that the file is a GGUF LoRA adapter
/// (`not_an_adapter`) made for this model: its architecture, and every adapted weight present
/// with matching shapes (`adapter_mismatch`). Once `ready`, functions use it with
/// `"adapters": [{"id": "fashion", "scale": 1.0}]` or `"model": "smollm2:fashion"`, and
/// OpenAI requests with `"model": "smollm2:fashion"`; a replica loads it when a sequence first
/// does, and unloads it after the model's `idle_timeout_s` unused.
#[utoipa::path(post, path = "/v1/models/{id}/adapters", tag = "models", operation_id = "adapters_register", security(("bearer" = ["admin"]), ("bearer" = ["models:write"])),
    params(("id" = String, Path, description = "The model the adapter adapts")),
    request_body = RegisterAdapter,
    responses(
        (status = 202, description = "Accepted; registration runs in the background", body = AdapterInfo),
        (status = 401, body = ErrorBody),
        (status = 403, description = "Lacks `admin` or `models:write`; `adapter_quota_exceeded`", body = ErrorBody),
        (status = 404, description = "`model_not_found`", body = ErrorBody),
        (status = 409, description = "`model_exists` (the model has an adapter of that name), `model_draining`", body = ErrorBody),
        (status = 422, description = "`invalid_request`, `invalid_model_source`", body = ErrorBody)))]
pub async fn register_adapter(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
    body: web::Json<RegisterAdapter>,
) -> Result<HttpResponse, ApiError> {
    caller.require_any(&[Scope::Admin, Scope::ModelsWrite])?;
    let body = body.into_inner();
    let registration = AdapterRegistration {
        model: ModelId::new(id.into_inner()),
        name: body.id,
        source: source(body.source)?,
        sha256: body.sha256,
        owner: owner(&caller, body.owner)?,
    };
    let row = state
        .registry
        .register_adapter(registration, &caller)
        .await?;
    Ok(adapter_accepted(adapter_info(&state, &row)))
}

/// The adapters of model `id` the caller may see (another tenant's own are not there).
#[utoipa::path(get, path = "/v1/models/{id}/adapters", tag = "models", operation_id = "adapters_list", security(("bearer" = ["functions:write"]), ("bearer" = ["functions:invoke"]), ("bearer" = ["admin"])),
    params(("id" = String, Path)),
    responses(
        (status = 200, body = AdapterList),
        (status = 401, body = ErrorBody),
        (status = 404, description = "`model_not_found`", body = ErrorBody)))]
pub async fn list_adapters(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    caller.require_any(&READ)?;
    let rows = state
        .registry
        .adapter_rows(&ModelId::new(id.into_inner()), &caller)
        .await?;
    let adapters = rows.iter().map(|r| adapter_info(&state, r)).collect();
    Ok(HttpResponse::Ok().json(AdapterList { adapters }))
}

/// One adapter: its registration (state, progress, source, sha256, or why it failed), what
/// its file holds (rank, alpha, adapted weights), and whether this node serves it.
#[utoipa::path(get, path = "/v1/models/{id}/adapters/{adapter}", tag = "models", operation_id = "adapters_get", security(("bearer" = ["functions:write"]), ("bearer" = ["functions:invoke"]), ("bearer" = ["admin"])),
    params(("id" = String, Path), ("adapter" = String, Path)),
    responses(
        (status = 200, body = AdapterInfo),
        (status = 401, body = ErrorBody),
        (status = 404, description = "`model_not_found`, `adapter_not_found`", body = ErrorBody)))]
pub async fn get_adapter(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    caller.require_any(&READ)?;
    let (model, name) = path.into_inner();
    let row = state
        .registry
        .adapter_row(&ModelId::new(model), &name, &caller)
        .await?;
    Ok(HttpResponse::Ok().json(adapter_info(&state, &row)))
}

/// The file of an adapter registered with `{"upload": true}`, as the raw request body; like a
/// model's upload (streamed, hashed, never held in memory).
#[utoipa::path(put, path = "/v1/models/{id}/adapters/{adapter}/file", tag = "models", operation_id = "adapters_upload", security(("bearer" = ["admin"]), ("bearer" = ["models:write"])),
    params(("id" = String, Path), ("adapter" = String, Path)),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses(
        (status = 202, description = "Received; validation runs in the background", body = AdapterInfo),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "`model_not_awaiting_upload`", body = ErrorBody),
        (status = 422, description = "`model_sha256_mismatch`, `model_too_large`, `model_truncated`", body = ErrorBody)))]
pub async fn upload_adapter(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<(String, String)>,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    caller.require_any(&[Scope::Admin, Scope::ModelsWrite])?;
    let (model, name) = path.into_inner();
    let row = state
        .registry
        .adapter_for_change(&ModelId::new(model), &name, &caller)
        .await?;
    let row = state.registry.upload(&row.id, &caller, body).await?;
    Ok(adapter_accepted(adapter_info(&state, &row)))
}

/// Deletes an adapter (`admin`; a tenant with `models:write` its own): new invocations naming
/// it are refused at once (`unknown_adapter`) on every node, sequences running with it finish,
/// then the entry and the file the registry wrote go. Deleting a model deletes its adapters.
#[utoipa::path(delete, path = "/v1/models/{id}/adapters/{adapter}", tag = "models", operation_id = "adapters_delete", security(("bearer" = ["admin"]), ("bearer" = ["models:write"])),
    params(("id" = String, Path), ("adapter" = String, Path)),
    responses(
        (status = 202, description = "Deleting", body = AdapterInfo),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn delete_adapter(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    caller.require_any(&[Scope::Admin, Scope::ModelsWrite])?;
    let (model, name) = path.into_inner();
    let row = state
        .registry
        .adapter_for_change(&ModelId::new(model), &name, &caller)
        .await?;
    let row = state.registry.delete(&row.id, &caller).await?;
    Ok(adapter_accepted(AdapterInfo::new(&row, false)))
}
