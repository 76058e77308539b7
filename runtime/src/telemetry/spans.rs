//! The spans of one invocation and the W3C `traceparent` it carries between processes.
//!
//! The dispatch span (`invoke`) is a `tracing` span like the HTTP and auth spans around it.
//! The phases inside the actor tree (function actor, model queue, cold start, prefill, decode)
//! are recorded after the fact, with explicit start and end times, from the timings the tree
//! already returns with every outcome. Threading span contexts through the dispatcher, the
//! function actor, the pool's fair queue and into the engine thread (which runs many
//! sequences in one decode step) would put telemetry types into every message of the
//! `actors` crate and work on the engine's hot loop, for times it measures anyway.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use genrt_actors::InvocationOutcome;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{
    SpanContext, SpanKind, Status, TraceContextExt, Tracer, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::Metrics;

/// What every metric and span of an invocation is labelled with.
#[derive(Debug, Clone)]
pub struct InvocationLabels {
    pub tenant: String,
    pub function: String,
    pub version: u32,
    pub mode: &'static str,
}

/// The dispatch span of one invocation, a child of the current span (the HTTP request's, or
/// the queue's run span). Renamed `chat {model}` once the route has chosen the model, as the
/// GenAI conventions name inference spans.
pub fn invocation_span(labels: &InvocationLabels, id: uuid::Uuid) -> tracing::Span {
    tracing::info_span!(
        target: "genrt_runtime::invoke",
        "invoke",
        otel.name = %format!("invoke {}", labels.function),
        otel.status_code = Empty,
        gen_ai.operation.name = "chat",
        genrt.tenant = %labels.tenant,
        genrt.function = %labels.function,
        genrt.function.version = i64::from(labels.version),
        genrt.invocation.id = %id,
        genrt.mode = labels.mode,
    )
}

/// Records how the invocation ended on its span and in the metrics, and adds the spans of its
/// phases inside the actor tree. `result` holds the error code of a failed invocation;
/// `opened` is when the dispatch span was opened (the phases do not start before it).
pub fn record_outcome(
    metrics: &Metrics,
    span: &tracing::Span,
    opened: SystemTime,
    labels: &InvocationLabels,
    result: Result<&InvocationOutcome, &str>,
) {
    // Spans carry the real names; metric series only as many as the label caps allow.
    let bounded = metrics.bounded_labels(&labels.tenant, &labels.function, labels.version);
    let mut attrs = vec![
        KeyValue::new("gen_ai.operation.name", "chat"),
        KeyValue::new("genrt.tenant", bounded.tenant),
        KeyValue::new("genrt.function", bounded.function),
        KeyValue::new("genrt.function.version", bounded.version),
    ];
    let o = match result {
        Ok(o) => o,
        Err(code) => {
            span.record("otel.status_code", "ERROR");
            span.set_attribute("error.type", code.to_owned());
            attrs.push(KeyValue::new("error.type", code.to_owned()));
            let mut counted = attrs.clone();
            counted.push(KeyValue::new("genrt.mode", labels.mode));
            counted.push(KeyValue::new("genrt.status", code.to_owned()));
            metrics.invocations.add(1, &counted);
            return;
        }
    };
    let model = o.model.to_string();
    rename(span, format!("chat {model}"));
    span.set_attribute("gen_ai.request.model", model.clone());
    span.set_attribute("gen_ai.response.model", model.clone());
    span.set_attribute(
        "gen_ai.usage.input_tokens",
        i64::from(o.usage.prompt_tokens),
    );
    span.set_attribute(
        "gen_ai.usage.output_tokens",
        i64::from(o.usage.completion_tokens),
    );
    span.set_attribute(
        "gen_ai.response.finish_reasons",
        opentelemetry::Value::Array(
            vec![opentelemetry::StringValue::from(o.finish_reason.as_str())].into(),
        ),
    );
    span.set_attribute("genrt.cache_hit", o.cache_hit);

    attrs.push(KeyValue::new("gen_ai.request.model", model.clone()));
    let mut counted = attrs.clone();
    counted.push(KeyValue::new("genrt.mode", labels.mode));
    counted.push(KeyValue::new("genrt.status", "succeeded"));
    metrics.invocations.add(1, &counted);
    let t = o.timings;
    metrics.request_duration.record(t.total_ms / 1000.0, &attrs);
    for (kind, n) in [
        ("input", o.usage.prompt_tokens),
        ("output", o.usage.completion_tokens),
    ] {
        let mut typed = attrs.clone();
        typed.push(KeyValue::new("gen_ai.token.type", kind));
        metrics.token_usage.record(u64::from(n), &typed);
    }
    if !o.cache_hit {
        // Only work an engine did: a cache hit generated nothing and waited in no queue.
        metrics
            .prompt_tokens
            .add(u64::from(o.usage.prompt_tokens), &attrs);
        metrics
            .generation_tokens
            .add(u64::from(o.usage.completion_tokens), &attrs);
        metrics.queue_time.record(t.queue_ms / 1000.0, &attrs);
        if o.usage.completion_tokens > 0 {
            metrics
                .time_to_first_token
                .record(t.ttft_ms / 1000.0, &attrs);
        }
        if o.usage.completion_tokens > 1 {
            // vLLM's definition: decode time after the first token, per later token.
            let per = (t.total_ms - t.ttft_ms).max(0.0) / f64::from(o.usage.completion_tokens - 1);
            metrics.time_per_output_token.record(per / 1000.0, &attrs);
        }
    }
    phase_spans(span, opened, labels, o);
}

