//! Why an invocation did not produce text. The runtime maps each variant to an HTTP status
//! and a stable error code in one table.

use genrt_functions::{InputError, ModelId};

use crate::EngineError;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InvokeError {
    #[error(transparent)]
    Input(#[from] InputError),
    #[error(
        "max_tokens {max_tokens} does not fit in the context of model `{model}` ({n_ctx} tokens)"
    )]
    MaxTokensExceedContext {
        model: ModelId,
        max_tokens: u32,
        n_ctx: u32,
    },
    #[error("the prompt ({prompt_tokens} tokens) plus max_tokens ({max_tokens}) exceeds the context of model `{model}` ({n_ctx} tokens)")]
    PromptTooLong {
        model: ModelId,
        prompt_tokens: u32,
        max_tokens: u32,
        n_ctx: u32,
    },
    #[error("model `{0}` is not registered")]
    UnknownModel(ModelId),
    #[error("model `{model}` has no adapter `{adapter}`")]
    UnknownAdapter { model: ModelId, adapter: String },
    #[error("model `{0}` is being removed and takes no new work")]
    ModelDraining(ModelId),
    #[error("model `{model}` cannot be loaded: {reason}")]
    ModelUnavailable { model: ModelId, reason: String },
    #[error("model `{model}` has {queued} invocations waiting; try again shortly")]
    Overloaded { model: ModelId, queued: usize },
    #[error("the replica serving this invocation failed ({reason}); it has been restarted, retry")]
    ReplicaFailed { reason: String },
    #[error("the invocation did not finish within its timeout")]
    Timeout,
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error("the output constraint cannot be used: {0}")]
    OutputSpec(String),
    #[error("{0}")]
    InsufficientMemory(String),
    #[error("the output does not satisfy the function's output format: {0}")]
    InvalidOutput(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl InvokeError {
    /// Whether the same request may succeed if sent again unchanged: the one decision, used
    /// by the runtime's queue to retry. A timeout depends on the load at the time, and an
    /// internal error is not the input's fault, so both are worth another attempt.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::ModelUnavailable { .. }
            | Self::Overloaded { .. }
            | Self::ReplicaFailed { .. }
            | Self::ShuttingDown
            | Self::InsufficientMemory(_)
            | Self::Timeout
            | Self::Internal(_) => true,
            Self::Input(_)
            | Self::MaxTokensExceedContext { .. }
            | Self::PromptTooLong { .. }
            | Self::UnknownModel(_)
            | Self::UnknownAdapter { .. }
            | Self::ModelDraining(_)
            | Self::OutputSpec(_)
            | Self::InvalidOutput(_) => false,
        }
    }

    pub(crate) fn from_engine(model: &ModelId, err: EngineError) -> Self {
        match err {
            EngineError::PromptTooLong {
                prompt_tokens,
                max_tokens,
                n_ctx,
            } => Self::PromptTooLong {
                model: model.clone(),
                prompt_tokens,
                max_tokens,
                n_ctx,
            },
            EngineError::DeadlineExceeded => Self::Timeout,
            EngineError::Crashed(reason) => Self::ReplicaFailed { reason },
            EngineError::Load(reason) => Self::ModelUnavailable {
                model: model.clone(),
                reason,
            },
            EngineError::Cancelled => Self::ShuttingDown,
            EngineError::Decode(reason) => Self::ReplicaFailed { reason },
            EngineError::Grammar(reason) => Self::OutputSpec(reason),
            EngineError::MemoryBudget(reason) => Self::InsufficientMemory(reason),
            EngineError::Overloaded { queued } => Self::Overloaded {
                model: model.clone(),
                queued,
            },
        }
    }
}
