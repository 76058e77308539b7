//! Which version of a function an invocation runs: a reference names the function and, after
//! an `@`, a version (`summarize@3`) or an alias (`summarize@prod`); an alias points to one
//! version, or splits traffic between a few by weight, and may mirror a share of it to a
//! shadow version.
//!
//! The choice within a split is sticky per caller key and moves as few keys as possible when
//! the weights change: weighted rendezvous hashing (each version scores a key with
//! `-weight / ln(u)`, `u` a hash of key and version in (0, 1); the highest score wins).
//! Raising one version's weight only moves keys onto it; unlike ranges over a hash ring, no
//! key ever moves between two versions whose weights did not change relative to each other.
//! The hash is SHA-256, stable across nodes, restarts and releases of Rust (the standard
//! library's hasher is not).

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{FunctionName, SpecError};

/// Most versions one alias may split traffic between.
pub const MAX_SPLIT_TARGETS: usize = 4;

/// The alias that, when it exists, replaces "the latest version" for references without `@`.
pub const DEFAULT_ALIAS: &str = "default";

/// A named pointer of a function: `prod`, `staging`, `default`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AliasName(String);

impl AliasName {
    /// 1–32 of `a-z`, `0-9` and `-`, starting with a letter, so that an alias is never read
    /// as a version number.
    pub fn parse(raw: &str) -> Result<Self, SpecError> {
        let mut chars = raw.chars();
        let ok = matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
            && raw.len() <= 32
            && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(SpecError::invalid(
                "alias",
                "must be 1-32 characters of a-z, 0-9 or '-', starting with a letter",
            ))
        }
    }

    pub fn default_alias() -> Self {
        Self(DEFAULT_ALIAS.to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AliasName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What follows the `@` of a reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionSelector {
    /// No `@`: the `default` alias if the function has one, else the latest version.
    Default,
    Version(u32),
    Alias(AliasName),
}

/// `name`, `name@3` or `name@alias`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionRef {
    pub name: FunctionName,
    pub selector: VersionSelector,
}

impl FunctionRef {
    pub fn parse(raw: &str) -> Result<Self, SpecError> {
        let Some((name, selector)) = raw.split_once('@') else {
            return Ok(Self {
                name: FunctionName::parse(raw)?,
                selector: VersionSelector::Default,
            });
        };
        let name = FunctionName::parse(name)?;
        let selector = if selector.bytes().all(|b| b.is_ascii_digit()) && !selector.is_empty() {
            match selector.parse::<u32>() {
                Ok(n) if n >= 1 => VersionSelector::Version(n),
                _ => {
                    return Err(SpecError::invalid(
                        "version",
                        "a version is a number from 1",
                    ))
                }
            }
        } else {
            VersionSelector::Alias(AliasName::parse(selector)?)
        };
        Ok(Self { name, selector })
    }

    /// A reference with an explicit `version` field besides it (`{"version": 3}`): both may
    /// not disagree.
    pub fn with_version(mut self, version: Option<u32>) -> Result<Self, SpecError> {
        match (version, &self.selector) {
            (None, _) => Ok(self),
            (Some(0), _) => Err(SpecError::invalid(
                "version",
                "a version is a number from 1",
            )),
            (Some(v), VersionSelector::Default) => {
                self.selector = VersionSelector::Version(v);
                Ok(self)
            }
            (Some(v), VersionSelector::Version(n)) if v == *n => Ok(self),
            (Some(_), _) => Err(SpecError::invalid(
                "version",
                "give the version either after `@` in the name or in `version`, not both",
            )),
        }
    }
}

/// One version of a split and its share of the traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Weighted {
    pub version: u32,
    pub weight: u32,
}

/// A share of an alias's traffic mirrored to a candidate version in the background.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shadow {
    pub version: u32,
    /// 1–100: the percentage of the alias's invocations mirrored.
    pub percent: u32,
}

/// Where an alias points.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AliasTarget {
    /// One version (weight 100), or up to [`MAX_SPLIT_TARGETS`] whose weights sum to 100.
    pub versions: Vec<Weighted>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<Shadow>,
}

/// The version a reference resolved to within an alias.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    pub version: u32,
    /// The alias splits its traffic: another caller might have got another version.
    pub split: bool,
}

impl AliasTarget {
    pub fn single(version: u32) -> Self {
        Self {
            versions: vec![Weighted {
                version,
                weight: 100,
            }],
            shadow: None,
        }
    }

