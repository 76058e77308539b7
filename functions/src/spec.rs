//! The function spec: everything a developer deploys, and the rules a spec must satisfy.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::{
    evaluation::validate_cases, EvaluationCase, GenerationParams, ModelId, PreparedFunction, Route,
    SpecError,
};

const MAX_TEMPLATE_BYTES: usize = 64 * 1024;
const MAX_TIMEOUT_S: u32 = 3600;
const MAX_IDLE_TIMEOUT_S: u32 = 86_400;
/// Adapters one function may stack on its model. Each adds its low-rank products to every
/// adapted layer of every decode step; llama-server and vLLM users rarely stack more.
pub const MAX_ADAPTERS: usize = 4;
/// The largest adapter scale (either sign). Scales beyond a few times the trained one only
/// amplify noise; the bound catches a typo (100 for 1.00) at deploy time.
pub const MAX_ADAPTER_SCALE: f32 = 8.0;

/// A LoRA adapter of the function's model, applied at `scale` (1 is the adapter as trained,
/// 0 the base model).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterRef {
    pub id: String,
    #[serde(default = "default_scale")]
    pub scale: f32,
}

fn default_scale() -> f32 {
    1.0
}

/// Which model serves a function: a fixed one, or one chosen per invocation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelTarget {
    Model(ModelId),
    Route(Route),
}

/// Response caching. Unset, deterministic generations (temperature 0 or a fixed seed) are
/// cached and sampled ones are not; `Some(true)` caches sampled ones too, which suits
/// functions whose variety does not matter (hot-topic prewarming); `Some(false)` never caches.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CachePolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Seconds an entry lives; `None` uses the server's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_s: Option<u64>,
}

/// What the model must produce. `Json` and `Grammar` constrain decoding itself, so the text is
/// valid by construction (unless `max_tokens` cuts it short).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "format", rename_all = "snake_case")]
pub enum OutputSpec {
    #[default]
    Text,
    Json {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        json_schema: Option<Value>,
    },
    /// A GBNF grammar whose root rule is `root`.
    Grammar { grammar: String },
}

impl OutputSpec {
    pub fn is_text(&self) -> bool {
        matches!(self, OutputSpec::Text)
    }
}

/// One immutable version of a function.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionSpec {
    #[serde(flatten)]
    pub target: ModelTarget,
    /// LoRA adapters of `model` the function runs with. Skipped when empty so that the
    /// digests of specs without any do not change.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub adapters: Vec<AdapterRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    pub prompt: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_schema: Option<Value>,
    #[serde(default)]
    pub params: GenerationParams,
    #[serde(default)]
    pub cache: CachePolicy,
    #[serde(default, skip_serializing_if = "OutputSpec::is_text")]
    pub output: OutputSpec,
    #[serde(default = "default_timeout_s")]
    pub timeout_s: u32,
    #[serde(default = "default_idle_timeout_s")]
    pub idle_timeout_s: u32,
    /// Where results of asynchronous invocations are announced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookTarget>,
    /// Inputs with reference outputs, to score versions before one is promoted. Skipped when
    /// empty so that the digests of specs without one do not change.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub evaluation: Vec<EvaluationCase>,
}

/// A callback for results: events are POSTed to `url`, signed (Standard Webhooks). Whether a
/// URL may be called at all (the SSRF guard) is decided by the runtime, which knows the network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookTarget {
    pub url: String,
    /// Event types: `invocation.succeeded`, `invocation.failed`, `invocation.started`. Empty
    /// means the first two.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<String>,
}

pub const WEBHOOK_EVENTS: [&str; 3] = [
    "invocation.succeeded",
    "invocation.failed",
    "invocation.started",
];

impl WebhookTarget {
    /// The events this target receives, defaults applied.
    pub fn wants(&self, event: &str) -> bool {
        if self.events.is_empty() {
            return event != "invocation.started";
        }
        self.events.iter().any(|e| e == event)
    }

    pub fn validate(&self) -> Result<(), SpecError> {
        if self.url.is_empty() || self.url.len() > 2048 {
            return Err(SpecError::invalid(
                "webhook.url",
                "must be 1-2048 characters",
            ));
        }
        if let Some(e) = self
            .events
            .iter()
            .find(|e| !WEBHOOK_EVENTS.contains(&e.as_str()))
        {
            return Err(SpecError::invalid(
                "webhook.events",
                format!("unknown event `{e}`; known: {}", WEBHOOK_EVENTS.join(", ")),
            ));
        }
        Ok(())
    }
}

