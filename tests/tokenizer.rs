//! The tokenizer built from the GGUF must give the same ids as Google's `tokenizer.json` (run
//! through Hugging Face's python `tokenizers` by `pkg-scripts/make_tokenizer_fixture.py`) on
//! every line of `tests/data/tokenizer_corpus.txt`, and decode back to the text.

use std::sync::OnceLock;

use gemma_wgpu::tokenizer::Tokenizer;

const CORPUS: &str = include_str!("data/tokenizer_corpus.txt");
const FIXTURE: &str = include_str!("data/tokenizer_ids.json");

#[derive(serde::Deserialize)]
struct Fixture {
    corpus_sha256: String,
    lines: Vec<Vec<u32>>,
    whole: Vec<u32>,
}

fn fixture() -> Fixture {
    serde_json::from_str(FIXTURE).expect("tests/data/tokenizer_ids.json parses")
}

/// Lines exactly as the fixture script splits them: on "\n" only.
fn corpus_lines() -> Vec<&'static str> {
    let mut v: Vec<&str> = CORPUS.split('\n').collect();
    if v.last() == Some(&"") {
        v.pop();
    }
    v
}

/// The tokenizer from the default model file, built once per test binary.
fn tok() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        let path = gemma_wgpu::gguf::default_model_path();
        if !path.exists() {
            panic!(
                "model file {} is missing: run `pkg-scripts/fetch-model.sh` (or set \
                 GEMMA_WGPU_MODEL to a Gemma 3 GGUF). This test does not skip: the \
                 tokenizer is only verified against a real vocabulary.",
                path.display()
            );
        }
        let (gguf, _src) = gemma_wgpu::gguf::open(&path).expect("open the GGUF");
        Tokenizer::from_gguf(&gguf.metadata).expect("tokenizer from GGUF")
    })
}