/// The actor tree's phases as spans under the dispatch span, placed by the outcome's timings
/// (milliseconds from the handler's receipt) ending now. The receipt came a little before
/// the dispatch span was opened (credentials and the function's version are read between),
/// so the phases start no earlier than `opened`.
fn phase_spans(
    parent: &tracing::Span,
    opened: SystemTime,
    labels: &InvocationLabels,
    o: &InvocationOutcome,
) {
    let parent_cx = parent.context();
    if !parent_cx.span().span_context().is_valid() {
        return; // Tracing is off.
    }
    let tracer = opentelemetry::global::tracer_provider().tracer("genrt");
    let end = SystemTime::now();
    let t = o.timings;
    let ms = |v: f64| Duration::from_secs_f64(v.max(0.0) / 1000.0);
    let start = end
        .checked_sub(ms(t.total_ms))
        .unwrap_or(end)
        .max(opened)
        .min(end);
    let model = o.model.to_string();
    let model_attr = KeyValue::new("gen_ai.request.model", model.clone());
    let function = tracer
        .span_builder(format!("function {}", labels.function))
        .with_kind(SpanKind::Internal)
        .with_start_time(start)
        .with_attributes([
            KeyValue::new("genrt.function", labels.function.clone()),
            KeyValue::new("genrt.cache_hit", o.cache_hit),
            model_attr.clone(),
        ])
        .start_with_context(&tracer, &parent_cx);
    let function_cx = parent_cx.with_span(function);
    let child = |name: String, from: SystemTime, to: SystemTime, attrs: Vec<KeyValue>| {
        let mut span = tracer
            .span_builder(name)
            .with_kind(SpanKind::Internal)
            .with_start_time(from.min(end))
            .with_attributes(attrs)
            .start_with_context(&tracer, &function_cx);
        opentelemetry::trace::Span::end_with_timestamp(&mut span, to.min(end).max(from));
    };
    if !o.cache_hit {
        let queued_until = start + ms(t.queue_ms);
        child(
            format!("model_queue {model}"),
            start,
            queued_until,
            vec![model_attr.clone()],
        );
        if t.load_ms > 0.0 {
            child(
                format!("cold_start {model}"),
                start,
                start + ms(t.load_ms),
                vec![model_attr.clone()],
            );
        }
        let prefilled = queued_until + ms(t.prefill_ms);
        child(
            format!("prefill {model}"),
            queued_until,
            prefilled,
            vec![
                model_attr.clone(),
                KeyValue::new(
                    "gen_ai.usage.input_tokens",
                    i64::from(o.usage.prompt_tokens),
                ),
                KeyValue::new(
                    "genrt.usage.cached_input_tokens",
                    i64::from(o.usage.cached_prompt_tokens),
                ),
            ],
        );
        child(
            format!("decode {model}"),
            prefilled,
            end,
            vec![
                model_attr,
                KeyValue::new(
                    "gen_ai.usage.output_tokens",
                    i64::from(o.usage.completion_tokens),
                ),
                KeyValue::new("genrt.time_to_first_token_ms", t.ttft_ms),
            ],
        );
    }
    let function = function_cx.span();
    function.set_status(Status::Ok);
    function.end_with_timestamp(end);
}

/// Renames a span once what names it is known. `otel.name` recorded late reaches only a span
/// that has not started yet (one that has no child yet), so the started span is renamed.
pub fn rename(span: &tracing::Span, name: String) {
    if !span.is_disabled() {
        span.context().span().update_name(name);
    }
}

/// The W3C `traceparent` of a span, when tracing is on.
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove("traceparent")
}

/// The `traceparent` of the current span: stored with queued work so that its run can link
/// back to the request that enqueued it.
pub fn current_traceparent() -> Option<String> {
    traceparent_of(&tracing::Span::current())
}

/// The remote context a `traceparent` names (an empty context when absent or malformed).
pub fn parent_from_traceparent(traceparent: Option<&str>) -> Context {
    let Some(tp) = traceparent else {
        return Context::new();
    };
    let carrier = HashMap::from([("traceparent".to_owned(), tp.to_owned())]);
    TraceContextPropagator::new().extract(&carrier)
}

/// Adds a link from `span` to the span a stored `traceparent` names.
pub fn link_to_traceparent(span: &tracing::Span, traceparent: Option<&str>) {
    let cx = parent_from_traceparent(traceparent);
    let remote: SpanContext = cx.span().span_context().clone();
    if remote.is_valid() {
        span.add_link_with_attributes(remote, vec![KeyValue::new("genrt.link", "enqueued_by")]);
    }
}
