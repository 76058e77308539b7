//! The one table of API errors: every error the HTTP API returns has a stable code, a status
//! and, for temporary conditions, a Retry-After. All of them render as
//! `{"error": {"code": "...", "message": "...", "field": "..."}}`.

use genrt_actors::InvokeError;
use genrt_functions::{InputError, SpecError};
use http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;

macro_rules! error_codes {
    ($( $variant:ident => ($code:literal, $status:ident, $retry:expr) ),* $(,)?) => {
        /// Stable, machine-readable error codes. The SDK mirrors this list.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum ErrorCode { $($variant),* }

        impl ErrorCode {
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant),*];

            pub fn parse(raw: &str) -> Option<ErrorCode> {
                Self::ALL.iter().copied().find(|c| c.as_str() == raw)
            }

            pub fn as_str(self) -> &'static str {
                match self { $(ErrorCode::$variant => $code),* }
            }

            pub fn status(self) -> StatusCode {
                match self { $(ErrorCode::$variant => StatusCode::$status),* }
            }

            /// Seconds a client should wait before retrying, for temporary conditions.
            pub fn retry_after(self) -> Option<u32> {
                match self { $(ErrorCode::$variant => $retry),* }
            }
        }
    };
}

error_codes! {
    InvalidJson => ("invalid_json", BAD_REQUEST, None),
    InvalidRequest => ("invalid_request", UNPROCESSABLE_ENTITY, None),
    UnsupportedMediaType => ("unsupported_media_type", UNSUPPORTED_MEDIA_TYPE, None),
    PayloadTooLarge => ("payload_too_large", PAYLOAD_TOO_LARGE, None),
    MissingCredentials => ("missing_credentials", UNAUTHORIZED, None),
    InvalidToken => ("invalid_token", UNAUTHORIZED, None),
    TokenExpired => ("token_expired", UNAUTHORIZED, None),
    InvalidApiKey => ("invalid_api_key", UNAUTHORIZED, None),
    InvalidSignature => ("invalid_signature", UNAUTHORIZED, None),
    StaleWebhook => ("stale_webhook", UNAUTHORIZED, None),
    InsufficientScope => ("insufficient_scope", FORBIDDEN, None),
    TenantDisabled => ("tenant_disabled", FORBIDDEN, None),
    ModelNotAllowed => ("model_not_allowed", FORBIDDEN, None),
    RateLimited => ("rate_limited", TOO_MANY_REQUESTS, Some(1)),
    ConcurrencyLimited => ("concurrency_limited", TOO_MANY_REQUESTS, Some(1)),
    QuotaExhausted => ("quota_exhausted", TOO_MANY_REQUESTS, Some(3600)),
    IdempotencyKeyReused => ("idempotency_key_reused", CONFLICT, None),
    IdempotencyInProgress => ("idempotency_in_progress", CONFLICT, Some(1)),
    NotCancellable => ("not_cancellable", CONFLICT, None),
    ReplayedWebhook => ("replayed_webhook", CONFLICT, None),
    TenantNotFound => ("tenant_not_found", NOT_FOUND, None),
    TenantExists => ("tenant_exists", CONFLICT, None),
    ApiKeyNotFound => ("api_key_not_found", NOT_FOUND, None),
    BatchNotFound => ("batch_not_found", NOT_FOUND, None),
    TriggerNotFound => ("trigger_not_found", NOT_FOUND, None),
    DeliveryNotFound => ("delivery_not_found", NOT_FOUND, None),
    CallbackUrlForbidden => ("callback_url_forbidden", UNPROCESSABLE_ENTITY, None),
    NotFound => ("not_found", NOT_FOUND, None),
    MethodNotAllowed => ("method_not_allowed", METHOD_NOT_ALLOWED, None),
    FunctionNotFound => ("function_not_found", NOT_FOUND, None),
    VersionNotFound => ("version_not_found", NOT_FOUND, None),
    AliasNotFound => ("alias_not_found", NOT_FOUND, None),
    NothingToRollBack => ("nothing_to_roll_back", CONFLICT, None),
    PromotionRefused => ("promotion_refused", CONFLICT, None),
    AliasChanged => ("alias_changed", CONFLICT, None),
    InvocationNotFound => ("invocation_not_found", NOT_FOUND, None),
    InvalidSpec => ("invalid_spec", UNPROCESSABLE_ENTITY, None),
    InvalidInput => ("invalid_input", UNPROCESSABLE_ENTITY, None),
    TemplateError => ("template_error", UNPROCESSABLE_ENTITY, None),
    TemplateLimit => ("template_limit", UNPROCESSABLE_ENTITY, None),
    InvalidParams => ("invalid_params", UNPROCESSABLE_ENTITY, None),
    MaxTokensExceedContext => ("max_tokens_exceeds_context", UNPROCESSABLE_ENTITY, None),
    PromptTooLong => ("prompt_too_long", UNPROCESSABLE_ENTITY, None),
    UnknownModel => ("unknown_model", UNPROCESSABLE_ENTITY, None),
    UnknownAdapter => ("unknown_adapter", UNPROCESSABLE_ENTITY, None),
    InvalidOutputSpec => ("invalid_output_spec", UNPROCESSABLE_ENTITY, None),
    NotCacheable => ("not_cacheable", UNPROCESSABLE_ENTITY, None),
    EmbeddingsNotSupported => ("embeddings_not_supported", BAD_REQUEST, None),
    InvalidOutput => ("invalid_output", BAD_GATEWAY, None),
    InsufficientMemory => ("insufficient_memory", SERVICE_UNAVAILABLE, Some(30)),
    ModelNotFound => ("model_not_found", NOT_FOUND, None),
    ModelExists => ("model_exists", CONFLICT, None),
    ModelDraining => ("model_draining", CONFLICT, None),
    InvalidModelSource => ("invalid_model_source", UNPROCESSABLE_ENTITY, None),
    ModelNotAwaitingUpload => ("model_not_awaiting_upload", CONFLICT, None),
    ModelSha256Mismatch => ("model_sha256_mismatch", UNPROCESSABLE_ENTITY, None),
    ModelNotGguf => ("model_not_gguf", UNPROCESSABLE_ENTITY, None),
    ModelGgufVersion => ("model_gguf_version", UNPROCESSABLE_ENTITY, None),
    ModelTruncated => ("model_truncated", UNPROCESSABLE_ENTITY, None),
    ModelUnsupportedArchitecture => ("model_unsupported_architecture", UNPROCESSABLE_ENTITY, None),
    ModelUnloadable => ("model_unloadable", UNPROCESSABLE_ENTITY, None),
    ModelTooLarge => ("model_too_large", UNPROCESSABLE_ENTITY, None),
    ModelDownloadFailed => ("model_download_failed", BAD_GATEWAY, None),
    ModelRegistrationInterrupted => ("model_registration_interrupted", UNPROCESSABLE_ENTITY, None),
    ModelQuotaExceeded => ("model_quota_exceeded", FORBIDDEN, None),
    ModelAlreadyQuantized => ("model_already_quantized", UNPROCESSABLE_ENTITY, None),
    ModelQuantizationFailed => ("model_quantization_failed", UNPROCESSABLE_ENTITY, None),
    AdapterNotFound => ("adapter_not_found", NOT_FOUND, None),
    NotAnAdapter => ("not_an_adapter", UNPROCESSABLE_ENTITY, None),
    AdapterMismatch => ("adapter_mismatch", UNPROCESSABLE_ENTITY, None),
    AdapterQuotaExceeded => ("adapter_quota_exceeded", FORBIDDEN, None),
    ModelUnavailable => ("model_unavailable", SERVICE_UNAVAILABLE, Some(5)),
    Overloaded => ("overloaded", SERVICE_UNAVAILABLE, Some(1)),
    ReplicaFailed => ("replica_failed", SERVICE_UNAVAILABLE, Some(1)),
    Timeout => ("timeout", GATEWAY_TIMEOUT, None),
    ShuttingDown => ("shutting_down", SERVICE_UNAVAILABLE, Some(5)),
    DatabaseUnavailable => ("database_unavailable", SERVICE_UNAVAILABLE, Some(2)),
    Internal => ("internal", INTERNAL_SERVER_ERROR, None),
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// The request field at fault, when there is one.
    pub field: Option<String>,
    /// Overrides the code's Retry-After when the wait is known (a rate limit's next token).
    pub retry_after: Option<u32>,
    /// Whether the same work, run again unchanged, may succeed: decided once, where the
    /// domain error becomes this one (see `From<InvokeError>`, `From<DbErr>`), and used by
    /// the queue to retry.
    pub retryable: bool,
}

