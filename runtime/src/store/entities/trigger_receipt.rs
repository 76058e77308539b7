use sea_orm::entity::prelude::*;

/// A message a trigger has accepted, kept to refuse replays; `message_id` holds the receipt
/// key (a digest of the signed message, or of its signed id).
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
