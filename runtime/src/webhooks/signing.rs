//! Webhook signatures: [Standard Webhooks](https://www.standardwebhooks.com/) for what genrt
//! sends and receives, and GitHub's `X-Hub-Signature-256` for what GitHub-style senders post.
//!
//! A Standard Webhooks signature is `v1,` followed by the base64 HMAC-SHA256, keyed with the
//! decoded `whsec_` secret, of `{webhook-id}.{webhook-timestamp}.{body}`. The signature header
//! may hold several space-separated signatures so that a secret can be rotated: the sender signs
//! with the old and the new secret during the overlap, and a receiver accepts any match.
//!
//! A verified incoming message comes back as [`Verified`]: the keys its receipt is stored
//! under to refuse replays, taken only from what its signature covers.

use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

pub const HEADER_ID: &str = standardwebhooks::HEADER_WEBHOOK_ID;
pub const HEADER_TIMESTAMP: &str = standardwebhooks::HEADER_WEBHOOK_TIMESTAMP;
pub const HEADER_SIGNATURE: &str = standardwebhooks::HEADER_WEBHOOK_SIGNATURE;
/// The header GitHub puts its body signature in, lower case as HTTP/2 sends it.
pub const GITHUB_SIGNATURE_HEADER: &str = "x-hub-signature-256";
/// What every secret made by [`generate_secret`] starts with, as the specification suggests.
pub const SECRET_PREFIX: &str = "whsec_";
/// How far a `webhook-timestamp` may be from now, either way, unless configured otherwise.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(5 * 60);

const SIGNATURE_VERSION: &str = "v1";
const SECRET_BYTES: usize = 32;

type HmacSha256 = Hmac<Sha256>;

#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    #[error("no signing secret given")]
    NoSecret,
    #[error("signing secret is not `whsec_` followed by non-empty base64")]
    InvalidSecret,
    /// The reference implementations sign the body as text, so a body that is not UTF-8 could
    /// not be verified by them anyway.
    #[error("webhook payload is not UTF-8")]
    PayloadNotUtf8,
    #[error("standard webhooks signer failed: {0}")]
    Signer(#[source] standardwebhooks::WebhookError),
}

/// Why an incoming webhook was refused. Each variant is a different thing for the sender to
/// fix, so they stay apart rather than collapsing into "invalid signature".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("verification secret is empty or not `whsec_` followed by base64")]
    InvalidSecret,
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    #[error("malformed header {0}")]
    MalformedHeader(&'static str),
    #[error("webhook timestamp is {age_s} s old, more than the {tolerance_s} s tolerated")]
    TimestampTooOld { age_s: i64, tolerance_s: i64 },
    #[error(
        "webhook timestamp is {ahead_s} s in the future, more than the {tolerance_s} s tolerated"
    )]
    TimestampTooNew { ahead_s: i64, tolerance_s: i64 },
    #[error("no signature matches the body")]
    SignatureMismatch,
}

/// What a verified incoming message is known by: the keys its receipt is stored under, so
/// that the same signed message is accepted once. Only what the signature covers goes in, so
/// an attacker who replays a captured message cannot make it look new: the digest is of the
/// HMAC that matched (computed here, not the header's text, so upper-case hex, spacing or
/// extra signatures in the header change nothing) followed by everything it signs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// SHA-256 of the matching HMAC and the signed content.
    message: [u8; 32],
    /// SHA-256 of the signed `webhook-id` (Standard Webhooks only): a sender's retry of the
    /// same message, signed again at a new time, is the same message.
    id: Option<[u8; 32]>,
}

impl Verified {
    fn new(tag: &[u8], signed: &[&[u8]], id: Option<&str>) -> Self {
        let mut message = Sha256::new();
        message.update(tag);
        for part in signed {
            message.update(part);
        }
        Self {
            message: message.finalize().into(),
            id: id.map(|id| Sha256::digest(id.as_bytes()).into()),
        }
    }

    /// The receipt keys: `sha256:<hex digest of the signed message>`, then, for Standard
    /// Webhooks, `id:<hex SHA-256 of its webhook-id>`. A message is a replay when any of its
    /// keys was seen.
    pub fn receipt_keys(&self) -> Vec<String> {
        let mut keys = vec![format!("sha256:{}", hex::encode(self.message))];
        if let Some(id) = &self.id {
            keys.push(format!("id:{}", hex::encode(id)));
        }
        keys
    }
}

