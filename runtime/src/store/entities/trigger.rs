use sea_orm::entity::prelude::*;

/// An incoming webhook that starts a function.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "triggers")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub tenant_id: String,
    pub function_name: String,
    /// `standard` (Standard Webhooks) or `github` (`X-Hub-Signature-256`).
    pub scheme: String,
    pub secret: String,
    /// JSON object: input field → JSON Pointer into the payload.
    pub input_map: String,
    pub callback_url: Option<String>,
    pub disabled: bool,
    pub created_at: ChronoDateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
