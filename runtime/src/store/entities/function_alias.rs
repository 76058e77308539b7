use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "function_aliases")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub function_id: i64,
    pub name: String,
    /// `genrt_functions::AliasTarget` as JSON text.
    pub target: String,
    pub updated_at: ChronoDateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
