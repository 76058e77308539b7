//! A spec made ready to run: templates compiled and the input schema built once, then used
//! for every invocation of that version. The function actor holds one of these.

use minijinja::{Environment, UndefinedBehavior};
use serde_json::Value;

use crate::limits::CappedOutput;
use crate::{FunctionSpec, InputError, OutputSpec, SpecError, TemplateLimits};

const SYSTEM: &str = "system";
const PROMPT: &str = "prompt";

/// The messages a function produces for one input, before the model's chat template.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct RenderedPrompt {
    pub system: Option<String>,
    /// Earlier turns of a conversation the caller supplied, oldest first, between the system
    /// message and `user`.
    pub history: Vec<ChatTurn>,
    pub user: String,
    /// `user` goes to the model as it is, without the chat template (text completion).
    pub raw: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChatRole {
    User,
    Assistant,
}

impl ChatRole {
    pub fn as_str(self) -> &'static str {
        match self {
            ChatRole::User => "user",
            ChatRole::Assistant => "assistant",
        }
    }
}

/// One earlier message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ChatTurn {
    pub role: ChatRole,
    pub content: String,
}

/// A conversation the caller gives whole (the OpenAI-compatible API), placed around what the
/// function's own templates render: its turns come before the rendered prompt, and its system
/// message is used only when the function has no system template, so that a function's
/// instructions cannot be replaced by a caller.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Conversation {
    pub system: Option<String>,
    pub history: Vec<ChatTurn>,
    pub raw: bool,
    /// Structured output cut short by `max_tokens` is returned as it is (finish reason
    /// `length`) instead of failing as invalid output: OpenAI's API behaves so, and its
    /// clients check the finish reason.
    pub cut_output_ok: bool,
}

impl Conversation {
    pub fn wrap(&self, mut prompt: RenderedPrompt) -> RenderedPrompt {
        if prompt.system.is_none() {
            prompt.system.clone_from(&self.system);
        }
        prompt.history.clone_from(&self.history);
        prompt.raw = self.raw;
        prompt
    }
}

pub struct PreparedFunction {
    spec: FunctionSpec,
    templates: Environment<'static>,
    limits: TemplateLimits,
    input_schema: Option<jsonschema::Validator>,
    output_schema: Option<jsonschema::Validator>,
}

impl std::fmt::Debug for PreparedFunction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedFunction")
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

impl PreparedFunction {
    /// Compiled with the default [`TemplateLimits`].
    pub fn new(spec: FunctionSpec) -> Result<Self, SpecError> {
        Self::with_limits(spec, TemplateLimits::default())
    }

    pub fn with_limits(spec: FunctionSpec, limits: TemplateLimits) -> Result<Self, SpecError> {
        let mut templates = Environment::new();
        // Tenants write these templates: every render gets a fixed instruction budget.
        templates.set_fuel(Some(limits.fuel));
        // Printing a variable the input lacks is a caller error, not empty text; testing one
        // (`{% if audience %}`) is how templates make a field optional, so that stays allowed.
        templates.set_undefined_behavior(UndefinedBehavior::SemiStrict);
        if let Some(system) = &spec.system {
            templates
                .add_template_owned(SYSTEM, system.clone())
                .map_err(|e| SpecError::invalid(SYSTEM, e.to_string()))?;
        }
        templates
            .add_template_owned(PROMPT, spec.prompt.clone())
            .map_err(|e| SpecError::invalid(PROMPT, e.to_string()))?;
        let input_schema = spec
            .input_schema
            .as_ref()
            .map(jsonschema::validator_for)
            .transpose()
            .map_err(|e| SpecError::invalid("input_schema", e.to_string()))?;
        let output_schema = match &spec.output {
            OutputSpec::Json {
                json_schema: Some(schema),
            } => Some(
                jsonschema::validator_for(schema)
                    .map_err(|e| SpecError::invalid("output.json_schema", e.to_string()))?,
            ),
            _ => None,
        };
        Ok(Self {
            spec,
            templates,
            limits,
            input_schema,
            output_schema,
        })
    }

    pub fn spec(&self) -> &FunctionSpec {
        &self.spec
    }

    pub fn limits(&self) -> TemplateLimits {
        self.limits
    }

