use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "alias_events")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub function_id: i64,
    pub alias: String,
    /// `set`, `delete` or `rollback`.
    pub action: String,
    /// The targets before and after, as JSON text; none before a creation or after a delete.
    pub from_target: Option<String>,
    pub to_target: Option<String>,
    /// The credential that made the change (`api_key:<id>`, `jwt`).
    pub actor: String,
    /// A gated promotion's gate and scores, as JSON text.
    pub gate: Option<String>,
    pub at: ChronoDateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