/// The error envelope, as documented in the OpenAPI description.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `function_not_found`.
    #[schema(schema_with = error_code_ref)]
    pub code: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// The codes are an enum in the OpenAPI document, so that generated clients (the SDK's types)
/// get every code the server can answer with, from this one table.
impl utoipa::PartialSchema for ErrorCode {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some("Stable machine-readable error code."))
            .enum_values(Some(ErrorCode::ALL.iter().map(|c| c.as_str())))
            .into()
    }
}

impl ToSchema for ErrorCode {}

fn error_code_ref() -> utoipa::openapi::Ref {
    utoipa::openapi::Ref::from_schema_name("ErrorCode")
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            field: None,
            retry_after: None,
            retryable: false,
        }
    }

    pub fn retry_after(mut self, seconds: u32) -> Self {
        self.retry_after = Some(seconds.max(1));
        self
    }

    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    pub fn internal(err: impl std::fmt::Display) -> Self {
        tracing::error!(error = %err, "internal error");
        Self::new(ErrorCode::Internal, "internal error")
    }
}

impl From<ApiError> for ErrorBody {
    fn from(err: ApiError) -> Self {
        ErrorBody {
            error: ErrorDetail {
                code: err.code.as_str().to_owned(),
                message: err.message,
                field: err.field,
            },
        }
    }
}

