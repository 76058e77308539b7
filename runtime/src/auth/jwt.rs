//! JWT verification and issuing. HS256 tokens are checked against the shared secret; RS256 and
//! ES256 tokens against public keys from PEM files or a JWKS document (a file, or a URL fetched
//! at start and refreshed in the background).
//!
//! The algorithm is pinned in both directions: the header's `alg` must be one of
//! `auth.allowed_algorithms`, HS256 is only ever checked with the shared secret, and a public key
//! only verifies tokens of the one algorithm it was configured or published for. That is what
//! refuses `alg: none` and the HS/RS confusion where a token is HMAC-signed with a public key
//! as the secret. `exp`, `iss` and `aud` are required; `nbf` is checked when present.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use genrt_functions::TenantId;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{
    decode, decode_header, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation,
};
use serde::{Deserialize, Serialize};

use super::DEFAULT_TENANT_SCOPES;
use crate::config::{AuthConfig, JwtAlgorithm, PublicKeyConfig};
use crate::error::{ApiError, ErrorCode};

/// A JWKS endpoint that does not answer within this is treated as failed: at start the
/// server does not start, on refresh the keys in use are kept.
const JWKS_FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Real key sets are a few kilobytes; anything far larger is not a key set.
const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// The DER prefix of every P-256 SubjectPublicKeyInfo, base64-encoded. An ES256 PEM whose body
/// does not start with it is on another curve, and would fail every token if accepted.
const P256_SPKI_PREFIX: &str = "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE";

/// What a verified token says about its bearer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    pub tenant: TenantId,
    /// From the `scope` claim (space separated) and the `scopes` claim (an array), merged.
    /// A token with neither gets [`DEFAULT_TENANT_SCOPES`].
    pub scopes: Vec<String>,
    /// The `sub` claim, when the token has one.
    pub subject: Option<String>,
    /// The `exp` claim: an API key this token creates may not outlive it.
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Why the verifier could not be built. Every variant names the file or URL at fault.
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a usable {alg:?} public key: {detail}")]
    Pem {
        path: PathBuf,
        alg: JwtAlgorithm,
        detail: String,
    },
    #[error("{origin} is not a JWKS document: {detail}")]
    Jwks { origin: String, detail: String },
    #[error("{origin} has no RS256 or P-256 ES256 signing key")]
    NoUsableKeys { origin: String },
    #[error("key id `{kid}` is configured twice")]
    DuplicateKid { kid: String },
    #[error("fetching the JWKS at {url}: {detail}")]
    Fetch { url: String, detail: String },
}

/// One asymmetric key, bound to the single algorithm it may verify.
#[derive(Clone)]
struct PublicKey {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

/// The asymmetric keys in use, by `kid`, plus the ones that have none.
#[derive(Default)]
struct KeySet {
    by_kid: HashMap<String, PublicKey>,
    unnamed: Vec<PublicKey>,
}

impl KeySet {
    fn new(keys: impl IntoIterator<Item = PublicKey>) -> Result<Self, AuthSetupError> {
        let mut set = KeySet::default();
        for key in keys {
            match key.kid.clone() {
                Some(kid) => {
                    if set.by_kid.contains_key(&kid) {
                        return Err(AuthSetupError::DuplicateKid { kid });
                    }
                    set.by_kid.insert(kid, key);
                }
                None => set.unnamed.push(key),
            }
        }
        Ok(set)
    }

    fn len(&self) -> usize {
        self.by_kid.len() + self.unnamed.len()
    }

