//! The HTTP API, version 1. Handlers are thin: parse, authenticate, call the store or the
//! actor tree, convert. Every error leaves through [`crate::error::ApiError`].

mod batches;
mod caller;
pub mod console;
mod server_span;
pub use server_span::http_server_span;
pub mod dto;
pub(crate) mod error;
mod evaluate;
mod functions;
mod health;
mod invocations;
mod invoke;
mod keys;
pub(crate) mod metrics;
mod models;
pub mod openai;
pub mod openapi;
mod releases;
mod tenants;
mod triggers;
mod usage;
mod webhooks;

use actix_web::error::{JsonPayloadError, PathError};
use actix_web::{web, HttpRequest, HttpResponse};

use crate::error::{ApiError, ErrorCode};

/// Largest accepted bodies: ordinary requests, batches, incoming webhooks.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    pub body: usize,
    pub batch: usize,
    pub hook: usize,
}

/// Registers every route. Used by the server and by in-process tests alike.
pub fn configure(cfg: &mut web::ServiceConfig, limits: BodyLimits) {
    let BodyLimits {
        body: body_limit,
        batch: batch_limit,
        hook: hook_limit,
    } = limits;
    cfg.app_data(
        web::JsonConfig::default()
            .limit(body_limit)
            // curl's default form content type must not turn a JSON body into a 415.
            .content_type(|_| true)
            .content_type_required(false)
            .error_handler(json_error),
    )
    .app_data(web::PathConfig::default().error_handler(path_error))
    .app_data(web::QueryConfig::default().error_handler(query_error))
    .app_data(web::PayloadConfig::default().limit(body_limit))
    .route("/healthz", web::get().to(health::healthz))
    .route("/readyz", web::get().to(health::readyz))
    .route("/openapi.json", web::get().to(openapi::document))
    .service(
        web::resource("/hooks/{id}")
            .app_data(web::PayloadConfig::default().limit(hook_limit))
            .route(web::post().to(triggers::receive)),
    )
    .service(
        web::scope("/v1")
            .service(
                web::resource("/functions")
                    .route(web::post().to(functions::deploy))
                    .route(web::get().to(functions::list)),
            )
            .service(
                web::resource("/functions/{name}")
                    .route(web::get().to(functions::get))
                    .route(web::delete().to(functions::delete)),
            )
            .route(
                "/functions/{name}/versions",
                web::get().to(functions::versions),
            )
            .route("/functions/{name}/invoke", web::post().to(invoke::invoke))
            .route(
                "/functions/{name}/prewarm",
                web::post().to(functions::prewarm),
            )
            .route(
                "/functions/{name}/evaluate",
                web::post().to(evaluate::evaluate),
            )
            .route("/functions/{name}/aliases", web::get().to(releases::list))
            .route("/functions/{name}/stats", web::get().to(releases::stats))
            .service(
                web::resource("/functions/{name}/aliases/{alias}")
                    .route(web::put().to(releases::set))
                    .route(web::delete().to(releases::delete)),
            )
            .route(
                "/functions/{name}/aliases/{alias}/rollback",
                web::post().to(releases::rollback),
            )
            .route(
                "/functions/{name}/aliases/{alias}/history",
                web::get().to(releases::history),
            )
            .service(
                web::resource("/functions/{name}/batches")
                    // Batches are large by nature; they get their own body limit.
                    .app_data(web::PayloadConfig::default().limit(batch_limit))
                    .route(web::post().to(batches::create)),
            )
            .route("/batches/{id}", web::get().to(batches::get))
            .route("/batches/{id}/results", web::get().to(batches::results))
            .route("/invocations", web::get().to(invocations::list))
            .route("/invocations/{id}", web::get().to(invocations::get))
            .route(
                "/invocations/{id}/cancel",
                web::post().to(invocations::cancel),
            )
            .route("/usage", web::get().to(usage::get))
            .service(
                web::resource("/functions/{name}/triggers")
                    .route(web::post().to(triggers::create))
                    .route(web::get().to(triggers::list)),
            )
            .route("/triggers/{id}", web::delete().to(triggers::delete))
            .route("/webhooks/secret", web::get().to(webhooks::secret))
            .route("/webhooks/secret/rotate", web::post().to(webhooks::rotate))
            .route("/webhooks/deliveries", web::get().to(webhooks::deliveries))
            .route(
                "/webhooks/deliveries/{id}/redeliver",
                web::post().to(webhooks::redeliver),
            )
            .service(
                web::resource("/api-keys")
                    .route(web::post().to(keys::create))
                    .route(web::get().to(keys::list)),
            )
            .route("/api-keys/{id}", web::delete().to(keys::revoke))
            .route("/me", web::get().to(keys::me))
            .service(
                web::resource("/admin/tenants")
                    .route(web::post().to(tenants::create))
                    .route(web::get().to(tenants::list)),
            )
            .service(
                web::resource("/admin/tenants/{id}")
                    .route(web::get().to(tenants::get))
                    .route(web::patch().to(tenants::update)),
            )
            .service(
                web::resource("/models")
                    .route(web::get().to(models::list))
                    .route(web::post().to(models::register)),
            )
            .service(
                web::resource("/models/{id}")
                    .route(web::get().to(models::get))
                    .route(web::delete().to(models::delete)),
            )
            .route("/models/{id}/file", web::put().to(models::upload))
            .service(
                web::resource("/models/{id}/adapters")
                    .route(web::get().to(models::list_adapters))
                    .route(web::post().to(models::register_adapter)),
            )
            .service(
                web::resource("/models/{id}/adapters/{adapter}")
                    .route(web::get().to(models::get_adapter))
                    .route(web::delete().to(models::delete_adapter)),
            )
            .route(
                "/models/{id}/adapters/{adapter}/file",
                web::put().to(models::upload_adapter),
            )
            .route("/devices", web::get().to(models::devices)),
    )
    .configure(|cfg| openai::configure(cfg, body_limit))
    // The web console's static files; its data comes from the routes above.
    .configure(console::configure)
    .default_service(web::to(not_found));
}

