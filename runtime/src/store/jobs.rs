//! The durable queue of asynchronous invocations, kept in the `invocations` table itself so
//! that the row the API reads is the row the workers lease: there is one source of truth for
//! an invocation's status, and enqueueing is one insert committed before the client gets its
//! id.
//!
//! Leasing: a worker claims due `queued` rows by setting `status = running`, its node id and a
//! lease expiry in one UPDATE ... RETURNING (on Postgres the candidate rows are locked with
//! `FOR UPDATE SKIP LOCKED`, so concurrent nodes never claim the same row; SQLite serialises
//! writers, and its database belongs to one process). Every later write to a leased row is
//! guarded by `lease_owner = me AND status = running`, so a node whose lease was reclaimed
//! cannot overwrite the result of the node that took over: each invocation ends once.

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use sea_orm::sea_query::{
    Expr, IntoColumnRef, LockBehavior, LockType, Query, SelectStatement, SimpleExpr,
    SubQueryStatement,
};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseBackend, DbErr, EntityTrait, FromQueryResult,
    QueryFilter, QuerySelect,
};
use uuid::Uuid;

use super::entities::{invocation, webhook_delivery};
use super::{InvocationRow, Store};

pub type DeliveryRow = webhook_delivery::Model;

/// `column IN (due)`, for an UPDATE that leases the rows `due` selects (with `LIMIT n` and,
/// on Postgres, `FOR UPDATE SKIP LOCKED`), such that at most `n` rows are leased.
///
/// On Postgres, `id IN (SELECT ... LIMIT n FOR UPDATE SKIP LOCKED)` can update more than `n`
/// rows: on a small or freshly created table the planner picks a nested-loop semi join that
/// runs the subquery again for every row it scans, and each run skips the rows the statement
/// has just updated (they are locked now) and locks the next ones. A node then leased work
/// far beyond its `queue.concurrency` (19 rows for a limit of 8 right after start, found by
/// the crash test), which breaks the concurrency bound and the fair share between tenants,
/// and leaves leased work waiting in the model's queue while its function timeout runs.
/// `ARRAY(...)` is an init plan: evaluated once, before the update scans. SQLite evaluates
/// `IN (SELECT ...)` once already.
pub(super) fn claimed_ids(
    backend: DatabaseBackend,
    column: impl IntoColumnRef,
    due: SelectStatement,
) -> SimpleExpr {
    match backend {
        DatabaseBackend::Postgres => Expr::cust_with_exprs(
            "$1 = ANY(ARRAY $2)",
            [
                Expr::col(column).into(),
                SimpleExpr::SubQuery(None, Box::new(SubQueryStatement::SelectStatement(due))),
            ],
        ),
        _ => Expr::col(column).in_subquery(due),
    }
}

/// How a leased invocation ended, as written back.
#[derive(Debug, Clone)]
pub enum JobEnd {
    /// The finished row (status `succeeded`, `failed` or `cancelled` with outputs or error).
    Done(Box<InvocationRow>),
    /// Back to the queue, due at `run_after`, with the error that made it retry.
    Retry {
        run_after: DateTime<Utc>,
        error_code: String,
        error_message: String,
        /// False when the failure was not the invocation's fault (overload), so that it does
        /// not use up an attempt.
        count_attempt: bool,
    },
}

/// Inserts invocation rows within a transaction, in the record writer's chunks (see
/// [`Store::invocations_insert`]: the statements stay prepared).
pub(super) async fn insert_invocations_in(
    txn: &sea_orm::DatabaseTransaction,
    rows: Vec<InvocationRow>,
) -> Result<(), DbErr> {
    for insert in super::invocation_inserts(txn.get_database_backend(), &rows, false) {
        txn.execute(insert).await?;
    }
    Ok(())
}

impl Store {
    pub fn backend(&self) -> DatabaseBackend {
        self.db.get_database_backend()
    }

    /// Commits queued invocations (one transaction, so a batch is all or nothing).
    pub async fn enqueue(&self, rows: Vec<InvocationRow>) -> Result<(), DbErr> {
        let txn = self.begin_write().await?;
        insert_invocations_in(&txn, rows).await?;
        txn.commit().await
    }

