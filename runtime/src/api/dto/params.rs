//! Generation parameters and output formats, as functions and invocations write them.

use genrt_functions::{GenerationParams, OutputSpec};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// Generation parameters. Set on a function as defaults, or on an invocation to override them.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    pub max_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 2)]
    pub temperature: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_p: Option<f32>,
    /// 1.0 (the default) disables it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeat_penalty: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u32>,
    /// Up to 8 stop sequences, each 1-256 bytes; generation ends before the first one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(max_items = 8)]
    pub stop: Vec<String>,
    /// Generate exactly `max_tokens`, past end-of-generation (for load tests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignore_eos: Option<bool>,
}

/// Constrains what the model may produce. `json` decodes only JSON that matches
/// `json_schema` (any object without one) and the response carries it parsed; `grammar` takes a
/// GBNF grammar with a `root` rule.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(tag = "format", rename_all = "snake_case", deny_unknown_fields)]
pub enum OutputFormat {
    Text,
    Json {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schema(value_type = Option<Object>)]
        json_schema: Option<Value>,
    },
    Grammar {
        grammar: String,
    },
}

impl From<&OutputFormat> for OutputSpec {
    fn from(o: &OutputFormat) -> Self {
        match o {
            OutputFormat::Text => OutputSpec::Text,
            OutputFormat::Json { json_schema } => OutputSpec::Json {
                json_schema: json_schema.clone(),
            },
            OutputFormat::Grammar { grammar } => OutputSpec::Grammar {
                grammar: grammar.clone(),
            },
        }
    }
}

impl From<&OutputSpec> for OutputFormat {
    fn from(o: &OutputSpec) -> Self {
        match o {
            OutputSpec::Text => OutputFormat::Text,
            OutputSpec::Json { json_schema } => OutputFormat::Json {
                json_schema: json_schema.clone(),
            },
            OutputSpec::Grammar { grammar } => OutputFormat::Grammar {
                grammar: grammar.clone(),
            },
        }
    }
}

impl From<Params> for GenerationParams {
    fn from(p: Params) -> Self {
        GenerationParams {
            max_tokens: p.max_tokens,
            temperature: p.temperature,
            top_p: p.top_p,
            top_k: p.top_k,
            min_p: p.min_p,
            repeat_penalty: p.repeat_penalty,
            seed: p.seed,
            stop: p.stop,
            ignore_eos: p.ignore_eos,
        }
    }
}

impl From<&GenerationParams> for Params {
    fn from(p: &GenerationParams) -> Self {
        Params {
            max_tokens: p.max_tokens,
            temperature: p.temperature,
            top_p: p.top_p,
            top_k: p.top_k,
            min_p: p.min_p,
            repeat_penalty: p.repeat_penalty,
            seed: p.seed,
            stop: p.stop.clone(),
            ignore_eos: p.ignore_eos,
        }
    }
}
