//! Releases: aliases of a function, their history, promotion gates and version scores.

use chrono::{DateTime, Utc};
use genrt_functions::{AliasTarget, Gate, Shadow, Weighted};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::store::{AliasEventRow, ScoreRow, StoredAlias};

/// One version of an alias and its share of the traffic (percent).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VersionWeight {
    #[schema(minimum = 1)]
    pub version: u32,
    #[schema(minimum = 1, maximum = 100)]
    pub weight: u32,
}

/// A share of the alias's traffic mirrored in the background to a candidate version: the
/// caller gets the primary's answer only; both outputs are recorded, and compared in
/// `GET /v1/functions/{name}/stats`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ShadowSpec {
    #[schema(minimum = 1)]
    pub version: u32,
    /// Of the alias's interactive invocations (sync, stream, OpenAI), sticky per split key.
    #[schema(minimum = 1, maximum = 100)]
    pub percent: u32,
}

/// A condition the promotion must meet on the function's evaluation set (the latest
/// version's `evaluation` cases, scored by ROUGE-L). Scores are stored per version and
/// reused while the cases are the same.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GateSpec {
    /// The new version must score at least this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_rouge_l: Option<f64>,
    /// `current`: the new version must not score worse than the alias's current version
    /// (its heaviest) by more than `max_drop`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_worse_than: Option<String>,
    #[serde(default)]
    pub max_drop: f64,
}

impl GateSpec {
    pub fn to_gate(&self) -> Result<Gate, genrt_functions::SpecError> {
        let not_worse_than_current = match self.not_worse_than.as_deref() {
            None => false,
            Some("current") => true,
            Some(_) => {
                return Err(genrt_functions::SpecError::invalid(
                    "gate.not_worse_than",
                    "the only comparison is `current`",
                ))
            }
        };
        let gate = Gate {
            min_rouge_l: self.min_rouge_l,
            not_worse_than_current,
            max_drop: self.max_drop,
        };
        gate.validate()?;
        Ok(gate)
    }
}

/// `PUT /v1/functions/{name}/aliases/{alias}`: point the alias at one `version`, or split
/// it over `versions` by weight; optionally mirror a share to a `shadow`; optionally only
/// if the new version passes a `gate`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetAlias {
    /// One version, all the traffic.
    #[serde(default)]
    #[schema(minimum = 1)]
    pub version: Option<u32>,
    /// Up to 4 versions whose weights sum to 100. The choice is sticky per
    /// `Genrt-Split-Key`; changing weights moves as few keys as possible.
    #[serde(default)]
    pub versions: Option<Vec<VersionWeight>>,
    #[serde(default)]
    pub shadow: Option<ShadowSpec>,
    #[serde(default)]
    pub gate: Option<GateSpec>,
}

impl SetAlias {
    pub fn target(&self) -> Result<AliasTarget, genrt_functions::SpecError> {
        let versions = match (self.version, &self.versions) {
            (Some(v), None) => vec![Weighted {
                version: v,
                weight: 100,
            }],
            (None, Some(list)) => list
                .iter()
                .map(|w| Weighted {
                    version: w.version,
                    weight: w.weight,
                })
                .collect(),
            _ => {
                return Err(genrt_functions::SpecError::invalid(
                    "version",
                    "give either `version` or `versions`",
                ))
            }
        };
        let target = AliasTarget {
            versions,
            shadow: self.shadow.map(|s| Shadow {
                version: s.version,
                percent: s.percent,
            }),
        };
        target.validate()?;
        Ok(target)
    }
}

/// Where an alias points.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AliasTargetInfo {
    pub versions: Vec<VersionWeight>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowSpec>,
}

