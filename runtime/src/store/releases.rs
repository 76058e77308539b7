//! Aliases of a function, the history of their changes and the evaluation scores of its
//! versions. Every change to an alias and its history row are written in one transaction, so
//! the history is the complete record a rollback reads.

use chrono::{DateTime, Utc};
use genrt_functions::{AliasName, AliasTarget, FunctionName, TenantId};
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, Set,
};

use super::entities::{
    alias_event, function, function_alias, function_version, invocation, version_score,
};
use super::Store;

pub type AliasEventRow = alias_event::Model;

/// An invocation's version, status and text, for comparing a shadow with its primary.
#[derive(Debug, Clone, sea_orm::FromQueryResult)]
pub struct OutputRow {
    pub id: uuid::Uuid,
    pub shadow_of: Option<uuid::Uuid>,
    pub function_version: i32,
    pub status: String,
    pub error_code: Option<String>,
    pub output_text: Option<String>,
}

/// A shadow copy and the invocation it mirrored.
#[derive(Debug, Clone)]
pub struct ShadowPair {
    pub shadow: OutputRow,
    pub primary: OutputRow,
}

/// One invocation's outcome, for per-version statistics.
#[derive(Debug, Clone, sea_orm::FromQueryResult)]
pub struct ActivityRow {
    pub function_version: i32,
    pub status: String,
    pub error_code: Option<String>,
    pub total_ms: f64,
    pub ttft_ms: f64,
    pub prompt_tokens: i32,
    pub completion_tokens: i32,
    pub cache_hit: bool,
}
pub type ScoreRow = version_score::Model;

/// An alias as stored.
#[derive(Debug, Clone)]
pub struct StoredAlias {
    pub name: AliasName,
    pub target: AliasTarget,
    pub updated_at: DateTime<Utc>,
}

/// What to do to an alias.
#[derive(Debug, Clone)]
pub enum AliasAction {
    /// Create or move it.
    Set(AliasTarget),
    Delete,
    /// Back to the target before its last change.
    Rollback,
    /// A gated promotion to this target that failed its gate: recorded in the history, the
    /// alias unchanged.
    Refused(AliasTarget),
}

impl AliasAction {
    fn as_str(&self) -> &'static str {
        match self {
            AliasAction::Set(_) => "set",
            AliasAction::Delete => "delete",
            AliasAction::Rollback => "rollback",
            AliasAction::Refused(_) => "refused",
        }
    }
}

/// A change to record with the alias.
pub struct AliasWrite<'a> {
    pub alias: &'a AliasName,
    pub action: AliasAction,
    /// The credential making the change.
    pub actor: &'a str,
    /// A gated promotion's gate and scores (JSON), kept in the history.
    pub gate: Option<String>,
    /// Change only if the alias still points here (`None` inside: it does not exist): a
    /// gated promotion judged against this target must not overwrite a move made while it
    /// was scoring.
    pub expected: Option<Option<AliasTarget>>,
}

/// Why a change was not made; nothing was written.
#[derive(Debug, Clone, PartialEq)]
pub enum AliasRefusal {
    FunctionMissing,
    AliasMissing,
    VersionMissing(u32),
    /// The alias has no earlier target in its history.
    NothingToRollBack,
    /// The alias moved since `expected` was read.
    Moved,
}

impl Store {
    async fn function_id(
        db: &impl ConnectionTrait,
        tenant: &TenantId,
        name: &FunctionName,
    ) -> Result<Option<i64>, DbErr> {
        Ok(function::Entity::find()
            .filter(function::Column::TenantId.eq(tenant.as_str()))
            .filter(function::Column::Name.eq(name.as_str()))
            .one(db)
            .await?
            .map(|f| f.id))
    }

    /// One alias of a function; `None` when the function or the alias does not exist.
    pub async fn alias(
        &self,
        tenant: &TenantId,
        name: &FunctionName,
        alias: &AliasName,
    ) -> Result<Option<StoredAlias>, DbErr> {
        let Some(function_id) = Self::function_id(&self.db, tenant, name).await? else {
            return Ok(None);
        };
        function_alias::Entity::find()
            .filter(function_alias::Column::FunctionId.eq(function_id))
            .filter(function_alias::Column::Name.eq(alias.as_str()))
            .one(&self.db)
            .await?
            .map(decode_alias)
            .transpose()
    }

    /// A function's aliases by name; `None` when the function does not exist.
    pub async fn aliases(
        &self,
        tenant: &TenantId,
        name: &FunctionName,
    ) -> Result<Option<Vec<StoredAlias>>, DbErr> {
        let Some(function_id) = Self::function_id(&self.db, tenant, name).await? else {
            return Ok(None);
        };
        function_alias::Entity::find()
            .filter(function_alias::Column::FunctionId.eq(function_id))
            .order_by_asc(function_alias::Column::Name)
            .all(&self.db)
            .await?
            .into_iter()
            .map(decode_alias)
            .collect::<Result<_, _>>()
            .map(Some)
    }

