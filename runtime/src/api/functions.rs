//! Deploying and managing functions.

use actix_web::{web, HttpResponse};
use genrt_functions::{FunctionName, FunctionRef, GenerationParams};

use crate::api::dto::{
    DeployResponse, FunctionDefinition, FunctionDetail, FunctionList, FunctionSummary,
    PrewarmRequest, PrewarmResponse, VersionInfo, VersionList,
};
use crate::api::no_content;
use crate::app::AppState;
use crate::error::{ApiError, ErrorBody, ErrorCode};
use crate::invocation::{Mode, Resolved};
use crate::tenancy::{Caller, Scope};

/// Reading function definitions is open to whoever deploys or invokes them.
pub(crate) const READ: [Scope; 2] = [Scope::FunctionsWrite, Scope::FunctionsInvoke];

/// A name that cannot exist is reported like any missing function, so that probing names
/// reveals nothing.
pub(crate) fn function_name(raw: &str) -> Result<FunctionName, ApiError> {
    FunctionName::parse(raw).map_err(|_| function_not_found(raw))
}

/// The function a run-type request names, at the version it runs: `name` (the `default`
/// alias, else the latest version), `name@3` or `name@alias`, or a `version` field beside a
/// bare name. Resolved once, here, at admission.
pub(crate) async fn runnable(
    state: &AppState,
    caller: &Caller,
    raw: &str,
    version: Option<u32>,
    split_key: Option<&str>,
) -> Result<Resolved, ApiError> {
    let reference = function_ref(raw)?
        .with_version(version)
        .map_err(|e| ApiError::new(ErrorCode::InvalidRequest, e.message).with_field(e.field))?;
    state
        .invocations
        .resolve(&caller.tenant, &reference, split_key)
        .await
}

/// `name`, `name@3` or `name@alias`. A name that cannot exist is reported like any missing
/// function; a malformed version or alias names its field.
pub(crate) fn function_ref(raw: &str) -> Result<FunctionRef, ApiError> {
    FunctionRef::parse(raw).map_err(|e| {
        if e.field == "name" {
            function_not_found(raw)
        } else {
            ApiError::new(ErrorCode::InvalidRequest, e.message).with_field(e.field)
        }
    })
}

pub(crate) fn function_not_found(name: &str) -> ApiError {
    ApiError::new(
        ErrorCode::FunctionNotFound,
        format!("function `{name}` not found"),
    )
}

/// Deploy a function. An identical definition returns the latest version (200); a changed
/// one creates the next version (201).
#[utoipa::path(post, path = "/v1/functions", tag = "functions", security(("bearer" = ["functions:write"])),
    request_body = FunctionDefinition,
    responses(
        (status = 201, description = "New version created", body = DeployResponse),
        (status = 200, description = "Identical to the latest version", body = DeployResponse),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 422, description = "Invalid definition", body = ErrorBody)))]
pub async fn deploy(
    state: web::Data<AppState>,
    caller: Caller,
    body: web::Json<FunctionDefinition>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Scope::FunctionsWrite)?;
    let definition = body.into_inner();
    let name = FunctionName::parse(&definition.name)?;
    let spec = definition.to_spec()?;
    // Served here or ready in the registry; never one being deleted.
    let models = state.registry.deployable(&caller.tenant).await?;
    spec.validate_fields(|m| models.contains(m))?;
    caller
        .require_models(spec.models().into_iter().map(|m| m.as_str()))
        .map_err(|e| e.with_field("model"))?;
    // Compiled and tried on the render pool, under the template limits: compiling alone can
    // take unbounded memory (constant expressions are evaluated then).
    state
        .invocations
        .check_templates(&caller.tenant, &name, &spec)
        .await?;
    if let Some(webhook) = &spec.webhook {
        state
            .check_callback_url(&webhook.url)
            .await
            .map_err(|e| e.with_field("webhook.url"))?;
    }
    let deployment = state.store.deploy(&caller.tenant, &name, &spec).await?;
    state.invocations.forget_function(&caller.tenant, &name);
    let response = DeployResponse {
        name: name.to_string(),
        version: deployment.version.version,
        created: deployment.created,
        digest: deployment.version.digest,
    };
    tracing::info!(tenant = %caller.tenant, function = %name, version = response.version, created = response.created, "deployed");
    Ok(if deployment.created {
        HttpResponse::Created().json(response)
    } else {
        HttpResponse::Ok().json(response)
    })
}

/// List the caller's functions.
#[utoipa::path(get, path = "/v1/functions", tag = "functions", security(("bearer" = ["functions:write"]), ("bearer" = ["functions:invoke"])),
    responses((status = 200, body = FunctionList), (status = 401, body = ErrorBody)))]
pub async fn list(state: web::Data<AppState>, caller: Caller) -> Result<HttpResponse, ApiError> {
    caller.require_any(&READ)?;
    let rows = state.store.list_functions(&caller.tenant).await?;
    Ok(HttpResponse::Ok().json(FunctionList {
        functions: rows.iter().map(FunctionSummary::from).collect(),
    }))
}

