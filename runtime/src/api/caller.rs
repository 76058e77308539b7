//! The `Caller` extractor: taking it as a handler argument is what makes a route require a
//! credential. It checks, in order: a Bearer credential is present; it is a valid API key or
//! JWT; the tenant is not disabled; the tenant's rate limit has room.

use actix_web::{dev::Payload, http::header, web, FromRequest, HttpRequest};
use futures_util::future::LocalBoxFuture;

use crate::app::AppState;
use crate::auth::Authenticator;
use crate::error::{ApiError, ErrorCode};
use crate::tenancy::{Caller, Credential, Scopes};

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        let span = tracing::info_span!(
            target: "genrt_runtime::auth",
            "auth",
            genrt.tenant = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        Box::pin(tracing::Instrument::instrument(
            async move {
                let caller = authenticate(&req).await;
                let span = tracing::Span::current();
                match &caller {
                    Ok(c) => span.record("genrt.tenant", c.tenant.as_str()),
                    Err(_) => span.record("otel.status_code", "ERROR"),
                };
                caller
            },
            span,
        ))
    }
}

pub(crate) fn bearer(req: &HttpRequest) -> Result<&str, ApiError> {
    let value = req.headers().get(header::AUTHORIZATION).ok_or_else(|| {
        ApiError::new(
            ErrorCode::MissingCredentials,
            "an Authorization: Bearer token or API key is required",
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
    Ok(token.trim())
}

async fn authenticate(req: &HttpRequest) -> Result<Caller, ApiError> {
    let state = req
        .app_data::<web::Data<AppState>>()
        .ok_or_else(|| ApiError::internal("app state missing"))?;
    let token = bearer(req)?;
    let (tenant, scopes, credential, expires_at) = if crate::tenancy::keys::looks_like_key(token) {
        let grant = state.tenancy.verify_key(token).await?;
        (
            grant.tenant.clone(),
            grant.scopes,
            Credential::ApiKey(grant.key_id),
            grant.expires_at,
        )
    } else {
        let auth = req
            .app_data::<web::Data<Authenticator>>()
            .ok_or_else(|| ApiError::internal("authenticator missing from app data"))?;
        let verified = auth.verify(token)?;
        // Identity providers put other services' scopes in tokens too: unknown ones are
        // ignored.
        let scopes = Scopes::parse_lenient(verified.scopes.iter().map(String::as_str));
        (
            verified.tenant,
            scopes,
            Credential::Jwt,
            verified.expires_at,
        )
    };
    let limits = state.tenancy.limits_of(&tenant).await?;
    if limits.disabled {
        return Err(ApiError::new(
            ErrorCode::TenantDisabled,
            format!("tenant `{}` is disabled", tenant.as_str()),
        ));
    }
    state.tenancy.limits.check_rate(&tenant, &limits)?;
    Ok(Caller {
        tenant,
        scopes,
        credential,
        expires_at,
        limits,
    })
}