    /// The key for a token signed with `alg`. A token that names a `kid` gets that key or
    /// nothing; one that names none may use the only key of its algorithm, because guessing
    /// between several would make any of them a valid signer.
    fn find(&self, alg: Algorithm, kid: Option<&str>) -> Result<&DecodingKey, ApiError> {
        let key = match kid {
            Some(kid) => self
                .by_kid
                .get(kid)
                .ok_or_else(|| invalid(format!("the token's key id `{kid}` is not known")))?,
            None => {
                let mut candidates = self
                    .by_kid
                    .values()
                    .chain(&self.unnamed)
                    .filter(|k| k.alg == alg);
                match (candidates.next(), candidates.next()) {
                    (Some(key), None) => key,
                    (None, _) => {
                        return Err(invalid(format!("no {alg:?} key is configured")));
                    }
                    (Some(_), Some(_)) => {
                        return Err(invalid(format!(
                            "the token has no `kid` and several {alg:?} keys are configured"
                        )));
                    }
                }
            }
        };
        if key.alg != alg {
            return Err(invalid(format!(
                "the token's key is for {:?}, not {alg:?}",
                key.alg
            )));
        }
        Ok(&key.key)
    }
}

/// Where the refreshed keys come from.
struct RemoteJwks {
    url: String,
    client: reqwest::Client,
    every: Duration,
}

impl RemoteJwks {
    async fn fetch(&self) -> Result<Vec<PublicKey>, AuthSetupError> {
        let fail = |detail: String| AuthSetupError::Fetch {
            url: self.url.clone(),
            detail,
        };
        let response = self
            .client
            .get(&self.url)
            .send()
            .await
            .map_err(|e| fail(error_chain(&e)))?;
        if !response.status().is_success() {
            return Err(fail(format!("HTTP status {}", response.status())));
        }
        if response
            .content_length()
            .is_some_and(|n| n > MAX_JWKS_BYTES as u64)
        {
            return Err(fail(format!("larger than {MAX_JWKS_BYTES} bytes")));
        }
        // Read in chunks and stopped at the cap: without a Content-Length (chunked encoding)
        // the size is known only by reading, and a whole read would hold any size in memory.
        let mut response = response;
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| fail(error_chain(&e)))? {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(fail(format!("larger than {MAX_JWKS_BYTES} bytes")));
            }
            body.extend_from_slice(&chunk);
        }
        parse_jwks(&self.url, &body)
    }
}

/// Verifies bearer tokens. Built once at start; cheap to share behind an `Arc`.
pub struct JwtVerifier {
    secret: DecodingKey,
    /// One validation per accepted algorithm; an algorithm missing here is refused.
    validations: Vec<(Algorithm, Validation)>,
    /// `auth.max_token_ttl_s` plus the leeway; `None` is no limit.
    max_ttl_s: Option<u64>,
    /// Keys from PEM files and the JWKS file, which never change while running.
    fixed: Vec<PublicKey>,
    remote: Option<RemoteJwks>,
    /// Swapped whole on refresh, so a verification sees either the old set or the new one.
    keys: RwLock<Arc<KeySet>>,
    /// Tokens verified lately, by their exact text. A client sends the same token with every
    /// request until it expires, and decoding it again (base64, JSON, the signature) was 5%
    /// of the CPU of a cached invocation. An entry is only ever the result of a full
    /// verification of the same bytes; a hit still checks `exp`, and counts only if no key
    /// refresh happened since it was verified (a retired key must stop verifying at once).
    /// Refusals are not kept, so garbage tokens cannot fill it.
    verified: moka::sync::Cache<String, Arc<Verified>>,
    /// Counts key refreshes.
    key_generation: AtomicU64,
    leeway_s: u64,
}

/// A verified token, its `exp`, and the key generation it was verified under.
struct Verified {
    token: VerifiedToken,
    exp: Option<u64>,
    key_generation: u64,
}

/// Verified tokens remembered, at most; each for at most [`VERIFIED_TTL`].
const VERIFIED_TOKENS: u64 = 10_000;
const VERIFIED_TTL: Duration = Duration::from_secs(300);