/// A function with its latest definition and the versions whose actor is running.
#[utoipa::path(get, path = "/v1/functions/{name}", tag = "functions", security(("bearer" = ["functions:write"]), ("bearer" = ["functions:invoke"])),
    params(("name" = String, Path)),
    responses(
        (status = 200, body = FunctionDetail),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn get(
    state: web::Data<AppState>,
    caller: Caller,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    caller.require_any(&READ)?;
    let name = function_name(&name)?;
    let row = state
        .store
        .function(&caller.tenant, &name)
        .await?
        .ok_or_else(|| function_not_found(name.as_str()))?;
    let latest = state
        .store
        .latest_version(&caller.tenant, &name)
        .await?
        .ok_or_else(|| function_not_found(name.as_str()))?;
    let active_versions = state.tree.active_versions(&caller.tenant, &name).await;
    Ok(HttpResponse::Ok().json(FunctionDetail {
        summary: FunctionSummary::from(&row),
        active_versions,
        definition: FunctionDefinition::from_spec(name.as_str(), &latest.spec),
    }))
}

/// Every version of a function, oldest first.
#[utoipa::path(get, path = "/v1/functions/{name}/versions", tag = "functions", security(("bearer" = ["functions:write"]), ("bearer" = ["functions:invoke"])),
    params(("name" = String, Path)),
    responses(
        (status = 200, body = VersionList),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn versions(
    state: web::Data<AppState>,
    caller: Caller,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    caller.require_any(&READ)?;
    let name = function_name(&name)?;
    let versions = state
        .store
        .versions(&caller.tenant, &name)
        .await?
        .ok_or_else(|| function_not_found(name.as_str()))?;
    let aliases = state
        .store
        .aliases(&caller.tenant, &name)
        .await?
        .unwrap_or_default();
    let scores = state.store.version_scores(&caller.tenant, &name).await?;
    Ok(HttpResponse::Ok().json(VersionList {
        versions: versions
            .iter()
            .map(|v| VersionInfo {
                aliases: aliases
                    .iter()
                    .filter(|a| a.target.referenced().any(|n| n == v.version))
                    .map(|a| a.name.as_str().to_owned())
                    .collect(),
                scores: scores
                    .iter()
                    .filter(|s| s.version as u32 == v.version)
                    .map(crate::api::dto::VersionScore::from)
                    .collect(),
                ..VersionInfo::new(name.as_str(), v)
            })
            .collect(),
    }))
}

/// Delete a function and all its versions. Its invocation records are kept.
#[utoipa::path(delete, path = "/v1/functions/{name}", tag = "functions", security(("bearer" = ["functions:write"])),
    params(("name" = String, Path)),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn delete(
    state: web::Data<AppState>,
    caller: Caller,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Scope::FunctionsWrite)?;
    let name = function_name(&name)?;
    let deleted = state.store.delete_function(&caller.tenant, &name).await?;
    state.invocations.forget_function(&caller.tenant, &name);
    if deleted {
        Ok(no_content())
    } else {
        Err(function_not_found(name.as_str()))
    }
}

/// Most inputs one prewarm request may carry.
pub(crate) const MAX_PREWARM_INPUTS: usize = 1000;

/// Run inputs ahead of demand, at low priority, so that their results are in the cache when
/// asked for (hot topics prepared before the traffic arrives). Answers at once; the work runs
/// in the background behind interactive invocations.
#[utoipa::path(post, path = "/v1/functions/{name}/prewarm", tag = "functions", security(("bearer" = ["functions:invoke"])),
    params(("name" = String, Path)),
    request_body = PrewarmRequest,
    responses(
        (status = 202, description = "Accepted; results will be cached", body = PrewarmResponse),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 422, description = "Too many inputs, or the function's results are not cached", body = ErrorBody),
        (status = 403, description = "The tenant may not use the function's model", body = ErrorBody),
        (status = 413, description = "An input is over `server.max_input_bytes`", body = ErrorBody),
        (status = 429, description = "The tenant's prewarm requests already running (`concurrency_limited`), or its budget is used up; see Retry-After", body = ErrorBody)))]
pub async fn prewarm(
    state: web::Data<AppState>,
    caller: Caller,
    name: web::Path<String>,
    body: web::Json<PrewarmRequest>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Scope::FunctionsInvoke)?;
    let resolved = runnable(&state, &caller, &name, None, None).await?;
    let (name, version) = (&resolved.name, &resolved.version);
    let body = body.into_inner();
    if body.inputs.is_empty() || body.inputs.len() > MAX_PREWARM_INPUTS {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!("give 1 to {MAX_PREWARM_INPUTS} inputs"),
        )
        .with_field("inputs"));
    }
    let params: GenerationParams = body.params.into();
    let cached = version
        .spec
        .cache
        .enabled
        .unwrap_or_else(|| version.spec.params.resolve(&params).is_deterministic());
    if !cached {
        return Err(ApiError::new(
            ErrorCode::NotCacheable,
            "this function's results are not cached (sampled without a seed): prewarming would be lost; set cache.enabled or a seed",
        ));
    }
    let inputs: Vec<&serde_json::Value> = body.inputs.iter().collect();
    let admitted = state
        .invocations
        .admit(&caller, Mode::Prewarm, &version.spec, &inputs, &params)
        .await?;
    let accepted = body.inputs.len();
    let function = crate::api::invoke::deployed(&caller, name, version);
    state.invocations.prewarm(
        admitted,
        function,
        resolved.via.clone(),
        body.inputs,
        params,
    );
    Ok(HttpResponse::Accepted().json(PrewarmResponse { accepted }))
}