fn show(ids: &[u32], t: &Tokenizer) -> String {
    ids.iter()
        .map(|&i| format!("{i}:{:?}", t.id_to_token(i).unwrap_or_default()))
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn fixture_matches_corpus() {
    // A stale fixture would make the comparison meaningless: the script records the hash.
    let fx = fixture();
    let lines = corpus_lines();
    assert_eq!(
        fx.lines.len(),
        lines.len(),
        "fixture has {} lines, corpus {}; rerun pkg-scripts/make_tokenizer_fixture.py",
        fx.lines.len(),
        lines.len()
    );
    assert!(lines.len() >= 500);
    assert_eq!(fx.corpus_sha256.len(), 64);
}

#[test]
fn corpus_ids_match_reference_line_by_line() {
    let t = tok();
    let fx = fixture();
    let lines = corpus_lines();
    let mut bad = Vec::new();
    for (n, (line, want)) in lines.iter().zip(&fx.lines).enumerate() {
        let got = t.encode(line, false).expect("encode");
        if &got != want {
            let first = got.iter().zip(want).take_while(|(a, b)| a == b).count();
            bad.push(format!(
                "line {} {:?}\n  first difference at token {first}\n  got  {}\n  want {}",
                n + 1,
                line,
                show(&got[first.saturating_sub(2)..], t),
                show(&want[first.saturating_sub(2)..], t)
            ));
        }
    }
    assert!(
        bad.is_empty(),
        "{} of {} corpus lines differ from tokenizer.json; first ones:\n{}",
        bad.len(),
        lines.len(),
        bad.iter().take(8).cloned().collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn corpus_ids_match_reference_whole_file() {
    let t = tok();
    let got = t.encode(CORPUS, false).unwrap();
    let want = fixture().whole;
    if got != want {
        let first = got.iter().zip(&want).take_while(|(a, b)| a == b).count();
        panic!(
            "whole-file encoding differs at token {first} of {}:\n  got  {}\n  want {}",
            want.len(),
            show(&got[first.saturating_sub(3)..(first + 8).min(got.len())], t),
            show(
                &want[first.saturating_sub(3)..(first + 8).min(want.len())],
                t
            )
        );
    }
}

#[test]
fn decode_round_trips_every_line() {
    let t = tok();
    for (n, line) in corpus_lines().iter().enumerate() {
        let ids = t.encode(line, false).unwrap();
        let back = t.decode(&ids).unwrap();
        // A literal "▁" in the input is SentencePiece's space marker and decodes as a space,
        // in the reference tokenizer too.
        let want = line.replace('\u{2581}', " ");
        assert_eq!(back, want, "line {} does not round-trip", n + 1);
        // Our decoder agrees with the tokenizers crate's own (the tokenizer.json decoder).
        let hf = t.hf().decode(&ids, false).unwrap();
        assert_eq!(back, hf, "line {}: decode differs from HF decoder", n + 1);
    }
    assert_eq!(
        t.decode(&t.encode(CORPUS, false).unwrap()).unwrap(),
        CORPUS.replace('\u{2581}', " ")
    );
}

#[test]
fn bos_eos_and_special_ids_come_from_the_vocabulary() {
    let t = tok();
    assert_eq!(t.vocab_size(), 262144);
    assert_eq!(t.bos_id(), 2);
    assert_eq!(t.token_to_id("<eos>"), Some(1));
    assert_eq!(t.token_to_id("<end_of_turn>"), Some(106));
    let mut eos = t.eos_ids().to_vec();
    eos.sort();
    assert_eq!(eos, vec![1, 106]);
    assert_eq!(t.encode("", true).unwrap(), vec![2]);
    assert_eq!(t.encode("Hi", true).unwrap()[0], 2);
    // Newline runs are single added tokens (GEMMA.md §3.1).
    assert_eq!(t.encode("\n", false).unwrap(), vec![107]);
    assert_eq!(t.encode("\n\n", false).unwrap(), vec![108]);
    assert_eq!(t.encode("<start_of_turn>user\n", false).unwrap()[0], 105);
    // No dummy prefix: "Hello" and " Hello" differ.
    assert_ne!(
        t.encode("Hello", false).unwrap(),
        t.encode(" Hello", false).unwrap()
    );
}

#[test]
fn streaming_detokenizer_handles_byte_fallback() {
    let t = tok();
    // Characters that are not in the vocabulary come out as several byte tokens each.
    for text in [
        "𓀀 𒀭 \u{e000}!",
        "Rare 𰻞𱁬 and 👩🏽‍🦳 ok",
        "\u{0301}x",
        "a 𝅘𝅥𝅮 b",
        "中文🇺🇦",
    ] {
        let ids = t.encode(text, false).unwrap();
        let byte_tokens = ids.iter().filter(|&&i| (238..=493).contains(&i)).count();
        let mut s = t.stream();
        let mut out = String::new();
        let mut emitted = Vec::new();
        for &id in &ids {
            let piece = s.push(id).unwrap();
            // Every piece is valid UTF-8 by construction and never contains U+FFFD here.
            assert!(
                !piece.contains('\u{FFFD}'),
                "{text:?}: replacement char mid-stream"
            );
            emitted.push(piece.clone());
            out.push_str(&piece);
        }
        out.push_str(&s.finish());
        assert_eq!(out, t.decode(&ids).unwrap());
        assert_eq!(out, text);
        if text.starts_with('𓀀') {
            assert!(
                byte_tokens >= 4,
                "expected byte tokens for {text:?}: {ids:?}"
            );
            // The 4 bytes of the hieroglyph produce text only on the 4th.
            assert_eq!(emitted[..3], ["", "", ""], "{ids:?}");
            assert_eq!(emitted[3], "𓀀");
        }
    }
}

#[test]
fn streaming_handles_invalid_and_truncated_bytes() {
    let t = tok();
    let b = |x: u8| 238 + x as u32; // <0xXX> ids (checked below)
    assert_eq!(t.id_to_token(b(0xE4)).as_deref(), Some("<0xE4>"));
    // 中 = E4 B8 AD, then a stray continuation byte, then a truncated 3-byte char at the end.
    let ids = [
        b(0xE4),
        b(0xB8),
        b(0xAD),
        b(0x80),
        t.token_to_id("a").unwrap(),
        b(0xE4),
        b(0xB8),
    ];
    let mut s = t.stream();
    let pieces: Vec<String> = ids.iter().map(|&i| s.push(i).unwrap()).collect();
    let tail = s.finish();
    assert_eq!(pieces, ["", "", "中", "\u{FFFD}", "a", "", ""]);
    assert_eq!(tail, "\u{FFFD}");
    assert_eq!(pieces.concat() + &tail, t.decode(&ids).unwrap());
    assert!(t.decode(&[u32::MAX]).is_err());
}

#[test]
fn from_json_file_matches_gguf_when_available() {
    // The official tokenizer.json is not committed (33 MB); compare when it is around.
    let path = std::env::var("GEMMA_TOKENIZER_JSON")
        .unwrap_or_else(|_| "/tmp/tok/package/models/tokenizer.json".into());
    if !std::path::Path::new(&path).exists() {
        eprintln!("skipping: {path} not found (set GEMMA_TOKENIZER_JSON)");
        return;
    }
    let j = Tokenizer::from_json_file(&path).unwrap();
    let g = tok();
    assert_eq!(j.bos_id(), g.bos_id());
    for line in corpus_lines().iter().step_by(7) {
        assert_eq!(
            j.encode(line, false).unwrap(),
            g.encode(line, false).unwrap(),
            "{line:?}"
        );
    }
}

/// Strings that stress the encoder beyond the corpus: spaces, special-token text glued to words
/// and to each other, partial special tokens, newline and tab runs, byte fallback, a literal `▁`.
fn stress_inputs() -> Vec<String> {
    let mut v: Vec<String> = [
        "",
        " ",
        "   ",
        "\u{2581}",
        "\u{2581}\u{2581} x",
        "a  b   c",
        "<start_of_turn><end_of_turn>",
        "x<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n",
        "<start_of_turn",
        "<<bos>>",
        "<unused5><unused50><unused500>",
        "\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n",
        "\t\t\t x \t",
        "<table><tr><td>1</td></tr></table>",
        "𓀀𒀭\u{e000}👩🏽‍🦳🇺🇦中文한국어العربيةΑΒΓ",
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "==================================================================",
        "ThisIsAVeryLongIdentifierWithoutSpacesThatShouldStillTokenize_fine_2026",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // Deterministic pseudo-random mixes of corpus characters and special pieces.
    let chars: Vec<char> = CORPUS.chars().collect();
    let specials = [
        "<start_of_turn>",
        "<end_of_turn>",
        "<bos>",
        "\n\n",
        " ",
        "\u{2581}",
    ];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..300 {
        let mut s = String::new();
        for _ in 0..40 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if x % 11 == 0 {
                s.push_str(specials[(x >> 8) as usize % specials.len()]);
            } else {
                s.push(chars[(x >> 16) as usize % chars.len()]);
            }
        }
        v.push(s);
    }
    v
}

#[test]
fn compact_encoder_matches_the_tokenizers_crate() {
    // `encode` runs the compact encoder; `hf()` is the `tokenizers` pipeline built from the same
    // tables (vocabulary, merges in rank order, added tokens, normalizer, pre-tokenizer).
    let t = tok();
    let hf = t.hf();
    let ids = |s: &str| hf.encode_fast(s, false).unwrap().get_ids().to_vec();
    let mut inputs: Vec<String> = corpus_lines().iter().map(|s| s.to_string()).collect();
    inputs.push(CORPUS.to_string());
    inputs.extend(stress_inputs());
    for s in &inputs {
        assert_eq!(t.encode(s, false).unwrap(), ids(s), "{s:?}");
    }
    for id in [0, 2, 105, 238, 493, 236743, 262143] {
        assert_eq!(t.id_to_token(id), hf.id_to_token(id), "id {id}");
        let piece = t.id_to_token(id).unwrap();
        assert_eq!(t.token_to_id(&piece), hf.token_to_id(&piece), "{piece:?}");
    }
}