    /// Weights are whole percentages summing to 100, versions distinct, the shadow none of
    /// them. Whether the versions exist is the store's concern.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.versions.is_empty() || self.versions.len() > MAX_SPLIT_TARGETS {
            return Err(SpecError::invalid(
                "versions",
                format!("give 1 to {MAX_SPLIT_TARGETS} versions"),
            ));
        }
        for (i, w) in self.versions.iter().enumerate() {
            if w.version == 0 {
                return Err(SpecError::invalid(
                    format!("versions[{i}].version"),
                    "a version is a number from 1",
                ));
            }
            if w.weight == 0 || w.weight > 100 {
                return Err(SpecError::invalid(
                    format!("versions[{i}].weight"),
                    "a weight is a whole percentage from 1 to 100",
                ));
            }
            if self.versions[..i].iter().any(|o| o.version == w.version) {
                return Err(SpecError::invalid(
                    format!("versions[{i}].version"),
                    format!("version {} is listed twice", w.version),
                ));
            }
        }
        let sum: u32 = self.versions.iter().map(|w| w.weight).sum();
        if sum != 100 {
            return Err(SpecError::invalid(
                "versions",
                format!("the weights sum to {sum}; they must sum to 100"),
            ));
        }
        if let Some(shadow) = &self.shadow {
            if shadow.percent == 0 || shadow.percent > 100 {
                return Err(SpecError::invalid(
                    "shadow.percent",
                    "a whole percentage from 1 to 100",
                ));
            }
            if self.versions.iter().any(|w| w.version == shadow.version) {
                return Err(SpecError::invalid(
                    "shadow.version",
                    "the shadow must be a version the alias does not already serve",
                ));
            }
        }
        Ok(())
    }

    /// Every version the alias names, the shadow included.
    pub fn referenced(&self) -> impl Iterator<Item = u32> + '_ {
        self.versions
            .iter()
            .map(|w| w.version)
            .chain(self.shadow.map(|s| s.version))
    }

    /// The version for a caller: by `key` (sticky) when given, else by `random` (any u64,
    /// uniformly drawn by the caller; this crate does no IO and draws nothing).
    pub fn choose(&self, key: Option<&str>, random: u64) -> Choice {
        let split = self.versions.len() > 1;
        let version = match (split, key) {
            (false, _) => self.versions[0].version,
            (true, Some(key)) => rendezvous(&self.versions, |v| {
                unit(&hash(&[key.as_bytes(), &v.to_be_bytes()]))
            }),
            (true, None) => {
                // Any key-independent draw with the right shares: one uniform number against
                // the cumulative weights.
                let point = (random % 100) as u32;
                let mut acc = 0;
                self.versions
                    .iter()
                    .find(|w| {
                        acc += w.weight;
                        point < acc
                    })
                    .map_or(self.versions[0].version, |w| w.version)
            }
        };
        Choice { version, split }
    }

    /// Whether this invocation is also mirrored to the shadow: sticky per key like the split
    /// (a user's requests are all mirrored or none), random otherwise.
    pub fn shadowed(&self, key: Option<&str>, random: u64) -> Option<u32> {
        let shadow = self.shadow?;
        let point = match key {
            Some(key) => (hash(&[b"shadow", key.as_bytes()]) % 100) as u32,
            None => (random % 100) as u32,
        };
        (point < shadow.percent).then_some(shadow.version)
    }
}

/// A condition a promotion must meet on the function's evaluation set, scored by ROUGE-L
/// (mean over the cases; a failed case scores 0).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Gate {
    /// The candidate must score at least this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_rouge_l: Option<f64>,
    /// The candidate must not score worse than the alias's current version by more than
    /// `max_drop`.
    #[serde(default)]
    pub not_worse_than_current: bool,
    #[serde(default)]
    pub max_drop: f64,
}

/// Why a gate refused a candidate, in words that name both scores.
#[derive(Debug, Clone, PartialEq)]
pub struct GateRefusal(pub String);

impl Gate {
    pub fn validate(&self) -> Result<(), SpecError> {
        if let Some(min) = self.min_rouge_l {
            if !(0.0..=1.0).contains(&min) {
                return Err(SpecError::invalid(
                    "gate.min_rouge_l",
                    "a score from 0 to 1",
                ));
            }
        }
        if !(0.0..=1.0).contains(&self.max_drop) {
            return Err(SpecError::invalid(
                "gate.max_drop",
                "a score difference from 0 to 1",
            ));
        }
        if self.min_rouge_l.is_none() && !self.not_worse_than_current {
            return Err(SpecError::invalid(
                "gate",
                "give `min_rouge_l`, `not_worse_than: \"current\"`, or both",
            ));
        }
        Ok(())
    }

