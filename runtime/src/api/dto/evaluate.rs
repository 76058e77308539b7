//! Evaluating a version on an evaluation set.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use super::*;

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EvaluateRequest {
    /// The version to score; default the latest.
    #[serde(default)]
    #[schema(minimum = 1)]
    pub version: Option<u32>,
    /// Cases to score instead of the evaluation set of the function's latest version (at
    /// most 100).
    #[serde(default)]
    pub cases: Option<Vec<EvaluationCaseSpec>>,
    /// Overrides of the version's generation parameters, for every case.
    #[serde(default)]
    pub params: Params,
}

/// The scores of one version on an evaluation set. Scores are in [0, 1] on lowercased word
/// tokens; a case whose invocation failed scores 0 and carries its error.
#[derive(Debug, Serialize, ToSchema)]
pub struct EvaluateResponse {
    pub function: String,
    pub version: u32,
    /// Mean ROUGE-L F-measure over the cases.
    pub rouge_l: f64,
    /// Corpus BLEU-4 (brevity penalty, exponential smoothing) over the cases.
    pub bleu: f64,
    pub succeeded: usize,
    pub failed: usize,
    /// Identifies the cases and parameter overrides: scores with the same digest compare.
    pub cases_digest: String,
    pub cases: Vec<CaseScore>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CaseScore {
    #[schema(value_type = Object)]
    pub input: Value,
    pub reference: String,
    /// The generated text; absent when the invocation failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    pub rouge_l: f64,
    /// Sentence BLEU of this case (effective order, so short texts can score).
    pub bleu: f64,
    /// The recorded invocation (mode `evaluate`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invocation_id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<crate::error::ErrorDetail>,
}
