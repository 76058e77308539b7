//! Function definitions: deploying, listing, versions, prewarming.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use genrt_functions::{
    default_idle_timeout_s, default_timeout_s, AdapterRef, CachePolicy, EvaluationCase,
    FunctionSpec, ModelId, ModelTarget, OutputSpec, Route, SpecError, WebhookTarget,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::store::{FunctionRow, StoredVersion};

use super::*;

/// Choose the model from a field of the input: `input[field]` is looked up in `cases`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    pub field: String,
    #[serde(default)]
    pub cases: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CacheSpec {
    /// Unset: cache deterministic generations (temperature 0 or a seed) only. `true`: cache
    /// sampled ones too. `false`: never cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_s: Option<u64>,
}

/// A LoRA adapter of the function's model and the scale it is applied at.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdapterUse {
    /// The adapter's name, as registered with `POST /v1/models/{model}/adapters`.
    pub id: String,
    /// 1 applies the adapter as trained, 0 not at all; -8 to 8.
    #[serde(default = "one")]
    pub scale: f32,
}

fn one() -> f32 {
    1.0
}

/// A function definition: what `POST /v1/functions` takes and version listings return.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FunctionDefinition {
    /// Unique per tenant: 1-64 of a-z, 0-9, '-', '_'.
    pub name: String,
    /// A registered model id, or `model:adapter` for one of its LoRA adapters. Exactly one
    /// of `model` and `route` (whose cases may name `model:adapter` too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<RouteSpec>,
    /// LoRA adapters of `model` to run with (at most 4), each at its scale.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub adapters: Vec<AdapterUse>,
    /// System prompt template (Jinja syntax), rendered with the input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// User prompt template (Jinja syntax), rendered with the input.
    pub prompt: String,
    /// JSON Schema the input must satisfy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub input_schema: Option<Value>,
    #[serde(default)]
    pub params: Params,
    #[serde(default)]
    pub cache: CacheSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<OutputFormat>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_s: Option<u32>,
    /// Seconds without invocations before the function's actor stops.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_s: Option<u32>,
    /// Where asynchronous results are announced (signed per Standard Webhooks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookSpec>,
    /// Inputs with reference outputs (at most 100), scored by
    /// `POST /v1/functions/{name}/evaluate` to compare versions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub evaluation: Vec<EvaluationCaseSpec>,
}

/// One case of an evaluation set: an input and the output the function should produce.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EvaluationCaseSpec {
    #[schema(value_type = Object)]
    pub input: Value,
    pub reference: String,
}

impl From<&EvaluationCaseSpec> for EvaluationCase {
    fn from(c: &EvaluationCaseSpec) -> Self {
        EvaluationCase {
            input: c.input.clone(),
            reference: c.reference.clone(),
        }
    }
}

impl From<&EvaluationCase> for EvaluationCaseSpec {
    fn from(c: &EvaluationCase) -> Self {
        EvaluationCaseSpec {
            input: c.input.clone(),
            reference: c.reference.clone(),
        }
    }
}

/// A callback for results of asynchronous invocations.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WebhookSpec {
    /// An http(s) URL; private, loopback and metadata addresses are refused unless the
    /// operator allowlists them.
    pub url: String,
    /// `invocation.succeeded`, `invocation.failed`, `invocation.started`; empty means the
    /// first two.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<String>,
}

impl From<&WebhookSpec> for WebhookTarget {
    fn from(w: &WebhookSpec) -> Self {
        WebhookTarget {
            url: w.url.clone(),
            events: w.events.clone(),
        }
    }
}

impl From<&WebhookTarget> for WebhookSpec {
    fn from(w: &WebhookTarget) -> Self {
        WebhookSpec {
            url: w.url.clone(),
            events: w.events.clone(),
        }
    }
}