    /// The decision on a candidate's score, given the current version's (none when the alias
    /// is new: nothing to be worse than).
    pub fn decide(
        &self,
        candidate: (u32, f64),
        current: Option<(u32, f64)>,
    ) -> Result<(), GateRefusal> {
        let (version, score) = candidate;
        if let Some(min) = self.min_rouge_l {
            if score < min {
                let against = current
                    .map(|(v, s)| format!(" (version {v}, the current target, scores {s:.4})"))
                    .unwrap_or_default();
                return Err(GateRefusal(format!(
                    "version {version} scores ROUGE-L {score:.4}, under the gate's minimum {min:.4}{against}"
                )));
            }
        }
        if let (true, Some((current_version, current_score))) =
            (self.not_worse_than_current, current)
        {
            // A small epsilon: equal outputs scored twice must pass a zero-drop gate.
            if score + self.max_drop + 1e-9 < current_score {
                return Err(GateRefusal(format!(
                    "version {version} scores ROUGE-L {score:.4} against {current_score:.4} for version {current_version} (the current target); the gate allows a drop of at most {:.4}",
                    self.max_drop
                )));
            }
        }
        Ok(())
    }
}

/// The highest-scoring version for a key: score `-w / ln(u)` (Schindelhauer and Schomaker's
/// weighted distributed hash tables; the same rule as weighted rendezvous in e.g. Apache
/// Ignite). `u` is in (0, 1), so `ln(u) < 0` and scores are positive.
fn rendezvous(versions: &[Weighted], u: impl Fn(u32) -> f64) -> u32 {
    let mut best = (f64::MIN, versions[0].version);
    for w in versions {
        let score = -(w.weight as f64) / u(w.version).ln();
        if score > best.0 {
            best = (score, w.version);
        }
    }
    best.1
}

