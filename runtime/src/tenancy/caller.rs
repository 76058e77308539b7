//! Who is calling: the tenant, its scopes and limits, and the credential it came with. The
//! HTTP layer builds one per request (`api::caller`); each route then asks for its scope with
//! [`Caller::require`].

use std::sync::Arc;

use genrt_functions::TenantId;
use uuid::Uuid;

use super::{Scope, Scopes, TenantLimits};
use crate::error::{ApiError, ErrorCode};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    Jwt,
    ApiKey(Uuid),
    /// A signed incoming webhook acting for the trigger's tenant.
    Trigger,
}

#[derive(Debug, Clone)]
pub struct Caller {
    pub tenant: TenantId,
    pub scopes: Scopes,
    pub credential: Credential,
    /// When the credential stops working (`exp` of a JWT, `expires_at` of a key); `None` for
    /// one that does not expire. Nothing it creates may outlive it.
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
    pub limits: Arc<TenantLimits>,
}

impl Caller {
    /// Refuses the first of `models` this tenant may not use (403 `model_not_allowed`).
    pub fn require_models<'a>(
        &self,
        models: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), ApiError> {
        match models.into_iter().find(|m| !self.limits.allows_model(m)) {
            None => Ok(()),
            Some(model) => Err(ApiError::new(
                ErrorCode::ModelNotAllowed,
                format!("this tenant may not use model `{model}`"),
            )),
        }
    }

    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        self.scopes.require(scope)
    }

    /// For reads that either of two roles may make (a deployer or an invoker reading the
    /// function list).
    pub fn require_any(&self, scopes: &[Scope]) -> Result<(), ApiError> {
        match scopes.iter().find(|s| self.scopes.contains(**s)) {
            Some(_) => Ok(()),
            None => self.scopes.require(scopes[0]),
        }
    }
}