/// Read access to request headers, so that one verifier serves actix-web requests (whose
/// `HeaderMap` is built on `http` 0.2; its impl is in the HTTP layer, `api::triggers`),
/// reqwest responses (`http` 1) and plain pairs alike.
pub trait HeaderLookup {
    /// The first value of header `name` (given in lower case). A value that is not visible
    /// ASCII reads as absent.
    fn header(&self, name: &str) -> Option<&str>;
}

impl HeaderLookup for reqwest::header::HeaderMap {
    fn header(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|value| value.to_str().ok())
    }
}

/// Header names compare case-insensitively, as HTTP requires.
impl<K: AsRef<str>, V: AsRef<str>> HeaderLookup for [(K, V)] {
    fn header(&self, name: &str) -> Option<&str> {
        self.iter()
            .find(|(key, _)| key.as_ref().eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_ref())
    }
}

/// A new signing secret: `whsec_` and the base64 of 32 random bytes, the key size the
/// specification recommends for HMAC-SHA256. `rand`'s thread generator is a CSPRNG seeded
/// from the operating system.
pub fn generate_secret() -> String {
    let mut key = [0u8; SECRET_BYTES];
    rand::fill(&mut key);
    format!("{SECRET_PREFIX}{}", BASE64.encode(key))
}

/// The `webhook-signature` value for one message: `v1,<base64>` per secret, space-separated,
/// in the order given. Two secrets during a rotation give two signatures, and a receiver
/// holding either secret accepts the message.
pub fn sign(
    msg_id: &str,
    timestamp: i64,
    payload: &[u8],
    secrets: &[String],
) -> Result<String, SigningError> {
    if secrets.is_empty() {
        return Err(SigningError::NoSecret);
    }
    let mut signatures = Vec::with_capacity(secrets.len());
    for secret in secrets {
        let key = decode_secret(secret).ok_or(SigningError::InvalidSecret)?;
        let signer = standardwebhooks::Webhook::from_bytes(key).map_err(SigningError::Signer)?;
        let signature = signer
            .sign(msg_id, timestamp, payload)
            .map_err(|err| match err {
                standardwebhooks::WebhookError::InvalidPayload => SigningError::PayloadNotUtf8,
                other => SigningError::Signer(other),
            })?;
        signatures.push(signature);
    }
    Ok(signatures.join(" "))
}

/// The three headers that go with an outgoing webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedHeaders {
    pub id: String,
    /// Unix seconds.
    pub timestamp: i64,
    pub signature: String,
}

impl SignedHeaders {
    /// Signs `payload` as message `msg_id` sent at `timestamp` (unix seconds) with every secret.
    pub fn new(
        msg_id: &str,
        timestamp: i64,
        payload: &[u8],
        secrets: &[String],
    ) -> Result<Self, SigningError> {
        Ok(Self {
            id: msg_id.to_owned(),
            timestamp,
            signature: sign(msg_id, timestamp, payload, secrets)?,
        })
    }

