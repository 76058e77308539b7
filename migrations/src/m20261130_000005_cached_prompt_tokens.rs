//! The prefix cache's share of each invocation: prompt tokens whose KV came from a replica's
//! prefix cache, and the prefill time, kept with the record so that `GET /v1/invocations`
//! and the webhooks report what the synchronous answer did. Rows from before read 0.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Invocations {
    Table,
    CachedPromptTokens,
    PrefillMs,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite adds one at a time.
        manager
            .alter_table(
                Table::alter()
                    .table(Invocations::Table)
                    .add_column(
                        ColumnDef::new(Invocations::CachedPromptTokens)
                            .integer()
                            .not_null()
                            .default(0),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Invocations::Table)
                    .add_column(
                        ColumnDef::new(Invocations::PrefillMs)
                            .double()
                            .not_null()
                            .default(0.0),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for column in [Invocations::CachedPromptTokens, Invocations::PrefillMs] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Invocations::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}
