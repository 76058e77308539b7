//! Webhooks, both ways, on the fake engine (`echo: <user text>`), each test in a few seconds.
//!
//! - Triggers: an attacker who captured one validly signed GitHub delivery posts it again
//!   under a new `X-GitHub-Delivery` id (that header is not signed), hoping for a second
//!   billed run. It must be refused as a replay and run once.
//! - Deliveries: a tenant points its callbacks at a receiver that accepts connections and
//!   never answers, hoping to hold every delivery slot of the node. Another tenant's delivery
//!   must still go out within a second of being due.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use genrt_tests::{token, Db, TestServer, WebhookReceiver, MODEL};
use reqwest::Method;
use serde_json::{json, Value};

/// The default `webhooks.max_in_flight_per_tenant`.
const CAP: usize = 4;
/// More due deliveries than the node has slots (16), so that without a per-tenant cap the
/// stalled tenant would hold them all.
const STALLED_DELIVERIES: usize = 24;

fn function(name: &str) -> Value {
    json!({"name": name, "model": MODEL, "prompt": "Hello {{ who }}.",
           "params": {"max_tokens": 8}, "cache": {"enabled": false}})
}

/// The invocations of `function` that `tenant` can see, every status.
async fn invocations(s: &TestServer, t: &str, function: &str) -> Vec<Value> {
    let (status, body) = s
        .call(
            Method::GET,
            &format!("/v1/invocations?function={function}&limit=200"),
            t,
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["invocations"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_github_delivery_with_new_id_runs_once() {
    let s = TestServer::start_fake(Db::Sqlite, |c| c.queue.poll_ms = 20).await;
    let t = token("hooked");
    assert_eq!(s.deploy(&t, function("greet")).await.0, 201);
    let (status, trigger) = s
        .call(
            Method::POST,
            "/v1/functions/greet/triggers",
            &t,
            Some(json!({"scheme": "github", "input_map": {"who": "/sender/login"}})),
        )
        .await;
    assert_eq!(status, 201, "{trigger}");
    let secret = trigger["secret"].as_str().unwrap();
    let hook = format!("{}{}", s.base, trigger["url"].as_str().unwrap());
    let post = |body: &str, signature: &str, delivery: Option<&str>| {
        let mut request = s
            .client
            .post(&hook)
            .header("content-type", "application/json")
            .header("x-github-event", "issues")
            .header("x-hub-signature-256", signature)
            .body(body.to_owned());
        if let Some(delivery) = delivery {
            request = request.header("x-github-delivery", delivery);
        }
        genrt_tests::reply(request)
    };

    let body = json!({"action": "opened", "sender": {"login": "octocat"}}).to_string();
    let signature = format!("sha256={}", genrt_tests::github_signature(secret, &body));
    let first = post(
        &body,
        &signature,
        Some("72d3162e-cc78-11e3-81ab-4c9367dc0958"),
    )
    .await;
    assert_eq!(first.status, 202, "{:?}", first.body);

    // The captured delivery again, as an attacker would send it: a fresh delivery id, none at
    // all, the signature's hex in upper case. Each is the same signed message.
    let upper = format!(
        "sha256={}",
        genrt_tests::github_signature(secret, &body).to_ascii_uppercase()
    );
    for (signature, delivery) in [
        (
            signature.as_str(),
            Some("0b989ba4-242f-11e5-81e1-c7b6f0a6b4c2"),
        ),
        (signature.as_str(), None),
        (upper.as_str(), Some("a5b1c2d3-0000-4000-8000-000000000001")),
    ] {
        let replay = post(&body, signature, delivery).await;
        assert_eq!(
            (replay.status, replay.code()),
            (409, "replayed_webhook"),
            "a replay with delivery id {delivery:?} and signature {signature} was not refused: {:?}",
            replay.body
        );
    }

    // A new event is still accepted: what is refused is the replay, not the sender.
    let other = json!({"action": "closed", "sender": {"login": "hubot"}}).to_string();
    let second = post(
        &other,
        &format!("sha256={}", genrt_tests::github_signature(secret, &other)),
        Some("0b989ba4-242f-11e5-81e1-c7b6f0a6b4c2"),
    )
    .await;
    assert_eq!(second.status, 202, "{:?}", second.body);

    s.eventually("both runs to end", Duration::from_secs(20), || async {
        invocations(&s, &t, "greet")
            .await
            .iter()
            .all(|i| i["status"] == "succeeded")
    })
    .await;
    let runs = invocations(&s, &t, "greet").await;
    let octocat = runs
        .iter()
        .filter(|i| i["input"]["who"] == "octocat")
        .count();
    assert_eq!(
        octocat, 1,
        "the captured delivery ran {octocat} times: {runs:?}"
    );
    assert_eq!(runs.len(), 2, "{runs:?}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_receiver_of_one_tenant_does_not_delay_another() {
    let s = TestServer::start_fake(Db::Sqlite, |c| {
        c.webhooks.allow_private = vec!["127.0.0.1".into()];
        // Longer than the test: the stalled tenant's attempts never end on their own.
        c.webhooks.timeout_s = 60;
        c.queue.poll_ms = 20;
    })
    .await;
    // Receipt times are `Instant`s; the delivery's due time is wall-clock.
    let (wall, mono) = (Utc::now(), Instant::now());
    let stalled = WebhookReceiver::start_with_hold(Duration::from_secs(3600)).await;
    let prompt = WebhookReceiver::start().await;
    let (a, b) = (token("stalling"), token("waiting"));
    assert_eq!(s.deploy(&a, function("notify")).await.0, 201);
    assert_eq!(s.deploy(&b, function("notify")).await.0, 201);

    for i in 0..STALLED_DELIVERIES {
        let (status, body) = s
            .invoke(
                &a,
                "notify",
                json!({"input": {"who": format!("a{i}")}, "mode": "async",
                       "webhook": {"url": stalled.url("/hook")}}),
            )
            .await;
        assert_eq!(status, 202, "{body}");
    }
    // Every one of A's deliveries is due (committed with its invocation's end), and the
    // stalled receiver holds those the node sent.
    s.eventually(
        "tenant A's runs to end",
        Duration::from_secs(20),
        || async {
            let runs = invocations(&s, &a, "notify").await;
            runs.len() == STALLED_DELIVERIES && runs.iter().all(|i| i["status"] == "succeeded")
        },
    )
    .await;
    s.eventually(
        "tenant A's deliveries to stall",
        Duration::from_secs(10),
        || async { stalled.total() >= CAP },
    )
    .await;
    // Rounds enough for the node to take more of A's deliveries, if it would.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let (status, body) = s
        .invoke(
            &b,
            "notify",
            json!({"input": {"who": "b"}, "mode": "async",
                   "webhook": {"url": prompt.url("/hook")}}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let id = body["invocation_id"].as_str().unwrap().to_owned();
    s.eventually(
        "tenant B's delivery while tenant A's receiver stalls",
        Duration::from_secs(10),
        || async { prompt.total() >= 1 },
    )
    .await;
    let arrived =
        wall + chrono::Duration::from_std(prompt.received()[0].at - mono).expect("a short time");
    let (status, deliveries) = s
        .call(
            Method::GET,
            &format!("/v1/webhooks/deliveries?invocation_id={id}"),
            &b,
            None,
        )
        .await;
    assert_eq!(status, 200, "{deliveries}");
    let due: DateTime<Utc> = deliveries["deliveries"][0]["next_attempt_at"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no due time in {deliveries}"));
    let late = arrived - due;
    assert!(
        late < chrono::Duration::seconds(1),
        "tenant B's delivery arrived {late} after it was due"
    );
    assert!(
        stalled.total() <= CAP,
        "tenant A holds {} deliveries in flight, more than its cap of {CAP}",
        stalled.total()
    );
    s.stop().await;
}
