//! Releases: a function's aliases (`prod` → version 4, or a weighted split),
//! moved, deleted and rolled back through these routes, each change recorded; a move may
//! carry a gate that scores the new version on the function's evaluation set first.
//!
//! Invocations resolve aliases in the invocation service (`InvocationService::resolve`), at
//! admission; this file only changes them.

use actix_web::{web, HttpResponse};
use genrt_functions::{AliasName, AliasTarget, FunctionName, Gate, GenerationParams};
use serde_json::json;

use crate::api::dto::{
    AliasChanged, AliasEvent, AliasHistory, AliasInfo, AliasList, FunctionStats, GateSpec,
    Percentiles, SetAlias, ShadowAgreement, StatsQuery, VersionScore, VersionStats,
};
use crate::api::evaluate::{cases_digest, score_version};
use crate::api::functions::{function_name, function_not_found, READ};
use crate::app::AppState;
use crate::error::{ApiError, ErrorBody, ErrorCode};
use crate::store::{ActivityRow, AliasAction, AliasRefusal, AliasWrite, ShadowPair, StoredAlias};
use crate::tenancy::{Caller, Credential, Scope};

/// History entries one request returns.
const HISTORY_LIMIT: u64 = 200;

fn alias_name(raw: &str) -> Result<AliasName, ApiError> {
    AliasName::parse(raw)
        .map_err(|e| ApiError::new(ErrorCode::InvalidRequest, e.message).with_field("alias"))
}

fn alias_not_found(name: &FunctionName, alias: &str) -> ApiError {
    ApiError::new(
        ErrorCode::AliasNotFound,
        format!("function `{name}` has no alias `{alias}`"),
    )
}

/// An alias a request reads or changes: a name that cannot exist is reported like any
/// missing alias (a malformed name is refused only where an alias is created).
fn existing_alias(name: &FunctionName, raw: &str) -> Result<AliasName, ApiError> {
    AliasName::parse(raw).map_err(|_| alias_not_found(name, raw))
}

fn actor(caller: &Caller) -> String {
    match caller.credential {
        Credential::ApiKey(id) => format!("api_key:{id}"),
        Credential::Jwt => "jwt".to_owned(),
        Credential::Trigger => "trigger".to_owned(),
    }
}

/// A function's aliases.
#[utoipa::path(get, path = "/v1/functions/{name}/aliases", tag = "releases", security(("bearer" = ["functions:write"]), ("bearer" = ["functions:invoke"])),
    params(("name" = String, Path)),
    responses(
        (status = 200, body = AliasList),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn list(
    state: web::Data<AppState>,
    caller: Caller,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    caller.require_any(&READ)?;
    let name = function_name(&name)?;
    let aliases = state
        .store
        .aliases(&caller.tenant, &name)
        .await?
        .ok_or_else(|| function_not_found(name.as_str()))?;
    Ok(HttpResponse::Ok().json(AliasList {
        aliases: aliases.iter().map(AliasInfo::from).collect(),
    }))
}

/// Create or move an alias: to one `version`, or split over `versions` by weight. With a
/// `gate`, the version(s) the move adds are first scored on the
/// function's evaluation set (stored scores are reused) and the move is refused, with both
/// scores, when they fail it; the refusal is recorded in the history too. Invocations of
/// `name@alias` on this node use the new target at once, on other nodes within 2 s; work
/// already admitted keeps its version.
#[utoipa::path(put, path = "/v1/functions/{name}/aliases/{alias}", tag = "releases", security(("bearer" = ["functions:write"])),
    params(("name" = String, Path), ("alias" = String, Path)),
    request_body = SetAlias,
    responses(
        (status = 200, body = AliasChanged),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, description = "No such function, or a version it names does not exist", body = ErrorBody),
        (status = 409, description = "`promotion_refused`: the gate failed; the message gives both scores", body = ErrorBody),
        (status = 422, body = ErrorBody),
        (status = 429, description = "Scoring for the gate: the tenant's concurrency or budget is used up", body = ErrorBody)))]