impl JwtVerifier {
    /// Reads the PEM files and the JWKS file, and fetches the JWKS URL once. Any failure is an
    /// error: a server that cannot verify its callers' tokens should not start.
    pub async fn new(config: &AuthConfig) -> Result<Self, AuthSetupError> {
        let fixed = read_key_files(config)?;
        let remote = match &config.jwks_url {
            Some(url) => Some(RemoteJwks {
                url: url.clone(),
                client: reqwest::Client::builder()
                    .timeout(JWKS_FETCH_TIMEOUT)
                    .build()
                    .map_err(|e| AuthSetupError::Fetch {
                        url: url.clone(),
                        detail: error_chain(&e),
                    })?,
                every: Duration::from_secs(config.jwks_refresh_s),
            }),
            None => None,
        };
        let mut keys = fixed.clone();
        if let Some(remote) = &remote {
            keys.extend(remote.fetch().await?);
        }
        let keys = KeySet::new(keys)?;
        let validations = config
            .algorithms()
            .iter()
            .map(|&alg| {
                let alg = algorithm(alg);
                let mut validation = Validation::new(alg);
                validation.set_issuer(&[&config.issuer]);
                validation.set_audience(&[&config.audience]);
                validation.set_required_spec_claims(&["exp", "iss", "aud"]);
                validation.validate_nbf = true;
                validation.leeway = config.leeway_s;
                (alg, validation)
            })
            .collect();
        Ok(Self {
            secret: DecodingKey::from_secret(config.jwt_secret.as_bytes()),
            validations,
            max_ttl_s: (config.max_token_ttl_s > 0)
                .then_some(config.max_token_ttl_s.saturating_add(config.leeway_s)),
            fixed,
            remote,
            keys: RwLock::new(Arc::new(keys)),
            verified: moka::sync::Cache::builder()
                .max_capacity(VERIFIED_TOKENS)
                .time_to_live(VERIFIED_TTL)
                .build(),
            key_generation: AtomicU64::new(0),
            leeway_s: config.leeway_s,
        })
    }

    /// Checks the signature, the algorithm, `exp`, `nbf`, `iss` and `aud`, then reads the
    /// tenant and scopes. Every refusal is 401: `token_expired` for an expired token,
    /// `invalid_token` for everything else.
    pub fn verify(&self, token: &str) -> Result<VerifiedToken, ApiError> {
        // Read before verifying: a refresh that lands during the verification makes the entry
        // stale at once.
        let key_generation = self.key_generation.load(Ordering::Acquire);
        if let Some(hit) = self
            .verified
            .get(token)
            .filter(|hit| hit.key_generation == key_generation)
        {
            // `nbf` and the maximum lifetime held when it was verified and only hold more
            // since; `exp` is checked as jsonwebtoken checks it.
            if hit
                .exp
                .is_some_and(|exp| exp < unix_now().saturating_sub(self.leeway_s))
            {
                self.verified.invalidate(token);
                return Err(claim_error(&ErrorKind::ExpiredSignature));
            }
            return Ok(hit.token.clone());
        }
        let (verified, exp) = self.verify_uncached(token)?;
        self.verified.insert(
            token.to_owned(),
            Arc::new(Verified {
                token: verified.clone(),
                exp,
                key_generation,
            }),
        );
        Ok(verified)
    }

