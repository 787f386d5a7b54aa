//! Gemma 4 files that are wrong in ways a converter or a truncated download could make them:
//! each is refused before anything reaches the GPU, with an error naming the tensor or the
//! metadata key, and the command-line tool prints it as one line.

use std::process::Command;

use gemma_wgpu::gguf::{self, writer::GgufWriter, Gguf, Value};
use gemma_wgpu::model;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/gemma4/gemma4_tiny_a.gguf"
);

/// The fixture rewritten with `edit` applied to its metadata and without the tensor `drop`.
fn rewrite(edit: impl Fn(&str, &Value) -> Value, drop: Option<&str>) -> Vec<u8> {
    let (g, src) = gguf::open(FIXTURE).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in g.metadata.iter() {
        if k != "general.alignment" {
            w.kv(k, edit(k, v));
        }
    }
    let mut data = Vec::new();
    for t in g.tensors_by_offset() {
        if Some(t.name.as_str()) != drop {
            w.tensor(&t.name, &t.dims, t.ty).unwrap();
            data.push(src.bytes(t.offset, t.n_bytes).unwrap().to_vec());
        }
    }
    let parts: Vec<&[u8]> = data.iter().map(|d| d.as_slice()).collect();
    w.to_bytes(&parts).unwrap()
}

fn check(bytes: &[u8]) -> String {
    let g = Gguf::from_bytes(bytes).expect("the header itself is valid");
    model::check(&g)
        .expect_err("the model must be refused")
        .to_string()
}

fn set(key: &'static str, value: Value) -> impl Fn(&str, &Value) -> Value {
    move |k, v| if k == key { value.clone() } else { v.clone() }
}

#[test]
fn the_unchanged_rewrite_is_accepted() {
    let bytes = rewrite(|_, v| v.clone(), None);
    model::check(&Gguf::from_bytes(&bytes).unwrap()).unwrap();
}

#[test]
fn a_missing_tensor_is_named() {
    for name in [
        "blk.1.attn_k.weight",
        "per_layer_token_embd.weight",
        "blk.3.inp_gate.weight",
        "blk.0.post_norm.weight",
        "blk.4.layer_output_scale.weight",
    ] {
        let err = check(&rewrite(|_, v| v.clone(), Some(name)));
        assert!(err.contains(name), "{name}: {err}");
    }
}

#[test]
fn bad_metadata_is_named() {
    let cases: [(&str, Value, &str); 4] = [
        (
            "gemma4.attention.shared_kv_layers",
            Value::U32(6),
            "shared_kv_layers",
        ),
        ("gemma4.attention.key_length_swa", Value::U32(96), "96"),
        (
            "gemma4.attention.head_count_kv",
            Value::U32(3),
            "head_count_kv",
        ),
        (
            "gemma4.embedding_length_per_layer_input",
            Value::U32(32),
            "blk.0.inp_gate.weight",
        ),
    ];
    for (key, value, expect) in cases {
        let err = check(&rewrite(set(key, value.clone()), None));
        assert!(err.contains(expect), "{key} = {value:?}: {err}");
    }
}

#[test]
fn the_cli_prints_one_line() {
    let dir = std::env::temp_dir().join(format!("gemma-wgpu-g4-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("missing.gguf");
    std::fs::write(
        &path,
        rewrite(|_, v| v.clone(), Some("blk.2.ffn_down.weight")),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gemma-wgpu"))
        .args(["info", "--model", path.to_str().unwrap()])
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].starts_with("error: ") && lines[0].contains("blk.2.ffn_down.weight"));
}
