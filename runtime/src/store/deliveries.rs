//! Outgoing webhook deliveries, their attempts, disabled endpoints and signing secrets.
//! Deliveries are leased like queued invocations (see `jobs.rs`), so that with several nodes
//! each is sent by one at a time, and a node that dies mid-send leaves it to be retried.

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use sea_orm::sea_query::{Expr, LockBehavior, LockType, OnConflict, Query};
use sea_orm::{
    ColumnTrait, DatabaseBackend, DbErr, EntityTrait, FromQueryResult, QueryFilter, QueryOrder,
    QuerySelect, Set,
};
use uuid::Uuid;

use super::entities::{disabled_endpoint, webhook_attempt, webhook_delivery, webhook_secret};
use super::{DeliveryRow, Store};
use crate::webhooks::fair::DueTenant;

pub type AttemptRow = webhook_attempt::Model;

/// What one attempt led to.
#[derive(Debug, Clone)]
pub enum DeliveryNext {
    Succeeded,
    /// Try again at this time.
    Retry(DateTime<Utc>),
    /// Out of attempts.
    Failed,
    /// The endpoint answered 410 Gone: it is disabled for this tenant.
    Disabled,
}

impl Store {
    /// Tenants with deliveries due now and how many each has, by tenant id: first those after
    /// `after` (the tenant served last), then, wrapping around, the others, `limit` in all.
    pub async fn tenants_with_due_deliveries(
        &self,
        after: Option<&str>,
        limit: u64,
    ) -> Result<Vec<DueTenant>, DbErr> {
        let now = Utc::now();
        let due = |tail: Option<bool>, limit: u64| {
            let mut query = webhook_delivery::Entity::find()
                .select_only()
                .column(webhook_delivery::Column::TenantId)
                .column_as(webhook_delivery::Column::Id.count(), "due")
                .filter(webhook_delivery::Column::Status.eq("pending"))
                .filter(webhook_delivery::Column::NextAttemptAt.lte(now));
            if let (Some(after), Some(tail)) = (after, tail) {
                query = query.filter(if tail {
                    webhook_delivery::Column::TenantId.gt(after)
                } else {
                    webhook_delivery::Column::TenantId.lte(after)
                });
            }
            query
                .group_by(webhook_delivery::Column::TenantId)
                .order_by_asc(webhook_delivery::Column::TenantId)
                .limit(limit)
                .into_tuple::<(String, i64)>()
        };
        let mut tenants = due(Some(true), limit).all(&self.db).await?;
        let found = tenants.len() as u64;
        if after.is_some() && found < limit {
            tenants.extend(due(Some(false), limit - found).all(&self.db).await?);
        }
        Ok(tenants
            .into_iter()
            .map(|(tenant, due)| DueTenant {
                tenant,
                due: u64::try_from(due).unwrap_or(0),
            })
            .collect())
    }

    /// Leases up to `limit` of `tenant`'s due deliveries, oldest due first.
    pub async fn claim_deliveries(
        &self,
        node: &str,
        tenant: &str,
        limit: u64,
        lease: std::time::Duration,
    ) -> Result<Vec<DeliveryRow>, DbErr> {
        let now = Utc::now();
        let expires = now + ChronoDuration::from_std(lease).unwrap_or_default();
        let mut due = Query::select();
        due.column(webhook_delivery::Column::Id)
            .from(webhook_delivery::Entity)
            .and_where(webhook_delivery::Column::TenantId.eq(tenant))
            .and_where(webhook_delivery::Column::Status.eq("pending"))
            .and_where(webhook_delivery::Column::NextAttemptAt.lte(now))
            .order_by(webhook_delivery::Column::NextAttemptAt, sea_orm::Order::Asc)
            .limit(limit);
        if self.backend() == DatabaseBackend::Postgres {
            due.lock_with_behavior(LockType::Update, LockBehavior::SkipLocked);
        }
        let update = Query::update()
            .table(webhook_delivery::Entity)
            .value(webhook_delivery::Column::Status, "delivering")
            .value(webhook_delivery::Column::LeaseOwner, node)
            .value(webhook_delivery::Column::LeaseExpiresAt, expires)
            .value(webhook_delivery::Column::UpdatedAt, now)
            .and_where(super::jobs::claimed_ids(
                self.backend(),
                webhook_delivery::Column::Id,
                due,
            ))
            .and_where(webhook_delivery::Column::Status.eq("pending"))
            .returning_all()
            .to_owned();
        let statement = self.backend().build(&update);
        DeliveryRow::find_by_statement(statement)
            .all(&self.db)
            .await
    }

