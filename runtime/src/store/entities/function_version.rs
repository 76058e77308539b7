use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "function_versions")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub function_id: i64,
    pub version: i32,
    /// The domain spec as JSON text.
    pub spec: String,
    pub spec_digest: String,
    pub created_at: ChronoDateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::function::Entity",
        from = "Column::FunctionId",
        to = "super::function::Column::Id",
        on_delete = "Cascade"
    )]
    Function,
}

impl Related<super::function::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Function.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
