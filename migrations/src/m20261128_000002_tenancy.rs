//! The multi-tenant surface: tenant settings, API keys, durable async invocations (leases,
//! attempts, cancellation, batches), idempotency keys, outgoing webhook deliveries with their
//! attempts, and incoming webhook triggers.
//!
//! SQLite's ALTER TABLE adds one column per statement, so columns are added one at a time.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Tenants {
    Table,
    RateLimitRps,
    RateLimitBurst,
    MaxConcurrency,
    MonthlyTokenBudget,
    AllowedModels,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Invocations {
    Table,
    TenantId,
    FunctionName,
    CreatedAt,
    Status,
    Mode,
    Params,
    Attempts,
    MaxAttempts,
    RunAfter,
    LeaseOwner,
    LeaseExpiresAt,
    CancelRequested,
    StartedAt,
    BatchId,
    BatchIndex,
    CallbackUrl,
    CallbackEvents,
    OutputJson,
    Traceparent,
}

#[derive(DeriveIden)]
enum ApiKeys {
    Table,
    Id,
    TenantId,
    Name,
    Prefix,
    Hash,
    Scopes,
    ExpiresAt,
    RevokedAt,
    CreatedAt,
    LastUsedAt,
}

#[derive(DeriveIden)]
enum IdempotencyKeys {
    Table,
    TenantId,
    Key,
    RequestHash,
    InvocationId,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Batches {
    Table,
    Id,
    TenantId,
    FunctionName,
    FunctionVersion,
    Total,
    CreatedAt,
}

#[derive(DeriveIden)]
enum WebhookSecrets {
    Table,
    Id,
    TenantId,
    Secret,
    CreatedAt,
    ExpiresAt,
}

#[derive(DeriveIden)]
enum WebhookDeliveries {
    Table,
    Id,
    TenantId,
    InvocationId,
    Event,
    Url,
    Payload,
    Status,
    Attempts,
    NextAttemptAt,
    LeaseOwner,
    LeaseExpiresAt,
    LastStatus,
    LastError,
    Traceparent,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum WebhookAttempts {
    Table,
    Id,
    DeliveryId,
    Attempt,
    StatusCode,
    Error,
    DurationMs,
    AttemptedAt,
}

#[derive(DeriveIden)]
enum DisabledEndpoints {
    Table,
    TenantId,
    Url,
    Reason,
    DisabledAt,
}

#[derive(DeriveIden)]
enum Triggers {
    Table,
    Id,
    TenantId,
    FunctionName,
    Scheme,
    Secret,
    InputMap,
    CallbackUrl,
    Disabled,
    CreatedAt,
}

#[derive(DeriveIden)]
enum TriggerReceipts {
    Table,
    TriggerId,
    MessageId,
    ReceivedAt,
}

fn ts(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col)
        .timestamp_with_time_zone()
        .not_null()
        .to_owned()
}

fn ts_null(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col)
        .timestamp_with_time_zone()
        .null()
        .to_owned()
}