    fn verify_uncached(&self, token: &str) -> Result<(VerifiedToken, Option<u64>), ApiError> {
        // jsonwebtoken has no `none` algorithm, so such a header fails to parse here.
        let header = decode_header(token).map_err(|_| {
            invalid("the token header is malformed or names an unsupported algorithm")
        })?;
        let validation = self
            .validations
            .iter()
            .find(|(alg, _)| *alg == header.alg)
            .map(|(_, v)| v)
            .ok_or_else(|| {
                invalid(format!(
                    "the token algorithm {:?} is not accepted",
                    header.alg
                ))
            })?;
        let keys;
        let key = match header.alg {
            Algorithm::HS256 => &self.secret,
            alg => {
                keys = self.keys();
                keys.find(alg, header.kid.as_deref())?
            }
        };
        let claims = decode::<TokenClaims>(token, key, validation)
            .map_err(|e| claim_error(e.kind()))?
            .claims;
        // `exp` is required by the validation, so it is there; a token valid for longer than
        // the configured maximum is refused whoever signed it (a leaked long-lived token).
        if let (Some(max), Some(exp)) = (self.max_ttl_s, claims.exp) {
            if exp.saturating_sub(unix_now()) > max {
                return Err(invalid(
                    "the token's `exp` lies further ahead than auth.max_token_ttl_s allows",
                ));
            }
        }
        let tenant = claims
            .tenant
            .ok_or_else(|| invalid("the token lacks the `tenant` claim"))?;
        let tenant = TenantId::parse(&tenant)
            .map_err(|_| invalid("the token's tenant is not a valid tenant id"))?;
        let verified = VerifiedToken {
            tenant,
            scopes: scopes_from_claims(claims.scope.as_deref(), claims.scopes.as_deref()),
            subject: claims.sub,
            expires_at: claims
                .exp
                .and_then(|exp| chrono::DateTime::from_timestamp(exp as i64, 0)),
        };
        Ok((verified, claims.exp))
    }

    /// Fetches the JWKS URL again and replaces the keys it supplied, returning how many keys
    /// are now in use. On failure the keys in use are kept. Without a URL it does nothing.
    pub async fn refresh(&self) -> Result<usize, AuthSetupError> {
        let Some(remote) = &self.remote else {
            return Ok(self.keys().len());
        };
        let fetched = remote.fetch().await?;
        let keys = KeySet::new(self.fixed.iter().cloned().chain(fetched))?;
        let count = keys.len();
        *self.keys.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(keys);
        // After the swap, so that an entry of the new generation was verified with new keys.
        self.key_generation.fetch_add(1, Ordering::AcqRel);
        self.verified.invalidate_all();
        Ok(count)
    }

    /// Refreshes the JWKS URL every `jwks_refresh_s` until the returned task or the verifier
    /// is dropped; `None` when there is no URL. A failed refresh is logged and keeps the keys.
    pub fn spawn_refresh(self: &Arc<Self>) -> Option<RefreshTask> {
        let remote = self.remote.as_ref()?;
        let (every, url) = (remote.every, remote.url.clone());
        // Weak, so that the task never keeps a dropped verifier alive.
        let verifier = Arc::downgrade(self);
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Some(verifier) = verifier.upgrade() else {
                    break;
                };
                match verifier.refresh().await {
                    Ok(keys) => tracing::debug!(%url, keys, "jwks refreshed"),
                    Err(error) => tracing::warn!(
                        %url,
                        %error,
                        "jwks refresh failed; keeping the keys in use"
                    ),
                }
            }
        });
        Some(RefreshTask(task))
    }

    fn keys(&self) -> Arc<KeySet> {
        Arc::clone(&self.keys.read().unwrap_or_else(PoisonError::into_inner))
    }
}

/// The background JWKS refresh; dropping it stops the refresh.
pub struct RefreshTask(tokio::task::JoinHandle<()>);

impl Drop for RefreshTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Signs HS256 tokens with the shared secret, for `genrt token` and tests.
pub struct TokenIssuer {
    key: EncodingKey,
    issuer: String,
    audience: String,
}

#[derive(Serialize)]
struct IssuedClaims<'a> {
    tenant: &'a str,
    scope: String,
    iss: &'a str,
    aud: &'a str,
    iat: u64,
    exp: u64,
}

impl TokenIssuer {
    pub fn new(config: &AuthConfig) -> Self {
        Self {
            key: EncodingKey::from_secret(config.jwt_secret.as_bytes()),
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
        }
    }