    /// Queued invocations of every tenant and node: the queue depth an autoscaler reads.
    pub async fn count_queued(&self) -> Result<u64, DbErr> {
        use sea_orm::PaginatorTrait;
        invocation::Entity::find()
            .filter(invocation::Column::Status.eq("queued"))
            .count(&self.db)
            .await
    }

    /// Tenants with due queued work, so that claims can take from each in turn.
    pub async fn tenants_with_queued_work(&self, now: DateTime<Utc>) -> Result<Vec<String>, DbErr> {
        #[derive(FromQueryResult)]
        struct T {
            tenant_id: String,
        }
        let rows = invocation::Entity::find()
            .select_only()
            .column(invocation::Column::TenantId)
            .distinct()
            .filter(invocation::Column::Status.eq("queued"))
            .filter(
                invocation::Column::RunAfter
                    .is_null()
                    .or(invocation::Column::RunAfter.lte(now)),
            )
            .limit(256)
            .into_model::<T>()
            .all(&self.db)
            .await?;
        Ok(rows.into_iter().map(|t| t.tenant_id).collect())
    }

    /// Leases up to `limit` due queued invocations of one tenant, oldest first.
    pub async fn claim(
        &self,
        tenant: &str,
        node: &str,
        limit: u64,
        lease: std::time::Duration,
    ) -> Result<Vec<InvocationRow>, DbErr> {
        let now = Utc::now();
        let expires = now + ChronoDuration::from_std(lease).unwrap_or_default();
        let mut due = Query::select();
        due.column(invocation::Column::Id)
            .from(invocation::Entity)
            .and_where(invocation::Column::Status.eq("queued"))
            .and_where(invocation::Column::TenantId.eq(tenant))
            .and_where(
                invocation::Column::RunAfter
                    .is_null()
                    .or(invocation::Column::RunAfter.lte(now)),
            )
            .order_by(invocation::Column::Id, sea_orm::Order::Asc)
            .limit(limit);
        if self.backend() == DatabaseBackend::Postgres {
            due.lock_with_behavior(LockType::Update, LockBehavior::SkipLocked);
        }
        let update = Query::update()
            .table(invocation::Entity)
            .value(invocation::Column::Status, "running")
            .value(invocation::Column::LeaseOwner, node)
            .value(invocation::Column::LeaseExpiresAt, expires)
            .value(
                invocation::Column::Attempts,
                Expr::col(invocation::Column::Attempts).add(1),
            )
            .value(
                invocation::Column::StartedAt,
                Expr::col(invocation::Column::StartedAt).if_null(now),
            )
            .and_where(claimed_ids(self.backend(), invocation::Column::Id, due))
            // Checked again: on Postgres the subquery's snapshot may predate a concurrent
            // claim that committed while this statement waited.
            .and_where(invocation::Column::Status.eq("queued"))
            .returning_all()
            .to_owned();
        let statement = self.backend().build(&update);
        let mut rows = InvocationRow::find_by_statement(statement)
            .all(&self.db)
            .await?;
        rows.sort_by_key(|r| r.id);
        Ok(rows)
    }

