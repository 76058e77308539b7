//! Model quality: scoring one version of a function on an evaluation set (ROUGE-L and BLEU
//! against reference outputs), so that versions can be compared before one is promoted.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use actix_web::{web, HttpResponse};
use futures_util::future::join_all;
use genrt_actors::DeployedFunction;
use genrt_functions::{
    corpus_bleu, rouge_l, sentence_bleu, validate_cases, EvaluationCase, FunctionName,
    GenerationParams,
};

use crate::api::dto::InvokeResponse;
use crate::api::dto::{CaseScore, EvaluateRequest, EvaluateResponse};
use crate::api::functions::{function_name, function_not_found};
use crate::app::AppState;
use crate::error::{ApiError, ErrorBody, ErrorCode, ErrorDetail};
use crate::invocation::{Admitted, InvocationService, Mode, Request};
use crate::store::StoredVersion;
use crate::tenancy::{Caller, Scope};

/// Cases of one evaluation run at once: enough to keep a model's slots busy, few enough that
/// an evaluation does not crowd out the tenant's interactive traffic.
const CONCURRENCY: usize = 4;

/// Score a version of a function: every case's input runs through that version (default the
/// latest), and its output is compared with the case's reference. The cases are those given,
/// or else the evaluation set of the latest version, so that versions are compared on the
/// same cases. Each run is recorded as an invocation with mode `evaluate`.
#[utoipa::path(post, path = "/v1/functions/{name}/evaluate", tag = "functions", security(("bearer" = ["functions:invoke"])),
    params(("name" = String, Path)),
    request_body = EvaluateRequest,
    responses(
        (status = 200, description = "Per-case scores and their means", body = EvaluateResponse),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, description = "No such function or version", body = ErrorBody),
        (status = 422, description = "No cases, more than 100, or params out of range", body = ErrorBody),
        (status = 429, description = "The tenant's concurrency or budget is used up", body = ErrorBody)))]
/// The score is stored with the version (see `GET /v1/functions/{name}/versions`) under the
/// digest of the cases and parameters, where promotion gates find it.
pub async fn evaluate(
    state: web::Data<AppState>,
    caller: Caller,
    name: web::Path<String>,
    body: web::Json<EvaluateRequest>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Scope::FunctionsInvoke)?;
    let name = function_name(&name)?;
    let body = body.into_inner();
    let (latest, version) = versions(&state, &caller, &name, body.version).await?;
    let cases: Vec<EvaluationCase> = match &body.cases {
        Some(cases) => cases.iter().map(EvaluationCase::from).collect(),
        None => latest.spec.evaluation.clone(),
    };
    if cases.is_empty() {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "no cases: give `cases`, or deploy the function with an `evaluation` set",
        )
        .with_field("cases"));
    }
    validate_cases("cases", &cases)
        .map_err(|e| ApiError::new(ErrorCode::InvalidRequest, e.to_string()).with_field(e.field))?;
    let params: GenerationParams = body.params.into();
    params
        .validate_override()
        .map_err(|e| ApiError::from(genrt_actors::InvokeError::Input(e)))?;
    let response = score_version(&state, &caller, &name, &version, cases, &params).await?;
    Ok(HttpResponse::Ok().json(response))
}

