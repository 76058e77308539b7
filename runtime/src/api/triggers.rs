//! Incoming webhooks that start a function. A trigger has a URL (`/hooks/{id}`) and a secret;
//! an external system POSTs signed events to it (Standard Webhooks, or GitHub's
//! `X-Hub-Signature-256`), and each verified, fresh, unseen event becomes a queued async
//! invocation, its input taken from the payload by JSON Pointers. The hook answers 202 as soon
//! as the invocation is committed.

use std::collections::BTreeMap;

use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use genrt_functions::{GenerationParams, TenantId};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::api::dto::{AsyncAccepted, Params, WebhookSpec};
use crate::api::functions::{function_not_found, runnable};
use crate::api::invoke::{callback, deployed};
use crate::app::AppState;
use crate::error::{ApiError, ErrorBody, ErrorCode};
use crate::invocation::{Mode, Queued};
use crate::store::TriggerRow;
use crate::tenancy::{Caller, Scope};
use crate::webhooks::signing::{self, Verified, VerifyError};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SignatureScheme {
    /// `webhook-id`, `webhook-timestamp`, `webhook-signature` (Standard Webhooks).
    #[default]
    Standard,
    /// `X-Hub-Signature-256: sha256=<hex>`, the HMAC of the body. GitHub signs no id and no
    /// timestamp, so `X-GitHub-Delivery` is neither required nor trusted: a message is known
    /// by a digest of its signed body, and a replay is refused while its receipt is kept
    /// (`webhooks.trigger_receipt_retention_s`), not for being stale.
    Github,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTrigger {
    #[serde(default)]
    pub scheme: SignatureScheme,
    /// Input field → JSON Pointer into the payload (`{"title": "/issue/title"}`). Unset: the
    /// whole payload is the input.
    #[serde(default)]
    pub input_map: Option<BTreeMap<String, String>>,
    /// Generation parameters for the invocations it starts.
    #[serde(default)]
    pub params: Params,
    /// Announce results here (overrides the function's webhook).
    #[serde(default)]
    pub webhook: Option<WebhookSpec>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TriggerInfo {
    pub id: String,
    pub function: String,
    /// Where the external system POSTs: `/hooks/{id}` on this server.
    pub url: String,
    pub scheme: SignatureScheme,
    #[schema(value_type = Option<Object>)]
    pub input_map: Option<BTreeMap<String, String>>,
    pub created_at: DateTime<Utc>,
    /// Shown only when the trigger is created.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TriggerList {
    pub triggers: Vec<TriggerInfo>,
}

/// What a trigger stores besides its row's columns.
#[derive(Debug, Serialize, Deserialize)]
struct TriggerConfig {
    input_map: Option<BTreeMap<String, String>>,
    #[serde(default)]
    params: Params,
    #[serde(default)]
    webhook: Option<WebhookSpec>,
    /// What followed `@` in the function's path at creation (`3`, `prod`): every message
    /// runs that version, or the alias's version when the message arrives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    at: Option<String>,
}

/// The function reference a trigger runs: its function, `@` what was named at creation.
fn trigger_ref(function: &str, config: Option<&TriggerConfig>) -> String {
    match config.and_then(|c| c.at.as_deref()) {
        Some(at) => format!("{function}@{at}"),
        None => function.to_owned(),
    }
}

fn info(row: &TriggerRow, secret: Option<String>) -> TriggerInfo {
    let config: Option<TriggerConfig> = serde_json::from_str(&row.input_map).ok();
    TriggerInfo {
        id: row.id.clone(),
        function: trigger_ref(&row.function_name, config.as_ref()),
        url: format!("/hooks/{}", row.id),
        scheme: if row.scheme == "github" {
            SignatureScheme::Github
        } else {
            SignatureScheme::Standard
        },
        input_map: config.and_then(|c| c.input_map),
        created_at: row.created_at,
        secret,
    }
}

fn trigger_not_found(id: &str) -> ApiError {
    ApiError::new(
        ErrorCode::TriggerNotFound,
        format!("trigger `{id}` not found"),
    )
}

/// Create a trigger for a function; the answer carries its secret, shown this once.
#[utoipa::path(post, path = "/v1/functions/{name}/triggers", tag = "triggers", security(("bearer" = ["webhooks:write"])),
    params(("name" = String, Path)),
    request_body = CreateTrigger,
    responses(
        (status = 201, body = TriggerInfo),
        (status = 401, body = ErrorBody),
        (status = 403, description = "Lacks `webhooks:write`", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub async fn create(
    state: web::Data<AppState>,
    caller: Caller,
    name: web::Path<String>,
    body: web::Json<CreateTrigger>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Scope::WebhooksWrite)?;
    let reference = name.into_inner();
    let resolved = runnable(&state, &caller, &reference, None, None).await?;
    let (name, version) = (&resolved.name, &resolved.version);
    let at = reference.split_once('@').map(|(_, at)| at.to_owned());
    let body = body.into_inner();
    if let Some(map) = &body.input_map {
        if let Some((field, _)) = map
            .iter()
            .find(|(_, p)| !(p.is_empty() || p.starts_with('/')))
        {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                "each input_map value must be a JSON Pointer (\"\" or starting with '/')",
            )
            .with_field(format!("input_map.{field}")));
        }
    }
    let params: GenerationParams = body.params.clone().into();
    params
        .validate_override()
        .map_err(|e| ApiError::from(genrt_actors::InvokeError::Input(e)))?;
    if let Some(target) = callback(body.webhook.as_ref(), &version.spec)? {
        state.check_callback_url(&target.url).await?;
    }
    let secret = signing::generate_secret();
    let config = TriggerConfig {
        input_map: body.input_map,
        params: body.params,
        webhook: body.webhook,
        at,
    };
    let row = TriggerRow {
        id: format!("trg_{}", uuid::Uuid::now_v7().simple()),
        tenant_id: caller.tenant.as_str().to_owned(),
        function_name: name.as_str().to_owned(),
        scheme: match body.scheme {
            SignatureScheme::Standard => "standard".into(),
            SignatureScheme::Github => "github".into(),
        },
        secret: secret.clone(),
        input_map: serde_json::to_string(&config).expect("config serializes"),
        callback_url: None,
        disabled: false,
        created_at: Utc::now(),
    };
    state.store.insert_trigger(row.clone()).await?;
    Ok(HttpResponse::Created().json(info(&row, Some(secret))))
}

/// A function's triggers (without their secrets).
#[utoipa::path(get, path = "/v1/functions/{name}/triggers", tag = "triggers", security(("bearer" = ["webhooks:write"])),
    params(("name" = String, Path)),
    responses(
        (status = 200, body = TriggerList),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn list(
    state: web::Data<AppState>,
    caller: Caller,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Scope::WebhooksWrite)?;
    let name = crate::api::functions::function_name(&name)?;
    if state.store.function(&caller.tenant, &name).await?.is_none() {
        return Err(function_not_found(name.as_str()));
    }
    let rows = state
        .store
        .list_triggers(caller.tenant.as_str(), name.as_str())
        .await?;
    Ok(HttpResponse::Ok().json(TriggerList {
        triggers: rows.iter().map(|r| info(r, None)).collect(),
    }))
}

/// Delete a trigger: its URL answers 404 from then on.
#[utoipa::path(delete, path = "/v1/triggers/{id}", tag = "triggers", security(("bearer" = ["webhooks:write"])),
    params(("id" = String, Path)),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn delete(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Scope::WebhooksWrite)?;
    if state
        .store
        .delete_trigger(caller.tenant.as_str(), &id)
        .await?
    {
        Ok(crate::api::no_content())
    } else {
        Err(trigger_not_found(&id))
    }
}