impl From<&AliasTarget> for AliasTargetInfo {
    fn from(t: &AliasTarget) -> Self {
        Self {
            versions: t
                .versions
                .iter()
                .map(|w| VersionWeight {
                    version: w.version,
                    weight: w.weight,
                })
                .collect(),
            shadow: t.shadow.map(|s| ShadowSpec {
                version: s.version,
                percent: s.percent,
            }),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AliasInfo {
    pub alias: String,
    #[serde(flatten)]
    pub target: AliasTargetInfo,
    pub updated_at: DateTime<Utc>,
}

impl From<&StoredAlias> for AliasInfo {
    fn from(a: &StoredAlias) -> Self {
        Self {
            alias: a.name.as_str().to_owned(),
            target: AliasTargetInfo::from(&a.target),
            updated_at: a.updated_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AliasList {
    pub aliases: Vec<AliasInfo>,
}

/// One recorded change to an alias, or a refused promotion.
#[derive(Debug, Serialize, ToSchema)]
pub struct AliasEvent {
    pub id: i64,
    pub alias: String,
    /// `set`, `delete`, `rollback`, or `refused` (a gated promotion that failed its gate;
    /// the alias did not change).
    pub action: String,
    /// The target before; null when the alias was created.
    pub from: Option<AliasTargetInfo>,
    /// The target after (for `refused`, the one proposed); null when it was deleted.
    pub to: Option<AliasTargetInfo>,
    /// The credential that made the change: `api_key:<id>` or `jwt`.
    pub actor: String,
    /// A gated promotion's gate, the scores it compared and its decision.
    #[schema(value_type = Option<Object>)]
    pub gate: Option<Value>,
    pub at: DateTime<Utc>,
}

impl From<&AliasEventRow> for AliasEvent {
    fn from(e: &AliasEventRow) -> Self {
        let target = |json: &Option<String>| {
            json.as_deref()
                .and_then(|j| crate::store::decode_target(j).ok())
                .map(|t| AliasTargetInfo::from(&t))
        };
        Self {
            id: e.id,
            alias: e.alias.clone(),
            action: e.action.clone(),
            from: target(&e.from_target),
            to: target(&e.to_target),
            actor: e.actor.clone(),
            gate: e.gate.as_deref().and_then(|g| serde_json::from_str(g).ok()),
            at: e.at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AliasHistory {
    /// Newest first.
    pub events: Vec<AliasEvent>,
}

/// The answer to a change: the alias now (absent after a delete) and the recorded event.
#[derive(Debug, Serialize, ToSchema)]
pub struct AliasChanged {
    pub alias: Option<AliasInfo>,
    pub event: AliasEvent,
}

/// A version's stored score on one evaluation set.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct VersionScore {
    pub version: u32,
    pub rouge_l: f64,
    pub bleu: f64,
    pub cases: u32,
    pub failed: u32,
    /// Identifies the cases and parameters scored: only scores with the same digest compare.
    pub cases_digest: String,
    pub evaluated_at: DateTime<Utc>,
}

impl From<&ScoreRow> for VersionScore {
    fn from(r: &ScoreRow) -> Self {
        Self {
            version: r.version.max(0) as u32,
            rouge_l: r.rouge_l,
            bleu: r.bleu,
            cases: r.cases.max(0) as u32,
            failed: r.failed.max(0) as u32,
            cases_digest: r.cases_digest.clone(),
            evaluated_at: r.evaluated_at,
        }
    }
}

/// Two points of a latency distribution, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, ToSchema)]
pub struct Percentiles {
    pub p50: f64,
    pub p99: f64,
}

/// How one version did over the window: traffic only (evaluations and prewarms are left
/// out), so that a canary can be compared with the version beside it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, ToSchema)]
pub struct VersionStats {
    pub version: u32,
    /// The aliases pointing at it now.
    pub aliases: Vec<String>,
    pub invocations: u64,
    pub succeeded: u64,
    /// Failed and cancelled invocations by error code.
    pub errors: std::collections::BTreeMap<String, u64>,
    /// End to end, of succeeded invocations.
    pub latency_ms: Percentiles,
    /// To the first token, of succeeded invocations the engine ran (not cache hits).
    pub ttft_ms: Percentiles,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Of succeeded invocations.
    pub cache_hit_rate: f64,
    /// Stored evaluation scores, newest first.
    pub scores: Vec<VersionScore>,
    /// When this version ran as a shadow: how its outputs compare with the primaries'.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowAgreement>,
}

/// A shadow version's outputs against the outputs of the invocations they mirrored, over the
/// pairs where both succeeded.
#[derive(Debug, Clone, Default, PartialEq, Serialize, ToSchema)]
pub struct ShadowAgreement {
    /// Shadow copies run in the window.
    pub runs: u64,
    /// Pairs where both succeeded: what the figures below are over.
    pub compared: u64,
    /// Share of compared pairs with exactly the same text.
    pub exact_match: f64,
    /// Mean ROUGE-L of the shadow's text against the primary's.
    pub rouge_l: f64,
    /// Shadow copies that failed, by error code.
    pub errors: std::collections::BTreeMap<String, u64>,
    /// The versions that answered the callers meanwhile.
    pub primary_versions: Vec<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FunctionStats {
    pub function: String,
    pub since: DateTime<Utc>,
    /// The newest invocations are read, at most this many: a busier window is sampled from
    /// its end.
    pub sampled: u64,
    /// Versions with traffic or an alias, newest first.
    pub versions: Vec<VersionStats>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct StatsQuery {
    /// The window, in seconds back from now: default 86400 (a day), at most 2592000 (30 days).
    pub window_s: Option<u64>,
}