/// Identifies an evaluation set and its parameter overrides: scores compare, and are reused
/// by promotion gates, only when this is the same.
pub(crate) fn cases_digest(cases: &[EvaluationCase], params: &GenerationParams) -> String {
    let text = serde_json::to_string(&(cases, params)).expect("cases serialize");
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// Runs every case through `version`, scores it, and stores the version's score under the
/// cases' digest (shown with the version, reused by promotion gates). Admitted as one
/// `evaluate` request of `caller`.
pub(crate) async fn score_version(
    state: &AppState,
    caller: &Caller,
    name: &FunctionName,
    version: &StoredVersion,
    cases: Vec<EvaluationCase>,
    params: &GenerationParams,
) -> Result<EvaluateResponse, ApiError> {
    let service = &state.invocations;
    let digest = cases_digest(&cases, params);
    let inputs: Vec<&serde_json::Value> = cases.iter().map(|c| &c.input).collect();
    let admitted = service
        .admit(caller, Mode::Evaluate, &version.spec, &inputs, params)
        .await?;
    let function = crate::api::invoke::deployed(caller, name, version);
    let scored = score_cases(service, caller, admitted, &function, cases, params).await;
    let succeeded = scored.iter().filter(|c| c.output.is_some()).count();
    let response = EvaluateResponse {
        function: name.to_string(),
        version: version.version,
        rouge_l: scored.iter().map(|c| c.rouge_l).sum::<f64>() / scored.len() as f64,
        bleu: corpus_bleu(
            scored
                .iter()
                .map(|c| (c.output.as_deref().unwrap_or(""), c.reference.as_str())),
        ),
        succeeded,
        failed: scored.len() - succeeded,
        cases_digest: digest,
        cases: scored,
    };
    // A failed case scores 0, and a failure may be the moment's (an overloaded model, a
    // timeout): only a score with every case answered is kept for gates to reuse.
    if response.failed == 0 {
        state
            .store
            .save_score(
                &caller.tenant,
                name,
                response.version,
                &response.cases_digest,
                response.rouge_l,
                response.bleu,
                (response.succeeded + response.failed) as u32,
                response.failed as u32,
            )
            .await?;
    }
    tracing::info!(tenant = %caller.tenant, function = %name, version = response.version,
        rouge_l = response.rouge_l, bleu = response.bleu, failed = response.failed, "evaluated");
    Ok(response)
}

/// The latest version (whose evaluation set is the default) and the one to evaluate.
async fn versions(
    state: &AppState,
    caller: &Caller,
    name: &FunctionName,
    wanted: Option<u32>,
) -> Result<(StoredVersion, StoredVersion), ApiError> {
    let latest = state
        .store
        .latest_version(&caller.tenant, name)
        .await?
        .ok_or_else(|| function_not_found(name.as_str()))?;
    let version = match wanted {
        None => latest.clone(),
        Some(n) if n == latest.version => latest.clone(),
        Some(n) => state
            .store
            .version(&caller.tenant, name, n)
            .await?
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::VersionNotFound,
                    format!("function `{name}` has no version {n}"),
                )
                .with_field("version")
            })?,
    };
    Ok((latest, version))
}

/// Runs every case and scores it, in case order. Each running case holds one of the
/// tenant's concurrency places: admission took the first, and up to `CONCURRENCY` run at once
/// when the tenant has places free.
async fn score_cases(
    service: &InvocationService,
    caller: &Caller,
    admitted: Admitted,
    function: &Arc<DeployedFunction>,
    cases: Vec<EvaluationCase>,
    params: &GenerationParams,
) -> Vec<CaseScore> {
    let mut lanes = vec![admitted];
    while lanes.len() < CONCURRENCY.min(cases.len()) {
        match service.another_place(caller, &lanes[0]) {
            Some(place) => lanes.push(place),
            None => break,
        }
    }
    let waiting = Mutex::new(cases.into_iter().enumerate().collect::<VecDeque<_>>());
    let runs = lanes.iter().map(|lane| {
        let waiting = &waiting;
        async move {
            let mut scored = Vec::new();
            loop {
                let Some((i, case)) = waiting.lock().expect("cases lock").pop_front() else {
                    break scored;
                };
                let request =
                    Request::new(Arc::clone(function), case.input.clone(), params.clone());
                let result = service.run(lane, request).await;
                scored.push((i, score(case, result.map(InvokeResponse::from))));
            }
        }
    });
    let mut scored: Vec<(usize, CaseScore)> = join_all(runs).await.into_iter().flatten().collect();
    scored.sort_by_key(|(i, _)| *i);
    scored.into_iter().map(|(_, s)| s).collect()
}

/// A failed invocation scores 0: a version that cannot answer a case is worse on it.
fn score(case: EvaluationCase, result: Result<InvokeResponse, ApiError>) -> CaseScore {
    match result {
        Ok(response) => {
            let text = response.output.text;
            CaseScore {
                rouge_l: rouge_l(&text, &case.reference),
                bleu: sentence_bleu(&text, &case.reference),
                input: case.input,
                reference: case.reference,
                output: Some(text),
                invocation_id: Some(response.invocation_id),
                error: None,
            }
        }
        Err(err) => CaseScore {
            input: case.input,
            reference: case.reference,
            output: None,
            rouge_l: 0.0,
            bleu: 0.0,
            invocation_id: None,
            error: Some(ErrorDetail {
                code: err.code.as_str().to_owned(),
                message: err.message,
                field: err.field,
            }),
        },
    }
}
