//! The [tenancy] acceptance suite, part 1: tenants isolated from each other, credentials (JWTs
//! of three algorithms and API keys), per-tenant limits, fairness under a flood, and the durable
//! queue (async mode, idempotency, cancellation, batches, usage). Scopes, and tenant isolation
//! operation by operation, are checked from the OpenAPI document in scopes.rs.
//! Real HTTP, the real SmolLM2 model through llama.cpp, SQLite and a throwaway Postgres cluster.
//!
//! Generations are kept to a few tokens: the suite shares two CPU cores.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use genrt_tests::{
    admin_token, claims, fixture, reply, sign, token, token_with, Db, PgCluster, TestServer, Turn,
    Turns, FASHION_MODEL, MODEL, SECRET,
};
use jsonwebtoken::{Algorithm, EncodingKey};
use reqwest::Method;
use serde_json::{json, Value};

/// Every scenario starts its own server on the database it is given.
macro_rules! on_both_databases {
    ($($scenario:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    let _turn = super::turn(stringify!($scenario)).await;
                    super::$scenario(super::Db::Sqlite).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    let _turn = super::turn(stringify!($scenario)).await;
                    let cluster = super::PgCluster::start();
                    let url = cluster.create_database("genrt");
                    super::$scenario(super::Db::Postgres(url)).await;
                    drop(cluster);
                }
            )*
        }
    };
}

on_both_databases!(
    tenants_never_see_or_touch_each_others_resources,
    bad_tokens_and_revoked_keys_are_refused,
    rate_concurrency_and_budget_limits_answer_429,
    admins_disable_tenants_and_restrict_models,
    a_flooding_tenant_does_not_starve_another,
    async_invocations_run_from_the_queue_and_page_newest_first,
    idempotency_keys_replay_the_same_invocation,
    cancel_stops_queued_and_running_work,
    batches_accept_arrays_objects_and_jsonl,
    a_batch_of_1000_inputs_completes_in_input_order,
);

/// Scenarios that measure time, or that would take the CPU from the others for minutes, run
/// alone; the rest share the machine (cargo runs two tests at once on two cores).
const ALONE: &[&str] = &[
    "a_flooding_tenant_does_not_starve_another",
    "a_batch_of_1000_inputs_completes_in_input_order",
];

static TURNS: Turns = Turns::new();

async fn turn(scenario: &str) -> Turn {
    if ALONE.contains(&scenario) {
        TURNS.alone().await
    } else {
        TURNS.shared().await
    }
}

/// A server for one scenario: the harness's configuration, with one llama.cpp thread per
/// replica, then `adjust`. The threads of a replica wait for each other at every decode step,
/// so two threads on two cores shared with other test servers and processes stall each other
/// for seconds at a time (80x slower steps, and timeouts, were seen); one thread degrades
/// smoothly under the same load.
async fn serve(db: Db, adjust: impl FnOnce(&mut genrt_runtime::Config)) -> TestServer {
    TestServer::start_adjusted(db, |c| {
        for model in &mut c.models {
            model.threads = 1;
        }
        adjust(c);
    })
    .await
}

fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<none>")
}

/// A function on the default model with short greedy generations.
fn function(name: &str, prompt: &str, max_tokens: u32) -> Value {
    json!({
        "name": name,
        "model": MODEL,
        "prompt": prompt,
        "params": {"max_tokens": max_tokens, "temperature": 0}
    })
}

async fn deployed(s: &TestServer, token: &str, definition: Value) {
    let (status, body) = s.deploy(token, definition).await;
    assert!(status == 201 || status == 200, "deploy: {status} {body}");
}

/// Starts an asynchronous invocation and returns its id.
async fn invoke_async(s: &TestServer, token: &str, name: &str, mut body: Value) -> String {
    body["mode"] = json!("async");
    let (status, accepted) = s.invoke(token, name, body).await;
    assert_eq!(status, 202, "{accepted}");
    accepted["invocation_id"].as_str().unwrap().to_owned()
}

