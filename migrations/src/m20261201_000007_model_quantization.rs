//! Quantization on registration: the type a registration asked for, and the sha256 of the
//! file actually served when it differs from the registered source's (a quantized output),
//! which is what every node checks before serving it.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Models {
    Table,
    Quantize,
    Requantize,
    FileSha256,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite adds one at a time.
        for mut column in [
            ColumnDef::new(Models::Quantize)
                .string_len(16)
                .null()
                .to_owned(),
            // Whether an already quantized source may be quantized again (quality loss).
            ColumnDef::new(Models::Requantize)
                .boolean()
                .not_null()
                .default(false)
                .to_owned(),
            ColumnDef::new(Models::FileSha256)
                .string_len(64)
                .null()
                .to_owned(),
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
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for column in [Models::Quantize, Models::Requantize, Models::FileSha256] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Models::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}