async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::new(
        ErrorCode::NotFound,
        format!("no route for {} {}", req.method(), req.path()),
    ))
}

fn json_error(err: JsonPayloadError, req: &HttpRequest) -> actix_web::Error {
    json_error_to_api(err, req).into()
}

/// What a body that cannot be read as the expected JSON gets.
pub(crate) fn json_error_to_api(err: JsonPayloadError, _req: &HttpRequest) -> ApiError {
    match &err {
        JsonPayloadError::Overflow { limit }
        | JsonPayloadError::OverflowKnownLength { limit, .. } => ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("the request body exceeds {limit} bytes"),
        ),
        JsonPayloadError::ContentType => {
            ApiError::new(ErrorCode::UnsupportedMediaType, "the body must be JSON")
        }
        JsonPayloadError::Deserialize(e) if e.is_data() => ApiError::new(
            ErrorCode::InvalidRequest,
            format!("the request body does not match the schema: {e}"),
        ),
        JsonPayloadError::Deserialize(e) => ApiError::new(
            ErrorCode::InvalidJson,
            format!("the request body is not valid JSON: {e}"),
        ),
        other => ApiError::new(
            ErrorCode::InvalidJson,
            format!("cannot read the request body: {other}"),
        ),
    }
}

fn query_error(err: actix_web::error::QueryPayloadError, _req: &HttpRequest) -> actix_web::Error {
    ApiError::new(
        ErrorCode::InvalidRequest,
        format!("bad query string: {err}"),
    )
    .into()
}

fn path_error(err: PathError, _req: &HttpRequest) -> actix_web::Error {
    ApiError::new(ErrorCode::NotFound, format!("invalid path: {err}")).into()
}

/// 204 for deletes.
pub(crate) fn no_content() -> HttpResponse {
    HttpResponse::NoContent().finish()
}