    /// A token for `tenant` carrying `scopes` in the `scope` claim, valid for `ttl`.
    pub fn issue(&self, tenant: &TenantId, scopes: &[&str], ttl: Duration) -> String {
        let now = unix_now();
        let claims = IssuedClaims {
            tenant: tenant.as_str(),
            scope: scopes.join(" "),
            iss: &self.issuer,
            aud: &self.audience,
            iat: now,
            exp: now.saturating_add(ttl.as_secs()),
        };
        encode(&Header::new(Algorithm::HS256), &claims, &self.key)
            .expect("HMAC signing of plain claims cannot fail")
    }
}

/// Reads every key file the configuration names, so that `Config::validate` can refuse a bad
/// one at start with its name.
pub fn check_key_files(config: &AuthConfig) -> Result<(), AuthSetupError> {
    read_key_files(config).map(drop)
}

fn read_key_files(config: &AuthConfig) -> Result<Vec<PublicKey>, AuthSetupError> {
    let mut keys = config
        .public_keys
        .iter()
        .map(read_pem_key)
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(path) = &config.jwks_file {
        keys.extend(read_jwks_file(path)?);
    }
    Ok(keys)
}

fn read_pem_key(config: &PublicKeyConfig) -> Result<PublicKey, AuthSetupError> {
    let path = &config.pem_file;
    let pem = std::fs::read(path).map_err(|source| AuthSetupError::Read {
        path: path.clone(),
        source,
    })?;
    let bad = |detail: &str| AuthSetupError::Pem {
        path: path.clone(),
        alg: config.alg,
        detail: detail.to_owned(),
    };
    let text = std::str::from_utf8(&pem).map_err(|_| bad("the file is not PEM text"))?;
    // jsonwebtoken also parses a private key as an RSA key, which would then fail every
    // token; only public key blocks are accepted.
    let spki_body = text
        .lines()
        .skip_while(|line| line.trim() != "-----BEGIN PUBLIC KEY-----")
        .nth(1)
        .map(str::trim);
    let (alg, key) = match config.alg {
        JwtAlgorithm::RS256 => {
            if spki_body.is_none() && !text.contains("-----BEGIN RSA PUBLIC KEY-----") {
                return Err(bad("expected a `PUBLIC KEY` or `RSA PUBLIC KEY` PEM block"));
            }
            let key = DecodingKey::from_rsa_pem(&pem).map_err(|e| bad(&e.to_string()))?;
            (Algorithm::RS256, key)
        }
        JwtAlgorithm::ES256 => {
            if !spki_body.is_some_and(|body| body.starts_with(P256_SPKI_PREFIX)) {
                return Err(bad("expected a P-256 `PUBLIC KEY` PEM block"));
            }
            let key = DecodingKey::from_ec_pem(&pem).map_err(|e| bad(&e.to_string()))?;
            (Algorithm::ES256, key)
        }
        JwtAlgorithm::HS256 => return Err(bad("HS256 uses auth.jwt_secret, not a key file")),
    };
    Ok(PublicKey {
        kid: config.kid.clone(),
        alg,
        key,
    })
}

