//! Bearer-token authentication (the `Caller` extractor, which also takes API keys, is in
//! [`crate::tenancy`]). Tokens are JWTs carrying the tenant and its scopes, verified
//! by [`jwt::JwtVerifier`]: HS256 with the shared secret, RS256/ES256 with configured public
//! keys or a JWKS document, the algorithm pinned, `exp`, `iss` and `aud` required.

pub mod jwt;

use std::sync::Arc;

use crate::config::AuthConfig;
use crate::error::ApiError;

pub use jwt::{AuthSetupError, JwtVerifier, RefreshTask, TokenIssuer, VerifiedToken};

pub const SCOPE_FUNCTIONS_WRITE: &str = "functions:write";
pub const SCOPE_FUNCTIONS_INVOKE: &str = "functions:invoke";
pub const SCOPE_INVOCATIONS_READ: &str = "invocations:read";
pub const SCOPE_WEBHOOKS_WRITE: &str = "webhooks:write";
pub const SCOPE_KEYS_WRITE: &str = "keys:write";
pub const SCOPE_MODELS_WRITE: &str = "models:write";
pub const SCOPE_ADMIN: &str = "admin";

/// Every scope genrt knows.
pub const ALL_SCOPES: &[&str] = &[
    SCOPE_FUNCTIONS_WRITE,
    SCOPE_FUNCTIONS_INVOKE,
    SCOPE_INVOCATIONS_READ,
    SCOPE_WEBHOOKS_WRITE,
    SCOPE_KEYS_WRITE,
    SCOPE_MODELS_WRITE,
    SCOPE_ADMIN,
];

/// What a tenant may do with its own resources: everything but `admin`. Tokens that carry no
/// scope claim get these (see [`jwt::scopes_from_claims`]), and `genrt token` issues them by
/// default.
pub const DEFAULT_TENANT_SCOPES: &[&str] = &[
    SCOPE_FUNCTIONS_WRITE,
    SCOPE_FUNCTIONS_INVOKE,
    SCOPE_INVOCATIONS_READ,
    SCOPE_WEBHOOKS_WRITE,
    SCOPE_KEYS_WRITE,
    SCOPE_MODELS_WRITE,
];

/// Checks the credentials of requests; lives in the app data for the `Caller` extractor.
pub struct Authenticator {
    jwt: Arc<JwtVerifier>,
    /// Held so that the JWKS refresh stops when the authenticator is dropped.
    _refresh: Option<RefreshTask>,
}

impl Authenticator {
    /// Builds the verifier (reading key files, fetching the JWKS URL) and starts the JWKS
    /// refresh. Must run inside a tokio runtime.
    pub async fn new(config: &AuthConfig) -> Result<Self, AuthSetupError> {
        let jwt = Arc::new(JwtVerifier::new(config).await?);
        let refresh = jwt.spawn_refresh();
        Ok(Self {
            jwt,
            _refresh: refresh,
        })
    }

    pub fn verify(&self, token: &str) -> Result<VerifiedToken, ApiError> {
        self.jwt.verify(token)
    }
}
