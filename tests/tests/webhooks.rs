//! [tenancy] webhooks end to end, on SQLite and Postgres: results announced to a real HTTP
//! receiver and verified with the official `standardwebhooks` npm package (also across a
//! secret rotation), retries keeping one `webhook-id`, 410 disabling an endpoint, the SSRF
//! guard, and incoming triggers signed by that package (tampered, stale and replayed ones
//! refused) or GitHub-style.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use genrt_tests::node::{node, node_sign};
use genrt_tests::{token, Db, TempDir, TestServer, MODEL};
use reqwest::Method;
use serde_json::{json, Value};

genrt_tests::on_both_databases!(
    results_are_signed_verifiable_and_survive_rotation,
    failed_deliveries_retry_with_one_id_and_410_disables,
    triggers_accept_signed_events_and_refuse_the_rest,
);

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    headers: Vec<(String, String)>,
    body: String,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A webhook receiver on loopback that records every POST and answers with the queued
/// statuses, then 200.
#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<Received>>>,
    answers: Arc<Mutex<VecDeque<u16>>>,
}

impl Receiver {
    async fn start() -> (Self, String) {
        let receiver = Receiver::default();
        let state = receiver.clone();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(web::Data::new(state.clone()))
                .default_service(web::to(record))
        })
        .workers(1)
        .disable_signals()
        .bind("127.0.0.1:0")
        .unwrap();
        let addr = server.addrs()[0];
        tokio::spawn(server.run());
        (receiver, format!("http://127.0.0.1:{}/hook", addr.port()))
    }

    fn got(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    fn answer_next(&self, statuses: &[u16]) {
        self.answers.lock().unwrap().extend(statuses);
    }
}

async fn record(req: HttpRequest, body: web::Bytes, state: web::Data<Receiver>) -> HttpResponse {
    let headers = req
        .headers()
        .iter()
        .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    state.got.lock().unwrap().push(Received {
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    });
    let status = state.answers.lock().unwrap().pop_front().unwrap_or(200);
    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap()).finish()
}

async fn server(db: Db, allow_loopback: bool) -> TestServer {
    let data = TempDir::new("genrt-webhooks");
    let mut config = TestServer::config(&db, &data);
    if allow_loopback {
        config.webhooks.allow_private = vec!["127.0.0.1".into(), "::1".into()];
    }
    config.webhooks.retry_schedule_s = vec![1, 1];
    config.webhooks.jitter = 0.0;
    config.queue.poll_ms = 100;
    TestServer::start_with(config, data).await
}

fn function(name: &str) -> Value {
    json!({
        "name": name,
        "model": MODEL,
        "prompt": "Say hello to {{ who }}.",
        "params": {"max_tokens": 4, "temperature": 0},
        "cache": {"enabled": false}
    })
}

