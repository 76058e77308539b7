//! Acceptance for [ops] tracing and metrics over OTLP: the real `genrt` binary runs with the
//! standard `OTEL_*` variables pointing at an in-process OTLP/HTTP receiver (protobuf bodies
//! decoded with the collector's message types), and
//!
//! - one synchronous invocation sent with a W3C `traceparent` arrives as one span tree in the
//!   caller's trace: the HTTP server span (child of the caller's span) → `auth` and the
//!   dispatch span `chat <model>` (GenAI attributes, tenant, function) → `function <name>` →
//!   `model_queue`, `prefill`, `decode`, in order in time;
//! - an asynchronous invocation runs in a trace of its own, linked to the span of the request
//!   that enqueued it, and its webhook is a span of that run whose `traceparent` the webhook
//!   request carries;
//! - the metrics arrive too: token usage, request counts and durations.
//!
//! The binary is `target/release/genrt` as it is (built if missing): after changing the
//! runtime, rebuild it (`make build`) or run through `make test`, which builds it first.

use std::time::{Duration, Instant};

use genrt_tests::otlp::{attr, OtlpReceiver, ReceivedSpan};
use genrt_tests::process::base_config;
use genrt_tests::{token, Db, ServerProcess, TempDir, WebhookReceiver, MODEL};
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::metrics::v1::metric;
use reqwest::Method;
use serde_json::{json, Value};

const TENANT: &str = "otel-tenant";
const FUNCTION: &str = "otel-probe";
const MAX_TOKENS: i64 = 6;
const SERVICE: &str = "genrt-telemetry-test";
/// From the invocation until its spans have been exported (the batch delay is set to 200 ms).
const EXPORT_LIMIT: Duration = Duration::from_secs(30);
const SERVER: i32 = 2;
const CONSUMER: i32 = 5;
const CLIENT: i32 = 3;

fn random_hex(bytes: usize) -> String {
    uuid::Uuid::new_v4().simple().to_string()[..bytes * 2].to_owned()
}