    /// Extends this node's leases; returns the ids among them whose cancellation was asked
    /// for (possibly through another node).
    pub async fn heartbeat(
        &self,
        node: &str,
        ids: &[Uuid],
        lease: std::time::Duration,
    ) -> Result<Vec<Uuid>, DbErr> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let expires = Utc::now() + ChronoDuration::from_std(lease).unwrap_or_default();
        invocation::Entity::update_many()
            .col_expr(invocation::Column::LeaseExpiresAt, Expr::value(expires))
            .filter(invocation::Column::LeaseOwner.eq(node))
            .filter(invocation::Column::Status.eq("running"))
            .filter(invocation::Column::Id.is_in(ids.iter().copied()))
            .exec(&self.db)
            .await?;
        self.cancel_requested(node, ids).await
    }

    pub async fn cancel_requested(&self, node: &str, ids: &[Uuid]) -> Result<Vec<Uuid>, DbErr> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        #[derive(FromQueryResult)]
        struct Id {
            id: Uuid,
        }
        let rows = invocation::Entity::find()
            .select_only()
            .column(invocation::Column::Id)
            .filter(invocation::Column::LeaseOwner.eq(node))
            .filter(invocation::Column::Status.eq("running"))
            .filter(invocation::Column::CancelRequested.eq(true))
            .filter(invocation::Column::Id.is_in(ids.iter().copied()))
            .into_model::<Id>()
            .all(&self.db)
            .await?;
        Ok(rows.into_iter().map(|r| r.id).collect())
    }

    /// Writes how a leased invocation ended, with the webhook deliveries it causes, in one
    /// transaction. Returns false (and writes nothing) when this node no longer holds the
    /// lease: whoever reclaimed it will finish it.
    pub async fn finish_job(
        &self,
        id: Uuid,
        node: &str,
        end: JobEnd,
        deliveries: Vec<DeliveryRow>,
    ) -> Result<bool, DbErr> {
        let txn = self.begin_write().await?;
        let mut update = invocation::Entity::update_many()
            .col_expr(invocation::Column::LeaseOwner, Expr::value(None::<String>))
            .col_expr(
                invocation::Column::LeaseExpiresAt,
                Expr::value(None::<DateTime<Utc>>),
            );
        match &end {
            JobEnd::Done(row) => {
                update = update
                    .col_expr(invocation::Column::Status, Expr::value(row.status.clone()))
                    .col_expr(invocation::Column::Model, Expr::value(row.model.clone()))
                    .col_expr(
                        invocation::Column::OutputText,
                        Expr::value(row.output_text.clone()),
                    )
                    .col_expr(
                        invocation::Column::OutputJson,
                        Expr::value(row.output_json.clone()),
                    )
                    .col_expr(
                        invocation::Column::FinishReason,
                        Expr::value(row.finish_reason.clone()),
                    )
                    .col_expr(
                        invocation::Column::ErrorCode,
                        Expr::value(row.error_code.clone()),
                    )
                    .col_expr(
                        invocation::Column::ErrorMessage,
                        Expr::value(row.error_message.clone()),
                    )
                    .col_expr(
                        invocation::Column::PromptTokens,
                        Expr::value(row.prompt_tokens),
                    )
                    .col_expr(
                        invocation::Column::CompletionTokens,
                        Expr::value(row.completion_tokens),
                    )
                    .col_expr(
                        invocation::Column::CachedPromptTokens,
                        Expr::value(row.cached_prompt_tokens),
                    )
                    .col_expr(invocation::Column::PrefillMs, Expr::value(row.prefill_ms))
                    .col_expr(invocation::Column::CacheHit, Expr::value(row.cache_hit))
                    .col_expr(invocation::Column::LoadMs, Expr::value(row.load_ms))
                    .col_expr(invocation::Column::QueueMs, Expr::value(row.queue_ms))
                    .col_expr(invocation::Column::TtftMs, Expr::value(row.ttft_ms))
                    .col_expr(invocation::Column::TotalMs, Expr::value(row.total_ms))
                    .col_expr(
                        invocation::Column::CompletedAt,
                        Expr::value(row.completed_at),
                    );
            }
            JobEnd::Retry {
                run_after,
                error_code,
                error_message,
                count_attempt,
            } => {
                update = update
                    .col_expr(invocation::Column::Status, Expr::value("queued"))
                    .col_expr(invocation::Column::RunAfter, Expr::value(*run_after))
                    .col_expr(
                        invocation::Column::ErrorCode,
                        Expr::value(error_code.clone()),
                    )
                    .col_expr(
                        invocation::Column::ErrorMessage,
                        Expr::value(error_message.clone()),
                    );
                if !count_attempt {
                    update = update.col_expr(
                        invocation::Column::Attempts,
                        Expr::col(invocation::Column::Attempts).sub(1),
                    );
                }
            }
        }
        let result = update
            .filter(invocation::Column::Id.eq(id))
            .filter(invocation::Column::LeaseOwner.eq(node))
            .filter(invocation::Column::Status.eq("running"))
            .exec(&txn)
            .await?;
        if result.rows_affected == 0 {
            txn.rollback().await?;
            return Ok(false);
        }
        if !deliveries.is_empty() {
            webhook_delivery::Entity::insert_many(
                deliveries
                    .into_iter()
                    .map(webhook_delivery::ActiveModel::from),
            )
            .exec_without_returning(&txn)
            .await?;
        }
        txn.commit().await?;
        Ok(true)
    }

    /// Puts back expired leases (their holder died or lost the database). With `everyone`,
    /// every running async invocation is put back: used at start on SQLite, whose database
    /// only this process uses, so whatever was running belonged to a previous run of it.
    /// An invocation that has used all its attempts fails instead, so that work that kills
    /// its node cannot loop forever.
    pub async fn reclaim_leases(&self, everyone: bool) -> Result<u64, DbErr> {
        let now = Utc::now();
        let expired = |q: sea_orm::UpdateMany<invocation::Entity>| {
            let q = q
                .filter(invocation::Column::Status.eq("running"))
                .filter(invocation::Column::Mode.ne("sync"))
                .filter(invocation::Column::Mode.ne("stream"));
            if everyone {
                q
            } else {
                q.filter(invocation::Column::LeaseExpiresAt.lt(now))
            }
        };
        let failed = expired(invocation::Entity::update_many())
            .filter(
                Expr::col(invocation::Column::Attempts)
                    .gte(Expr::col(invocation::Column::MaxAttempts)),
            )
            .col_expr(invocation::Column::Status, Expr::value("failed"))
            .col_expr(invocation::Column::ErrorCode, Expr::value("lease_expired"))
            .col_expr(
                invocation::Column::ErrorMessage,
                Expr::value("the node running it stopped answering on every attempt"),
            )
            .col_expr(invocation::Column::CompletedAt, Expr::value(now))
            .col_expr(invocation::Column::LeaseOwner, Expr::value(None::<String>))
            .exec(&self.db)
            .await?;
        let requeued = expired(invocation::Entity::update_many())
            .col_expr(invocation::Column::Status, Expr::value("queued"))
            .col_expr(invocation::Column::LeaseOwner, Expr::value(None::<String>))
            .col_expr(
                invocation::Column::LeaseExpiresAt,
                Expr::value(None::<DateTime<Utc>>),
            )
            .exec(&self.db)
            .await?;
        Ok(failed.rows_affected + requeued.rows_affected)
    }

    /// Hands this node's leases back at shutdown, without using up an attempt.
    pub async fn release_leases(&self, node: &str) -> Result<u64, DbErr> {
        let result = invocation::Entity::update_many()
            .col_expr(invocation::Column::Status, Expr::value("queued"))
            .col_expr(invocation::Column::LeaseOwner, Expr::value(None::<String>))
            .col_expr(
                invocation::Column::LeaseExpiresAt,
                Expr::value(None::<DateTime<Utc>>),
            )
            .col_expr(
                invocation::Column::Attempts,
                Expr::col(invocation::Column::Attempts).sub(1),
            )
            .filter(invocation::Column::LeaseOwner.eq(node))
            .filter(invocation::Column::Status.eq("running"))
            .exec(&self.db)
            .await?;
        Ok(result.rows_affected)
    }

    /// Cancels a queued invocation at once, or asks for a running one to stop. Returns the
    /// row as it now is, or `None` when the tenant has no such invocation.
    pub async fn request_cancel(
        &self,
        tenant: &str,
        id: Uuid,
    ) -> Result<Option<InvocationRow>, DbErr> {
        let now = Utc::now();
        invocation::Entity::update_many()
            .col_expr(invocation::Column::Status, Expr::value("cancelled"))
            .col_expr(invocation::Column::CancelRequested, Expr::value(true))
            .col_expr(invocation::Column::ErrorCode, Expr::value("cancelled"))
            .col_expr(
                invocation::Column::ErrorMessage,
                Expr::value("cancelled before it started"),
            )
            .col_expr(invocation::Column::CompletedAt, Expr::value(now))
            .filter(invocation::Column::Id.eq(id))
            .filter(invocation::Column::TenantId.eq(tenant))
            .filter(invocation::Column::Status.eq("queued"))
            .exec(&self.db)
            .await?;
        invocation::Entity::update_many()
            .col_expr(invocation::Column::CancelRequested, Expr::value(true))
            .filter(invocation::Column::Id.eq(id))
            .filter(invocation::Column::TenantId.eq(tenant))
            .filter(invocation::Column::Status.eq("running"))
            .exec(&self.db)
            .await?;
        invocation::Entity::find_by_id(id)
            .filter(invocation::Column::TenantId.eq(tenant))
            .one(&self.db)
            .await
    }
}

