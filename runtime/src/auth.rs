//! Bearer-token authentication: HS256 JWTs carrying the tenant. The algorithm is pinned, and
//! `exp`, `iss` and `aud` are required and checked, so that a token made for another service,
//! or signed with `none`, is refused.

use std::future::{ready, Ready};
use std::time::{SystemTime, UNIX_EPOCH};

use actix_web::{dev::Payload, http::header, web, FromRequest, HttpRequest};
use genrt_functions::TenantId;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::AuthConfig;
use crate::error::{ApiError, ErrorCode};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub tenant: String,
    pub exp: u64,
    pub iat: u64,
    pub iss: String,
    pub aud: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
}

pub struct Authenticator {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    config: AuthConfig,
}

impl Authenticator {
    pub fn new(config: &AuthConfig) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[&config.issuer]);
        validation.set_audience(&[&config.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.leeway = config.leeway_s;
        Self {
            encoding: EncodingKey::from_secret(config.jwt_secret.as_bytes()),
            decoding: DecodingKey::from_secret(config.jwt_secret.as_bytes()),
            validation,
            config: config.clone(),
        }
    }

    /// A token for `tenant`, valid for the configured lifetime.
    pub fn issue(&self, tenant: &TenantId) -> String {
        let now = unix_now();
        let claims = Claims {
            tenant: tenant.as_str().to_owned(),
            iat: now,
            exp: now + self.config.token_ttl_s,
            iss: self.config.issuer.clone(),
            aud: self.config.audience.clone(),
            sub: None,
        };
        self.sign(&claims)
    }

    pub fn sign(&self, claims: &Claims) -> String {
        encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .expect("HS256 encoding cannot fail")
    }

    pub fn verify(&self, token: &str) -> Result<TenantId, ApiError> {
        let data = decode::<Claims>(token, &self.decoding, &self.validation).map_err(|e| {
            let (code, message) = match e.kind() {
                ErrorKind::ExpiredSignature => (ErrorCode::TokenExpired, "the token has expired"),
                ErrorKind::InvalidAudience => {
                    (ErrorCode::InvalidToken, "the token is for another audience")
                }
                ErrorKind::InvalidIssuer => {
                    (ErrorCode::InvalidToken, "the token has an unknown issuer")
                }
                ErrorKind::InvalidSignature => {
                    (ErrorCode::InvalidToken, "the token signature is invalid")
                }
                ErrorKind::InvalidAlgorithm => (
                    ErrorCode::InvalidToken,
                    "the token algorithm is not accepted",
                ),
                ErrorKind::MissingRequiredClaim(_) => {
                    (ErrorCode::InvalidToken, "the token lacks a required claim")
                }
                _ => (ErrorCode::InvalidToken, "the token is malformed"),
            };
            ApiError::new(code, message)
        })?;
        TenantId::parse(&data.claims.tenant).map_err(|_| {
            ApiError::new(
                ErrorCode::InvalidToken,
                "the token's tenant is not a valid tenant id",
            )
        })
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
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
        tenant: auth.verify(token.trim())?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> AuthConfig {
        AuthConfig {
            jwt_secret: "0123456789abcdef0123".into(),
            ..AuthConfig::default()
        }
    }

    #[test]
    fn issued_tokens_verify_and_carry_the_tenant() {
        let auth = Authenticator::new(&config());
        let token = auth.issue(&TenantId::parse("acme").unwrap());
        assert_eq!(auth.verify(&token).unwrap().as_str(), "acme");
    }

    #[test]
    fn forged_expired_and_foreign_tokens_are_refused() {
        let auth = Authenticator::new(&config());
        let other = Authenticator::new(&AuthConfig {
            jwt_secret: "another-secret-entirely".into(),
            ..config()
        });
        let forged = other.issue(&TenantId::parse("acme").unwrap());
        assert_eq!(
            auth.verify(&forged).unwrap_err().code,
            ErrorCode::InvalidToken
        );

        let foreign = Authenticator::new(&AuthConfig {
            audience: "someone-else".into(),
            ..config()
        });
        let token = foreign.issue(&TenantId::parse("acme").unwrap());
        assert_eq!(
            auth.verify(&token).unwrap_err().code,
            ErrorCode::InvalidToken
        );

        let c = config();
        let past = unix_now() - 3600;
        let token = auth.sign(&Claims {
            tenant: "acme".into(),
            exp: past,
            iat: past - 60,
            iss: c.issuer.clone(),
            aud: c.audience.clone(),
            sub: None,
        });
        assert_eq!(
            auth.verify(&token).unwrap_err().code,
            ErrorCode::TokenExpired
        );
    }
}