    /// Name and value pairs, ready for `RequestBuilder::header`.
    pub fn pairs(&self) -> [(&'static str, String); 3] {
        [
            (HEADER_ID, self.id.clone()),
            (HEADER_TIMESTAMP, self.timestamp.to_string()),
            (HEADER_SIGNATURE, self.signature.clone()),
        ]
    }
}

/// Checks an incoming Standard Webhooks request: the three headers are present, the timestamp
/// is within `tolerance` of `now` (unix seconds) either way, and one of the `v1` signatures is
/// the HMAC of the body under `secret`. Returns the message's receipt keys.
///
/// The `standardwebhooks` crate's own `verify` is not used because it reads the clock itself,
/// fixes the tolerance at five minutes, takes only an `http` 1 `HeaderMap` and reports a bad
/// signature and a malformed one alike; here the HMAC is checked with `hmac`'s constant-time
/// `verify_slice`, over the raw body bytes.
pub fn verify_standard(
    secret: &str,
    headers: &(impl HeaderLookup + ?Sized),
    body: &[u8],
    now: i64,
    tolerance: Duration,
) -> Result<Verified, VerifyError> {
    let key = decode_secret(secret).ok_or(VerifyError::InvalidSecret)?;
    let msg_id = required_header(headers, HEADER_ID)?;
    let timestamp_text = required_header(headers, HEADER_TIMESTAMP)?;
    let signatures = required_header(headers, HEADER_SIGNATURE)?;

    let timestamp: i64 = timestamp_text
        .parse()
        .map_err(|_| VerifyError::MalformedHeader(HEADER_TIMESTAMP))?;
    let tolerance_s = i64::try_from(tolerance.as_secs()).unwrap_or(i64::MAX);
    let age_s = now.saturating_sub(timestamp);
    if age_s > tolerance_s {
        return Err(VerifyError::TimestampTooOld { age_s, tolerance_s });
    }
    let ahead_s = timestamp.saturating_sub(now);
    if ahead_s > tolerance_s {
        return Err(VerifyError::TimestampTooNew {
            ahead_s,
            tolerance_s,
        });
    }

    let candidates: Vec<(&str, &str)> = signatures
        .split(' ')
        .filter_map(|entry| entry.split_once(','))
        .collect();
    if candidates.is_empty() {
        return Err(VerifyError::MalformedHeader(HEADER_SIGNATURE));
    }

    let mut mac = HmacSha256::new_from_slice(&key).map_err(|_| VerifyError::InvalidSecret)?;
    // The timestamp is signed as the number it parses to, not as the header's text, as the
    // reference libraries do: `0100` and `100` must verify alike.
    let timestamp = timestamp.to_string();
    let signed: [&[u8]; 5] = [msg_id.as_bytes(), b".", timestamp.as_bytes(), b".", body];
    for part in signed {
        mac.update(part);
    }

    // Versions other than v1 (such as the asymmetric v1a) are skipped, not refused, so that a
    // sender may add them alongside v1.
    let matched = candidates
        .into_iter()
        .filter(|(version, _)| *version == SIGNATURE_VERSION)
        .filter_map(|(_, encoded)| BASE64.decode(encoded).ok())
        .any(|tag| mac.clone().verify_slice(&tag).is_ok());
    if matched {
        let tag = mac.finalize().into_bytes();
        Ok(Verified::new(&tag, &signed, Some(msg_id)))
    } else {
        Err(VerifyError::SignatureMismatch)
    }
}

/// Checks a GitHub-style body signature, `sha256=<hex HMAC-SHA256 of the raw body>`, keyed
/// with the secret's bytes as given (GitHub secrets are plain text, not `whsec_`). `None` is
/// the header's absence. Returns the message's receipt key: GitHub signs neither a message
/// id nor a time, so the body is the whole message (`X-GitHub-Delivery` is not signed, and an
/// attacker may change it at will).
pub fn verify_github(
    secret: &str,
    body: &[u8],
    signature_header: Option<&str>,
) -> Result<Verified, VerifyError> {
    // An empty key is one every sender knows: refuse it rather than accept forged bodies.
    if secret.is_empty() {
        return Err(VerifyError::InvalidSecret);
    }
    let header = signature_header
        .map(str::trim)
        .filter(|value| !value.is_empty())
        .ok_or(VerifyError::MissingHeader(GITHUB_SIGNATURE_HEADER))?;
    let tag = header
        .strip_prefix("sha256=")
        .and_then(|hex_tag| hex::decode(hex_tag).ok())
        .ok_or(VerifyError::MalformedHeader(GITHUB_SIGNATURE_HEADER))?;
    let mut mac =
        HmacSha256::new_from_slice(secret.as_bytes()).map_err(|_| VerifyError::InvalidSecret)?;
    mac.update(body);
    mac.clone()
        .verify_slice(&tag)
        .map_err(|_| VerifyError::SignatureMismatch)?;
    let tag = mac.finalize().into_bytes();
    Ok(Verified::new(&tag, &[body], None))
}

/// The key inside a `whsec_` secret (the prefix is optional, as in the reference libraries).
/// An empty key is refused: it would make every signature forgeable.
fn decode_secret(secret: &str) -> Option<Vec<u8>> {
    let encoded = secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret);
    BASE64.decode(encoded).ok().filter(|key| !key.is_empty())
}

