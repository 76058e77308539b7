//! Tokens signed with the test keys in `runtime/tests/fixtures`, accepted and refused. The JWKS
//! URL tests serve the document from a local TCP listener.

use std::sync::Mutex;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;
use crate::config::Config;

const SECRET: &str = "unit-test-secret-0123456789";
/// `{"alg":"none","typ":"JWT"}`, base64url-encoded.
const NONE_HEADER: &str = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0";

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).unwrap()
}

fn pem_key(kid: Option<&str>, alg: JwtAlgorithm, file: &str) -> PublicKeyConfig {
    PublicKeyConfig {
        kid: kid.map(str::to_owned),
        alg,
        pem_file: fixture(file),
    }
}

fn secret_only() -> AuthConfig {
    AuthConfig {
        jwt_secret: SECRET.into(),
        ..AuthConfig::default()
    }
}

fn with_pem_keys() -> AuthConfig {
    AuthConfig {
        // HS256 beside the keys on purpose: these tests check each algorithm's key choice.
        allowed_algorithms: Some(vec![
            JwtAlgorithm::HS256,
            JwtAlgorithm::RS256,
            JwtAlgorithm::ES256,
        ]),
        public_keys: vec![
            pem_key(Some("rsa-1"), JwtAlgorithm::RS256, "rsa-public.pem"),
            pem_key(Some("ec-1"), JwtAlgorithm::ES256, "ec-public.pem"),
        ],
        ..secret_only()
    }
}

fn rsa_only() -> AuthConfig {
    AuthConfig {
        public_keys: vec![pem_key(
            Some("rsa-1"),
            JwtAlgorithm::RS256,
            "rsa-public.pem",
        )],
        ..secret_only()
    }
}

/// Every configuration a test builds must also pass start-up validation.
async fn verifier(config: &AuthConfig) -> JwtVerifier {
    Config {
        auth: config.clone(),
        ..Config::default()
    }
    .validate()
    .unwrap();
    JwtVerifier::new(config).await.unwrap()
}

fn claims() -> Value {
    let now = unix_now();
    json!({"tenant": "acme", "iss": "genrt", "aud": "genrt", "iat": now, "exp": now + 600})
}

fn claims_with(changes: Value) -> Value {
    let mut claims = claims();
    for (k, v) in changes.as_object().unwrap() {
        if v.is_null() {
            claims.as_object_mut().unwrap().remove(k);
        } else {
            claims[k] = v.clone();
        }
    }
    claims
}

fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value, key: &EncodingKey) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    encode(&header, claims, key).unwrap()
}

