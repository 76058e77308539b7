//! The delivery loop: leases due deliveries, signs each with the tenant's current secrets
//! (two signatures during a rotation), POSTs it through the SSRF-guarded client, records the
//! attempt, and schedules the next one from the retry schedule. A 2xx ends it; 410 Gone
//! disables the endpoint for the tenant; anything else (another status, a timeout, a refused
//! connection) is retried until the schedule is used up.
//!
//! The node's slots are shared between tenants in turn ([`super::fair::share_slots`]): each
//! round asks the store which tenants have due deliveries, starting after the tenant served
//! last, gives each at most `webhooks.max_in_flight_per_tenant` slots counting what it has
//! in flight, and leases each tenant's share. A tenant whose receiver is slow or stalled thus
//! holds a few slots at most, and a finished delivery frees its slot for the next round at
//! once. Of a receiver's answer only the status is needed: a 2xx body is not read, and of any
//! other at most [`KEEP_BODY`] bytes are read and kept with the attempt.
//!
//! Each attempt is a client span in the trace of the run that caused the event (the
//! delivery's stored `traceparent`), and the request carries that span's own `traceparent`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::Semaphore;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::fair::{self, InFlight};
use super::next_attempt_delay;
use super::signing::{self, SignedHeaders};
use crate::store::{AttemptRow, DeliveryNext, DeliveryRow};

/// Deliveries in flight at once on this node, all tenants together.
const CONCURRENCY: usize = 16;
/// Tenants with due deliveries considered in one round (more wait for the next rounds, which
/// start after the last one served).
const TENANTS_PER_ROUND: u64 = 256;
/// How often idle senders look for due deliveries enqueued elsewhere or scheduled earlier.
const POLL: Duration = Duration::from_millis(500);
const RECLAIM_EVERY: Duration = Duration::from_secs(5);
/// How often trigger receipts past `webhooks.trigger_receipt_retention_s` are purged.
const PURGE_EVERY: Duration = Duration::from_secs(60);
/// Bytes of a receiver's failed answer read and kept with an attempt; the rest is not read.
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
    let in_flight = Arc::new(InFlight::default());
    // A lease outlives the longest attempt, so that a live sender never loses one.
    let lease = state.config.webhooks.timeout() * 2 + Duration::from_secs(5);
    let mut last_reclaim = Instant::now() - RECLAIM_EVERY;
    let mut last_purge = Instant::now() - PURGE_EVERY;
    // The tenant given the last slot of the last round: the next round starts after it.
    let mut last_served: Option<String> = None;
    while !state.stop.is_cancelled() {
        if last_reclaim.elapsed() >= RECLAIM_EVERY {
            last_reclaim = Instant::now();
            if let Err(err) = state.store.reclaim_deliveries(false).await {
                tracing::warn!(error = %err, "reclaiming deliveries failed");
            }
        }
        if last_purge.elapsed() >= PURGE_EVERY {
            last_purge = Instant::now();
            let horizon = Utc::now()
                - chrono::Duration::from_std(state.config.webhooks.trigger_receipt_retention())
                    .unwrap_or_default();
            if let Err(err) = state.store.purge_trigger_receipts(horizon).await {
                tracing::warn!(error = %err, "purging trigger receipts failed");
            }
        }
        let free = slots.available_permits();
        if free > 0 {
            if let Some(last) = round(
                &state,
                &slots,
                &in_flight,
                free,
                lease,
                last_served.as_deref(),
            )
            .await
            {
                last_served = Some(last);
            }
        }
        tokio::select! {
            _ = tokio::time::timeout(POLL, state.wake.notified()) => {}
            () = state.stop.cancelled() => {}
        }
    }
}

