//! Kernel microbenchmarks (`bench::kernels`) on small cases: the copy bandwidth, the mat-vec /
//! mat-mat of Gemma 3 270M's `attn_q` in Q4_0 and Gemma 4 E2B's sliding-layer decode attention
//! over 512 positions, 2 rounds. Checks that every figure is
//! finite and positive and that the JSON carries every documented field (BENCHMARKS.md), so
//! the benchmark keeps working on any adapter, a software one included (seconds on lavapipe).

mod common;

use common::block;
use gemma_wgpu::bench::kernels::{copy_bandwidth, run, CopyBandwidth, KernelBenchOptions};
use gemma_wgpu::gpu::{GpuContext, GpuOptions};

/// A context under WebGPU's default limits, like the kernel tests', with or without timestamp
/// queries (used where the adapter offers them inside passes, else the wall clock times).
fn context(timestamps: bool) -> GpuContext {
    let opts = GpuOptions {
        webgpu_default_limits: true,
        backends: Some(wgpu::Backends::VULKAN | wgpu::Backends::METAL | wgpu::Backends::DX12),
        timestamps,
        ..Default::default()
    };
    block(GpuContext::new(&opts)).unwrap_or_else(|e| {
        panic!("tests need a GPU adapter (on a machine without a GPU: apt-get install mesa-vulkan-drivers): {e}")
    })
}

fn positive(what: &str, v: f64) {
    assert!(v.is_finite() && v > 0.0, "{what} = {v}");
}

fn has_fields(what: &str, v: &serde_json::Value, fields: &[&str]) {
    let obj = v
        .as_object()
        .unwrap_or_else(|| panic!("{what}: not an object: {v}"));
    for f in fields {
        assert!(obj.contains_key(*f), "{what}: no field `{f}` in {v}");
    }
}

/// Both timing paths (GPU timestamps where offered, the wall clock), one after the other: one
/// test, so two benchmarks never share a software GPU's cores.
#[test]
fn quick_kernel_benchmark() {
    let ctx = context(true);
    eprintln!("{}", ctx.describe());

    let copy = block(copy_bandwidth(&ctx)).unwrap();
    assert!(copy.buffer_bytes > 0 && copy.copies >= 1);
    positive("copy.gb_per_s", copy.gb_per_s);
    positive("copy.seconds", copy.seconds);

    let timing = if ctx.caps.timestamps {
        "gpu-timestamps"
    } else {
        "wall-clock"
    };
    check_quick(&ctx, &copy, timing);
    drop(ctx);
    check_quick(&context(false), &copy, "wall-clock");
}

