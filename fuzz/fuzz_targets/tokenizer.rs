//! The tokenizer built from a real GGUF vocabulary: `encode` on arbitrary text, `decode` and
//! `TokenStream` on arbitrary ids (out-of-range ones included).
//!
//! The vocabulary: `$GEMMA_FUZZ_TOKENIZER_GGUF` if set (e.g. the Gemma 3 270M file, 262,144
//! pieces, SentencePiece scores from which the merges are derived), else the committed
//! `tests/data/gemma4/gemma4_tiny_a.gguf` (1,024 pieces of the real Gemma 3 vocabulary with their
//! real merges, as a `gemma4` tokenizer: specials, byte fallback, newline runs), so CI needs no
//! download.
//!
//! Input: `[flags] [n] [n × u32 LE ids] [text bytes]`; flags bit 0 = add_bos, bit 1 = take the
//! ids modulo (vocabulary + 16) so most are valid, bit 2 = run the text's own ids through the
//! stream with a fuzzer-chosen invalid id in the middle.
//!
//! Properties (what `tests/tokenizer.rs` checks on the real vocabulary):
//! * `encode` never fails, every id is in the vocabulary, `add_bos` adds exactly the BOS id;
//! * `decode(encode(s)) == s` with `▁` read as a space (a literal `▁` is the space marker);
//! * pushing ids one at a time through `TokenStream` and then `finish` concatenates to `decode`;
//! * an id outside the vocabulary is an `Err` from `decode` and `push`, never a panic, and the
//!   stream is still usable after it.

#![no_main]

use std::sync::OnceLock;

use gemma_wgpu::tokenizer::Tokenizer;
use libfuzzer_sys::fuzz_target;

fn tok() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        let path = std::env::var_os("GEMMA_FUZZ_TOKENIZER_GGUF")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| {
                std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../tests/data/gemma4/gemma4_tiny_a.gguf")
            });
        let (gguf, _map) = gemma_wgpu::gguf::open(&path)
            .unwrap_or_else(|e| panic!("tokenizer vocabulary {}: {e}", path.display()));
        let t = Tokenizer::from_gguf(&gguf.metadata).expect("tokenizer from the GGUF");
        eprintln!(
            "tokenizer: {} pieces from {}",
            t.vocab_size(),
            path.display()
        );
        t
    })
}

/// `decode` through the stream, with the pieces checked one by one.
fn stream_decode(t: &Tokenizer, ids: &[u32]) -> Result<String, ()> {
    let mut s = t.stream();
    let mut out = String::new();
    for &id in ids {
        match s.push(id) {
            Ok(piece) => out.push_str(&piece),
            Err(e) => {
                assert!((id as usize) >= t.vocab_size(), "push({id}) failed: {e}");
                assert!(e.to_string().contains(&id.to_string()), "{e}");
                return Err(());
            }
        }
    }
    out.push_str(&s.finish());
    Ok(out)
}

fuzz_target!(|data: &[u8]| {
    let t = tok();
    let v = t.vocab_size();
    let (flags, rest) = data.split_first().map_or((0, data), |(&f, r)| (f, r));
    let (n, rest) = rest
        .split_first()
        .map_or((0, rest), |(&n, r)| (n as usize, r));
    let (raw_ids, text) = rest.split_at((n * 4).min(rest.len() / 4 * 4));
    let ids: Vec<u32> = raw_ids
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
        .map(|id| {
            if flags & 2 != 0 {
                id % (v as u32 + 16)
            } else {
                id
            }
        })
        .collect();

    // Arbitrary ids: decode and the stream agree, out-of-range ids are errors.
    let valid = ids.iter().all(|&id| (id as usize) < v);
    match (t.decode(&ids), stream_decode(t, &ids)) {
        (Ok(a), Ok(b)) => {
            assert!(valid);
            assert_eq!(a, b, "stream and decode differ on {ids:?}");
        }
        (Err(e), Err(())) => {
            assert!(!valid, "decode failed on valid ids: {e}");
            assert!(e.to_string().contains("outside"), "{e}");
        }
        (a, b) => panic!("decode {a:?}, stream {b:?} on {ids:?}"),
    }

    // Arbitrary text: encode never fails, and round-trips.
    let text = String::from_utf8_lossy(text);
    let add_bos = flags & 1 != 0;
    let enc = t.encode(&text, add_bos).expect("encode never fails");
    assert!(enc.iter().all(|&id| (id as usize) < v), "id out of range");
    let body = if add_bos {
        assert_eq!(enc.first(), Some(&t.bos_id()));
        &enc[1..]
    } else {
        &enc[..]
    };
    assert_eq!(
        body,
        t.encode(&text, false).unwrap(),
        "add_bos changed the ids"
    );
    let back = t.decode(body).expect("decode of encoded ids");
    assert_eq!(
        back,
        text.replace('\u{2581}', " "),
        "round trip of {text:?}: {body:?}"
    );
    assert_eq!(stream_decode(t, body).unwrap(), back);

    // A bad id in the middle of a stream is an error that leaves the stream usable.
    if flags & 4 != 0 && !body.is_empty() {
        let bad = ids.first().map_or(u32::MAX, |&b| b.max(v as u32));
        let mid = body.len() / 2;
        let mut s = t.stream();
        let mut out = String::new();
        for &id in &body[..mid] {
            out.push_str(&s.push(id).unwrap());
        }
        assert!(s.push(bad).is_err());
        for &id in &body[mid..] {
            out.push_str(&s.push(id).unwrap());
        }
        out.push_str(&s.finish());
        assert_eq!(out, back, "a rejected id changed the stream");
    }
});
