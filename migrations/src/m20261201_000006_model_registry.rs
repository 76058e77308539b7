//! The model registry: models registered at run time (`POST /v1/models`) next to those the
//! configuration seeds. A row is the model's durable state, shared by every node of one
//! database: where the file comes from, its expected sha256, how far registration got, what
//! validation read from the file, and the serving settings. Rows from before are the
//! configuration's models and read as `ready`, source `config`.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Models {
    Table,
    Owner,
    State,
    SourceKind,
    Source,
    Sha256,
    SizeBytes,
    BytesDone,
    Settings,
    Info,
    ErrorCode,
    ErrorMessage,
    UpdatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let columns = [
            // The tenant a private model belongs to; NULL for a public one (admin's).
            ColumnDef::new(Models::Owner)
                .string_len(64)
                .null()
                .to_owned(),
            ColumnDef::new(Models::State)
                .string_len(32)
                .not_null()
                .default("ready")
                .to_owned(),
            ColumnDef::new(Models::SourceKind)
                .string_len(16)
                .not_null()
                .default("config")
                .to_owned(),
            ColumnDef::new(Models::Source).text().null().to_owned(),
            ColumnDef::new(Models::Sha256)
                .string_len(64)
                .null()
                .to_owned(),
            ColumnDef::new(Models::SizeBytes)
                .big_integer()
                .not_null()
                .default(0)
                .to_owned(),
            ColumnDef::new(Models::BytesDone)
                .big_integer()
                .not_null()
                .default(0)
                .to_owned(),
            // JSON: the model's serving settings (the configuration file's `[[models]]` keys).
            ColumnDef::new(Models::Settings).text().null().to_owned(),
            // JSON: what validation read from the file (architecture, parameters, ...).
            ColumnDef::new(Models::Info).text().null().to_owned(),
            ColumnDef::new(Models::ErrorCode)
                .string_len(64)
                .null()
                .to_owned(),
            ColumnDef::new(Models::ErrorMessage)
                .text()
                .null()
                .to_owned(),
            ColumnDef::new(Models::UpdatedAt)
                .timestamp_with_time_zone()
                .null()
                .to_owned(),
        ];
        // One column per statement: SQLite adds one at a time.
        for mut column in columns {
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
        for column in [
            Models::Owner,
            Models::State,
            Models::SourceKind,
            Models::Source,
            Models::Sha256,
            Models::SizeBytes,
            Models::BytesDone,
            Models::Settings,
            Models::Info,
            Models::ErrorCode,
            Models::ErrorMessage,
            Models::UpdatedAt,
        ] {
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
