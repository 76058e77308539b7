//! From an OpenAI request to what genrt runs: the function input, the conversation around it,
//! the generation parameters and the output constraint. Pure, so that every mapping rule is
//! unit-tested here; the handlers only resolve names and run.

use genrt_functions::{
    ChatRole, ChatTurn, Conversation, FunctionSpec, GenerationParams, ModelId, ModelTarget,
    OutputSpec,
};
use serde_json::{json, Value};

use super::wire::{
    unsupported, ChatMessage, CommonFields, Content, OpenAiError, ResponseFormat, Stop,
};

/// Most choices one request may ask for (`n`, or prompts × `n` for completions).
pub const MAX_CHOICES: u32 = 8;

/// The template of a model's pass-through function: the caller's text, as it is.
const PASSTHROUGH_PROMPT: &str = "{{ content }}";

/// The pass-through function that serves a model id directly. OpenAI's defaults apply
/// (temperature 1, top_p 1) rather than genrt's, so that clients get what they expect.
pub fn passthrough_spec(model: &ModelId, output: OutputSpec, timeout_s: u32) -> FunctionSpec {
    FunctionSpec {
        target: ModelTarget::Model(model.clone()),
        adapters: Vec::new(),
        system: None,
        prompt: PASSTHROUGH_PROMPT.to_owned(),
        input_schema: None,
        params: GenerationParams {
            temperature: Some(1.0),
            top_p: Some(1.0),
            ..GenerationParams::default()
        },
        cache: Default::default(),
        output,
        timeout_s,
        // Pass-through actors are cheap to start again; they should not linger.
        idle_timeout_s: 60,
        webhook: None,
        evaluation: Vec::new(),
    }
}

/// The input of a pass-through function.
pub fn passthrough_input(text: &str) -> Value {
    json!({ "content": text })
}

/// A function's input from the text a client sent (the last user message, or the prompt):
/// a JSON object is the input itself; other text goes to the function's one required string
/// property when its schema has exactly one, and otherwise to `input`.
pub fn function_input(spec: &FunctionSpec, text: &str) -> Value {
    if let Ok(object @ Value::Object(_)) = serde_json::from_str::<Value>(text.trim()) {
        return object;
    }
    let field = spec
        .input_schema
        .as_ref()
        .and_then(sole_required_string)
        .unwrap_or_else(|| "input".to_owned());
    json!({ field: text })
}

fn sole_required_string(schema: &Value) -> Option<String> {
    let required = schema.get("required")?.as_array()?;
    let [name] = required.as_slice() else {
        return None;
    };
    let name = name.as_str()?;
    let kind = schema.get("properties")?.get(name)?.get("type")?;
    (kind == "string").then(|| name.to_owned())
}

/// The messages as a conversation: the system text (every `system` and `developer` message,
/// joined), the earlier turns, and the last user message, which must end the list.
pub fn conversation(messages: &[ChatMessage]) -> Result<(Conversation, String), OpenAiError> {
    let mut system: Vec<String> = Vec::new();
    let mut turns: Vec<ChatTurn> = Vec::new();
    for (i, message) in messages.iter().enumerate() {
        let field = format!("messages[{i}]");
        if message.tool_calls.as_ref().is_some_and(|c| !c.is_empty()) {
            return Err(unsupported(
                &format!("{field}.tool_calls"),
                "tool calls are not supported",
            ));
        }
        let text = text_of(message.content.as_ref(), &field)?;
        match message.role.as_str() {
            "system" | "developer" => system.push(text),
            "user" => turns.push(ChatTurn {
                role: ChatRole::User,
                content: text,
            }),
            "assistant" => turns.push(ChatTurn {
                role: ChatRole::Assistant,
                content: text,
            }),
            other => {
                return Err(unsupported(
                    &format!("{field}.role"),
                    format!(
                        "role `{other}` is not supported: use system, developer, user or assistant"
                    ),
                ))
            }
        }
    }
    let last = match turns.pop() {
        Some(ChatTurn {
            role: ChatRole::User,
            content,
        }) => content,
        _ => {
            return Err(unsupported(
                "messages",
                "the last message (after any system messages) must be from the user",
            ))
        }
    };
    let conversation = Conversation {
        system: (!system.is_empty()).then(|| system.join("\n\n")),
        history: turns,
        ..Conversation::default()
    };
    Ok((conversation, last))
}

fn text_of(content: Option<&Content>, field: &str) -> Result<String, OpenAiError> {
    match content {
        None => Ok(String::new()),
        Some(Content::Text(text)) => Ok(text.clone()),
        Some(Content::Parts(parts)) => {
            let mut texts = Vec::with_capacity(parts.len());
            for (j, part) in parts.iter().enumerate() {
                match (part.kind.as_str(), &part.text) {
                    ("text", Some(text)) => texts.push(text.as_str()),
                    (kind, _) => {
                        return Err(unsupported(
                            &format!("{field}.content[{j}]"),
                            format!("content parts of type `{kind}` are not supported: text only"),
                        ))
                    }
                }
            }
            Ok(texts.join("\n"))
        }
    }
}

