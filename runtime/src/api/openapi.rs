//! The OpenAPI document, generated from the handlers' annotations and the wire types. The
//! TypeScript SDK's types are generated from it.
//!
//! Each authenticated operation names, under `security`, the scopes its handler checks, by
//! OpenAPI's rules: each entry of the list is one way in, and any one suffices
//! (`security(("bearer" = ["functions:write"]), ("bearer" = ["functions:invoke"]))`: either
//! scope will do); all the scopes in one entry's array are needed; an empty array means any
//! valid credential of the tenant, whatever its scopes. An operation without `security` takes
//! no bearer credential (probes, incoming trigger webhooks, which are signed instead). The
//! scopes named must be known ones (`security_requirements_name_known_scopes`), and
//! `tests/tests/scopes.rs` checks against a live server that each operation answers as its
//! `security` says.

use actix_web::HttpResponse;
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::api::{
    batches, dto, evaluate, functions, health, invocations, invoke, keys, models, openai, releases,
    tenants, triggers, usage, webhooks,
};
use crate::error::{ErrorBody, ErrorCode, ErrorDetail};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "genrt",
        description = "Serverless runtime for generative-AI functions.\n\n\
            Authenticated operations take a bearer credential (a JWT or an API key, `grt_...`) \
            and say under `security` which scopes it needs: each entry of that list is one way \
            in and any one suffices; the scopes in an entry's array are all needed. An empty \
            array means any valid credential of the tenant, whatever its scopes. An operation \
            without `security` takes no bearer credential. A credential without the scope gets \
            403 `insufficient_scope`; another tenant's resources answer 404, as missing ones do."
    ),
    paths(
        health::healthz,
        health::readyz,
        functions::deploy,
        functions::list,
        functions::get,
        functions::versions,
        functions::delete,
        functions::prewarm,
        evaluate::evaluate,
        releases::list,
        releases::set,
        releases::delete,
        releases::rollback,
        releases::history,
        releases::stats,
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
        keys::me,
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
        models::register,
        models::upload,
        models::delete,
        models::register_adapter,
        models::list_adapters,
        models::get_adapter,
        models::upload_adapter,
        models::delete_adapter,
        models::devices,
        openai::models,
        openai::chat_completions,
        openai::completions,
        openai::embeddings,
    ),
    components(schemas(
        ErrorBody,
        ErrorDetail,
        ErrorCode,
        dto::Params,
        dto::RouteSpec,
        dto::AdapterUse,
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
        dto::PrefixCacheInfo,
        dto::ModelList,
        dto::RegisterModel,
        dto::ModelSourceSpec,
        dto::ModelFileInfo,
        dto::RegistrationInfo,
        dto::RegistrationError,
        dto::RegisterAdapter,
        dto::AdapterInfo,
        dto::AdapterList,
        dto::AdapterFileInfo,
        dto::DeviceInfo,
        dto::DeviceList,
        dto::ScalingInfo,
        dto::OutputFormat,
        dto::PrewarmRequest,
        dto::EvaluateRequest,
        dto::EvaluateResponse,
        dto::CaseScore,
        dto::VersionWeight,
        dto::ShadowSpec,
        dto::GateSpec,
        dto::SetAlias,
        dto::AliasTargetInfo,
        dto::AliasInfo,
        dto::AliasList,
        dto::AliasEvent,
        dto::AliasHistory,
        dto::AliasChanged,
        dto::VersionScore,
        dto::Percentiles,
        dto::VersionStats,
        dto::FunctionStats,
        dto::EvaluationCaseSpec,
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
        keys::CallerInfo,
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
        openai::ChatCompletionRequest,
        openai::ChatMessage,
        openai::StreamOptions,
        openai::ResponseFormat,
        openai::JsonSchemaFormat,
        openai::CompletionRequest,
        openai::EmbeddingRequest,
        openai::EmbeddingList,
        openai::EmbeddingObject,
        openai::EmbeddingUsage,
        openai::ChatCompletion,
        openai::ChatChoice,
        openai::AssistantMessage,
        openai::ChatCompletionChunk,
        openai::ChunkChoice,
        openai::Delta,
        openai::TextCompletion,
        openai::TextChoice,
        openai::CompletionUsage,
        openai::PromptTokensDetails,
        openai::ModelObject,
        openai::ModelListObject,
        openai::OpenAiErrorBody,
        openai::OpenAiErrorDetail,
    )),
    modifiers(&BearerAuth, &UniqueOperationIds, &EdgeResponses),
    tags(
        (name = "functions", description = "Deploy and manage functions"),
        (name = "invoke", description = "Run functions"),
        (name = "releases", description = "Aliases of a function's versions: weighted splits, gated promotion, rollback"),
        (name = "invocations", description = "Stored invocation records"),
        (name = "models", description = "Registered models"),
        (name = "batches", description = "Many inputs at once, run from the durable queue"),
        (name = "usage", description = "What a tenant used"),
        (name = "api-keys", description = "A tenant's API keys"),
        (name = "webhooks", description = "Signed result webhooks: secrets and deliveries"),
        (name = "triggers", description = "Incoming signed webhooks that start functions"),
        (name = "admin", description = "Tenants and their limits (scope `admin`)"),
        (name = "openai", description = "OpenAI-compatible API: point an OpenAI client's base URL at /openai/v1"),
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

/// utoipa names each operation after its handler, so several are `list`, `get` or `create`;
/// OpenAPI requires unique operationIds (generators refuse duplicates). Duplicates get their
/// tag as a prefix (`functions_list`, `invocations_get`); unique ones are kept.
struct UniqueOperationIds;

impl Modify for UniqueOperationIds {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let mut counts = std::collections::HashMap::<String, usize>::new();
        let ids = openapi
            .paths
            .paths
            .values()
            .flat_map(operations)
            .filter_map(|op| op.operation_id.clone());
        for id in ids {
            *counts.entry(id).or_default() += 1;
        }
        for item in openapi.paths.paths.values_mut() {
            for op in operations_mut(item) {
                let Some(id) = &op.operation_id else { continue };
                if counts[id] > 1 {
                    let tag = op.tags.as_ref().and_then(|t| t.first()).cloned();
                    op.operation_id = Some(format!("{}_{id}", tag.unwrap_or_default()));
                }
            }
        }
    }
}

