//! Credentials: weak signing secrets, key escalation, token lifetime.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use genrt_tests::process::genrt_binary;
use genrt_tests::{admin_token, reply, token_scoped, token_with, Db, TestServer, SECRET};
use reqwest::Method;
use serde_json::{json, Value};

/// Runs `genrt serve` on every interface with `secret` (none: the built-in development one)
/// and returns its exit status and output, or `None` when it was still running after a while
/// (it started).
fn serve_on_all_interfaces(secret: Option<&str>) -> Option<(bool, String)> {
    let data = genrt_tests::TempDir::new("genrt-attack-secret");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut command = Command::new(genrt_binary());
    command
        .args(["serve", "--host", "0.0.0.0", "--port", &port.to_string()])
        .arg("--data-dir")
        .arg(&data.0)
        .current_dir(&data.0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("GENRT_") {
            command.env_remove(name);
        }
    }
    command.env("GENRT_TELEMETRY__METRICS_LISTEN", "127.0.0.1:0");
    if let Some(secret) = secret {
        command.env("GENRT_JWT_SECRET", secret);
    }
    let mut child = command.spawn().expect("start genrt");
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            let out = child.wait_with_output().unwrap();
            let text = String::from_utf8_lossy(&out.stderr).into_owned()
                + &String::from_utf8_lossy(&out.stdout);
            return Some((out.status.success(), text));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// The Secret manifest's value for the JWT secret, as a deployment that forgot to set it
/// would run with.
fn manifest_secret() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/base/secret.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("GENRT_JWT_SECRET:"))
        .expect("the Secret names GENRT_JWT_SECRET");
    line.split_once(':')
        .unwrap()
        .1
        .trim()
        .trim_matches('"')
        .to_owned()
}

#[test]
fn start_with_the_dev_or_a_placeholder_secret_on_all_interfaces_is_refused() {
    let shipped = manifest_secret();
    for secret in [
        None,
        Some("change-me-to-at-least-32-random-bytes"),
        Some(shipped.as_str()),
        Some("short-but-sixteen+"),
    ] {
        let outcome = serve_on_all_interfaces(secret);
        let (ok, output) = outcome.unwrap_or_else(|| panic!("{secret:?}: the server started"));
        assert!(!ok, "{secret:?}: exited successfully\n{output}");
        assert!(
            output.contains("auth.jwt_secret") && output.contains("0.0.0.0"),
            "{secret:?}: the refusal names the setting and the address\n{output}"
        );
    }
    // The control: a generated secret on the same address starts.
    assert_eq!(
        serve_on_all_interfaces(Some("Zq8vN2xR5tY7wK1mP4sL9cB3hJ6fD0gAe7")),
        None,
        "a strong secret starts"
    );
}

async fn create_key(s: &TestServer, token: &str, body: Value) -> (u16, Value) {
    s.call(Method::POST, "/v1/api-keys", token, Some(body))
        .await
}

#[tokio::test]
async fn an_admin_key_for_another_tenant_gets_tenant_scopes_unless_admin_is_asked_for() {
    let s = TestServer::start_fake(Db::Sqlite, |_| {}).await;
    let admin = admin_token();
    // No scopes named: the tenant default scopes, never the creator's `admin`.
    let (status, key) = create_key(&s, &admin, json!({"name": "ops", "tenant": "victim"})).await;
    assert_eq!(status, 201, "{key}");
    let scopes: Vec<&str> = key["scopes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(!scopes.contains(&"admin"), "{key}");
    assert!(scopes.contains(&"functions:invoke"), "{key}");
    let secret = key["secret"].as_str().unwrap();
    let got = reply(s.build(Method::GET, "/v1/admin/tenants", secret)).await;
    assert_eq!(got.status, 403, "{:?}", got.body);
    // Nor does a tenant's own key copy `admin` from its creator unless asked.
    let both = token_scoped("ops", &["admin", "keys:write", "functions:write"]);
    let (status, key) = create_key(&s, &both, json!({"name": "own"})).await;
    assert_eq!(status, 201, "{key}");
    assert_eq!(
        key["scopes"],
        json!(["functions:write", "keys:write"]),
        "{key}"
    );

    // Asked for by name, by an admin: granted.
    let (status, key) = create_key(
        &s,
        &admin,
        json!({"name": "ops2", "tenant": "victim", "scopes": ["admin"]}),
    )
    .await;
    assert_eq!((status, &key["scopes"]), (201, &json!(["admin"])), "{key}");
    // Asked for by someone without it: refused.
    let writer = token_scoped("acme", &["keys:write", "functions:invoke"]);
    let (status, got) = create_key(&s, &writer, json!({"name": "x", "scopes": ["admin"]})).await;
    assert_eq!(
        (status, got["error"]["code"].as_str()),
        (403, Some("insufficient_scope"))
    );
    let (status, got) = create_key(&s, &writer, json!({"name": "x", "tenant": "other"})).await;
    assert_eq!(
        (status, got["error"]["code"].as_str()),
        (403, Some("insufficient_scope"))
    );
    s.stop().await;
}

#[tokio::test]
async fn a_short_lived_token_cannot_mint_a_longer_lived_key() {
    let s = TestServer::start_fake(Db::Sqlite, |c| c.auth.max_token_ttl_s = 30 * 86_400).await;
    let hour = token_with("acme", SECRET, "genrt", 3600);
    let now = chrono::Utc::now();
    // Unasked, the key expires with the token that made it.
    let (status, key) = create_key(&s, &hour, json!({"name": "ci"})).await;
    assert_eq!(status, 201, "{key}");
    let expires: chrono::DateTime<chrono::Utc> =
        key["expires_at"].as_str().unwrap().parse().unwrap();
    assert!(expires <= now + chrono::Duration::seconds(3601), "{key}");
    // Asked for a year: refused, at the field.
    let year = (now + chrono::Duration::days(365)).to_rfc3339();
    let (status, got) = create_key(&s, &hour, json!({"name": "ci", "expires_at": year})).await;
    assert_eq!(status, 422, "{got}");
    assert_eq!(got["error"]["field"], json!("expires_at"), "{got}");
    // A key made by a key: bounded by the configured maximum, then by its creator.
    let long = token_with("acme", SECRET, "genrt", 20 * 86_400);
    let (_, parent) = create_key(&s, &long, json!({"name": "parent"})).await;
    let parent_secret = parent["secret"].as_str().unwrap();
    let later = (now + chrono::Duration::days(25)).to_rfc3339();
    let (status, got) = create_key(
        &s,
        parent_secret,
        json!({"name": "child", "expires_at": later}),
    )
    .await;
    assert_eq!(status, 422, "{got}");
    // A token valid for longer than the maximum is refused outright.
    let forever = token_with("acme", SECRET, "genrt", 365 * 86_400);
    let got = reply(s.build(Method::GET, "/v1/functions", &forever)).await;
    assert_eq!(
        (got.status, got.code()),
        (401, "invalid_token"),
        "{:?}",
        got.body
    );
    s.stop().await;
}
