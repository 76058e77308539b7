//! Identifiers that travel with every unit of work.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::SpecError;

/// The tenant that owns a function, an invocation or a cache entry. Every query and cache key
/// is built with one, so that no tenant can see another's data.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TenantId(String);

impl TenantId {
    /// Tenant ids are short, printable and safe to put in keys and logs.
    pub fn parse(raw: &str) -> Result<Self, SpecError> {
        if is_slug(raw, 64) {
            Ok(Self(raw.to_owned()))
        } else {
            Err(SpecError::invalid(
                "tenant",
                "must be 1-64 characters of a-z, 0-9, '-' or '_', starting with a letter or digit",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A function's name, unique within its tenant.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FunctionName(String);

impl FunctionName {
    pub fn parse(raw: &str) -> Result<Self, SpecError> {
        if is_slug(raw, 64) {
            Ok(Self(raw.to_owned()))
        } else {
            Err(SpecError::invalid(
                "name",
                "must be 1-64 characters of a-z, 0-9, '-' or '_', starting with a letter or digit",
            ))
        }
    }

    /// The built-in pass-through function that serves a model directly (the OpenAI-compatible
    /// API with a model id). The colon keeps it apart from every name `parse` accepts.
    pub fn model_passthrough(model: &ModelId) -> Self {
        Self(format!("model:{}", model.as_str()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The id under which a model is registered in the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ModelId(String);

impl ModelId {
    pub fn new(raw: impl Into<String>) -> Self {
        Self(raw.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A model reference names a base model, or a base and one of its LoRA adapters as
    /// `base:adapter` (as the OpenAI routes and routing rules accept it): the base, and the
    /// adapter if any. Model ids never hold `:`.
    pub fn split_adapter(&self) -> (ModelId, Option<&str>) {
        match self.0.split_once(':') {
            Some((base, adapter)) => (ModelId::new(base), Some(adapter)),
            None => (self.clone(), None),
        }
    }
}

macro_rules! display_as_str {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    )*};
}
display_as_str!(TenantId, FunctionName, ModelId);

fn is_slug(raw: &str, max_len: usize) -> bool {
    let mut chars = raw.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    raw.len() <= max_len
        && (first.is_ascii_lowercase() || first.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_accept_simple_names_and_reject_the_rest() {
        assert!(FunctionName::parse("product-description_2").is_ok());
        assert!(FunctionName::parse("").is_err());
        assert!(FunctionName::parse("-leading").is_err());
        assert!(FunctionName::parse("Upper").is_err());
        assert!(FunctionName::parse("has space").is_err());
        assert!(FunctionName::parse(&"a".repeat(65)).is_err());
        assert!(TenantId::parse("acme").is_ok());
    }
}