/// genrt's parameters for the OpenAI ones; `max_tokens` as the endpoint reads it. Parameters
/// genrt cannot honour are refused rather than ignored, except at their neutral values, which
/// clients send by default.
pub fn params(c: &CommonFields, max_tokens: Option<u32>) -> Result<GenerationParams, OpenAiError> {
    for (field, value) in [
        ("presence_penalty", c.presence_penalty),
        ("frequency_penalty", c.frequency_penalty),
    ] {
        if value.is_some_and(|v| v != 0.0) {
            return Err(unsupported(
                field,
                format!("`{field}` is not supported; omit it or send 0"),
            ));
        }
    }
    if c.logit_bias
        .as_ref()
        .is_some_and(|b| !(b.is_null() || b.as_object().is_some_and(|o| o.is_empty())))
    {
        return Err(unsupported("logit_bias", "`logit_bias` is not supported"));
    }
    let seed = c
        .seed
        .map(|seed| {
            u32::try_from(seed)
                .map_err(|_| unsupported("seed", "`seed` must be between 0 and 4294967295"))
        })
        .transpose()?;
    let params = GenerationParams {
        max_tokens,
        temperature: c.temperature,
        top_p: c.top_p,
        seed,
        stop: c.stop.clone().map(Stop::into_vec).unwrap_or_default(),
        ..GenerationParams::default()
    };
    if let Err((field, message)) = params.validate() {
        return Err(unsupported(&field, message));
    }
    Ok(params)
}

/// How many choices, checked.
pub fn choices(n: Option<u32>, stream: bool) -> Result<u32, OpenAiError> {
    match n.unwrap_or(1) {
        0 => Err(unsupported("n", "`n` must be at least 1")),
        n if n > 1 && stream => Err(unsupported(
            "n",
            "streaming returns one choice; send `n` of 1 or do not stream",
        )),
        n if n > MAX_CHOICES => Err(unsupported(
            "n",
            format!("`n` must be at most {MAX_CHOICES}"),
        )),
        n => Ok(n),
    }
}

/// The constraint a response format asks for.
pub fn output(format: Option<&ResponseFormat>) -> OutputSpec {
    match format {
        None | Some(ResponseFormat::Text) => OutputSpec::Text,
        Some(ResponseFormat::JsonObject) => OutputSpec::Json {
            json_schema: Some(json!({ "type": "object" })),
        },
        Some(ResponseFormat::JsonSchema { json_schema }) => OutputSpec::Json {
            json_schema: Some(
                json_schema
                    .schema
                    .clone()
                    .unwrap_or_else(|| json!({ "type": "object" })),
            ),
        },
    }
}

/// Most texts one embeddings request may carry.
pub const MAX_EMBEDDING_INPUTS: usize = 256;

/// The texts of an embeddings request: one string or an array of non-empty strings.
pub fn embedding_inputs(input: &Value) -> Result<Vec<String>, OpenAiError> {
    let texts: Vec<&Value> = match input {
        Value::Array(items) => items.iter().collect(),
        one => vec![one],
    };
    if texts.is_empty() || texts.len() > MAX_EMBEDDING_INPUTS {
        return Err(unsupported(
            "input",
            format!("`input` must hold 1 to {MAX_EMBEDDING_INPUTS} texts"),
        ));
    }
    texts
        .into_iter()
        .enumerate()
        .map(|(i, text)| match text {
            Value::String(s) if !s.is_empty() => Ok(s.clone()),
            Value::String(_) => Err(unsupported(
                &format!("input[{i}]"),
                "an input text is empty",
            )),
            _ => Err(unsupported(
                &format!("input[{i}]"),
                "inputs must be text; token arrays are not supported",
            )),
        })
        .collect()
}

/// An embedding as OpenAI's clients ask for it: floats, or base64 of little-endian f32 (what
/// the official clients request by default, being a quarter of the size).
pub fn encode_embedding(vector: &[f32], format: Option<&str>) -> Result<Value, OpenAiError> {
    use base64::Engine as _;
    match format {
        None | Some("float") => Ok(json!(vector)),
        Some("base64") => {
            let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
            Ok(Value::String(
                base64::engine::general_purpose::STANDARD.encode(bytes),
            ))
        }
        Some(other) => Err(unsupported(
            "encoding_format",
            format!("`encoding_format` `{other}` is not supported: use float or base64"),
        )),
    }
}

