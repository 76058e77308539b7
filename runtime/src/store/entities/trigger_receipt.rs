use sea_orm::entity::prelude::*;

/// A message id a trigger has accepted, kept to refuse replays.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "trigger_receipts")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub trigger_id: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub message_id: String,
    pub received_at: ChronoDateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
