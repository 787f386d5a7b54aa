//! `gemma-wgpu bench --json` emits every field BENCHMARKS.md documents, with sane values, on a
//! tiny model, on a synthetic model written on first use, and for the kernel microbenchmarks;
//! small combinations of the run options run with a KV cache sized for the longest run, and
//! options no run can honour are refused with one line before anything is loaded.
//! These runs check the output, not the speed: no figure is compared with a threshold other
//! than "finite and positive" (speed is measured on real GPUs, see BENCHMARKS.md).

use std::process::Command;

use serde_json::Value;

/// The tiny random Gemma 4 model of the end-to-end tests.
const TINY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/gemma4/gemma4_tiny_a.gguf"
);

/// `gemma-wgpu bench ARGS` that must fail: asserts exit status 1 and an empty stdout, returns
/// stderr.
fn bench_fails(args: &[&str], cache: &std::path::Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_gemma-wgpu"))
        .arg("bench")
        .args(args)
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .env("XDG_CACHE_HOME", cache)
        .output()
        .expect("run gemma-wgpu bench");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
    assert!(out.stdout.is_empty(), "{args:?}");
    stderr
}

fn bench(args: &[&str], cache: &std::path::Path) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_gemma-wgpu"))
        .arg("bench")
        .args(args)
        .arg("--json")
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .env("XDG_CACHE_HOME", cache)
        .output()
        .expect("run gemma-wgpu bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench {args:?} failed: {stderr}");
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("bench {args:?}: stdout is not one JSON object ({e}): {stderr}"))
}

fn cache_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("gemma-wgpu-bench-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The value at a JSON pointer, or a failure naming it.
fn at<'a>(j: &'a Value, ptr: &str) -> &'a Value {
    j.pointer(ptr)
        .unwrap_or_else(|| panic!("missing field {ptr} in {j:#}"))
}

fn positive(j: &Value, ptr: &str) -> f64 {
    let v = at(j, ptr)
        .as_f64()
        .unwrap_or_else(|| panic!("{ptr} is not a number"));
    assert!(v.is_finite() && v > 0.0, "{ptr} = {v}");
    v
}

/// Documented fields of `bench --json` on a model (BENCHMARKS.md, "JSON").
const MODEL_FIELDS: &[&str] = &[
    "/schema",
    "/kind",
    "/version",
    "/commit",
    "/model/path",
    "/model/synthetic",
    "/model/name",
    "/model/arch",
    "/model/layers",
    "/model/hidden",
    "/model/vocab",
    "/model/file_bytes",
    "/model/tensor_types",
    "/adapter/name",
    "/adapter/backend",
    "/adapter/device_type",
    "/adapter/driver",
    "/adapter/driver_info",
    "/adapter/f16",
    "/adapter/subgroups",
    "/adapter/timestamps",
    "/adapter/max_binding_bytes",
    "/adapter/max_buffer_bytes",
    "/options/prompt_len",
    "/options/gen",
    "/options/repeat",
    "/options/profile_tokens",
    "/options/context",
    "/options/prefill_chunk",
    "/options/kv_f32",
    "/options/attention_split_keys",
    "/options/webgpu_limits",
    "/load_s",
    "/pipelines_compiled",
    "/pipeline_compile_s",
    "/gpu_memory_bytes/weights",
    "/gpu_memory_bytes/kv_cache",
    "/gpu_memory_bytes/activations",
    "/gpu_memory_bytes/largest_buffer",
    "/gpu_memory_bytes/mapped",
    "/gpu_memory_bytes/groups",
    "/results/prompt_tokens",
    "/results/generated_tokens",
    "/results/repeat",
    "/results/prefill/tokens_per_s",
    "/results/prefill/runs_s",
    "/results/decode/tokens_per_s",
    "/results/decode/runs_s",
    "/results/time_to_first_token_s",
    "/results/time_to_first_token_cold_s",
    "/results/dispatches_per_decode_token",
    "/results/dispatches_per_prefill",
    "/results/bytes_per_decode_token/weights",
    "/results/bytes_per_decode_token/per_layer_row",
    "/results/bytes_per_decode_token/kv_cache",
    "/results/bytes_per_decode_token/total",
    "/results/achieved_gb_per_s",
    "/results/copy_bandwidth/gb_per_s",
    "/results/copy_bandwidth/command_gb_per_s",
    "/results/copy_bandwidth/shader_gb_per_s",
    "/results/copy_bandwidth/buffer_bytes",
    "/results/copy_bandwidth/copies",
    "/results/copy_bandwidth/seconds",
    "/results/bandwidth_fraction",
    "/results/phone_bound/0/gb_per_s",
    "/results/phone_bound/0/tokens_per_s",
    "/results/phone_bound/1/tokens_per_s",
    "/results/breakdown/decode",
    "/results/breakdown/decode_gpu_us_per_token",
    "/results/breakdown/decode_wall_us_per_token",
    "/results/breakdown/prefill",
    "/results/breakdown/prefill_gpu_ms",
    "/results/breakdown_note",
];

