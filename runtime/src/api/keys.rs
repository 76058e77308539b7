//! A tenant's API keys. The secret is shown once, at creation; the database keeps its hash.

use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use genrt_functions::TenantId;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::app::AppState;
use crate::error::{ApiError, ErrorBody, ErrorCode};
use crate::store::ApiKeyRow;
use crate::tenancy::{keys, Caller, Credential, Scope, Scopes};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApiKey {
    /// A label for listings.
    pub name: String,
    /// Scopes granted; never more than the creating credential holds. Default: for the
    /// caller's own tenant, the creator's scopes without `admin`; for another tenant (an
    /// admin creating it), the tenant default scopes. `admin` is granted only when named
    /// here, and only by an admin.
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    /// When the key stops working: never later than the creating credential's own expiry or
    /// `auth.max_token_ttl_s` from now. Default: the sooner of those two (no expiry when
    /// neither applies).
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
    /// With the `admin` scope: create the key for this tenant instead of the caller's.
    #[serde(default)]
    pub tenant: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyInfo {
    pub id: Uuid,
    pub tenant: String,
    pub name: String,
    /// The first characters of the secret, to recognise it.
    pub prefix: String,
    pub scopes: Vec<String>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedApiKey {
    #[serde(flatten)]
    pub key: ApiKeyInfo,
    /// The secret, shown only in this response. Send it as `Authorization: Bearer <secret>`.
    pub secret: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyList {
    pub api_keys: Vec<ApiKeyInfo>,
}

impl From<ApiKeyRow> for ApiKeyInfo {
    fn from(r: ApiKeyRow) -> Self {
        Self {
            id: r.id,
            tenant: r.tenant_id,
            name: r.name,
            prefix: r.prefix,
            scopes: r.scopes.split_whitespace().map(str::to_owned).collect(),
            expires_at: r.expires_at,
            revoked_at: r.revoked_at,
            created_at: r.created_at,
            last_used_at: r.last_used_at,
        }
    }
}

fn key_not_found(id: &str) -> ApiError {
    ApiError::new(
        ErrorCode::ApiKeyNotFound,
        format!("API key `{id}` not found"),
    )
}

/// Create an API key for the caller's tenant (or, with `admin`, for any tenant).
#[utoipa::path(post, path = "/v1/api-keys", tag = "api-keys", security(("bearer" = ["keys:write"]), ("bearer" = ["admin"])),
    request_body = CreateApiKey,
    responses(
        (status = 201, description = "The key, with its secret shown this once", body = CreatedApiKey),
        (status = 401, body = ErrorBody),
        (status = 403, description = "Lacks `keys:write`, or asks for scopes the caller lacks", body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub async fn create(
    state: web::Data<AppState>,
    caller: Caller,
    body: web::Json<CreateApiKey>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let tenant = match &body.tenant {
        Some(other) if other != caller.tenant.as_str() => {
            caller.require(Scope::Admin)?;
            TenantId::parse(other)?
        }
        _ => {
            caller.require_any(&[Scope::KeysWrite, Scope::Admin])?;
            caller.tenant.clone()
        }
    };
    if body.name.trim().is_empty() || body.name.len() > 128 {
        return Err(
            ApiError::new(ErrorCode::InvalidRequest, "name must be 1-128 characters")
                .with_field("name"),
        );
    }
    let cross_tenant = tenant != caller.tenant;
    let scopes = match &body.scopes {
        Some(names) => Scopes::parse(names.iter().map(String::as_str))
            .map_err(|m| ApiError::new(ErrorCode::InvalidRequest, m).with_field("scopes"))?,
        // `admin` acts on every tenant: a key gets it only when someone asks for it by name,
        // never by copying an admin's scopes into another tenant's key.
        None if cross_tenant => Scopes::tenant_default(),
        None => caller.scopes.without(Scope::Admin),
    };
    // An admin may give another tenant's key the tenant default scopes it may not hold itself
    // (an admin token is often `admin` alone); beyond those, a key never has more than its
    // creator.
    let grantable = if caller.scopes.contains(Scope::Admin) {
        caller.scopes.union(Scopes::tenant_default())
    } else {
        caller.scopes
    };
    if !scopes.is_subset_of(grantable) {
        return Err(ApiError::new(
            ErrorCode::InsufficientScope,
            "a key cannot have scopes its creator lacks",
        )
        .with_field("scopes"));
    }
    let expires_at = key_expiry(
        body.expires_at,
        caller.expires_at,
        state.config.auth.max_token_ttl_s,
    )?;
    let secret = keys::generate();
    let row = ApiKeyRow {
        id: Uuid::now_v7(),
        tenant_id: tenant.as_str().to_owned(),
        name: body.name.trim().to_owned(),
        prefix: keys::display_prefix(&secret),
        hash: keys::hash(&secret),
        scopes: scopes.to_claim(),
        expires_at,
        revoked_at: None,
        created_at: Utc::now(),
        last_used_at: None,
    };
    state.store.insert_api_key(row.clone()).await?;
    Ok(HttpResponse::Created().json(CreatedApiKey {
        key: ApiKeyInfo::from(row),
        secret,
    }))
}

/// A new key's expiry: the one asked for, checked against the creator's own expiry and the
/// longest lifetime allowed, or else the sooner of those two. A one-hour token must not be
/// able to mint a key that works for ever.
fn key_expiry(
    asked: Option<DateTime<Utc>>,
    creator: Option<DateTime<Utc>>,
    max_ttl_s: u64,
) -> Result<Option<DateTime<Utc>>, ApiError> {
    let now = Utc::now();
    let longest = (max_ttl_s > 0).then(|| now + chrono::Duration::seconds(max_ttl_s as i64));
    let bound = match (creator, longest) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let invalid =
        |m: String| Err(ApiError::new(ErrorCode::InvalidRequest, m).with_field("expires_at"));
    match asked {
        None => Ok(bound),
        Some(at) if at <= now => invalid("expires_at is in the past".into()),
        Some(at) if creator.is_some_and(|c| at > c) => invalid(format!(
            "expires_at is later than the creating credential's own expiry ({})",
            creator.unwrap_or(now).to_rfc3339()
        )),
        Some(at) if longest.is_some_and(|l| at > l) => invalid(format!(
            "expires_at is more than auth.max_token_ttl_s ({max_ttl_s} s) from now"
        )),
        Some(at) => Ok(Some(at)),
    }
}

/// The caller's tenant's keys (secrets are never shown again).
#[utoipa::path(get, path = "/v1/api-keys", tag = "api-keys", security(("bearer" = ["keys:write"]), ("bearer" = ["admin"])),
    responses(
        (status = 200, body = ApiKeyList),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody)))]
pub async fn list(state: web::Data<AppState>, caller: Caller) -> Result<HttpResponse, ApiError> {
    caller.require_any(&[Scope::KeysWrite, Scope::Admin])?;
    let keys = state.store.list_api_keys(&caller.tenant).await?;
    Ok(HttpResponse::Ok().json(ApiKeyList {
        api_keys: keys.into_iter().map(ApiKeyInfo::from).collect(),
    }))
}

/// Revoke a key: it stops working at once on this node, and within
/// `tenancy.cache_ttl_s` on others.
#[utoipa::path(delete, path = "/v1/api-keys/{id}", tag = "api-keys", security(("bearer" = ["keys:write"]), ("bearer" = ["admin"])),
    params(("id" = Uuid, Path)),
    responses(
        (status = 204, description = "Revoked"),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn revoke(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    caller.require_any(&[Scope::KeysWrite, Scope::Admin])?;
    let uuid = Uuid::parse_str(&id).map_err(|_| key_not_found(&id))?;
    let row = state
        .store
        .revoke_api_key(&caller.tenant, uuid)
        .await?
        .ok_or_else(|| key_not_found(&id))?;
    state.tenancy.forget_key(&row);
    Ok(crate::api::no_content())
}

/// The credential a request came with, as the console (or any client) needs it to know what
/// to offer: its tenant, its scopes and when it stops working.
#[derive(Debug, Serialize, ToSchema)]
pub struct CallerInfo {
    pub tenant: String,
    /// `token` (a JWT) or `api_key`.
    pub credential: String,
    /// The API key's id, for `api_key` credentials.
    pub key_id: Option<Uuid>,
    pub scopes: Vec<String>,
    /// When the credential stops working; absent for one that does not expire.
    pub expires_at: Option<DateTime<Utc>>,
}

/// Who is calling: the tenant, scopes and expiry of the credential sent. Needs no scope, so
/// that any valid credential can learn what it may do.
#[utoipa::path(get, path = "/v1/me", tag = "api-keys", security(("bearer" = [])),
    responses(
        (status = 200, body = CallerInfo),
        (status = 401, body = ErrorBody)))]
pub async fn me(caller: Caller) -> HttpResponse {
    let (credential, key_id) = match caller.credential {
        Credential::ApiKey(id) => ("api_key", Some(id)),
        Credential::Jwt | Credential::Trigger => ("token", None),
    };
    HttpResponse::Ok().json(CallerInfo {
        tenant: caller.tenant.as_str().to_owned(),
        credential: credential.to_owned(),
        key_id,
        scopes: caller.scopes.names(),
        expires_at: caller.expires_at,
    })
}
