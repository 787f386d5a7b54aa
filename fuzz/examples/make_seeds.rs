//! Writes the committed seed corpus, `fuzz/seeds/<target>/`, from the repository's test data:
//!
//! ```sh
//! cd fuzz && cargo run --example make_seeds    # a plain build: no fuzzer instrumentation
//! ```
//!
//! Deterministic: rerunning it rewrites the same files (names are what each seed is). The
//! formats are the ones the targets document: `gguf` seeds start with a cut count and cut
//! offsets, `tokenizer` seeds with flags and ids, `chat` seeds with flags and messages.

use std::path::{Path, PathBuf};

use gemma_wgpu::gguf::Gguf;
use gemma_wgpu::synth::{self, Family, SynthQuant, SynthSpec};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn out_dir(target: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("seeds")
        .join(target);
    std::fs::create_dir_all(&d).unwrap();
    // Start afresh, but keep the reproducers of bugs the fuzzers found (`regression-*`, added
    // by hand).
    for e in std::fs::read_dir(&d).unwrap() {
        let p = e.unwrap().path();
        if !p
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("regression-")
        {
            std::fs::remove_file(p).unwrap();
        }
    }
    d
}

fn save(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::write(dir.join(name), bytes).unwrap();
}

// ---------------------------------------------------------------------------------------------
// gguf

/// A gguf-target input: the file cut at `cuts` (offsets into the file).
fn gguf_input(cuts: &[u32], file: &[u8]) -> Vec<u8> {
    let mut v = vec![cuts.len() as u8];
    for c in cuts {
        v.extend(c.to_le_bytes());
    }
    v.extend_from_slice(file);
    v
}

/// Hand-rolled GGUF bytes, so that every field can be made wrong.
#[derive(Default, Clone)]
struct Raw(Vec<u8>);

impl Raw {
    fn preamble(magic: &[u8; 4], version: u32, n_tensors: u64, n_kv: u64) -> Self {
        let mut r = Raw::default();
        r.0.extend_from_slice(magic);
        r.u32(version).u64(n_tensors).u64(n_kv);
        r
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend(v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend(v.to_le_bytes());
        self
    }
    fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        self
    }
    fn str(&mut self, s: &str) -> &mut Self {
        self.u64(s.len() as u64).bytes(s.as_bytes())
    }
    fn kv_str(&mut self, k: &str, v: &str) -> &mut Self {
        self.str(k).u32(8).str(v)
    }
    fn kv_u32(&mut self, k: &str, v: u32) -> &mut Self {
        self.str(k).u32(4).u32(v)
    }
    fn tensor(&mut self, name: &str, dims: &[u64], ty: u32, offset: u64) -> &mut Self {
        self.str(name).u32(dims.len() as u32);
        for &d in dims {
            self.u64(d);
        }
        self.u32(ty).u64(offset)
    }
    /// Pads to `align` and appends `data` bytes.
    fn data(&mut self, align: usize, data: usize) -> &mut Self {
        let n = self.0.len().next_multiple_of(align);
        self.0.resize(n + data, 0x3c);
        self
    }
}

/// A small valid file: two metadata keys, two tensors (F32 [4] at 0, F16 [8, 2] at 32).
fn small_valid(f: impl Fn(&mut Raw, usize)) -> Vec<u8> {
    // `f(raw, step)` may overwrite step 0 (metadata) or step 1 (tensor infos).
    let mut r = Raw::preamble(b"GGUF", 3, 2, 2);
    r.kv_str("general.architecture", "gemma3")
        .kv_u32("general.alignment", 32);
    f(&mut r, 0);
    r.tensor("a", &[4], 0, 0).tensor("b", &[8, 2], 1, 32);
    f(&mut r, 1);
    r.data(32, 64);
    r.0
}