pub fn default_timeout_s() -> u32 {
    60
}

pub fn default_idle_timeout_s() -> u32 {
    300
}

impl FunctionSpec {
    /// Every model an invocation of this function can run on.
    pub fn models(&self) -> Vec<&ModelId> {
        match &self.target {
            ModelTarget::Model(m) => vec![m],
            ModelTarget::Route(r) => r.targets().collect(),
        }
    }

    /// Checks everything that can be checked without running the function: templates and
    /// schema compile, parameters are in range, every model it can reach is registered.
    /// Compiling a tenant's template can take unbounded memory (minijinja folds constant
    /// expressions such as `"x" * 100000000` as it compiles), so a server calls
    /// [`Self::validate_fields`] where it serves and compiles on its render pool instead.
    pub fn validate(&self, is_registered: impl Fn(&ModelId) -> bool) -> Result<(), SpecError> {
        self.validate_fields(is_registered)?;
        // Compiling is the only reliable syntax check for templates and schemas.
        PreparedFunction::new(self.clone()).map(|_| ())
    }

    /// Adapters go with one fixed model (a route names its adapter per case, as
    /// `base:adapter`); each is registered for it, once, with a finite scale in range.
    fn validate_adapters(&self, is_registered: impl Fn(&ModelId) -> bool) -> Result<(), SpecError> {
        if self.adapters.is_empty() {
            return Ok(());
        }
        let ModelTarget::Model(model) = &self.target else {
            return Err(SpecError::invalid(
                "adapters",
                "adapters go with `model`; a route names a case's adapter as `base:adapter`",
            ));
        };
        if self.adapters.len() > MAX_ADAPTERS {
            return Err(SpecError::invalid(
                "adapters",
                format!("at most {MAX_ADAPTERS} adapters"),
            ));
        }
        let (base, _) = model.split_adapter();
        for (i, adapter) in self.adapters.iter().enumerate() {
            if !adapter.scale.is_finite() || adapter.scale.abs() > MAX_ADAPTER_SCALE {
                return Err(SpecError::invalid(
                    format!("adapters[{i}].scale"),
                    format!(
                        "must be a number between -{MAX_ADAPTER_SCALE} and {MAX_ADAPTER_SCALE}"
                    ),
                ));
            }
            if self.adapters[..i].iter().any(|a| a.id == adapter.id) {
                return Err(SpecError::invalid(
                    format!("adapters[{i}].id"),
                    format!("adapter `{}` is listed twice", adapter.id),
                ));
            }
            let full = ModelId::new(format!("{base}:{}", adapter.id));
            if adapter.id.contains(':') || !is_registered(&full) {
                return Err(SpecError::invalid(
                    format!("adapters[{i}].id"),
                    format!("model `{base}` has no adapter `{}`", adapter.id),
                ));
            }
        }
        Ok(())
    }

    /// [`Self::validate`] without compiling the templates.
    pub fn validate_fields(
        &self,
        is_registered: impl Fn(&ModelId) -> bool,
    ) -> Result<(), SpecError> {
        match &self.target {
            ModelTarget::Model(model) => {
                if !is_registered(model) {
                    return Err(SpecError::invalid(
                        "model",
                        format!("model `{model}` is not registered"),
                    ));
                }
            }
            ModelTarget::Route(route) => {
                if route.field.is_empty() {
                    return Err(SpecError::invalid("route.field", "must not be empty"));
                }
                if route.cases.is_empty() && route.default.is_none() {
                    return Err(SpecError::invalid(
                        "route",
                        "needs at least one case or a default",
                    ));
                }
                if let Some(model) = route.targets().find(|m| !is_registered(m)) {
                    return Err(SpecError::invalid(
                        "route",
                        format!("model `{model}` is not registered"),
                    ));
                }
            }
        }
        self.validate_adapters(&is_registered)?;
        for (field, text) in [
            ("system", self.system.as_deref()),
            ("prompt", Some(&self.prompt)),
        ] {
            if text.is_some_and(|t| t.len() > MAX_TEMPLATE_BYTES) {
                return Err(SpecError::invalid(field, "template is longer than 64 KiB"));
            }
        }
        if self.prompt.trim().is_empty() {
            return Err(SpecError::invalid("prompt", "must not be empty"));
        }
        self.params.validate_spec()?;
        match &self.output {
            OutputSpec::Text => {}
            OutputSpec::Json {
                json_schema: Some(schema),
            } => {
                jsonschema::validator_for(schema)
                    .map_err(|e| SpecError::invalid("output.json_schema", e.to_string()))?;
            }
            OutputSpec::Json { json_schema: None } => {}
            OutputSpec::Grammar { grammar } => {
                if grammar.trim().is_empty() || grammar.len() > MAX_TEMPLATE_BYTES {
                    return Err(SpecError::invalid(
                        "output.grammar",
                        "must be 1 byte to 64 KiB of GBNF",
                    ));
                }
                if !grammar.contains("root") {
                    return Err(SpecError::invalid("output.grammar", "needs a `root` rule"));
                }
            }
        }
        if !(1..=MAX_TIMEOUT_S).contains(&self.timeout_s) {
            return Err(SpecError::invalid(
                "timeout_s",
                "must be between 1 and 3600",
            ));
        }
        if !(1..=MAX_IDLE_TIMEOUT_S).contains(&self.idle_timeout_s) {
            return Err(SpecError::invalid(
                "idle_timeout_s",
                "must be between 1 and 86400",
            ));
        }
        if let Some(webhook) = &self.webhook {
            webhook.validate()?;
        }
        validate_cases("evaluation", &self.evaluation)?;
        Ok(())
    }

