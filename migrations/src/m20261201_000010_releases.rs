//! Releases (issue #18): aliases of a function (`prod` → version 4, or a weighted split with
//! an optional shadow), the history of every change to them, evaluation scores stored per
//! version, and on each invocation the alias it came through, whether the alias split, and
//! for a shadow run the invocation it mirrors.
//!
//! Aliases, their history and scores belong to a function row and go with it
//! (`ON DELETE CASCADE`, and `Store::delete_function` deletes them explicitly too).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Functions {
    Table,
    Id,
}

#[derive(DeriveIden)]
enum FunctionAliases {
    Table,
    Id,
    FunctionId,
    Name,
    /// `AliasTarget` as JSON text.
    Target,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum AliasEvents {
    Table,
    Id,
    FunctionId,
    Alias,
    Action,
    FromTarget,
    ToTarget,
    Actor,
    /// The promotion gate and the scores it compared, as JSON text.
    Gate,
    At,
}

#[derive(DeriveIden)]
enum VersionScores {
    Table,
    Id,
    FunctionId,
    Version,
    /// SHA-256 of the evaluation cases and parameters: scores compare only on one set.
    CasesDigest,
    RougeL,
    Bleu,
    Cases,
    Failed,
    EvaluatedAt,
}

#[derive(DeriveIden)]
enum Invocations {
    Table,
    Alias,
    Split,
    ShadowOf,
}

fn id<T: IntoIden>(col: T) -> ColumnDef {
    ColumnDef::new(col)
        .big_integer()
        .not_null()
        .auto_increment()
        .primary_key()
        .to_owned()
}

fn owner<T: IntoIden + 'static>(table: T, col: T) -> ForeignKeyCreateStatement {
    ForeignKey::create()
        .from(table, col)
        .to(Functions::Table, Functions::Id)
        .on_delete(ForeignKeyAction::Cascade)
        .to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(FunctionAliases::Table)
                    .if_not_exists()
                    .col(id(FunctionAliases::Id))
                    .col(
                        ColumnDef::new(FunctionAliases::FunctionId)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(FunctionAliases::Name)
                            .string_len(32)
                            .not_null(),
                    )
                    .col(ColumnDef::new(FunctionAliases::Target).text().not_null())
                    .col(
                        ColumnDef::new(FunctionAliases::UpdatedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .foreign_key(&mut owner(
                        FunctionAliases::Table,
                        FunctionAliases::FunctionId,
                    ))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("function_aliases_function_name")
                    .table(FunctionAliases::Table)
                    .col(FunctionAliases::FunctionId)
                    .col(FunctionAliases::Name)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(AliasEvents::Table)
                    .if_not_exists()
                    .col(id(AliasEvents::Id))
                    .col(
                        ColumnDef::new(AliasEvents::FunctionId)
                            .big_integer()
                            .not_null(),
                    )
                    .col(ColumnDef::new(AliasEvents::Alias).string_len(32).not_null())
                    .col(
                        ColumnDef::new(AliasEvents::Action)
                            .string_len(16)
                            .not_null(),
                    )
                    .col(ColumnDef::new(AliasEvents::FromTarget).text().null())
                    .col(ColumnDef::new(AliasEvents::ToTarget).text().null())
                    .col(
                        ColumnDef::new(AliasEvents::Actor)
                            .string_len(160)
                            .not_null(),
                    )
                    .col(ColumnDef::new(AliasEvents::Gate).text().null())
                    .col(
                        ColumnDef::new(AliasEvents::At)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .foreign_key(&mut owner(AliasEvents::Table, AliasEvents::FunctionId))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("alias_events_function_alias")
                    .table(AliasEvents::Table)
                    .col(AliasEvents::FunctionId)
                    .col(AliasEvents::Alias)
                    .col(AliasEvents::Id)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(VersionScores::Table)
                    .if_not_exists()
                    .col(id(VersionScores::Id))
                    .col(
                        ColumnDef::new(VersionScores::FunctionId)
                            .big_integer()
                            .not_null(),
                    )
                    .col(ColumnDef::new(VersionScores::Version).integer().not_null())
                    .col(
                        ColumnDef::new(VersionScores::CasesDigest)
                            .string_len(64)
                            .not_null(),
                    )
                    .col(ColumnDef::new(VersionScores::RougeL).double().not_null())
                    .col(ColumnDef::new(VersionScores::Bleu).double().not_null())
                    .col(ColumnDef::new(VersionScores::Cases).integer().not_null())
                    .col(ColumnDef::new(VersionScores::Failed).integer().not_null())
                    .col(
                        ColumnDef::new(VersionScores::EvaluatedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .foreign_key(&mut owner(VersionScores::Table, VersionScores::FunctionId))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("version_scores_function_version_cases")
                    .table(VersionScores::Table)
                    .col(VersionScores::FunctionId)
                    .col(VersionScores::Version)
                    .col(VersionScores::CasesDigest)
                    .unique()
                    .to_owned(),
            )
            .await?;
        // One column per statement: SQLite adds one at a time.
        for mut column in [
            ColumnDef::new(Invocations::Alias)
                .string_len(32)
                .null()
                .to_owned(),
            ColumnDef::new(Invocations::Split)
                .boolean()
                .not_null()
                .default(false)
                .to_owned(),
            ColumnDef::new(Invocations::ShadowOf)
                .uuid()
                .null()
                .to_owned(),
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Invocations::Table)
                        .add_column(&mut column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for column in [
            Invocations::Alias,
            Invocations::Split,
            Invocations::ShadowOf,
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Invocations::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        for table in [
            VersionScores::Table.into_iden(),
            AliasEvents::Table.into_iden(),
            FunctionAliases::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        Ok(())
    }
}
