//! Our Standard Webhooks signatures against the official `standardwebhooks` npm package, both
//! ways, so that a mistake shared by our signer and our verifier cannot pass unnoticed. Node
//! runs `tests/node/webhooks.mjs`; its packages are installed with `npm ci` on first use.

use std::time::{SystemTime, UNIX_EPOCH};

use genrt_runtime::webhooks::signing::{
    generate_secret, sign, verify_standard, SignedHeaders, VerifyError, DEFAULT_TOLERANCE,
};
use genrt_tests::node::{node, node_sign};
use serde_json::{json, Value};

/// Not ASCII on purpose: both sides must sign the UTF-8 bytes, not characters.
const BODY: &str = r#"{"type":"invocation.completed","data":{"output":"héllo, wörld 🌍"}}"#;

fn node_verify(secret: &str, headers: &SignedHeaders, body: &str) -> Value {
    let headers: serde_json::Map<String, Value> = headers
        .pairs()
        .into_iter()
        .map(|(name, value)| (name.to_owned(), Value::String(value)))
        .collect();
    node(
        "verify",
        json!({ "secret": secret, "headers": headers, "body": body }),
    )
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[test]
fn the_official_package_accepts_our_signature() {
    let secret = generate_secret();
    let signed = SignedHeaders::new(
        "msg_ours_1",
        now(),
        BODY.as_bytes(),
        std::slice::from_ref(&secret),
    )
    .unwrap();
    assert_eq!(node_verify(&secret, &signed, BODY), json!({ "ok": true }));

    let tampered = BODY.replace("wörld", "world");
    let answer = node_verify(&secret, &signed, &tampered);
    assert_eq!(answer["ok"], false, "{answer}");
}

#[test]
fn the_official_package_accepts_either_secret_during_rotation() {
    let (old, new) = (generate_secret(), generate_secret());
    let signed = SignedHeaders::new(
        "msg_ours_2",
        now(),
        BODY.as_bytes(),
        &[old.clone(), new.clone()],
    )
    .unwrap();
    assert_eq!(signed.signature.split(' ').count(), 2);
    assert_eq!(node_verify(&old, &signed, BODY), json!({ "ok": true }));
    assert_eq!(node_verify(&new, &signed, BODY), json!({ "ok": true }));
    let answer = node_verify(&generate_secret(), &signed, BODY);
    assert_eq!(answer["ok"], false, "{answer}");
}

#[test]
fn we_accept_the_official_package_signature() {
    let secret = generate_secret();
    let now = now();
    let headers = node_sign(&secret, "msg_theirs_1", now, BODY);
    assert_eq!(
        sign(
            "msg_theirs_1",
            now,
            BODY.as_bytes(),
            std::slice::from_ref(&secret)
        )
        .unwrap(),
        headers
            .iter()
            .find(|(name, _)| name == "webhook-signature")
            .unwrap()
            .1,
        "both sides compute the same signature"
    );
    verify_standard(
        &secret,
        &headers[..],
        BODY.as_bytes(),
        now,
        DEFAULT_TOLERANCE,
    )
    .unwrap();
}

#[test]
fn we_refuse_a_tampered_body_and_a_stale_timestamp() {
    let secret = generate_secret();
    let now = now();
    let headers = node_sign(&secret, "msg_theirs_2", now, BODY);
    let tampered = BODY.replace("wörld", "world");
    assert_eq!(
        verify_standard(
            &secret,
            &headers[..],
            tampered.as_bytes(),
            now,
            DEFAULT_TOLERANCE
        ),
        Err(VerifyError::SignatureMismatch)
    );

    let stale = now - 600;
    let headers = node_sign(&secret, "msg_theirs_3", stale, BODY);
    assert!(matches!(
        verify_standard(
            &secret,
            &headers[..],
            BODY.as_bytes(),
            now,
            DEFAULT_TOLERANCE
        ),
        Err(VerifyError::TimestampTooOld { age_s: 600, .. })
    ));
    // The same message is fine at the time it was sent: only the timestamp was wrong.
    verify_standard(
        &secret,
        &headers[..],
        BODY.as_bytes(),
        stale,
        DEFAULT_TOLERANCE,
    )
    .unwrap();
}