async fn wait_for<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + EXPORT_LIMIT;
    loop {
        if let Some(found) = probe() {
            return found;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn one<'a>(spans: &'a [ReceivedSpan], name: &str) -> &'a ReceivedSpan {
    let found: Vec<_> = spans.iter().filter(|s| s.span.name == name).collect();
    assert_eq!(
        found.len(),
        1,
        "expected one span `{name}`, got {}: {:?}",
        found.len(),
        spans.iter().map(|s| &s.span.name).collect::<Vec<_>>()
    );
    found[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_invocation_is_one_trace_with_genai_attributes_and_metrics_arrive() {
    let otlp = OtlpReceiver::start().await;
    let hooks = WebhookReceiver::start().await;
    let dir = TempDir::new("genrt-otel");
    let config = format!(
        "{}[queue]\npoll_ms = 100\n\n[webhooks]\nallow_private = [\"127.0.0.1\"]\n",
        base_config(&dir.0, &Db::Sqlite)
    );
    let endpoint = otlp.endpoint();
    let server = ServerProcess::start_with_env(
        &dir.0,
        &config,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_SERVICE_NAME", SERVICE),
            ("OTEL_METRIC_EXPORT_INTERVAL", "500"),
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
        ],
    )
    .await;
    let t = token(TENANT);
    let (status, body) = server
        .call(
            Method::POST,
            "/v1/functions",
            &t,
            Some(json!({
                "name": FUNCTION,
                "model": MODEL,
                "prompt": "Say hello to {{ who }}.",
                "params": {"max_tokens": MAX_TOKENS, "temperature": 0},
                "cache": {"enabled": false}
            })),
        )
        .await;
    assert!(status == 200 || status == 201, "deploy: {status} {body}");

    // The caller's trace and span.
    let trace_id = random_hex(16);
    let caller_span = random_hex(8);
    let response = server
        .client
        .post(format!("{}/v1/functions/{FUNCTION}/invoke", server.base()))
        .bearer_auth(&t)
        .header("traceparent", format!("00-{trace_id}-{caller_span}-01"))
        .json(&json!({"input": {"who": "Ada"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let answer: Value = response.json().await.unwrap();
    let output_tokens = answer["usage"]["completion_tokens"].as_i64().unwrap();
    let input_tokens = answer["usage"]["prompt_tokens"].as_i64().unwrap();

    let spans = wait_for("the invocation's spans", || {
        let spans: Vec<_> = otlp
            .spans()
            .into_iter()
            .filter(|s| s.trace_id() == trace_id)
            .collect();
        spans
            .iter()
            .any(|s| s.span.name.starts_with("decode "))
            .then_some(spans)
    })
    .await;
    // Every span of the invocation is in the caller's trace, from this service.
    assert!(spans.iter().all(|s| s.service == SERVICE), "{spans:?}");

    let http = one(&spans, "POST /v1/functions/{name}/invoke");
    assert_eq!(
        http.parent_id(),
        caller_span,
        "the server span continues the caller's span"
    );
    assert_eq!(http.span.kind, SERVER);
    assert_eq!(http.int_attr("http.response.status_code"), Some(200));
    assert_eq!(
        http.str_attr("http.route"),
        Some("/v1/functions/{name}/invoke")
    );

    let auth = one(&spans, "auth");
    assert_eq!(auth.parent_id(), http.span_id());
    assert_eq!(auth.str_attr("genrt.tenant"), Some(TENANT));

    let dispatch = one(&spans, &format!("chat {MODEL}"));
    assert_eq!(dispatch.parent_id(), http.span_id());
    assert_eq!(dispatch.str_attr("gen_ai.operation.name"), Some("chat"));
    assert_eq!(dispatch.str_attr("gen_ai.request.model"), Some(MODEL));
    assert_eq!(dispatch.str_attr("genrt.tenant"), Some(TENANT));
    assert_eq!(dispatch.str_attr("genrt.function"), Some(FUNCTION));
    assert_eq!(
        dispatch.int_attr("gen_ai.request.max_tokens"),
        Some(MAX_TOKENS)
    );
    assert_eq!(
        dispatch.double_attr("gen_ai.request.temperature"),
        Some(0.0)
    );
    assert_eq!(
        dispatch.int_attr("gen_ai.usage.input_tokens"),
        Some(input_tokens)
    );
    assert_eq!(
        dispatch.int_attr("gen_ai.usage.output_tokens"),
        Some(output_tokens)
    );
    assert!(input_tokens > 0 && (1..=MAX_TOKENS).contains(&output_tokens));
    match dispatch.attr("gen_ai.response.finish_reasons") {
        Some(any_value::Value::ArrayValue(a)) => {
            let reasons: Vec<_> = a.values.iter().filter_map(|v| v.value.clone()).collect();
            assert_eq!(
                reasons,
                vec![any_value::Value::StringValue(
                    answer["finish_reason"].as_str().unwrap().to_owned()
                )]
            );
        }
        other => panic!("gen_ai.response.finish_reasons: {other:?}"),
    }

    let function = one(&spans, &format!("function {FUNCTION}"));
    assert_eq!(function.parent_id(), dispatch.span_id());
    let queue = one(&spans, &format!("model_queue {MODEL}"));
    let prefill = one(&spans, &format!("prefill {MODEL}"));
    let decode = one(&spans, &format!("decode {MODEL}"));
    for phase in [queue, prefill, decode] {
        assert_eq!(phase.parent_id(), function.span_id(), "{}", phase.span.name);
        assert!(phase.span.start_time_unix_nano >= function.span.start_time_unix_nano);
        assert!(phase.span.end_time_unix_nano <= function.span.end_time_unix_nano);
    }
    assert!(queue.span.end_time_unix_nano <= prefill.span.start_time_unix_nano);
    assert!(prefill.span.end_time_unix_nano <= decode.span.start_time_unix_nano);
    assert_eq!(
        decode.int_attr("gen_ai.usage.output_tokens"),
        Some(output_tokens)
    );
    // The dispatch span holds the phases, and the server span the dispatch.
    assert!(dispatch.span.start_time_unix_nano <= function.span.start_time_unix_nano);
    assert!(http.span.end_time_unix_nano >= dispatch.span.end_time_unix_nano);

    // An asynchronous invocation: its run is a trace of its own, linked to the enqueuing
    // request, and its webhook carries the run's trace.
    let enqueue_trace = random_hex(16);
    let response = server
        .client
        .post(format!("{}/v1/functions/{FUNCTION}/invoke", server.base()))
        .bearer_auth(&t)
        .header(
            "traceparent",
            format!("00-{enqueue_trace}-{}-01", random_hex(8)),
        )
        .json(&json!({
            "input": {"who": "Grace"},
            "mode": "async",
            "webhook": {"url": hooks.url("/hook")}
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 202);
    let hook = wait_for("the webhook", || hooks.received().into_iter().next()).await;
    let header = hook
        .header("traceparent")
        .expect("the webhook carries traceparent");
    let parts: Vec<&str> = header.split('-').collect();
    assert_eq!(parts.len(), 4, "{header}");
    let (run_trace, hook_parent) = (parts[1].to_owned(), parts[2].to_owned());
    assert_ne!(run_trace, enqueue_trace, "the run is a trace of its own");
    let run_spans = wait_for("the run's spans", || {
        let spans: Vec<_> = otlp
            .spans()
            .into_iter()
            .filter(|s| s.trace_id() == run_trace)
            .collect();
        let webhook = spans.iter().any(|s| s.span.name.starts_with("webhook "));
        let run = spans.iter().any(|s| s.span.name.starts_with("run "));
        (webhook && run).then_some(spans)
    })
    .await;
    let enqueue_http = wait_for("the enqueuing request's span", || {
        otlp.spans()
            .into_iter()
            .find(|s| s.trace_id() == enqueue_trace && s.span.kind == SERVER)
    })
    .await;
    let run = one(&run_spans, &format!("run {FUNCTION}"));
    assert_eq!(run.span.kind, CONSUMER);
    assert!(run.span.parent_span_id.is_empty(), "the run is a root span");
    assert!(
        run.span
            .links
            .iter()
            .any(|l| genrt_tests::otlp::hex(&l.trace_id) == enqueue_trace
                && genrt_tests::otlp::hex(&l.span_id) == enqueue_http.span_id()),
        "the run links to the request that enqueued it: {:?}",
        run.span.links
    );
    let dispatch = one(&run_spans, &format!("chat {MODEL}"));
    assert_eq!(dispatch.parent_id(), run.span_id());
    assert_eq!(dispatch.str_attr("genrt.mode"), Some("async"));
    one(&run_spans, &format!("decode {MODEL}"));
    let webhook = one(&run_spans, "webhook invocation.succeeded");
    assert_eq!(webhook.span.kind, CLIENT);
    assert_eq!(webhook.parent_id(), run.span_id());
    assert_eq!(
        webhook.span_id(),
        hook_parent,
        "the request carries the webhook span"
    );
    assert_eq!(webhook.int_attr("http.response.status_code"), Some(200));

    // Metrics arrive through OTLP as well: two invocations' token usage, counts, durations.
    let usage = wait_for("gen_ai.client.token.usage for both invocations", || {
        let m = otlp.metric("gen_ai.client.token.usage")?;
        let Some(metric::Data::Histogram(h)) = m.data else {
            return None;
        };
        let input: u64 = h
            .data_points
            .iter()
            .filter(|p| {
                matches!(attr(&p.attributes, "gen_ai.token.type"),
                    Some(any_value::Value::StringValue(s)) if s == "input")
            })
            .map(|p| p.count)
            .sum();
        (input >= 2).then_some(h)
    })
    .await;
    let output_sum: f64 = usage
        .data_points
        .iter()
        .filter(|p| {
            matches!(attr(&p.attributes, "gen_ai.token.type"),
                Some(any_value::Value::StringValue(s)) if s == "output")
        })
        .filter_map(|p| p.sum)
        .sum();
    assert!(output_sum >= output_tokens as f64, "{usage:?}");
    let counted = otlp.metric("genrt.invocations").expect("genrt.invocations");
    let Some(metric::Data::Sum(sum)) = counted.data else {
        panic!("genrt.invocations is a sum: {counted:?}");
    };
    let succeeded: i64 = sum
        .data_points
        .iter()
        .filter(|p| {
            matches!(attr(&p.attributes, "genrt.status"),
                Some(any_value::Value::StringValue(s)) if s == "succeeded")
        })
        .map(|p| match p.value {
            Some(opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsInt(v)) => v,
            _ => 0,
        })
        .sum();
    assert_eq!(succeeded, 2, "{sum:?}");
    let duration = otlp
        .metric("gen_ai.server.request.duration")
        .expect("gen_ai.server.request.duration");
    assert_eq!(duration.unit, "s");
    assert!(otlp.metric("gen_ai.server.time_to_first_token").is_some());
    assert!(otlp.metric("process.memory.usage").is_some());

    drop(server);
    hooks.stop().await;
    otlp.stop().await;
}

/// Every entry point reaches the actor tree through the invocation service, whose dispatch
/// span carries the mode it was admitted for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_entry_point_labels_its_dispatch_span_with_its_mode() {
    let otlp = OtlpReceiver::start().await;
    let dir = TempDir::new("genrt-otel-modes");
    let config = format!(
        "{}[queue]\npoll_ms = 100\n",
        base_config(&dir.0, &Db::Sqlite)
    );
    let endpoint = otlp.endpoint();
    let server = ServerProcess::start_with_env(
        &dir.0,
        &config,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_SERVICE_NAME", SERVICE),
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
        ],
    )
    .await;
    let t = token("otel-modes");
    let post = |path: String, body: Value| {
        let (server, t) = (&server, &t);
        async move {
            let response = server
                .client
                .post(format!("{}{path}", server.base()))
                .bearer_auth(t)
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            // Read to the end, streams included.
            let _ = response.bytes().await;
            status
        }
    };
    // Cached (greedy), so that prewarming is allowed; each call gets its own input, so that
    // none is answered from the cache before reaching its span.
    let deploy = json!({"name": "modes", "model": MODEL, "prompt": "Say hello to {{ who }}.",
                        "params": {"max_tokens": 4, "temperature": 0}});
    assert_eq!(post("/v1/functions".into(), deploy).await, 201);
    let invoke = "/v1/functions/modes/invoke".to_owned();
    let cases = [
        (invoke.clone(), json!({"input": {"who": "sync"}})),
        (
            invoke.clone(),
            json!({"input": {"who": "stream"}, "stream": true}),
        ),
        (
            invoke.clone(),
            json!({"input": {"who": "async"}, "mode": "async"}),
        ),
        (
            "/v1/functions/modes/batches".into(),
            json!({"inputs": [{"who": "batch"}]}),
        ),
        (
            "/v1/functions/modes/evaluate".into(),
            json!({"cases": [{"input": {"who": "evaluate"}, "reference": "hello"}]}),
        ),
        (
            "/v1/functions/modes/prewarm".into(),
            json!({"inputs": [{"who": "prewarm"}]}),
        ),
        (
            "/openai/v1/chat/completions".into(),
            json!({"model": "modes", "max_tokens": 4, "messages": [{"role": "user", "content": "{\"who\": \"openai\"}"}]}),
        ),
        (
            "/openai/v1/chat/completions".into(),
            json!({"model": "modes", "max_tokens": 4, "stream": true,
                "messages": [{"role": "user", "content": "{\"who\": \"openai-stream\"}"}]}),
        ),
    ];
    for (path, body) in cases {
        let status = post(path.clone(), body.clone()).await;
        assert!(status == 200 || status == 202, "{path} {body}: {status}");
    }
    // A trigger, signed as its sender would.
    let (status, trigger) = server
        .call(
            Method::POST,
            "/v1/functions/modes/triggers",
            &t,
            Some(json!({"input_map": {"who": "/who"}})),
        )
        .await;
    assert_eq!(status, 201, "{trigger}");
    let payload = json!({"who": "trigger"}).to_string();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let mut request = server
        .client
        .post(format!(
            "{}{}",
            server.base(),
            trigger["url"].as_str().unwrap()
        ))
        .header("content-type", "application/json");
    for (name, value) in genrt_tests::node::node_sign(
        trigger["secret"].as_str().unwrap(),
        "msg_modes",
        now,
        &payload,
    ) {
        request = request.header(name, value);
    }
    assert_eq!(
        request
            .body(payload)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        202
    );

    let expected = [
        "sync",
        "stream",
        "async",
        "batch",
        "trigger",
        "evaluate",
        "prewarm",
        "openai",
        "openai_stream",
    ];
    let modes = wait_for("a dispatch span of every mode", || {
        let modes: std::collections::BTreeSet<String> = otlp
            .spans()
            .iter()
            .filter(|s| s.str_attr("genrt.function") == Some("modes"))
            .filter_map(|s| s.str_attr("genrt.mode").map(str::to_owned))
            .collect();
        expected.iter().all(|m| modes.contains(*m)).then_some(modes)
    })
    .await;
    assert_eq!(
        modes,
        expected.iter().map(|m| m.to_string()).collect(),
        "no span carries another mode"
    );
    drop(server);
    otlp.stop().await;
}
