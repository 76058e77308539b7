//! Liveness and readiness probes; no authentication.

use std::time::Duration;

use actix_web::{web, HttpResponse};

use crate::api::dto::{Health, Readiness};
use crate::app::AppState;

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, description = "The process is alive", body = Health)))]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(Health {
        status: "ok".into(),
    })
}

/// How long readiness waits for the database. A probe that hangs on an unreachable database
/// (a partition drops packets rather than refusing them) would be killed by the prober's own
/// timeout and read as "no answer"; answering 503 in time says why.
const DB_PING_LIMIT: Duration = Duration::from_secs(2);

/// Readiness: the database answers, the actor tree is running, and the model registry's
/// first sync has served the models registered earlier (their files' sha256 checked).
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses(
        (status = 200, description = "Ready to serve", body = Readiness),
        (status = 503, description = "Not ready", body = Readiness)))]
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let database = tokio::time::timeout(DB_PING_LIMIT, state.store.ping())
        .await
        .unwrap_or(false);
    let actors = state.tree.is_running();
    let registry = state.registry.is_synced();
    let ready = database && actors && registry;
    let body = Readiness {
        status: if ready { "ready" } else { "not_ready" }.into(),
        database,
        actors,
        registry,
    };
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable()
            .insert_header((actix_web::http::header::RETRY_AFTER, "2"))
            .json(body)
    }
}