/// One round: shares `free` slots between the tenants with due deliveries, in turn from
/// after `last_served`, leases each tenant's share and sends it. Returns the tenant given the
/// round's last slot.
async fn round(
    state: &Arc<Deliverer>,
    slots: &Arc<Semaphore>,
    in_flight: &Arc<InFlight>,
    free: usize,
    lease: Duration,
    last_served: Option<&str>,
) -> Option<String> {
    let due = match state
        .store
        .tenants_with_due_deliveries(last_served, TENANTS_PER_ROUND)
        .await
    {
        Ok(due) => due,
        Err(err) => {
            tracing::warn!(error = %err, "listing due deliveries failed");
            return None;
        }
    };
    let cap = state.config.webhooks.max_in_flight_per_tenant;
    let shares = fair::share_slots(&due, |tenant| in_flight.count(tenant), free, cap);
    for (tenant, n) in &shares.claims {
        let deliveries = match state
            .store
            .claim_deliveries(&state.node, tenant, *n as u64, lease)
            .await
        {
            Ok(deliveries) => deliveries,
            Err(err) => {
                tracing::warn!(tenant = %tenant, error = %err, "claiming deliveries failed");
                continue;
            }
        };
        for delivery in deliveries {
            // Only this loop takes permits, and it took no more than were free.
            let permit = Arc::clone(slots)
                .acquire_owned()
                .await
                .expect("semaphore never closed");
            let guard = in_flight.enter(tenant);
            let state = Arc::clone(state);
            tokio::spawn(async move {
                deliver(&state, delivery).await;
                drop(guard);
                drop(permit);
                // The slot is free: refill it now rather than at the next poll.
                state.wake.notify_one();
            });
        }
    }
    shares.last
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
            // A 2xx body is not read at all: the status is the answer.
            let note = if (200..300).contains(&status) {
                None
            } else {
                Some(failed_answer(response).await)
            };
            (Some(status), note)
        }
        Err(err) => (None, Some(error_chain(&err))),
    }
}

/// At most [`KEEP_BODY`] bytes of a failed answer, read chunk by chunk: a receiver that
/// answers an endless body costs no more than that (and the attempt's timeout).
async fn failed_answer(mut response: reqwest::Response) -> String {
    let mut kept: Vec<u8> = Vec::new();
    while kept.len() < KEEP_BODY {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let take = chunk.len().min(KEEP_BODY - kept.len());
                kept.extend_from_slice(&chunk[..take]);
            }
            Ok(None) | Err(_) => break,
        }
    }
    // A character cut at the limit is dropped rather than shown as garbage.
    if let Err(err) = std::str::from_utf8(&kept) {
        if err.error_len().is_none() {
            kept.truncate(err.valid_up_to());
        }
    }
    String::from_utf8_lossy(&kept).into_owned()
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

#[cfg(test)]
mod tests {
    use super::*;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn client() -> reqwest::Client {
        reqwest::Client::builder().no_proxy().build().unwrap()
    }

    /// A receiver that answers `status` with an endless chunked body, and how many body bytes
    /// it managed to write before the client hung up.
    async fn endless(status: &'static str) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let written = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = Arc::clone(&written);
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 4096];
            let _ = socket.read(&mut request).await;
            let head = format!("HTTP/1.1 {status}\r\ntransfer-encoding: chunked\r\n\r\n");
            if socket.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            let chunk = format!("400\r\n{}\r\n", "é".repeat(512));
            loop {
                if socket.write_all(chunk.as_bytes()).await.is_err() {
                    return;
                }
                count.fetch_add(1024, std::sync::atomic::Ordering::Relaxed);
            }
        });
        (url, written)
    }

    #[tokio::test]
    async fn an_endless_failed_answer_is_read_up_to_the_limit() {
        let (url, written) = endless("500 Internal Server Error").await;
        let response = client().post(&url).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 500);
        let note = tokio::time::timeout(Duration::from_secs(5), failed_answer(response))
            .await
            .expect("reading stops at the limit");
        assert!(note.len() <= KEEP_BODY, "{} bytes kept", note.len());
        assert_eq!(note, "é".repeat(KEEP_BODY / 2));
        tokio::time::sleep(Duration::from_millis(100)).await;
        let sent = written.load(std::sync::atomic::Ordering::Relaxed);
        assert!(sent < 64 * 1024 * 1024, "{sent} bytes were read");
    }

    #[tokio::test]
    async fn a_character_cut_at_the_limit_is_dropped() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 4096];
            let _ = socket.read(&mut request).await;
            // One byte, then characters of two: the limit falls inside one.
            let body = format!("x{}", "é".repeat(400));
            let answer = format!(
                "HTTP/1.1 400 Bad Request\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(answer.as_bytes()).await;
        });
        let response = client().post(&url).send().await.unwrap();
        let note = failed_answer(response).await;
        assert_eq!(note, format!("x{}", "é".repeat((KEEP_BODY - 2) / 2)));
    }
}