impl From<SpecError> for ApiError {
    fn from(err: SpecError) -> Self {
        ApiError::new(ErrorCode::InvalidSpec, err.to_string()).with_field(err.field)
    }
}

impl From<InvokeError> for ApiError {
    fn from(err: InvokeError) -> Self {
        let retryable = err.is_retryable();
        let mut api = api_error_of(err);
        api.retryable = retryable;
        api
    }
}

fn api_error_of(err: InvokeError) -> ApiError {
    {
        let message = err.to_string();
        match err {
            InvokeError::Input(input) => match input {
                InputError::Schema { field, .. } => ApiError::new(ErrorCode::InvalidInput, message)
                    .with_field(format!("input{field}")),
                InputError::Template { template, .. } => {
                    ApiError::new(ErrorCode::TemplateError, message).with_field(template)
                }
                InputError::TemplateLimit { template, .. } => {
                    ApiError::new(ErrorCode::TemplateLimit, message).with_field(template)
                }
                InputError::Route { field } => ApiError::new(ErrorCode::InvalidInput, message)
                    .with_field(format!("input.{field}")),
                InputError::Params { field, .. } => {
                    ApiError::new(ErrorCode::InvalidParams, message)
                        .with_field(format!("params.{field}"))
                }
            },
            InvokeError::MaxTokensExceedContext { .. } => {
                ApiError::new(ErrorCode::MaxTokensExceedContext, message)
                    .with_field("params.max_tokens")
            }
            InvokeError::PromptTooLong { .. } => ApiError::new(ErrorCode::PromptTooLong, message),
            InvokeError::UnknownModel(_) => ApiError::new(ErrorCode::UnknownModel, message),
            InvokeError::UnknownAdapter { .. } => ApiError::new(ErrorCode::UnknownAdapter, message),
            InvokeError::ModelDraining(_) => ApiError::new(ErrorCode::ModelDraining, message),
            InvokeError::ModelUnavailable { .. } => {
                ApiError::new(ErrorCode::ModelUnavailable, message)
            }
            InvokeError::Overloaded { .. } => ApiError::new(ErrorCode::Overloaded, message),
            InvokeError::ReplicaFailed { .. } => ApiError::new(ErrorCode::ReplicaFailed, message),
            InvokeError::Timeout => ApiError::new(ErrorCode::Timeout, message),
            InvokeError::ShuttingDown => ApiError::new(ErrorCode::ShuttingDown, message),
            InvokeError::OutputSpec(_) => {
                ApiError::new(ErrorCode::InvalidOutputSpec, message).with_field("output")
            }
            InvokeError::InvalidOutput(_) => ApiError::new(ErrorCode::InvalidOutput, message),
            InvokeError::InsufficientMemory(_) => {
                ApiError::new(ErrorCode::InsufficientMemory, message)
            }
            InvokeError::Internal(detail) => ApiError::internal(detail),
        }
    }
}

impl From<sea_orm::DbErr> for ApiError {
    fn from(err: sea_orm::DbErr) -> Self {
        if is_unavailable(&err) {
            tracing::warn!(error = %err, "database unavailable");
            let mut api = ApiError::new(
                ErrorCode::DatabaseUnavailable,
                "the database is not answering",
            );
            api.retryable = true;
            return api;
        }
        let mut api = ApiError::internal(err);
        // A query that failed may not fail again (a lost connection, a lock timeout).
        api.retryable = true;
        api
    }
}

/// Whether a database error means "the database cannot be reached now" (a temporary
/// condition, 503 with Retry-After) rather than a bug or bad data (500). Besides failing to
/// get a connection, a connection that breaks mid-query surfaces as a query error with an
/// I/O or protocol cause, and a Postgres that is shutting down or starting answers with
/// SQLSTATE class 08 (connection exception) or 57P0x (operator intervention).
pub fn is_unavailable(err: &sea_orm::DbErr) -> bool {
    use sea_orm::sqlx::Error as Sqlx;
    use sea_orm::{DbErr, RuntimeErr};
    match err {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => true,
        DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) => match e {
            Sqlx::Io(_)
            | Sqlx::Tls(_)
            | Sqlx::Protocol(_)
            | Sqlx::PoolTimedOut
            | Sqlx::PoolClosed
            | Sqlx::WorkerCrashed => true,
            Sqlx::Database(db) => db
                .code()
                .is_some_and(|c| c.starts_with("08") || c.starts_with("57P")),
            _ => false,
        },
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_temporary_ones_carry_retry_after() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            assert!(seen.insert(code.as_str()), "duplicate {}", code.as_str());
            if code.status() == StatusCode::SERVICE_UNAVAILABLE
                || code.status() == StatusCode::TOO_MANY_REQUESTS
            {
                assert!(
                    code.retry_after().is_some(),
                    "{} lacks Retry-After",
                    code.as_str()
                );
            }
        }
    }
}