pub async fn set(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<(String, String)>,
    body: web::Json<SetAlias>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Scope::FunctionsWrite)?;
    let (name, alias) = (function_name(&path.0)?, alias_name(&path.1)?);
    let body = body.into_inner();
    let invalid = |e: genrt_functions::SpecError| {
        ApiError::new(ErrorCode::InvalidRequest, e.message).with_field(e.field)
    };
    let target = body.target().map_err(invalid)?;
    let gate = body
        .gate
        .as_ref()
        .map(GateSpec::to_gate)
        .transpose()
        .map_err(invalid)?;
    let mut judged = None;
    if let Some(gate) = gate {
        let current = state.store.alias(&caller.tenant, &name, &alias).await?;
        let verdict = judge(&state, &caller, &name, current.as_ref(), &target, gate).await?;
        let scores = verdict.record.to_string();
        if let Err(reason) = verdict.decision {
            let refused = AliasAction::Refused(target);
            let record = Judged {
                scores,
                expected: None,
            };
            change(&state, &caller, &name, &alias, refused, Some(record)).await?;
            return Err(ApiError::new(ErrorCode::PromotionRefused, reason).with_field("gate"));
        }
        // Judged against `current`: the move is made only if the alias still points there.
        let expected = Some(current.map(|c| c.target));
        judged = Some(Judged { scores, expected });
    }
    let set = AliasAction::Set(target);
    let changed = change(&state, &caller, &name, &alias, set, judged).await?;
    Ok(HttpResponse::Ok().json(changed))
}

/// Delete an alias. `name@alias` is then refused (404 `alias_not_found`); work already
/// admitted through it keeps its version. A rollback restores it.
#[utoipa::path(delete, path = "/v1/functions/{name}/aliases/{alias}", tag = "releases", security(("bearer" = ["functions:write"])),
    params(("name" = String, Path), ("alias" = String, Path)),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn delete(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Scope::FunctionsWrite)?;
    let name = function_name(&path.0)?;
    let alias = existing_alias(&name, &path.1)?;
    change(&state, &caller, &name, &alias, AliasAction::Delete, None).await?;
    Ok(crate::api::no_content())
}

/// Move an alias back to where it pointed before its last change (read from its history;
/// a rollback is itself a change, so a second one undoes the first; after a rollback that
/// restored a deleted alias there is nothing before it, and the answer is 409).
#[utoipa::path(post, path = "/v1/functions/{name}/aliases/{alias}/rollback", tag = "releases", security(("bearer" = ["functions:write"])),
    params(("name" = String, Path), ("alias" = String, Path)),
    responses(
        (status = 200, body = AliasChanged),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "`nothing_to_roll_back`: the alias has had one target only", body = ErrorBody)))]
pub async fn rollback(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Scope::FunctionsWrite)?;
    let name = function_name(&path.0)?;
    let alias = existing_alias(&name, &path.1)?;
    let changed = change(&state, &caller, &name, &alias, AliasAction::Rollback, None).await?;
    Ok(HttpResponse::Ok().json(changed))
}

