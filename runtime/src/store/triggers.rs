//! Incoming webhook triggers and the receipts of the messages they accepted (replay
//! protection): each receipt is keyed by what the message's signature covers
//! ([`crate::webhooks::signing::Verified::receipt_keys`]).

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

    /// Whether any of a message's receipt keys is kept: a cheap check before the message uses
    /// the tenant's rate limit or renders anything. [`Self::accept_trigger_message`] decides.
    pub async fn trigger_message_seen(
        &self,
        trigger_id: &str,
        keys: &[String],
    ) -> Result<bool, DbErr> {
        if keys.is_empty() {
            return Ok(false);
        }
        Ok(trigger_receipt::Entity::find()
            .filter(trigger_receipt::Column::TriggerId.eq(trigger_id))
            .filter(trigger_receipt::Column::MessageId.is_in(keys.iter().cloned()))
            .one(&self.db)
            .await?
            .is_some())
    }

    /// Records every receipt key of the message and commits the invocation it starts, in one
    /// transaction. Returns false (and commits nothing) when any key was kept already: a
    /// replay.
    pub async fn accept_trigger_message(
        &self,
        trigger_id: &str,
        keys: &[String],
        row: InvocationRow,
    ) -> Result<bool, DbErr> {
        let txn = self.begin_write().await?;
        let now = Utc::now();
        for key in keys {
            let receipt = trigger_receipt::ActiveModel::from(trigger_receipt::Model {
                trigger_id: trigger_id.to_owned(),
                message_id: key.clone(),
                received_at: now,
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
        }
        invocation::Entity::insert(invocation::ActiveModel::from(row))
            .exec_without_returning(&txn)
            .await?;
        txn.commit().await?;
        Ok(true)
    }

    /// Forgets receipts older than `before` (now less `webhooks.trigger_receipt_retention_s`).
    pub async fn purge_trigger_receipts(&self, before: DateTime<Utc>) -> Result<u64, DbErr> {
        let result = trigger_receipt::Entity::delete_many()
            .filter(trigger_receipt::Column::ReceivedAt.lt(before))
            .exec(&self.db)
            .await?;
        Ok(result.rows_affected)
    }
}
