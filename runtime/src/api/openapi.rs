//! The OpenAPI document, generated from the handlers' annotations and the wire types. The
//! TypeScript SDK's types are generated from it.

use actix_web::HttpResponse;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::api::{dto, functions, health, invocations, invoke, models};
use crate::error::{ErrorBody, ErrorDetail};

#[derive(OpenApi)]
#[openapi(
    info(title = "genrt", description = "Serverless runtime for generative-AI functions."),
    paths(
        health::healthz,
        health::readyz,
        functions::deploy,
        functions::list,
        functions::get,
        functions::versions,
        functions::delete,
        functions::prewarm,
        invoke::invoke,
        invocations::get,
        models::list,
        models::get,
    ),
    components(schemas(
        ErrorBody,
        ErrorDetail,
        dto::Params,
        dto::RouteSpec,
        dto::CacheSpec,
        dto::FunctionDefinition,
        dto::DeployResponse,
        dto::FunctionSummary,
        dto::FunctionList,
        dto::FunctionDetail,
        dto::VersionInfo,
        dto::VersionList,
        dto::InvokeRequest,
        dto::InvokeResponse,
        dto::Output,
        dto::UsageInfo,
        dto::TimingsInfo,
        dto::InvocationRecord,
        dto::InvocationError,
        dto::ModelInfo,
        dto::ModelList,
        dto::ScalingInfo,
        dto::OutputFormat,
        dto::PrewarmRequest,
        dto::PrewarmResponse,
        dto::StreamDone,
        dto::Health,
        dto::Readiness,
    )),
    modifiers(&BearerAuth),
    tags(
        (name = "functions", description = "Deploy and manage functions"),
        (name = "invoke", description = "Run functions"),
        (name = "invocations", description = "Stored invocation records"),
        (name = "models", description = "Registered models"),
        (name = "health", description = "Probes"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

pub async fn document() -> HttpResponse {
    HttpResponse::Ok().json(ApiDoc::openapi())
}