impl FunctionDefinition {
    pub fn to_spec(&self) -> Result<FunctionSpec, SpecError> {
        let target = match (&self.model, &self.route) {
            (Some(model), None) => ModelTarget::Model(ModelId::new(model.clone())),
            (None, Some(route)) => ModelTarget::Route(Route {
                field: route.field.clone(),
                cases: route
                    .cases
                    .iter()
                    .map(|(k, v)| (k.clone(), ModelId::new(v.clone())))
                    .collect(),
                default: route.default.clone().map(ModelId::new),
            }),
            (Some(_), Some(_)) => {
                return Err(SpecError::invalid(
                    "model",
                    "give either `model` or `route`, not both",
                ))
            }
            (None, None) => {
                return Err(SpecError::invalid(
                    "model",
                    "`model` or `route` is required",
                ))
            }
        };
        Ok(FunctionSpec {
            target,
            adapters: self
                .adapters
                .iter()
                .map(|a| AdapterRef {
                    id: a.id.clone(),
                    scale: a.scale,
                })
                .collect(),
            system: self.system.clone(),
            prompt: self.prompt.clone(),
            input_schema: self.input_schema.clone(),
            params: self.params.clone().into(),
            cache: CachePolicy {
                enabled: self.cache.enabled,
                ttl_s: self.cache.ttl_s,
            },
            output: self
                .output
                .as_ref()
                .map(OutputSpec::from)
                .unwrap_or_default(),
            timeout_s: self.timeout_s.unwrap_or_else(default_timeout_s),
            idle_timeout_s: self.idle_timeout_s.unwrap_or_else(default_idle_timeout_s),
            webhook: self.webhook.as_ref().map(WebhookTarget::from),
            evaluation: self.evaluation.iter().map(EvaluationCase::from).collect(),
        })
    }

    pub fn from_spec(name: &str, spec: &FunctionSpec) -> Self {
        let (model, route) = match &spec.target {
            ModelTarget::Model(m) => (Some(m.as_str().to_owned()), None),
            ModelTarget::Route(r) => (
                None,
                Some(RouteSpec {
                    field: r.field.clone(),
                    cases: r
                        .cases
                        .iter()
                        .map(|(k, v)| (k.clone(), v.as_str().to_owned()))
                        .collect(),
                    default: r.default.as_ref().map(|m| m.as_str().to_owned()),
                }),
            ),
        };
        Self {
            name: name.to_owned(),
            model,
            route,
            adapters: spec
                .adapters
                .iter()
                .map(|a| AdapterUse {
                    id: a.id.clone(),
                    scale: a.scale,
                })
                .collect(),
            system: spec.system.clone(),
            prompt: spec.prompt.clone(),
            input_schema: spec.input_schema.clone(),
            params: (&spec.params).into(),
            cache: CacheSpec {
                enabled: spec.cache.enabled,
                ttl_s: spec.cache.ttl_s,
            },
            output: (!spec.output.is_text()).then(|| OutputFormat::from(&spec.output)),
            timeout_s: Some(spec.timeout_s),
            idle_timeout_s: Some(spec.idle_timeout_s),
            webhook: spec.webhook.as_ref().map(WebhookSpec::from),
            evaluation: spec
                .evaluation
                .iter()
                .map(EvaluationCaseSpec::from)
                .collect(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeployResponse {
    pub name: String,
    pub version: u32,
    /// False when the definition was identical to the latest version.
    pub created: bool,
    pub digest: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FunctionSummary {
    pub name: String,
    pub latest_version: u32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<&FunctionRow> for FunctionSummary {
    fn from(f: &FunctionRow) -> Self {
        Self {
            name: f.name.clone(),
            latest_version: f.latest_version as u32,
            created_at: f.created_at,
            updated_at: f.updated_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FunctionList {
    pub functions: Vec<FunctionSummary>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FunctionDetail {
    #[serde(flatten)]
    pub summary: FunctionSummary,
    /// Versions whose function actor is running now (scale to zero leaves this empty).
    pub active_versions: Vec<u32>,
    pub definition: FunctionDefinition,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct VersionInfo {
    pub version: u32,
    pub digest: String,
    pub created_at: DateTime<Utc>,
    pub definition: FunctionDefinition,
    /// The aliases that route traffic to this version.
    pub aliases: Vec<String>,
    /// Its stored evaluation scores (from `evaluate` and promotion gates), one per set of
    /// cases, newest first.
    pub scores: Vec<VersionScore>,
}

impl VersionInfo {
    pub fn new(name: &str, v: &StoredVersion) -> Self {
        Self {
            version: v.version,
            digest: v.digest.clone(),
            created_at: v.created_at,
            definition: FunctionDefinition::from_spec(name, &v.spec),
            aliases: Vec::new(),
            scores: Vec::new(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct VersionList {
    pub versions: Vec<VersionInfo>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PrewarmRequest {
    /// Inputs to run ahead of demand (at most 1000), at low priority, to fill the cache.
    #[schema(value_type = Vec<Object>)]
    pub inputs: Vec<Value>,
    #[serde(default)]
    pub params: Params,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PrewarmResponse {
    pub accepted: usize,
}