impl Store {
    pub async fn insert_deliveries(&self, rows: Vec<DeliveryRow>) -> Result<(), DbErr> {
        if rows.is_empty() {
            return Ok(());
        }
        webhook_delivery::Entity::insert_many(
            rows.into_iter().map(webhook_delivery::ActiveModel::from),
        )
        .exec_without_returning(&self.db)
        .await
        .map(|_| ())
    }
}

/// Filters of an invocation listing.
#[derive(Debug, Clone, Default)]
pub struct InvocationFilter {
    pub function: Option<String>,
    pub status: Option<String>,
    pub mode: Option<String>,
    /// Made at or after / before these times.
    pub from: Option<chrono::DateTime<chrono::Utc>>,
    pub to: Option<chrono::DateTime<chrono::Utc>>,
    pub batch: Option<Uuid>,
    /// Only invocations older than this id (ids are time-ordered UUIDv7).
    pub before: Option<Uuid>,
}

impl Store {
    /// A tenant's invocations, newest first.
    pub async fn list_invocations(
        &self,
        tenant: &str,
        filter: &InvocationFilter,
        limit: u64,
    ) -> Result<Vec<InvocationRow>, DbErr> {
        use sea_orm::QueryOrder;
        let mut query = invocation::Entity::find().filter(invocation::Column::TenantId.eq(tenant));
        if let Some(f) = &filter.function {
            query = query.filter(invocation::Column::FunctionName.eq(f.as_str()));
        }
        if let Some(s) = &filter.status {
            query = query.filter(invocation::Column::Status.eq(s.as_str()));
        }
        if let Some(m) = &filter.mode {
            query = query.filter(invocation::Column::Mode.eq(m.as_str()));
        }
        if let Some(from) = filter.from {
            query = query.filter(invocation::Column::CreatedAt.gte(from));
        }
        if let Some(to) = filter.to {
            query = query.filter(invocation::Column::CreatedAt.lt(to));
        }
        if let Some(b) = filter.batch {
            query = query.filter(invocation::Column::BatchId.eq(b));
        }
        if let Some(before) = filter.before {
            query = query.filter(invocation::Column::Id.lt(before));
        }
        query
            .order_by_desc(invocation::Column::Id)
            .limit(limit)
            .all(&self.db)
            .await
    }
}

