//! What the web console (issue #19) needs from the server, on SQLite and Postgres, with the
//! real SmolLM2 model: `GET /v1/me` for the signed-in credential; usage by error code and the
//! newest invocation per group; invocation listings filtered by mode and time; and the
//! console's files served static, with a strict Content-Security-Policy, holding no data.
//! The console itself is tested in a real browser by console/test/ (`make test`).

use chrono::{DateTime, Duration, Utc};
use futures_util::StreamExt;
use genrt_tests::{token, token_scoped, Db, TestServer, MODEL};
use reqwest::header::{ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_SECURITY_POLICY, CONTENT_TYPE};
use reqwest::Method;
use serde_json::{json, Value};

genrt_tests::on_both_databases!(
    a_credential_learns_its_tenant_scopes_and_expiry,
    usage_and_listings_answer_the_consoles_questions,
    the_console_is_static_and_locked_down,
);

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<none>")
}

async fn a_credential_learns_its_tenant_scopes_and_expiry(db: Db) {
    let s = TestServer::start(db).await;
    let (status, me) = s
        .call(
            Method::GET,
            "/v1/me",
            &token_scoped("acme", &["functions:invoke", "invocations:read"]),
            None,
        )
        .await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["tenant"], "acme");
    assert_eq!(me["credential"], "token");
    assert_eq!(
        me["scopes"],
        json!(["functions:invoke", "invocations:read"])
    );
    let expires: DateTime<Utc> = me["expires_at"].as_str().unwrap().parse().unwrap();
    assert!(expires > Utc::now() + Duration::minutes(50), "{me}");

    // An API key says which it is.
    let (status, key) = s
        .call(
            Method::POST,
            "/v1/api-keys",
            &token("acme"),
            Some(json!({"name": "console", "scopes": ["invocations:read"]})),
        )
        .await;
    assert_eq!(status, 201, "{key}");
    let secret = key["secret"].as_str().unwrap();
    let (status, me) = s.call(Method::GET, "/v1/me", secret, None).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["credential"], "api_key");
    assert_eq!(me["key_id"], key["id"]);
    assert_eq!(me["scopes"], json!(["invocations:read"]));

    // Nothing without a valid credential.
    let (status, body) =
        genrt_tests::read(s.request(Method::GET, "/v1/me", None, None).await).await;
    assert_eq!(
        (status, code(&body)),
        (401, "missing_credentials"),
        "{body}"
    );
    let (status, body) = s.call(Method::GET, "/v1/me", "grt_nope", None).await;
    assert_eq!(status, 401, "{body}");
    s.stop().await;
}

