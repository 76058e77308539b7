//! The delivery loop: leases due deliveries, signs each with the tenant's current secrets
//! (two signatures during a rotation), POSTs it through the SSRF-guarded client, records the
//! attempt, and schedules the next one from the retry schedule. A 2xx ends it; 410 Gone
//! disables the endpoint for the tenant; anything else (another status, a timeout, a refused
//! connection) is retried until the schedule is used up.
//!
//! Each attempt is a client span in the trace of the run that caused the event (the
//! delivery's stored `traceparent`), and the request carries that span's own `traceparent`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::Semaphore;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::next_attempt_delay;
use super::signing::{self, SignedHeaders};
use crate::store::{AttemptRow, DeliveryNext, DeliveryRow};

/// Deliveries in flight at once on this node.
const CONCURRENCY: usize = 16;
/// How often idle senders look for due deliveries enqueued elsewhere or scheduled earlier.
const POLL: Duration = Duration::from_millis(500);
const RECLAIM_EVERY: Duration = Duration::from_secs(5);
/// Characters of a receiver's answer kept with an attempt.
const KEEP_BODY: usize = 512;

/// What the delivery loop needs: its own handles and its own stop token.
pub struct Deliverer {
    pub config: Arc<crate::config::Config>,
    pub store: crate::store::Store,
    pub metrics: Arc<crate::telemetry::Metrics>,
    pub url_guard: Arc<super::ssrf::UrlGuard>,
    /// The guarded client: no redirects, the SSRF resolver, timeouts.
    pub http: reqwest::Client,
    /// This node, as lease owner.
    pub node: String,
    /// Rung when new deliveries were committed on this node.
    pub wake: Arc<tokio::sync::Notify>,
    pub stop: tokio_util::sync::CancellationToken,
}

pub async fn run(state: Arc<Deliverer>) {
    let slots = Arc::new(Semaphore::new(CONCURRENCY));
    // A lease outlives the longest attempt, so that a live sender never loses one.
    let lease = state.config.webhooks.timeout() * 2 + Duration::from_secs(5);
    let mut last_reclaim = Instant::now() - RECLAIM_EVERY;
    while !state.stop.is_cancelled() {
        if last_reclaim.elapsed() >= RECLAIM_EVERY {
            last_reclaim = Instant::now();
            if let Err(err) = state.store.reclaim_deliveries(false).await {
                tracing::warn!(error = %err, "reclaiming deliveries failed");
            }
            let horizon = Utc::now()
                - chrono::Duration::from_std(state.config.webhooks.trigger_tolerance() * 2)
                    .unwrap_or_default();
            if let Err(err) = state.store.purge_trigger_receipts(horizon).await {
                tracing::warn!(error = %err, "purging trigger receipts failed");
            }
        }
        let free = slots.available_permits();
        if free > 0 {
            match state
                .store
                .claim_deliveries(&state.node, free as u64, lease)
                .await
            {
                Ok(deliveries) => {
                    for delivery in deliveries {
                        let permit = Arc::clone(&slots)
                            .acquire_owned()
                            .await
                            .expect("semaphore never closed");
                        let state = state.clone();
                        tokio::spawn(async move {
                            let _permit = permit;
                            deliver(&state, delivery).await;
                        });
                    }
                }
                Err(err) => tracing::warn!(error = %err, "claiming deliveries failed"),
            }
        }
        tokio::select! {
            _ = tokio::time::timeout(POLL, state.wake.notified()) => {}
            () = state.stop.cancelled() => {}
        }
    }
}

