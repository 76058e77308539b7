//! `GET /metrics`: the node's metrics in the Prometheus text format, on a listener of its own
//! (`telemetry.metrics_listen`, loopback by default), never on the API's. The series name
//! tenants and functions, and scrapers hold no tenant credentials, so the endpoint is kept
//! off the network callers reach; off loopback it demands `telemetry.metrics_token`.

use std::net::SocketAddr;

use actix_web::{http::header, web, App, HttpRequest, HttpResponse, HttpServer};
use sha2::{Digest, Sha256};

use crate::app::AppState;
use crate::error::{ApiError, ErrorCode};

/// Binds the metrics listener: one worker, no signal handling of its own (the main server's
/// stop ends it), `/metrics` and nothing else.
pub(crate) fn listener(
    state: web::Data<AppState>,
    addr: SocketAddr,
) -> std::io::Result<(actix_web::dev::Server, SocketAddr)> {
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .route("/metrics", web::get().to(metrics))
            .default_service(web::to(not_found))
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(1)
    .bind(addr)?;
    let bound = server.addrs()[0];
    Ok((server.run(), bound))
}

async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::new(
        ErrorCode::NotFound,
        format!("no route for {} {}", req.method(), req.path()),
    ))
}

/// Prometheus text exposition (version 0.0.4) of every metric of this node.
async fn metrics(state: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let token = state.config.telemetry.metrics_token.as_deref();
    // Empty is unset (an empty variable from a Secret); validation refused that off loopback.
    if let Some(expected) = token.filter(|t| !t.is_empty()) {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        // Compared as digests so that the comparison's time says nothing about how much of
        // the token a guess got right.
        if Sha256::digest(given.trim().as_bytes()) != Sha256::digest(expected.as_bytes()) {
            return Err(ApiError::new(
                ErrorCode::InvalidToken,
                "GET /metrics needs the bearer token set in telemetry.metrics_token",
            ));
        }
    }
    state.metrics.refresh(&state.tree, &state.store).await;
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.metrics.render()))
}