    /// Validates the input against the schema, then renders both templates with it.
    pub fn render(&self, input: &Value) -> Result<RenderedPrompt, InputError> {
        if let Some(validator) = &self.input_schema {
            if let Some(err) = validator.iter_errors(input).next() {
                let pointer = err.instance_path().to_string();
                return Err(InputError::Schema {
                    field: pointer_to_dotted(&pointer),
                    message: err.to_string(),
                });
            }
        }
        if !input.is_object() {
            return Err(InputError::Schema {
                field: String::new(),
                message: "must be a JSON object".into(),
            });
        }
        let render = |name: &str| {
            let template = self
                .templates
                .get_template(name)
                .map_err(|e| InputError::Template {
                    template: name.to_owned(),
                    message: describe(&e),
                })?;
            let mut out = CappedOutput::new(self.limits.max_output_bytes);
            let rendered = template.render_captured_to(input, &mut out);
            if out.overflowed {
                return Err(InputError::TemplateLimit {
                    template: name.to_owned(),
                    message: format!(
                        "the rendered text exceeds {} bytes",
                        self.limits.max_output_bytes
                    ),
                });
            }
            if let Err(e) = &rendered {
                if e.kind() == minijinja::ErrorKind::OutOfFuel {
                    return Err(InputError::TemplateLimit {
                        template: name.to_owned(),
                        message: format!(
                            "rendering needs more than {} instructions",
                            self.limits.fuel
                        ),
                    });
                }
            }
            rendered
                .map(|_| String::from_utf8(out.text).expect("minijinja writes UTF-8"))
                .map_err(|e| {
                    // Name the variables the input lacks: more useful than minijinja's position.
                    let mut missing: Vec<String> = template
                        .undeclared_variables(false)
                        .into_iter()
                        .filter(|v| input.get(v).is_none())
                        .collect();
                    missing.sort();
                    let message = if e.kind() == minijinja::ErrorKind::UndefinedError
                        && !missing.is_empty()
                    {
                        format!("missing variable(s): {}", missing.join(", "))
                    } else {
                        describe(&e)
                    };
                    InputError::Template {
                        template: name.to_owned(),
                        message,
                    }
                })
        };
        let system = match self.spec.system {
            Some(_) => Some(render(SYSTEM)?),
            None => None,
        };
        Ok(RenderedPrompt {
            system,
            user: render(PROMPT)?,
            ..RenderedPrompt::default()
        })
    }
}

impl PreparedFunction {
    /// For JSON output: the parsed value, checked against the output schema. Decoding is
    /// constrained by the same schema, so a failure here means the text was cut short.
    pub fn parse_output(&self, text: &str) -> Result<Option<Value>, String> {
        if !matches!(self.spec.output, OutputSpec::Json { .. }) {
            return Ok(None);
        }
        let value: Value = serde_json::from_str(text.trim())
            .map_err(|e| format!("the output is not valid JSON: {e}"))?;
        if let Some(validator) = &self.output_schema {
            if let Some(err) = validator.iter_errors(&value).next() {
                return Err(format!(
                    "the output does not match the schema at {}: {err}",
                    err.instance_path()
                ));
            }
        }
        Ok(Some(value))
    }
}

/// minijinja's own message plus its detail ("undefined value", with the expression).
fn describe(err: &minijinja::Error) -> String {
    match err.detail() {
        Some(detail) => format!("{}: {detail}", err.kind()),
        None => err.to_string(),
    }
}

