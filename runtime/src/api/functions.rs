//! Deploying and managing functions.

use actix_web::{web, HttpResponse};
use genrt_functions::FunctionName;

use crate::api::dto::{
    DeployResponse, FunctionDefinition, FunctionDetail, FunctionList, FunctionSummary, VersionInfo,
    VersionList,
};
use crate::api::no_content;
use crate::app::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody, ErrorCode};

/// A name that cannot exist is reported like any missing function, so that probing names
/// reveals nothing.
pub(crate) fn function_name(raw: &str) -> Result<FunctionName, ApiError> {
    FunctionName::parse(raw).map_err(|_| function_not_found(raw))
}

pub(crate) fn function_not_found(name: &str) -> ApiError {
    ApiError::new(
        ErrorCode::FunctionNotFound,
        format!("function `{name}` not found"),
    )
}

/// Deploy a function. An identical definition returns the latest version (200); a changed
/// one creates the next version (201).
#[utoipa::path(post, path = "/v1/functions", tag = "functions", security(("bearer" = [])),
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
    let definition = body.into_inner();
    let name = FunctionName::parse(&definition.name)?;
    let spec = definition.to_spec()?;
    spec.validate(|m| state.tree.model(m).is_some())?;
    let deployment = state.store.deploy(&caller.tenant, &name, &spec).await?;
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
#[utoipa::path(get, path = "/v1/functions", tag = "functions", security(("bearer" = [])),
    responses((status = 200, body = FunctionList), (status = 401, body = ErrorBody)))]
pub async fn list(state: web::Data<AppState>, caller: Caller) -> Result<HttpResponse, ApiError> {
    let rows = state.store.list_functions(&caller.tenant).await?;
    Ok(HttpResponse::Ok().json(FunctionList {
        functions: rows.iter().map(FunctionSummary::from).collect(),
    }))
}

/// A function with its latest definition and the versions whose actor is running.
#[utoipa::path(get, path = "/v1/functions/{name}", tag = "functions", security(("bearer" = [])),
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
#[utoipa::path(get, path = "/v1/functions/{name}/versions", tag = "functions", security(("bearer" = [])),
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
    let name = function_name(&name)?;
    let versions = state
        .store
        .versions(&caller.tenant, &name)
        .await?
        .ok_or_else(|| function_not_found(name.as_str()))?;
    Ok(HttpResponse::Ok().json(VersionList {
        versions: versions
            .iter()
            .map(|v| VersionInfo::new(name.as_str(), v))
            .collect(),
    }))
}

/// Delete a function and all its versions. Its invocation records are kept.
#[utoipa::path(delete, path = "/v1/functions/{name}", tag = "functions", security(("bearer" = [])),
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
    let name = function_name(&name)?;
    if state.store.delete_function(&caller.tenant, &name).await? {
        Ok(no_content())
    } else {
        Err(function_not_found(name.as_str()))
    }
}