fn gguf_seeds() {
    let dir = out_dir("gguf");
    let put = |name: &str, file: &[u8]| save(&dir, name, &gguf_input(&[], file));

    // gguf-py's fixtures, whole and truncated.
    for f in ["gguf_v2.gguf", "gguf_v3.gguf"] {
        let b = std::fs::read(root().join("tests/data").join(f)).unwrap();
        put(f, &b);
        let g = Gguf::from_bytes(&b).unwrap();
        let n = b.len();
        for (what, at) in [
            ("preamble", 24),
            ("mid-metadata", 100),
            ("header-end-1", g.data_offset as usize - 1),
            ("header-only", g.data_offset as usize),
            ("last-byte-missing", n - 1),
        ] {
            put(&format!("{f}.trunc-{what}"), &b[..at.min(n)]);
        }
        // The same file fed in pieces.
        let q = (n / 4) as u32;
        save(
            &dir,
            &format!("{f}.cut3"),
            &gguf_input(&[q, 2 * q, 3 * q], &b),
        );
    }

    // Real converter output: the tiny Gemma 4 models' headers (the tensor data is left out;
    // with the size unknown they parse, and the loader plan runs on them).
    // One of the four (they share the vocabulary and template; 100 kB each), fed in pieces.
    let f = "gemma4_tiny_a.gguf";
    let b = std::fs::read(root().join("tests/data/gemma4").join(f)).unwrap();
    let g = Gguf::from_bytes(&b).unwrap();
    let h = &b[..g.data_offset as usize];
    let n = h.len() as u32;
    save(
        &dir,
        &format!("{f}.header.cut5"),
        &gguf_input(&[24, 4096, n / 3, n / 2, n - 7], h),
    );

    // Complete small synthetic models (real names, shapes, metadata and tokenizers, tiny
    // widths): from_bytes, check and preflight accept them.
    let g3 = SynthSpec {
        family: Family::Gemma3,
        name: "fuzz seed".into(),
        n_layers: 2,
        hidden: 32,
        n_heads: 2,
        n_kv_heads: 1,
        head_dim: 16,
        head_dim_full: 16,
        ff: vec![32; 2],
        sliding: vec![true, false],
        vocab: 1024,
        context_length: 64,
        sliding_window: 16,
        ..SynthSpec::gemma3_270m(SynthQuant::Q4_0, 7)
    };
    let g4 = SynthSpec {
        family: Family::Gemma4,
        name: "fuzz seed".into(),
        n_layers: 3,
        hidden: 32,
        n_heads: 2,
        n_kv_heads: 1,
        head_dim: 16,
        head_dim_full: 32,
        ff: vec![32, 32, 64],
        sliding: vec![true, false, true],
        shared_kv_layers: 1,
        ple_dim: 32,
        vocab: 1024,
        context_length: 64,
        sliding_window: 16,
        ..SynthSpec::gemma4_e2b(SynthQuant::Q4_0, 7)
    };
    for (name, spec) in [("synth-gemma3-q4_0", &g3), ("synth-gemma4-q4_0", &g4)] {
        let mut b = Vec::new();
        synth::write(spec, &mut b).unwrap();
        let g = Gguf::from_bytes(&b).unwrap();
        gemma_wgpu::model::check(&g).unwrap();
        put(name, &b);
    }

    // Headers of models too large to exist, whose tensor data is not there: with the size
    // unknown they parse, and the loader's plan must refuse them without sizing anything from
    // their numbers. H = 2^25 (the widest whose F32 norm fits a 128 MiB binding) and an MLP
    // 2^27 - 2^20 wide (a row of ffn_down is 75 MB of Q4_0: one buffer part per row, 2^25
    // parts), and 2^32 - 1 layers.
    let huge = SynthSpec {
        hidden: 1 << 25,
        ff: vec![(1 << 27) - (1 << 20); 2],
        ..g3.clone()
    };
    put(
        "gemma3-huge-matrices.header",
        &huge.plan().unwrap().header().unwrap(),
    );
    let mut layers = g3.plan().unwrap().header().unwrap();
    let key = b"gemma3.block_count";
    let at = layers.windows(key.len()).position(|w| w == key).unwrap() + key.len();
    assert_eq!(layers[at..at + 4], 4u32.to_le_bytes()); // the value type, u32
    layers[at + 4..at + 8].copy_from_slice(&u32::MAX.to_le_bytes());
    put("gemma3-4g-layers.header", &layers);
    // 2^23 + 1 heads of 512: wider than u32 in all (the KV-cache size overflowed).
    let heads = SynthSpec {
        n_heads: (1 << 23) + 1,
        n_kv_heads: (1 << 23) + 1,
        head_dim: 512,
        head_dim_full: 512,
        ..g3.clone()
    };
    put(
        "gemma3-heads-overflow.header",
        &heads.plan().unwrap().header().unwrap(),
    );

    // Hand-made headers, each wrong in one way.
    put("small-valid", &small_valid(|_, _| {}));
    put("empty-valid", &Raw::preamble(b"GGUF", 3, 0, 0).0);
    put("empty", b"");
    put("magic-only", b"GGUF");
    put("wrong-magic", &{
        let mut b = small_valid(|_, _| {});
        b[..4].copy_from_slice(b"GGML");
        b
    });
    for (name, v) in [
        ("version-1", 1u32),
        ("version-0", 0),
        ("version-4", 4),
        ("big-endian", 3u32.swap_bytes()),
    ] {
        let mut b = small_valid(|_, _| {});
        b[4..8].copy_from_slice(&v.to_le_bytes());
        put(name, &b);
    }
    for (name, nt, nkv) in [
        ("huge-tensor-count", u64::MAX, 0),
        ("huge-kv-count", 0, 1 << 60),
        ("counts-overflow", u64::MAX / 24, u64::MAX / 13),
        ("kv-count-past-end", 0, 1000),
    ] {
        let mut r = Raw::preamble(b"GGUF", 3, nt, nkv);
        r.kv_str("general.architecture", "gemma3");
        put(name, &r.0);
    }
    let meta = |name: &str, f: &dyn Fn(&mut Raw)| {
        let mut r = Raw::preamble(b"GGUF", 3, 0, 1);
        f(&mut r);
        (name.to_string(), r.0)
    };
    let mut deep = Raw::default();
    deep.str("nested").u32(9);
    for _ in 0..9 {
        deep.u32(9).u64(1);
    }
    deep.u32(4).u64(1).u32(7);
    for (name, b) in [
        meta("huge-key-length", &|r| {
            r.u64(u64::MAX).bytes(b"key");
        }),
        meta("key-length-past-end", &|r| {
            r.u64(1 << 20).bytes(b"key");
        }),
        meta("key-not-utf8", &|r| {
            r.u64(3).bytes(&[0xff, 0xfe, 0x80]).u32(4).u32(1);
        }),
        meta("huge-string-value", &|r| {
            r.str("general.name").u32(8).u64(u64::MAX - 3).bytes(b"abc");
        }),
        meta("string-value-not-utf8", &|r| {
            r.str("general.name").u32(8).u64(2).bytes(&[0xc3, 0x28]);
        }),
        meta("unknown-value-type", &|r| {
            r.str("k").u32(13).u32(0);
        }),
        meta("bool-2", &|r| {
            r.str("k").u32(7).bytes(&[2]);
        }),
        meta("array-huge-count", &|r| {
            r.str("k").u32(9).u32(4).u64(u64::MAX / 2).u32(1);
        }),
        meta("array-count-overflow", &|r| {
            r.str("k").u32(9).u32(10).u64(u64::MAX / 4).u64(1);
        }),
        meta("string-array-huge-count", &|r| {
            r.str("tokenizer.ggml.tokens")
                .u32(9)
                .u32(8)
                .u64(1 << 40)
                .str("a");
        }),
        meta("string-array-bad-element", &|r| {
            r.str("tokenizer.ggml.tokens")
                .u32(9)
                .u32(8)
                .u64(2)
                .str("a")
                .u64(u64::MAX);
        }),
        meta("array-unknown-element-type", &|r| {
            r.str("k").u32(9).u32(77).u64(1).u32(0);
        }),
        meta("arrays-nested-9-deep", &|r| {
            r.bytes(&deep.0);
        }),
        meta("array-of-empty-arrays", &|r| {
            r.str("k").u32(9).u32(9).u64(3);
            for _ in 0..3 {
                r.u32(8).u64(0);
            }
        }),
        meta("alignment-48", &|r| {
            r.kv_u32("general.alignment", 48);
        }),
        meta("alignment-0", &|r| {
            r.kv_u32("general.alignment", 0);
        }),
        meta("alignment-string", &|r| {
            r.kv_str("general.alignment", "32");
        }),
    ] {
        put(&name, &b);
    }
    let mut dup = Raw::preamble(b"GGUF", 3, 0, 2);
    dup.kv_u32("k", 1).kv_u32("k", 2);
    put("duplicate-key", &dup.0);

    // Tensor infos, each wrong in one way (the tensor data is 64 bytes after a 32-byte
    // aligned header).
    let tensors = |name: &str, f: &dyn Fn(&mut Raw)| {
        let mut r = Raw::preamble(b"GGUF", 3, 1, 0);
        f(&mut r);
        r.data(32, 64);
        (name.to_string(), r.0)
    };
    for (name, b) in [
        tensors("tensor-type-99", &|r| {
            r.tensor("t", &[4], 99, 0);
        }),
        tensors("tensor-type-removed", &|r| {
            r.tensor("t", &[32], 4, 0);
        }),
        tensors("tensor-type-unsupported", &|r| {
            r.tensor("t", &[256], 10, 0);
        }),
        tensors("tensor-row-not-block-multiple", &|r| {
            r.tensor("t", &[100], 12, 0);
        }),
        tensors("tensor-5-dims", &|r| {
            r.tensor("t", &[1, 1, 1, 1, 1], 0, 0);
        }),
        tensors("tensor-huge-n-dims", &|r| {
            r.str("t").u32(u32::MAX).u64(1);
        }),
        tensors("tensor-zero-dim", &|r| {
            r.tensor("t", &[4, 0], 0, 0);
        }),
        tensors("tensor-0-dims", &|r| {
            r.tensor("t", &[], 0, 0);
        }),
        tensors("tensor-dims-overflow", &|r| {
            r.tensor("t", &[1 << 32, 1 << 32, 1 << 32], 0, 0);
        }),
        tensors("tensor-elements-past-i64", &|r| {
            r.tensor("t", &[1 << 62, 4], 0, 0);
        }),
        tensors("tensor-bytes-overflow", &|r| {
            r.tensor("t", &[1 << 62], 28, 0);
        }),
        tensors("tensor-offset-past-end", &|r| {
            r.tensor("t", &[4], 0, 64);
        }),
        tensors("tensor-offset-misaligned", &|r| {
            r.tensor("t", &[4], 0, 1);
        }),
        tensors("tensor-offset-overflow", &|r| {
            r.tensor("t", &[4], 0, u64::MAX - 31);
        }),
        tensors("tensor-data-past-end", &|r| {
            r.tensor("t", &[17], 0, 0);
        }),
        tensors("tensor-name-not-utf8", &|r| {
            r.u64(1).bytes(&[0xff]).u32(1).u64(4).u32(0).u64(0);
        }),
        tensors("tensor-name-huge", &|r| {
            r.u64(u64::MAX).bytes(b"t");
        }),
    ] {
        put(&name, &b);
    }
    put(
        "tensors-duplicate-name",
        &small_valid(|r, step| {
            if step == 1 {
                let n = r.0.len();
                // Rename "b" to "a" (the name's single byte sits before n_dims, dims, type,
                // offset: 4 + 16 + 4 + 8 bytes from the end).
                r.0[n - 33] = b'a';
            }
        }),
    );
    put(
        "tensors-overlap",
        &small_valid(|r, step| {
            if step == 1 {
                let n = r.0.len();
                r.0[n - 8..].copy_from_slice(&0u64.to_le_bytes());
            }
        }),
    );
    // A Gemma 3 header whose hyper-parameters are absurd: what the loader plan must refuse
    // without sizing anything from them.
    let mut r = Raw::preamble(b"GGUF", 3, 1, 7);
    r.kv_str("general.architecture", "gemma3")
        .kv_u32("gemma3.block_count", u32::MAX)
        .kv_u32("gemma3.embedding_length", u32::MAX)
        .kv_u32("gemma3.attention.head_count", 1)
        .kv_u32("gemma3.attention.head_count_kv", 1)
        .kv_u32("gemma3.feed_forward_length", u32::MAX)
        .kv_u32("gemma3.context_length", u32::MAX)
        .tensor("token_embd.weight", &[1 << 31, 1 << 31], 2, 0);
    put("gemma3-absurd-hparams.header", &r.0);
}

