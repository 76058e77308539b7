//! What a credential may do. Every route names the scope it needs; a credential without it
//! gets 403 `insufficient_scope`.

use std::fmt;

use crate::error::{ApiError, ErrorCode};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    FunctionsWrite,
    FunctionsInvoke,
    InvocationsRead,
    WebhooksWrite,
    /// Creating and revoking the tenant's own API keys, never with more scopes than the
    /// creator holds.
    KeysWrite,
    /// Registering and deleting the tenant's own models, within its limits
    /// (`max_private_models`).
    ModelsWrite,
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 7] = [
        Scope::FunctionsWrite,
        Scope::FunctionsInvoke,
        Scope::InvocationsRead,
        Scope::WebhooksWrite,
        Scope::KeysWrite,
        Scope::ModelsWrite,
        Scope::Admin,
    ];

    /// What a tenant's own credentials get when they name no scope: everything but `admin`,
    /// which is the operator's.
    pub const TENANT_DEFAULT: [Scope; 6] = [
        Scope::FunctionsWrite,
        Scope::FunctionsInvoke,
        Scope::InvocationsRead,
        Scope::WebhooksWrite,
        Scope::KeysWrite,
        Scope::ModelsWrite,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::FunctionsWrite => "functions:write",
            Scope::FunctionsInvoke => "functions:invoke",
            Scope::InvocationsRead => "invocations:read",
            Scope::WebhooksWrite => "webhooks:write",
            Scope::KeysWrite => "keys:write",
            Scope::ModelsWrite => "models:write",
            Scope::Admin => "admin",
        }
    }

    pub fn parse(raw: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|s| s.as_str() == raw)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of scopes, small enough to be a bit set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Scopes(u8);

impl Scopes {
    pub fn tenant_default() -> Self {
        Self::from_iter(Scope::TENANT_DEFAULT)
    }

    pub fn contains(self, scope: Scope) -> bool {
        self.0 & (1 << scope as u8) != 0
    }

    pub fn without(self, scope: Scope) -> Self {
        Self(self.0 & !(1 << scope as u8))
    }

    pub fn union(self, other: Scopes) -> Self {
        Self(self.0 | other.0)
    }

    pub fn is_subset_of(self, other: Scopes) -> bool {
        self.0 & !other.0 == 0
    }

    /// Parses scope names, refusing unknown ones so that a typo does not silently grant less.
    pub fn parse<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        let mut scopes = Scopes::default();
        for name in names {
            let scope = Scope::parse(name).ok_or_else(|| format!("unknown scope `{name}`"))?;
            scopes.0 |= 1 << scope as u8;
        }
        Ok(scopes)
    }

    /// Like `parse`, but ignores scopes this service does not know: tokens from an identity
    /// provider may carry scopes meant for other services.
    pub fn parse_lenient<'a>(names: impl IntoIterator<Item = &'a str>) -> Self {
        Self::from_iter(names.into_iter().filter_map(Scope::parse))
    }

    pub fn iter(self) -> impl Iterator<Item = Scope> {
        Scope::ALL.into_iter().filter(move |s| self.contains(*s))
    }

    pub fn names(self) -> Vec<String> {
        self.iter().map(|s| s.as_str().to_owned()).collect()
    }

    /// Space-separated, as stored and as in OAuth's `scope` claim.
    pub fn to_claim(self) -> String {
        self.names().join(" ")
    }

    pub fn require(self, scope: Scope) -> Result<(), ApiError> {
        if self.contains(scope) {
            Ok(())
        } else {
            Err(ApiError::new(
                ErrorCode::InsufficientScope,
                format!("this credential lacks the `{scope}` scope"),
            ))
        }
    }
}

impl FromIterator<Scope> for Scopes {
    fn from_iter<I: IntoIterator<Item = Scope>>(iter: I) -> Self {
        let mut scopes = Scopes::default();
        for scope in iter {
            scopes.0 |= 1 << scope as u8;
        }
        scopes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_round_trips_and_refuses_unknown_names() {
        let s = Scopes::parse(["functions:invoke", "admin"]).unwrap();
        assert!(s.contains(Scope::Admin) && s.contains(Scope::FunctionsInvoke));
        assert!(!s.contains(Scope::FunctionsWrite));
        assert_eq!(s.to_claim(), "functions:invoke admin");
        assert!(Scopes::parse(["functions:everything"]).is_err());
        assert_eq!(
            Scopes::parse_lenient(["openid", "invocations:read"]),
            Scopes::parse(["invocations:read"]).unwrap()
        );
    }

    #[test]
    fn the_token_scope_names_are_these() {
        let names: Vec<&str> = Scope::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(names, crate::auth::ALL_SCOPES);
        let defaults: Vec<&str> = Scope::TENANT_DEFAULT.iter().map(|s| s.as_str()).collect();
        assert_eq!(defaults, crate::auth::DEFAULT_TENANT_SCOPES);
    }

    #[test]
    fn the_tenant_default_excludes_admin_and_subsets_hold() {
        let d = Scopes::tenant_default();
        assert!(!d.contains(Scope::Admin));
        assert!(Scopes::parse(["webhooks:write"]).unwrap().is_subset_of(d));
        assert!(
            d.contains(Scope::ModelsWrite),
            "a tenant registers its own models"
        );
        assert!(!Scopes::parse(["admin"]).unwrap().is_subset_of(d));
        assert_eq!(
            d.require(Scope::Admin).unwrap_err().code,
            ErrorCode::InsufficientScope
        );
    }
}
