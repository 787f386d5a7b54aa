//! Gemma 4 tool calling on the tiny Gemma 4 fixture (random weights, so the model goes
//! wherever the grammar lets it): a request with `tool_choice` `required` or a named function
//! makes calls whose arguments follow each tool's schema (`jsonschema`), greedy and sampled;
//! the calls come out of the output stream whole; the conversation continued with the tool's
//! result renders the way transformers renders it (fixture) and generates again. A Gemma 3
//! template refuses tools with a clear error.

mod common;

use gemma_wgpu::chat::{ChatTemplate, Family};
use gemma_wgpu::constrain::ConstraintFactory;
use gemma_wgpu::generate::{Finish, Generation};
use gemma_wgpu::gguf;
use gemma_wgpu::model::Model;
use gemma_wgpu::openai::{prepare_chat, ChatCompletionRequest, ReplyFilter, ToolChoice};
use gemma_wgpu::sampler::SamplingParams;
use gemma_wgpu::tokenizer::Tokenizer;
use gemma_wgpu::tool_calls::{ParsedCall, ReplyPart};
use serde_json::{json, Value};

const MAX_TOKENS: usize = 200;

fn fixture_path() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/gemma4_mtp/gemma4_mtp_target.gguf")
}

fn template(tok: &Tokenizer) -> ChatTemplate {
    let (g, _) = gguf::open(fixture_path()).expect("open fixture");
    ChatTemplate::from_gguf(&g.metadata, tok).expect("template")
}

fn tools() -> Value {
    json!([
        {"type": "function", "function": {
            "name": "get_weather",
            "description": "Current weather for a city",
            "parameters": {"type": "object",
                "properties": {
                    "city": {"type": "string", "description": "City name", "maxLength": 12},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                    "days": {"type": "integer"},
                    "detail": {"type": "object",
                        "properties": {"hourly": {"type": "boolean"},
                                       "fields": {"type": "array", "maxItems": 3,
                                                  "items": {"type": "string", "minLength": 1, "maxLength": 8}}},
                        "required": ["hourly"]}},
                "required": ["city", "unit"]}}},
        {"type": "function", "function": {
            "name": "set_alarm",
            "description": "Sets an alarm",
            "parameters": {"type": "object",
                "properties": {"time": {"type": "string", "minLength": 4, "maxLength": 5},
                               "repeat": {"type": ["integer", "null"]},
                               "label": {"anyOf": [{"type": "string", "maxLength": 10}, {"type": "number"}]}},
                "required": ["time"]}}}
    ])
}

fn request(body: Value) -> ChatCompletionRequest {
    ChatCompletionRequest::parse(body.to_string().as_bytes()).expect("valid request")
}

/// Generates a reply to `req` and returns its parts and how it ended.
fn reply(
    model: &mut Model,
    tok: &Tokenizer,
    template: &ChatTemplate,
    factory: &ConstraintFactory,
    req: &ChatCompletionRequest,
    params: SamplingParams,
) -> (Vec<ReplyPart>, Option<Finish>) {
    let prepared = prepare_chat(template, tok, req).expect("prepare");
    let constraint = prepared
        .format
        .as_ref()
        .map(|f| factory.build(f).expect("build the tool grammar"));
    model.reset();
    let mut g = common::block(Generation::start_constrained(
        model,
        tok,
        &prepared.ids,
        params,
        MAX_TOKENS,
        constraint,
    ))
    .expect("start");
    let mut filter = ReplyFilter::new(Vec::new(), prepared.tools);
    let mut parts = Vec::new();
    while let Some(p) = common::block(g.next(model, tok)).expect("next") {
        parts.extend(filter.push(&p.text));
    }
    parts.extend(filter.finish());
    (parts, g.finish())
}

fn calls(parts: &[ReplyPart]) -> Vec<&ParsedCall> {
    parts
        .iter()
        .filter_map(|p| match p {
            ReplyPart::Call(c) => Some(c),
            ReplyPart::Text(_) => None,
        })
        .collect()
}

fn check_arguments(call: &ParsedCall) {
    let tools = tools();
    let schema = tools
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["function"]["name"] == call.name.as_str())
        .unwrap_or_else(|| panic!("the model called {:?}, which is not a tool", call.name))
        ["function"]["parameters"]
        .clone();
    let validator = jsonschema::validator_for(&schema).expect("schema compiles");
    let errors: Vec<String> = validator
        .iter_errors(&call.arguments)
        .map(|e| e.to_string())
        .collect();
    assert!(
        errors.is_empty(),
        "{}({}) does not validate: {errors:?}",
        call.name,
        call.arguments
    );
}