    /// Creates, moves, deletes or rolls back an alias and records the change.
    pub async fn change_alias(
        &self,
        tenant: &TenantId,
        name: &FunctionName,
        write: AliasWrite<'_>,
    ) -> Result<Result<AliasEventRow, AliasRefusal>, DbErr> {
        let txn = self.begin_write().await?;
        // Changes to one function's aliases are serialised by a lock on its row (Postgres;
        // SQLite's write lock, taken by `begin_write`, serialises every write), so that each
        // history row's `from` is what the change replaced.
        let locked = function::Entity::find()
            .filter(function::Column::TenantId.eq(tenant.as_str()))
            .filter(function::Column::Name.eq(name.as_str()))
            .lock_exclusive()
            .one(&txn)
            .await?;
        let Some(function_id) = locked.map(|f| f.id) else {
            return Ok(Err(AliasRefusal::FunctionMissing));
        };
        let current = function_alias::Entity::find()
            .filter(function_alias::Column::FunctionId.eq(function_id))
            .filter(function_alias::Column::Name.eq(write.alias.as_str()))
            .one(&txn)
            .await?;
        if let Some(expected) = &write.expected {
            let now = current
                .as_ref()
                .map(|c| decode_target(&c.target))
                .transpose()?;
            if &now != expected {
                return Ok(Err(AliasRefusal::Moved));
            }
        }
        if let AliasAction::Refused(proposed) = &write.action {
            let to = Some(encode_target(proposed)?);
            let event = record(&txn, function_id, &write, current.map(|c| c.target), to).await?;
            txn.commit().await?;
            return Ok(Ok(event));
        }
        let next: Option<AliasTarget> = match &write.action {
            AliasAction::Set(target) => Some(target.clone()),
            AliasAction::Refused(_) => unreachable!("recorded above"),
            AliasAction::Delete if current.is_none() => return Ok(Err(AliasRefusal::AliasMissing)),
            AliasAction::Delete => None,
            AliasAction::Rollback => {
                // The last change: refused promotions changed nothing.
                let last = alias_event::Entity::find()
                    .filter(alias_event::Column::FunctionId.eq(function_id))
                    .filter(alias_event::Column::Alias.eq(write.alias.as_str()))
                    .filter(alias_event::Column::Action.ne("refused"))
                    .order_by_desc(alias_event::Column::Id)
                    .one(&txn)
                    .await?;
                match last {
                    None if current.is_none() => return Ok(Err(AliasRefusal::AliasMissing)),
                    Some(alias_event::Model {
                        from_target: Some(previous),
                        ..
                    }) => Some(decode_target(&previous)?),
                    _ => return Ok(Err(AliasRefusal::NothingToRollBack)),
                }
            }
        };
        if let Some(target) = &next {
            let wanted: Vec<i32> = target.referenced().map(|v| v as i32).collect();
            let present: Vec<i32> = function_version::Entity::find()
                .select_only()
                .column(function_version::Column::Version)
                .filter(function_version::Column::FunctionId.eq(function_id))
                .filter(function_version::Column::Version.is_in(wanted.clone()))
                .into_tuple()
                .all(&txn)
                .await?;
            if let Some(missing) = wanted.iter().find(|v| !present.contains(v)) {
                return Ok(Err(AliasRefusal::VersionMissing(*missing as u32)));
            }
        }
        let now = Utc::now();
        match &next {
            Some(target) => {
                let row = function_alias::ActiveModel {
                    function_id: Set(function_id),
                    name: Set(write.alias.as_str().to_owned()),
                    target: Set(encode_target(target)?),
                    updated_at: Set(now),
                    ..Default::default()
                };
                function_alias::Entity::insert(row)
                    .on_conflict(
                        OnConflict::columns([
                            function_alias::Column::FunctionId,
                            function_alias::Column::Name,
                        ])
                        .update_columns([
                            function_alias::Column::Target,
                            function_alias::Column::UpdatedAt,
                        ])
                        .to_owned(),
                    )
                    .exec_without_returning(&txn)
                    .await?;
            }
            None => {
                function_alias::Entity::delete_many()
                    .filter(function_alias::Column::FunctionId.eq(function_id))
                    .filter(function_alias::Column::Name.eq(write.alias.as_str()))
                    .exec(&txn)
                    .await?;
            }
        }
        let to = next.as_ref().map(encode_target).transpose()?;
        let event = record(&txn, function_id, &write, current.map(|c| c.target), to).await?;
        txn.commit().await?;
        Ok(Ok(event))
    }