/// Checks the message's signature by the trigger's scheme, and returns what the message is
/// known by: its receipt keys, taken only from what the signature covers (unsigned headers
/// such as `X-GitHub-Delivery` play no part).
fn verified_message(
    state: &AppState,
    trigger: &TriggerRow,
    request: &HttpRequest,
    body: &[u8],
) -> Result<Verified, ApiError> {
    let headers = request.headers();
    match trigger.scheme.as_str() {
        "github" => {
            let signature = headers
                .get(signing::GITHUB_SIGNATURE_HEADER)
                .and_then(|v| v.to_str().ok());
            signing::verify_github(&trigger.secret, body, signature)
        }
        _ => signing::verify_standard(
            &trigger.secret,
            headers,
            body,
            Utc::now().timestamp(),
            state.config.webhooks.trigger_tolerance(),
        ),
    }
    .map_err(signature_error)
}

fn replayed() -> ApiError {
    ApiError::new(
        ErrorCode::ReplayedWebhook,
        "this message was already accepted (the same signed message was received before)",
    )
}

/// The function's input: the payload as it is, or the fields `input_map` picks from it.
fn mapped_input(config: &TriggerConfig, payload: Value) -> Result<Value, ApiError> {
    Ok(match &config.input_map {
        None => payload,
        Some(map) => {
            let mut input = serde_json::Map::new();
            for (field, pointer) in map {
                let value = payload.pointer(pointer).cloned().ok_or_else(|| {
                    ApiError::new(
                        ErrorCode::InvalidInput,
                        format!("the payload has nothing at `{pointer}` for input `{field}`"),
                    )
                    .with_field(format!("input.{field}"))
                })?;
                input.insert(field.clone(), value);
            }
            Value::Object(input)
        }
    })
}

fn signature_error(err: VerifyError) -> ApiError {
    match err {
        VerifyError::TimestampTooOld { .. } | VerifyError::TimestampTooNew { .. } => {
            ApiError::new(ErrorCode::StaleWebhook, err.to_string())
        }
        other => ApiError::new(ErrorCode::InvalidSignature, other.to_string()),
    }
}

