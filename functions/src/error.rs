//! Errors of the function domain. Each names the field at fault so that the HTTP edge can
//! say precisely what to fix.

/// A function spec that cannot be deployed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    pub field: String,
    pub message: String,
}

impl SpecError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// An invocation input that the function cannot run with.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InputError {
    /// The input does not satisfy the function's `input_schema`.
    #[error("input{field} {message}")]
    Schema { field: String, message: String },
    /// A template refers to something the input does not provide, or fails to render.
    #[error("template `{template}` failed to render: {message}")]
    Template { template: String, message: String },
    /// A template needed more instructions, output or memory than one render may use.
    #[error("template `{template}` exceeds a rendering limit: {message}")]
    TemplateLimit { template: String, message: String },
    /// The routing field is missing or not a string and the route has no default.
    #[error("input.{field} is required to choose a model")]
    Route { field: String },
    /// Per-invocation parameter overrides are out of range.
    #[error("params.{field}: {message}")]
    Params { field: String, message: String },
}