/// Answers the edge gives to any operation before its handler runs, added where a handler's
/// annotation does not list them, so that the document names every status a client can get
/// (the schemathesis run of `make test` fails on an undocumented one): a body that is not JSON
/// (400), too large (413) or of another media type (415); a query string that does not parse
/// (422); and, on authenticated operations, bad credentials (401), a missing scope or a
/// disabled tenant (403) and the tenant's rate limit (429).
struct EdgeResponses;

impl Modify for EdgeResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        for (path, item) in openapi.paths.paths.iter_mut() {
            let body = if path.starts_with("/openai/") {
                "OpenAiErrorBody"
            } else {
                "ErrorBody"
            };
            for op in operations_mut(item) {
                let mut edge: Vec<(&str, &str)> = Vec::new();
                if op.request_body.is_some() {
                    edge.extend([
                        (
                            "400",
                            "The body is not valid JSON or not of the expected shape",
                        ),
                        ("413", "The body is too large"),
                        ("415", "The body is not JSON"),
                    ]);
                }
                let has_query =
                    op.parameters.iter().flatten().any(|p| {
                        matches!(p.parameter_in, utoipa::openapi::path::ParameterIn::Query)
                    });
                if has_query {
                    edge.push(("422", "The query string does not parse"));
                }
                if op.security.as_ref().is_some_and(|s| !s.is_empty()) {
                    edge.extend([
                        ("401", "Missing or invalid credentials"),
                        ("403", "A scope is missing, or the tenant is disabled"),
                        ("429", "The tenant's rate limit; see Retry-After"),
                    ]);
                }
                for (status, description) in edge {
                    op.responses
                        .responses
                        .entry(status.to_owned())
                        .or_insert_with(|| {
                            ResponseBuilder::new()
                                .description(description)
                                .content(
                                    "application/json",
                                    ContentBuilder::new()
                                        .schema(Some(Ref::from_schema_name(body)))
                                        .build(),
                                )
                                .build()
                                .into()
                        });
                }
            }
        }
    }
}

fn operations(item: &PathItem) -> impl Iterator<Item = &Operation> {
    [
        &item.get,
        &item.put,
        &item.post,
        &item.delete,
        &item.options,
        &item.head,
        &item.patch,
        &item.trace,
    ]
    .into_iter()
    .flatten()
}