fn required_header<'h>(
    headers: &'h (impl HeaderLookup + ?Sized),
    name: &'static str,
) -> Result<&'h str, VerifyError> {
    headers
        .header(name)
        .map(str::trim)
        .filter(|value| !value.is_empty())
        .ok_or(VerifyError::MissingHeader(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vector from the Standard Webhooks reference libraries' own tests.
    const REF_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    const REF_ID: &str = "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk";
    const REF_TS: i64 = 1649367553;
    const REF_BODY: &[u8] = br#"{"email":"test@example.com","username":"test_user"}"#;
    const REF_SIGNATURE: &str = "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=";

    fn headers(id: &str, ts: i64, signature: &str) -> Vec<(String, String)> {
        vec![
            (HEADER_ID.into(), id.into()),
            (HEADER_TIMESTAMP.into(), ts.to_string()),
            (HEADER_SIGNATURE.into(), signature.into()),
        ]
    }

    fn verify(
        secret: &str,
        headers: &[(String, String)],
        body: &[u8],
        now: i64,
    ) -> Result<Verified, VerifyError> {
        verify_standard(secret, headers, body, now, DEFAULT_TOLERANCE)
    }

    #[test]
    fn generated_secrets_are_prefixed_32_byte_keys_and_differ() {
        let a = generate_secret();
        let b = generate_secret();
        assert_ne!(a, b);
        assert_eq!(decode_secret(&a).unwrap().len(), 32);
        assert!(a.starts_with("whsec_"));
    }

    #[test]
    fn sign_matches_the_reference_vector() {
        let secrets = [REF_SECRET.to_owned()];
        assert_eq!(
            sign(REF_ID, REF_TS, REF_BODY, &secrets).unwrap(),
            REF_SIGNATURE
        );
    }

    #[test]
    fn round_trip() {
        let secret = generate_secret();
        let signed =
            SignedHeaders::new("msg_1", 1_700_000_000, b"{}", std::slice::from_ref(&secret))
                .unwrap();
        let pairs = signed.pairs();
        assert_eq!(pairs[0], ("webhook-id", "msg_1".to_owned()));
        assert_eq!(pairs[1], ("webhook-timestamp", "1700000000".to_owned()));
        verify_standard(&secret, &pairs[..], b"{}", 1_700_000_000, DEFAULT_TOLERANCE).unwrap();
        verify(
            REF_SECRET,
            &headers(REF_ID, REF_TS, REF_SIGNATURE),
            REF_BODY,
            REF_TS,
        )
        .unwrap();
    }

    #[test]
    fn rotation_signs_with_every_secret_and_either_verifies() {
        let (old, new) = (generate_secret(), generate_secret());
        let signature = sign("msg_2", 100, b"body", &[old.clone(), new.clone()]).unwrap();
        assert_eq!(signature.split(' ').count(), 2);
        assert!(signature.split(' ').all(|s| s.starts_with("v1,")));
        let h = headers("msg_2", 100, &signature);
        verify(&old, &h, b"body", 100).unwrap();
        verify(&new, &h, b"body", 100).unwrap();
        assert_eq!(
            verify(&generate_secret(), &h, b"body", 100),
            Err(VerifyError::SignatureMismatch)
        );
    }

    #[test]
    fn other_versions_and_undecodable_entries_are_skipped() {
        let h = headers(
            REF_ID,
            REF_TS,
            &format!("v1a,abc v1,!!! v2,xyz {REF_SIGNATURE}"),
        );
        verify(REF_SECRET, &h, REF_BODY, REF_TS).unwrap();
    }

    #[test]
    fn a_tampered_body_id_or_timestamp_is_refused() {
        let h = headers(REF_ID, REF_TS, REF_SIGNATURE);
        let tampered = br#"{"email":"test@example.com","username":"test_usex"}"#;
        assert_eq!(
            verify(REF_SECRET, &h, tampered, REF_TS),
            Err(VerifyError::SignatureMismatch)
        );
        let h = headers("msg_other", REF_TS, REF_SIGNATURE);
        assert_eq!(
            verify(REF_SECRET, &h, REF_BODY, REF_TS),
            Err(VerifyError::SignatureMismatch)
        );
        let h = headers(REF_ID, REF_TS + 1, REF_SIGNATURE);
        assert_eq!(
            verify(REF_SECRET, &h, REF_BODY, REF_TS),
            Err(VerifyError::SignatureMismatch)
        );
        // A truncated signature must not match as a prefix.
        let h = headers(REF_ID, REF_TS, &REF_SIGNATURE[..20]);
        assert_eq!(
            verify(REF_SECRET, &h, REF_BODY, REF_TS),
            Err(VerifyError::SignatureMismatch)
        );
    }

    #[test]
    fn stale_and_future_timestamps_are_refused_at_the_tolerance() {
        let h = headers(REF_ID, REF_TS, REF_SIGNATURE);
        verify(REF_SECRET, &h, REF_BODY, REF_TS + 300).unwrap();
        verify(REF_SECRET, &h, REF_BODY, REF_TS - 300).unwrap();
        assert_eq!(
            verify(REF_SECRET, &h, REF_BODY, REF_TS + 301),
            Err(VerifyError::TimestampTooOld {
                age_s: 301,
                tolerance_s: 300
            })
        );
        assert_eq!(
            verify(REF_SECRET, &h, REF_BODY, REF_TS - 301),
            Err(VerifyError::TimestampTooNew {
                ahead_s: 301,
                tolerance_s: 300
            })
        );
        let tight = verify_standard(
            REF_SECRET,
            &h[..],
            REF_BODY,
            REF_TS + 11,
            Duration::from_secs(10),
        );
        assert!(matches!(tight, Err(VerifyError::TimestampTooOld { .. })));
    }

    #[test]
    fn missing_and_malformed_headers_are_named() {
        let full = headers(REF_ID, REF_TS, REF_SIGNATURE);
        for name in [HEADER_ID, HEADER_TIMESTAMP, HEADER_SIGNATURE] {
            let without: Vec<_> = full.iter().filter(|(k, _)| k != name).cloned().collect();
            assert_eq!(
                verify(REF_SECRET, &without, REF_BODY, REF_TS),
                Err(VerifyError::MissingHeader(name))
            );
        }
        let mut blank = full.clone();
        blank[0].1 = "  ".into();
        assert_eq!(
            verify(REF_SECRET, &blank, REF_BODY, REF_TS),
            Err(VerifyError::MissingHeader(HEADER_ID))
        );

        let mut bad_ts = full.clone();
        bad_ts[1].1 = "yesterday".into();
        assert_eq!(
            verify(REF_SECRET, &bad_ts, REF_BODY, REF_TS),
            Err(VerifyError::MalformedHeader(HEADER_TIMESTAMP))
        );
        let no_pairs = headers(
            REF_ID,
            REF_TS,
            "tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=",
        );
        assert_eq!(
            verify(REF_SECRET, &no_pairs, REF_BODY, REF_TS),
            Err(VerifyError::MalformedHeader(HEADER_SIGNATURE))
        );
    }

    #[test]
    fn header_names_are_case_insensitive_and_both_http_versions_work() {
        let upper: Vec<(String, String)> = headers(REF_ID, REF_TS, REF_SIGNATURE)
            .into_iter()
            .map(|(k, v)| (k.to_ascii_uppercase(), v))
            .collect();
        verify(REF_SECRET, &upper, REF_BODY, REF_TS).unwrap();

        let mut reqwest_map = reqwest::header::HeaderMap::new();
        for (name, value) in headers(REF_ID, REF_TS, REF_SIGNATURE) {
            reqwest_map.insert(
                reqwest::header::HeaderName::try_from(name.as_str()).unwrap(),
                reqwest::header::HeaderValue::from_str(&value).unwrap(),
            );
        }
        verify_standard(
            REF_SECRET,
            &reqwest_map,
            REF_BODY,
            REF_TS,
            DEFAULT_TOLERANCE,
        )
        .unwrap();
    }

    #[test]
    fn bad_secrets_are_refused() {
        assert!(matches!(
            sign("m", 1, b"x", &[]),
            Err(SigningError::NoSecret)
        ));
        for secret in ["whsec_", "whsec_not base64!", ""] {
            assert!(matches!(
                sign("m", 1, b"x", &[secret.into()]),
                Err(SigningError::InvalidSecret)
            ));
            let h = headers(REF_ID, REF_TS, REF_SIGNATURE);
            assert_eq!(
                verify(secret, &h, REF_BODY, REF_TS),
                Err(VerifyError::InvalidSecret)
            );
        }
        assert!(matches!(
            sign("m", 1, &[0xff, 0xfe], &[generate_secret()]),
            Err(SigningError::PayloadNotUtf8)
        ));
    }

    // Computed with openssl; the first pair is the one GitHub's documentation uses:
    //   printf '%s' 'Hello, World!' | openssl dgst -sha256 -hmac "It's a Secret to Everybody"
    //   printf '%s' '{"action":"opened","number":1}' |
    //     openssl dgst -sha256 -hmac genrt-github-secret
    const GH_SECRET: &str = "It's a Secret to Everybody";
    const GH_BODY: &[u8] = b"Hello, World!";
    const GH_SIGNATURE: &str =
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

    #[test]
    fn github_known_vectors_verify() {
        verify_github(GH_SECRET, GH_BODY, Some(GH_SIGNATURE)).unwrap();
        verify_github(
            "genrt-github-secret",
            br#"{"action":"opened","number":1}"#,
            Some("sha256=29bb90f43ea9bbf0cb7cf373de7816712e05b6728eb9bda3f2930cea689722ed"),
        )
        .unwrap();
    }

    #[test]
    fn github_refusals_are_distinct() {
        assert_eq!(
            verify_github(GH_SECRET, b"Hello, World?", Some(GH_SIGNATURE)),
            Err(VerifyError::SignatureMismatch)
        );
        assert_eq!(
            verify_github("another secret", GH_BODY, Some(GH_SIGNATURE)),
            Err(VerifyError::SignatureMismatch)
        );
        assert_eq!(
            verify_github(GH_SECRET, GH_BODY, Some(&GH_SIGNATURE[..40])),
            Err(VerifyError::MalformedHeader(GITHUB_SIGNATURE_HEADER)),
            "odd-length hex"
        );
        assert_eq!(
            verify_github(GH_SECRET, GH_BODY, Some(&GH_SIGNATURE[..41])),
            Err(VerifyError::SignatureMismatch),
            "a prefix of the right tag"
        );
        assert_eq!(
            verify_github(
                GH_SECRET,
                GH_BODY,
                Some(&GH_SIGNATURE.replace("sha256=", "sha1="))
            ),
            Err(VerifyError::MalformedHeader(GITHUB_SIGNATURE_HEADER))
        );
        assert_eq!(
            verify_github(GH_SECRET, GH_BODY, None),
            Err(VerifyError::MissingHeader(GITHUB_SIGNATURE_HEADER))
        );
        assert_eq!(
            verify_github("", GH_BODY, Some(GH_SIGNATURE)),
            Err(VerifyError::InvalidSecret)
        );
    }

    #[test]
    fn a_github_message_is_keyed_by_what_its_signature_covers() {
        let keys = verify_github(GH_SECRET, GH_BODY, Some(GH_SIGNATURE))
            .unwrap()
            .receipt_keys();
        assert_eq!(keys.len(), 1, "no id: GitHub signs none");
        assert!(keys[0].starts_with("sha256:") && keys[0].len() == 7 + 64);
        // The same message, however its header is written, is the same receipt.
        let upper = format!("sha256={}", GH_SIGNATURE[7..].to_ascii_uppercase());
        for header in [upper.as_str(), &format!("  {GH_SIGNATURE} ")] {
            assert_eq!(
                verify_github(GH_SECRET, GH_BODY, Some(header))
                    .unwrap()
                    .receipt_keys(),
                keys
            );
        }
        // Another body is another message.
        let other = b"Hello, World?";
        let mut mac = HmacSha256::new_from_slice(GH_SECRET.as_bytes()).unwrap();
        mac.update(other);
        let signature = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        assert_ne!(
            verify_github(GH_SECRET, other, Some(&signature))
                .unwrap()
                .receipt_keys(),
            keys
        );
    }

    #[test]
    fn a_standard_message_is_keyed_by_its_signed_content_and_its_signed_id() {
        let keys = |h: &[(String, String)], body: &[u8], now: i64| {
            verify(REF_SECRET, h, body, now).unwrap().receipt_keys()
        };
        let first = keys(&headers(REF_ID, REF_TS, REF_SIGNATURE), REF_BODY, REF_TS);
        assert_eq!(first.len(), 2);
        assert!(first[0].starts_with("sha256:") && first[0].len() == 7 + 64);
        assert_eq!(
            first[1],
            format!("id:{}", hex::encode(Sha256::digest(REF_ID.as_bytes())))
        );
        // Extra signatures, other versions and spacing do not make it another message.
        let padded = headers(REF_ID, REF_TS, &format!("v1a,abc {REF_SIGNATURE} v1,AAAA"));
        assert_eq!(keys(&padded, REF_BODY, REF_TS), first);
        // Signed again later (a sender's retry): another digest, the same id.
        let secrets = [REF_SECRET.to_owned()];
        let later = sign(REF_ID, REF_TS + 60, REF_BODY, &secrets).unwrap();
        let retried = keys(&headers(REF_ID, REF_TS + 60, &later), REF_BODY, REF_TS);
        assert_ne!(retried[0], first[0]);
        assert_eq!(retried[1], first[1]);
        // Another id: both keys differ.
        let other = sign("msg_other", REF_TS, REF_BODY, &secrets).unwrap();
        let other = keys(&headers("msg_other", REF_TS, &other), REF_BODY, REF_TS);
        assert_ne!(other[0], first[0]);
        assert_ne!(other[1], first[1]);
    }
}
