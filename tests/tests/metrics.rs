//! Acceptance for [ops] metrics: `GET /metrics`, scraped after known traffic, shows the
//! expected counts and histogram buckets. The traffic, on a fresh in-process server (its
//! meter provider is its own, so nothing else counts into it): three successful invocations
//! of different inputs, the first input again (answered from the cache), one input the
//! function's schema refuses (422) and one call of a missing function (404).

use std::collections::BTreeMap;

use genrt_tests::{token, Db, TestServer, MODEL};
use reqwest::Method;
use serde_json::json;

const TENANT: &str = "metrics-tenant";
const FUNCTION: &str = "metrics-probe";
const MAX_TOKENS: u64 = 4;

/// One sample of the text exposition: its name and labels.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the Prometheus text format (the subset an exporter writes: no timestamps, escaped
/// quotes in label values). Hand-written: the parsing crates on crates.io are unmaintained,
/// and a test needs only samples.
fn parse(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("a sample has a value");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in `{line}`")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series.to_owned(), BTreeMap::new()),
            Some((name, rest)) => {
                let rest = rest.strip_suffix('}').expect("labels end with }");
                let mut labels = BTreeMap::new();
                let mut chars = rest.chars().peekable();
                loop {
                    let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
                    if key.is_empty() {
                        break;
                    }
                    assert_eq!(chars.next(), Some('"'), "`{line}`");
                    let mut value = String::new();
                    while let Some(c) = chars.next() {
                        match c {
                            '\\' => value.push(match chars.next() {
                                Some('n') => '\n',
                                Some(other) => other,
                                None => break,
                            }),
                            '"' => break,
                            c => value.push(c),
                        }
                    }
                    labels.insert(key.trim_start_matches(',').to_owned(), value);
                    if chars.peek() == Some(&',') {
                        chars.next();
                    }
                }
                (name.to_owned(), labels)
            }
        };
        out.push(Sample {
            name,
            labels,
            value,
        });
    }
    out
}