    /// A digest of the spec's meaning: two specs with the same digest are the same version,
    /// whatever the key order of their JSON.
    pub fn digest(&self) -> String {
        let value = serde_json::to_value(self).expect("a spec always serializes");
        let mut canonical = String::new();
        write_canonical(&value, &mut canonical);
        hex::encode(Sha256::digest(canonical.as_bytes()))
    }
}

/// JSON with object keys sorted, so that equal values always produce equal text.
fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(&map[key], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(value: Value) -> FunctionSpec {
        serde_json::from_value(value).unwrap()
    }

    fn known(m: &ModelId) -> bool {
        m.as_str() == "m"
    }

    #[test]
    fn digest_ignores_key_order_but_not_content() {
        let a = spec(
            json!({"model": "m", "prompt": "hi", "input_schema": {"type": "object", "required": ["a"]}}),
        );
        let b = spec(
            json!({"input_schema": {"required": ["a"], "type": "object"}, "prompt": "hi", "model": "m"}),
        );
        let c = spec(json!({"model": "m", "prompt": "hello"}));
        assert_eq!(a.digest(), b.digest());
        assert_ne!(a.digest(), c.digest());
    }

    #[test]
    fn an_empty_evaluation_set_leaves_the_digest_alone() {
        // Specs deployed before evaluation sets existed keep their digest, so redeploying them
        // unchanged does not create a new version.
        let before = spec(json!({"model": "m", "prompt": "hi"}));
        let empty = spec(json!({"model": "m", "prompt": "hi", "evaluation": []}));
        let with = spec(json!({"model": "m", "prompt": "hi",
            "evaluation": [{"input": {}, "reference": "hello"}]}));
        assert_eq!(before.digest(), empty.digest());
        assert_ne!(before.digest(), with.digest());
        assert!(!serde_json::to_string(&before)
            .unwrap()
            .contains("evaluation"));
    }

    #[test]
    fn validation_names_the_field_at_fault() {
        let cases = [
            (json!({"model": "nope", "prompt": "x"}), "model"),
            (json!({"model": "m", "prompt": "{{ unclosed"}), "prompt"),
            (
                json!({"model": "m", "prompt": "x", "system": "{% if %}"}),
                "system",
            ),
            (
                json!({"model": "m", "prompt": "x", "input_schema": {"type": 7}}),
                "input_schema",
            ),
            (
                json!({"model": "m", "prompt": "x", "timeout_s": 0}),
                "timeout_s",
            ),
            (
                json!({"model": "m", "prompt": "x", "params": {"top_p": 0}}),
                "params.top_p",
            ),
            (
                json!({"route": {"field": "c", "cases": {"a": "zzz"}}, "prompt": "x"}),
                "route",
            ),
        ];
        for (value, field) in cases {
            let err = spec(value.clone()).validate(known).unwrap_err();
            assert_eq!(err.field, field, "{value}");
        }
        assert!(spec(json!({"model": "m", "prompt": "Hi {{ name }}"}))
            .validate(known)
            .is_ok());
    }

    #[test]
    fn a_spec_without_model_or_route_does_not_parse() {
        // That both are not given at once is checked at the HTTP edge, which names the field.
        let neither = json!({"prompt": "x"});
        assert!(serde_json::from_value::<FunctionSpec>(neither).is_err());
    }
}
