//! Usage aggregates for the business view: invocations, tokens, cache hits and errors per
//! function, day, mode or error code.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Alias, Expr, Func, SimpleExpr};
use sea_orm::{
    ColumnTrait, DatabaseBackend, DbErr, EntityTrait, FromQueryResult, QueryFilter, QueryOrder,
    QuerySelect,
};

use super::entities::invocation;
use super::Store;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageGroup {
    Function,
    Day,
    Mode,
    /// Failed invocations by error code.
    ErrorCode,
}

#[derive(Debug, Clone, FromQueryResult)]
pub struct UsageRow {
    pub key: String,
    pub invocations: i64,
    pub prompt_tokens: Option<i64>,
    pub completion_tokens: Option<i64>,
    pub cache_hits: Option<i64>,
    pub errors: Option<i64>,
    /// The newest invocation of the group.
    pub last_at: Option<DateTime<Utc>>,
}

impl Store {
    pub async fn usage(
        &self,
        tenant: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        group: UsageGroup,
    ) -> Result<Vec<UsageRow>, DbErr> {
        let key: SimpleExpr = match (group, self.backend()) {
            (UsageGroup::Function, _) => Expr::col(invocation::Column::FunctionName).into(),
            (UsageGroup::Mode, _) => Expr::col(invocation::Column::Mode).into(),
            (UsageGroup::ErrorCode, _) => Expr::col(invocation::Column::ErrorCode).into(),
            // Timestamps are stored as RFC 3339 text on SQLite: the date is its first 10
            // characters, already in UTC.
            (UsageGroup::Day, DatabaseBackend::Sqlite) => Expr::cust("substr(created_at, 1, 10)"),
            (UsageGroup::Day, _) => {
                Expr::cust("to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')")
            }
        };
        let flag =
            |cond: SimpleExpr| -> SimpleExpr { Func::sum(Expr::case(cond, 1).finally(0)).into() };
        let mut query = invocation::Entity::find();
        if group == UsageGroup::ErrorCode {
            query = query.filter(invocation::Column::ErrorCode.is_not_null());
        }
        query
            .select_only()
            .column_as(key.clone(), "key")
            .column_as(Expr::col(invocation::Column::Id).count(), "invocations")
            .column_as(
                Expr::col(invocation::Column::PromptTokens).sum(),
                "prompt_tokens",
            )
            .column_as(
                Expr::col(invocation::Column::CompletionTokens).sum(),
                "completion_tokens",
            )
            .column_as(flag(invocation::Column::CacheHit.eq(true)), "cache_hits")
            .column_as(flag(invocation::Column::Status.eq("failed")), "errors")
            .column_as(Expr::col(invocation::Column::CreatedAt).max(), "last_at")
            .filter(invocation::Column::TenantId.eq(tenant))
            .filter(invocation::Column::CreatedAt.gte(from))
            .filter(invocation::Column::CreatedAt.lt(to))
            .group_by(key)
            .order_by_asc(Expr::col(Alias::new("key")))
            .into_model::<UsageRow>()
            .all(&self.db)
            .await
    }
}