/// OpenAI knows `stop` and `length`; a stop sequence is a `stop` there.
pub fn finish_reason(genrt: &str) -> String {
    match genrt {
        "length" => "length",
        _ => "stop",
    }
    .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(role: &str, content: Value) -> ChatMessage {
        serde_json::from_value(json!({ "role": role, "content": content })).unwrap()
    }

    #[test]
    fn messages_become_a_system_text_history_and_last_user_turn() {
        let (c, last) = conversation(&[
            message("system", json!("Be brief.")),
            message("user", json!("Hi")),
            message("assistant", json!("Hello!")),
            message("developer", json!("Use French.")),
            message(
                "user",
                json!([{"type": "text", "text": "How"}, {"type": "text", "text": "are you?"}]),
            ),
        ])
        .unwrap();
        assert_eq!(c.system.as_deref(), Some("Be brief.\n\nUse French."));
        assert_eq!(
            c.history,
            vec![
                ChatTurn {
                    role: ChatRole::User,
                    content: "Hi".into()
                },
                ChatTurn {
                    role: ChatRole::Assistant,
                    content: "Hello!".into()
                },
            ]
        );
        assert_eq!(last, "How\nare you?");
    }

    #[test]
    fn unsupported_messages_are_refused_with_their_field() {
        let err = conversation(&[
            message("user", json!("a")),
            message("assistant", json!("b")),
        ])
        .unwrap_err();
        assert_eq!(err.0.field.as_deref(), Some("messages"));
        let err = conversation(&[message("tool", json!("x"))]).unwrap_err();
        assert_eq!(err.0.field.as_deref(), Some("messages[0].role"));
        let err = conversation(&[message(
            "user",
            json!([{"type": "image_url", "image_url": {"url": "x"}}]),
        )])
        .unwrap_err();
        assert_eq!(err.0.field.as_deref(), Some("messages[0].content[0]"));
        assert!(conversation(&[]).is_err());
    }

    #[test]
    fn function_input_takes_objects_or_fills_the_sole_required_string() {
        let spec: FunctionSpec = serde_json::from_value(json!({
            "model": "m", "prompt": "{{ topic }}",
            "input_schema": {"type": "object", "properties": {"topic": {"type": "string"}}, "required": ["topic"]}
        }))
        .unwrap();
        assert_eq!(
            function_input(&spec, "solar farms"),
            json!({"topic": "solar farms"})
        );
        assert_eq!(
            function_input(&spec, r#"{"topic": "x", "audience": "kids"}"#),
            json!({"topic": "x", "audience": "kids"})
        );
        let open: FunctionSpec =
            serde_json::from_value(json!({"model": "m", "prompt": "{{ input }}"})).unwrap();
        assert_eq!(function_input(&open, "[1, 2]"), json!({"input": "[1, 2]"}));
    }

    #[test]
    fn params_map_and_refuse_what_cannot_be_honoured() {
        let common = CommonFields {
            temperature: Some(0.0),
            stop: Some(Stop::One("\n".into())),
            seed: Some(7),
            presence_penalty: Some(0.0),
            logit_bias: Some(json!({})),
            ..CommonFields::default()
        };
        let p = params(&common, Some(5)).unwrap();
        assert_eq!(
            (p.max_tokens, p.temperature, p.seed),
            (Some(5), Some(0.0), Some(7))
        );
        assert_eq!(p.stop, vec!["\n".to_owned()]);
        let field = |c: CommonFields| params(&c, None).unwrap_err().0.field.unwrap();
        let base = CommonFields::default;
        assert_eq!(
            field(CommonFields {
                frequency_penalty: Some(0.5),
                ..base()
            }),
            "frequency_penalty"
        );
        assert_eq!(
            field(CommonFields {
                seed: Some(-1),
                ..base()
            }),
            "seed"
        );
        assert_eq!(
            field(CommonFields {
                logit_bias: Some(json!({"1": 2})),
                ..base()
            }),
            "logit_bias"
        );
        assert_eq!(
            field(CommonFields {
                temperature: Some(9.0),
                ..base()
            }),
            "temperature"
        );
    }

    #[test]
    fn embedding_inputs_and_encodings() {
        assert_eq!(embedding_inputs(&json!("a")).unwrap(), vec!["a"]);
        assert_eq!(
            embedding_inputs(&json!(["a", "b"])).unwrap(),
            vec!["a", "b"]
        );
        let field = |v: Value| embedding_inputs(&v).unwrap_err().0.field.unwrap();
        assert_eq!(field(json!([])), "input");
        assert_eq!(field(json!(["a", ""])), "input[1]");
        assert_eq!(field(json!([[1, 2]])), "input[0]");
        assert_eq!(encode_embedding(&[0.5], None).unwrap(), json!([0.5]));
        // 0.5f32 is 0x3F000000: little-endian bytes 00 00 00 3F.
        assert_eq!(
            encode_embedding(&[0.5], Some("base64")).unwrap(),
            json!("AAAAPw==")
        );
        assert!(encode_embedding(&[0.5], Some("int8")).is_err());
    }

    #[test]
    fn choices_and_formats() {
        assert_eq!(choices(None, true).unwrap(), 1);
        assert_eq!(choices(Some(3), false).unwrap(), 3);
        assert!(choices(Some(2), true).is_err());
        assert!(choices(Some(0), false).is_err());
        assert!(choices(Some(MAX_CHOICES + 1), false).is_err());
        let schema: ResponseFormat = serde_json::from_value(json!({
            "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "required": ["a"]}}
        }))
        .unwrap();
        assert_eq!(
            output(Some(&schema)),
            OutputSpec::Json {
                json_schema: Some(json!({"type": "object", "required": ["a"]}))
            }
        );
        assert!(output(None).is_text());
        assert_eq!(finish_reason("stop_sequence"), "stop");
        assert_eq!(finish_reason("length"), "length");
    }
}