/// Every change to an alias, and every refused promotion, newest first (at most 200).
#[utoipa::path(get, path = "/v1/functions/{name}/aliases/{alias}/history", tag = "releases", security(("bearer" = ["functions:write"]), ("bearer" = ["functions:invoke"])),
    params(("name" = String, Path), ("alias" = String, Path)),
    responses(
        (status = 200, body = AliasHistory),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn history(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    caller.require_any(&READ)?;
    let name = function_name(&path.0)?;
    let alias = existing_alias(&name, &path.1)?;
    let events = state
        .store
        .alias_history(&caller.tenant, &name, Some(&alias), HISTORY_LIMIT)
        .await?
        .ok_or_else(|| function_not_found(name.as_str()))?;
    Ok(HttpResponse::Ok().json(AliasHistory {
        events: events.iter().map(AliasEvent::from).collect(),
    }))
}

/// Writes a change (with the caller as its actor and a gate's scores), makes this node's
/// invocations see it, and answers with the alias now.
async fn change(
    state: &AppState,
    caller: &Caller,
    name: &FunctionName,
    alias: &AliasName,
    action: AliasAction,
    judged: Option<Judged>,
) -> Result<AliasChanged, ApiError> {
    let (gate, expected) = match judged {
        Some(j) => (Some(j.scores), j.expected),
        None => (None, None),
    };
    let write = AliasWrite {
        alias,
        action,
        actor: &actor(caller),
        gate,
        expected,
    };
    let event = state
        .store
        .change_alias(&caller.tenant, name, write)
        .await?
        .map_err(|refusal| match refusal {
            AliasRefusal::FunctionMissing => function_not_found(name.as_str()),
            AliasRefusal::AliasMissing => alias_not_found(name, alias.as_str()),
            AliasRefusal::VersionMissing(v) => ApiError::new(
                ErrorCode::VersionNotFound,
                format!("function `{name}` has no version {v}"),
            )
            .with_field("version"),
            AliasRefusal::NothingToRollBack => ApiError::new(
                ErrorCode::NothingToRollBack,
                format!("alias `{alias}` has no earlier target to return to"),
            ),
            AliasRefusal::Moved => ApiError::new(
                ErrorCode::AliasChanged,
                format!("alias `{alias}` moved while the gate was scoring; read it and try again"),
            ),
        })?;
    state.invocations.forget_function(&caller.tenant, name);
    tracing::info!(tenant = %caller.tenant, function = %name, alias = %alias,
        action = %event.action, "alias changed");
    let now = state.store.alias(&caller.tenant, name, alias).await?;
    Ok(AliasChanged {
        alias: now.as_ref().map(AliasInfo::from),
        event: AliasEvent::from(&event),
    })
}

/// What a gate decided a change on: its scores (JSON, for the history) and the target it
/// judged against (`Some(None)`: the alias did not exist).
struct Judged {
    scores: String,
    expected: Option<Option<AliasTarget>>,
}

/// A gate's decision and what it compared (kept in the history as JSON).
struct Verdict {
    decision: Result<(), String>,
    record: serde_json::Value,
}

/// Scores the versions a move adds (those not in the current target, or whose weight grows)
/// and the current target's heaviest version on the latest version's evaluation set, reusing
/// stored scores of the same cases, and applies the gate.
async fn judge(
    state: &AppState,
    caller: &Caller,
    name: &FunctionName,
    current: Option<&StoredAlias>,
    target: &AliasTarget,
    gate: Gate,
) -> Result<Verdict, ApiError> {
    let latest = state
        .store
        .latest_version(&caller.tenant, name)
        .await?
        .ok_or_else(|| function_not_found(name.as_str()))?;
    let cases = latest.spec.evaluation.clone();
    if cases.is_empty() {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "a gate scores versions on the function's evaluation set, and it has none: deploy it with `evaluation` cases",
        )
        .with_field("gate"));
    }
    let params = GenerationParams::default();
    let digest = cases_digest(&cases, &params);
    let weight_in = |t: &AliasTarget, v: u32| {
        t.versions
            .iter()
            .find(|w| w.version == v)
            .map_or(0, |w| w.weight)
    };
    let candidates: Vec<u32> = target
        .versions
        .iter()
        .filter(|w| current.is_none_or(|c| w.weight > weight_in(&c.target, w.version)))
        .map(|w| w.version)
        .collect();
    let incumbent = current.and_then(|c| c.target.versions.iter().max_by_key(|w| w.weight));
    let score = |version: u32| {
        let cases = cases.clone();
        let params = params.clone();
        let digest = digest.clone();
        async move {
            if let Some(stored) = state
                .store
                .version_score(&caller.tenant, name, version, &digest)
                .await?
                .filter(|s| s.failed == 0)
            {
                return Ok::<_, ApiError>((stored.rouge_l, stored.bleu));
            }
            let v = state
                .invocations
                .version(&caller.tenant, name, version)
                .await?;
            let scored = score_version(state, caller, name, &v, cases, &params).await?;
            Ok((scored.rouge_l, scored.bleu))
        }
    };
    let current_score = match incumbent {
        Some(w) => Some((w.version, score(w.version).await?)),
        None => None,
    };
    let mut scored = Vec::new();
    let mut decision = Ok(());
    for version in candidates {
        let (rouge_l, bleu) = score(version).await?;
        scored.push(json!({"version": version, "rouge_l": rouge_l, "bleu": bleu}));
        if decision.is_ok() {
            decision = gate
                .decide((version, rouge_l), current_score.map(|(v, (r, _))| (v, r)))
                .map_err(|r| r.0);
        }
    }
    let record = json!({
        "gate": gate,
        "cases_digest": digest,
        "cases": cases.len(),
        "candidates": scored,
        "current": current_score.map(|(v, (r, b))| json!({"version": v, "rouge_l": r, "bleu": b})),
        "passed": decision.is_ok(),
        "reason": decision.as_ref().err(),
    });
    Ok(Verdict { decision, record })
}

