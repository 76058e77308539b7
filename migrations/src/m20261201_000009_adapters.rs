//! LoRA adapters in the registry: a row of `models` with `kind = 'adapter'` and the model it
//! adapts in `base` (its id is `base:name`), so that adapters share the registration states,
//! the jobs and the sync of models. And tenants' limits on their own adapters: NULL uses the
//! configuration's `[tenancy]` defaults.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Models {
    Table,
    Kind,
    Base,
}

#[derive(DeriveIden)]
enum Tenants {
    Table,
    MaxAdapters,
    MaxAdapterMb,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite adds one at a time.
        for mut column in [
            ColumnDef::new(Models::Kind)
                .string()
                .not_null()
                .default("model")
                .to_owned(),
            ColumnDef::new(Models::Base).string().null().to_owned(),
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Models::Table)
                        .add_column(&mut column)
                        .to_owned(),
                )
                .await?;
        }
        for mut column in [
            ColumnDef::new(Tenants::MaxAdapters)
                .integer()
                .null()
                .to_owned(),
            ColumnDef::new(Tenants::MaxAdapterMb)
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
        for column in [Models::Kind, Models::Base] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Models::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        for column in [Tenants::MaxAdapters, Tenants::MaxAdapterMb] {
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
