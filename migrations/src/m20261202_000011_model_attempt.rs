//! A registration's attempt: a fresh id written with every registration of a model id (and at
//! every seeding). A registration job changes its row only while the row is still its
//! attempt, so that a job left over from a registration that was deleted (on another node,
//! say) and made again under the same id can never move, fail or fill in the new one.
//! Rows from before carry the empty attempt.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Models {
    Table,
    Attempt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Models::Table)
                    .add_column(
                        ColumnDef::new(Models::Attempt)
                            .string()
                            .not_null()
                            .default(""),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Models::Table)
                    .drop_column(Models::Attempt)
                    .to_owned(),
            )
            .await
    }
}
