use sea_orm::entity::prelude::*;

/// A model of the registry (see `crate::registry`): seeded from the configuration or
/// registered through the API.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "models")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub path: String,
    pub n_ctx: i32,
    pub registered_at: ChronoDateTimeUtc,
    /// The tenant of a private model; `None` for a public one.
    pub owner: Option<String>,
    /// `awaiting_upload`, `registering`, `validating`, `quantizing`, `ready`, `failed` or
    /// `deleting`.
    pub state: String,
    /// `config`, `path`, `url` or `upload`.
    pub source_kind: String,
    pub source: Option<String>,
    pub sha256: Option<String>,
    pub size_bytes: i64,
    pub bytes_done: i64,
    pub settings: Option<String>,
    pub info: Option<String>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub updated_at: Option<ChronoDateTimeUtc>,
    /// The quantization type asked for at registration (`Q8_0`, ...).
    pub quantize: Option<String>,
    pub requantize: bool,
    /// The sha256 of the served file when it is not the registered source (a quantized
    /// output); otherwise `sha256` is.
    pub file_sha256: Option<String>,
    /// `model`, or `adapter` for a LoRA adapter of the model `base` (its id is `base:name`).
    pub kind: String,
    pub base: Option<String>,
    /// Written afresh by every registration (and seeding) of the id: a registration job
    /// changes the row only while it is still its attempt.
    pub attempt: String,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