    /// Deliveries whose sender died go back to pending. With `everyone`, all deliveries in
    /// flight do (at start on SQLite, whose database only this process uses).
    pub async fn reclaim_deliveries(&self, everyone: bool) -> Result<u64, DbErr> {
        let mut update = webhook_delivery::Entity::update_many();
        if !everyone {
            update = update.filter(webhook_delivery::Column::LeaseExpiresAt.lt(Utc::now()));
        }
        let result = update
            .col_expr(webhook_delivery::Column::Status, Expr::value("pending"))
            .col_expr(
                webhook_delivery::Column::LeaseOwner,
                Expr::value(None::<String>),
            )
            .filter(webhook_delivery::Column::Status.eq("delivering"))
            .exec(&self.db)
            .await?;
        Ok(result.rows_affected)
    }

    /// Records an attempt and what follows from it, if this node still holds the lease.
    pub async fn record_attempt(
        &self,
        delivery: &DeliveryRow,
        node: &str,
        attempt: AttemptRow,
        next: DeliveryNext,
    ) -> Result<bool, DbErr> {
        let now = Utc::now();
        let txn = self.begin_write().await?;
        let (status, next_at) = match &next {
            DeliveryNext::Succeeded => ("succeeded", delivery.next_attempt_at),
            DeliveryNext::Retry(at) => ("pending", *at),
            DeliveryNext::Failed => ("failed", delivery.next_attempt_at),
            DeliveryNext::Disabled => ("disabled", delivery.next_attempt_at),
        };
        let updated = webhook_delivery::Entity::update_many()
            .col_expr(webhook_delivery::Column::Status, Expr::value(status))
            .col_expr(
                webhook_delivery::Column::NextAttemptAt,
                Expr::value(next_at),
            )
            .col_expr(
                webhook_delivery::Column::Attempts,
                Expr::col(webhook_delivery::Column::Attempts).add(1),
            )
            .col_expr(
                webhook_delivery::Column::LastStatus,
                Expr::value(attempt.status_code),
            )
            .col_expr(
                webhook_delivery::Column::LastError,
                Expr::value(attempt.error.clone()),
            )
            .col_expr(
                webhook_delivery::Column::LeaseOwner,
                Expr::value(None::<String>),
            )
            .col_expr(webhook_delivery::Column::UpdatedAt, Expr::value(now))
            .filter(webhook_delivery::Column::Id.eq(delivery.id.as_str()))
            .filter(webhook_delivery::Column::LeaseOwner.eq(node))
            .filter(webhook_delivery::Column::Status.eq("delivering"))
            .exec(&txn)
            .await?;
        if updated.rows_affected == 0 {
            txn.rollback().await?;
            return Ok(false);
        }
        let mut attempt = webhook_attempt::ActiveModel::from(attempt);
        attempt.id = sea_orm::ActiveValue::NotSet;
        webhook_attempt::Entity::insert(attempt)
            .exec_without_returning(&txn)
            .await?;
        if matches!(next, DeliveryNext::Disabled) {
            disabled_endpoint::Entity::insert(disabled_endpoint::ActiveModel {
                tenant_id: Set(delivery.tenant_id.clone()),
                url: Set(delivery.url.clone()),
                reason: Set("the endpoint answered 410 Gone".into()),
                disabled_at: Set(now),
            })
            .on_conflict(
                OnConflict::columns([
                    disabled_endpoint::Column::TenantId,
                    disabled_endpoint::Column::Url,
                ])
                .do_nothing()
                .to_owned(),
            )
            .do_nothing()
            .exec_without_returning(&txn)
            .await?;
        }
        txn.commit().await?;
        Ok(true)
    }

    pub async fn endpoint_disabled(&self, tenant: &str, url: &str) -> Result<bool, DbErr> {
        Ok(
            disabled_endpoint::Entity::find_by_id((tenant.to_owned(), url.to_owned()))
                .one(&self.db)
                .await?
                .is_some(),
        )
    }

