//! The command-line tool on bad input: one clear line on stderr and a non-zero exit, never a
//! panic; and `info`'s memory report on the real model.

mod common;

use std::process::Command;

use common::gguf_writer::GgufWriter;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gemma-wgpu"));
    c.env("XDG_RUNTIME_DIR", std::env::temp_dir());
    c
}

/// Runs the tool, expects failure, returns stderr.
fn fails(args: &[&str]) -> String {
    let out = bin().args(args).output().expect("run gemma-wgpu");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "{args:?} should fail; stderr: {stderr}"
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "{args:?}: exit code; stderr: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: "),
        "{args:?}: the last line should be the error: {stderr}"
    );
    assert_eq!(
        stderr.matches("error: ").count(),
        1,
        "{args:?}: one error line: {stderr}"
    );
    stderr
}

fn scratch(name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("gemma-wgpu-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn real_model() -> String {
    let p = gemma_wgpu::gguf::default_model_path();
    assert!(
        p.exists(),
        "fetch the model with pkg-scripts/fetch-model.sh ({})",
        p.display()
    );
    p.display().to_string()
}

#[test]
fn missing_file_names_the_path() {
    let e = fails(&[
        "generate",
        "--model",
        "/nonexistent/model.gguf",
        "--prompt",
        "hi",
    ]);
    assert!(e.contains("/nonexistent/model.gguf"), "{e}");
}

#[test]
fn not_a_gguf() {
    let p = scratch("notes.gguf", b"this is plain text, not a model file\n");
    let e = fails(&["info", "--model", p.to_str().unwrap()]);
    assert!(e.to_lowercase().contains("not a gguf"), "{e}");
}

#[test]
fn truncated_file() {
    let real = std::fs::read(real_model()).unwrap();
    for cut in [100usize, 3_000_000, 20_000_000] {
        let p = scratch(&format!("cut{cut}.gguf"), &real[..cut]);
        let e = fails(&["info", "--model", p.to_str().unwrap()]);
        assert!(e.to_lowercase().contains("truncated"), "cut at {cut}: {e}");
    }
}

#[test]
fn unsupported_architecture_lists_the_supported_ones() {
    let p = scratch("llama.gguf", &GgufWriter::new("llama").bytes());
    let e = fails(&["info", "--model", p.to_str().unwrap()]);
    assert!(e.contains("llama") && e.contains("gemma3"), "{e}");
}

/// A one-layer Gemma 3 shaped file whose embedding is Q2_K, a type the engine has no kernel for.
#[test]
fn unsupported_tensor_type_names_tensor_and_type() {
    let (h, ff, v, d) = (256u64, 256u64, 256u64, 256u64);
    let mut w = GgufWriter::new("gemma3");
    w.u32("gemma3.block_count", 1)
        .u32("gemma3.embedding_length", h as u32)
        .u32("gemma3.feed_forward_length", ff as u32)
        .u32("gemma3.attention.head_count", 1)
        .u32("gemma3.attention.head_count_kv", 1)
        .u32("gemma3.attention.key_length", d as u32)
        .u32("gemma3.attention.value_length", d as u32)
        .u32("gemma3.context_length", 128)
        .u32("gemma3.attention.sliding_window", 64);
    let f32s = |n: u64| vec![0u8; n as usize * 4];
    // Q2_K: 256 elements in 84 bytes.
    w.tensor("token_embd.weight", &[h, v], 10, vec![0; (v * 84) as usize]);
    w.tensor("output_norm.weight", &[h], 0, f32s(h));
    for (name, dims) in [
        ("attn_q", [h, d]),
        ("attn_k", [h, d]),
        ("attn_v", [h, d]),
        ("attn_output", [d, h]),
        ("ffn_gate", [h, ff]),
        ("ffn_up", [h, ff]),
        ("ffn_down", [ff, h]),
    ] {
        w.tensor(
            &format!("blk.0.{name}.weight"),
            &dims,
            0,
            f32s(dims[0] * dims[1]),
        );
    }
    for (name, n) in [
        ("attn_norm", h),
        ("attn_q_norm", d),
        ("attn_k_norm", d),
        ("post_attention_norm", h),
        ("ffn_norm", h),
        ("post_ffw_norm", h),
    ] {
        w.tensor(&format!("blk.0.{name}.weight"), &[n], 0, f32s(n));
    }
    let p = scratch("q2k.gguf", &w.bytes());
    let e = fails(&["info", "--model", p.to_str().unwrap()]);
    assert!(e.contains("token_embd.weight") && e.contains("Q2_K"), "{e}");
}

#[test]
fn prompt_longer_than_context() {
    let m = real_model();
    let e = fails(&[
        "generate",
        "--model",
        &m,
        "--context",
        "8",
        "--prompt",
        "one two three four five six seven eight nine ten eleven twelve",
    ]);
    assert!(e.contains("context holds 8"), "{e}");
}

#[test]
fn unknown_adapter_lists_what_exists() {
    let m = real_model();
    let e = fails(&["info", "--model", &m, "--adapter", "no-such-gpu-xyz"]);
    assert!(
        e.contains("no-such-gpu-xyz") && e.contains("adapter"),
        "{e}"
    );
}

/// GPU weight bytes stay within 1.1× the file's tensor bytes, as `info` reports.
#[test]
fn info_reports_quantized_weights_within_budget() {
    let out = bin()
        .args(["info", "--json", "--model", &real_model()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ratio = v["gpu_weight_bytes_over_file_tensor_bytes"]
        .as_f64()
        .unwrap();
    assert!(
        ratio <= 1.1,
        "GPU weights are {ratio}× the file's tensor bytes"
    );
    assert_eq!(v["architecture"], "gemma3");
    assert_eq!(v["layers"], 18);
    assert!(v["tensor_types"]["Q5_0"]["tensors"].as_u64().unwrap() > 0);
}

#[test]
fn missing_default_model_says_how_to_fetch_it() {
    let empty = std::env::temp_dir().join(format!("gemma-wgpu-empty-cache-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    let out = bin()
        .env("XDG_CACHE_HOME", &empty)
        .env_remove("GEMMA_WGPU_MODEL")
        .args(["generate", "--prompt", "hi"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("pkg-scripts/fetch-model.sh"), "{stderr}");
}

#[test]
fn unavailable_backend_says_how_to_get_an_adapter() {
    // No DX12 on Linux (and no Metal): the error names the backend and the software driver.
    let backend = if cfg!(target_os = "windows") {
        "metal"
    } else {
        "dx12"
    };
    let e = fails(&["info", "--model", &real_model(), "--backend", backend]);
    assert!(
        e.contains("no usable GPU adapter") && e.contains("mesa-vulkan-drivers"),
        "{e}"
    );
}

/// Top-k above the GPU's 64 candidates (and 0, no limit) samples over the whole vocabulary on
/// the GPU: it runs, and a seed fixes the tokens.
#[test]
fn top_k_above_the_gpu_candidates_samples_the_whole_vocabulary() {
    let model = real_model();
    let run = |top_k: &str| {
        let out = bin()
            .args(["generate", "--model", &model, "--prompt", "The sky is"])
            .args(["--temperature", "1", "--top-p", "1", "--seed", "3"])
            .args(["--max-tokens", "3", "--json", "--top-k", top_k])
            .output()
            .expect("run gemma-wgpu");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "top-k {top_k}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let json: serde_json::Value =
            serde_json::from_str(stdout.trim().lines().last().unwrap()).expect("JSON");
        json["tokens"].as_array().expect("tokens").clone()
    };
    let a = run("100");
    assert_eq!(a.len(), 3);
    assert_eq!(a, run("100"), "the same seed gives the same tokens");
    assert!(!run("0").is_empty());
}

/// `synth` writes exactly the bytes the library's `SynthSource` serves for the same arch,
/// quantization, seed and context, and reports their size.
#[test]
fn synth_writes_the_specs_bytes() {
    use gemma_wgpu::synth::{SynthArch, SynthQuant, SynthSource};
    let out = scratch("synth-270m-q8_0.gguf", b"");
    let run = bin()
        .args(["synth", "--arch", "gemma3-270m", "--quant", "q8_0"])
        .args(["--seed", "11", "--context", "2048", "--out"])
        .arg(&out)
        .output()
        .expect("run gemma-wgpu");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let file = std::fs::read(&out).unwrap();
    std::fs::remove_file(&out).unwrap();
    assert!(
        stdout.contains(&format!("{} bytes", file.len())),
        "{stdout}"
    );
    let mut spec = SynthArch::Gemma3_270m.spec(SynthQuant::Q8_0, 11);
    spec.context_length = 2048;
    let src = SynthSource::new(&spec).unwrap();
    let mut want = vec![0u8; src.size() as usize];
    src.read(0, &mut want).unwrap();
    assert!(
        file == want,
        "the written file differs from the spec's bytes"
    );
}

#[test]
fn serve_with_a_missing_model_names_the_path() {
    let e = fails(&["serve", "--model", "/nonexistent/model.gguf", "--port", "0"]);
    assert!(e.contains("/nonexistent/model.gguf"), "{e}");
}

#[test]
fn serve_on_a_taken_port_fails_before_loading() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    // The model path is never opened: the port is checked first.
    let e = fails(&[
        "serve",
        "--model",
        "/nonexistent/model.gguf",
        "--port",
        &port,
    ]);
    assert!(e.contains(&format!("listening on 127.0.0.1:{port}")), "{e}");
    assert!(!e.contains("nonexistent"), "{e}");
}
