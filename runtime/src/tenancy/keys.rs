//! API key secrets: `grt_` followed by 40 random base62 characters (about 238 bits). The prefix
//! makes a leaked key recognisable to secret scanners; the database holds only its SHA-256,
//! which is enough because the secret is random (no salt or slow hash is needed against
//! guessing, unlike passwords).

use rand::distr::{Alphanumeric, Distribution};
use sha2::{Digest, Sha256};

pub const KEY_PREFIX: &str = "grt_";
const SECRET_CHARS: usize = 40;
/// Characters of the secret shown in listings.
const DISPLAY_CHARS: usize = 12;

pub fn generate() -> String {
    let random: String = Alphanumeric
        .sample_iter(rand::rng())
        .take(SECRET_CHARS)
        .map(char::from)
        .collect();
    format!("{KEY_PREFIX}{random}")
}

pub fn looks_like_key(token: &str) -> bool {
    token.starts_with(KEY_PREFIX)
}

pub fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

pub fn display_prefix(secret: &str) -> String {
    secret.chars().take(DISPLAY_CHARS).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_prefixed_random_and_hash_stably() {
        let a = generate();
        let b = generate();
        assert!(looks_like_key(&a));
        assert_eq!(a.len(), KEY_PREFIX.len() + SECRET_CHARS);
        assert_ne!(a, b);
        assert_eq!(hash(&a), hash(&a));
        assert_ne!(hash(&a), hash(&b));
        assert_eq!(display_prefix(&a).len(), 12);
        assert!(!looks_like_key("eyJhbGciOiJIUzI1NiJ9.x.y"));
    }
}
