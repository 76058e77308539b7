use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "tenants")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub disabled: bool,
    pub created_at: ChronoDateTimeUtc,
    /// Requests per second; `None` uses the configured default.
    pub rate_limit_rps: Option<f64>,
    pub rate_limit_burst: Option<i32>,
    pub max_concurrency: Option<i32>,
    pub monthly_token_budget: Option<i64>,
    /// JSON array of model ids; `None` allows every model.
    pub allowed_models: Option<String>,
    pub updated_at: Option<ChronoDateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