/// Invocations read for one statistics request, at most.
const STATS_SAMPLE: u64 = 50_000;
/// Shadow copies read for one statistics request, at most (with their primaries).
const SHADOW_SAMPLE: u64 = 5_000;
const DEFAULT_WINDOW_S: u64 = 86_400;
const MAX_WINDOW_S: u64 = 30 * 86_400;

/// How each version of a function did: invocations, errors by code, latency and time to
/// first token (p50, p99), tokens, cache hit rate, and its stored evaluation scores. The same
/// counts are metrics labelled `genrt_function_version`.
#[utoipa::path(get, path = "/v1/functions/{name}/stats", tag = "releases", security(("bearer" = ["invocations:read"])),
    params(("name" = String, Path), StatsQuery),
    responses(
        (status = 200, body = FunctionStats),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub async fn stats(
    state: web::Data<AppState>,
    caller: Caller,
    name: web::Path<String>,
    query: web::Query<StatsQuery>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Scope::InvocationsRead)?;
    let name = function_name(&name)?;
    let window = query.window_s.unwrap_or(DEFAULT_WINDOW_S);
    if window == 0 || window > MAX_WINDOW_S {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!("window_s is 1 to {MAX_WINDOW_S} seconds"),
        )
        .with_field("window_s"));
    }
    let store = &state.store;
    let aliases = store
        .aliases(&caller.tenant, &name)
        .await?
        .ok_or_else(|| function_not_found(name.as_str()))?;
    let since = chrono::Utc::now() - chrono::Duration::seconds(window as i64);
    let rows = store
        .version_activity(&caller.tenant, &name, since, STATS_SAMPLE)
        .await?;
    let scores = store.version_scores(&caller.tenant, &name).await?;
    let pairs = store
        .shadow_pairs(&caller.tenant, &name, since, SHADOW_SAMPLE)
        .await?;
    let mut versions = summarize(&rows);
    for (version, agreement) in agreements(&pairs) {
        match versions.iter_mut().find(|s| s.version == version) {
            Some(stats) => stats.shadow = Some(agreement),
            None => versions.push(VersionStats {
                version,
                shadow: Some(agreement),
                ..VersionStats::default()
            }),
        }
    }
    for alias in &aliases {
        for v in alias.target.referenced() {
            if !versions.iter().any(|s| s.version == v) {
                versions.push(VersionStats {
                    version: v,
                    ..VersionStats::default()
                });
            }
        }
    }
    for stats in &mut versions {
        stats.aliases = aliases
            .iter()
            .filter(|a| a.target.referenced().any(|v| v == stats.version))
            .map(|a| a.name.as_str().to_owned())
            .collect();
        stats.scores = scores
            .iter()
            .filter(|s| s.version as u32 == stats.version)
            .map(VersionScore::from)
            .collect();
    }
    versions.sort_by_key(|s| std::cmp::Reverse(s.version));
    Ok(HttpResponse::Ok().json(FunctionStats {
        function: name.to_string(),
        since,
        sampled: rows.len() as u64,
        versions,
    }))
}

