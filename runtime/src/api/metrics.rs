//! `GET /metrics`: the node's metrics in the Prometheus text format. Unauthenticated like the
//! probes, because scrapers hold no tenant credentials; it shows tenant and function names,
//! so it belongs on a network only the scraper reaches (`telemetry.metrics_endpoint = false`
//! turns it off).

use actix_web::{web, HttpResponse};

use crate::app::AppState;
use crate::error::{ApiError, ErrorBody, ErrorCode};

/// Prometheus text exposition (version 0.0.4) of every metric of this node.
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses(
        (status = 200, description = "Metrics in the Prometheus text format", content_type = "text/plain", body = String),
        (status = 404, description = "Turned off (`telemetry.metrics_endpoint = false`)", body = ErrorBody)))]
pub async fn metrics(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    if !state.config.telemetry.metrics_endpoint {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            "no route for GET /metrics",
        ));
    }
    state.metrics.refresh(&state.tree, &state.store).await;
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.metrics.render()))
}