#[test]
fn forced_calls_follow_each_tools_schema() {
    let (mut model, tok) = common::tiny_gemma4("tool calls", false, 1024);
    let template = template(&tok);
    assert!(template.supports_tools());
    let factory = ConstraintFactory::new(&tok, model.cfg.vocab).expect("factory");
    let settings = [
        ("greedy", SamplingParams::greedy()),
        ("top-k 64, seed 1", common::sampled(64, 1)),
        ("top-k 0, seed 2", common::sampled(0, 2)),
    ];
    let mut seen = std::collections::BTreeSet::new();
    let forced = [
        (json!("required"), false),
        (json!("required"), true),
        (
            json!({"type": "function", "function": {"name": "set_alarm"}}),
            true,
        ),
    ];
    for (choice, parallel) in forced {
        let req = request(json!({
            "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
            "tools": tools(),
            "tool_choice": choice,
            "parallel_tool_calls": parallel,
        }));
        let one_call = !parallel || matches!(req.tool_choice, ToolChoice::Function(_));
        for (name, params) in settings {
            let (parts, finish) = reply(&mut model, &tok, &template, &factory, &req, params);
            let made = calls(&parts);
            eprintln!("{choice} parallel {parallel}, {name}: {parts:?}");
            assert!(!made.is_empty(), "{name}: no call in {parts:?}");
            if one_call {
                // One call, then the grammar allows nothing but an end token.
                assert!(
                    matches!(finish, Some(Finish::EndToken(_))),
                    "{name}: ended with {finish:?}: {parts:?}"
                );
                assert_eq!(made.len(), 1, "{name}: {made:?}");
                assert_eq!(parts.len(), 1, "{name}: text beside the call: {parts:?}");
            } else {
                // Random weights may go on calling until the token limit: then the last part
                // is the call that was cut, returned as its text.
                let complete = match finish {
                    Some(Finish::EndToken(_)) => parts.len(),
                    Some(Finish::MaxTokens) => parts.len() - 1,
                    other => panic!("{name}: ended with {other:?}: {parts:?}"),
                };
                assert!(
                    parts[..complete]
                        .iter()
                        .all(|p| matches!(p, ReplyPart::Call(_))),
                    "{name}: text beside the calls: {parts:?}"
                );
            }
            if let ToolChoice::Function(f) = &req.tool_choice {
                assert_eq!(&made[0].name, f);
            }
            for call in made {
                check_arguments(call);
                seen.insert(call.name.clone());
            }
        }
    }
    assert!(seen.contains("set_alarm"), "{seen:?}");
}

/// The conversation after a call: the tool's result joins the model's turn, and the prompt
/// ends there so the model goes on in that turn. The text is what transformers'
/// `apply_chat_template` renders for the same conversation in Google's message format
/// (`pkg-scripts/make_tool_chat_reference.py`).
#[test]
fn tool_results_render_like_transformers() {
    let fixture: Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("tests/data/gemma4/tool_chat.json"),
        )
        .expect("tests/data/gemma4/tool_chat.json"),
    )
    .expect("fixture JSON");
    let tok = Tokenizer::from_gguf(&gguf::open(fixture_path()).unwrap().0.metadata).unwrap();
    let template = template(&tok);
    for case in fixture["cases"].as_array().unwrap() {
        let req = request(json!({
            "messages": case["openai_messages"],
            "tools": case["tools"],
        }));
        let prepared = prepare_chat(&template, &tok, &req).expect("prepare");
        let text = tok.decode(&prepared.ids).unwrap();
        assert_eq!(
            text,
            case["text"].as_str().unwrap(),
            "case {}",
            case["name"]
        );
        let ids: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
        assert_eq!(prepared.ids, ids, "case {}", case["name"]);
    }
}

#[test]
fn the_conversation_goes_on_after_a_tool_result() {
    let (mut model, tok) = common::tiny_gemma4("tool results", false, 1024);
    let template = template(&tok);
    let factory = ConstraintFactory::new(&tok, model.cfg.vocab).expect("factory");
    let first = request(json!({
        "messages": [{"role": "user", "content": "Weather in Oslo?"}],
        "tools": tools(),
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
    }));
    let (parts, _) = reply(
        &mut model,
        &tok,
        &template,
        &factory,
        &first,
        SamplingParams::greedy(),
    );
    let call = calls(&parts)[0].clone();
    let second = request(json!({
        "messages": [
            {"role": "user", "content": "Weather in Oslo?"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
                "function": {"name": call.name, "arguments": call.arguments_json()}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "{\"temperature\": -3, \"sky\": \"snow\"}"},
        ],
        "tools": tools(),
    }));
    let prepared = prepare_chat(&template, &tok, &second).expect("prepare");
    let text = tok.decode(&prepared.ids).unwrap();
    assert!(
        text.contains("<|tool_call>call:get_weather{")
            && text.contains("<|tool_response>response:get_weather{sky:<|\"|>snow<|\"|>,temperature:-3}<tool_response|>"),
        "{text}"
    );
    assert_eq!(text.matches("<|turn>model").count(), 1, "{text}");
    // With tool_choice auto the reply is free: it ends on an end token or the token limit,
    // and whatever it holds is text or parsed calls.
    let (parts, finish) = reply(
        &mut model,
        &tok,
        &template,
        &factory,
        &second,
        SamplingParams::greedy(),
    );
    assert!(finish.is_some(), "{parts:?}");
}

#[test]
fn templates_without_tools_refuse_them() {
    let tok = Tokenizer::from_gguf(&gguf::open(fixture_path()).unwrap().0.metadata).unwrap();
    let req = request(json!({
        "messages": [{"role": "user", "content": "hi"}],
        "tools": tools(),
    }));
    let e = prepare_chat(&ChatTemplate::builtin(Family::Gemma3), &tok, &req).unwrap_err();
    assert_eq!(e.param.as_deref(), Some("tools"));
    assert!(e.message.contains("no tool-call format"), "{}", e.message);
    // tool_choice none: the tools are not declared and nothing is refused.
    let req = request(json!({
        "messages": [{"role": "user", "content": "hi"}],
        "tools": tools(),
        "tool_choice": "none",
    }));
    let p = prepare_chat(&ChatTemplate::builtin(Family::Gemma3), &tok, &req).expect("prepare");
    assert!(!p.tools && p.format.is_none());
}