/// Per-version counts and percentiles of `rows` (nearest-rank percentiles).
fn summarize(rows: &[ActivityRow]) -> Vec<VersionStats> {
    let mut by_version: std::collections::BTreeMap<u32, (VersionStats, Vec<f64>, Vec<f64>, u64)> =
        Default::default();
    for r in rows {
        let version = r.function_version.max(0) as u32;
        let (stats, latency, ttft, hits) = by_version.entry(version).or_insert_with(|| {
            (
                VersionStats {
                    version,
                    ..VersionStats::default()
                },
                Vec::new(),
                Vec::new(),
                0,
            )
        });
        stats.invocations += 1;
        stats.prompt_tokens += r.prompt_tokens.max(0) as u64;
        stats.completion_tokens += r.completion_tokens.max(0) as u64;
        match r.status.as_str() {
            "succeeded" => {
                stats.succeeded += 1;
                latency.push(r.total_ms);
                if r.cache_hit {
                    *hits += 1;
                } else {
                    ttft.push(r.ttft_ms);
                }
            }
            "failed" | "cancelled" => {
                let code = r.error_code.clone().unwrap_or_else(|| r.status.clone());
                *stats.errors.entry(code).or_default() += 1;
            }
            // Queued or running: counted, not yet anything else.
            _ => {}
        }
    }
    by_version
        .into_values()
        .map(|(mut stats, mut latency, mut ttft, hits)| {
            stats.latency_ms = percentiles(&mut latency);
            stats.ttft_ms = percentiles(&mut ttft);
            stats.cache_hit_rate = if stats.succeeded == 0 {
                0.0
            } else {
                hits as f64 / stats.succeeded as f64
            };
            stats
        })
        .collect()
}

/// Per shadow version: how its outputs compare with those of the invocations they mirrored.
fn agreements(pairs: &[ShadowPair]) -> Vec<(u32, ShadowAgreement)> {
    let mut by_version: std::collections::BTreeMap<u32, (ShadowAgreement, f64, u64)> =
        Default::default();
    for pair in pairs {
        let version = pair.shadow.function_version.max(0) as u32;
        let (agreement, rouge_sum, exact) = by_version.entry(version).or_default();
        agreement.runs += 1;
        let primary_version = pair.primary.function_version.max(0) as u32;
        if !agreement.primary_versions.contains(&primary_version) {
            agreement.primary_versions.push(primary_version);
        }
        if pair.shadow.status != "succeeded" {
            let code = pair.shadow.error_code.clone();
            *agreement
                .errors
                .entry(code.unwrap_or_else(|| pair.shadow.status.clone()))
                .or_default() += 1;
            continue;
        }
        let (Some(shadow), Some(primary)) = (&pair.shadow.output_text, &pair.primary.output_text)
        else {
            continue;
        };
        if pair.primary.status != "succeeded" {
            continue;
        }
        agreement.compared += 1;
        *exact += u64::from(shadow == primary);
        *rouge_sum += genrt_functions::rouge_l(shadow, primary);
    }
    by_version
        .into_iter()
        .map(|(version, (mut agreement, rouge_sum, exact))| {
            if agreement.compared > 0 {
                agreement.exact_match = exact as f64 / agreement.compared as f64;
                agreement.rouge_l = rouge_sum / agreement.compared as f64;
            }
            agreement.primary_versions.sort_unstable();
            (version, agreement)
        })
        .collect()
}

