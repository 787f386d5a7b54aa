//! The table of bad inputs: files a stranger could hand us (broken, truncated, hostile, or simply
//! not a model) and arguments a user could get wrong. Each row runs the command-line tool and
//! states what its one `error:` line must say. Nothing may panic, hang, or exit any other way;
//! every row is checked and all mismatches are reported together.
//!
//! Files are built from the tiny Gemma 4 fixture: rewritten through the library's GGUF writer
//! (metadata, tensors, data), or patched byte by byte where the writer itself would refuse the
//! damage. NaN or infinity in a norm weight is refused at load (it would make every logit NaN);
//! NaN in a matrix (not scanned at load) is caught when the step's logits are read back.

use std::path::{Path, PathBuf};
use std::process::Command;

use gemma_wgpu::gguf::{self, writer::GgufWriter, Array, GgmlType, Value};

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/gemma4/gemma4_tiny_a.gguf"
);

/// Edits applied while rewriting the fixture.
#[derive(Default)]
struct Edit {
    /// New value for a metadata key (`None`: remove the key).
    kv: Vec<(&'static str, Option<Value>)>,
    /// Tensors left out.
    drop: Vec<&'static str>,
    /// A tensor written with other dims / another type (its data zero-filled to fit).
    retype: Option<(&'static str, Vec<u64>, GgmlType)>,
    /// Overwrites f32 element `i` of a tensor's data.
    poke: Option<(&'static str, usize, f32)>,
}

/// The fixture rewritten with `e` applied.
fn rewrite(e: Edit) -> Vec<u8> {
    let (g, src) = gguf::open(FIXTURE).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in g.metadata.iter() {
        if k == "general.alignment" {
            continue;
        }
        match e.kv.iter().find(|(key, _)| *key == k) {
            Some((_, Some(new))) => {
                w.kv(k, new.clone());
            }
            Some((_, None)) => {}
            None => {
                w.kv(k, v.clone());
            }
        }
    }
    for (k, v) in &e.kv {
        if g.metadata.get(k).is_none() {
            if let Some(v) = v {
                w.kv(*k, v.clone());
            }
        }
    }
    let mut data = Vec::new();
    for t in g.tensors_by_offset() {
        if e.drop.contains(&t.name.as_str()) {
            continue;
        }
        let mut bytes = src.bytes(t.offset, t.n_bytes).unwrap().to_vec();
        match &e.retype {
            Some((name, dims, ty)) if *name == t.name => {
                w.tensor(&t.name, dims, *ty).unwrap();
                let n = w.tensors().last().unwrap().n_bytes as usize;
                bytes = vec![0; n];
            }
            _ => {
                w.tensor(&t.name, &t.dims, t.ty).unwrap();
            }
        }
        if let Some((name, i, v)) = e.poke {
            if name == t.name {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&v.to_le_bytes());
            }
        }
        data.push(bytes);
    }
    let parts: Vec<&[u8]> = data.iter().map(|d| d.as_slice()).collect();
    w.to_bytes(&parts).unwrap()
}

fn fixture() -> Vec<u8> {
    std::fs::read(FIXTURE).unwrap()
}

/// Where the length-prefixed string `s` starts in the header (metadata key or tensor name),
/// and the offset just after it.
fn find_string(bytes: &[u8], s: &str) -> (usize, usize) {
    let mut pat = (s.len() as u64).to_le_bytes().to_vec();
    pat.extend_from_slice(s.as_bytes());
    let at = bytes
        .windows(pat.len())
        .position(|w| w == pat)
        .unwrap_or_else(|| panic!("`{s}` is not in the fixture's header"));
    (at, at + pat.len())
}

fn put_u32(bytes: &mut [u8], at: usize, v: u32) {
    bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(bytes: &mut [u8], at: usize, v: u64) {
    bytes[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// The fixture with `f(bytes)` applied.
fn patched(f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut b = fixture();
    f(&mut b);
    b
}

/// The fixture with one field of tensor `name`'s info changed: `f(bytes, n_dims_at)`, where the
/// info is n_dims (u32), dims (u64 each), type (u32), offset (u64).
fn patch_tensor(name: &str, f: impl FnOnce(&mut Vec<u8>, usize)) -> Vec<u8> {
    patched(|b| {
        let (_, end) = find_string(b, name);
        f(b, end)
    })
}

/// Offset of tensor `name`'s data-offset field (its dims count read from the header).
fn tensor_offset_field(b: &[u8], info: usize) -> usize {
    let n_dims = u32::from_le_bytes(b[info..info + 4].try_into().unwrap()) as usize;
    info + 4 + 8 * n_dims + 4
}

/// A minimal header declaring `arch` (and nothing a Gemma needs).
fn other_arch(arch: &str) -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.str("general.architecture", arch)
        .u32(format!("{arch}.block_count"), 1)
        .u32(format!("{arch}.context_length"), 4096)
        .u32(format!("{arch}.embedding_length"), 64);
    w.tensor("token_embd.weight", &[64, 16], GgmlType::F32)
        .unwrap();
    w.to_bytes(&[&vec![0u8; 64 * 16 * 4]]).unwrap()
}

/// A JPEG's first bytes (SOI, APP0/JFIF), as a photo renamed to `.gguf` starts.
fn jpeg() -> Vec<u8> {
    let mut b = vec![
        0xff, 0xd8, 0xff, 0xe0, 0x00, 0x10, b'J', b'F', b'I', b'F', 0, 1, 1, 0, 0, 1, 0, 1, 0, 0,
    ];
    b.extend((0..4000u32).map(|i| (i * 7919 % 251) as u8));
    b
}

/// What a case runs.
enum Run {
    /// `info --model FILE` on these bytes (loads the model, so data errors are found too).
    Info(Vec<u8>),
    /// `generate`/`score` on the file, with extra arguments.
    With(Vec<u8>, Vec<&'static str>),
    /// The unchanged fixture, with these arguments after `--model FIXTURE`.
    Args(Vec<&'static str>),
}

struct Case {
    name: &'static str,
    run: Run,
    /// Every one of these must appear in the error line (case-insensitive).
    expect: &'static [&'static str],
}

fn case(name: &'static str, run: Run, expect: &'static [&'static str]) -> Case {
    Case { name, run, expect }
}

fn cases() -> Vec<Case> {
    use Run::*;
    let tiny = fixture();
    let vocab_tokens = {
        let (g, _) = gguf::open(FIXTURE).unwrap();
        g.metadata
            .str_array("tokenizer.ggml.tokens")
            .unwrap()
            .to_vec()
    };
    let mut more_tokens = vocab_tokens.clone();
    more_tokens.extend((0..8).map(|i| format!("extra{i}")));
    let grow = |key: &'static str, n: usize| -> Option<Value> {
        let (g, _) = gguf::open(FIXTURE).unwrap();
        Some(match g.metadata.get(key).unwrap() {
            Value::Array(Array::F32(v)) => {
                let mut v = v.clone();
                v.resize(n, 0.0);
                Value::Array(Array::F32(v))
            }
            Value::Array(Array::I32(v)) => {
                let mut v = v.clone();
                v.resize(n, 1);
                Value::Array(Array::I32(v))
            }
            other => panic!("{key}: {other:?}"),
        })
    };
    vec![
        // --- not a model at all ---
        case("empty file", Info(vec![]), &["not a GGUF file", "0 bytes"]),
        case(
            "renamed JPEG",
            Info(jpeg()),
            &["not a GGUF file", "JPEG image"],
        ),
        case(
            "HTML error page saved as the model",
            Info(b"<!DOCTYPE html>\n<html><body>404 Not Found</body></html>".to_vec()),
            &["not a GGUF file", "HTML page"],
        ),
        case(
            "Git LFS pointer",
            Info(
                b"version https://git-lfs.github.com/spec/v1\noid sha256:a5fd\nsize 253\n".to_vec(),
            ),
            &["Git LFS pointer"],
        ),
        case(
            "safetensors file",
            Info({
                let mut b = 30u64.to_le_bytes().to_vec();
                b.extend_from_slice(br#"{"__metadata__":{"a":"b"}}    "#);
                b
            }),
            &["safetensors"],
        ),
        case(
            "wrong magic",
            Info(patched(|b| b[..4].copy_from_slice(b"GGML"))),
            &["not a GGUF file", "expected \"GGUF\""],
        ),
        // --- header structure ---
        case(
            "GGUF version 1",
            Info(patched(|b| put_u32(b, 4, 1))),
            &["unsupported GGUF version 1"],
        ),
        case(
            "GGUF version 4",
            Info(patched(|b| put_u32(b, 4, 4))),
            &["unsupported GGUF version 4"],
        ),
        case(
            "big-endian file",
            Info(patched(|b| b[4..8].copy_from_slice(&3u32.to_be_bytes()))),
            &["big-endian"],
        ),
        case(
            "half-downloaded file",
            Info(tiny[..tiny.len() * 6 / 10].to_vec()),
            &[
                "truncated",
                "incomplete download",
                "past the end of the file",
            ],
        ),
        case(
            "cut inside the header",
            Info(tiny[..3000].to_vec()),
            &["truncated", "the file ends at byte 3000"],
        ),
        case(
            "tensor count beyond any file",
            Info(patched(|b| put_u64(b, 8, u64::MAX / 2))),
            &["impossible counts"],
        ),
        case(
            "metadata count beyond the file",
            Info(patched(|b| put_u64(b, 16, 1 << 40))),
            &["truncated", "1099511627776 metadata entries"],
        ),
        case(
            "key length beyond the file",
            Info(patched(|b| put_u64(b, 24, 1 << 62))),
            &["metadata entry #0", "4611686018427387904 bytes"],
        ),
        case(
            "string value length beyond the file",
            Info(patched(|b| {
                let (_, end) = find_string(b, "general.architecture");
                put_u64(b, end + 4, u64::MAX - 7)
            })),
            &["general.architecture", "impossible size"],
        ),
        case(
            "array length beyond the file",
            Info(patched(|b| {
                let (_, end) = find_string(b, "tokenizer.ggml.scores");
                put_u64(b, end + 8, 1 << 40)
            })),
            &["tokenizer.ggml.scores", "truncated"],
        ),
        case(
            "unknown metadata value type",
            Info(patched(|b| {
                let (_, end) = find_string(b, "general.architecture");
                put_u32(b, end, 99)
            })),
            &["general.architecture", "unknown metadata value type 99"],
        ),
        case(
            "invalid UTF-8 in a metadata key",
            Info(patched(|b| {
                let (at, _) = find_string(b, "general.architecture");
                b[at + 8] = 0xff
            })),
            &["key", "not valid UTF-8"],
        ),
        case(
            "invalid UTF-8 in a tensor name",
            Info(patched(|b| {
                let (at, _) = find_string(b, "token_embd.weight");
                b[at + 9] = 0xc3
            })),
            &["tensor info", "not valid UTF-8"],
        ),
        case(
            "duplicate metadata key",
            Info(patched(|b| {
                // `general.name` renamed to the key before it: same length, same type.
                let (at, _) = find_string(b, "general.name");
                b[at + 8..at + 20].copy_from_slice(b"general.type")
            })),
            &["duplicate metadata key `general.type`"],
        ),
        case(
            "duplicate tensor name",
            Info(patched(|b| {
                // `ffn_gate` renamed to `ffn_down` (same length).
                let (at, _) = find_string(b, "blk.0.ffn_gate.weight");
                b[at + 8..at + 29].copy_from_slice(b"blk.0.ffn_down.weight")
            })),
            &["duplicate tensor name `blk.0.ffn_down.weight`"],
        ),
        case(
            "unknown tensor type",
            Info(patch_tensor("blk.0.attn_norm.weight", |b, info| {
                let ty = tensor_offset_field(b, info) - 4;
                put_u32(b, ty, 99)
            })),
            &["blk.0.attn_norm.weight", "99"],
        ),
        case(
            "tensor type without kernels",
            Info(rewrite(Edit {
                retype: Some(("blk.0.ffn_up.weight", vec![64, 64], GgmlType::IQ4Nl)),
                ..Default::default()
            })),
            &["blk.0.ffn_up.weight", "unsupported type IQ4_NL"],
        ),
        case(
            "five dimensions",
            Info(patch_tensor("blk.0.attn_norm.weight", |b, info| {
                put_u32(b, info, 5)
            })),
            &["blk.0.attn_norm.weight", "5 dimensions"],
        ),
        case(
            "dims whose product overflows",
            Info(patch_tensor("token_embd.weight", |b, info| {
                put_u64(b, info + 4, 1 << 40);
                put_u64(b, info + 12, 1 << 40)
            })),
            &["token_embd.weight", "overflows"],
        ),
        case(
            "zero dimension",
            Info(patch_tensor("blk.0.attn_norm.weight", |b, info| {
                put_u64(b, info + 4, 0)
            })),
            &["blk.0.attn_norm.weight", "zero dimension"],
        ),
        case(
            "misaligned tensor offset",
            Info(patch_tensor("token_embd.weight", |b, info| {
                let at = tensor_offset_field(b, info);
                let v = u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
                put_u64(b, at, v + 4)
            })),
            &["token_embd.weight", "not a multiple of the alignment"],
        ),
        case(
            "tensor offset past the end",
            Info(patch_tensor("blk.0.attn_norm.weight", |b, info| {
                let at = tensor_offset_field(b, info);
                put_u64(b, at, 1 << 40)
            })),
            &["blk.0.attn_norm.weight", "past the end of the file"],
        ),
        case(
            "tensor offset that overflows",
            Info(patch_tensor("blk.0.attn_norm.weight", |b, info| {
                let at = tensor_offset_field(b, info);
                put_u64(b, at, u64::MAX - 31)
            })),
            &["blk.0.attn_norm.weight", "overflows"],
        ),
        case(
            "overlapping tensors",
            Info(patch_tensor("blk.0.ffn_up.weight", |b, info| {
                let (_, gate) = find_string(b, "blk.0.ffn_gate.weight");
                let gate_at = tensor_offset_field(b, gate);
                let v = u64::from_le_bytes(b[gate_at..gate_at + 8].try_into().unwrap());
                let at = tensor_offset_field(b, info);
                put_u64(b, at, v)
            })),
            &["overlap"],
        ),
        case(
            "alignment not a power of two",
            Info({
                // The writer refuses such a file, so the valid 32 is patched afterwards.
                let mut b = rewrite(Edit {
                    kv: vec![("general.alignment", Some(Value::U32(32)))],
                    ..Default::default()
                });
                let (_, end) = find_string(&b, "general.alignment");
                put_u32(&mut b, end + 4, 48);
                b
            }),
            &["general.alignment", "not a power of two"],
        ),
        // --- a valid GGUF that is not a usable Gemma ---
        case(
            "no architecture key",
            Info(rewrite(Edit {
                kv: vec![("general.architecture", None)],
                ..Default::default()
            })),
            &["general.architecture", "missing"],
        ),
        case(
            "a llama model",
            Info(other_arch("llama")),
            &["unsupported architecture `llama`", "gemma3"],
        ),
        case(
            "a Gemma file with one tensor removed",
            Info(rewrite(Edit {
                drop: vec!["blk.1.attn_k.weight"],
                ..Default::default()
            })),
            &["blk.1.attn_k.weight", "missing"],
        ),
        case(
            "a tensor with the wrong shape",
            Info(rewrite(Edit {
                retype: Some(("blk.2.ffn_up.weight", vec![64, 32], GgmlType::F32)),
                ..Default::default()
            })),
            &[
                "blk.2.ffn_up.weight",
                "expected shape [64, 64]",
                "found [64, 32]",
            ],
        ),
        case(
            "more tokens than embedding rows",
            Info(rewrite(Edit {
                kv: vec![
                    (
                        "tokenizer.ggml.tokens",
                        Some(Value::Array(Array::String(more_tokens.clone()))),
                    ),
                    (
                        "tokenizer.ggml.scores",
                        grow("tokenizer.ggml.scores", more_tokens.len()),
                    ),
                    (
                        "tokenizer.ggml.token_type",
                        grow("tokenizer.ggml.token_type", more_tokens.len()),
                    ),
                ],
                ..Default::default()
            })),
            &["1032 tokens", "1024 rows"],
        ),
        case(
            "a layer count beyond the tensors",
            Info(rewrite(Edit {
                kv: vec![("gemma4.block_count", Some(Value::U32(1_000_000_000)))],
                ..Default::default()
            })),
            &["gemma4.block_count", "1000000000 layers", "tensors"],
        ),
        case(
            "zero heads",
            Info(rewrite(Edit {
                kv: vec![("gemma4.attention.head_count", Some(Value::U32(0)))],
                ..Default::default()
            })),
            &["gemma4.attention.head_count", "is 0"],
        ),
        case(
            "NaN norm epsilon",
            Info(rewrite(Edit {
                kv: vec![(
                    "gemma4.attention.layer_norm_rms_epsilon",
                    Some(Value::F32(f32::NAN)),
                )],
                ..Default::default()
            })),
            &["layer_norm_rms_epsilon", "not a positive number"],
        ),
        case(
            "zero context length",
            Info(rewrite(Edit {
                kv: vec![("gemma4.context_length", Some(Value::U32(0)))],
                ..Default::default()
            })),
            &["gemma4.context_length", "is 0"],
        ),
        case(
            "a metadata key of the wrong type",
            Info(rewrite(Edit {
                kv: vec![(
                    "gemma4.embedding_length",
                    Some(Value::String("sixty-four".into())),
                )],
                ..Default::default()
            })),
            &["gemma4.embedding_length", "string"],
        ),
        // --- tensor data ---
        case(
            "NaN in a norm weight",
            Info(rewrite(Edit {
                poke: Some(("blk.0.attn_norm.weight", 5, f32::NAN)),
                ..Default::default()
            })),
            &["blk.0.attn_norm.weight", "element 5 of 64 is NaN"],
        ),
        case(
            "infinity in a norm weight",
            Info(rewrite(Edit {
                poke: Some(("output_norm.weight", 0, f32::INFINITY)),
                ..Default::default()
            })),
            &["output_norm.weight", "element 0 of 64 is inf"],
        ),
        case(
            "NaN in the embedding matrix",
            With(
                rewrite(Edit {
                    poke: Some(("token_embd.weight", 64 * 2 + 3, f32::NAN)),
                    ..Default::default()
                }),
                vec!["score", "--tokens", "2,5,6"],
            ),
            &["NaN logits at position 0", "corrupt"],
        ),
        // --- arguments ---
        case(
            "token id out of range in score",
            Args(vec!["score", "--tokens", "2,1024"]),
            &["token id 1024 is outside the vocabulary (size 1024)"],
        ),
        case(
            "--max-tokens 0",
            Args(vec!["generate", "--prompt", "hi", "--max-tokens", "0"]),
            &["--max-tokens", "at least 1"],
        ),
        case(
            "prompt longer than the context",
            Args(vec![
                "generate",
                "--context",
                "8",
                "--prompt",
                "one two three four five six seven eight nine ten eleven twelve",
            ]),
            &["prompt has", "the context holds 8"],
        ),
        case(
            "context larger than the model's maximum",
            Args(vec!["generate", "--prompt", "hi", "--context", "200000"]),
            &["200000 tokens is larger than the model's maximum of 131072"],
        ),
        case(
            "zero context",
            Args(vec!["generate", "--prompt", "hi", "--context", "0"]),
            &["context length must be at least 1"],
        ),
        case(
            "KV cache beyond the adapter's binding limit",
            With(
                rewrite(Edit {
                    kv: vec![("gemma4.context_length", Some(Value::U32(1 << 24)))],
                    ..Default::default()
                }),
                vec!["info", "--webgpu-limits", "--context", "16777216"],
            ),
            &[
                "the KV cache of layer",
                "needs 8589934592 bytes",
                "allows 134217728",
                "max_storage_buffer_binding_size",
            ],
        ),
        case(
            "temperature not a number",
            Args(vec!["generate", "--prompt", "hi", "--temperature", "nan"]),
            &["temperature"],
        ),
        case(
            "top-p above 1",
            Args(vec!["generate", "--prompt", "hi", "--top-p", "1.5"]),
            &["top_p", "1.5"],
        ),
        case(
            "tokenizer file that is not JSON",
            Args(vec![
                "generate",
                "--prompt",
                "hi",
                "--tokenizer",
                FIXTURE, // a GGUF, not a tokenizer.json
            ]),
            &["gemma4_tiny_a.gguf"],
        ),
    ]
}

fn scratch_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gemma-wgpu-bad-inputs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs one case; `Err` describes how it went wrong.
fn run(case: &Case, dir: &Path, i: usize) -> Result<String, String> {
    let file = |bytes: &[u8]| {
        let p = dir.join(format!("case{i}.gguf"));
        std::fs::write(&p, bytes).unwrap();
        p.display().to_string()
    };
    let args: Vec<String> = match &case.run {
        Run::Info(bytes) => vec!["info".into(), "--model".into(), file(bytes)],
        Run::With(bytes, extra) => {
            let mut a: Vec<String> = vec![extra[0].into(), "--model".into(), file(bytes)];
            a.extend(extra[1..].iter().map(|s| s.to_string()));
            a
        }
        Run::Args(extra) => {
            let mut a: Vec<String> = vec![extra[0].into(), "--model".into(), FIXTURE.into()];
            a.extend(extra[1..].iter().map(|s| s.to_string()));
            a
        }
    };
    let out = Command::new(env!("CARGO_BIN_EXE_gemma-wgpu"))
        .args(&args)
        .args(["--no-pipeline-cache"])
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .output()
        .map_err(|e| format!("could not run: {e}"))?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.code() != Some(1) {
        return Err(format!("exit {:?}; stderr: {stderr}", out.status));
    }
    if stderr.contains("panicked") {
        return Err(format!("panicked: {stderr}"));
    }
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    let [line] = errors.as_slice() else {
        return Err(format!("expected one `error:` line: {stderr}"));
    };
    let lower = line.to_lowercase();
    let missing: Vec<&&str> = case
        .expect
        .iter()
        .filter(|e| !lower.contains(&e.to_lowercase()))
        .collect();
    if !missing.is_empty() {
        return Err(format!("missing {missing:?} in: {line}"));
    }
    Ok(line.to_string())
}

#[test]
fn every_bad_input_gets_its_one_line_error() {
    let cases = cases();
    assert!(cases.len() >= 30, "the table has {} rows", cases.len());
    let dir = scratch_dir();
    // Two workers: most rows fail before the GPU is touched, the rest load the tiny model.
    let results: Vec<(usize, Result<String, String>)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..2)
            .map(|w| {
                let (cases, dir) = (&cases, &dir);
                s.spawn(move || {
                    (w..cases.len())
                        .step_by(2)
                        .map(|i| (i, run(&cases[i], dir, i)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    let _ = std::fs::remove_dir_all(&dir);
    let mut failed = Vec::new();
    for (i, r) in &results {
        match r {
            Ok(line) => println!("{:<45} {line}", cases[*i].name),
            Err(why) => failed.push(format!("{}: {why}", cases[*i].name)),
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} rows failed:\n{}",
        failed.len(),
        cases.len(),
        failed.join("\n")
    );
}