async fn usage_and_listings_answer_the_consoles_questions(db: Db) {
    let s = TestServer::start(db).await;
    let t = token("acme");
    let started = Utc::now() - Duration::seconds(1);
    let (status, body) = s
        .deploy(
            &t,
            json!({
                "name": "story",
                "model": MODEL,
                "prompt": "Tell a long story about {{ topic }}.",
                "params": {"max_tokens": 400, "ignore_eos": true, "temperature": 0}
            }),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, out) = s
        .invoke(
            &t,
            "story",
            json!({"input": {"topic": "a cat"}, "params": {"max_tokens": 2}}),
        )
        .await;
    assert_eq!(status, 200, "{out}");
    let sync_id = out["invocation_id"].as_str().unwrap().to_owned();

    // A stream dropped after its first token: the invocation ends `cancelled`.
    let (status, mut events) = s
        .open_stream(&t, "story", json!({"input": {"topic": "a dog"}}))
        .await;
    assert_eq!(status, 200);
    let first = events.next().await.expect("a first event");
    assert_eq!(first.event, "token", "{first:?}");
    drop(events);
    let mut cancelled = Value::Null;
    for _ in 0..300 {
        let (_, page) = s
            .call(Method::GET, "/v1/invocations?mode=stream", &t, None)
            .await;
        cancelled = page["invocations"][0].clone();
        if cancelled["status"] == "cancelled" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");

    // Errors by code; the newest invocation of each group.
    let (status, usage) = s
        .call(Method::GET, "/v1/usage?group_by=error_code", &t, None)
        .await;
    assert_eq!(status, 200, "{usage}");
    assert_eq!(usage["group_by"], "error_code");
    let codes = usage["usage"].as_array().unwrap();
    assert_eq!(codes.len(), 1, "{usage}");
    assert_eq!(codes[0]["key"], "cancelled");
    assert_eq!(codes[0]["invocations"], 1);
    let (_, usage) = s
        .call(Method::GET, "/v1/usage?group_by=function", &t, None)
        .await;
    let story = &usage["usage"][0];
    assert_eq!(
        (story["key"].as_str(), story["invocations"].as_u64()),
        (Some("story"), Some(2))
    );
    let last: DateTime<Utc> = story["last_at"].as_str().unwrap().parse().unwrap();
    let newest: DateTime<Utc> = cancelled["created_at"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        last.timestamp_millis(),
        newest.timestamp_millis(),
        "{usage} {cancelled}"
    );
    assert_eq!(usage["total"]["last_at"], story["last_at"]);
    let (status, body) = s
        .call(Method::GET, "/v1/usage?group_by=tenant", &t, None)
        .await;
    assert_eq!((status, code(&body)), (422, "invalid_request"), "{body}");

    // Listings by mode and time.
    let ids = |page: &Value| -> Vec<String> {
        page["invocations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["invocation_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let (_, page) = s
        .call(Method::GET, "/v1/invocations?mode=sync", &t, None)
        .await;
    assert_eq!(ids(&page), [sync_id]);
    let (_, page) = s
        .call(Method::GET, "/v1/invocations?mode=stream", &t, None)
        .await;
    assert_eq!(ids(&page), [cancelled["invocation_id"].as_str().unwrap()]);
    let at = |d: DateTime<Utc>| d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let (_, page) = s
        .call(
            Method::GET,
            &format!("/v1/invocations?from={}", at(started)),
            &t,
            None,
        )
        .await;
    assert_eq!(ids(&page).len(), 2, "{page}");
    let (_, page) = s
        .call(
            Method::GET,
            &format!(
                "/v1/invocations?from={}",
                at(Utc::now() + Duration::hours(1))
            ),
            &t,
            None,
        )
        .await;
    assert_eq!(ids(&page).len(), 0, "{page}");
    let (_, page) = s
        .call(
            Method::GET,
            &format!("/v1/invocations?to={}", at(started)),
            &t,
            None,
        )
        .await;
    assert_eq!(ids(&page).len(), 0, "{page}");
    let (status, body) = s
        .call(Method::GET, "/v1/invocations?mode=telepathy", &t, None)
        .await;
    assert_eq!((status, code(&body)), (422, "invalid_request"), "{body}");
    assert_eq!(body["error"]["field"], "mode");
    let (status, body) = s
        .call(
            Method::GET,
            &format!("/v1/invocations?from={}&to={}", at(Utc::now()), at(started)),
            &t,
            None,
        )
        .await;
    assert_eq!((status, code(&body)), (422, "invalid_request"), "{body}");
    s.stop().await;
}

async fn the_console_is_static_and_locked_down(db: Db) {
    let s = TestServer::start(db).await;
    let t = token("acme");
    for path in ["/console", "/console/", "/console/index.html"] {
        let response = s.request(Method::GET, path, None, None).await;
        assert_eq!(response.status(), 200, "{path}");
        let headers = response.headers().clone();
        assert_eq!(headers[CONTENT_TYPE], "text/html; charset=utf-8", "{path}");
        let csp = headers[CONTENT_SECURITY_POLICY].to_str().unwrap();
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "connect-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(csp.contains(directive), "{csp}");
        }
        assert!(!csp.contains("unsafe"), "{csp}");
        assert_eq!(headers["x-content-type-options"], "nosniff");
        assert_eq!(headers["x-frame-options"], "DENY");
        let html = response.text().await.unwrap();
        assert!(html.contains("genrt console"), "{html}");
    }
    if genrt_runtime::api::console::built() {
        // The page's bundle, compressed for a browser that accepts gzip, plain otherwise.
        let html = s
            .request(Method::GET, "/console/", None, None)
            .await
            .text()
            .await
            .unwrap();
        let script = html
            .split("src=\"/console/")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("the page names its script");
        let path = format!("/console/{script}");
        let gzip = s
            .build(Method::GET, &path, &t)
            .header(ACCEPT_ENCODING, "gzip, br")
            .send()
            .await
            .unwrap();
        assert_eq!(gzip.status(), 200);
        assert_eq!(gzip.headers()[CONTENT_ENCODING], "gzip");
        assert_eq!(
            gzip.headers()[CONTENT_TYPE],
            "text/javascript; charset=utf-8"
        );
        let gz_len = gzip.bytes().await.unwrap().len();
        let plain = s.request(Method::GET, &path, None, None).await;
        assert!(plain.headers().get(CONTENT_ENCODING).is_none());
        let plain_len = plain.bytes().await.unwrap().len();
        assert!(gz_len * 2 < plain_len, "{gz_len} vs {plain_len}");
    }
    // No data under /console: without a credential, a path under it is a file or a 404,
    // and one that leaves it (`..`, resolved by the client or the router) reaches an API
    // route, which refuses it as always.
    for path in [
        "/console/v1/functions",
        "/console/api/functions",
        "/console/../v1/functions",
        "/console/%2e%2e/v1/functions",
        "/console/assets/nope.js",
        "/console/index.html.gz",
    ] {
        let response = s.request(Method::GET, path, None, None).await;
        let status = response.status().as_u16();
        let kind = response.headers()[CONTENT_TYPE]
            .to_str()
            .unwrap()
            .to_owned();
        let body = response.text().await.unwrap();
        match status {
            401 => assert!(body.contains("missing_credentials"), "{path}: {body}"),
            404 => assert!(kind.starts_with("text/plain"), "{path}: {kind}"),
            _ => panic!("{path}: {status} {body}"),
        }
    }
    // Writes are not routes of the console.
    let response = s
        .request(Method::POST, "/console/", Some(&t), Some(json!({})))
        .await;
    assert!(
        matches!(response.status().as_u16(), 404 | 405),
        "{}",
        response.status()
    );
    s.stop().await;
}