async fn add_columns(
    manager: &SchemaManager<'_>,
    table: DynIden,
    columns: Vec<ColumnDef>,
) -> Result<(), DbErr> {
    for mut column in columns {
        manager
            .alter_table(
                Table::alter()
                    .table(table.clone())
                    .add_column(&mut column)
                    .to_owned(),
            )
            .await?;
    }
    Ok(())
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        add_columns(
            manager,
            Tenants::Table.into_iden(),
            vec![
                ColumnDef::new(Tenants::RateLimitRps)
                    .double()
                    .null()
                    .to_owned(),
                ColumnDef::new(Tenants::RateLimitBurst)
                    .integer()
                    .null()
                    .to_owned(),
                ColumnDef::new(Tenants::MaxConcurrency)
                    .integer()
                    .null()
                    .to_owned(),
                ColumnDef::new(Tenants::MonthlyTokenBudget)
                    .big_integer()
                    .null()
                    .to_owned(),
                ColumnDef::new(Tenants::AllowedModels)
                    .text()
                    .null()
                    .to_owned(),
                ts_null(Tenants::UpdatedAt),
            ],
        )
        .await?;

        add_columns(
            manager,
            Invocations::Table.into_iden(),
            vec![
                ColumnDef::new(Invocations::Mode)
                    .string_len(8)
                    .not_null()
                    .default("sync")
                    .to_owned(),
                ColumnDef::new(Invocations::Params).text().null().to_owned(),
                ColumnDef::new(Invocations::Attempts)
                    .integer()
                    .not_null()
                    .default(0)
                    .to_owned(),
                ColumnDef::new(Invocations::MaxAttempts)
                    .integer()
                    .not_null()
                    .default(1)
                    .to_owned(),
                ts_null(Invocations::RunAfter),
                ColumnDef::new(Invocations::LeaseOwner)
                    .string_len(64)
                    .null()
                    .to_owned(),
                ts_null(Invocations::LeaseExpiresAt),
                ColumnDef::new(Invocations::CancelRequested)
                    .boolean()
                    .not_null()
                    .default(false)
                    .to_owned(),
                ts_null(Invocations::StartedAt),
                ColumnDef::new(Invocations::BatchId)
                    .uuid()
                    .null()
                    .to_owned(),
                ColumnDef::new(Invocations::BatchIndex)
                    .integer()
                    .null()
                    .to_owned(),
                ColumnDef::new(Invocations::CallbackUrl)
                    .text()
                    .null()
                    .to_owned(),
                ColumnDef::new(Invocations::CallbackEvents)
                    .string_len(128)
                    .null()
                    .to_owned(),
                ColumnDef::new(Invocations::OutputJson)
                    .text()
                    .null()
                    .to_owned(),
                ColumnDef::new(Invocations::Traceparent)
                    .string_len(64)
                    .null()
                    .to_owned(),
            ],
        )
        .await?;
        // Workers look for due queued work; the API lists a tenant's invocations newest first.
        for (name, cols) in [
            (
                "invocations_status_run_after",
                vec![Invocations::Status, Invocations::RunAfter],
            ),
            (
                "invocations_tenant_function",
                vec![
                    Invocations::TenantId,
                    Invocations::FunctionName,
                    Invocations::CreatedAt,
                ],
            ),
            ("invocations_batch", vec![Invocations::BatchId]),
        ] {
            let mut index = Index::create();
            index.name(name).table(Invocations::Table);
            for col in cols {
                index.col(col);
            }
            manager.create_index(index.to_owned()).await?;
        }

        manager
            .create_table(
                Table::create()
                    .table(ApiKeys::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(ApiKeys::Id).uuid().not_null().primary_key())
                    .col(ColumnDef::new(ApiKeys::TenantId).string_len(64).not_null())
                    .col(ColumnDef::new(ApiKeys::Name).string_len(128).not_null())
                    .col(ColumnDef::new(ApiKeys::Prefix).string_len(32).not_null())
                    .col(ColumnDef::new(ApiKeys::Hash).string_len(64).not_null())
                    .col(ColumnDef::new(ApiKeys::Scopes).text().not_null())
                    .col(ts_null(ApiKeys::ExpiresAt))
                    .col(ts_null(ApiKeys::RevokedAt))
                    .col(ts(ApiKeys::CreatedAt))
                    .col(ts_null(ApiKeys::LastUsedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("api_keys_hash")
                    .table(ApiKeys::Table)
                    .col(ApiKeys::Hash)
                    .unique()
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(IdempotencyKeys::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(IdempotencyKeys::TenantId)
                            .string_len(64)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(IdempotencyKeys::Key)
                            .string_len(255)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(IdempotencyKeys::RequestHash)
                            .string_len(64)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(IdempotencyKeys::InvocationId)
                            .uuid()
                            .not_null(),
                    )
                    .col(ts(IdempotencyKeys::CreatedAt))
                    .primary_key(
                        Index::create()
                            .col(IdempotencyKeys::TenantId)
                            .col(IdempotencyKeys::Key),
                    )
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Batches::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(Batches::Id).uuid().not_null().primary_key())
                    .col(ColumnDef::new(Batches::TenantId).string_len(64).not_null())
                    .col(
                        ColumnDef::new(Batches::FunctionName)
                            .string_len(64)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Batches::FunctionVersion)
                            .integer()
                            .not_null(),
                    )
                    .col(ColumnDef::new(Batches::Total).integer().not_null())
                    .col(ts(Batches::CreatedAt))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(WebhookSecrets::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(WebhookSecrets::Id)
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(WebhookSecrets::TenantId)
                            .string_len(64)
                            .not_null(),
                    )
                    .col(ColumnDef::new(WebhookSecrets::Secret).text().not_null())
                    .col(ts(WebhookSecrets::CreatedAt))
                    .col(ts_null(WebhookSecrets::ExpiresAt))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(WebhookDeliveries::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(WebhookDeliveries::Id)
                            .string_len(64)
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(WebhookDeliveries::TenantId)
                            .string_len(64)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(WebhookDeliveries::InvocationId)
                            .uuid()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(WebhookDeliveries::Event)
                            .string_len(32)
                            .not_null(),
                    )
                    .col(ColumnDef::new(WebhookDeliveries::Url).text().not_null())
                    .col(ColumnDef::new(WebhookDeliveries::Payload).text().not_null())
                    .col(
                        ColumnDef::new(WebhookDeliveries::Status)
                            .string_len(16)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(WebhookDeliveries::Attempts)
                            .integer()
                            .not_null()
                            .default(0),
                    )
                    .col(ts(WebhookDeliveries::NextAttemptAt))
                    .col(
                        ColumnDef::new(WebhookDeliveries::LeaseOwner)
                            .string_len(64)
                            .null(),
                    )
                    .col(ts_null(WebhookDeliveries::LeaseExpiresAt))
                    .col(
                        ColumnDef::new(WebhookDeliveries::LastStatus)
                            .integer()
                            .null(),
                    )
                    .col(ColumnDef::new(WebhookDeliveries::LastError).text().null())
                    .col(
                        ColumnDef::new(WebhookDeliveries::Traceparent)
                            .string_len(64)
                            .null(),
                    )
                    .col(ts(WebhookDeliveries::CreatedAt))
                    .col(ts(WebhookDeliveries::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        for (name, cols) in [
            (
                "webhook_deliveries_due",
                vec![WebhookDeliveries::Status, WebhookDeliveries::NextAttemptAt],
            ),
            (
                "webhook_deliveries_invocation",
                vec![WebhookDeliveries::TenantId, WebhookDeliveries::InvocationId],
            ),
        ] {
            let mut index = Index::create();
            index.name(name).table(WebhookDeliveries::Table);
            for col in cols {
                index.col(col);
            }
            manager.create_index(index.to_owned()).await?;
        }

        manager
            .create_table(
                Table::create()
                    .table(WebhookAttempts::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(WebhookAttempts::Id)
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(WebhookAttempts::DeliveryId)
                            .string_len(64)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(WebhookAttempts::Attempt)
                            .integer()
                            .not_null(),
                    )
                    .col(ColumnDef::new(WebhookAttempts::StatusCode).integer().null())
                    .col(ColumnDef::new(WebhookAttempts::Error).text().null())
                    .col(
                        ColumnDef::new(WebhookAttempts::DurationMs)
                            .double()
                            .not_null(),
                    )
                    .col(ts(WebhookAttempts::AttemptedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("webhook_attempts_delivery")
                    .table(WebhookAttempts::Table)
                    .col(WebhookAttempts::DeliveryId)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(DisabledEndpoints::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(DisabledEndpoints::TenantId)
                            .string_len(64)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(DisabledEndpoints::Url)
                            .string_len(2048)
                            .not_null(),
                    )
                    .col(ColumnDef::new(DisabledEndpoints::Reason).text().not_null())
                    .col(ts(DisabledEndpoints::DisabledAt))
                    .primary_key(
                        Index::create()
                            .col(DisabledEndpoints::TenantId)
                            .col(DisabledEndpoints::Url),
                    )
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Triggers::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(Triggers::Id)
                            .string_len(64)
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(Triggers::TenantId).string_len(64).not_null())
                    .col(
                        ColumnDef::new(Triggers::FunctionName)
                            .string_len(64)
                            .not_null(),
                    )
                    .col(ColumnDef::new(Triggers::Scheme).string_len(16).not_null())
                    .col(ColumnDef::new(Triggers::Secret).text().not_null())
                    .col(ColumnDef::new(Triggers::InputMap).text().not_null())
                    .col(ColumnDef::new(Triggers::CallbackUrl).text().null())
                    .col(
                        ColumnDef::new(Triggers::Disabled)
                            .boolean()
                            .not_null()
                            .default(false),
                    )
                    .col(ts(Triggers::CreatedAt))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(TriggerReceipts::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(TriggerReceipts::TriggerId)
                            .string_len(64)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(TriggerReceipts::MessageId)
                            .string_len(255)
                            .not_null(),
                    )
                    .col(ts(TriggerReceipts::ReceivedAt))
                    .primary_key(
                        Index::create()
                            .col(TriggerReceipts::TriggerId)
                            .col(TriggerReceipts::MessageId),
                    )
                    .to_owned(),
            )
            .await
    }

    /// Drops the new tables; the added columns stay, since SQLite cannot drop them portably.
    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            TriggerReceipts::Table.into_iden(),
            Triggers::Table.into_iden(),
            DisabledEndpoints::Table.into_iden(),
            WebhookAttempts::Table.into_iden(),
            WebhookDeliveries::Table.into_iden(),
            WebhookSecrets::Table.into_iden(),
            Batches::Table.into_iden(),
            IdempotencyKeys::Table.into_iden(),
            ApiKeys::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).if_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}
