//! What a generation function is: its spec, how a spec is validated, how its templates are
//! rendered with an invocation's input, and how its model is chosen.
//!
//! This crate does no IO and knows nothing of HTTP, SQL or JWT. The runtime converts its wire
//! types into these domain types by hand, and the actors execute them.

mod error;
mod evaluation;
mod ids;
mod limits;
mod params;
mod prepared;
mod release;
mod routing;
mod spec;

pub use error::{InputError, SpecError};
pub use evaluation::{
    corpus_bleu, rouge_l, sentence_bleu, tokenize, validate_cases, EvaluationCase,
    MAX_EVALUATION_CASES,
};
pub use ids::{FunctionName, ModelId, TenantId};
pub use limits::{stopped_render_threads, within_budget, BudgetAllocator, TemplateLimits};
pub use params::{GenerationParams, SamplingParams, DEFAULT_MAX_TOKENS};
pub use prepared::{ChatRole, ChatTurn, Conversation, PreparedFunction, RenderedPrompt};
pub use release::{
    AliasName, AliasTarget, Choice, FunctionRef, Gate, GateRefusal, Shadow, VersionSelector,
    Weighted, DEFAULT_ALIAS, MAX_SPLIT_TARGETS,
};
pub use routing::Route;
pub use spec::{
    default_idle_timeout_s, default_timeout_s, AdapterRef, CachePolicy, FunctionSpec, ModelTarget,
    OutputSpec, WebhookTarget, WEBHOOK_EVENTS,
};