fn check_model_report(j: &Value, prompt: u64, gen: u64, repeat: usize) {
    for f in MODEL_FIELDS {
        at(j, f);
    }
    assert_eq!(at(j, "/schema"), 1);
    assert_eq!(at(j, "/kind"), "model");
    assert_eq!(at(j, "/results/prompt_tokens"), prompt);
    assert_eq!(at(j, "/results/generated_tokens"), gen);
    for rate in ["prefill", "decode"] {
        positive(j, &format!("/results/{rate}/tokens_per_s"));
        let runs = at(j, &format!("/results/{rate}/runs_s"))
            .as_array()
            .unwrap();
        assert_eq!(runs.len(), repeat, "{rate} runs");
    }
    for f in [
        "/load_s",
        "/results/time_to_first_token_s",
        "/results/time_to_first_token_cold_s",
        "/results/dispatches_per_decode_token",
        "/results/dispatches_per_prefill",
        "/results/bytes_per_decode_token/weights",
        "/results/achieved_gb_per_s",
        "/results/copy_bandwidth/gb_per_s",
        "/results/bandwidth_fraction",
    ] {
        positive(j, f);
    }
    // Every GPU weight is read once per decode token: at least the file's matrices on the GPU.
    let weights = positive(j, "/results/bytes_per_decode_token/weights");
    assert_eq!(weights, positive(j, "/gpu_memory_bytes/weights"));
    let total = positive(j, "/results/bytes_per_decode_token/total");
    assert!(total >= weights);
    // The bound at 76 GB/s is 76/60 of the one at 60 GB/s.
    let (b60, b76) = (
        positive(j, "/results/phone_bound/0/tokens_per_s"),
        positive(j, "/results/phone_bound/1/tokens_per_s"),
    );
    assert!((b76 / b60 - 76.0 / 60.0).abs() < 1e-9);
}

/// The per-op breakdown (lavapipe and the test GPUs have timestamp queries inside passes):
/// per-token calls add up to the layers, and shares to one.
fn check_breakdown(j: &Value, layers: f64) {
    if at(j, "/adapter/timestamps") != true {
        assert!(at(j, "/results/breakdown").is_null());
        assert!(at(j, "/results/breakdown_note").is_string());
        return;
    }
    let ops = at(j, "/results/breakdown/decode").as_array().unwrap();
    let find = |name: &str| {
        ops.iter()
            .find(|o| o["op"] == name)
            .unwrap_or_else(|| panic!("no {name} in the decode breakdown: {ops:?}"))
    };
    // Attention is reported per kind ("attention (sliding)", "attention (full, shared
    // cache)", ...): one call per layer in all.
    let attention: f64 = ops
        .iter()
        .filter(|o| {
            o["op"]
                .as_str()
                .is_some_and(|n| n.starts_with("attention ("))
        })
        .map(|o| o["calls"].as_f64().unwrap())
        .sum();
    assert_eq!(attention, layers, "attention calls in {ops:?}");
    assert_eq!(find("lm_head")["calls"].as_f64(), Some(1.0));
    let share: f64 = ops.iter().map(|o| o["share"].as_f64().unwrap()).sum();
    assert!((share - 1.0).abs() < 1e-6, "decode shares sum to {share}");
    positive(j, "/results/breakdown/decode_gpu_us_per_token");
    positive(j, "/results/breakdown/prefill_gpu_ms");
    assert!(!at(j, "/results/breakdown/prefill")
        .as_array()
        .unwrap()
        .is_empty());
}

