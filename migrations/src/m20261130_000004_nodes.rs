//! The live nodes of a deployment. Each node writes a heartbeat here; every node counts the
//! fresh ones to take its fair share of each tenant's rate and concurrency limits (a limit
//! is for the tenant, not per node), and the same loop looks for keys revoked and tenants
//! changed on other nodes. Indexes serve those two "changed since" reads.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Nodes {
    Table,
    Id,
    StartedAt,
    HeartbeatAt,
}

#[derive(DeriveIden)]
enum ApiKeys {
    Table,
    RevokedAt,
}

#[derive(DeriveIden)]
enum Tenants {
    Table,
    UpdatedAt,
}

const KEYS_BY_REVOCATION: &str = "api_keys_revoked";
const TENANTS_BY_UPDATE: &str = "tenants_updated";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Nodes::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(Nodes::Id).string().not_null().primary_key())
                    .col(
                        ColumnDef::new(Nodes::StartedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Nodes::HeartbeatAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name(KEYS_BY_REVOCATION)
                    .table(ApiKeys::Table)
                    .col(ApiKeys::RevokedAt)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name(TENANTS_BY_UPDATE)
                    .table(Tenants::Table)
                    .col(Tenants::UpdatedAt)
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for (name, table) in [
            (KEYS_BY_REVOCATION, ApiKeys::Table.into_iden()),
            (TENANTS_BY_UPDATE, Tenants::Table.into_iden()),
        ] {
            manager
                .drop_index(Index::drop().name(name).table(table).to_owned())
                .await?;
        }
        manager
            .drop_table(Table::drop().table(Nodes::Table).to_owned())
            .await
    }
}
