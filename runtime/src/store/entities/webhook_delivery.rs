use sea_orm::entity::prelude::*;

/// One event to deliver to one URL. Its id is the `webhook-id` header, the same on every
/// attempt, so that receivers can deduplicate.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "webhook_deliveries")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub tenant_id: String,
    pub invocation_id: Uuid,
    pub event: String,
    pub url: String,
    pub payload: String,
    /// `pending`, `delivering`, `succeeded`, `failed` or `disabled`.
    pub status: String,
    pub attempts: i32,
    pub next_attempt_at: ChronoDateTimeUtc,
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<ChronoDateTimeUtc>,
    pub last_status: Option<i32>,
    pub last_error: Option<String>,
    pub traceparent: Option<String>,
    pub created_at: ChronoDateTimeUtc,
    pub updated_at: ChronoDateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
