//! The OpenAI API's wire shapes, as far as genrt serves them.
//!
//! Written here rather than taken from a client crate (async-openai's types): a server must
//! accept what every client sends, including fields it then refuses with a clear error, and it
//! documents these shapes in genrt's own OpenAPI document. Unknown fields are ignored, as
//! OpenAI's API does, so that newer clients keep working.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::error::{ApiError, ErrorCode};

/// `POST /openai/v1/chat/completions`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct ChatCompletionRequest {
    /// A registered model id, or the name of one of the caller's functions.
    pub model: String,
    pub messages: Vec<ChatMessage>,
    /// Wins over `max_tokens`.
    #[serde(default)]
    pub max_completion_tokens: Option<u32>,
    #[serde(default)]
    pub response_format: Option<ResponseFormat>,
    /// Not supported; refused when true.
    #[serde(default)]
    pub logprobs: Option<bool>,
    /// Not supported; refused unless empty.
    #[serde(default)]
    #[schema(value_type = Option<Vec<Object>>)]
    pub tools: Option<Vec<Value>>,
    #[serde(flatten)]
    pub common: CommonFields,
}

/// `POST /openai/v1/completions` (legacy text completion).
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct CompletionRequest {
    pub model: String,
    /// A string, or an array of strings (each one a separate choice).
    #[schema(value_type = Object)]
    pub prompt: Prompt,
    /// Not supported; refused unless null.
    #[serde(default)]
    pub logprobs: Option<u32>,
    /// Not supported; refused when true.
    #[serde(default)]
    pub echo: Option<bool>,
    /// Not supported; refused unless null.
    #[serde(default)]
    pub suffix: Option<String>,
    /// Not supported; refused above 1.
    #[serde(default)]
    pub best_of: Option<u32>,
    #[serde(flatten)]
    pub common: CommonFields,
}

/// The fields both generation endpoints take.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
pub struct CommonFields {
    #[serde(default)]
    pub stream: bool,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub max_tokens: Option<u32>,
    #[serde(default)]
    pub temperature: Option<f32>,
    #[serde(default)]
    pub top_p: Option<f32>,
    /// Choices to generate, 1-8; streaming takes only 1.
    #[serde(default)]
    pub n: Option<u32>,
    /// One stop string or up to 8, each 1-256 bytes.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub stop: Option<Stop>,
    #[serde(default)]
    pub seed: Option<i64>,
    /// Accepted only as 0.
    #[serde(default)]
    pub presence_penalty: Option<f32>,
    /// Accepted only as 0.
    #[serde(default)]
    pub frequency_penalty: Option<f32>,
    /// Not supported; refused unless empty.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub logit_bias: Option<Value>,
    /// An end-user id: when `model` names a function alias that splits its traffic, it keeps
    /// this user on one version (unless a `Genrt-Split-Key` header is given). Recorded
    /// nowhere.
    #[serde(default)]
    pub user: Option<String>,
}

impl CommonFields {
    pub fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage)
    }
}

/// `POST /openai/v1/embeddings`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct EmbeddingRequest {
    /// A registered model configured with `embeddings = true`.
    pub model: String,
    /// A string or an array of up to 256 strings.
    #[schema(value_type = Object)]
    pub input: Value,
    /// `float` (the default) or `base64`.
    #[serde(default)]
    pub encoding_format: Option<String>,
    /// Must be the model's own width when given.
    #[serde(default)]
    pub dimensions: Option<u32>,
    #[serde(default)]
    pub user: Option<String>,
}