/// Receive a signed event for a trigger. No bearer token: the signature authenticates it.
/// Answers 202 once the invocation it starts is committed.
#[utoipa::path(post, path = "/hooks/{id}", tag = "triggers",
    params(("id" = String, Path)),
    request_body(content = Object, description = "The event, as the sender signed it"),
    responses(
        (status = 202, description = "Accepted: an async invocation was queued", body = AsyncAccepted),
        (status = 400, description = "The payload is not JSON", body = ErrorBody),
        (status = 401, description = "Bad or missing signature (`invalid_signature`), or a timestamp outside the tolerance (`stale_webhook`)", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "This message (the same signed body, whatever its delivery id) was already accepted (`replayed_webhook`)", body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 422, description = "The mapped input fails the function's checks", body = ErrorBody),
        (status = 429, body = ErrorBody)))]
pub async fn receive(
    state: web::Data<AppState>,
    id: web::Path<String>,
    request: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let trigger = state
        .store
        .trigger(&id)
        .await?
        .filter(|t| !t.disabled)
        .ok_or_else(|| trigger_not_found(&id))?;
    let receipt_keys = verified_message(&state, &trigger, &request, &body)?.receipt_keys();
    // Refused before it uses the tenant's rate limit or renders anything; the receipt
    // committed with the invocation below is what decides.
    if state
        .store
        .trigger_message_seen(&trigger.id, &receipt_keys)
        .await?
    {
        return Err(replayed());
    }
    let payload: Value = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            ErrorCode::InvalidJson,
            format!("the payload is not JSON: {e}"),
        )
    })?;
    let config: TriggerConfig = serde_json::from_str(&trigger.input_map)
        .map_err(|e| ApiError::internal(format!("stored trigger config: {e}")))?;
    let input = mapped_input(&config, payload)?;
    // The tenant's own rules apply to what its triggers start.
    let tenant = TenantId::parse(&trigger.tenant_id)
        .map_err(|e| ApiError::internal(format!("stored tenant: {e}")))?;
    let limits = state.tenancy.limits_of(&tenant).await?;
    if limits.disabled {
        return Err(ApiError::new(
            ErrorCode::TenantDisabled,
            "the tenant is disabled",
        ));
    }
    state.tenancy.limits.check_rate(&tenant, &limits)?;
    let caller = Caller {
        tenant: tenant.clone(),
        scopes: [Scope::FunctionsInvoke].into_iter().collect(),
        credential: crate::tenancy::Credential::Trigger,
        expires_at: None,
        limits,
    };
    let reference = trigger_ref(&trigger.function_name, Some(&config));
    let resolved = runnable(&state, &caller, &reference, None, None)
        .await
        .map_err(|_| function_not_found(&reference))?;
    let (name, version) = (&resolved.name, &resolved.version);
    let params: GenerationParams = config.params.clone().into();
    let service = &state.invocations;
    let admitted = service
        .admit(&caller, Mode::Trigger, &version.spec, &[&input], &params)
        .await?;
    let webhook = callback(config.webhook.as_ref(), &version.spec)?;
    let params_json = serde_json::to_value(&config.params).expect("params serialize");
    let function = deployed(&caller, name, version);
    let inputs = [input];
    let row = service
        .queue_rows(
            &admitted,
            Queued {
                function: &function,
                inputs: &inputs,
                params: &params_json,
                webhook: webhook.as_ref(),
                batch: None,
                via: &resolved.via,
            },
        )
        .await?
        .pop()
        .expect("one input, one row");
    let invocation_id = row.id;
    if !state
        .store
        .accept_trigger_message(&trigger.id, &receipt_keys, row)
        .await?
    {
        return Err(replayed());
    }
    service.wake_queue();
    Ok(HttpResponse::Accepted().json(AsyncAccepted {
        invocation_id,
        status: "queued".into(),
        function: name.as_str().to_owned(),
        version: version.version,
        alias: resolved.via.alias().map(|a| a.as_str().to_owned()),
    }))
}

impl signing::HeaderLookup for actix_web::http::header::HeaderMap {
    fn header(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|value| value.to_str().ok())
    }
}

#[cfg(test)]
mod tests {
    use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};

    use crate::webhooks::signing::HeaderLookup;

    #[test]
    fn actix_headers_are_read_case_insensitively() {
        let mut map = HeaderMap::new();
        map.insert(
            HeaderName::from_static("webhook-id"),
            HeaderValue::from_static("msg_1"),
        );
        assert_eq!(map.header("webhook-id"), Some("msg_1"));
        assert_eq!(map.header("Webhook-Id"), Some("msg_1"));
        assert_eq!(map.header("webhook-signature"), None);
    }
}
