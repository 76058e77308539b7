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
    /// Models the tenant may register for itself; `None` uses the configured default.
    pub max_private_models: Option<i32>,
    /// MiB those models may take together; `None` uses the configured default.
    pub max_private_model_mb: Option<i64>,
    /// LoRA adapters the tenant may register for itself, and the MiB they may take;
    /// `None` uses the configured defaults.
    pub max_adapters: Option<i32>,
    pub max_adapter_mb: Option<i64>,
    pub updated_at: Option<ChronoDateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
