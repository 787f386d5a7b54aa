//! Constrained decoding (`constrain`) on the tiny Gemma 4 fixture. Its weights are random, so
//! the model goes wherever the grammar lets it: the hardest case for a constraint. For JSON
//! Schemas with nested objects, enums, bounded arrays, bounded integers and strings, for a
//! regular expression and a Lark grammar, every output — greedy, sampled from the GPU's
//! candidates (top-k 64) and sampled over the whole vocabulary (top-k 0), several seeds —
//! ends with an end token and parses and validates (`jsonschema`), or matches. Also: bad
//! formats are refused with a clear error, and an unconstrained generation afterwards is
//! unaffected.

mod common;

use gemma_wgpu::constrain::{ConstraintFactory, OutputFormat};
use gemma_wgpu::generate::{Finish, Generation};
use gemma_wgpu::model::Model;
use gemma_wgpu::sampler::SamplingParams;
use gemma_wgpu::tokenizer::Tokenizer;
use serde_json::json;

const MAX_TOKENS: usize = 160;

fn load() -> (Model, Tokenizer) {
    common::tiny_gemma4("constrained", false, 256)
}

fn settings() -> Vec<(&'static str, SamplingParams)> {
    vec![
        ("greedy", SamplingParams::greedy()),
        ("top-k 64, seed 1", common::sampled(64, 1)),
        ("top-k 64, seed 2", common::sampled(64, 2)),
        ("top-k 0, seed 3", common::sampled(0, 3)),
        ("top-k 0, seed 4", common::sampled(0, 4)),
    ]
}

/// Runs every setting under `format`; returns the outputs.
fn outputs(
    model: &mut Model,
    tok: &Tokenizer,
    f: &ConstraintFactory,
    format: &OutputFormat,
) -> Vec<String> {
    let prompt = [2u32, 105, 300, 107];
    let mut out = Vec::new();
    for (name, params) in settings() {
        model.reset();
        let c = f.build(format).expect("build constraint");
        let mut g = common::block(Generation::start_constrained(
            model,
            tok,
            &prompt,
            params,
            MAX_TOKENS,
            Some(c),
        ))
        .expect("start");
        let mut text = String::new();
        while let Some(p) = common::block(g.next(model, tok)).expect("next") {
            text.push_str(&p.text);
        }
        assert!(
            matches!(g.finish(), Some(Finish::EndToken(_))),
            "{name}: ended with {:?} after {} tokens: {text:?}",
            g.finish(),
            g.tokens().len()
        );
        eprintln!("{name}: {text}");
        out.push(text);
    }
    out
}

#[test]
fn json_schemas_validate() {
    let (mut model, tok) = load();
    let f = ConstraintFactory::new(&tok, model.cfg.vocab).expect("factory");
    let schemas = [
        json!({
            "type": "object",
            "properties": {
                "name": {"type": "string", "maxLength": 10},
                "age": {"type": "integer", "minimum": 0, "maximum": 120},
                "tags": {"type": "array", "items": {"enum": ["red", "green", "blue"]},
                         "minItems": 1, "maxItems": 3}
            },
            "required": ["name", "age", "tags"],
            "additionalProperties": false
        }),
        json!({
            "type": "object",
            "properties": {
                "user": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "integer", "minimum": 1, "maximum": 999},
                        "role": {"enum": ["admin", "guest"]}
                    },
                    "required": ["id", "role"],
                    "additionalProperties": false
                },
                "active": {"type": "boolean"}
            },
            "required": ["user", "active"],
            "additionalProperties": false
        }),
        json!({
            "type": "array",
            "items": {"type": "integer", "minimum": -5, "maximum": 5},
            "minItems": 2,
            "maxItems": 4
        }),
    ];
    for schema in schemas {
        let validator = jsonschema::validator_for(&schema).expect("valid schema");
        for text in outputs(
            &mut model,
            &tok,
            &f,
            &OutputFormat::JsonSchema {
                schema: schema.clone(),
            },
        ) {
            let value: serde_json::Value =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"));
            if let Err(e) = validator.validate(&value) {
                panic!("{text} does not validate: {e}");
            }
        }
    }
}

#[test]
fn regex_and_lark_match() {
    let (mut model, tok) = load();
    let f = ConstraintFactory::new(&tok, model.cfg.vocab).expect("factory");
    let rx = OutputFormat::Regex {
        pattern: "[0-9]{3}-[a-z]{2,4}".into(),
    };
    for text in outputs(&mut model, &tok, &f, &rx) {
        let b = text.as_bytes();
        assert!(
            b.len() >= 6
                && b.len() <= 8
                && b[..3].iter().all(u8::is_ascii_digit)
                && b[3] == b'-'
                && b[4..].iter().all(u8::is_ascii_lowercase),
            "{text:?} does not match"
        );
    }
    let lark = OutputFormat::Grammar {
        grammar: "start: answer \".\"\nanswer: \"yes\" | \"no\" | \"maybe\"\n".into(),
    };
    for text in outputs(&mut model, &tok, &f, &lark) {
        assert!(
            ["yes.", "no.", "maybe."].contains(&text.as_str()),
            "{text:?}"
        );
    }
}

#[test]
fn bad_formats_are_refused_and_the_model_goes_on() {
    let (mut model, tok) = load();
    let f = ConstraintFactory::new(&tok, model.cfg.vocab).expect("factory");
    for (what, bad) in [
        (
            "regex",
            OutputFormat::Regex {
                pattern: "[0-9".into(),
            },
        ),
        (
            "lark",
            OutputFormat::Grammar {
                grammar: "start: undefined_rule".into(),
            },
        ),
        (
            "schema",
            OutputFormat::JsonSchema {
                schema: json!({"type": "no-such-type"}),
            },
        ),
    ] {
        let err = f
            .build(&bad)
            .err()
            .unwrap_or_else(|| panic!("{what}: accepted"));
        let msg = err.to_string();
        assert!(msg.contains("output format"), "{what}: {msg}");
        eprintln!("{what}: {msg}");
    }
    // A constrained run, then an unconstrained one: the mask must be gone.
    outputs(
        &mut model,
        &tok,
        &f,
        &OutputFormat::Grammar {
            grammar: "start: \"ok\"".into(),
        },
    );
    model.reset();
    let prompt = [2u32, 105, 300, 107];
    let mut free = common::block(Generation::start(
        &mut model,
        &tok,
        &prompt,
        SamplingParams::greedy(),
        8,
    ))
    .unwrap();
    let mut ids = Vec::new();
    while let Some(p) = common::block(free.next(&mut model, &tok)).unwrap() {
        ids.push(p.id);
    }
    model.reset();
    let rows = common::block(model.score(&prompt, 1)).unwrap();
    assert_eq!(
        ids.first(),
        rows.last().unwrap().ids.first(),
        "greedy after a constrained run"
    );
}
