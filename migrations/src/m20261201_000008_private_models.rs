//! Tenants' own models: how many a tenant may register and how many MiB they may take. Both
//! NULL by default: the configuration's `[tenancy]` defaults apply.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Tenants {
    Table,
    MaxPrivateModels,
    MaxPrivateModelMb,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite adds one at a time.
        for mut column in [
            ColumnDef::new(Tenants::MaxPrivateModels)
                .integer()
                .null()
                .to_owned(),
            ColumnDef::new(Tenants::MaxPrivateModelMb)
                .big_integer()
                .null()
                .to_owned(),
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Tenants::Table)
                        .add_column(&mut column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for column in [Tenants::MaxPrivateModels, Tenants::MaxPrivateModelMb] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Tenants::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}
