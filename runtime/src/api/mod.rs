//! The HTTP API, version 1. Handlers are thin: parse, authenticate, call the store or the
//! actor tree, convert. Every error leaves through [`crate::error::ApiError`].

pub mod dto;
mod functions;
mod health;
mod invocations;
mod invoke;
mod models;
pub mod openapi;

use actix_web::error::{JsonPayloadError, PathError};
use actix_web::{web, HttpRequest, HttpResponse};

use crate::error::{ApiError, ErrorCode};

/// Registers every route. Used by the server and by in-process tests alike.
pub fn configure(cfg: &mut web::ServiceConfig, body_limit: usize) {
    cfg.app_data(
        web::JsonConfig::default()
            .limit(body_limit)
            // curl's default form content type must not turn a JSON body into a 415.
            .content_type(|_| true)
            .content_type_required(false)
            .error_handler(json_error),
    )
    .app_data(web::PathConfig::default().error_handler(path_error))
    .app_data(web::PayloadConfig::default().limit(body_limit))
    .route("/healthz", web::get().to(health::healthz))
    .route("/readyz", web::get().to(health::readyz))
    .route("/openapi.json", web::get().to(openapi::document))
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
            .route("/invocations/{id}", web::get().to(invocations::get))
            .route("/models", web::get().to(models::list))
            .route("/models/{id}", web::get().to(models::get)),
    )
    .default_service(web::to(not_found));
}

async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::new(
        ErrorCode::NotFound,
        format!("no route for {} {}", req.method(), req.path()),
    ))
}

fn json_error(err: JsonPayloadError, _req: &HttpRequest) -> actix_web::Error {
    let api = match &err {
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
    };
    api.into()
}

fn path_error(err: PathError, _req: &HttpRequest) -> actix_web::Error {
    ApiError::new(ErrorCode::NotFound, format!("invalid path: {err}")).into()
}

/// 204 for deletes.
pub(crate) fn no_content() -> HttpResponse {
    HttpResponse::NoContent().finish()
}