fn hs(claims: &Value) -> String {
    sign(
        Algorithm::HS256,
        None,
        claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
}

fn rs(kid: Option<&str>, claims: &Value) -> String {
    let key = EncodingKey::from_rsa_pem(&read("rsa-private.pem")).unwrap();
    sign(Algorithm::RS256, kid, claims, &key)
}

fn es(kid: Option<&str>, claims: &Value) -> String {
    let key = EncodingKey::from_ec_pem(&read("ec-private.pem")).unwrap();
    sign(Algorithm::ES256, kid, claims, &key)
}

#[track_caller]
fn refused(verifier: &JwtVerifier, token: &str, code: ErrorCode) -> String {
    let err = verifier.verify(token).unwrap_err();
    assert_eq!(err.code, code, "{}", err.message);
    err.message
}

#[track_caller]
fn accepted(verifier: &JwtVerifier, token: &str) -> VerifiedToken {
    let verified = verifier.verify(token).unwrap();
    assert_eq!(verified.tenant.as_str(), "acme");
    verified
}

#[tokio::test]
async fn issued_tokens_verify_with_their_tenant_and_scopes() {
    let config = secret_only();
    let verifier = verifier(&config).await;
    let issuer = TokenIssuer::new(&config);
    let acme = TenantId::parse("acme").unwrap();
    let token = issuer.issue(
        &acme,
        &["functions:invoke", "invocations:read"],
        Duration::from_secs(60),
    );
    let verified = accepted(&verifier, &token);
    assert_eq!(verified.scopes, ["functions:invoke", "invocations:read"]);
    assert_eq!(verified.subject, None);

    let token = issuer.issue(&acme, DEFAULT_TENANT_SCOPES, Duration::from_secs(60));
    assert_eq!(accepted(&verifier, &token).scopes, DEFAULT_TENANT_SCOPES);
}

#[tokio::test]
async fn rs256_and_es256_verify_by_kid_with_pem_keys() {
    let verifier = verifier(&with_pem_keys()).await;
    let claims = claims_with(json!({"sub": "deploy-bot"}));
    let verified = accepted(&verifier, &rs(Some("rsa-1"), &claims));
    assert_eq!(verified.subject.as_deref(), Some("deploy-bot"));
    accepted(&verifier, &es(Some("ec-1"), &claims));
    // Each is the only key of its algorithm, so a token without `kid` finds it too.
    accepted(&verifier, &rs(None, &claims));
    accepted(&verifier, &es(None, &claims));
    // HS256 with the shared secret keeps working beside them.
    accepted(&verifier, &hs(&claims));
}

#[tokio::test]
async fn rs256_and_es256_verify_with_a_jwks_file() {
    let config = AuthConfig {
        jwks_file: Some(fixture("jwks.json")),
        ..secret_only()
    };
    let verifier = verifier(&config).await;
    accepted(&verifier, &rs(Some("rsa-1"), &claims()));
    accepted(&verifier, &es(Some("ec-1"), &claims()));
}

#[tokio::test]
async fn a_token_without_kid_is_refused_when_several_keys_could_verify_it() {
    let mut config = with_pem_keys();
    config.public_keys.push(pem_key(
        Some("rsa-2"),
        JwtAlgorithm::RS256,
        "rsa-public.pem",
    ));
    let verifier = verifier(&config).await;
    let message = refused(&verifier, &rs(None, &claims()), ErrorCode::InvalidToken);
    assert!(message.contains("several"), "{message}");
    accepted(&verifier, &rs(Some("rsa-2"), &claims()));
}

#[tokio::test]
async fn unknown_kid_is_refused() {
    let verifier = verifier(&with_pem_keys()).await;
    let message = refused(
        &verifier,
        &rs(Some("rsa-9"), &claims()),
        ErrorCode::InvalidToken,
    );
    assert!(message.contains("rsa-9"), "{message}");
}

#[tokio::test]
async fn wrong_issuer_wrong_audience_and_missing_claims_are_refused() {
    let verifier = verifier(&with_pem_keys()).await;
    for token in [
        rs(Some("rsa-1"), &claims_with(json!({"iss": "someone-else"}))),
        hs(&claims_with(json!({"iss": "someone-else"}))),
    ] {
        let message = refused(&verifier, &token, ErrorCode::InvalidToken);
        assert!(message.contains("issuer"), "{message}");
    }
    for token in [
        es(
            Some("ec-1"),
            &claims_with(json!({"aud": "another-service"})),
        ),
        hs(&claims_with(json!({"aud": ["another-service"]}))),
    ] {
        let message = refused(&verifier, &token, ErrorCode::InvalidToken);
        assert!(message.contains("audience"), "{message}");
    }
    for claim in ["exp", "iss", "aud"] {
        let token = rs(Some("rsa-1"), &claims_with(json!({ claim: null })));
        let message = refused(&verifier, &token, ErrorCode::InvalidToken);
        assert!(message.contains(claim), "{message}");
    }
    let message = refused(
        &verifier,
        &hs(&claims_with(json!({"tenant": null}))),
        ErrorCode::InvalidToken,
    );
    assert!(message.contains("tenant"), "{message}");
    refused(
        &verifier,
        &hs(&claims_with(json!({"tenant": "Not A Tenant!"}))),
        ErrorCode::InvalidToken,
    );
}

#[tokio::test]
async fn expiry_is_checked_with_the_configured_leeway() {
    let verifier = verifier(&with_pem_keys()).await;
    let now = unix_now();
    // The default leeway is 30 s: ten seconds late is clock skew, an hour is expiry.
    let just_expired = claims_with(json!({"exp": now - 10}));
    accepted(&verifier, &rs(Some("rsa-1"), &just_expired));
    accepted(&verifier, &hs(&just_expired));
    let long_expired = claims_with(json!({"exp": now - 3600, "iat": now - 7200}));
    refused(
        &verifier,
        &rs(Some("rsa-1"), &long_expired),
        ErrorCode::TokenExpired,
    );
    refused(&verifier, &hs(&long_expired), ErrorCode::TokenExpired);
    refused(
        &verifier,
        &hs(&claims_with(json!({"nbf": now + 3600}))),
        ErrorCode::InvalidToken,
    );

    let strict = verifier_with_leeway(0).await;
    refused(&strict, &hs(&just_expired), ErrorCode::TokenExpired);
}

async fn verifier_with_leeway(leeway_s: u64) -> JwtVerifier {
    verifier(&AuthConfig {
        leeway_s,
        ..secret_only()
    })
    .await
}

#[tokio::test]
async fn alg_none_and_unaccepted_algorithms_are_refused() {
    let verifier = verifier(&with_pem_keys()).await;
    // The payload of a genuine token, re-headed as unsigned, with and without a signature.
    let genuine = hs(&claims());
    let payload = genuine.split('.').nth(1).unwrap();
    let signature = genuine.split('.').nth(2).unwrap();
    for token in [
        format!("{NONE_HEADER}.{payload}."),
        format!("{NONE_HEADER}.{payload}.{signature}"),
    ] {
        refused(&verifier, &token, ErrorCode::InvalidToken);
    }
    // Known to jsonwebtoken, but not among the accepted algorithms.
    let hs512 = sign(
        Algorithm::HS512,
        None,
        &claims(),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    );
    let message = refused(&verifier, &hs512, ErrorCode::InvalidToken);
    assert!(message.contains("HS512"), "{message}");

    // With HS256 taken out of `allowed_algorithms`, even a correctly signed one is refused.
    let asymmetric_only = JwtVerifier::new(&AuthConfig {
        allowed_algorithms: Some(vec![JwtAlgorithm::RS256, JwtAlgorithm::ES256]),
        ..with_pem_keys()
    })
    .await
    .unwrap();
    refused(&asymmetric_only, &genuine, ErrorCode::InvalidToken);
    accepted(&asymmetric_only, &rs(Some("rsa-1"), &claims()));
}

#[tokio::test]
async fn hs256_signed_with_the_public_key_is_refused() {
    let verifier = verifier(&with_pem_keys()).await;
    // The classic confusion: the attacker knows the RSA public key and uses its PEM bytes as
    // the HMAC secret, hoping the verifier feeds the same bytes to HMAC.
    for public in ["rsa-public.pem", "ec-public.pem"] {
        let key = EncodingKey::from_secret(&read(public));
        for kid in [Some("rsa-1"), Some("ec-1"), None] {
            let token = sign(Algorithm::HS256, kid, &claims(), &key);
            let message = refused(&verifier, &token, ErrorCode::InvalidToken);
            assert!(message.contains("signature"), "{message}");
        }
    }
}

#[tokio::test]
async fn es256_is_refused_where_only_rs256_keys_exist() {
    let verifier = verifier(&rsa_only()).await;
    refused(
        &verifier,
        &es(Some("ec-1"), &claims()),
        ErrorCode::InvalidToken,
    );
    let message = refused(&verifier, &es(None, &claims()), ErrorCode::InvalidToken);
    assert!(message.contains("no ES256 key"), "{message}");
    // A kid that names an RS256 key does not make it verify an ES256 token.
    let message = refused(
        &verifier,
        &es(Some("rsa-1"), &claims()),
        ErrorCode::InvalidToken,
    );
    assert!(message.contains("RS256"), "{message}");
}

#[tokio::test]
async fn forged_and_tampered_tokens_are_refused() {
    let verifier = verifier(&with_pem_keys()).await;
    let other_secret = sign(
        Algorithm::HS256,
        None,
        &claims(),
        &EncodingKey::from_secret(b"another-secret-entirely"),
    );
    refused(&verifier, &other_secret, ErrorCode::InvalidToken);
    let other_rsa = EncodingKey::from_rsa_pem(&read("rsa-other-private.pem")).unwrap();
    let forged = sign(Algorithm::RS256, Some("rsa-1"), &claims(), &other_rsa);
    refused(&verifier, &forged, ErrorCode::InvalidToken);

    // A genuine signature over acme's claims, with the payload swapped for another tenant's.
    let globex = claims_with(json!({"tenant": "globex", "scope": "admin"}));
    for (genuine, other) in [
        (rs(Some("rsa-1"), &claims()), rs(Some("rsa-1"), &globex)),
        (es(Some("ec-1"), &claims()), es(Some("ec-1"), &globex)),
        (hs(&claims()), hs(&globex)),
    ] {
        let parts: Vec<&str> = genuine.split('.').collect();
        let payload = other.split('.').nth(1).unwrap();
        let tampered = format!("{}.{payload}.{}", parts[0], parts[2]);
        let message = refused(&verifier, &tampered, ErrorCode::InvalidToken);
        assert!(message.contains("signature"), "{message}");
    }
    refused(&verifier, "not-a-token", ErrorCode::InvalidToken);
}

#[tokio::test]
async fn scopes_come_from_either_claim_and_default_to_the_tenant_scopes() {
    let verifier = verifier(&secret_only()).await;
    let scopes = |changes: Value| accepted(&verifier, &hs(&claims_with(changes))).scopes;
    assert_eq!(
        scopes(json!({"scope": "functions:invoke  admin"})),
        ["functions:invoke", "admin"]
    );
    assert_eq!(
        scopes(json!({"scopes": ["invocations:read", "webhooks:write"]})),
        ["invocations:read", "webhooks:write"]
    );
    assert_eq!(
        scopes(json!({"scope": "functions:invoke admin", "scopes": ["admin", "functions:write"]})),
        ["functions:invoke", "admin", "functions:write"]
    );
    let default = scopes(json!({}));
    assert_eq!(default, DEFAULT_TENANT_SCOPES);
    assert!(!default.iter().any(|s| s == "admin"));
    // Naming no scopes is a choice, not an omission.
    assert!(scopes(json!({"scope": ""})).is_empty());
    assert!(scopes(json!({"scopes": []})).is_empty());
    refused(
        &verifier,
        &hs(&claims_with(json!({"scopes": "admin"}))),
        ErrorCode::InvalidToken,
    );
}

/// Answers every request with the current status and body, one connection per request.
async fn serve(reply: Arc<Mutex<(u16, String)>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/.well-known/jwks.json",
        listener.local_addr().unwrap()
    );
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let (status, body) = reply.lock().unwrap().clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let response = format!(
                    "HTTP/1.1 {status} Test\r\ncontent-type: application/json\r\n\
                     content-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    url
}

/// The fixture JWKS, keeping only the keys named.
fn jwks_with(kids: &[&str]) -> String {
    let mut jwks: Value = serde_json::from_slice(&read("jwks.json")).unwrap();
    jwks["keys"]
        .as_array_mut()
        .unwrap()
        .retain(|k| kids.contains(&k["kid"].as_str().unwrap()));
    jwks.to_string()
}

#[tokio::test]
async fn jwks_url_is_fetched_at_start_and_refresh_picks_up_new_keys() {
    let reply = Arc::new(Mutex::new((200, jwks_with(&["rsa-1"]))));
    let url = serve(reply.clone()).await;
    let config = AuthConfig {
        jwks_url: Some(url),
        ..secret_only()
    };
    let verifier = verifier(&config).await;
    accepted(&verifier, &rs(Some("rsa-1"), &claims()));
    refused(
        &verifier,
        &es(Some("ec-1"), &claims()),
        ErrorCode::InvalidToken,
    );

    // The provider publishes a second key: a refresh makes it usable.
    *reply.lock().unwrap() = (200, jwks_with(&["rsa-1", "ec-1"]));
    assert_eq!(verifier.refresh().await.unwrap(), 2);
    accepted(&verifier, &es(Some("ec-1"), &claims()));

    // The provider fails, then serves garbage: the keys in use are kept.
    *reply.lock().unwrap() = (500, "{}".into());
    assert!(matches!(
        verifier.refresh().await,
        Err(AuthSetupError::Fetch { .. })
    ));
    *reply.lock().unwrap() = (200, "<html>".into());
    assert!(matches!(
        verifier.refresh().await,
        Err(AuthSetupError::Jwks { .. })
    ));
    accepted(&verifier, &rs(Some("rsa-1"), &claims()));
    accepted(&verifier, &es(Some("ec-1"), &claims()));

    // The provider retires a key: a refresh removes it.
    *reply.lock().unwrap() = (200, jwks_with(&["ec-1"]));
    assert_eq!(verifier.refresh().await.unwrap(), 1);
    refused(
        &verifier,
        &rs(Some("rsa-1"), &claims()),
        ErrorCode::InvalidToken,
    );
}

#[tokio::test]
async fn keys_from_files_survive_a_jwks_refresh() {
    let reply = Arc::new(Mutex::new((200, jwks_with(&["ec-1"]))));
    let config = AuthConfig {
        jwks_url: Some(serve(reply.clone()).await),
        ..rsa_only()
    };
    let verifier = Arc::new(verifier(&config).await);
    assert!(verifier.spawn_refresh().is_some());
    assert_eq!(verifier.refresh().await.unwrap(), 2);
    accepted(&verifier, &rs(Some("rsa-1"), &claims()));
    accepted(&verifier, &es(Some("ec-1"), &claims()));
    // A provider that starts publishing a kid already configured from a file is refused
    // rather than allowed to shadow it.
    *reply.lock().unwrap() = (200, jwks_with(&["rsa-1", "ec-1"]));
    assert!(matches!(
        verifier.refresh().await,
        Err(AuthSetupError::DuplicateKid { .. })
    ));
    accepted(&verifier, &es(Some("ec-1"), &claims()));
}

#[tokio::test]
async fn an_unreachable_jwks_url_fails_the_start() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let config = AuthConfig {
        jwks_url: Some(format!("http://{addr}/jwks.json")),
        ..secret_only()
    };
    let err = JwtVerifier::new(&config).await.err().unwrap();
    assert!(matches!(err, AuthSetupError::Fetch { .. }), "{err}");
    assert!(err.to_string().contains(&addr.to_string()), "{err}");

    let reply = Arc::new(Mutex::new((
        200,
        r#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}"#.into(),
    )));
    let config = AuthConfig {
        jwks_url: Some(serve(reply).await),
        ..secret_only()
    };
    let err = JwtVerifier::new(&config).await.err().unwrap();
    assert!(matches!(err, AuthSetupError::NoUsableKeys { .. }), "{err}");
}

