//! The events an invocation announces to its callback URL. The body follows the Standard
//! Webhooks shape, `{type, timestamp, data}`, with the invocation record as `data`; the
//! delivery id (`webhook-id`) is fixed when the event is created, so every retry of it carries
//! the same id and receivers can deduplicate.

use chrono::Utc;
use serde_json::json;

use crate::records::InvocationRecord;
use crate::store::{DeliveryRow, InvocationRow};

pub fn event_payload(event: &str, row: &InvocationRow) -> String {
    json!({
        "type": event,
        "timestamp": Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "data": InvocationRecord::from(row.clone()),
    })
    .to_string()
}

/// The deliveries `event` causes for `row`: one if its callback wants the event.
pub fn delivery_rows(event: &str, row: &InvocationRow) -> Vec<DeliveryRow> {
    let (Some(url), Some(events)) = (&row.callback_url, &row.callback_events) else {
        return Vec::new();
    };
    if !events.split_whitespace().any(|e| e == event) {
        return Vec::new();
    }
    let now = Utc::now();
    vec![DeliveryRow {
        id: format!("msg_{}", uuid::Uuid::now_v7().simple()),
        tenant_id: row.tenant_id.clone(),
        invocation_id: row.id,
        event: event.to_owned(),
        url: url.clone(),
        payload: event_payload(event, row),
        status: "pending".into(),
        attempts: 0,
        next_attempt_at: now,
        lease_owner: None,
        lease_expires_at: None,
        last_status: None,
        last_error: None,
        // The run's span when there is one (the delivery joins the run's trace), else the
        // enqueuing request's.
        traceparent: crate::telemetry::current_traceparent().or_else(|| row.traceparent.clone()),
        created_at: now,
        updated_at: now,
    }]
}
