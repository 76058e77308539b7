//! The response cache as the function actors see it. The runtime provides the store (moka);
//! this crate decides what is cacheable and builds the keys.

use std::time::Duration;

use genrt_functions::{ModelId, RenderedPrompt, SamplingParams, TenantId};
use sha2::{Digest, Sha256};

use crate::{FinishReason, Usage};

/// Every key carries its tenant, so that no tenant can ever read another's entry even if two
/// digests collided.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    pub tenant: TenantId,
    pub digest: String,
}

impl CacheKey {
    pub fn new(
        tenant: &TenantId,
        function: &str,
        version: u32,
        model: &ModelId,
        prompt: &RenderedPrompt,
        params: &SamplingParams,
    ) -> Self {
        let mut hasher = Sha256::new();
        let (version, fingerprint) = (version.to_string(), params.cache_fingerprint());
        let history = prompt
            .history
            .iter()
            .flat_map(|turn| [turn.role.as_str(), turn.content.as_str()]);
        // Lengths before each part keep ("ab","c") and ("a","bc") apart.
        for part in [
            function,
            &version,
            model.as_str(),
            prompt.system.as_deref().unwrap_or("\u{0}none"),
            &prompt.user,
            if prompt.raw { "raw" } else { "chat" },
            &fingerprint,
        ]
        .into_iter()
        .chain(history)
        {
            hasher.update((part.len() as u64).to_le_bytes());
            hasher.update(part.as_bytes());
        }
        Self {
            tenant: tenant.clone(),
            digest: hex::encode(hasher.finalize()),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct CachedCompletion {
    pub text: String,
    pub usage: Usage,
    pub finish_reason: FinishReason,
}

pub trait ResponseCache: Send + Sync + 'static {
    fn get(&self, key: &CacheKey) -> Option<CachedCompletion>;
    /// `ttl` of `None` uses the store's default.
    fn insert(&self, key: CacheKey, value: CachedCompletion, ttl: Option<Duration>);
}

#[cfg(test)]
mod tests {
    use super::*;
    use genrt_functions::GenerationParams;

    #[test]
    fn keys_separate_tenants_and_parts() {
        let params = GenerationParams::default().resolve(&GenerationParams::default());
        let prompt = RenderedPrompt {
            user: "hi".into(),
            ..RenderedPrompt::default()
        };
        let m = ModelId::new("m");
        let a = TenantId::parse("a").unwrap();
        let b = TenantId::parse("b").unwrap();
        let k1 = CacheKey::new(&a, "f", 1, &m, &prompt, &params);
        let k2 = CacheKey::new(&b, "f", 1, &m, &prompt, &params);
        let k3 = CacheKey::new(&a, "f", 2, &m, &prompt, &params);
        assert_eq!(k1.digest, k2.digest);
        assert_ne!(k1, k2);
        assert_ne!(k1, k3);
        assert_eq!(k1, CacheKey::new(&a, "f", 1, &m, &prompt, &params));
    }
}