async fn deliver(state: &Deliverer, delivery: DeliveryRow) {
    let started = Instant::now();
    let span = tracing::info_span!(
        target: "genrt_runtime::webhooks",
        "webhook",
        otel.name = %format!("webhook {}", delivery.event),
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        http.request.method = "POST",
        http.response.status_code = tracing::field::Empty,
        genrt.tenant = %delivery.tenant_id,
        genrt.invocation.id = %delivery.invocation_id,
        genrt.webhook.event = %delivery.event,
        genrt.webhook.attempt = delivery.attempts + 1,
    );
    let _ = span.set_parent(crate::telemetry::parent_from_traceparent(
        delivery.traceparent.as_deref(),
    ));
    let (status_code, error) = attempt(state, &delivery, &span)
        .instrument(span.clone())
        .await;
    if let Some(code) = status_code {
        span.record("http.response.status_code", i64::from(code));
    }
    let failed_so_far = delivery.attempts as usize + 1;
    let config = &state.config.webhooks;
    let next = match status_code {
        Some(code) if (200..300).contains(&code) => DeliveryNext::Succeeded,
        Some(410) => DeliveryNext::Disabled,
        _ if error.as_deref() == Some(DISABLED) => DeliveryNext::Disabled,
        _ => match next_attempt_delay(
            &config.retry_schedule_s,
            failed_so_far,
            config.jitter,
            rand::random::<f64>(),
        ) {
            Some(delay) => DeliveryNext::Retry(
                Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default(),
            ),
            None => DeliveryNext::Failed,
        },
    };
    let outcome = match &next {
        DeliveryNext::Succeeded => "delivered",
        DeliveryNext::Disabled => "disabled",
        DeliveryNext::Retry(_) => "retry",
        DeliveryNext::Failed => "failed",
    };
    if outcome != "delivered" {
        span.record("otel.status_code", "ERROR");
    }
    state.metrics.webhook_delivery(outcome);
    let record = AttemptRow {
        id: 0,
        delivery_id: delivery.id.clone(),
        attempt: failed_so_far as i32,
        status_code: status_code.map(i32::from),
        error,
        duration_ms: started.elapsed().as_secs_f64() * 1000.0,
        attempted_at: Utc::now(),
    };
    tracing::debug!(delivery = %delivery.id, url = %delivery.url, status = ?status_code, next = ?next, "webhook attempt");
    if let Err(err) = state
        .store
        .record_attempt(&delivery, &state.node, record, next)
        .await
    {
        tracing::warn!(delivery = %delivery.id, error = %err, "recording a webhook attempt failed; the lease will expire and it is sent again");
    }
}

const DISABLED: &str = "the endpoint is disabled (it answered 410 Gone)";

/// One POST. Returns the status, or the reason there was none.
async fn attempt(
    state: &Deliverer,
    d: &DeliveryRow,
    span: &tracing::Span,
) -> (Option<u16>, Option<String>) {
    match state.store.endpoint_disabled(&d.tenant_id, &d.url).await {
        Ok(true) => return (None, Some(DISABLED.into())),
        Ok(false) => {}
        Err(err) => return (None, Some(format!("database: {err}"))),
    }
    // Checked again at each attempt: the URL's IP literal, and through the client's resolver
    // every address it connects to.
    if let Err(err) = state.url_guard.check_url(&d.url) {
        return (None, Some(format!("refused by the SSRF guard: {err}")));
    }
    let secrets = match state
        .store
        .webhook_secrets(&d.tenant_id, signing::generate_secret)
        .await
    {
        Ok(s) => s,
        Err(err) => return (None, Some(format!("database: {err}"))),
    };
    let signed = match SignedHeaders::new(
        &d.id,
        Utc::now().timestamp(),
        d.payload.as_bytes(),
        &secrets,
    ) {
        Ok(s) => s,
        Err(err) => return (None, Some(format!("signing: {err}"))),
    };
    let mut request = state
        .http
        .post(&d.url)
        .header("content-type", "application/json")
        .body(d.payload.clone());
    for (name, value) in signed.pairs() {
        request = request.header(name, value);
    }
    // This attempt's own span, so that the receiver's work nests under it; the stored
    // context when tracing is off here.
    if let Some(tp) = crate::telemetry::traceparent_of(span).or_else(|| d.traceparent.clone()) {
        request = request.header("traceparent", tp);
    }
    match request.send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            let body = response.text().await.unwrap_or_default();
            let note = (!(200..300).contains(&status))
                .then(|| body.chars().take(KEEP_BODY).collect::<String>());
            (Some(status), note)
        }
        Err(err) => (None, Some(error_chain(&err))),
    }
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
