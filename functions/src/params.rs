//! Generation parameters: the optional values a spec or an invocation sets, and the resolved
//! values an engine samples with.

use serde::{Deserialize, Serialize};

use crate::{InputError, SpecError};

/// Used when neither the function nor the invocation sets `max_tokens`.
pub const DEFAULT_MAX_TOKENS: u32 = 256;
const MAX_STOP_SEQUENCES: usize = 8;
/// Longest stop sequence, in bytes. Stop strings are matched on the engine thread that every
/// tenant of a replica shares; a cap keeps that work per token small whatever a caller sends.
pub const MAX_STOP_BYTES: usize = 256;

/// Parameters as written in a spec or an invocation: every field may be absent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GenerationParams {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_p: Option<f32>,
    /// Penalty for repeating recent tokens; 1.0 disables it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeat_penalty: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
    /// Keep generating past end-of-generation tokens until `max_tokens` (benchmarks, tests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignore_eos: Option<bool>,
}

/// Fully resolved parameters. `Hash`-free on purpose: floats are keyed through
/// [`SamplingParams::cache_fingerprint`], which spells them out exactly.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    pub max_tokens: u32,
    pub temperature: f32,
    pub top_p: f32,
    pub top_k: u32,
    pub min_p: f32,
    pub repeat_penalty: f32,
    pub seed: Option<u32>,
    pub stop: Vec<String>,
    pub ignore_eos: bool,
}

impl GenerationParams {
    /// Checks ranges. `field_prefix` is `params` for a spec and for an invocation alike.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let bad = |field: &str, msg: &str| Err((field.to_owned(), msg.to_owned()));
        if let Some(m) = self.max_tokens {
            if m == 0 {
                return bad("max_tokens", "must be at least 1");
            }
        }
        if let Some(t) = self.temperature {
            if !(0.0..=2.0).contains(&t) || t.is_nan() {
                return bad("temperature", "must be between 0 and 2");
            }
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return bad("top_p", "must be in (0, 1]");
            }
        }
        if let Some(p) = self.min_p {
            if !(0.0..1.0).contains(&p) {
                return bad("min_p", "must be in [0, 1)");
            }
        }
        if let Some(r) = self.repeat_penalty {
            if !(r > 0.0 && r <= 2.0) {
                return bad("repeat_penalty", "must be in (0, 2]");
            }
        }
        if self.stop.len() > MAX_STOP_SEQUENCES {
            return bad("stop", "at most 8 stop sequences");
        }
        if self.stop.iter().any(String::is_empty) {
            return bad("stop", "stop sequences must not be empty");
        }
        if self.stop.iter().any(|s| s.len() > MAX_STOP_BYTES) {
            return bad("stop", "each stop sequence is at most 256 bytes");
        }
        Ok(())
    }

    pub fn validate_spec(&self) -> Result<(), SpecError> {
        self.validate()
            .map_err(|(field, msg)| SpecError::invalid(format!("params.{field}"), msg))
    }

    pub fn validate_override(&self) -> Result<(), InputError> {
        self.validate()
            .map_err(|(field, message)| InputError::Params { field, message })
    }

    /// Invocation values win over the function's; unset values fall back to defaults.
    pub fn resolve(&self, overrides: &GenerationParams) -> SamplingParams {
        SamplingParams {
            max_tokens: overrides
                .max_tokens
                .or(self.max_tokens)
                .unwrap_or(DEFAULT_MAX_TOKENS),
            temperature: overrides.temperature.or(self.temperature).unwrap_or(0.8),
            top_p: overrides.top_p.or(self.top_p).unwrap_or(0.95),
            top_k: overrides.top_k.or(self.top_k).unwrap_or(40),
            min_p: overrides.min_p.or(self.min_p).unwrap_or(0.05),
            repeat_penalty: overrides
                .repeat_penalty
                .or(self.repeat_penalty)
                .unwrap_or(1.0),
            seed: overrides.seed.or(self.seed),
            stop: if overrides.stop.is_empty() {
                self.stop.clone()
            } else {
                overrides.stop.clone()
            },
            ignore_eos: overrides.ignore_eos.or(self.ignore_eos).unwrap_or(false),
        }
    }
}

impl SamplingParams {
    /// A generation is reproducible when sampling is greedy or its seed is fixed; only those
    /// are cached unless the function opts in.
    pub fn is_deterministic(&self) -> bool {
        self.temperature == 0.0 || self.seed.is_some()
    }

    /// An exact textual form of every parameter, for cache keys.
    pub fn cache_fingerprint(&self) -> String {
        format!(
            "max_tokens={};temperature={:08x};top_p={:08x};top_k={};min_p={:08x};repeat={:08x};seed={:?};stop={:?};ignore_eos={}",
            self.max_tokens,
            self.temperature.to_bits(),
            self.top_p.to_bits(),
            self.top_k,
            self.min_p.to_bits(),
            self.repeat_penalty.to_bits(),
            self.seed,
            self.stop,
            self.ignore_eos
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_win_and_defaults_fill_the_rest() {
        let spec = GenerationParams {
            max_tokens: Some(32),
            temperature: Some(0.2),
            stop: vec!["\n".into()],
            ..Default::default()
        };
        let call = GenerationParams {
            temperature: Some(0.0),
            ..Default::default()
        };
        let p = spec.resolve(&call);
        assert_eq!(p.max_tokens, 32);
        assert_eq!(p.temperature, 0.0);
        assert_eq!(p.top_k, 40);
        assert_eq!(p.stop, vec!["\n".to_owned()]);
        assert!(p.is_deterministic());
        assert!(!GenerationParams::default()
            .resolve(&GenerationParams::default())
            .is_deterministic());
    }

    #[test]
    fn out_of_range_values_are_named() {
        let p = GenerationParams {
            temperature: Some(3.0),
            ..Default::default()
        };
        assert_eq!(p.validate_spec().unwrap_err().field, "params.temperature");
        let p = GenerationParams {
            max_tokens: Some(0),
            ..Default::default()
        };
        assert!(matches!(
            p.validate_override(),
            Err(InputError::Params { field, .. }) if field == "max_tokens"
        ));
    }

    #[test]
    fn fingerprint_distinguishes_close_floats() {
        let a = GenerationParams {
            temperature: Some(0.1),
            ..Default::default()
        }
        .resolve(&GenerationParams::default());
        let b = GenerationParams {
            temperature: Some(0.1000001),
            ..Default::default()
        }
        .resolve(&GenerationParams::default());
        assert_ne!(a.cache_fingerprint(), b.cache_fingerprint());
    }
}