fn operations_mut(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.options,
        &mut item.head,
        &mut item.patch,
        &mut item.trace,
    ]
    .into_iter()
    .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every route `configure` registers, as the document must describe it. Kept beside the
    /// document so that a new route without an annotation fails here.
    const ROUTES: &[(&str, &str)] = &[
        ("get", "/healthz"),
        ("get", "/readyz"),
        ("post", "/hooks/{id}"),
        ("post", "/v1/functions"),
        ("get", "/v1/functions"),
        ("get", "/v1/functions/{name}"),
        ("delete", "/v1/functions/{name}"),
        ("get", "/v1/functions/{name}/versions"),
        ("post", "/v1/functions/{name}/invoke"),
        ("post", "/v1/functions/{name}/prewarm"),
        ("post", "/v1/functions/{name}/evaluate"),
        ("get", "/v1/functions/{name}/aliases"),
        ("put", "/v1/functions/{name}/aliases/{alias}"),
        ("delete", "/v1/functions/{name}/aliases/{alias}"),
        ("post", "/v1/functions/{name}/aliases/{alias}/rollback"),
        ("get", "/v1/functions/{name}/aliases/{alias}/history"),
        ("get", "/v1/functions/{name}/stats"),
        ("post", "/v1/functions/{name}/batches"),
        ("post", "/v1/functions/{name}/triggers"),
        ("get", "/v1/functions/{name}/triggers"),
        ("delete", "/v1/triggers/{id}"),
        ("get", "/v1/batches/{id}"),
        ("get", "/v1/batches/{id}/results"),
        ("get", "/v1/invocations"),
        ("get", "/v1/invocations/{id}"),
        ("post", "/v1/invocations/{id}/cancel"),
        ("get", "/v1/usage"),
        ("post", "/v1/api-keys"),
        ("get", "/v1/api-keys"),
        ("delete", "/v1/api-keys/{id}"),
        ("get", "/v1/me"),
        ("get", "/v1/webhooks/secret"),
        ("post", "/v1/webhooks/secret/rotate"),
        ("get", "/v1/webhooks/deliveries"),
        ("post", "/v1/webhooks/deliveries/{id}/redeliver"),
        ("post", "/v1/admin/tenants"),
        ("get", "/v1/admin/tenants"),
        ("get", "/v1/admin/tenants/{id}"),
        ("patch", "/v1/admin/tenants/{id}"),
        ("get", "/v1/models"),
        ("get", "/v1/models/{id}"),
        ("post", "/v1/models"),
        ("put", "/v1/models/{id}/file"),
        ("post", "/v1/models/{id}/adapters"),
        ("get", "/v1/models/{id}/adapters"),
        ("get", "/v1/models/{id}/adapters/{adapter}"),
        ("delete", "/v1/models/{id}/adapters/{adapter}"),
        ("put", "/v1/models/{id}/adapters/{adapter}/file"),
        ("delete", "/v1/models/{id}"),
        ("get", "/v1/devices"),
        ("get", "/openai/v1/models"),
        ("post", "/openai/v1/chat/completions"),
        ("post", "/openai/v1/completions"),
        ("post", "/openai/v1/embeddings"),
    ];

    #[test]
    fn edge_answers_are_documented_where_they_can_happen() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let statuses = |path: &str, method: &str| -> Vec<String> {
            doc["paths"][path][method]["responses"]
                .as_object()
                .unwrap_or_else(|| panic!("{method} {path} is documented"))
                .keys()
                .cloned()
                .collect()
        };
        let deploy = statuses("/v1/functions", "post");
        for status in ["400", "401", "403", "413", "415", "429"] {
            assert!(
                deploy.contains(&status.to_owned()),
                "{status} in {deploy:?}"
            );
        }
        assert!(statuses("/v1/invocations", "get").contains(&"422".to_owned()));
        // Probes take no body, no query and no credentials.
        assert_eq!(statuses("/healthz", "get"), ["200"]);
        let chat = &doc["paths"]["/openai/v1/chat/completions"]["post"]["responses"]["415"];
        assert!(chat.to_string().contains("OpenAiErrorBody"), "{chat}");
    }

    #[test]
    fn operation_ids_are_unique() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let mut ids: Vec<&str> = doc["paths"]
            .as_object()
            .unwrap()
            .values()
            .flat_map(|p| p.as_object().unwrap().values())
            .map(|op| op["operationId"].as_str().unwrap())
            .collect();
        let all = ids.len();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), all, "duplicate operationIds");
        assert!(ids.contains(&"functions_list") && ids.contains(&"chat_completions"));
    }

    #[test]
    fn every_route_is_documented() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        for (method, path) in ROUTES {
            assert!(
                doc["paths"][path][method].is_object(),
                "{method} {path} is missing from the OpenAPI document"
            );
        }
        let documented: usize = doc["paths"]
            .as_object()
            .unwrap()
            .values()
            .map(|p| p.as_object().unwrap().len())
            .sum();
        assert_eq!(
            documented,
            ROUTES.len(),
            "the document has routes this list lacks"
        );
    }

    /// Every scope an operation's `security` names is one the runtime knows: a typo there would
    /// promise clients a scope no credential can hold. Every requirement names the bearer
    /// scheme.
    #[test]
    fn security_requirements_name_known_scopes() {
        use crate::tenancy::Scope;
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let known: Vec<&str> = Scope::ALL.iter().map(|s| s.as_str()).collect();
        let mut named = 0;
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let Some(requirements) = op.get("security") else {
                    continue;
                };
                let requirements = requirements.as_array().unwrap();
                assert!(
                    !requirements.is_empty(),
                    "{method} {path}: an empty `security` list"
                );
                for requirement in requirements {
                    for (scheme, scopes) in requirement.as_object().unwrap() {
                        assert_eq!(scheme, "bearer", "{method} {path}: unknown scheme");
                        for scope in scopes.as_array().unwrap() {
                            let scope = scope.as_str().unwrap();
                            assert!(
                                Scope::parse(scope).is_some(),
                                "{method} {path} names the unknown scope `{scope}`; known: {known:?}"
                            );
                            named += 1;
                        }
                    }
                }
            }
        }
        assert!(named > 0, "no operation names a scope");
    }
}
