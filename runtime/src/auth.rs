//! Bearer-token authentication. Tokens are JWTs carrying the tenant and its scopes, verified
//! by [`jwt::JwtVerifier`]: HS256 with the shared secret, RS256/ES256 with configured public
//! keys or a JWKS document, the algorithm pinned, `exp`, `iss` and `aud` required.

pub mod jwt;

use std::future::{ready, Ready};
use std::sync::Arc;

use actix_web::{dev::Payload, http::header, web, FromRequest, HttpRequest};
use genrt_functions::TenantId;

use crate::config::AuthConfig;
use crate::error::{ApiError, ErrorCode};

pub use jwt::{AuthSetupError, JwtVerifier, RefreshTask, TokenIssuer, VerifiedToken};

pub const SCOPE_FUNCTIONS_WRITE: &str = "functions:write";
pub const SCOPE_FUNCTIONS_INVOKE: &str = "functions:invoke";
pub const SCOPE_INVOCATIONS_READ: &str = "invocations:read";
pub const SCOPE_WEBHOOKS_WRITE: &str = "webhooks:write";
pub const SCOPE_ADMIN: &str = "admin";

/// Every scope genrt knows.
pub const ALL_SCOPES: &[&str] = &[
    SCOPE_FUNCTIONS_WRITE,
    SCOPE_FUNCTIONS_INVOKE,
    SCOPE_INVOCATIONS_READ,
    SCOPE_WEBHOOKS_WRITE,
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

/// The authenticated tenant of a request. Taking it as a handler argument is what makes a
/// route require a valid token.
#[derive(Debug, Clone)]
pub struct Caller {
    pub tenant: TenantId,
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(authenticate(req))
    }
}

fn authenticate(req: &HttpRequest) -> Result<Caller, ApiError> {
    let auth = req
        .app_data::<web::Data<Authenticator>>()
        .ok_or_else(|| ApiError::internal("authenticator missing from app data"))?;
    let value = req.headers().get(header::AUTHORIZATION).ok_or_else(|| {
        ApiError::new(
            ErrorCode::MissingCredentials,
            "an Authorization: Bearer token is required",
        )
    })?;
    let value = value.to_str().map_err(|_| {
        ApiError::new(
            ErrorCode::InvalidToken,
            "the Authorization header is not text",
        )
    })?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::MissingCredentials,
                "the Authorization header must use the Bearer scheme",
            )
        })?;
    Ok(Caller {
        tenant: auth.verify(token.trim())?.tenant,
    })
}