    /// Changes to a function's aliases (one alias's when given), newest first; `None` when the
    /// function does not exist.
    pub async fn alias_history(
        &self,
        tenant: &TenantId,
        name: &FunctionName,
        alias: Option<&AliasName>,
        limit: u64,
    ) -> Result<Option<Vec<AliasEventRow>>, DbErr> {
        let Some(function_id) = Self::function_id(&self.db, tenant, name).await? else {
            return Ok(None);
        };
        let mut query =
            alias_event::Entity::find().filter(alias_event::Column::FunctionId.eq(function_id));
        if let Some(alias) = alias {
            query = query.filter(alias_event::Column::Alias.eq(alias.as_str()));
        }
        query
            .order_by_desc(alias_event::Column::Id)
            .limit(limit)
            .all(&self.db)
            .await
            .map(Some)
    }

    /// The stored score of a version on one evaluation set.
    pub async fn version_score(
        &self,
        tenant: &TenantId,
        name: &FunctionName,
        version: u32,
        cases_digest: &str,
    ) -> Result<Option<ScoreRow>, DbErr> {
        let Some(function_id) = Self::function_id(&self.db, tenant, name).await? else {
            return Ok(None);
        };
        version_score::Entity::find()
            .filter(version_score::Column::FunctionId.eq(function_id))
            .filter(version_score::Column::Version.eq(version as i32))
            .filter(version_score::Column::CasesDigest.eq(cases_digest))
            .one(&self.db)
            .await
    }

    /// Every stored score of a function's versions, newest evaluation first.
    pub async fn version_scores(
        &self,
        tenant: &TenantId,
        name: &FunctionName,
    ) -> Result<Vec<ScoreRow>, DbErr> {
        let Some(function_id) = Self::function_id(&self.db, tenant, name).await? else {
            return Ok(Vec::new());
        };
        version_score::Entity::find()
            .filter(version_score::Column::FunctionId.eq(function_id))
            .order_by_desc(version_score::Column::EvaluatedAt)
            .all(&self.db)
            .await
    }

    /// Stores (or replaces) a version's score on one evaluation set.
    #[allow(clippy::too_many_arguments)]
    pub async fn save_score(
        &self,
        tenant: &TenantId,
        name: &FunctionName,
        version: u32,
        cases_digest: &str,
        rouge_l: f64,
        bleu: f64,
        cases: u32,
        failed: u32,
    ) -> Result<(), DbErr> {
        let Some(function_id) = Self::function_id(&self.db, tenant, name).await? else {
            return Ok(());
        };
        let row = version_score::ActiveModel {
            function_id: Set(function_id),
            version: Set(version as i32),
            cases_digest: Set(cases_digest.to_owned()),
            rouge_l: Set(rouge_l),
            bleu: Set(bleu),
            cases: Set(cases as i32),
            failed: Set(failed as i32),
            evaluated_at: Set(Utc::now()),
            ..Default::default()
        };
        version_score::Entity::insert(row)
            .on_conflict(
                OnConflict::columns([
                    version_score::Column::FunctionId,
                    version_score::Column::Version,
                    version_score::Column::CasesDigest,
                ])
                .update_columns([
                    version_score::Column::RougeL,
                    version_score::Column::Bleu,
                    version_score::Column::Cases,
                    version_score::Column::Failed,
                    version_score::Column::EvaluatedAt,
                ])
                .to_owned(),
            )
            .exec_without_returning(&self.db)
            .await?;
        Ok(())
    }

    /// The outcome of a function's invocations since `since`, newest first, at most `limit`:
    /// what per-version statistics are computed from. Evaluations, prewarms and shadow
    /// copies are left out: they are not traffic.
    pub async fn version_activity(
        &self,
        tenant: &TenantId,
        name: &FunctionName,
        since: DateTime<Utc>,
        limit: u64,
    ) -> Result<Vec<ActivityRow>, DbErr> {
        invocation::Entity::find()
            .select_only()
            .column(invocation::Column::FunctionVersion)
            .column(invocation::Column::Status)
            .column(invocation::Column::ErrorCode)
            .column(invocation::Column::TotalMs)
            .column(invocation::Column::TtftMs)
            .column(invocation::Column::PromptTokens)
            .column(invocation::Column::CompletionTokens)
            .column(invocation::Column::CacheHit)
            .filter(invocation::Column::TenantId.eq(tenant.as_str()))
            .filter(invocation::Column::FunctionName.eq(name.as_str()))
            .filter(invocation::Column::CreatedAt.gte(since))
            .filter(invocation::Column::Mode.is_not_in(["evaluate", "prewarm", "shadow"]))
            .order_by_desc(invocation::Column::CreatedAt)
            .limit(limit)
            .into_model::<ActivityRow>()
            .all(&self.db)
            .await
    }

