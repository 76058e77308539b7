//! Indexes for two scans that grew with issue #15. Trigger receipts are now kept for days
//! (`webhooks.trigger_receipt_retention_s`), not minutes, so the periodic purge by age needs
//! an index on `received_at`. The delivery loop now claims due deliveries tenant by tenant
//! (counting each tenant's due ones, then leasing a tenant's oldest), which
//! `(tenant_id, status, next_attempt_at)` serves without walking other tenants' backlogs.
//!
//! A receipt's `message_id` column now holds its key (`sha256:<digest>` or `id:<digest>`, 67
//! to 71 characters), which fits the existing column; old receipts, keyed by the sender's id,
//! simply expire.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum TriggerReceipts {
    Table,
    ReceivedAt,
}

#[derive(DeriveIden)]
enum WebhookDeliveries {
    Table,
    TenantId,
    Status,
    NextAttemptAt,
}

const RECEIPTS_BY_AGE: &str = "trigger_receipts_received";
const DELIVERIES_DUE_BY_TENANT: &str = "webhook_deliveries_tenant_due";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create()
                    .name(RECEIPTS_BY_AGE)
                    .table(TriggerReceipts::Table)
                    .col(TriggerReceipts::ReceivedAt)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name(DELIVERIES_DUE_BY_TENANT)
                    .table(WebhookDeliveries::Table)
                    .col(WebhookDeliveries::TenantId)
                    .col(WebhookDeliveries::Status)
                    .col(WebhookDeliveries::NextAttemptAt)
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for (name, table) in [
            (RECEIPTS_BY_AGE, TriggerReceipts::Table.into_iden()),
            (
                DELIVERIES_DUE_BY_TENANT,
                WebhookDeliveries::Table.into_iden(),
            ),
        ] {
            manager
                .drop_index(Index::drop().name(name).table(table).to_owned())
                .await?;
        }
        Ok(())
    }
}
