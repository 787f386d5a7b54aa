//! Chat template rendering on arbitrary conversations: Google's Gemma 3 template, the built-in
//! Gemma 4 one, and the template embedded in the committed tiny Gemma 4 GGUF (llama.cpp's
//! conversion of the real one), each rendered and encoded with that model's tokenizer.
//!
//! Input: `[flags] [message]*` where each message is `[role byte] [content bytes up to 0x1E]`
//! (content as lossy UTF-8; role byte mod 5 picks system, user, assistant, developer or a
//! role made of the content's first word). flags bit 0 = add_generation_prompt, bits 1-2 pick
//! the template.
//!
//! Properties: rendering is Ok or an `Err` naming the template's complaint (bad role order),
//! never a panic; a rendered prompt encodes to ids inside the vocabulary that start with exactly
//! one BOS, unless the conversation itself contains the literal `<bos>` text, which the prompt
//! encoder reports as an error.

#![no_main]

use std::sync::OnceLock;

use gemma_wgpu::chat::{ChatTemplate, Family, Message};
use gemma_wgpu::tokenizer::Tokenizer;
use libfuzzer_sys::fuzz_target;

struct Fixture {
    tok: Tokenizer,
    templates: Vec<ChatTemplate>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/data/gemma4/gemma4_tiny_a.gguf");
        let (gguf, _map) = gemma_wgpu::gguf::open(&path).expect("committed tiny model");
        let tok = Tokenizer::from_gguf(&gguf.metadata).expect("its tokenizer");
        let own = ChatTemplate::from_gguf(&gguf.metadata, &tok).expect("its chat template");
        Fixture {
            templates: vec![
                own,
                ChatTemplate::builtin(Family::Gemma3),
                ChatTemplate::builtin(Family::Gemma4),
            ],
            tok,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let mut messages = Vec::new();
    for part in rest.split(|&b| b == 0x1e) {
        let Some((&role, content)) = part.split_first() else {
            continue;
        };
        let content = String::from_utf8_lossy(content).into_owned();
        let role = match role % 5 {
            0 => "system".to_string(),
            1 => "user".to_string(),
            2 => "assistant".to_string(),
            3 => "developer".to_string(),
            _ => content.split(' ').next().unwrap_or("").to_string(),
        };
        messages.push(Message::new(role, content));
        if messages.len() >= 64 {
            break;
        }
    }
    let template = &f.templates[(flags as usize >> 1) % 3];
    match template.render(&messages, flags & 1 != 0) {
        Ok(p) => {
            assert!(!messages.is_empty());
            match p.encode(&f.tok) {
                Ok(ids) => {
                    assert_eq!(ids.first(), Some(&f.tok.bos_id()));
                    assert_ne!(ids.get(1), Some(&f.tok.bos_id()));
                    let v = f.tok.vocab_size();
                    assert!(ids.iter().all(|&id| (id as usize) < v));
                }
                Err(e) => assert!(
                    messages
                        .iter()
                        .any(|m| m.content.contains("<bos>") || m.role.contains("<bos>")),
                    "{e}"
                ),
            }
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});