fn percentiles(values: &mut [f64]) -> Percentiles {
    if values.is_empty() {
        return Percentiles::default();
    }
    values.sort_by(f64::total_cmp);
    let rank =
        |p: f64| values[((p * values.len() as f64).ceil() as usize).clamp(1, values.len()) - 1];
    Percentiles {
        p50: rank(0.50),
        p99: rank(0.99),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(
        version: i32,
        status: &str,
        code: Option<&str>,
        total_ms: f64,
        cache_hit: bool,
    ) -> ActivityRow {
        ActivityRow {
            function_version: version,
            status: status.into(),
            error_code: code.map(Into::into),
            total_ms,
            ttft_ms: total_ms / 4.0,
            prompt_tokens: 10,
            completion_tokens: 5,
            cache_hit,
        }
    }

    fn output(version: i32, status: &str, text: Option<&str>) -> crate::store::OutputRow {
        crate::store::OutputRow {
            id: uuid::Uuid::now_v7(),
            shadow_of: None,
            function_version: version,
            status: status.into(),
            error_code: (status != "succeeded").then(|| "timeout".into()),
            output_text: text.map(Into::into),
        }
    }

    #[test]
    fn a_shadow_is_compared_with_its_primaries() {
        let pair = |shadow: (&str, Option<&str>), primary: Option<&str>| ShadowPair {
            shadow: output(5, shadow.0, shadow.1),
            primary: output(4, "succeeded", primary),
        };
        let pairs = [
            pair(("succeeded", Some("the cat sat")), Some("the cat sat")),
            pair(("succeeded", Some("the cat sat")), Some("the dog sat")),
            pair(("failed", None), Some("a")),
        ];
        let got = agreements(&pairs);
        assert_eq!(got.len(), 1);
        let (version, a) = &got[0];
        assert_eq!((*version, a.runs, a.compared), (5, 3, 2));
        assert_eq!(a.exact_match, 0.5);
        // ROUGE-L 1 and 2/3.
        assert!(
            (a.rouge_l - (1.0 + 2.0 / 3.0) / 2.0).abs() < 1e-9,
            "{}",
            a.rouge_l
        );
        assert_eq!(a.errors.get("timeout"), Some(&1));
        assert_eq!(a.primary_versions, vec![4]);
    }

    #[test]
    fn versions_are_summarized_apart() {
        let mut rows: Vec<ActivityRow> = (1..=100)
            .map(|i| row(4, "succeeded", None, i as f64, i % 4 == 0))
            .collect();
        rows.push(row(5, "succeeded", None, 7.0, false));
        rows.push(row(5, "failed", Some("timeout"), 0.0, false));
        rows.push(row(5, "failed", Some("timeout"), 0.0, false));
        rows.push(row(5, "cancelled", Some("cancelled"), 0.0, false));
        let stats = summarize(&rows);
        assert_eq!(stats.len(), 2);
        let v4 = &stats[0];
        assert_eq!((v4.version, v4.invocations, v4.succeeded), (4, 100, 100));
        assert_eq!(
            v4.latency_ms,
            Percentiles {
                p50: 50.0,
                p99: 99.0
            }
        );
        assert_eq!(v4.cache_hit_rate, 0.25);
        assert_eq!((v4.prompt_tokens, v4.completion_tokens), (1000, 500));
        assert!(v4.errors.is_empty());
        let v5 = &stats[1];
        assert_eq!((v5.invocations, v5.succeeded), (4, 1));
        assert_eq!(v5.errors.get("timeout"), Some(&2));
        assert_eq!(v5.errors.get("cancelled"), Some(&1));
        assert_eq!(v5.latency_ms, Percentiles { p50: 7.0, p99: 7.0 });
        assert_eq!(
            v5.ttft_ms,
            Percentiles {
                p50: 1.75,
                p99: 1.75
            }
        );
    }
}
