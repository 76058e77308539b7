//! The server span and the duration metric of every HTTP request.

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::web;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt;
use opentelemetry_http::HeaderExtractor;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::field::Empty;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::app::AppState;

/// Opens the request's server span, continuing the caller's trace when it sent a W3C
/// `traceparent`, and records `http.server.request.duration` by route (the pattern, never the
/// raw path, so that ids do not multiply the series). Probes and scrapes are measured but not
/// traced: at one every few seconds they would bury the traces that matter.
pub async fn http_server_span(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let method = req.method().as_str().to_owned();
    let untraced = matches!(req.path(), "/healthz" | "/readyz");
    let span = if untraced {
        tracing::Span::none()
    } else {
        tracing::info_span!(
        target: "genrt_runtime::http",
        "http.request",
        otel.name = %method,
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = %method,
        url.path = %req.path(),
        http.route = Empty,
        http.response.status_code = Empty,
        )
    };
    let remote =
        TraceContextPropagator::new().extract(&HeaderExtractor(&http_headers(req.headers())));
    if remote.span().span_context().is_valid() {
        // Fails only when tracing is off, which leaves nothing to continue.
        let _ = span.set_parent(remote);
    }
    let metrics = req
        .app_data::<web::Data<AppState>>()
        .map(|s| std::sync::Arc::clone(&s.metrics));
    let started = Instant::now();
    // Entered while the inner services are called too, not only while their futures run.
    let response = {
        let _entered = span.enter();
        next.call(req)
    }
    .instrument(span.clone())
    .await;
    let (status, route) = match &response {
        Ok(r) => (r.status().as_u16(), r.request().match_pattern()),
        Err(e) => (e.as_response_error().status_code().as_u16(), None),
    };
    let route = route.unwrap_or_else(|| "unmatched".to_owned());
    crate::telemetry::rename(&span, format!("{method} {route}"));
    span.record("http.route", route.as_str());
    span.record("http.response.status_code", i64::from(status));
    if status >= 500 {
        span.record("otel.status_code", "ERROR");
    }
    if let Some(metrics) = metrics {
        metrics.http_request(&method, &route, status, started.elapsed());
    }
    response
}

/// actix-web's header map as the `http` crate's, which the propagator reads.
fn http_headers(headers: &actix_web::http::header::HeaderMap) -> http::HeaderMap {
    let mut out = http::HeaderMap::new();
    for name in ["traceparent", "tracestate"] {
        if let Some(value) = headers.get(name) {
            if let Ok(value) = http::HeaderValue::from_bytes(value.as_bytes()) {
                out.insert(name, value);
            }
        }
    }
    out
}