async fn invoke_async(s: &TestServer, t: &str, name: &str, who: &str, url: &str) -> String {
    let (status, body) = s
        .invoke(
            t,
            name,
            json!({"input": {"who": who}, "mode": "async", "webhook": {"url": url}}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    body["invocation_id"].as_str().unwrap().to_owned()
}

async fn wait_for(receiver: &Receiver, n: usize) -> Vec<Received> {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let got = receiver.got();
        if got.len() >= n {
            return got;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the receiver got {} of {n} webhooks",
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn node_verify(secret: &str, r: &Received) -> Value {
    let headers: serde_json::Map<String, Value> =
        ["webhook-id", "webhook-timestamp", "webhook-signature"]
            .iter()
            .map(|n| (n.to_string(), json!(r.header(n).unwrap_or_default())))
            .collect();
    node(
        "verify",
        json!({"secret": secret, "headers": headers, "body": r.body}),
    )
}

async fn secrets(s: &TestServer, t: &str) -> Vec<String> {
    let (status, body) = s.call(Method::GET, "/v1/webhooks/secret", t, None).await;
    assert_eq!(status, 200, "{body}");
    body["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

async fn results_are_signed_verifiable_and_survive_rotation(db: Db) {
    let s = server(db, true).await;
    let (receiver, url) = Receiver::start().await;
    let t = token("hooked");
    assert_eq!(s.deploy(&t, function("greet")).await.0, 201);

    let id = invoke_async(&s, &t, "greet", "Ada", &url).await;
    let got = wait_for(&receiver, 1).await;
    let first = &got[0];
    let event: Value = serde_json::from_str(&first.body).unwrap();
    assert_eq!(event["type"], "invocation.succeeded");
    assert_eq!(event["data"]["invocation_id"], id.as_str());
    assert_eq!(event["data"]["status"], "succeeded");
    assert!(first.header("webhook-id").unwrap().starts_with("msg_"));
    let old = secrets(&s, &t).await;
    assert_eq!(old.len(), 1);
    assert_eq!(node_verify(&old[0], first), json!({"ok": true}));
    let other = secrets(&s, &token("someone-else")).await;
    assert_ne!(other, old, "each tenant has its own secret");
    assert_eq!(node_verify(&other[0], first)["ok"], false);

    // Rotation: both secrets sign until the overlap ends; either verifies alone.
    let (status, rotated) = s
        .call(
            Method::POST,
            "/v1/webhooks/secret/rotate",
            &t,
            Some(json!({"overlap_s": 3600})),
        )
        .await;
    assert_eq!(status, 200, "{rotated}");
    let both: Vec<String> = rotated["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(both.len(), 2);
    assert_eq!(both[1], old[0]);
    invoke_async(&s, &t, "greet", "Grace", &url).await;
    let got = wait_for(&receiver, 2).await;
    let second = &got[1];
    assert_eq!(
        second
            .header("webhook-signature")
            .unwrap()
            .split(' ')
            .count(),
        2
    );
    assert_eq!(node_verify(&both[0], second), json!({"ok": true}));
    assert_eq!(node_verify(&both[1], second), json!({"ok": true}));

    // The delivery record shows the attempt.
    let (status, list) = s
        .call(
            Method::GET,
            &format!("/v1/webhooks/deliveries?invocation_id={id}"),
            &t,
            None,
        )
        .await;
    assert_eq!(status, 200, "{list}");
    let d = &list["deliveries"][0];
    assert_eq!(d["status"], "succeeded", "{list}");
    assert_eq!(d["attempts"][0]["status_code"], 200);
    s.stop().await;
}

async fn failed_deliveries_retry_with_one_id_and_410_disables(db: Db) {
    let s = server(db, true).await;
    let (receiver, url) = Receiver::start().await;
    let t = token("retried");
    assert_eq!(s.deploy(&t, function("greet")).await.0, 201);

    receiver.answer_next(&[500, 503]);
    let id = invoke_async(&s, &t, "greet", "Ada", &url).await;
    let got = wait_for(&receiver, 3).await;
    let ids: Vec<&str> = got
        .iter()
        .map(|r| r.header("webhook-id").unwrap())
        .collect();
    assert!(
        ids.iter().all(|i| *i == ids[0]),
        "one id on every retry: {ids:?}"
    );
    let delivery = until("the delivery to succeed", || async {
        let (_, list) = s
            .call(
                Method::GET,
                &format!("/v1/webhooks/deliveries?invocation_id={id}"),
                &t,
                None,
            )
            .await;
        let d = list["deliveries"][0].clone();
        (d["status"] == "succeeded").then_some(d)
    })
    .await;
    let codes: Vec<Value> = delivery["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status_code"].clone())
        .collect();
    assert_eq!(codes, vec![json!(500), json!(503), json!(200)]);

    // 410 Gone disables the endpoint: the next event is not sent at all.
    receiver.answer_next(&[410]);
    let gone = invoke_async(&s, &t, "greet", "Grace", &url).await;
    wait_for(&receiver, 4).await;
    let status_of = |id: String| {
        let s = &s;
        let t = &t;
        async move {
            let (_, list) = s
                .call(
                    Method::GET,
                    &format!("/v1/webhooks/deliveries?invocation_id={id}"),
                    t,
                    None,
                )
                .await;
            list["deliveries"][0]["status"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        }
    };
    s.eventually("the 410 to disable", Duration::from_secs(30), || {
        let f = status_of(gone.clone());
        async move { f.await == "disabled" }
    })
    .await;
    let after = invoke_async(&s, &t, "greet", "Linus", &url).await;
    s.eventually(
        "the next delivery to be dropped",
        Duration::from_secs(60),
        || {
            let f = status_of(after.clone());
            async move { f.await == "disabled" }
        },
    )
    .await;
    assert_eq!(
        receiver.got().len(),
        4,
        "nothing is sent to a disabled endpoint"
    );
    s.stop().await;
}

async fn triggers_accept_signed_events_and_refuse_the_rest(db: Db) {
    let s = server(db, false).await;
    let t = token("triggered");
    assert_eq!(s.deploy(&t, function("greet")).await.0, 201);

    // The SSRF guard, with nothing allowlisted on this server.
    for url in [
        "http://127.0.0.1:9/hook",
        "http://localhost:9/hook",
        "http://10.1.2.3/hook",
        "http://192.168.0.10/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://metadata.google.internal/computeMetadata/v1/",
        "http://[::1]/hook",
        "ftp://example.com/hook",
    ] {
        let (status, body) = s
            .invoke(
                &t,
                "greet",
                json!({"input": {"who": "x"}, "mode": "async", "webhook": {"url": url}}),
            )
            .await;
        assert_eq!(status, 422, "{url}: {body}");
        assert_eq!(body["error"]["code"], "callback_url_forbidden", "{url}");
        let mut def = function("guarded");
        def["webhook"] = json!({"url": url});
        let (status, body) = s.deploy(&t, def).await;
        assert_eq!(status, 422, "{url}: {body}");
    }

    let (status, trigger) = s
        .call(
            Method::POST,
            "/v1/functions/greet/triggers",
            &t,
            Some(json!({"input_map": {"who": "/user/name"}})),
        )
        .await;
    assert_eq!(status, 201, "{trigger}");
    let secret = trigger["secret"].as_str().unwrap().to_owned();
    let hook = trigger["url"].as_str().unwrap().to_owned();
    let now = chrono_now();
    let payload = json!({"user": {"name": "Ada"}, "action": "opened"}).to_string();

    let post = |headers: Vec<(String, String)>, body: String| {
        let s = &s;
        let hook = hook.clone();
        async move {
            let mut req = s
                .client
                .post(format!("{}{hook}", s.base))
                .header("content-type", "application/json");
            for (n, v) in headers {
                req = req.header(n, v);
            }
            genrt_tests::read(req.body(body).send().await.unwrap()).await
        }
    };

    let headers = node_sign(&secret, "msg_evt_1", now, &payload);
    let (status, accepted) = post(headers.clone(), payload.clone()).await;
    assert_eq!(status, 202, "{accepted}");
    let id = accepted["invocation_id"].as_str().unwrap().to_owned();
    let record = until("the triggered invocation", || async {
        let record = s
            .call(Method::GET, &format!("/v1/invocations/{id}"), &t, None)
            .await
            .1;
        (record["status"] == "succeeded").then_some(record)
    })
    .await;
    assert_eq!(record["input"], json!({"who": "Ada"}));
    assert_eq!(record["mode"], "trigger");

    // The same message again: a replay.
    let (status, body) = post(headers.clone(), payload.clone()).await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (409, json!("replayed_webhook"))
    );
    // Tampered.
    let headers = node_sign(&secret, "msg_evt_2", now, &payload);
    let tampered = payload.replace("Ada", "Eve");
    let (status, body) = post(headers, tampered).await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (401, json!("invalid_signature"))
    );
    // Stale: signed ten minutes ago.
    let headers = node_sign(&secret, "msg_evt_3", now - 600, &payload);
    let (status, body) = post(headers, payload.clone()).await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (401, json!("stale_webhook"))
    );
    // Another secret.
    let headers = node_sign(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "msg_evt_4",
        now,
        &payload,
    );
    let (status, _) = post(headers, payload.clone()).await;
    assert_eq!(status, 401);
    // Unsigned.
    let (status, _) = post(Vec::new(), payload.clone()).await;
    assert_eq!(status, 401);

    // GitHub style.
    let (status, gh) = s
        .call(
            Method::POST,
            "/v1/functions/greet/triggers",
            &t,
            Some(json!({"scheme": "github", "input_map": {"who": "/sender/login"}})),
        )
        .await;
    assert_eq!(status, 201, "{gh}");
    let gh_secret = gh["secret"].as_str().unwrap();
    let gh_url = format!("{}{}", s.base, gh["url"].as_str().unwrap());
    let body = json!({"sender": {"login": "octocat"}}).to_string();
    let signature = format!("sha256={}", genrt_tests::github_signature(gh_secret, &body));
    let send = |sig: String, delivery: &str, body: String| {
        s.client
            .post(&gh_url)
            .header("x-hub-signature-256", sig)
            .header("x-github-delivery", delivery)
            .body(body)
            .send()
    };
    let r = send(signature.clone(), "d-1", body.clone()).await.unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let r = send(signature.clone(), "d-1", body.clone()).await.unwrap();
    assert_eq!(r.status().as_u16(), 409);
    let r = send(signature, "d-2", body.replace("octocat", "mallory"))
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);

    // Another tenant cannot list or delete the trigger; an unknown hook is 404.
    let (status, _) = s
        .call(
            Method::GET,
            "/v1/functions/greet/triggers",
            &token("other"),
            None,
        )
        .await;
    assert_eq!(status, 404);
    let trigger_id = trigger["id"].as_str().unwrap();
    let (status, _) = s
        .call(
            Method::DELETE,
            &format!("/v1/triggers/{trigger_id}"),
            &token("other"),
            None,
        )
        .await;
    assert_eq!(status, 404);
    let (status, _) = post(Vec::new(), payload.clone()).await;
    assert_eq!(status, 401, "the trigger still exists");
    let (status, _) = s
        .call(
            Method::DELETE,
            &format!("/v1/triggers/{trigger_id}"),
            &t,
            None,
        )
        .await;
    assert_eq!(status, 204);
    let headers = node_sign(&secret, "msg_evt_5", now, &payload);
    let (status, _) = post(headers, payload).await;
    assert_eq!(status, 404);
    s.stop().await;
}

/// Polls until `f` gives a value, for up to two minutes.
async fn until<F, Fut>(what: &str, mut f: F) -> Value
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<Value>>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}
