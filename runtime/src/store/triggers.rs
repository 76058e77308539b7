//! Incoming webhook triggers and the message ids they accepted (replay protection).

use chrono::{DateTime, Utc};
use sea_orm::{ColumnTrait, DbErr, EntityTrait, QueryFilter, QueryOrder, SqlErr};

use super::entities::{invocation, trigger, trigger_receipt};
use super::{InvocationRow, Store};

pub type TriggerRow = trigger::Model;

impl Store {
    pub async fn insert_trigger(&self, row: TriggerRow) -> Result<(), DbErr> {
        trigger::Entity::insert(trigger::ActiveModel::from(row))
            .exec_without_returning(&self.db)
            .await
            .map(|_| ())
    }

    /// A trigger by id alone: the id in the hook URL is the capability, checked together with
    /// the signature.
    pub async fn trigger(&self, id: &str) -> Result<Option<TriggerRow>, DbErr> {
        trigger::Entity::find_by_id(id.to_owned())
            .one(&self.db)
            .await
    }

    pub async fn list_triggers(
        &self,
        tenant: &str,
        function: &str,
    ) -> Result<Vec<TriggerRow>, DbErr> {
        trigger::Entity::find()
            .filter(trigger::Column::TenantId.eq(tenant))
            .filter(trigger::Column::FunctionName.eq(function))
            .order_by_asc(trigger::Column::CreatedAt)
            .all(&self.db)
            .await
    }

    pub async fn delete_trigger(&self, tenant: &str, id: &str) -> Result<bool, DbErr> {
        let result = trigger::Entity::delete_many()
            .filter(trigger::Column::Id.eq(id))
            .filter(trigger::Column::TenantId.eq(tenant))
            .exec(&self.db)
            .await?;
        Ok(result.rows_affected > 0)
    }

    /// Records the message id and commits the invocation it starts, together. Returns false
    /// (and commits nothing) when the id was seen before: a replay.
    pub async fn accept_trigger_message(
        &self,
        trigger_id: &str,
        message_id: &str,
        row: InvocationRow,
    ) -> Result<bool, DbErr> {
        let txn = self.begin_write().await?;
        let receipt = trigger_receipt::ActiveModel::from(trigger_receipt::Model {
            trigger_id: trigger_id.to_owned(),
            message_id: message_id.to_owned(),
            received_at: Utc::now(),
        });
        match trigger_receipt::Entity::insert(receipt)
            .exec_without_returning(&txn)
            .await
        {
            Ok(_) => {}
            Err(err) if matches!(err.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
                txn.rollback().await?;
                return Ok(false);
            }
            Err(err) => return Err(err),
        }
        invocation::Entity::insert(invocation::ActiveModel::from(row))
            .exec_without_returning(&txn)
            .await?;
        txn.commit().await?;
        Ok(true)
    }

    /// Forgets message ids older than `before`: by then their timestamps are refused anyway.
    pub async fn purge_trigger_receipts(&self, before: DateTime<Utc>) -> Result<u64, DbErr> {
        let result = trigger_receipt::Entity::delete_many()
            .filter(trigger_receipt::Column::ReceivedAt.lt(before))
            .exec(&self.db)
            .await?;
        Ok(result.rows_affected)
    }
}