async fn record(s: &TestServer, token: &str, id: &str) -> Value {
    let (status, body) = s
        .call(Method::GET, &format!("/v1/invocations/{id}"), token, None)
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Polls an invocation until its status is one of `statuses`.
async fn wait_status(
    s: &TestServer,
    token: &str,
    id: &str,
    statuses: &[&str],
    limit: Duration,
) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let r = record(s, token, id).await;
        if statuses.iter().any(|st| r["status"] == *st) {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "invocation {id} never became {statuses:?}: {r}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn finished(s: &TestServer, token: &str, id: &str) -> Value {
    wait_status(
        s,
        token,
        id,
        &["succeeded", "failed", "cancelled"],
        Duration::from_secs(120),
    )
    .await
}

/// Creates a tenant with `settings`, or changes an existing one's.
async fn set_tenant(s: &TestServer, id: &str, settings: Value) -> Value {
    let admin = admin_token();
    let mut create = settings.clone();
    create["id"] = json!(id);
    let (status, body) = s
        .call(Method::POST, "/v1/admin/tenants", &admin, Some(create))
        .await;
    if status == 201 {
        return body;
    }
    assert_eq!(error_code(&body), "tenant_exists", "{body}");
    let (status, body) = s
        .call(
            Method::PATCH,
            &format!("/v1/admin/tenants/{id}"),
            &admin,
            Some(settings),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Waits until the write-behind records of synchronous invocations are in the database, so
/// that listings, usage and cancellation see them.
async fn flush_records(s: &TestServer) {
    let left = s
        .server()
        .state()
        .records
        .flush(Duration::from_secs(10))
        .await;
    assert_eq!(left, 0, "invocation records written");
}

/// Every invocation of the tenant, newest first, through the cursor pagination.
async fn all_invocations(s: &TestServer, token: &str, query: &str, limit: u32) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/v1/invocations?limit={limit}{query}");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let (status, page) = s.call(Method::GET, &path, token, None).await;
        assert_eq!(status, 200, "{page}");
        let items = page["invocations"].as_array().unwrap();
        assert!(items.len() <= limit as usize, "{page}");
        out.extend(items.iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => {
                assert_eq!(
                    items.len(),
                    limit as usize,
                    "only full pages have a next one"
                );
                cursor = Some(c.to_owned());
            }
            None => return out,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Isolation
// ---------------------------------------------------------------------------------------------

async fn tenants_never_see_or_touch_each_others_resources(db: Db) {
    let s = serve(db, |_| {}).await;
    let a = token("acme");
    let b = token("globex");
    // Things only tenant A's data contains: none may reach B.
    let prompt_mark = "zanzibar-7431";
    let input_mark = "quartz-owl";
    deployed(
        &s,
        &a,
        json!({
            "name": "recipe",
            "model": MODEL,
            "system": format!("You are a concise assistant, reference {prompt_mark}."),
            "prompt": "Name one colour of {{ thing }}.",
            "params": {"max_tokens": 4, "temperature": 0}
        }),
    )
    .await;
    let (status, ran) = s
        .invoke(&a, "recipe", json!({"input": {"thing": input_mark}}))
        .await;
    assert_eq!(status, 200, "{ran}");
    let ran_id = ran["invocation_id"].as_str().unwrap().to_owned();
    let queued_id = invoke_async(
        &s,
        &a,
        "recipe",
        json!({"input": {"thing": format!("{input_mark} in the rain")}}),
    )
    .await;
    let batch = reply(
        s.build(Method::POST, "/v1/functions/recipe/batches", &a)
            .json(&json!([{"thing": input_mark}, {"thing": "snow"}])),
    )
    .await;
    assert_eq!(batch.status, 202, "{:?}", batch.body);
    let batch_id = batch.body["batch_id"].as_str().unwrap().to_owned();
    let (status, key) = s
        .call(
            Method::POST,
            "/v1/api-keys",
            &a,
            Some(json!({"name": "acme-ci-key"})),
        )
        .await;
    assert_eq!(status, 201, "{key}");
    let key_id = key["id"].as_str().unwrap().to_owned();
    let key_secret = key["secret"].as_str().unwrap().to_owned();

    let mut marks = vec![
        prompt_mark.to_owned(),
        input_mark.to_owned(),
        "acme".to_owned(),
        "acme-ci-key".to_owned(),
        key["prefix"].as_str().unwrap().to_owned(),
        key_secret.clone(),
    ];
    let output = ran["output"]["text"].as_str().unwrap().trim().to_owned();
    if output.len() >= 8 {
        marks.push(output);
    }
    let leaks = |body: &Value| -> Vec<String> {
        let text = body.to_string();
        marks
            .iter()
            .filter(|m| text.contains(m.as_str()))
            .cloned()
            .collect()
    };

    let input = json!({"input": {"thing": "fog"}});
    let attempts: Vec<(Method, String, Option<Value>, &str)> = vec![
        (
            Method::GET,
            "/v1/functions/recipe".into(),
            None,
            "function_not_found",
        ),
        (
            Method::GET,
            "/v1/functions/recipe/versions".into(),
            None,
            "function_not_found",
        ),
        (
            Method::DELETE,
            "/v1/functions/recipe".into(),
            None,
            "function_not_found",
        ),
        (
            Method::POST,
            "/v1/functions/recipe/invoke".into(),
            Some(input.clone()),
            "function_not_found",
        ),
        (
            Method::POST,
            "/v1/functions/recipe/invoke".into(),
            Some(json!({"input": {"thing": "fog"}, "mode": "async"})),
            "function_not_found",
        ),
        (
            Method::POST,
            "/v1/functions/recipe/prewarm".into(),
            Some(json!({"inputs": [{"thing": "fog"}]})),
            "function_not_found",
        ),
        (
            Method::POST,
            "/v1/functions/recipe/batches".into(),
            Some(json!([{"thing": "fog"}])),
            "function_not_found",
        ),
        (
            Method::GET,
            format!("/v1/invocations/{ran_id}"),
            None,
            "invocation_not_found",
        ),
        (
            Method::GET,
            format!("/v1/invocations/{queued_id}"),
            None,
            "invocation_not_found",
        ),
        (
            Method::POST,
            format!("/v1/invocations/{queued_id}/cancel"),
            None,
            "invocation_not_found",
        ),
        (
            Method::POST,
            format!("/v1/invocations/{ran_id}/cancel"),
            None,
            "invocation_not_found",
        ),
        (
            Method::GET,
            format!("/v1/batches/{batch_id}"),
            None,
            "batch_not_found",
        ),
        (
            Method::GET,
            format!("/v1/batches/{batch_id}/results"),
            None,
            "batch_not_found",
        ),
        (
            Method::DELETE,
            format!("/v1/api-keys/{key_id}"),
            None,
            "api_key_not_found",
        ),
    ];
    for (method, path, body, code) in attempts {
        let (status, got) = s.call(method.clone(), &path, &b, body).await;
        assert_eq!(
            (status, error_code(&got)),
            (404, code),
            "B {method} {path}: {got}"
        );
        assert_eq!(
            leaks(&got),
            Vec::<String>::new(),
            "B {method} {path}: {got}"
        );
    }

    // B's listings hold nothing of A's.
    for path in [
        "/v1/functions",
        "/v1/invocations",
        "/v1/usage",
        "/v1/api-keys",
    ] {
        let (status, got) = s.call(Method::GET, path, &b, None).await;
        assert_eq!(status, 200, "B GET {path}: {got}");
        assert_eq!(leaks(&got), Vec::<String>::new(), "B GET {path}: {got}");
        assert!(!got.to_string().contains(&ran_id), "B GET {path}: {got}");
    }
    let (_, list) = s.call(Method::GET, "/v1/invocations", &b, None).await;
    assert_eq!(list["invocations"], json!([]));
    let (_, usage) = s.call(Method::GET, "/v1/usage", &b, None).await;
    assert_eq!(usage["total"]["invocations"], 0, "{usage}");

    // The same name is B's own function: a separate namespace, A's is untouched.
    let (status, mine) = s
        .deploy(&b, function("recipe", "Name one shape of {{ thing }}.", 4))
        .await;
    assert_eq!((status, &mine["version"]), (201, &json!(1)), "{mine}");
    let (_, theirs) = s.call(Method::GET, "/v1/functions/recipe", &b, None).await;
    assert_eq!(leaks(&theirs), Vec::<String>::new(), "{theirs}");

    // And A still has everything B tried to reach.
    let (status, detail) = s
        .call(Method::GET, "/v1/functions/recipe/versions", &a, None)
        .await;
    assert_eq!(status, 200);
    let versions = detail["versions"].as_array().unwrap();
    assert_eq!(
        versions.len(),
        1,
        "B's deploy made no version of A's: {detail}"
    );
    assert!(versions[0].to_string().contains(prompt_mark));
    let done = finished(&s, &a, &queued_id).await;
    assert_eq!(
        done["status"], "succeeded",
        "B's cancel did not reach it: {done}"
    );
    let by_key = reply(s.build(Method::GET, "/v1/functions", &key_secret)).await;
    assert_eq!(by_key.status, 200, "B's revoke did not reach A's key");
    let (status, _) = s
        .call(Method::GET, &format!("/v1/batches/{batch_id}"), &a, None)
        .await;
    assert_eq!(status, 200);
    s.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 2. Scopes
// ---------------------------------------------------------------------------------------------

// Every operation's scopes, operation by operation from the OpenAPI document, and API keys'
// scopes: tests/tests/scopes.rs.

// ---------------------------------------------------------------------------------------------
// 3. Credentials
// ---------------------------------------------------------------------------------------------

async fn bad_tokens_and_revoked_keys_are_refused(db: Db) {
    let s = serve(db, |c| {
        // HS256 beside the keys on purpose (with keys configured it is off unless named):
        // this scenario checks every algorithm's refusals side by side.
        c.auth.allowed_algorithms = Some(vec![
            genrt_runtime::config::JwtAlgorithm::HS256,
            genrt_runtime::config::JwtAlgorithm::RS256,
            genrt_runtime::config::JwtAlgorithm::ES256,
        ]);
        c.auth.public_keys = vec![
            genrt_runtime::config::PublicKeyConfig {
                kid: Some("rsa-1".into()),
                alg: genrt_runtime::config::JwtAlgorithm::RS256,
                pem_file: fixture("rsa-public.pem"),
            },
            genrt_runtime::config::PublicKeyConfig {
                kid: Some("ec-1".into()),
                alg: genrt_runtime::config::JwtAlgorithm::ES256,
                pem_file: fixture("ec-public.pem"),
            },
        ];
    })
    .await;
    let t = token("acme");
    deployed(&s, &t, function("mine", "Say hi to {{ name }}.", 4)).await;

    let read = |name: &str| std::fs::read(fixture(name)).unwrap();
    let rsa = EncodingKey::from_rsa_pem(&read("rsa-private.pem")).unwrap();
    let other_rsa = EncodingKey::from_rsa_pem(&read("rsa-other-private.pem")).unwrap();
    let ec = EncodingKey::from_ec_pem(&read("ec-private.pem")).unwrap();
    let hs = EncodingKey::from_secret(SECRET.as_bytes());
    // The classic confusion: the RSA public key's PEM bytes used as an HMAC secret.
    let public_pem_as_secret = EncodingKey::from_secret(&read("rsa-public.pem"));
    let with = |changes: Value| {
        let mut c = claims("acme");
        for (k, v) in changes.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c
    };
    let none_token = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(claims("acme").to_string())
    );
    let bad: Vec<(&str, String, &str)> = vec![
        (
            "signed with another secret",
            token_with("acme", "another-secret-of-some-length", "genrt", 3600),
            "invalid_token",
        ),
        (
            "expired",
            token_with("acme", SECRET, "genrt", -3600),
            "token_expired",
        ),
        (
            "for another audience",
            token_with("acme", SECRET, "another-service", 3600),
            "invalid_token",
        ),
        (
            "from another issuer",
            sign(
                Algorithm::HS256,
                None,
                &with(json!({"iss": "someone-else"})),
                &hs,
            ),
            "invalid_token",
        ),
        (
            "without exp",
            sign(Algorithm::HS256, None, &with(json!({"exp": null})), &hs),
            "invalid_token",
        ),
        (
            "without a tenant",
            sign(Algorithm::HS256, None, &with(json!({"tenant": null})), &hs),
            "invalid_token",
        ),
        (
            "with an impossible tenant",
            sign(
                Algorithm::HS256,
                None,
                &with(json!({"tenant": "Not A Tenant!"})),
                &hs,
            ),
            "invalid_token",
        ),
        ("alg none", none_token, "invalid_token"),
        (
            "HS256 keyed with the RSA public key, naming its kid",
            sign(
                Algorithm::HS256,
                Some("rsa-1"),
                &claims("acme"),
                &public_pem_as_secret,
            ),
            "invalid_token",
        ),
        (
            "HS256 keyed with the RSA public key",
            sign(
                Algorithm::HS256,
                None,
                &claims("acme"),
                &public_pem_as_secret,
            ),
            "invalid_token",
        ),
        (
            "RS256 by an untrusted key under a trusted kid",
            sign(Algorithm::RS256, Some("rsa-1"), &claims("acme"), &other_rsa),
            "invalid_token",
        ),
        (
            "RS256 with an unknown kid",
            sign(Algorithm::RS256, Some("rsa-9"), &claims("acme"), &rsa),
            "invalid_token",
        ),
        (
            "ES256 naming the RSA key",
            sign(Algorithm::ES256, Some("rsa-1"), &claims("acme"), &ec),
            "invalid_token",
        ),
        ("not a JWT", "not.a.jwt".to_owned(), "invalid_token"),
    ];
    for (what, tok, code) in &bad {
        let got = reply(s.build(Method::GET, "/v1/functions", tok)).await;
        assert_eq!(
            (got.status, got.code()),
            (401, *code),
            "{what}: {:?}",
            got.body
        );
        assert!(
            got.header("www-authenticate")
                .is_some_and(|h| h.contains(code)),
            "{what}: {:?}",
            got.headers
        );
        assert!(
            !got.body.to_string().contains("mine"),
            "{what}: {:?}",
            got.body
        );
    }
    let got = reply(
        s.client
            .get(format!("{}/v1/functions", s.base))
            .basic_auth("acme", Some("pw")),
    )
    .await;
    assert_eq!((got.status, got.code()), (401, "missing_credentials"));
    let got = reply(s.client.get(format!("{}/v1/functions", s.base))).await;
    assert_eq!((got.status, got.code()), (401, "missing_credentials"));

    // Properly signed asymmetric tokens are the tenant, with the scopes they name.
    for (what, tok) in [
        (
            "RS256",
            sign(Algorithm::RS256, Some("rsa-1"), &claims("acme"), &rsa),
        ),
        (
            "ES256",
            sign(Algorithm::ES256, Some("ec-1"), &claims("acme"), &ec),
        ),
    ] {
        let (status, list) = s.call(Method::GET, "/v1/functions", &tok, None).await;
        assert_eq!(status, 200, "{what}: {list}");
        assert_eq!(list["functions"][0]["name"], "mine", "{what}: {list}");
    }
    let reader = sign(
        Algorithm::RS256,
        Some("rsa-1"),
        &with(json!({"scope": "invocations:read openid"})),
        &rsa,
    );
    let (status, got) = s.call(Method::GET, "/v1/functions", &reader, None).await;
    assert_eq!(
        (status, error_code(&got)),
        (403, "insufficient_scope"),
        "{got}"
    );
    let (status, _) = s.call(Method::GET, "/v1/invocations", &reader, None).await;
    assert_eq!(status, 200);

    // API keys: shown once, usable, then revoked.
    let (status, key) = s
        .call(
            Method::POST,
            "/v1/api-keys",
            &t,
            Some(json!({"name": "ci"})),
        )
        .await;
    assert_eq!(status, 201, "{key}");
    let secret = key["secret"].as_str().unwrap().to_owned();
    let id = key["id"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("grt_") && secret.len() > 30, "{secret}");
    let (_, listed) = s.call(Method::GET, "/v1/api-keys", &t, None).await;
    assert_eq!(listed["api_keys"][0]["id"], json!(id), "{listed}");
    assert!(
        !listed.to_string().contains(&secret),
        "the secret is never shown again"
    );
    let (status, list) = s.call(Method::GET, "/v1/functions", &secret, None).await;
    assert_eq!(
        (status, &list["functions"][0]["name"]),
        (200, &json!("mine"))
    );
    let unknown = format!("grt_{}", "x".repeat(40));
    let got = reply(s.build(Method::GET, "/v1/functions", &unknown)).await;
    assert_eq!((got.status, got.code()), (401, "invalid_api_key"));

    let (status, _) = s
        .call(Method::DELETE, &format!("/v1/api-keys/{id}"), &t, None)
        .await;
    assert_eq!(status, 204);
    let got = reply(s.build(Method::GET, "/v1/functions", &secret)).await;
    assert_eq!(
        (got.status, got.code()),
        (401, "invalid_api_key"),
        "{:?}",
        got.body
    );
    let (_, listed) = s.call(Method::GET, "/v1/api-keys", &t, None).await;
    assert!(listed["api_keys"][0]["revoked_at"].is_string(), "{listed}");

    // A key past its expiry stops working without being revoked.
    let expires = chrono::Utc::now() + chrono::Duration::seconds(2);
    let (status, key) = s
        .call(
            Method::POST,
            "/v1/api-keys",
            &t,
            Some(json!({"name": "short-lived", "expires_at": expires.to_rfc3339()})),
        )
        .await;
    assert_eq!(status, 201, "{key}");
    let short = key["secret"].as_str().unwrap().to_owned();
    let (status, _) = s.call(Method::GET, "/v1/functions", &short, None).await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let got = reply(s.build(Method::GET, "/v1/functions", &short)).await;
    assert_eq!((got.status, got.code()), (401, "invalid_api_key"));
    s.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 4. Limits
// ---------------------------------------------------------------------------------------------

fn retry_after(r: &genrt_tests::Reply) -> u64 {
    r.header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("a 429 carries Retry-After: {:?}", r.headers))
}

async fn rate_concurrency_and_budget_limits_answer_429(db: Db) {
    let s = serve(db, |_| {}).await;
    let t = token("acme");
    let mut def = function("limited", "Count from {{ n }}.", 8);
    def["params"]["ignore_eos"] = json!(true);
    deployed(&s, &t, def).await;

    // Rate: a burst of 3, then one request a second.
    set_tenant(
        &s,
        "acme",
        json!({"rate_limit_rps": 1, "rate_limit_burst": 3}),
    )
    .await;
    let mut statuses = Vec::new();
    let mut last = None;
    for _ in 0..4 {
        let r = reply(s.build(Method::GET, "/v1/functions", &t)).await;
        statuses.push(r.status);
        last = Some(r);
    }
    let last = last.unwrap();
    assert_eq!(statuses, [200, 200, 200, 429], "{:?}", last.body);
    assert_eq!(last.code(), "rate_limited");
    let wait = retry_after(&last);
    assert!((1..=2).contains(&wait), "{wait}");
    let (status, _) = s
        .call(Method::GET, "/v1/functions", &token("globex"), None)
        .await;
    assert_eq!(status, 200, "other tenants have their own bucket");
    tokio::time::sleep(Duration::from_secs(wait)).await;
    let (status, _) = s.call(Method::GET, "/v1/functions", &t, None).await;
    assert_eq!(status, 200, "the bucket refills");

    // Concurrency: one invocation at a time. 48 tokens past end-of-text keep the first one
    // running long after the second arrives.
    set_tenant(
        &s,
        "acme",
        json!({"rate_limit_rps": 0, "max_concurrency": 1}),
    )
    .await;
    let long = |n: u32| json!({"input": {"n": n}, "params": {"max_tokens": 48}});
    let call = |n: u32| {
        reply(
            s.build(Method::POST, "/v1/functions/limited/invoke", &t)
                .json(&long(n)),
        )
    };
    let (first, second) = tokio::join!(call(1), call(2));
    let mut both = [first, second];
    both.sort_by_key(|r| r.status);
    assert_eq!(
        [both[0].status, both[1].status],
        [200, 429],
        "{:?} {:?}",
        both[0].body,
        both[1].body
    );
    assert_eq!(both[1].code(), "concurrency_limited");
    assert!(retry_after(&both[1]) >= 1);
    let (status, out) = s.invoke(&t, "limited", long(3)).await;
    assert_eq!(status, 200, "the place is free again: {out}");

    // Budget: a little more than what was used so far.
    flush_records(&s).await;
    let (_, usage) = s.call(Method::GET, "/v1/usage", &t, None).await;
    let used_before = usage["month_tokens"].as_u64().unwrap();
    assert!(used_before > 0, "{usage}");
    let budget = used_before + 60;
    set_tenant(
        &s,
        "acme",
        json!({"max_concurrency": 0, "monthly_token_budget": budget}),
    )
    .await;
    let mut spent = 0;
    let mut refused = None;
    for n in 10..30 {
        let r = reply(
            s.build(Method::POST, "/v1/functions/limited/invoke", &t)
                .json(&json!({"input": {"n": n}})),
        )
        .await;
        if r.status == 429 {
            refused = Some(r);
            break;
        }
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert!(
            used_before + spent < budget,
            "admitted although the budget was used up"
        );
        let u = &r.body["usage"];
        spent += u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap();
    }
    let refused = refused.expect("the budget ran out");
    assert_eq!(refused.code(), "quota_exhausted", "{:?}", refused.body);
    assert!(retry_after(&refused) >= 1);
    assert!(spent > 0 && used_before + spent >= budget);
    let (status, got) = s
        .invoke(&t, "limited", json!({"input": {"n": 99}, "mode": "async"}))
        .await;
    assert_eq!(
        (status, error_code(&got)),
        (429, "quota_exhausted"),
        "{got}"
    );

    // Usage adds up the recorded invocations.
    flush_records(&s).await;
    let invocations = all_invocations(&s, &t, "", 200).await;
    let sum = |field: &str| -> u64 {
        invocations
            .iter()
            .map(|i| i["usage"][field].as_u64().unwrap())
            .sum()
    };
    let (prompt, completion) = (sum("prompt_tokens"), sum("completion_tokens"));
    for group in ["function", "day"] {
        let (status, usage) = s
            .call(
                Method::GET,
                &format!("/v1/usage?group_by={group}"),
                &t,
                None,
            )
            .await;
        assert_eq!(status, 200, "{usage}");
        let total = &usage["total"];
        assert_eq!(total["invocations"], json!(invocations.len()), "{usage}");
        assert_eq!(total["prompt_tokens"], json!(prompt), "{usage}");
        assert_eq!(total["completion_tokens"], json!(completion), "{usage}");
        assert_eq!(usage["month_tokens"], json!(prompt + completion), "{usage}");
        assert_eq!(usage["monthly_token_budget"], json!(budget), "{usage}");
    }
    assert_eq!(prompt + completion, used_before + spent);
    s.stop().await;
}

async fn admins_disable_tenants_and_restrict_models(db: Db) {
    let s = serve(db, |_| {}).await;
    let t = token("acme");
    let admin = admin_token();
    deployed(&s, &t, function("plain", "Say hi to {{ name }}.", 4)).await;
    let (_, key) = s
        .call(
            Method::POST,
            "/v1/api-keys",
            &t,
            Some(json!({"name": "ci"})),
        )
        .await;
    let key = key["secret"].as_str().unwrap().to_owned();

    let created = set_tenant(&s, "acme", json!({"allowed_models": [FASHION_MODEL]})).await;
    assert_eq!(created["allowed_models"], json!([FASHION_MODEL]));
    let input = json!({"input": {"name": "Ada"}});
    let (status, got) = s.invoke(&t, "plain", input.clone()).await;
    assert_eq!(
        (status, error_code(&got)),
        (403, "model_not_allowed"),
        "{got}"
    );
    let (status, got) = s
        .invoke(
            &t,
            "plain",
            json!({"input": {"name": "Ada"}, "mode": "async"}),
        )
        .await;
    assert_eq!(
        (status, error_code(&got)),
        (403, "model_not_allowed"),
        "{got}"
    );
    let got = reply(
        s.build(Method::POST, "/v1/functions/plain/batches", &t)
            .json(&json!([{"name": "Ada"}])),
    )
    .await;
    assert_eq!((got.status, got.code()), (403, "model_not_allowed"));
    let (status, got) = s
        .deploy(&t, function("other", "Say bye to {{ name }}.", 4))
        .await;
    assert_eq!(
        (status, error_code(&got)),
        (403, "model_not_allowed"),
        "{got}"
    );
    let mut fashion = function("fashion", "Name a colour for {{ name }}.", 4);
    fashion["model"] = json!(FASHION_MODEL);
    let (status, got) = s.deploy(&t, fashion).await;
    assert_eq!(status, 201, "{got}");
    let (status, got) = s.invoke(&t, "fashion", input.clone()).await;
    assert_eq!(
        (status, &got["model"]),
        (200, &json!(FASHION_MODEL)),
        "{got}"
    );
    let (status, got) = s
        .call(
            Method::PATCH,
            "/v1/admin/tenants/acme",
            &admin,
            Some(json!({"allowed_models": ["no-such-model"]})),
        )
        .await;
    assert_eq!((status, error_code(&got)), (422, "unknown_model"), "{got}");

    // Disabled: every credential of the tenant is refused; others are not.
    let (status, got) = s
        .call(
            Method::PATCH,
            "/v1/admin/tenants/acme",
            &admin,
            Some(json!({"disabled": true})),
        )
        .await;
    assert_eq!((status, &got["disabled"]), (200, &json!(true)), "{got}");
    for credential in [&t, &key] {
        let (status, got) = s.call(Method::GET, "/v1/functions", credential, None).await;
        assert_eq!(
            (status, error_code(&got)),
            (403, "tenant_disabled"),
            "{got}"
        );
    }
    let (status, _) = s
        .call(Method::GET, "/v1/functions", &token("globex"), None)
        .await;
    assert_eq!(status, 200);
    let (_, one) = s
        .call(Method::GET, "/v1/admin/tenants/acme", &admin, None)
        .await;
    assert_eq!(one["disabled"], true, "{one}");
    assert_eq!(one["allowed_models"], json!([FASHION_MODEL]), "{one}");
    let (_, all) = s.call(Method::GET, "/v1/admin/tenants", &admin, None).await;
    assert!(
        all["tenants"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["id"] == "acme"),
        "{all}"
    );

    // Enabled again, with the other settings kept.
    let (status, got) = s
        .call(
            Method::PATCH,
            "/v1/admin/tenants/acme",
            &admin,
            Some(json!({"disabled": false})),
        )
        .await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(
        got["allowed_models"],
        json!([FASHION_MODEL]),
        "merged: {got}"
    );
    let (status, _) = s.call(Method::GET, "/v1/functions", &key, None).await;
    assert_eq!(status, 200);

    let (status, got) = s
        .call(
            Method::POST,
            "/v1/admin/tenants",
            &admin,
            Some(json!({"id": "acme"})),
        )
        .await;
    assert_eq!((status, error_code(&got)), (409, "tenant_exists"), "{got}");
    let (status, got) = s
        .call(Method::GET, "/v1/admin/tenants/nobody", &admin, None)
        .await;
    assert_eq!(
        (status, error_code(&got)),
        (404, "tenant_not_found"),
        "{got}"
    );
    s.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 5. Fairness
// ---------------------------------------------------------------------------------------------

async fn a_flooding_tenant_does_not_starve_another(db: Db) {
    let s = serve(db, |_| {}).await;
    let flood = token("flood");
    let quiet = token("quiet");
    // The queue is watched by a third tenant, so that B's rate limit is B's alone.
    let observer = token("observer");
    // Exactly 16 tokens each, so that every job costs the same.
    let mut def = function("fair", "Count upwards from {{ n }}.", 16);
    def["params"]["ignore_eos"] = json!(true);
    deployed(&s, &flood, def.clone()).await;
    deployed(&s, &quiet, def).await;
    // The flood must meet the model's queue, not the tenant's rate limit or concurrency cap.
    set_tenant(
        &s,
        "flood",
        json!({"rate_limit_rps": 0, "max_concurrency": 0}),
    )
    .await;

    let quiet_call = |n: u32| {
        let s = &s;
        let quiet = &quiet;
        async move {
            let started = Instant::now();
            let (status, out) = s.invoke(quiet, "fair", json!({"input": {"n": n}})).await;
            assert_eq!(status, 200, "{out}");
            assert_eq!(out["cache_hit"], false, "{out}");
            started.elapsed()
        }
    };
    quiet_call(1000).await; // loads the model
    let mut idle = Vec::new();
    for n in 1001..1004 {
        idle.push(quiet_call(n).await);
    }
    idle.sort();
    let idle_median = idle[1];

    let model = s.model(&observer, MODEL).await;
    let slots = model["slots_per_replica"].as_u64().unwrap() as u32;
    assert_eq!(
        model["max_replicas"], 1,
        "one replica: the bound below counts its slots"
    );
    // The bound, from the slot count. One replica decodes `slots` sequences at once (4) and
    // serves a fair queue per tenant: B's job joins the rotation behind A's lane, so at most
    // one more of A's jobs starts before it, and B starts once two slots have freed, which
    // takes at most one of A's generations. Then B's own generation runs. Both decode in a
    // batch of `slots` sequences, which costs at most `slots` times an idle step on a CPU.
    // Hence 2 × slots × idle, plus one second for HTTP and the database under 200 open
    // requests. In FIFO order B would wait behind A's whole backlog instead, 32 jobs (the
    // per-tenant queue bound), i.e. 8 rounds of `slots` jobs: about (8 + 1) × slots × idle.
    let bound = idle_median * (2 * slots) + Duration::from_secs(1);

    let flood_started = Instant::now();
    let tasks: Vec<_> = (0..200)
        .map(|n| {
            let client = s.client.clone();
            let url = format!("{}/v1/functions/fair/invoke", s.base);
            let flood = flood.clone();
            tokio::spawn(async move {
                let r = reply(
                    client
                        .post(url)
                        .bearer_auth(flood)
                        .json(&json!({"input": {"n": n}})),
                )
                .await;
                (r.status, r.code().to_owned(), Instant::now())
            })
        })
        .collect();
    // B comes in once A's backlog fills the queue.
    let queued = || async { s.model(&observer, MODEL).await["queued"].as_u64().unwrap() };
    let mut backlog = 0;
    for _ in 0..500 {
        backlog = queued().await;
        if backlog >= 24 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        backlog >= 24,
        "A's flood never filled the queue ({backlog} queued)"
    );
    let under_flood = quiet_call(2000).await;
    // A sends nothing after its first 200, so in FIFO order every one of its queued jobs
    // would have left the queue before B finished.
    let backlog_after = queued().await;

    let (mut ok, mut overloaded) = (0, 0);
    let mut last_done = flood_started;
    for task in tasks {
        let (status, code, at) = task.await.unwrap();
        match (status, code.as_str()) {
            (200, _) => ok += 1,
            (503, "overloaded") => overloaded += 1,
            other => panic!("A's invocation ended {other:?}"),
        }
        last_done = last_done.max(at);
    }
    println!(
        "fairness: {slots} slots, 1 replica; B idle {idle_median:?} (median of {idle:?}); \
         B under A's flood {under_flood:?} (bound {bound:?}); A's queue {backlog} when B came \
         and {backlog_after} when B was done; A: {ok} ok, {overloaded} overloaded (503), all \
         answered {:?} after the flood began",
        last_done - flood_started
    );
    assert!(ok >= 24, "A's admitted work ran: {ok}");
    assert!(
        overloaded > 0,
        "A's overflow met the queue's per-tenant bound"
    );
    assert!(
        backlog_after * 2 >= backlog,
        "B overtook A's backlog ({backlog} queued before, {backlog_after} after)"
    );
    assert!(
        under_flood <= bound,
        "B took {under_flood:?} under the flood, over the bound {bound:?} (idle {idle_median:?})"
    );
    s.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 6. Async
// ---------------------------------------------------------------------------------------------

async fn async_invocations_run_from_the_queue_and_page_newest_first(db: Db) {
    let s = serve(db, |_| {}).await;
    let t = token("acme");
    deployed(&s, &t, function("later", "Name a fruit like {{ n }}.", 4)).await;

    let accepted = reply(
        s.build(Method::POST, "/v1/functions/later/invoke", &t)
            .json(&json!({"input": {"n": "apple"}, "mode": "async"})),
    )
    .await;
    assert_eq!(accepted.status, 202, "{:?}", accepted.body);
    assert_eq!(accepted.body["status"], "queued");
    assert_eq!(accepted.body["function"], "later");
    assert_eq!(accepted.body["version"], 1);
    let id = accepted.body["invocation_id"].as_str().unwrap().to_owned();
    assert_eq!(
        accepted.header("location"),
        Some(format!("/v1/invocations/{id}").as_str())
    );
    let done = finished(&s, &t, &id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["mode"], "async");
    assert_eq!(done["attempts"], 1);
    assert_eq!(done["input"], json!({"n": "apple"}));
    assert!(
        !done["output"]["text"].as_str().unwrap().is_empty(),
        "{done}"
    );
    assert!(done["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    assert!(done["completed_at"].is_string());

    let preferred = reply(
        s.build(Method::POST, "/v1/functions/later/invoke", &t)
            .header("prefer", "respond-async")
            .json(&json!({"input": {"n": "pear"}})),
    )
    .await;
    assert_eq!(preferred.status, 202, "{:?}", preferred.body);
    let pid = preferred.body["invocation_id"].as_str().unwrap().to_owned();
    assert_eq!(finished(&s, &t, &pid).await["status"], "succeeded");

    // Seven more of another function, in order, and one that is cancelled.
    deployed(&s, &t, function("paged", "Name a number near {{ n }}.", 4)).await;
    let mut submitted = Vec::new();
    for n in 0..7 {
        submitted.push(invoke_async(&s, &t, "paged", json!({"input": {"n": n}})).await);
    }
    let mut long = json!({"input": {"n": 100}, "params": {"max_tokens": 400, "ignore_eos": true}});
    long["mode"] = json!("async");
    let (_, cancelled) = s.invoke(&t, "paged", long).await;
    let cancelled = cancelled["invocation_id"].as_str().unwrap().to_owned();
    let (status, got) = s
        .call(
            Method::POST,
            &format!("/v1/invocations/{cancelled}/cancel"),
            &t,
            None,
        )
        .await;
    assert_eq!(status, 202, "{got}");
    for id in &submitted {
        assert_eq!(finished(&s, &t, id).await["status"], "succeeded");
    }
    assert_eq!(finished(&s, &t, &cancelled).await["status"], "cancelled");

    let pages = all_invocations(&s, &t, "&function=paged&status=succeeded", 3).await;
    let ids: Vec<&str> = pages
        .iter()
        .map(|i| i["invocation_id"].as_str().unwrap())
        .collect();
    let newest_first: Vec<&str> = submitted.iter().rev().map(String::as_str).collect();
    assert_eq!(ids, newest_first, "every one once, newest first");
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 7);
    // Three pages: 3, 3 and 1, the last without a cursor.
    let (_, first) = s
        .call(
            Method::GET,
            "/v1/invocations?function=paged&limit=3",
            &t,
            None,
        )
        .await;
    assert_eq!(first["invocations"].as_array().unwrap().len(), 3);
    assert!(first["next_cursor"].is_string());

    let all_paged = all_invocations(&s, &t, "&function=paged", 3).await;
    assert_eq!(all_paged.len(), 8);
    let only = |status: &str| {
        let s = &s;
        let t = &t;
        let status = status.to_owned();
        async move {
            all_invocations(s, t, &format!("&function=paged&status={status}"), 50)
                .await
                .iter()
                .map(|i| i["invocation_id"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(only("cancelled").await, vec![cancelled.clone()]);
    assert_eq!(only("queued").await, Vec::<String>::new());
    assert_eq!(only("failed").await, Vec::<String>::new());
    let later = all_invocations(&s, &t, "&function=later", 50).await;
    assert_eq!(later.len(), 2, "the function filter holds");
    let (status, got) = s
        .call(Method::GET, "/v1/invocations?status=bogus", &t, None)
        .await;
    assert_eq!(
        (status, error_code(&got)),
        (422, "invalid_request"),
        "{got}"
    );
    let (status, got) = s
        .call(Method::GET, "/v1/invocations?cursor=nonsense", &t, None)
        .await;
    assert_eq!(
        (status, error_code(&got)),
        (422, "invalid_request"),
        "{got}"
    );
    s.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 7. Idempotency and cancellation
// ---------------------------------------------------------------------------------------------

async fn idempotency_keys_replay_the_same_invocation(db: Db) {
    let s = serve(db, |_| {}).await;
    let t = token("acme");
    deployed(&s, &t, function("once", "Name a bird like {{ n }}.", 4)).await;
    let send = |key: &str, body: Value| {
        reply(
            s.build(Method::POST, "/v1/functions/once/invoke", &t)
                .header("idempotency-key", key)
                .json(&body),
        )
    };

    // Asynchronous.
    let body = json!({"input": {"n": "owl"}, "mode": "async"});
    let first = send("async-1", body.clone()).await;
    assert_eq!(first.status, 202, "{:?}", first.body);
    assert_eq!(first.header("idempotent-replayed"), None);
    let id = first.body["invocation_id"].as_str().unwrap().to_owned();
    let again = send("async-1", body.clone()).await;
    assert_eq!(again.status, 202, "{:?}", again.body);
    assert_eq!(again.body["invocation_id"], json!(id));
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    let other = send("async-1", json!({"input": {"n": "hawk"}, "mode": "async"})).await;
    assert_eq!(
        (other.status, other.code()),
        (409, "idempotency_key_reused"),
        "{:?}",
        other.body
    );
    finished(&s, &t, &id).await;
    let after = send("async-1", body).await;
    assert_eq!(
        (
            after.status,
            &after.body["invocation_id"],
            &after.body["status"]
        ),
        (202, &json!(id), &json!("succeeded")),
        "a replay after the end reports the end: {:?}",
        after.body
    );

    // Synchronous: the same answer, invocation id included.
    let body = json!({"input": {"n": "wren"}});
    let first = send("sync-1", body.clone()).await;
    assert_eq!(first.status, 200, "{:?}", first.body);
    let again = send("sync-1", body.clone()).await;
    assert_eq!(again.status, 200, "{:?}", again.body);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    for field in [
        "invocation_id",
        "function",
        "version",
        "model",
        "output",
        "finish_reason",
        "cache_hit",
    ] {
        assert_eq!(again.body[field], first.body[field], "{field}");
    }
    for field in ["prompt_tokens", "completion_tokens"] {
        assert_eq!(
            again.body["usage"][field], first.body["usage"][field],
            "{field}"
        );
    }
    let other = send("sync-1", json!({"input": {"n": "crow"}})).await;
    assert_eq!(
        (other.status, other.code()),
        (409, "idempotency_key_reused")
    );

    // One invocation per key, and keys are per tenant.
    flush_records(&s).await;
    let recorded = all_invocations(&s, &t, "&function=once", 50).await;
    assert_eq!(recorded.len(), 2, "{recorded:?}");
    let g = token("globex");
    deployed(&s, &g, function("once", "Name a bird like {{ n }}.", 4)).await;
    let theirs = reply(
        s.build(Method::POST, "/v1/functions/once/invoke", &g)
            .header("idempotency-key", "async-1")
            .json(&json!({"input": {"n": "owl"}, "mode": "async"})),
    )
    .await;
    assert_eq!(theirs.status, 202);
    assert_eq!(theirs.header("idempotent-replayed"), None);
    assert_ne!(theirs.body["invocation_id"], json!(id));
    s.stop().await;
}

async fn cancel_stops_queued_and_running_work(db: Db) {
    // One queued invocation at a time on this node, so that a second one stays queued; a
    // larger context so that the long generation would run for many seconds.
    let s = serve(db, |c| {
        c.queue.concurrency = 1;
        c.models[0].n_ctx = 2048;
    })
    .await;
    let t = token("acme");
    let mut long = function("long", "Tell a very long story about {{ topic }}.", 1500);
    long["params"]["ignore_eos"] = json!(true);
    deployed(&s, &t, long).await;
    deployed(
        &s,
        &t,
        function("short", "Name a colour like {{ topic }}.", 4),
    )
    .await;

    // The decode rate, to know how long the long generation would take.
    let (status, probe) = s
        .invoke(
            &t,
            "long",
            json!({"input": {"topic": "a probe"}, "params": {"max_tokens": 32}}),
        )
        .await;
    assert_eq!(status, 200, "{probe}");
    let decode_s = (probe["timings"]["total_ms"].as_f64().unwrap()
        - probe["timings"]["ttft_ms"].as_f64().unwrap())
        / 1000.0;
    let per_token = decode_s / 31.0;
    let full_run = Duration::from_secs_f64(per_token * 1500.0);

    let running = invoke_async(&s, &t, "long", json!({"input": {"topic": "the sea"}})).await;
    wait_status(&s, &t, &running, &["running"], Duration::from_secs(30)).await;
    let queued = invoke_async(&s, &t, "short", json!({"input": {"topic": "moss"}})).await;
    let after_queued = invoke_async(&s, &t, "short", json!({"input": {"topic": "sand"}})).await;
    assert_eq!(record(&s, &t, &queued).await["status"], "queued");

    // Queued: cancelled at once, and never run.
    let (status, got) = s
        .call(
            Method::POST,
            &format!("/v1/invocations/{queued}/cancel"),
            &t,
            None,
        )
        .await;
    assert_eq!(
        (status, &got["status"]),
        (202, &json!("cancelled")),
        "{got}"
    );

    // Running: the generation stops within a decode step.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        s.model(&t, MODEL).await["busy_slots"].as_u64().unwrap() >= 1,
        "the long generation is on the model"
    );
    let cancel_at = Instant::now();
    let (status, got) = s
        .call(
            Method::POST,
            &format!("/v1/invocations/{running}/cancel"),
            &t,
            None,
        )
        .await;
    assert_eq!(status, 202, "{got}");
    let ended = wait_status(&s, &t, &running, &["cancelled"], Duration::from_secs(10)).await;
    let to_cancelled = cancel_at.elapsed();
    let mut slot_freed = None;
    while cancel_at.elapsed() < full_run {
        let m = s.model(&t, MODEL).await;
        if m["busy_slots"] == 0 && m["queued"] == 0 {
            slot_freed = Some(cancel_at.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The next queued invocation may have taken the slot meanwhile; it is 4 tokens long.
    let freed = slot_freed.expect("the cancelled generation kept its slot to the end");
    println!(
        "cancel: status cancelled after {to_cancelled:?}, model slot free after {freed:?}; \
         the full 1500-token generation would take about {full_run:?} ({:.1} ms/token)",
        per_token * 1000.0
    );
    // Relative to the decode rate just measured, because the machine's load varies: left
    // running, the slot would stay busy for nearly the whole generation.
    assert!(
        freed * 4 < full_run,
        "the slot was freed {freed:?} after cancel; the whole generation takes {full_run:?}"
    );
    assert!(
        ended["usage"]["completion_tokens"].as_u64().unwrap() < 1500,
        "{ended}"
    );
    assert_eq!(ended["error"]["code"], "cancelled", "{ended}");

    // The queue moved on past the cancelled one, which never ran.
    assert_eq!(finished(&s, &t, &after_queued).await["status"], "succeeded");
    let never = record(&s, &t, &queued).await;
    assert_eq!(never["status"], "cancelled", "{never}");
    assert_eq!(never["attempts"], 0, "{never}");
    assert_eq!(never["output"], Value::Null, "{never}");
    assert_eq!(never["model"], Value::Null, "{never}");

    // Finished work cannot be cancelled; cancelled work stays cancelled.
    let (status, got) = s
        .call(
            Method::POST,
            &format!("/v1/invocations/{after_queued}/cancel"),
            &t,
            None,
        )
        .await;
    assert_eq!(
        (status, error_code(&got)),
        (409, "not_cancellable"),
        "{got}"
    );
    let (status, got) = s
        .call(
            Method::POST,
            &format!("/v1/invocations/{queued}/cancel"),
            &t,
            None,
        )
        .await;
    assert_eq!(
        (status, &got["status"]),
        (202, &json!("cancelled")),
        "{got}"
    );
    s.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 8. Batches
// ---------------------------------------------------------------------------------------------

/// Polls a batch until it is completed; returns its last state.
async fn completed_batch(s: &TestServer, token: &str, id: &str, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let (status, batch) = s
            .call(Method::GET, &format!("/v1/batches/{id}"), token, None)
            .await;
        assert_eq!(status, 200, "{batch}");
        if batch["status"] == "completed" {
            return batch;
        }
        assert!(Instant::now() < deadline, "batch {id} not done: {batch}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn batch_results(s: &TestServer, token: &str, id: &str) -> Vec<Value> {
    let got = reply(s.build(Method::GET, &format!("/v1/batches/{id}/results"), token)).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.header("content-type"), Some("application/jsonl"));
    let text = got.body["raw"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| {
            // A single line parses as JSON on its own.
            got.body.to_string()
        });
    text.lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect()
}

async fn batches_accept_arrays_objects_and_jsonl(db: Db) {
    let s = serve(db, |_| {}).await;
    let t = token("acme");
    deployed(&s, &t, function("tiny", "Say {{ n }}.", 4)).await;
    let submit = |body: reqwest::RequestBuilder| async move {
        let r = reply(body).await;
        assert_eq!(r.status, 202, "{:?}", r.body);
        (
            r.body["batch_id"].as_str().unwrap().to_owned(),
            r.body["total"].as_u64().unwrap(),
        )
    };
    let path = "/v1/functions/tiny/batches";
    let (array, n_array) = submit(
        s.build(Method::POST, path, &t)
            .json(&json!([{"n": "one"}, {"n": "two"}])),
    )
    .await;
    let (object, n_object) = submit(s.build(Method::POST, path, &t).json(&json!({
        "inputs": [{"n": "three"}, {"n": "four"}, {"n": "five"}],
        "params": {"max_tokens": 2, "ignore_eos": true}
    })))
    .await;
    let (lines, n_lines) = submit(
        s.build(Method::POST, path, &t)
            .header("content-type", "application/jsonl")
            .body("{\"n\": \"six\"}\n\n{\"n\": \"seven\"}\n"),
    )
    .await;
    assert_eq!((n_array, n_object, n_lines), (2, 3, 2));

    for (id, inputs) in [
        (&array, vec!["one", "two"]),
        (&object, vec!["three", "four", "five"]),
        (&lines, vec!["six", "seven"]),
    ] {
        let batch = completed_batch(&s, &t, id, Duration::from_secs(120)).await;
        assert_eq!(
            batch["counts"],
            json!({"succeeded": inputs.len()}),
            "{batch}"
        );
        let results = batch_results(&s, &t, id).await;
        assert_eq!(results.len(), inputs.len());
        for (i, (line, n)) in results.iter().zip(&inputs).enumerate() {
            assert_eq!(line["index"], i, "{line}");
            assert_eq!(line["status"], "succeeded", "{line}");
            let item = record(&s, &t, line["invocation_id"].as_str().unwrap()).await;
            assert_eq!(item["input"], json!({"n": n}), "{item}");
            assert_eq!(item["mode"], "batch");
            assert_eq!(item["batch_id"], json!(id));
            if id == &object {
                assert_eq!(
                    item["usage"]["completion_tokens"], 2,
                    "the batch's params: {item}"
                );
            }
        }
    }

    // One bad input refuses the whole batch and names it; nothing is queued.
    let got = reply(
        s.build(Method::POST, path, &t)
            .json(&json!([{"n": "ok"}, {"m": "missing n"}])),
    )
    .await;
    assert_eq!(
        (got.status, got.code()),
        (422, "template_error"),
        "{:?}",
        got.body
    );
    assert!(
        got.body["error"]["field"]
            .as_str()
            .is_some_and(|f| f.starts_with("inputs[1]")),
        "{:?}",
        got.body
    );
    let got = reply(s.build(Method::POST, path, &t).json(&json!([]))).await;
    assert_eq!((got.status, got.code()), (422, "invalid_request"));
    assert_eq!(all_invocations(&s, &t, "", 50).await.len(), 7);
    s.stop().await;
}

/// Inputs in the large batch: 1000 on SQLite; on Postgres too when it fits (see the report).
const BIG_BATCH: usize = 1000;

async fn a_batch_of_1000_inputs_completes_in_input_order(db: Db) {
    let on = match &db {
        Db::Sqlite => "sqlite",
        Db::Postgres(_) => "postgres",
    };
    // It runs alone (`ALONE`), so the one-thread rule of `serve` (shared cores) does not
    // apply: two threads take the thousand prefills in about half the time, which is most of
    // this file's run.
    let s = serve(db, |c| {
        c.queue.concurrency = 32;
        for model in &mut c.models {
            model.threads = 2;
        }
    })
    .await;
    let t = token("acme");
    deployed(&s, &t, function("count", "Say {{ n }}.", 2)).await;
    // One warm-up so that the model load is not part of the measurement.
    let (status, out) = s.invoke(&t, "count", json!({"input": {"n": -1}})).await;
    assert_eq!(status, 200, "{out}");

    let body: String = (0..BIG_BATCH)
        .map(|n| format!("{{\"n\": {n}}}\n"))
        .collect();
    let started = Instant::now();
    let accepted = reply(
        s.build(Method::POST, "/v1/functions/count/batches", &t)
            .header("content-type", "application/jsonl")
            .body(body),
    )
    .await;
    assert_eq!(accepted.status, 202, "{:?}", accepted.body);
    let accepted_in = started.elapsed();
    assert_eq!(accepted.body["total"], BIG_BATCH);
    assert_eq!(accepted.body["counts"], json!({"queued": BIG_BATCH}));
    let id = accepted.body["batch_id"].as_str().unwrap().to_owned();

    let batch = completed_batch(&s, &t, &id, Duration::from_secs(600)).await;
    let took = started.elapsed();
    assert_eq!(batch["counts"], json!({"succeeded": BIG_BATCH}), "{batch}");
    let results = batch_results(&s, &t, &id).await;
    println!(
        "batch on {on}: {BIG_BATCH} inputs accepted in {accepted_in:?}, completed in {took:?} \
         ({:.1} inputs/s)",
        BIG_BATCH as f64 / took.as_secs_f64()
    );
    assert_eq!(results.len(), BIG_BATCH);
    let mut ids = HashSet::new();
    for (i, line) in results.iter().enumerate() {
        assert_eq!(line["index"], i, "{line}");
        assert_eq!(line["status"], "succeeded", "{line}");
        assert!(line["output"]["text"].is_string(), "{line}");
        assert!(ids.insert(line["invocation_id"].as_str().unwrap().to_owned()));
    }
    for i in [0, 1, 2, 137, 500, 998, BIG_BATCH - 1] {
        let item = record(&s, &t, results[i]["invocation_id"].as_str().unwrap()).await;
        assert_eq!(item["input"], json!({"n": i}), "{item}");
        assert_eq!(item["batch_index"], i);
        assert_eq!(item["status"], "succeeded");
        assert_eq!(item["output"]["text"], results[i]["output"]["text"]);
    }
    s.stop().await;
}