fn hash(parts: &[&[u8]]) -> u64 {
    let mut h = Sha256::new();
    for part in parts {
        // Length-prefixed, so that ("ab", "c") and ("a", "bc") differ.
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    let digest = h.finalize();
    u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

/// A hash as a number in the open interval (0, 1).
fn unit(h: &u64) -> f64 {
    ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(weights: &[(u32, u32)]) -> AliasTarget {
        AliasTarget {
            versions: weights
                .iter()
                .map(|&(version, weight)| Weighted { version, weight })
                .collect(),
            shadow: None,
        }
    }

    #[test]
    fn references_name_a_version_or_an_alias() {
        let r = FunctionRef::parse("summarize").unwrap();
        assert_eq!(r.selector, VersionSelector::Default);
        let r = FunctionRef::parse("summarize@3").unwrap();
        assert_eq!(r.name.as_str(), "summarize");
        assert_eq!(r.selector, VersionSelector::Version(3));
        let r = FunctionRef::parse("summarize@prod").unwrap();
        assert_eq!(
            r.selector,
            VersionSelector::Alias(AliasName::parse("prod").unwrap())
        );
        for bad in [
            "summarize@",
            "summarize@0",
            "summarize@Prod",
            "@3",
            "a@b@c",
            "s@-x",
        ] {
            assert!(FunctionRef::parse(bad).is_err(), "{bad}");
        }
        assert!(FunctionRef::parse("s@99999999999").is_err());
    }

    #[test]
    fn a_version_field_pins_unless_the_name_says_otherwise() {
        let r = FunctionRef::parse("s")
            .unwrap()
            .with_version(Some(2))
            .unwrap();
        assert_eq!(r.selector, VersionSelector::Version(2));
        let r = FunctionRef::parse("s@2")
            .unwrap()
            .with_version(Some(2))
            .unwrap();
        assert_eq!(r.selector, VersionSelector::Version(2));
        assert!(FunctionRef::parse("s@2")
            .unwrap()
            .with_version(Some(3))
            .is_err());
        assert!(FunctionRef::parse("s@prod")
            .unwrap()
            .with_version(Some(3))
            .is_err());
        assert!(FunctionRef::parse("s")
            .unwrap()
            .with_version(Some(0))
            .is_err());
    }

    #[test]
    fn targets_are_validated() {
        assert!(split(&[(1, 100)]).validate().is_ok());
        assert!(split(&[(1, 90), (2, 10)]).validate().is_ok());
        assert_eq!(split(&[]).validate().unwrap_err().field, "versions");
        assert_eq!(
            split(&[(1, 90), (2, 20)]).validate().unwrap_err().field,
            "versions"
        );
        assert_eq!(
            split(&[(1, 50), (1, 50)]).validate().unwrap_err().field,
            "versions[1].version"
        );
        assert_eq!(
            split(&[(1, 100), (2, 0)]).validate().unwrap_err().field,
            "versions[1].weight"
        );
        assert!(split(&[(1, 20), (2, 20), (3, 20), (4, 20), (5, 20)])
            .validate()
            .is_err());
        let mut t = split(&[(1, 100)]);
        t.shadow = Some(Shadow {
            version: 1,
            percent: 50,
        });
        assert_eq!(t.validate().unwrap_err().field, "shadow.version");
        t.shadow = Some(Shadow {
            version: 2,
            percent: 0,
        });
        assert_eq!(t.validate().unwrap_err().field, "shadow.percent");
    }

    #[test]
    fn a_split_by_key_is_sticky_and_near_its_weights() {
        let t = split(&[(4, 90), (5, 10)]);
        let keys: Vec<String> = (0..20_000).map(|i| format!("user-{i}")).collect();
        let on_5 = keys
            .iter()
            .filter(|k| t.choose(Some(k), 0).version == 5)
            .count();
        let share = on_5 as f64 / keys.len() as f64;
        assert!((share - 0.10).abs() < 0.01, "{share}");
        for k in keys.iter().take(100) {
            // The random draw must not matter when there is a key.
            assert_eq!(t.choose(Some(k), 1).version, t.choose(Some(k), 99).version);
        }
    }

    #[test]
    fn changing_weights_moves_only_the_keys_that_must_move() {
        let before = split(&[(4, 90), (5, 10)]);
        let after = split(&[(4, 20), (5, 80)]);
        let keys: Vec<String> = (0..20_000).map(|i| format!("k{i}")).collect();
        let mut moved = 0;
        for k in &keys {
            let (a, b) = (before.choose(Some(k), 0), after.choose(Some(k), 0));
            if a.version != b.version {
                // Version 5 only gained weight: nothing leaves it.
                assert_eq!((a.version, b.version), (4, 5), "{k}");
                moved += 1;
            }
        }
        let share = moved as f64 / keys.len() as f64;
        // The least that must move is 80% - 10% = 70% of the keys.
        assert!((share - 0.70).abs() < 0.015, "{share}");
        // Three ways: raising one version's weight takes keys only onto it.
        let three = split(&[(1, 50), (2, 30), (3, 20)]);
        let raised = split(&[(1, 40), (2, 24), (3, 36)]);
        for k in &keys {
            let (a, b) = (three.choose(Some(k), 0), raised.choose(Some(k), 0));
            if a.version != b.version {
                assert_eq!(
                    b.version, 3,
                    "{k} moved from {} to {}",
                    a.version, b.version
                );
            }
        }
    }

    #[test]
    fn without_a_key_the_draw_follows_the_weights() {
        let t = split(&[(1, 70), (2, 30)]);
        let on_2 = (0..100u64)
            .filter(|r| t.choose(None, *r).version == 2)
            .count();
        assert_eq!(on_2, 30);
        let single = split(&[(7, 100)]);
        assert_eq!(
            single.choose(Some("x"), 3),
            Choice {
                version: 7,
                split: false
            }
        );
    }

    #[test]
    fn a_shadow_mirrors_its_share() {
        let mut t = split(&[(1, 100)]);
        assert_eq!(t.shadowed(Some("a"), 0), None);
        t.shadow = Some(Shadow {
            version: 2,
            percent: 50,
        });
        let mirrored = (0..10_000)
            .filter(|i| t.shadowed(Some(&format!("u{i}")), 0).is_some())
            .count();
        assert!((4_700..5_300).contains(&mirrored), "{mirrored}");
        assert_eq!(
            (0..100u64)
                .filter(|r| t.shadowed(None, *r).is_some())
                .count(),
            50
        );
    }
    #[test]
    fn a_gate_refuses_a_worse_candidate_and_names_both_scores() {
        let gate = Gate {
            min_rouge_l: None,
            not_worse_than_current: true,
            max_drop: 0.02,
        };
        assert!(gate.validate().is_ok());
        assert!(gate.decide((5, 0.47), Some((4, 0.48))).is_ok());
        let refused = gate.decide((5, 0.30), Some((4, 0.48))).unwrap_err().0;
        assert!(
            refused.contains("0.3000") && refused.contains("0.4800"),
            "{refused}"
        );
        // A new alias has nothing to be worse than.
        assert!(gate.decide((5, 0.1), None).is_ok());
        let min = Gate {
            min_rouge_l: Some(0.4),
            not_worse_than_current: false,
            max_drop: 0.0,
        };
        assert!(min.decide((5, 0.39), None).is_err());
        assert!(min.decide((5, 0.4), None).is_ok());
        let zero = Gate {
            max_drop: 0.0,
            ..gate
        };
        assert!(zero.decide((5, 0.5), Some((4, 0.5))).is_ok());
        assert!(Gate {
            min_rouge_l: None,
            not_worse_than_current: false,
            max_drop: 0.0
        }
        .validate()
        .is_err());
        assert!(Gate {
            min_rouge_l: Some(1.5),
            ..min
        }
        .validate()
        .is_err());
    }
}
