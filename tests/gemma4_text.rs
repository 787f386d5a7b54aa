//! Gemma 4 text handling against `transformers`, on the tiny converted models' files
//! (`tests/data/gemma4/`): the tokenizer llama.cpp's converter wrote (`tokenizer.ggml.model =
//! gemma4` with merges) gives transformers' ids for every fixture prompt and decodes back; the
//! chat template embedded in the file renders exactly what `apply_chat_template` rendered,
//! system turn and stripped thinking included; and every end token is an end token.

use gemma_wgpu::chat::{ChatTemplate, Family, Message};
use gemma_wgpu::gguf::{self, Gguf};
use gemma_wgpu::tokenizer::Tokenizer;
use serde_json::Value;

const MODELS: [&str; 4] = [
    "gemma4_tiny_a",
    "gemma4_tiny_b_f16",
    "gemma4_tiny_c",
    "gemma4_tiny_d",
];

fn data(name: &str) -> String {
    format!("{}/tests/data/gemma4/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn json(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(data(name)).unwrap()).unwrap()
}

fn open(model: &str) -> (Gguf, Tokenizer) {
    let (g, _src) = gguf::open(data(&format!("{model}.gguf"))).unwrap();
    let t = Tokenizer::from_gguf(&g.metadata).unwrap();
    (g, t)
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// The messages of a chat-template fixture case.
fn messages(case: &Value) -> Vec<Message> {
    case["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| Message::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
        .collect()
}

#[test]
fn gguf_tokenizer_gives_transformers_ids() {
    for model in MODELS {
        let (g, tok) = open(model);
        assert_eq!(g.metadata.str("tokenizer.ggml.model").unwrap(), "gemma4");
        for p in json(&format!("{model}.json"))["prompts"]
            .as_array()
            .unwrap()
        {
            let text = p["text"].as_str().unwrap();
            let want = ids(&p["prompt_ids"]);
            // The prompt texts carry their own literal <bos>.
            let got = tok.encode(text, false).unwrap();
            assert_eq!(got, want, "{model} {}", p["name"]);
            assert_eq!(tok.decode(&got[1..]).unwrap(), text["<bos>".len()..]);
        }
    }
}

#[test]
fn embedded_template_matches_apply_chat_template() {
    let fixture = json("chat_template.json");
    let (g, tok) = open(MODELS[0]);
    let embedded = g.metadata.str("tokenizer.chat_template").unwrap();
    assert_eq!(embedded, fixture["template"].as_str().unwrap());
    let template = ChatTemplate::from_gguf(&g.metadata, &tok).unwrap();
    let cases = fixture["cases"].as_array().unwrap();
    assert!(cases.iter().any(|c| c["messages"][0]["role"] == "system"));
    for case in cases {
        let messages = messages(case);
        let prompt = template.render(&messages, true).unwrap();
        assert_eq!(
            prompt.text(),
            case["text"].as_str().unwrap(),
            "{}",
            case["name"]
        );
        assert_eq!(
            prompt.encode(&tok).unwrap(),
            ids(&case["ids"]),
            "{}",
            case["name"]
        );
    }
}

/// The built-in template (used when a file embeds none) is the E2B/E4B flavour: the same
/// turns as the official template, and a generation prompt without the 26B/31B empty thought
/// block (GEMMA.md §3.3).
#[test]
fn builtin_template_is_the_small_model_flavour() {
    let fixture = json("chat_template.json");
    let builtin = ChatTemplate::builtin(Family::Gemma4);
    for case in fixture["cases"].as_array().unwrap() {
        let messages = messages(case);
        let want = case["text"].as_str().unwrap();
        let want = want
            .strip_suffix("<|channel>thought\n<channel|>")
            .expect("the 31B template ends with an empty thought block");
        assert_eq!(builtin.render(&messages, true).unwrap().text(), want);
    }
}

#[test]
fn every_end_token_stops() {
    let (_, tok) = open(MODELS[0]);
    for name in ["<eos>", "<turn|>", "<|tool_response>"] {
        let id = tok.token_to_id(name).unwrap();
        assert!(tok.is_eos(id), "{name} ({id}) must end generation");
    }
    assert!(!tok.is_eos(tok.token_to_id("<|turn>").unwrap()));
}
