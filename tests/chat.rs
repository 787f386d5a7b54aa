//! Chat templates: the built-in Gemma 3 template (Google's, verbatim) and Gemma 4 fallback,
//! the GGUF path, BOS handling, and incremental multi-turn prefill.

use std::sync::OnceLock;

use gemma_wgpu::chat::{ChatTemplate, Conversation, Family, Message};
use gemma_wgpu::tokenizer::Tokenizer;

fn model() -> &'static (gemma_wgpu::gguf::Gguf, Tokenizer) {
    static M: OnceLock<(gemma_wgpu::gguf::Gguf, Tokenizer)> = OnceLock::new();
    M.get_or_init(|| {
        let path = gemma_wgpu::gguf::default_model_path();
        if !path.exists() {
            panic!(
                "model file {} is missing: run `pkg-scripts/fetch-model.sh` (or set GEMMA_WGPU_MODEL)",
                path.display()
            );
        }
        let (g, _src) = gemma_wgpu::gguf::open(&path).unwrap();
        let t = Tokenizer::from_gguf(&g.metadata).unwrap();
        (g, t)
    })
}

fn g3() -> ChatTemplate {
    ChatTemplate::builtin(Family::Gemma3)
}

#[test]
fn gemma3_single_turn() {
    let p = g3()
        .render(&[Message::user("  Hello there!  ")], true)
        .unwrap();
    assert_eq!(
        p.text(),
        "<bos><start_of_turn>user\nHello there!<end_of_turn>\n<start_of_turn>model\n"
    );
    let p = g3().render(&[Message::user("Hi")], false).unwrap();
    assert_eq!(p.text(), "<bos><start_of_turn>user\nHi<end_of_turn>\n");
}

#[test]
fn gemma3_system_prompt_folds_into_first_user_turn() {
    let msgs = [
        Message::system("You are terse."),
        Message::user("Why is the sky blue?"),
        Message::assistant("Rayleigh scattering."),
        Message::user("And sunsets?"),
    ];
    let p = g3().render(&msgs, true).unwrap();
    assert_eq!(
        p.text(),
        "<bos><start_of_turn>user\nYou are terse.\n\nWhy is the sky blue?<end_of_turn>\n\
         <start_of_turn>model\nRayleigh scattering.<end_of_turn>\n\
         <start_of_turn>user\nAnd sunsets?<end_of_turn>\n<start_of_turn>model\n"
    );
}

#[test]
fn bad_role_order_is_an_error_not_a_panic() {
    let e = g3()
        .render(&[Message::user("a"), Message::user("b")], true)
        .unwrap_err();
    assert!(e.to_string().contains("alternate"), "{e}");
    assert!(g3().render(&[Message::assistant("first")], true).is_err());
    assert!(g3().render(&[], true).is_err());
    let g4 = ChatTemplate::builtin(Family::Gemma4);
    assert!(g4
        .render(&[Message::user("a"), Message::user("b")], true)
        .is_err());
    // A broken template is an error at construction.
    assert!(ChatTemplate::new("{% if %}", "<bos>", "<eos>").is_err());
    // raise_exception in a custom template surfaces its message.
    let t = ChatTemplate::new(
        "{{ raise_exception('nope: ' + messages[0].role) }}",
        "<bos>",
        "<eos>",
    )
    .unwrap();
    let e = t.render(&[Message::user("x")], true).unwrap_err();
    assert!(e.to_string().contains("nope: user"), "{e}");
}

#[test]
fn gemma4_fallback() {
    let t = ChatTemplate::builtin(Family::Gemma4);
    let p = t.render(&[Message::user("Hi")], true).unwrap();
    assert_eq!(p.text(), "<bos><|turn>user\nHi<turn|>\n<|turn>model\n");
    let msgs = [
        Message::system("Be nice."),
        Message::user("Q1"),
        Message::assistant("<|channel>thought\nhmm<channel|>A1"),
        Message::user("Q2"),
    ];
    let p = t.render(&msgs, true).unwrap();
    assert_eq!(
        p.text(),
        "<bos><|turn>system\nBe nice.<turn|>\n<|turn>user\nQ1<turn|>\n\
         <|turn>model\nA1<turn|>\n<|turn>user\nQ2<turn|>\n<|turn>model\n"
    );
}

#[test]
fn gguf_template_and_single_bos() {
    let (g, tok) = model();
    let t = ChatTemplate::from_gguf(&g.metadata, tok).unwrap();
    let p = t.render(&[Message::user("What is 2+2?")], true).unwrap();
    assert!(
        p.text().starts_with("<bos><start_of_turn>user\n"),
        "{}",
        p.text()
    );
    let ids = p.encode(tok).unwrap();
    assert_eq!(ids[..2], [2, 105]);
    assert_eq!(
        ids.iter().filter(|&&i| i == 2).count(),
        1,
        "exactly one BOS"
    );
    assert_eq!(
        ids[ids.len() - 3..],
        [105, tok.token_to_id("model").unwrap(), 107]
    );
    // The pitfall the Prompt type exists for: encoding the text with add_bos gives two.
    assert_eq!(tok.encode(p.text(), true).unwrap()[..2], [2, 2]);
}

#[test]
fn multi_turn_prefills_only_the_new_suffix() {
    let (_, tok) = model();
    let t = g3();
    let mut c = Conversation::new();
    let first = c.prepare(Message::user("Hello"), &t, tok).unwrap();
    assert_eq!(first.keep, 0);
    assert_eq!(first.ids[0], 2);
    // The model answers; its tokens go through the model and into the cache.
    let reply = tok.encode("Hi! How can I help?", false).unwrap();
    for &id in &reply {
        c.push_generated(id);
    }
    // <end_of_turn> was sampled (stop) but not fed.
    c.finish_reply("Hi! How can I help?");
    let before = c.cached().len();
    let second = c
        .prepare(Message::user("Tell me a joke."), &t, tok)
        .unwrap();
    assert_eq!(second.keep, before, "the whole cache is reused");
    let full = t.render(&c.messages, true).unwrap().encode(tok).unwrap();
    assert_eq!(c.cached(), &full[..]);
    assert_eq!(&full[second.keep..], &second.ids[..]);
    assert_eq!(second.ids[0], tok.token_to_id("<end_of_turn>").unwrap());
    // A failed render (bad order) leaves the conversation usable.
    let n = c.messages.len();
    assert!(c.prepare(Message::user("again"), &t, tok).is_err());
    assert_eq!(c.messages.len(), n);
}
