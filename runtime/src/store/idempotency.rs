//! `Idempotency-Key`: a key remembers the request it came with (a hash of function and body)
//! and the invocation it created, for `idempotency_ttl_s`. The key and the invocation are
//! committed in one transaction, so a key never points at work that was not accepted.

use chrono::{Duration as ChronoDuration, Utc};
use sea_orm::{ColumnTrait, DbErr, EntityTrait, QueryFilter, SqlErr};
use uuid::Uuid;

use super::entities::idempotency_key;
use super::{InvocationRow, Store};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyClaim {
    /// The key is new: it now names `invocation`, and the rows given were committed with it.
    Fresh,
    /// The same request was made before: it created this invocation.
    Replay(Uuid),
    /// The key was used with another request.
    Conflict,
}

impl Store {
    /// Claims `key` for `invocation` and commits `rows` with it, unless the key is known.
    pub async fn claim_idempotency_key(
        &self,
        tenant: &str,
        key: &str,
        request_hash: &str,
        invocation: Uuid,
        ttl: std::time::Duration,
        rows: Vec<InvocationRow>,
    ) -> Result<KeyClaim, DbErr> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self
                .try_claim(tenant, key, request_hash, invocation, ttl, rows.clone())
                .await
            {
                // Two requests with one key raced: the loser reads the winner's row.
                Err(err)
                    if attempt < 3
                        && matches!(err.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) =>
                {
                    continue
                }
                other => return other,
            }
        }
    }

    async fn try_claim(
        &self,
        tenant: &str,
        key: &str,
        request_hash: &str,
        invocation_id: Uuid,
        ttl: std::time::Duration,
        rows: Vec<InvocationRow>,
    ) -> Result<KeyClaim, DbErr> {
        let now = Utc::now();
        let txn = self.begin_write().await?;
        let existing = idempotency_key::Entity::find_by_id((tenant.to_owned(), key.to_owned()))
            .one(&txn)
            .await?;
        if let Some(existing) = existing {
            let fresh =
                existing.created_at + ChronoDuration::from_std(ttl).unwrap_or_default() > now;
            if fresh {
                txn.rollback().await?;
                return Ok(if existing.request_hash == request_hash {
                    KeyClaim::Replay(existing.invocation_id)
                } else {
                    KeyClaim::Conflict
                });
            }
            idempotency_key::Entity::delete_by_id((tenant.to_owned(), key.to_owned()))
                .exec(&txn)
                .await?;
        }
        idempotency_key::Entity::insert(idempotency_key::ActiveModel::from(
            idempotency_key::Model {
                tenant_id: tenant.to_owned(),
                key: key.to_owned(),
                request_hash: request_hash.to_owned(),
                invocation_id,
                created_at: now,
            },
        ))
        .exec_without_returning(&txn)
        .await?;
        super::jobs::insert_invocations_in(&txn, rows).await?;
        txn.commit().await?;
        Ok(KeyClaim::Fresh)
    }

    /// Forgets a key whose request was refused before anything was accepted, so that a
    /// corrected retry with the same key is not a replay of the refusal.
    pub async fn release_idempotency_key(&self, tenant: &str, key: &str) -> Result<(), DbErr> {
        idempotency_key::Entity::delete_many()
            .filter(idempotency_key::Column::TenantId.eq(tenant))
            .filter(idempotency_key::Column::Key.eq(key))
            .exec(&self.db)
            .await
            .map(|_| ())
    }
}