// ---------------------------------------------------------------------------------------------
// tokenizer

fn tok_input(flags: u8, ids: &[u32], text: &[u8]) -> Vec<u8> {
    let mut v = vec![flags, ids.len() as u8];
    for id in ids {
        v.extend(id.to_le_bytes());
    }
    v.extend_from_slice(text);
    v
}

fn tokenizer_seeds() {
    let dir = out_dir("tokenizer");
    let corpus = std::fs::read_to_string(root().join("tests/data/tokenizer_corpus.txt")).unwrap();
    // Every 12th line of the reference corpus (code, prose, scripts, emoji, special tokens).
    for (i, line) in corpus.split('\n').enumerate().step_by(12) {
        save(
            &dir,
            &format!("corpus-{i:03}"),
            &tok_input(0, &[], line.as_bytes()),
        );
    }
    let put = |name: &str, flags: u8, ids: &[u32], text: &[u8]| {
        save(&dir, name, &tok_input(flags, ids, text))
    };
    put("empty", 0, &[], b"");
    put("bos-only", 1, &[], b"");
    put(
        "specials",
        1,
        &[],
        "<start_of_turn>user\nHi<end_of_turn>\n<bos><eos><|turn>x<turn|><unused5>".as_bytes(),
    );
    put(
        "space-marker",
        0,
        &[],
        "▁▁x ▁ y\t\t\t  \n\n\n\r\n".as_bytes(),
    );
    put(
        "byte-fallback",
        4,
        &[u32::MAX],
        "𓀀 𒀭 \u{e000}! 👩🏽‍🦳 中文🇺🇦 \u{0301}x".as_bytes(),
    );
    put(
        "invalid-utf8",
        0,
        &[],
        &[b'a', 0xff, 0xc3, 0x28, 0xe2, 0x82, b'z', 0],
    );
    put("ids-out-of-range", 0, &[u32::MAX, 262_144, 1024, 0], b"");
    put(
        "ids-bytes-split-char",
        2,
        &[238 + 0xE4, 238 + 0xB8, 238 + 0xAD, 238 + 0x80, 238 + 0xE4],
        b"",
    );
    put(
        "ids-mod-vocab",
        2,
        &(0..64).map(|i| i * 4099 + 7).collect::<Vec<_>>(),
        b"text too",
    );
    put("long-run", 0, &[], &b"aaaaaaaaaa".repeat(200));
}