    /// A tenant's deliveries, newest first, optionally for one invocation.
    pub async fn list_deliveries(
        &self,
        tenant: &str,
        invocation: Option<Uuid>,
        limit: u64,
    ) -> Result<Vec<(DeliveryRow, Vec<AttemptRow>)>, DbErr> {
        let mut query =
            webhook_delivery::Entity::find().filter(webhook_delivery::Column::TenantId.eq(tenant));
        if let Some(id) = invocation {
            query = query.filter(webhook_delivery::Column::InvocationId.eq(id));
        }
        let deliveries = query
            .order_by_desc(webhook_delivery::Column::CreatedAt)
            .limit(limit)
            .all(&self.db)
            .await?;
        let ids: Vec<String> = deliveries.iter().map(|d| d.id.clone()).collect();
        let attempts = if ids.is_empty() {
            Vec::new()
        } else {
            webhook_attempt::Entity::find()
                .filter(webhook_attempt::Column::DeliveryId.is_in(ids))
                .order_by_asc(webhook_attempt::Column::Id)
                .all(&self.db)
                .await?
        };
        Ok(deliveries
            .into_iter()
            .map(|d| {
                let mine = attempts
                    .iter()
                    .filter(|a| a.delivery_id == d.id)
                    .cloned()
                    .collect();
                (d, mine)
            })
            .collect())
    }

    /// Sends a delivery again as soon as possible (same `webhook-id`). Re-enables its endpoint
    /// if it was disabled. Returns `None` when the tenant has no such delivery.
    pub async fn redeliver(&self, tenant: &str, id: &str) -> Result<Option<DeliveryRow>, DbErr> {
        let Some(found) = webhook_delivery::Entity::find_by_id(id.to_owned())
            .filter(webhook_delivery::Column::TenantId.eq(tenant))
            .one(&self.db)
            .await?
        else {
            return Ok(None);
        };
        disabled_endpoint::Entity::delete_by_id((tenant.to_owned(), found.url.clone()))
            .exec(&self.db)
            .await?;
        webhook_delivery::Entity::update_many()
            .col_expr(webhook_delivery::Column::Status, Expr::value("pending"))
            .col_expr(
                webhook_delivery::Column::NextAttemptAt,
                Expr::value(Utc::now()),
            )
            .filter(webhook_delivery::Column::Id.eq(id))
            .filter(webhook_delivery::Column::Status.ne("delivering"))
            .exec(&self.db)
            .await?;
        webhook_delivery::Entity::find_by_id(id.to_owned())
            .one(&self.db)
            .await
    }

    /// The secrets that sign a tenant's webhooks now, newest first; creates the first one.
    pub async fn webhook_secrets(
        &self,
        tenant: &str,
        generate: impl Fn() -> String,
    ) -> Result<Vec<String>, DbErr> {
        let secrets = self.live_secrets(tenant).await?;
        if !secrets.is_empty() {
            return Ok(secrets);
        }
        // Two first deliveries of a new tenant may race to create its secret; with an overlap
        // the loser's secret does not expire at once, so both keep signing and whichever a
        // message was signed with still verifies.
        self.rotate_webhook_secret(tenant, generate(), std::time::Duration::from_secs(86_400))
            .await
    }

    /// Makes `secret` the tenant's signing secret; the previous ones keep signing (a second
    /// signature) for `overlap`, so receivers can switch without losing events.
    pub async fn rotate_webhook_secret(
        &self,
        tenant: &str,
        secret: String,
        overlap: std::time::Duration,
    ) -> Result<Vec<String>, DbErr> {
        let now = Utc::now();
        let txn = self.begin_write().await?;
        webhook_secret::Entity::update_many()
            .col_expr(
                webhook_secret::Column::ExpiresAt,
                Expr::value(now + ChronoDuration::from_std(overlap).unwrap_or_default()),
            )
            .filter(webhook_secret::Column::TenantId.eq(tenant))
            .filter(webhook_secret::Column::ExpiresAt.is_null())
            .exec(&txn)
            .await?;
        webhook_secret::Entity::insert(webhook_secret::ActiveModel {
            tenant_id: Set(tenant.to_owned()),
            secret: Set(secret),
            created_at: Set(now),
            expires_at: Set(None),
            ..Default::default()
        })
        .exec_without_returning(&txn)
        .await?;
        txn.commit().await?;
        self.live_secrets(tenant).await
    }

    /// A tenant's unexpired secrets, newest first.
    async fn live_secrets(&self, tenant: &str) -> Result<Vec<String>, DbErr> {
        let rows = webhook_secret::Entity::find()
            .filter(webhook_secret::Column::TenantId.eq(tenant))
            .filter(
                webhook_secret::Column::ExpiresAt
                    .is_null()
                    .or(webhook_secret::Column::ExpiresAt.gt(Utc::now())),
            )
            .order_by_desc(webhook_secret::Column::Id)
            .all(&self.db)
            .await?;
        Ok(rows.into_iter().map(|r| r.secret).collect())
    }
}
