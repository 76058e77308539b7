//! The OpenAPI document, generated from the handlers' annotations and the wire types. The
//! TypeScript SDK's types are generated from it.

use actix_web::HttpResponse;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::api::{
    batches, dto, functions, health, invocations, invoke, keys, models, tenants, triggers, usage,
    webhooks,
};
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
        invocations::list,
        invocations::cancel,
        batches::create,
        batches::get,
        batches::results,
        usage::get,
        keys::create,
        keys::list,
        keys::revoke,
        tenants::create,
        tenants::list,
        tenants::get,
        tenants::update,
        webhooks::secret,
        webhooks::rotate,
        webhooks::deliveries,
        webhooks::redeliver,
        triggers::create,
        triggers::list,
        triggers::delete,
        triggers::receive,
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
        dto::InvokeMode,
        dto::AsyncAccepted,
        dto::WebhookSpec,
        dto::InvocationPage,
        batches::BatchRequest,
        batches::BatchInfo,
        batches::BatchResultLine,
        usage::UsageEntry,
        usage::UsageReport,
        keys::CreateApiKey,
        keys::ApiKeyInfo,
        keys::CreatedApiKey,
        keys::ApiKeyList,
        tenants::TenantLimitsBody,
        tenants::CreateTenant,
        tenants::UpdateTenant,
        tenants::TenantInfo,
        tenants::TenantList,
        webhooks::WebhookSecrets,
        webhooks::RotateSecret,
        webhooks::AttemptInfo,
        webhooks::DeliveryInfo,
        webhooks::DeliveryList,
        triggers::SignatureScheme,
        triggers::CreateTrigger,
        triggers::TriggerInfo,
        triggers::TriggerList,
    )),
    modifiers(&BearerAuth),
    tags(
        (name = "functions", description = "Deploy and manage functions"),
        (name = "invoke", description = "Run functions"),
        (name = "invocations", description = "Stored invocation records"),
        (name = "models", description = "Registered models"),
        (name = "batches", description = "Many inputs at once, run from the durable queue"),
        (name = "usage", description = "What a tenant used"),
        (name = "api-keys", description = "A tenant's API keys"),
        (name = "webhooks", description = "Signed result webhooks: secrets and deliveries"),
        (name = "triggers", description = "Incoming signed webhooks that start functions"),
        (name = "admin", description = "Tenants and their limits (scope `admin`)"),
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
                    .bearer_format("JWT or API key (grt_...)")
                    .build(),
            ),
        );
    }
}

pub async fn document() -> HttpResponse {
    HttpResponse::Ok().json(ApiDoc::openapi())
}