#[cfg(test)]
mod tests {
    use sea_orm::sea_query::{PostgresQueryBuilder, SqliteQueryBuilder};

    use super::*;

    fn lease_update(backend: DatabaseBackend) -> sea_orm::sea_query::UpdateStatement {
        let mut due = Query::select();
        due.column(invocation::Column::Id)
            .from(invocation::Entity)
            .and_where(invocation::Column::Status.eq("queued"))
            .and_where(invocation::Column::TenantId.eq("acme"))
            .limit(8);
        if backend == DatabaseBackend::Postgres {
            due.lock_with_behavior(LockType::Update, LockBehavior::SkipLocked);
        }
        Query::update()
            .table(invocation::Entity)
            .value(invocation::Column::LeaseOwner, "node-a")
            .and_where(claimed_ids(backend, invocation::Column::Id, due))
            .and_where(invocation::Column::Status.eq("queued"))
            .to_owned()
    }

    #[test]
    fn postgres_leases_select_their_rows_once_in_an_init_plan() {
        let (sql, values) = lease_update(DatabaseBackend::Postgres).build(PostgresQueryBuilder);
        assert!(
            sql.contains(r#""id" = ANY(ARRAY (SELECT "id" FROM "invocations" WHERE "#),
            "{sql}"
        );
        assert!(sql.contains("LIMIT $4 FOR UPDATE SKIP LOCKED))"), "{sql}");
        // The subquery's values are bound in order with the statement's own.
        assert!(sql.ends_with(r#""status" = $5"#), "{sql}");
        assert_eq!(values.0.len(), 5);
    }

    #[test]
    fn sqlite_leases_keep_the_plain_subquery() {
        let (sql, values) = lease_update(DatabaseBackend::Sqlite).build(SqliteQueryBuilder);
        assert!(
            sql.contains(r#""id" IN (SELECT "id" FROM "invocations" WHERE "#),
            "{sql}"
        );
        assert!(!sql.contains("ARRAY"), "{sql}");
        assert_eq!(values.0.len(), 5);
    }
}
