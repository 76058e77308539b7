//! Property-based fuzzing of the spec parser, spec validation and template rendering: whatever
//! a client deploys or sends as input, these never panic and fail only with typed errors.
//!
//! Stable Rust has no libFuzzer, so `proptest` generates the inputs: 4096 cases per property,
//! or `PROPTEST_CASES`; with the default the whole file runs in about a second, so it is part
//! of `make test`. A longer run: `PROPTEST_CASES=100000 cargo test --release -p genrt-functions
//! --test fuzz`.

use genrt_functions::{
    corpus_bleu, rouge_l, sentence_bleu, FunctionSpec, InputError, ModelId, PreparedFunction,
};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

/// Any JSON value, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,12}".prop_map(Value::String),
        template_text().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(key(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Keys biased towards the names a spec and a JSON Schema use, so that generated objects get
/// past the parser's first checks and reach validation.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "model", "route", "field", "cases", "default", "system", "prompt", "input_schema",
            "params", "temperature", "top_p", "max_tokens", "seed", "stop", "cache", "enabled",
            "ttl_s", "output", "format", "json_schema", "grammar", "timeout_s", "idle_timeout_s",
            "webhook", "url", "events", "evaluation", "input", "reference", "type", "properties",
            "required", "items", "enum", "minimum", "pattern", "name", "x",
        ])
        .prop_map(str::to_owned),
        1 => "[a-z_]{1,8}",
    ]
}

/// Text made of Jinja syntax fragments and words, so that many cases parse and render.
fn template_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        prop::sample::select(vec![
            "{{",
            "}}",
            "{%",
            "%}",
            "{#",
            "#}",
            " if ",
            " else ",
            " endif ",
            " for ",
            " in ",
            " endfor ",
            " set ",
            " = ",
            " name ",
            " x ",
            " x.y ",
            " items ",
            "|upper",
            "|length",
            "|default('d')",
            "|join(',')",
            "(",
            ")",
            "[",
            "]",
            "'",
            "\"",
            " ~ ",
            " + ",
            " 1 ",
            " loop.index ",
            " range(3) ",
            " not ",
            " is defined ",
            "\n",
            "-",
        ])
        .prop_map(str::to_owned),
        "[a-zA-Z0-9 ,.!?]{0,6}",
    ];
    prop::collection::vec(piece, 0..14).prop_map(|pieces| pieces.concat())
}

/// Spec-shaped JSON: the known fields with arbitrary, often wrong, values.
fn spec_like() -> impl Strategy<Value = Value> {
    (
        prop::option::of(prop_oneof![Just(json!("m")), any_json()]),
        prop::option::of(any_json()),
        prop_oneof![template_text().prop_map(Value::String), any_json()],
        prop::option::of(template_text()),
        prop::collection::btree_map(key(), any_json(), 0..4),
    )
        .prop_map(|(model, route, prompt, system, extra)| {
            let mut object: Map<String, Value> = extra.into_iter().collect();
            if let Some(model) = model {
                object.insert("model".into(), model);
            }
            if let Some(route) = route {
                object.insert("route".into(), route);
            }
            object.insert("prompt".into(), prompt);
            if let Some(system) = system {
                object.insert("system".into(), Value::String(system));
            }
            Value::Object(object)
        })
}

fn registered(model: &ModelId) -> bool {
    model.as_str() == "m"
}

/// What must hold of any spec that parses: validation returns (never panics), and a valid
/// spec (the only kind that is stored) survives serialization unchanged, digest included.
/// Invalid ones need not: an out-of-range float such as a temperature of 1e227 becomes
/// infinity as an `f32`, which JSON writes as null.
fn check_parsed(spec: FunctionSpec) -> Result<(), TestCaseError> {
    if spec.validate(registered).is_err() {
        return Ok(());
    }
    let text = serde_json::to_string(&spec).expect("a spec serializes");
    let again: FunctionSpec = serde_json::from_str(&text).expect("a serialized spec parses");
    prop_assert_eq!(again.digest(), spec.digest());
    prop_assert_eq!(again, spec);
    Ok(())
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4096)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn arbitrary_json_never_panics_the_spec_parser(value in any_json()) {
        if let Ok(spec) = serde_json::from_value::<FunctionSpec>(value) {
            check_parsed(spec)?;
        }
    }

    #[test]
    fn spec_shaped_json_parses_validates_and_round_trips(value in spec_like()) {
        if let Ok(spec) = serde_json::from_value::<FunctionSpec>(value) {
            check_parsed(spec)?;
        }
    }

    #[test]
    fn arbitrary_templates_and_inputs_render_or_fail_typed(
        prompt in template_text(),
        system in prop::option::of(template_text()),
        input in any_json(),
    ) {
        let spec: FunctionSpec = serde_json::from_value(json!({"model": "m", "prompt": prompt, "system": system}))
            .expect("a spec with string templates parses");
        match PreparedFunction::new(spec) {
            Ok(prepared) => match prepared.render(&input) {
                Ok(rendered) => prop_assert!(input.is_object(), "rendered a non-object input: {rendered:?}"),
                Err(InputError::Template { template, message } | InputError::TemplateLimit { template, message }) => {
                    prop_assert!(template == "prompt" || template == "system");
                    prop_assert!(!message.is_empty());
                }
                Err(InputError::Schema { .. }) => prop_assert!(!input.is_object()),
                Err(other) => prop_assert!(false, "unexpected error kind: {other:?}"),
            },
            Err(err) => prop_assert!(err.field == "prompt" || err.field == "system", "{err}"),
        }
    }

    #[test]
    fn scores_are_bounded_and_identity_scores_one(a in ".{0,40}", b in "[a-c ]{0,40}") {
        for (c, r) in [(a.as_str(), b.as_str()), (b.as_str(), a.as_str())] {
            for score in [rouge_l(c, r), sentence_bleu(c, r), corpus_bleu([(c, r)])] {
                prop_assert!((0.0..=1.0).contains(&score), "{score} for {c:?} / {r:?}");
            }
        }
        if !genrt_functions::tokenize(&b).is_empty() {
            prop_assert_eq!(rouge_l(&b, &b), 1.0);
            prop_assert!((sentence_bleu(&b, &b) - 1.0).abs() < 1e-9);
        }
    }
}
