//! Batches: many queued invocations of one function version, committed together.

use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, DbErr, EntityTrait, FromQueryResult, QueryFilter, QueryOrder, QuerySelect,
};
use uuid::Uuid;

use super::entities::{batch, invocation};
use super::{InvocationRow, Store};

pub type BatchRow = batch::Model;

impl Store {
    /// Commits the batch and all its invocations, or nothing.
    pub async fn create_batch(
        &self,
        batch: BatchRow,
        rows: Vec<InvocationRow>,
    ) -> Result<(), DbErr> {
        let txn = self.begin_write().await?;
        batch::Entity::insert(batch::ActiveModel::from(batch))
            .exec_without_returning(&txn)
            .await?;
        super::jobs::insert_invocations_in(&txn, rows).await?;
        txn.commit().await
    }

    pub async fn batch(&self, tenant: &str, id: Uuid) -> Result<Option<BatchRow>, DbErr> {
        batch::Entity::find_by_id(id)
            .filter(batch::Column::TenantId.eq(tenant))
            .one(&self.db)
            .await
    }

    /// Invocations of a batch by status.
    pub async fn batch_counts(&self, id: Uuid) -> Result<Vec<(String, u64)>, DbErr> {
        #[derive(FromQueryResult)]
        struct Count {
            status: String,
            n: i64,
        }
        let rows = invocation::Entity::find()
            .select_only()
            .column(invocation::Column::Status)
            .column_as(Expr::col(invocation::Column::Id).count(), "n")
            .filter(invocation::Column::BatchId.eq(id))
            .group_by(invocation::Column::Status)
            .into_model::<Count>()
            .all(&self.db)
            .await?;
        Ok(rows
            .into_iter()
            .map(|c| (c.status, c.n.max(0) as u64))
            .collect())
    }

    /// A batch's invocations in input order.
    pub async fn batch_items(&self, id: Uuid) -> Result<Vec<InvocationRow>, DbErr> {
        invocation::Entity::find()
            .filter(invocation::Column::BatchId.eq(id))
            .order_by_asc(invocation::Column::BatchIndex)
            .all(&self.db)
            .await
    }
}