/// The sum of the samples named `name` whose labels include all of `with`.
fn total(samples: &[Sample], name: &str, with: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            with.iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_known_traffic() {
    let s = TestServer::start_adjusted(Db::Sqlite, |config| {
        for model in &mut config.models {
            model.threads = 1;
        }
    })
    .await;
    let t = token(TENANT);
    let (status, body) = s
        .deploy(
            &t,
            json!({
                "name": FUNCTION,
                "model": MODEL,
                "prompt": "Say hello to {{ who }}.",
                "input_schema": {
                    "type": "object",
                    "properties": {"who": {"type": "string", "maxLength": 20}},
                    "required": ["who"]
                },
                "params": {"max_tokens": MAX_TOKENS, "temperature": 0},
                "cache": {"enabled": true}
            }),
        )
        .await;
    assert!(status == 200 || status == 201, "deploy: {status} {body}");
    for who in ["Ada", "Grace", "Edsger", "Ada"] {
        let (status, body) = s.invoke(&t, FUNCTION, json!({"input": {"who": who}})).await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, body) = s.invoke(&t, FUNCTION, json!({"input": {"who": 7}})).await;
    assert_eq!(status, 422, "{body}");
    let (status, body) = s.invoke(&t, "no-such-function", json!({"input": {}})).await;
    assert_eq!(status, 404, "{body}");

    // Not on the API listener, which callers reach: the series name tenants and functions.
    let response = s.request(Method::GET, "/metrics", None, None).await;
    assert_eq!(response.status().as_u16(), 404);
    // On its own loopback listener, with no token configured, operators scrape it like the
    // probes.
    let response = s.scrape(None).await;
    assert_eq!(response.status().as_u16(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let text = response.text().await.unwrap();
    let samples = parse(&text);
    let of_function = [("genrt_tenant", TENANT), ("genrt_function", FUNCTION)];
    let check = |name: &str, with: &[(&str, &str)], expected: f64| {
        let got = total(&samples, name, with);
        assert_eq!(got, expected, "{name} {with:?}\n{text}");
    };

    // Request counts by tenant, function, model and status.
    let succeeded = [
        of_function[0],
        of_function[1],
        ("gen_ai_request_model", MODEL),
        ("genrt_status", "succeeded"),
    ];
    check("genrt_invocations_total", &succeeded, 4.0);
    // By version too (a canary's numbers read apart from the rest).
    check(
        "genrt_invocations_total",
        &[of_function[1], ("genrt_function_version", "1")],
        5.0,
    );
    check(
        "genrt_invocations_total",
        &[of_function[1], ("genrt_function_version", "2")],
        0.0,
    );
    check(
        "genrt_invocations_total",
        &[
            of_function[0],
            of_function[1],
            ("genrt_status", "invalid_input"),
        ],
        1.0,
    );
    // The cache: three misses, one hit.
    check("genrt_cache_hits_total", &[], 1.0);
    check("genrt_cache_misses_total", &[], 3.0);

    // End-to-end latency: four observations, every bucket cumulative, +Inf holding all.
    let duration = "gen_ai_server_request_duration_seconds";
    check(&format!("{duration}_count"), &of_function, 4.0);
    let buckets: Vec<(f64, f64)> = samples
        .iter()
        .filter(|s| s.name == format!("{duration}_bucket"))
        .filter(|s| s.labels.get("genrt_function").map(String::as_str) == Some(FUNCTION))
        .map(|s| (s.labels["le"].parse::<f64>().unwrap(), s.value))
        .collect();
    assert_eq!(buckets.len(), 15, "14 bounds and +Inf: {buckets:?}");
    assert!(
        buckets
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
        "{buckets:?}"
    );
    assert_eq!(buckets.last().unwrap(), &(f64::INFINITY, 4.0));
    assert!(
        total(&samples, &format!("{duration}_sum"), &of_function) > 0.0,
        "durations are positive"
    );

    // Tokens: every answer has at most MAX_TOKENS output tokens and more than one prompt
    // token; the engine processed three of them (the cache hit generated nothing).
    let usage = "gen_ai_client_token_usage_bucket";
    let output = [("gen_ai_token_type", "output"), of_function[1]];
    let input = [("gen_ai_token_type", "input"), of_function[1]];
    check(usage, &[output[0], output[1], ("le", "4")], 4.0);
    check(usage, &[output[0], output[1], ("le", "+Inf")], 4.0);
    check(usage, &[input[0], input[1], ("le", "1")], 0.0);
    check(usage, &[input[0], input[1], ("le", "+Inf")], 4.0);
    let generated = total(&samples, "genrt_generation_tokens_total", &of_function);
    assert!(
        (3.0..=3.0 * MAX_TOKENS as f64).contains(&generated),
        "{generated}\n{text}"
    );
    assert!(total(&samples, "genrt_prompt_tokens_total", &of_function) > 3.0);

    // Queue time, TTFT and time per output token: engine work only.
    check("genrt_request_queue_time_seconds_count", &of_function, 3.0);
    check(
        "gen_ai_server_time_to_first_token_seconds_count",
        &of_function,
        3.0,
    );

    // HTTP requests by route and status, the 404 of a missing function included.
    let invoke_route = ("http_route", "/v1/functions/{name}/invoke");
    let http = "http_server_request_duration_seconds_count";
    check(
        http,
        &[invoke_route, ("http_response_status_code", "200")],
        4.0,
    );
    check(
        http,
        &[invoke_route, ("http_response_status_code", "422")],
        1.0,
    );
    check(
        http,
        &[invoke_route, ("http_response_status_code", "404")],
        1.0,
    );

    // The model layer, read from the actor tree: one replica, loaded once, idle now.
    let model = [("gen_ai_request_model", MODEL)];
    check("genrt_model_replicas", &model, 1.0);
    check("genrt_model_busy_slots", &model, 0.0);
    check("genrt_model_cold_starts_total", &model, 1.0);
    check("genrt_model_restarts_total", &model, 0.0);
    check("genrt_model_cold_start_duration_seconds_count", &model, 1.0);
    assert!(total(&samples, "genrt_model_memory_usage_bytes", &model) > 1e6);
    // On the CPU nothing is held on a GPU; the gauge is there all the same.
    assert!(
        samples
            .iter()
            .any(|s| s.name == "genrt_model_gpu_memory_usage_bytes"),
        "{text}"
    );
    check("genrt_model_gpu_memory_usage_bytes", &model, 0.0);
    check("genrt_invocations_in_flight", &[], 0.0);
    check("genrt_async_queued", &[], 0.0);
    // The process.
    assert!(
        total(&samples, "process_memory_usage_bytes", &[]) > 1e6,
        "{text}"
    );
    assert!(
        total(&samples, "process_cpu_time_seconds_total", &[]) > 0.0,
        "{text}"
    );

    s.stop().await;
}