// ---------------------------------------------------------------------------------------------
// tokenizer_json

fn tokenizer_json_seeds() {
    let dir = out_dir("tokenizer_json");
    let full = std::fs::read(root().join("tests/data/gemma4/tokenizer.json")).unwrap();
    save(&dir, "tiny-gemma", &full);
    // A minimal Gemma-style tokenizer.json: specials, the 256 byte tokens, a few merges.
    let mut vocab = vec![
        "<pad>".to_string(),
        "<eos>".into(),
        "<bos>".into(),
        "<unk>".into(),
    ];
    vocab.extend((0..=255u8).map(|b| format!("<0x{b:02X}>")));
    vocab.extend(["▁", "a", "b", "ab", "▁ab"].map(String::from));
    let vocab_json: Vec<String> = vocab
        .iter()
        .enumerate()
        .map(|(i, t)| format!("{:?}:{i}", t))
        .collect();
    let added: Vec<String> = (0..4)
        .map(|i| {
            format!(
                r#"{{"id":{i},"content":{:?},"single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true}}"#,
                vocab[i]
            )
        })
        .collect();
    let json = |vocab_json: &[String], merges: &str| {
        format!(
            r#"{{"version":"1.0","truncation":null,"padding":null,"added_tokens":[{}],"normalizer":{{"type":"Replace","pattern":{{"String":" "}},"content":"▁"}},"pre_tokenizer":{{"type":"Split","pattern":{{"String":" "}},"behavior":"MergedWithPrevious","invert":false}},"post_processor":null,"decoder":{{"type":"Sequence","decoders":[{{"type":"Replace","pattern":{{"String":"▁"}},"content":" "}},{{"type":"ByteFallback"}},{{"type":"Fuse"}}]}},"model":{{"type":"BPE","dropout":null,"unk_token":"<unk>","continuing_subword_prefix":null,"end_of_word_suffix":null,"fuse_unk":true,"byte_fallback":true,"ignore_merges":false,"vocab":{{{}}},"merges":[{merges}]}}}}"#,
            added.join(","),
            vocab_json.join(",")
        )
    };
    let merges = r#"["a","b"],["▁","ab"]"#;
    save(&dir, "minimal", json(&vocab_json, merges).as_bytes());
    save(
        &dir,
        "minimal.string-merges",
        json(&vocab_json, r#""a b","▁ ab""#).as_bytes(),
    );
    save(
        &dir,
        "minimal.merge-unknown-token",
        json(&vocab_json, r#"["a","zz"]"#).as_bytes(),
    );
    let mut gap = vocab_json.clone();
    gap.pop();
    gap.push(format!("{:?}:{}", "▁ab", vocab.len() + 5));
    save(&dir, "minimal.id-gap", json(&gap, merges).as_bytes());
    let no_byte: Vec<String> = vocab_json
        .iter()
        .filter(|s| !s.contains("0x41"))
        .cloned()
        .collect();
    save(
        &dir,
        "minimal.missing-byte-token",
        json(&no_byte, merges).as_bytes(),
    );
    save(&dir, "empty-object", b"{}");
    save(&dir, "not-json", b"\x00\xffGGUF");
    save(
        &dir,
        "wordpiece",
        br#"{"model":{"type":"WordPiece","vocab":{"[UNK]":0,"a":1},"unk_token":"[UNK]"}}"#,
    );
}

// ---------------------------------------------------------------------------------------------
// chat

fn chat_input(flags: u8, messages: &[(u8, &str)]) -> Vec<u8> {
    let mut v = vec![flags];
    for (i, (role, content)) in messages.iter().enumerate() {
        if i > 0 {
            v.push(0x1e);
        }
        v.push(*role);
        v.extend_from_slice(content.as_bytes());
    }
    v
}

fn chat_seeds() {
    let dir = out_dir("chat");
    let conv: &[(u8, &str)] = &[
        (0, "You are terse."),
        (1, "Hi there"),
        (2, "Hello!"),
        (1, "What is 2+2?\n\nThink."),
    ];
    for t in 0..3u8 {
        for gen in 0..2u8 {
            save(
                &dir,
                &format!("conversation-t{t}-g{gen}"),
                &chat_input(t << 1 | gen, conv),
            );
        }
        save(
            &dir,
            &format!("user-only-t{t}"),
            &chat_input(t << 1 | 1, &[(1, "hi")]),
        );
        save(
            &dir,
            &format!("assistant-first-t{t}"),
            &chat_input(t << 1, &[(2, "x"), (1, "y")]),
        );
        save(
            &dir,
            &format!("developer-t{t}"),
            &chat_input(t << 1 | 1, &[(3, "rules"), (1, "go")]),
        );
        save(
            &dir,
            &format!("specials-t{t}"),
            &chat_input(
                t << 1 | 1,
                &[(
                    1,
                    "<bos><start_of_turn>model\n{{ raise_exception('x') }}<|turn>▁\u{FFFD}",
                )],
            ),
        );
        save(
            &dir,
            &format!("odd-role-t{t}"),
            &chat_input(t << 1 | 1, &[(4, "tool call me")]),
        );
    }
    save(&dir, "empty", &[1]);
}

fn main() {
    gguf_seeds();
    tokenizer_seeds();
    tokenizer_json_seeds();
    chat_seeds();
    // A quick self-check of what was written.
    let mut total = 0u64;
    for t in ["gguf", "tokenizer", "tokenizer_json", "chat"] {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds").join(t);
        let (mut n, mut bytes) = (0, 0u64);
        for e in std::fs::read_dir(&dir).unwrap() {
            n += 1;
            bytes += e.unwrap().metadata().unwrap().len();
        }
        total += bytes;
        println!("{t}: {n} seeds, {bytes} bytes");
    }
    println!("total: {total} bytes");
}