/// `POST /openai/v1/embeddings` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct EmbeddingList {
    /// `list`
    pub object: &'static str,
    pub data: Vec<EmbeddingObject>,
    pub model: String,
    pub usage: EmbeddingUsage,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EmbeddingObject {
    /// `embedding`
    pub object: &'static str,
    pub index: u32,
    /// Unit-length floats, or with `encoding_format: "base64"` their little-endian f32 bytes
    /// in base64.
    #[schema(value_type = Object)]
    pub embedding: Value,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EmbeddingUsage {
    pub prompt_tokens: u32,
    pub total_tokens: u32,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct StreamOptions {
    /// Send a last chunk with the usage of the whole request (and empty `choices`).
    #[serde(default)]
    pub include_usage: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

impl Stop {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Stop::One(s) => vec![s],
            Stop::Many(v) => v,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    One(String),
    Many(Vec<String>),
    /// Token arrays: genrt takes text only, and says so.
    Tokens(Vec<Value>),
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct ChatMessage {
    /// `system`, `developer`, `user` or `assistant`.
    pub role: String,
    /// A string, or an array of `{"type": "text", "text": ...}` parts.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub content: Option<Content>,
    #[serde(default)]
    pub name: Option<String>,
    /// Tool calls are not supported; a message carrying them is refused.
    #[serde(default)]
    #[schema(value_type = Option<Vec<Object>>)]
    pub tool_calls: Option<Vec<Value>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Clone, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

/// Structured output, mapped onto genrt's constrained decoding.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResponseFormat {
    Text,
    /// Any JSON object.
    JsonObject,
    /// JSON valid against `json_schema.schema`.
    JsonSchema {
        json_schema: JsonSchemaFormat,
    },
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct JsonSchemaFormat {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub schema: Option<Value>,
    /// Decoding is always constrained by the schema; `strict` changes nothing.
    #[serde(default)]
    pub strict: Option<bool>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ChatCompletion {
    pub id: String,
    /// `chat.completion`
    pub object: &'static str,
    pub created: i64,
    pub model: String,
    pub choices: Vec<ChatChoice>,
    pub usage: CompletionUsage,
    pub system_fingerprint: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ChatChoice {
    pub index: u32,
    pub message: AssistantMessage,
    /// `stop` or `length`.
    pub finish_reason: String,
    #[schema(value_type = Option<Object>)]
    pub logprobs: Option<Value>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AssistantMessage {
    /// `assistant`
    pub role: &'static str,
    pub content: String,
    pub refusal: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ChatCompletionChunk {
    pub id: String,
    /// `chat.completion.chunk`
    pub object: &'static str,
    pub created: i64,
    pub model: String,
    pub choices: Vec<ChunkChoice>,
    /// Set on the last chunk only, when `stream_options.include_usage` asked for it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<CompletionUsage>,
    pub system_fingerprint: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ChunkChoice {
    pub index: u32,
    pub delta: Delta,
    pub finish_reason: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub logprobs: Option<Value>,
}

#[derive(Debug, Default, Serialize, ToSchema)]
pub struct Delta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TextCompletion {
    pub id: String,
    /// `text_completion`
    pub object: &'static str,
    pub created: i64,
    pub model: String,
    pub choices: Vec<TextChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<CompletionUsage>,
    pub system_fingerprint: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TextChoice {
    pub index: u32,
    pub text: String,
    /// `stop` or `length`; null in stream chunks before the last.
    pub finish_reason: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub logprobs: Option<Value>,
}

#[derive(Debug, Clone, Copy, Default, Serialize, ToSchema)]
pub struct CompletionUsage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub total_tokens: u32,
    pub prompt_tokens_details: PromptTokensDetails,
}

#[derive(Debug, Clone, Copy, Default, Serialize, ToSchema)]
pub struct PromptTokensDetails {
    pub cached_tokens: u32,
}

impl CompletionUsage {
    pub fn add(&mut self, prompt: u32, cached: u32, completion: u32) {
        self.prompt_tokens += prompt;
        self.completion_tokens += completion;
        self.total_tokens += prompt + completion;
        self.prompt_tokens_details.cached_tokens += cached;
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ModelObject {
    pub id: String,
    /// `model`
    pub object: &'static str,
    pub created: i64,
    /// `genrt` for registered models, the tenant for its functions.
    pub owned_by: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ModelListObject {
    /// `list`
    pub object: &'static str,
    pub data: Vec<ModelObject>,
}

/// OpenAI's error envelope, used on every `/openai/v1` route.
#[derive(Debug, Serialize, ToSchema)]
pub struct OpenAiErrorBody {
    pub error: OpenAiErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OpenAiErrorDetail {
    pub message: String,
    /// `invalid_request_error`, `authentication_error`, `permission_error`,
    /// `not_found_error`, `rate_limit_error` or `server_error`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The request field at fault, when there is one.
    pub param: Option<String>,
    /// genrt's own error code (`model_not_found`, `rate_limited`, ...).
    pub code: String,
}

/// An [`ApiError`] rendered in OpenAI's shape. Validation failures answer 400, as OpenAI's
/// API does (genrt's native API says 422), so that clients map them as they expect.
#[derive(Debug)]
pub struct OpenAiError(pub ApiError);

impl From<ApiError> for OpenAiError {
    fn from(err: ApiError) -> Self {
        Self(err)
    }
}

impl std::fmt::Display for OpenAiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl OpenAiError {
    pub fn status(&self) -> actix_web::http::StatusCode {
        use actix_web::http::StatusCode;
        match crate::api::error::status_of(&self.0) {
            StatusCode::UNPROCESSABLE_ENTITY => StatusCode::BAD_REQUEST,
            other => other,
        }
    }

    pub fn body(&self) -> OpenAiErrorBody {
        use actix_web::http::StatusCode;
        let status = self.status();
        let kind = match status {
            StatusCode::UNAUTHORIZED => "authentication_error",
            StatusCode::FORBIDDEN => "permission_error",
            StatusCode::NOT_FOUND => "not_found_error",
            StatusCode::TOO_MANY_REQUESTS => "rate_limit_error",
            s if s.is_server_error() => "server_error",
            _ => "invalid_request_error",
        };
        OpenAiErrorBody {
            error: OpenAiErrorDetail {
                message: self.0.message.clone(),
                kind,
                param: self.0.field.clone(),
                code: self.0.code.as_str().to_owned(),
            },
        }
    }
}

impl actix_web::ResponseError for OpenAiError {
    fn status_code(&self) -> actix_web::http::StatusCode {
        self.status()
    }

    fn error_response(&self) -> actix_web::HttpResponse {
        // Headers (Retry-After, WWW-Authenticate) as the native API sends them.
        let mut response = self.0.error_response();
        *response.status_mut() = self.status();
        response.set_body(actix_web::body::BoxBody::new(
            serde_json::to_string(&self.body()).expect("an error serializes"),
        ))
    }
}

/// A request the OpenAI-compatible API refuses: a 400 naming the field.
pub fn unsupported(field: &str, message: impl Into<String>) -> OpenAiError {
    OpenAiError(ApiError::new(ErrorCode::InvalidRequest, message).with_field(field))
}
