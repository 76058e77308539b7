use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "invocations")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub tenant_id: String,
    pub function_name: String,
    pub function_version: i32,
    pub model: Option<String>,
    pub status: String,
    /// The invocation input as JSON text.
    pub input: String,
    pub output_text: Option<String>,
    pub finish_reason: Option<String>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub prompt_tokens: i32,
    pub completion_tokens: i32,
    pub cache_hit: bool,
    pub load_ms: f64,
    pub queue_ms: f64,
    pub ttft_ms: f64,
    pub total_ms: f64,
    pub created_at: ChronoDateTimeUtc,
    pub completed_at: Option<ChronoDateTimeUtc>,
    /// `sync`, `stream`, `async`, `batch` or `trigger`.
    pub mode: String,
    /// The generation parameters of a queued invocation, as JSON text.
    pub params: Option<String>,
    pub attempts: i32,
    pub max_attempts: i32,
    /// A queued invocation is not claimed before this time (retry backoff).
    pub run_after: Option<ChronoDateTimeUtc>,
    /// The node holding a running invocation, and until when.
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<ChronoDateTimeUtc>,
    pub cancel_requested: bool,
    pub started_at: Option<ChronoDateTimeUtc>,
    pub batch_id: Option<Uuid>,
    pub batch_index: Option<i32>,
    pub callback_url: Option<String>,
    /// Space-separated event types the callback wants.
    pub callback_events: Option<String>,
    /// The parsed output of a function with JSON output, as JSON text.
    pub output_json: Option<String>,
    pub traceparent: Option<String>,
    /// Prompt tokens whose KV came from a replica's prefix cache.
    pub cached_prompt_tokens: i32,
    pub prefill_ms: f64,
    /// The alias the invocation was admitted through, if any (its version is
    /// `function_version`, fixed at admission).
    pub alias: Option<String>,
    /// The alias split its traffic between versions when this one was admitted.
    pub split: bool,
    /// A shadow run: the invocation whose input it mirrors.
    pub shadow_of: Option<Uuid>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