#[test]
fn bench_json_on_a_tiny_gemma4_model() {
    let model = TINY;
    let cache = cache_dir("tiny");
    let j = bench(
        &[
            "--model",
            model,
            "--prompt-len",
            "12",
            "--gen",
            "4",
            "--repeat",
            "2",
            "--profile-tokens",
            "2",
        ],
        &cache,
    );
    check_model_report(&j, 12, 4, 2);
    check_breakdown(&j, at(&j, "/model/layers").as_f64().unwrap());
    assert!(at(&j, "/model/synthetic").is_null());
    // Gemma 4 reads a per-layer-embedding row from the file every token.
    positive(&j, "/results/bytes_per_decode_token/per_layer_row");
    let _ = std::fs::remove_dir_all(cache);
}

/// `--skip-ops` leaves ops out by name (the first word of a fused op's label too) and
/// `--double-ops` records them twice, and the JSON says so; a name no op of the model has is
/// refused, naming it and the ops that exist.
#[test]
fn bench_skip_ops_by_name() {
    let model = TINY;
    let cache = cache_dir("skip");
    let args = [
        "--model",
        model,
        "--prompt-len",
        "8",
        "--gen",
        "2",
        "--repeat",
        "1",
        "--profile-tokens",
        "0",
        "--no-copy-bandwidth",
    ];
    let j = bench(
        &[&args[..], &["--skip-ops", "attention,ffn_gate_up"]].concat(),
        &cache,
    );
    assert_eq!(
        at(&j, "/results/skipped_ops"),
        &serde_json::json!(["attention", "ffn_gate_up"])
    );
    let full = bench(&args, &cache);
    // Two ops fewer per layer, one of them fused ("ffn_gate_up (+post_attn_norm, ffn_norm)").
    let layers = at(&j, "/model/layers").as_f64().unwrap();
    assert_eq!(
        positive(&full, "/results/dispatches_per_decode_token")
            - positive(&j, "/results/dispatches_per_decode_token"),
        2.0 * layers
    );
    // --double-ops records an op a second time: one mat-vec more per layer.
    let doubled = bench(
        &[&args[..], &["--double-ops", "attn_output"]].concat(),
        &cache,
    );
    assert_eq!(
        at(&doubled, "/results/doubled_ops"),
        &serde_json::json!(["attn_output"])
    );
    assert_eq!(
        positive(&doubled, "/results/dispatches_per_decode_token")
            - positive(&full, "/results/dispatches_per_decode_token"),
        layers
    );

    let stderr = bench_fails(
        &[&args[..], &["--json", "--skip-ops", "attention,no_such_op"]].concat(),
        &cache,
    );
    assert!(
        stderr.contains("no op named `no_such_op`") && stderr.contains("ffn_down"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(cache);
}

#[test]
fn bench_writes_and_reuses_a_synthetic_model() {
    let cache = cache_dir("synth");
    let args = [
        "--synthetic",
        "gemma3-270m",
        "--quant",
        "q4_0",
        "--prompt-len",
        "3",
        "--gen",
        "1",
        "--repeat",
        "1",
        "--no-copy-bandwidth",
    ];
    let j = bench(&[&args[..], &["--profile-tokens", "1"]].concat(), &cache);
    let file = cache.join("gemma-wgpu/synthetic-gemma3-270m-q4_0.gguf");
    assert!(file.exists(), "synthetic model not at {}", file.display());
    assert_eq!(at(&j, "/model/synthetic"), "gemma3-270m q4_0");
    assert_eq!(at(&j, "/model/layers"), 18);
    assert!(at(&j, "/results/copy_bandwidth").is_null());
    assert!(at(&j, "/results/bandwidth_fraction").is_null());
    check_breakdown(&j, 18.0);
    // A second run reuses the file (same bytes, no rewrite).
    let before = std::fs::metadata(&file).unwrap().modified().unwrap();
    assert!(at(&j, "/options/attention_split_keys").is_null());
    let split = ["--profile-tokens", "0", "--attention-split-keys", "2"];
    let j = bench(&[&args[..], &split].concat(), &cache);
    assert_eq!(at(&j, "/options/attention_split_keys"), 2);
    assert_eq!(
        std::fs::metadata(&file).unwrap().modified().unwrap(),
        before
    );
    let _ = std::fs::remove_dir_all(cache);
}

#[test]
fn bench_kernels_json() {
    let cache = cache_dir("kernels");
    let j = bench(
        &[
            "--kernels",
            "--shapes",
            "gemma3-270m attn_q",
            "--types",
            "q4_0,q8_0",
            "--iterations",
            "2",
        ],
        &cache,
    );
    for f in [
        "/schema",
        "/kind",
        "/version",
        "/commit",
        "/adapter/name",
        "/kernels/adapter",
        "/kernels/timing",
        "/kernels/iterations",
        "/kernels/prefill_tokens",
        "/kernels/copy/gb_per_s",
        "/kernels/copy/command_gb_per_s",
        "/kernels/copy/shader_gb_per_s",
        "/kernels/skipped",
    ] {
        at(&j, f);
    }
    assert_eq!(at(&j, "/kind"), "kernels");
    for kind in ["matvec", "matmul"] {
        let rows = at(&j, &format!("/kernels/{kind}")).as_array().unwrap();
        assert_eq!(rows.len(), 2, "{kind}: one shape × two types");
        for r in rows {
            assert_eq!(r["shape"], "gemma3-270m attn_q");
            assert_eq!(r["rows"], 1024);
            assert_eq!(r["k"], 640);
            for f in ["weight_bytes", "parts", "copies", "us_per_call"] {
                positive(r, &format!("/{f}"));
            }
            assert!(r["timing"].is_string());
            let rate = if kind == "matvec" {
                "gb_per_s"
            } else {
                "tflop_per_s"
            };
            positive(r, &format!("/{rate}"));
        }
    }
    let _ = std::fs::remove_dir_all(cache);
}

#[test]
fn bench_bad_arguments_fail_with_one_line() {
    let out = Command::new(env!("CARGO_BIN_EXE_gemma-wgpu"))
        .args(["bench", "--kernels", "--types", "q9_9", "--json"])
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr
            .trim_end()
            .ends_with("error: unsupported weight type `q9_9` in --types"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
}

/// Every run bench performs fits the KV cache it sizes: the profiled decode steps may be more
/// than --gen (the context follows the longer), and the smallest runs work.
#[test]
fn bench_sizes_the_context_for_its_longest_run() {
    let cache = cache_dir("small");
    // (args, prompt, gen, profiled steps, expected context)
    let cases: [(&[&str], u64, u64, u64, u64); 3] = [
        // --profile-tokens defaults to 32, more than --gen.
        (&["--prompt-len", "16", "--gen", "4"], 16, 4, 32, 48),
        // The smallest run: one prompt token, one decoded, nothing profiled.
        (
            &["--prompt-len", "1", "--gen", "1", "--profile-tokens", "0"],
            1,
            1,
            0,
            2,
        ),
        // A larger --context is kept.
        (
            &[
                "--prompt-len",
                "3",
                "--gen",
                "2",
                "--profile-tokens",
                "5",
                "--context",
                "40",
            ],
            3,
            2,
            5,
            40,
        ),
    ];
    for (args, prompt, gen, profiled, context) in cases {
        let args = [
            args,
            &["--model", TINY, "--repeat", "1", "--no-copy-bandwidth"],
        ]
        .concat();
        let j = bench(&args, &cache);
        // The fields inside `copy_bandwidth` (not measured) and `breakdown` (when nothing is
        // profiled) are absent: those objects are null.
        let absent =
            |f: &str| f.contains("copy_bandwidth/") || (profiled == 0 && f.contains("breakdown/"));
        for f in MODEL_FIELDS.iter().filter(|f| !absent(f)) {
            at(&j, f);
        }
        assert_eq!(at(&j, "/results/prompt_tokens"), prompt, "{args:?}");
        assert_eq!(at(&j, "/results/generated_tokens"), gen, "{args:?}");
        assert_eq!(at(&j, "/options/profile_tokens"), profiled, "{args:?}");
        assert_eq!(at(&j, "/options/context"), context, "{args:?}");
        positive(&j, "/results/decode/tokens_per_s");
        positive(&j, "/results/prefill/tokens_per_s");
        positive(&j, "/results/dispatches_per_decode_token");
        if profiled == 0 {
            assert!(at(&j, "/results/breakdown").is_null());
            assert_eq!(at(&j, "/results/breakdown_note"), "not requested");
        } else {
            check_breakdown(&j, at(&j, "/model/layers").as_f64().unwrap());
        }
    }
    let _ = std::fs::remove_dir_all(cache);
}

/// Options no run can honour fail at once: exit status 1, nothing on stdout, and one line on
/// stderr (no adapter line: neither the GPU nor the model was touched; no synthetic model
/// written).
#[test]
fn bench_refuses_impossible_runs_before_loading() {
    let cache = cache_dir("refuse");
    let synthetic = ["--synthetic", "gemma3-270m", "--quant", "q4_0"];
    let cases: [(&[&str], &str); 10] = [
        (
            &["--prompt-len", "0"],
            "--prompt-len must be at least 1: the prefill needs a prompt",
        ),
        (
            &["--gen", "0"],
            "--gen must be at least 1: the decode speed needs a decoded token",
        ),
        (
            &["--repeat", "0"],
            "--repeat must be at least 1: medians need a timed run",
        ),
        (
            &["--prompt-len", "16", "--gen", "4", "--context", "20"],
            "a context of 20 tokens is too small for this bench, which needs 48 \
             (--prompt-len 16 + --profile-tokens 32 profiled decode steps)",
        ),
        (
            &[
                "--prompt-len",
                "16",
                "--gen",
                "40",
                "--profile-tokens",
                "2",
                "--context",
                "55",
            ],
            "a context of 55 tokens is too small for this bench, which needs 56 \
             (--prompt-len 16 + --gen 40 decode steps)",
        ),
        (
            &["--prompt-len", "8", "--gen", "1", "--context", "0"],
            "a context of 0 tokens is too small for this bench, which needs 40",
        ),
        // The model's own limit, from its header.
        (
            &["--prompt-len", "8", "--gen", "1", "--context", "200000"],
            "a context of 200000 tokens is larger than the model's maximum of 131072 \
             (gemma4.context_length)",
        ),
        (
            &["--prompt-len", "131000", "--gen", "100"],
            "bench needs 131100 tokens of context (--prompt-len 131000 + --gen 100 decode \
             steps): invalid argument: a context of 131100 tokens is larger than the model's \
             maximum of 131072 (gemma4.context_length)",
        ),
        (
            &["--prompt-len", "4294967295", "--gen", "1"],
            "this bench needs a context of 4294967327 tokens (--prompt-len 4294967295 + \
             --profile-tokens 32 profiled decode steps), more than any model holds",
        ),
        // Refused before the synthetic model is written.
        (
            &[&synthetic[..], &["--gen", "0"]].concat(),
            "--gen must be at least 1",
        ),
    ];
    for (args, want) in cases {
        let model: &[&str] = if args.contains(&"--synthetic") {
            &[]
        } else {
            &["--model", TINY]
        };
        let stderr = bench_fails(&[model, args].concat(), &cache);
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("error: "), "{args:?}: {stderr}");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
    }
    assert!(
        !cache.join("gemma-wgpu").exists(),
        "a refused bench wrote to the cache"
    );
    let _ = std::fs::remove_dir_all(cache);
}
