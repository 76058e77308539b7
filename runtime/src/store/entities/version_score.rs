use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "version_scores")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub function_id: i64,
    pub version: i32,
    /// SHA-256 of the cases and parameters scored: scores compare only on the same set.
    pub cases_digest: String,
    pub rouge_l: f64,
    pub bleu: f64,
    pub cases: i32,
    pub failed: i32,
    pub evaluated_at: ChronoDateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