/// `/items/0/name` becomes `.items.0.name`, appended to `input` by the error's display.
fn pointer_to_dotted(pointer: &str) -> String {
    pointer
        .split('/')
        .skip(1)
        .map(|seg| format!(".{}", seg.replace("~1", "/").replace("~0", "~")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn prepared(value: Value) -> PreparedFunction {
        PreparedFunction::new(serde_json::from_value(value).unwrap()).unwrap()
    }

    fn limited(prompt: &str, limits: TemplateLimits) -> PreparedFunction {
        let spec = serde_json::from_value(json!({"model": "m", "prompt": prompt})).unwrap();
        PreparedFunction::with_limits(spec, limits).unwrap()
    }

    #[test]
    fn a_template_out_of_fuel_is_refused_as_a_limit() {
        let limits = TemplateLimits {
            fuel: 1000,
            ..TemplateLimits::default()
        };
        let looping = limited("{% for a in range(100000) %}{{ a }}{% endfor %}", limits);
        match looping.render(&json!({})) {
            Err(InputError::TemplateLimit { template, message }) => {
                assert_eq!(template, "prompt");
                assert!(message.contains("1000 instructions"), "{message}");
            }
            other => panic!("expected a template limit, got {other:?}"),
        }
        // The same shape within the budget renders.
        let small = limited("{% for a in range(3) %}{{ a }}{% endfor %}", limits);
        assert_eq!(small.render(&json!({})).unwrap().user, "012");
    }

    #[test]
    fn rendered_text_past_the_cap_is_refused_as_a_limit() {
        let limits = TemplateLimits {
            max_output_bytes: 100,
            ..TemplateLimits::default()
        };
        let big = limited("{{ \"x\" * 101 }}", limits);
        assert!(matches!(
            big.render(&json!({})),
            Err(InputError::TemplateLimit { .. })
        ));
        let fits = limited("{{ \"x\" * 100 }}", limits);
        assert_eq!(fits.render(&json!({})).unwrap().user.len(), 100);
    }

    #[test]
    fn renders_system_and_prompt_with_the_input() {
        let f = prepared(json!({
            "model": "m",
            "system": "Style: {{ style | default('plain') }}",
            "prompt": "Describe {{ product }} in {{ words }} words."
        }));
        let out = f
            .render(&json!({"product": "a lamp", "words": 20}))
            .unwrap();
        assert_eq!(out.system.as_deref(), Some("Style: plain"));
        assert_eq!(out.user, "Describe a lamp in 20 words.");
    }

    #[test]
    fn a_missing_variable_is_an_error_naming_the_template() {
        let f = prepared(json!({"model": "m", "prompt": "Hello {{ name }}"}));
        match f.render(&json!({})) {
            Err(InputError::Template { template, message }) => {
                assert_eq!(template, "prompt");
                assert_eq!(message, "missing variable(s): name");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn optional_fields_can_be_tested_in_conditions() {
        let f =
            prepared(json!({"model": "m", "prompt": "A{% if extra %} {{ extra }}{% endif %}."}));
        assert_eq!(f.render(&json!({})).unwrap().user, "A.");
        assert_eq!(f.render(&json!({"extra": "b"})).unwrap().user, "A b.");
    }

    #[test]
    fn schema_errors_name_the_field() {
        let f = prepared(json!({
            "model": "m",
            "prompt": "{{ price }}",
            "input_schema": {
                "type": "object",
                "properties": {"price": {"type": "number"}},
                "required": ["price"]
            }
        }));
        match f.render(&json!({"price": "cheap"})) {
            Err(InputError::Schema { field, .. }) => assert_eq!(field, ".price"),
            other => panic!("unexpected {other:?}"),
        }
        match f.render(&json!({})) {
            Err(e @ InputError::Schema { .. }) => assert!(e.to_string().contains("price"), "{e}"),
            other => panic!("unexpected {other:?}"),
        }
        assert!(f.render(&json!({"price": 3})).is_ok());
    }

    #[test]
    fn json_output_is_parsed_and_checked_against_its_schema() {
        let f = prepared(json!({
            "model": "m", "prompt": "x",
            "output": {"format": "json", "json_schema": {"type": "object", "required": ["title"]}}
        }));
        assert_eq!(
            f.parse_output(" {\"title\": \"a\"} ").unwrap(),
            Some(json!({"title": "a"}))
        );
        assert!(f
            .parse_output("{\"body\": 1}")
            .unwrap_err()
            .contains("schema"));
        assert!(f
            .parse_output("{\"title\": ")
            .unwrap_err()
            .contains("not valid JSON"));
        let text = prepared(json!({"model": "m", "prompt": "x"}));
        assert_eq!(text.parse_output("anything").unwrap(), None);
    }

    #[test]
    fn non_object_input_is_rejected() {
        let f = prepared(json!({"model": "m", "prompt": "x"}));
        assert!(matches!(
            f.render(&json!([1])),
            Err(InputError::Schema { .. })
        ));
    }
}