fn read_jwks_file(path: &Path) -> Result<Vec<PublicKey>, AuthSetupError> {
    let body = std::fs::read(path).map_err(|source| AuthSetupError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_jwks(&path.display().to_string(), &body)
}

/// The RS256 and ES256 signing keys of a JWKS document. Other keys (encryption keys, other
/// algorithms, symmetric keys) are skipped rather than refused, because identity providers
/// publish them side by side; a document with no usable key at all is an error.
fn parse_jwks(origin: &str, body: &[u8]) -> Result<Vec<PublicKey>, AuthSetupError> {
    #[derive(Deserialize)]
    struct RawSet {
        keys: Vec<serde_json::Value>,
    }
    let set: RawSet = serde_json::from_slice(body).map_err(|e| AuthSetupError::Jwks {
        origin: origin.to_owned(),
        detail: e.to_string(),
    })?;
    let mut keys = Vec::new();
    for raw in set.keys {
        let kid = raw.get("kid").and_then(|k| k.as_str()).map(str::to_owned);
        let usable = serde_json::from_value::<Jwk>(raw)
            .map_err(|e| e.to_string())
            .and_then(|jwk| signing_key(&jwk));
        match usable {
            Ok(key) => keys.push(key),
            Err(reason) => tracing::debug!(origin, ?kid, %reason, "jwks key skipped"),
        }
    }
    if keys.is_empty() {
        return Err(AuthSetupError::NoUsableKeys {
            origin: origin.to_owned(),
        });
    }
    Ok(keys)
}

fn signing_key(jwk: &Jwk) -> Result<PublicKey, String> {
    if matches!(&jwk.common.public_key_use, Some(u) if *u != PublicKeyUse::Signature) {
        return Err("not a signing key".into());
    }
    // A key without `alg` is bound to the one algorithm genrt accepts for its type.
    let alg = match (&jwk.algorithm, jwk.common.key_algorithm) {
        (AlgorithmParameters::RSA(_), None | Some(KeyAlgorithm::RS256)) => Algorithm::RS256,
        (AlgorithmParameters::EllipticCurve(p), None | Some(KeyAlgorithm::ES256))
            if p.curve == EllipticCurve::P256 =>
        {
            Algorithm::ES256
        }
        _ => return Err("neither an RS256 key nor a P-256 ES256 key".into()),
    };
    let key = DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    Ok(PublicKey {
        kid: jwk.common.key_id.clone(),
        alg,
        key,
    })
}

/// The claims genrt reads; `exp`, `iss`, `aud` and `nbf` are checked by `Validation`.
#[derive(Deserialize)]
struct TokenClaims {
    tenant: Option<String>,
    exp: Option<u64>,
    sub: Option<String>,
    scope: Option<String>,
    scopes: Option<Vec<String>>,
}

/// The scopes of a token: the OAuth-style `scope` string and the `scopes` array, merged in
/// order without repeats. A token with neither claim gets the default tenant scopes, so that
/// tokens minted before scopes existed keep working; `admin` is never implied and must be
/// granted explicitly. A token that names its scopes, even as an empty list, gets exactly those.
pub fn scopes_from_claims(scope: Option<&str>, scopes: Option<&[String]>) -> Vec<String> {
    if scope.is_none() && scopes.is_none() {
        return DEFAULT_TENANT_SCOPES
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
    }
    let mut merged: Vec<String> = Vec::new();
    let named = scope
        .into_iter()
        .flat_map(str::split_whitespace)
        .chain(scopes.into_iter().flatten().map(String::as_str));
    for s in named {
        if !s.is_empty() && !merged.iter().any(|m| m == s) {
            merged.push(s.to_owned());
        }
    }
    merged
}

fn claim_error(kind: &ErrorKind) -> ApiError {
    match kind {
        ErrorKind::ExpiredSignature => {
            ApiError::new(ErrorCode::TokenExpired, "the token has expired")
        }
        ErrorKind::ImmatureSignature => invalid("the token is not valid yet"),
        ErrorKind::InvalidAudience => invalid("the token is for another audience"),
        ErrorKind::InvalidIssuer => invalid("the token has an unknown issuer"),
        ErrorKind::InvalidSignature => invalid("the token signature is invalid"),
        ErrorKind::InvalidAlgorithm => invalid("the token algorithm is not accepted"),
        ErrorKind::MissingRequiredClaim(claim) => {
            invalid(format!("the token lacks the required `{claim}` claim"))
        }
        _ => invalid("the token is malformed"),
    }
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::InvalidToken, message)
}

fn algorithm(alg: JwtAlgorithm) -> Algorithm {
    match alg {
        JwtAlgorithm::HS256 => Algorithm::HS256,
        JwtAlgorithm::RS256 => Algorithm::RS256,
        JwtAlgorithm::ES256 => Algorithm::ES256,
    }
}

/// reqwest's own message hides the cause (refused, timed out, TLS); the chain says it.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