#[test]
fn bad_key_files_are_configuration_errors_naming_the_file() {
    let invalid = |auth: AuthConfig| {
        Config {
            auth,
            ..Config::default()
        }
        .validate()
        .unwrap_err()
        .to_string()
    };
    let cases = [
        // A private key where the public one belongs.
        (
            pem_key(None, JwtAlgorithm::RS256, "rsa-private.pem"),
            "rsa-private.pem",
        ),
        // An RSA key declared as ES256, and the other way round.
        (
            pem_key(None, JwtAlgorithm::ES256, "rsa-public.pem"),
            "rsa-public.pem",
        ),
        (
            pem_key(None, JwtAlgorithm::RS256, "ec-public.pem"),
            "ec-public.pem",
        ),
        (
            pem_key(None, JwtAlgorithm::RS256, "missing.pem"),
            "missing.pem",
        ),
        (pem_key(None, JwtAlgorithm::RS256, "jwks.json"), "jwks.json"),
    ];
    for (key, file) in cases {
        let message = invalid(AuthConfig {
            public_keys: vec![key],
            ..secret_only()
        });
        assert!(message.contains(file), "{message}");
    }
    let message = invalid(AuthConfig {
        jwks_file: Some(fixture("rsa-public.pem")),
        ..secret_only()
    });
    assert!(message.contains("rsa-public.pem"), "{message}");
    let message = invalid(AuthConfig {
        public_keys: vec![pem_key(None, JwtAlgorithm::HS256, "rsa-public.pem")],
        ..secret_only()
    });
    assert!(message.contains("RS256 or ES256"), "{message}");
    let message = invalid(AuthConfig {
        allowed_algorithms: Some(vec![JwtAlgorithm::HS256]),
        ..rsa_only()
    });
    assert!(message.contains("allowed_algorithms"), "{message}");
    let message = invalid(AuthConfig {
        allowed_algorithms: Some(Vec::new()),
        ..secret_only()
    });
    assert!(message.contains("allowed_algorithms"), "{message}");
}