/// Runs [`KernelBenchOptions::quick`] and checks the report: figures finite and positive,
/// every documented JSON field present, unfit types skipped.
fn check_quick(ctx: &GpuContext, copy: &CopyBandwidth, timing: &str) {
    let opts = KernelBenchOptions {
        copy: Some(copy.clone()),
        ..KernelBenchOptions::quick()
    };
    assert_eq!(opts.iterations, 2);
    let report = block(run(ctx, &opts)).unwrap();
    eprintln!("{}", serde_json::to_string_pretty(&report).unwrap());

    assert_eq!(report.timing, timing);
    assert_eq!(report.iterations, 2);
    assert_eq!(report.copy.gb_per_s, copy.gb_per_s);
    assert!(report.skipped.is_empty(), "{:?}", report.skipped);

    assert_eq!(report.matvec.len(), 1);
    let mv = &report.matvec[0];
    assert_eq!(mv.shape, "gemma3-270m attn_q");
    assert_eq!((mv.rows, mv.k, mv.weight_type), (1024, 640, "Q4_0"));
    // 1024 rows × 20 blocks × 18 bytes: Q4_0's GPU layout is as dense as GGUF.
    assert_eq!(mv.weight_bytes, 1024 * 20 * 18);
    assert_eq!((mv.parts, mv.timing), (1, timing));
    assert!(mv.copies > 1, "small matrices are rotated through copies");
    positive("matvec.us_per_call", mv.us_per_call);
    positive("matvec.gb_per_s", mv.gb_per_s);
    positive("matvec.copy_fraction", mv.copy_fraction);
    let implied = mv.weight_bytes as f64 / (mv.us_per_call * 1e-6) / 1e9;
    assert!((implied / mv.gb_per_s - 1.0).abs() < 1e-9);

    assert_eq!(report.matmul.len(), 1);
    let mm = &report.matmul[0];
    assert_eq!(
        (mm.rows, mm.k, mm.tokens, mm.timing),
        (1024, 640, 64, timing)
    );
    positive("matmul.us_per_call", mm.us_per_call);
    positive("matmul.tflop_per_s", mm.tflop_per_s);

    let json = serde_json::to_value(&report).unwrap();
    has_fields(
        "report",
        &json,
        &[
            "adapter",
            "timing",
            "iterations",
            "prefill_tokens",
            "copy",
            "matvec",
            "matmul",
            "attention",
            "skipped",
        ],
    );
    has_fields(
        "copy",
        &json["copy"],
        &["buffer_bytes", "copies", "gb_per_s", "seconds"],
    );
    let common = [
        "shape",
        "rows",
        "k",
        "weight_type",
        "weight_bytes",
        "parts",
        "copies",
        "us_per_call",
        "timing",
    ];
    has_fields("matvec[0]", &json["matvec"][0], &common);
    has_fields(
        "matvec[0]",
        &json["matvec"][0],
        &["gb_per_s", "copy_fraction"],
    );
    has_fields("matmul[0]", &json["matmul"][0], &common);
    has_fields("matmul[0]", &json["matmul"][0], &["tokens", "tflop_per_s"]);

    assert_eq!(report.attention.len(), 1);
    let a = &report.attention[0];
    assert_eq!(a.shape, "gemma4-e2b attention sliding ctx512");
    // A 512-position context fits the 512-key window: a full layer over 512 keys, as in the model.
    assert_eq!(
        (
            a.n_q_heads,
            a.n_kv_heads,
            a.head_dim,
            a.window,
            a.context,
            a.keys
        ),
        (8, 1, 256, 0, 512, 512)
    );
    assert_eq!(a.kv_bytes, 2 * 512 * 256 * 2);
    assert_eq!((a.kernel, a.kv_type, a.timing), ("decode", "f16", timing));
    assert!(a.splits > 1 && a.workgroups >= a.splits, "{a:?}");
    assert!(a.copies > 1, "K/V caches are rotated through copies");
    positive("attention.us_per_call", a.us_per_call);
    positive("attention.tiled_us_per_call", a.tiled_us_per_call);
    let implied = a.kv_bytes as f64 / (a.us_per_call * 1e-6) / 1e9;
    assert!((implied / a.gb_per_s - 1.0).abs() < 1e-9);
    has_fields(
        "attention[0]",
        &json["attention"][0],
        &[
            "shape",
            "n_q_heads",
            "n_kv_heads",
            "head_dim",
            "window",
            "context",
            "keys",
            "kv_type",
            "kv_bytes",
            "kernel",
            "splits",
            "workgroups",
            "copies",
            "us_per_call",
            "gb_per_s",
            "tiled_us_per_call",
            "tiled_splits",
            "timing",
        ],
    );

    // A row length that is not a whole number of blocks is reported as skipped, not an error
    // (Q4_K needs multiples of 256; 270M's hidden size is 640).
    let opts = KernelBenchOptions {
        types: vec![gemma_wgpu::gguf::GgmlType::Q4K],
        shapes: vec!["gemma3-270m attn_q".into()],
        ..opts
    };
    let report = block(run(ctx, &opts)).unwrap();
    assert!(report.matvec.is_empty() && report.matmul.is_empty() && report.attention.is_empty());
    assert_eq!(report.skipped.len(), 1);
    let s = &report.skipped[0];
    assert_eq!((s.kernel, s.weight_type, s.k), ("both", "Q4_K", 640));
    has_fields(
        "skipped[0]",
        &serde_json::to_value(s).unwrap(),
        &["shape", "rows", "k", "weight_type", "kernel", "reason"],
    );
}