    /// A function's shadow copies since `since` (newest first, at most `limit`), each with the
    /// invocation it mirrored: what the comparison of a shadow version with its primaries is
    /// computed from.
    pub async fn shadow_pairs(
        &self,
        tenant: &TenantId,
        name: &FunctionName,
        since: DateTime<Utc>,
        limit: u64,
    ) -> Result<Vec<ShadowPair>, DbErr> {
        let shadows: Vec<OutputRow> = output_rows()
            .filter(invocation::Column::TenantId.eq(tenant.as_str()))
            .filter(invocation::Column::FunctionName.eq(name.as_str()))
            .filter(invocation::Column::CreatedAt.gte(since))
            .filter(invocation::Column::Mode.eq("shadow"))
            .filter(invocation::Column::ShadowOf.is_not_null())
            .order_by_desc(invocation::Column::CreatedAt)
            .limit(limit)
            .into_model::<OutputRow>()
            .all(&self.db)
            .await?;
        let mut primaries = std::collections::HashMap::new();
        let ids: Vec<uuid::Uuid> = shadows.iter().filter_map(|s| s.shadow_of).collect();
        // In chunks: a statement's parameters are bounded (SQLite: 32766).
        for chunk in ids.chunks(500) {
            let rows: Vec<OutputRow> = output_rows()
                .filter(invocation::Column::TenantId.eq(tenant.as_str()))
                .filter(invocation::Column::Id.is_in(chunk.iter().copied()))
                .into_model::<OutputRow>()
                .all(&self.db)
                .await?;
            primaries.extend(rows.into_iter().map(|r| (r.id, r)));
        }
        Ok(shadows
            .into_iter()
            .filter_map(|shadow| {
                let primary = primaries.get(&shadow.shadow_of?)?.clone();
                Some(ShadowPair { shadow, primary })
            })
            .collect())
    }

    /// Deletes what belongs to a function besides its versions (inside its delete).
    pub(super) async fn delete_releases(
        db: &impl ConnectionTrait,
        function_id: i64,
    ) -> Result<(), DbErr> {
        function_alias::Entity::delete_many()
            .filter(function_alias::Column::FunctionId.eq(function_id))
            .exec(db)
            .await?;
        alias_event::Entity::delete_many()
            .filter(alias_event::Column::FunctionId.eq(function_id))
            .exec(db)
            .await?;
        version_score::Entity::delete_many()
            .filter(version_score::Column::FunctionId.eq(function_id))
            .exec(db)
            .await?;
        Ok(())
    }
}

/// A query of the columns of [`OutputRow`].
fn output_rows() -> sea_orm::Select<invocation::Entity> {
    invocation::Entity::find()
        .select_only()
        .column(invocation::Column::Id)
        .column(invocation::Column::ShadowOf)
        .column(invocation::Column::FunctionVersion)
        .column(invocation::Column::Status)
        .column(invocation::Column::ErrorCode)
        .column(invocation::Column::OutputText)
}

/// The history row of a change (or a refusal), written in the change's transaction.
async fn record(
    txn: &impl ConnectionTrait,
    function_id: i64,
    write: &AliasWrite<'_>,
    from: Option<String>,
    to: Option<String>,
) -> Result<AliasEventRow, DbErr> {
    alias_event::ActiveModel {
        function_id: Set(function_id),
        alias: Set(write.alias.as_str().to_owned()),
        action: Set(write.action.as_str().to_owned()),
        from_target: Set(from),
        to_target: Set(to),
        actor: Set(write.actor.chars().take(160).collect()),
        gate: Set(write.gate.clone()),
        at: Set(Utc::now()),
        ..Default::default()
    }
    .insert(txn)
    .await
}

pub(crate) fn decode_target(json: &str) -> Result<AliasTarget, DbErr> {
    serde_json::from_str(json).map_err(|e| DbErr::Custom(format!("stored alias target: {e}")))
}

fn encode_target(target: &AliasTarget) -> Result<String, DbErr> {
    serde_json::to_string(target).map_err(|e| DbErr::Custom(e.to_string()))
}

fn decode_alias(row: function_alias::Model) -> Result<StoredAlias, DbErr> {
    Ok(StoredAlias {
        name: AliasName::parse(&row.name)
            .map_err(|e| DbErr::Custom(format!("stored alias name: {e}")))?,
        target: decode_target(&row.target)?,
        updated_at: row.updated_at,
    })
}