#[test]
fn auth_settings_load_from_toml() {
    let dir = std::env::temp_dir().join(format!("genrt-jwt-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("genrt.toml");
    let toml = format!(
        "[auth]\njwt_secret = \"{SECRET}\"\nallowed_algorithms = [\"RS256\", \"ES256\"]\n\
         jwks_file = \"{}\"\njwks_refresh_s = 60\n\
         [[auth.public_keys]]\nkid = \"rsa-pem\"\nalg = \"RS256\"\npem_file = \"{}\"\n",
        fixture("jwks.json").display(),
        fixture("rsa-public.pem").display()
    );
    std::fs::write(&file, toml).unwrap();
    let config = Config::load(Some(&file), &Default::default()).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        config.auth.algorithms(),
        [JwtAlgorithm::RS256, JwtAlgorithm::ES256]
    );
    assert_eq!(config.auth.public_keys[0].kid.as_deref(), Some("rsa-pem"));
    assert_eq!(config.auth.jwks_file, Some(fixture("jwks.json")));
    assert_eq!(config.auth.jwks_refresh_s, 60);
}

#[tokio::test]
async fn a_token_living_longer_than_the_maximum_is_refused_whoever_signed_it() {
    let verifier = verifier(&with_pem_keys()).await;
    let now = unix_now();
    // The default maximum is a year: a day is fine, ten years is a leaked forever-token.
    accepted(&verifier, &hs(&claims_with(json!({"exp": now + 86_400}))));
    let forever = claims_with(json!({"exp": now + 10 * 365 * 86_400}));
    let message = refused(&verifier, &hs(&forever), ErrorCode::InvalidToken);
    assert!(message.contains("max_token_ttl_s"), "{message}");
    refused(
        &verifier,
        &rs(Some("rsa-1"), &forever),
        ErrorCode::InvalidToken,
    );
    let unlimited = JwtVerifier::new(&AuthConfig {
        max_token_ttl_s: 0,
        ..with_pem_keys()
    })
    .await
    .unwrap();
    let verified = accepted(&unlimited, &hs(&forever));
    assert_eq!(
        verified.expires_at.map(|e| e.timestamp() as u64),
        Some(now + 10 * 365 * 86_400)
    );
}

#[tokio::test]
async fn a_chunked_jwks_larger_than_the_cap_is_refused_without_reading_it_whole() {
    // No Content-Length: the size is known only while reading.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = sent.clone();
    tokio::spawn(async move {
        let Ok((mut stream, _)) = listener.accept().await else {
            return;
        };
        let mut buf = [0u8; 1024];
        let _ = stream.read(&mut buf).await;
        let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                    transfer-encoding: chunked\r\n\r\n";
        if stream.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        let chunk = vec![b' '; 64 * 1024];
        // 64 MiB offered; the client must hang up long before.
        for _ in 0..1024 {
            let frame = format!("{:x}\r\n", chunk.len());
            if stream.write_all(frame.as_bytes()).await.is_err()
                || stream.write_all(&chunk).await.is_err()
                || stream.write_all(b"\r\n").await.is_err()
            {
                return;
            }
            counter.fetch_add(chunk.len(), std::sync::atomic::Ordering::Relaxed);
        }
    });
    let err = JwtVerifier::new(&AuthConfig {
        jwks_url: Some(url),
        ..secret_only()
    })
    .await
    .err()
    .expect("an oversized JWKS fails the start");
    assert!(err.to_string().contains("larger than"), "{err}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let sent = sent.load(std::sync::atomic::Ordering::Relaxed);
    assert!(sent < 16 * 1024 * 1024, "{sent} bytes were read");
}

#[tokio::test]
async fn a_remembered_token_stops_verifying_when_its_key_is_retired() {
    let reply = Arc::new(Mutex::new((200, jwks_with(&["rsa-1", "ec-1"]))));
    let config = AuthConfig {
        jwks_url: Some(serve(reply.clone()).await),
        ..secret_only()
    };
    let verifier = verifier(&config).await;
    let token = rs(Some("rsa-1"), &claims());
    let first = accepted(&verifier, &token);
    assert!(verifier.verified.contains_key(&token), "remembered");
    assert_eq!(
        accepted(&verifier, &token),
        first,
        "the same answer from memory"
    );

    *reply.lock().unwrap() = (200, jwks_with(&["ec-1"]));
    assert_eq!(verifier.refresh().await.unwrap(), 1);
    refused(&verifier, &token, ErrorCode::InvalidToken);
    // A refusal is not remembered.
    assert!(!verifier.verified.contains_key(&token));
}

#[tokio::test]
async fn a_remembered_token_expires_like_any_other() {
    let strict = verifier_with_leeway(0).await;
    let exp = unix_now() + 1;
    let token = hs(&claims_with(json!({"exp": exp})));
    accepted(&strict, &token);
    assert!(strict.verified.contains_key(&token), "remembered");
    while unix_now() <= exp {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    refused(&strict, &token, ErrorCode::TokenExpired);
}
