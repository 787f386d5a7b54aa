//! Kernel microbenchmarks: the quantized mat-vec (decode) and mat-mat (prefill) kernels of
//! `kernels::matmul` at the real projection shapes of Gemma 3 (270M, 1B) and Gemma 4 (E2B, E4B),
//! for every weight type those models use, set against the device's copy bandwidth; and decode
//! attention (`kernels::attention`, attention + split merge) at Gemma 4 E2B's sliding and full
//! layer shapes over 512, 1,024 and 4,096 positions, next to the tiled kernel on the same step.
//!
//! Why these numbers: decoding one token reads every weight once, so a mat-vec can go no faster
//! than memory bandwidth, and its GB/s divided by the copy bandwidth says how much of the
//! hardware a kernel leaves unused. Prefill is compute bound, so the mat-mat reports TFLOP/s.
//!
//! Method, and why:
//! * the weights are random but valid blocks (`reference::quant::synthetic_blocks`: random
//!   quant bits, finite f16 scales, |w| ≲ 1; kernel speed does not depend on the values),
//!   uploaded through [`QuantMatrix`] exactly as a model's are, so the repacked GPU layout and
//!   the splitting into parts under the binding limits are what a model runs;
//! * a small matrix read over and over would stay in the GPU's L2 cache (50 MB on an H100) and
//!   measure the cache, not DRAM: the mat-vec cycles through enough copies of the matrix that
//!   they total at least [`KernelBenchOptions::rotate_bytes`] (256 MiB; at most
//!   [`MAX_COPIES`]), as a model cycles through its layers. The copies are GPU-side copies of
//!   one upload, and only one shape's copies are alive at a time. Attention cycles through
//!   copies of the K/V cache the same way (at most [`MAX_ATTENTION_COPIES`]);
//! * with GPU timestamps (`GpuOptions { timestamps: true, .. }`) every round is one compute
//!   pass with begin/end timestamps and the result is the median round; otherwise all rounds
//!   go in one submit timed by the wall clock, and the result is their mean. Pipelines are
//!   compiled and one untimed warm-up round runs before either.

use serde::Serialize;

use crate::gguf::GgmlType;
use crate::gpu::{GpuContext, Op, StepParams};
use crate::kernels::attention::{
    kv_bytes_per_elem, Attention, AttentionIo, AttentionKernel, AttentionParams,
};
use crate::kernels::matmul::{Matmul, MatmulIo, MatmulOut, MATMUL_TILE, MATVEC_MAX_TOKENS};
use crate::quant::{part_sizes, GpuLayout, MatrixUpload, QuantMatrix, QuantPart};
use crate::reference::quant::synthetic_blocks;
use crate::synth::{SynthArch, SynthQuant};
use crate::{Error, Result};

/// The weight types benchmarked by default: every format the real and synthetic Gemma files
/// use (Q4_K_M mixes Q4_K, Q6_K, Q5_0 and Q8_0; `synth` also writes Q4_0, Q8_0 and F16).
pub const DEFAULT_TYPES: [GgmlType; 6] = [
    GgmlType::Q4_0,
    GgmlType::Q4K,
    GgmlType::Q5_0,
    GgmlType::Q6K,
    GgmlType::Q8_0,
    GgmlType::F16,
];

/// Default total size of the rotated copies of a mat-vec matrix: five times an H100's 50 MB L2
/// cache, so each dispatch reads its weights from DRAM.
pub const DEFAULT_ROTATE_BYTES: u64 = 256 << 20;

/// Most copies of one matrix (small matrices would otherwise need thousands of dispatches per
/// round).
pub const MAX_COPIES: u32 = 64;

/// Most copies of one attention case's K/V cache (a 512-key sliding layer is 0.5 MiB).
pub const MAX_ATTENTION_COPIES: u32 = 256;

/// Size of the buffers [`copy_bandwidth`] copies between: far above any L2 cache.
const COPY_BYTES: u64 = 256 << 20;

/// GGUF bytes generated per upload chunk (host memory stays one chunk per matrix).
const CHUNK_BYTES: u64 = 4 << 20;

/// Uploaded bytes after which the queue is flushed, so staging memory does not pile up while
/// a 1.3 GB F16 LM head is written.
const FLUSH_BYTES: u64 = 64 << 20;

/// What to benchmark.
#[derive(Clone, Debug)]
pub struct KernelBenchOptions {
    /// Timed dispatch rounds per (shape, type) and kernel (default 50; at most 2048, the
    /// query-set size allows 4096 timestamps).
    pub iterations: u32,
    /// Tokens of the mat-mat (prefill) benchmark (default 512, the prefill chunk); 0 skips the
    /// mat-mat. Must exceed `MATVEC_MAX_TOKENS` (4), below which the mat-vec kernel runs. Lowered
    /// (to a multiple of 32) for a shape whose `[tokens, rows]` output exceeds one binding.
    pub prefill_tokens: u32,
    /// Weight types (empty: [`DEFAULT_TYPES`]).
    pub types: Vec<GgmlType>,
    /// Only shapes whose name (e.g. `gemma4-e2b ffn_gate`, see [`shapes`], or
    /// `gemma4-e2b attention full ctx1024`, see [`attention_shapes`]) contains one of these
    /// strings, case-insensitively (empty: every shape).
    pub shapes: Vec<String>,
    /// The mat-vec cycles through copies of the matrix totalling at least this many bytes
    /// (default [`DEFAULT_ROTATE_BYTES`]; copies capped at [`MAX_COPIES`]).
    pub rotate_bytes: u64,
    /// A copy bandwidth measured already (by [`copy_bandwidth`] on the same context) to report
    /// against; `None` measures it (half a second plus two 256 MiB buffers).
    pub copy: Option<CopyBandwidth>,
}

impl Default for KernelBenchOptions {
    fn default() -> Self {
        Self {
            iterations: 50,
            prefill_tokens: 512,
            types: Vec::new(),
            shapes: Vec::new(),
            rotate_bytes: DEFAULT_ROTATE_BYTES,
            copy: None,
        }
    }
}

impl KernelBenchOptions {
    /// One small shape (Gemma 3 270M `attn_q`, 1024 × 640), Q4_0, one attention case (E2B's
    /// sliding layer over 512 positions), 2 rounds, 64 prefill tokens and 8 MiB of copies:
    /// finishes in seconds on a software GPU (tests, smoke runs).
    pub fn quick() -> Self {
        Self {
            iterations: 2,
            prefill_tokens: 64,
            types: vec![GgmlType::Q4_0],
            shapes: vec![
                "gemma3-270m attn_q".into(),
                "gemma4-e2b attention sliding ctx512".into(),
            ],
            rotate_bytes: 8 << 20,
            copy: None,
        }
    }
}

/// Device copy bandwidth: the ceiling a bandwidth-bound kernel is measured against.
#[derive(Clone, Debug, Serialize)]
pub struct CopyBandwidth {
    /// Bytes per copy (size of each of the two buffers).
    pub buffer_bytes: u64,
    /// Copies in the timed submit.
    pub copies: u32,
    /// (bytes read + bytes written) per second / 1e9, the STREAM "copy" convention: the
    /// faster of the buffer-copy command and the shader copy.
    pub gb_per_s: f64,
    /// The same through `copy_buffer_to_buffer` (on the H100's Vulkan driver well below what
    /// a shader reaches).
    pub command_gb_per_s: f64,
    /// The same through a compute shader copying 16-byte words.
    pub shader_gb_per_s: f64,
    /// Wall-clock seconds of the last timed submit (the shader copy's).
    pub seconds: f64,
}

/// One mat-vec (1 token: decode) measurement.
#[derive(Clone, Debug, Serialize)]
pub struct MatvecResult {
    /// Model and projection, e.g. `gemma4-e2b ffn_gate`.
    pub shape: String,
    /// Output rows `n` of the `[n, k]` weight matrix.
    pub rows: u32,
    /// Row length (input features).
    pub k: u32,
    /// GGUF type name of the weights (`Q4_K`).
    pub weight_type: &'static str,
    /// GPU bytes of one copy of the matrix (repacked layout, all parts).
    pub weight_bytes: u64,
    /// Buffers the matrix is split into (binding-size limits): one dispatch each.
    pub parts: u32,
    /// Distinct copies cycled through (cache busting).
    pub copies: u32,
    /// Microseconds per mat-vec: the median round over the copies in it (`gpu-timestamps`),
    /// or the mean over all rounds (`wall-clock`).
    pub us_per_call: f64,
    /// `weight_bytes` per second / 1e9 (activations are negligible).
    pub gb_per_s: f64,
    /// `gb_per_s / copy.gb_per_s`: the share of the device's copy bandwidth reached (a copy
    /// both reads and writes, so this is a conservative figure).
    pub copy_fraction: f64,
    /// The same when every call writes its own output, so consecutive calls need no barrier
    /// between them and may overlap (the kernel's streaming bandwidth; a model's dependent
    /// steps pay the barrier, `us_per_call` above).
    pub streaming_us_per_call: f64,
    pub streaming_gb_per_s: f64,
    pub streaming_copy_fraction: f64,
    /// Dependent calls of the several-token mat-vec (a speculative verify step, a short
    /// prompt): `(tokens, µs per call)` for 2, 4 and `MATVEC_MAX_TOKENS` tokens, where the
    /// activation buffer holds them (empty otherwise).
    pub few_tokens_us_per_call: Vec<(u32, f64)>,
    /// `gpu-timestamps` or `wall-clock`.
    pub timing: &'static str,
}

/// One mat-mat (prefill) measurement.
#[derive(Clone, Debug, Serialize)]
pub struct MatmulResult {
    /// Model and projection, e.g. `gemma4-e2b ffn_gate`.
    pub shape: String,
    /// Output rows `n` of the `[n, k]` weight matrix.
    pub rows: u32,
    /// Row length (input features).
    pub k: u32,
    /// GGUF type name of the weights.
    pub weight_type: &'static str,
    /// GPU bytes of one copy of the matrix.
    pub weight_bytes: u64,
    /// Buffers the matrix is split into.
    pub parts: u32,
    /// Distinct copies cycled through (one per round).
    pub copies: u32,
    /// Tokens (activation rows) per call.
    pub tokens: u32,
    /// Microseconds per call (median round with `gpu-timestamps`, mean with `wall-clock`).
    pub us_per_call: f64,
    /// `2 · rows · k · tokens` per second / 1e12.
    pub tflop_per_s: f64,
    /// `gpu-timestamps` or `wall-clock`.
    pub timing: &'static str,
}

/// One decode-attention measurement: a single-token step at the last position of the context.
#[derive(Clone, Debug, Serialize)]
pub struct AttentionResult {
    /// Model, layer kind and context, e.g. `gemma4-e2b attention full ctx1024`.
    pub shape: String,
    pub n_q_heads: u32,
    pub n_kv_heads: u32,
    pub head_dim: u32,
    /// Sliding window (0: full attention; a sliding layer whose context fits in its window is
    /// a full one, as in the model).
    pub window: u32,
    /// Positions of the cache; the step is at position `context − 1`.
    pub context: u32,
    /// Keys the step attends to.
    pub keys: u32,
    /// `f16` (the default cache).
    pub kv_type: &'static str,
    /// K and V bytes the step reads.
    pub kv_bytes: u64,
    /// Kernel that runs the step (`decode`), its key splits and workgroups.
    pub kernel: &'static str,
    pub splits: u32,
    pub workgroups: u32,
    /// Distinct K/V caches cycled through (cache busting).
    pub copies: u32,
    /// Microseconds per call, attention + split merge: the median round over the copies in it
    /// (`gpu-timestamps`), or the mean over all rounds (`wall-clock`).
    pub us_per_call: f64,
    /// `kv_bytes` per second / 1e9.
    pub gb_per_s: f64,
    /// The same step through the tiled kernel (the decode path before the decode kernel), for
    /// comparison on the same device.
    pub tiled_us_per_call: f64,
    /// Key splits of the tiled kernel.
    pub tiled_splits: u32,
    /// `gpu-timestamps` or `wall-clock`.
    pub timing: &'static str,
}

/// A (shape, type, kernel) that was not measured, and why.
#[derive(Clone, Debug, Serialize)]
pub struct SkippedCase {
    pub shape: String,
    pub rows: u32,
    pub k: u32,
    pub weight_type: &'static str,
    /// `matvec`, `matmul` or `both`.
    pub kernel: &'static str,
    pub reason: String,
}

/// Everything [`run`] measured.
#[derive(Clone, Debug, Serialize)]
pub struct KernelReport {
    /// Adapter, backend and kernel variant (`GpuContext::describe`).
    pub adapter: String,
    /// `gpu-timestamps` when every result used GPU timestamps, `wall-clock` when none did,
    /// `mixed` otherwise (a driver returned unusable timestamps for some).
    pub timing: &'static str,
    /// Timed rounds per measurement.
    pub iterations: u32,
    /// Requested mat-mat tokens (a result's `tokens` may be lower, see its shape).
    pub prefill_tokens: u32,
    /// The device's copy bandwidth, the reference for `copy_fraction`.
    pub copy: CopyBandwidth,
    /// What a dispatch costs besides its work.
    pub dispatch: DispatchCost,
    pub matvec: Vec<MatvecResult>,
    pub matmul: Vec<MatmulResult>,
    pub attention: Vec<AttentionResult>,
    pub skipped: Vec<SkippedCase>,
}

/// The cost of a dispatch that does (almost) nothing, timed by the wall clock over one submit
/// of `dispatches` of them: what a decode step pays per dispatch on top of its work.
#[derive(Clone, Debug, Serialize)]
pub struct DispatchCost {
    pub dispatches: u32,
    /// Each dispatch reads and writes the buffer the one before wrote (a barrier between every
    /// two, as between the ops of a model's step), µs per dispatch.
    pub dependent_us: f64,
    /// Consecutive dispatches write different buffers (no barrier between neighbours).
    pub independent_us: f64,
    /// CPU µs per dispatch to record it (pipeline, bind group, dispatch) and finish the
    /// command buffer.
    pub encode_us: f64,
}

/// One benchmarked matrix shape.
#[derive(Clone, Debug, Serialize)]
pub struct BenchShape {
    /// `<model> <projection>`, e.g. `gemma3-1b attn_output`.
    pub name: String,
    /// Output rows `n`.
    pub rows: u32,
    /// Row length `k`.
    pub k: u32,
}

/// One benchmarked decode-attention shape.
#[derive(Clone, Debug, Serialize)]
pub struct AttentionBenchShape {
    /// `<model> attention <sliding|full> ctx<context>`.
    pub name: String,
    pub n_q_heads: u32,
    pub n_kv_heads: u32,
    pub head_dim: u32,
    /// The layer kind's sliding window (0: full attention).
    pub window: u32,
    pub context: u32,
}

/// Gemma 4 E2B's decode attention (8 query heads, 1 KV head, f16 cache): sliding layers
/// (d = 256, window 512) and full layers (d = 512) over 512, 1,024 and 4,096 positions.
pub fn attention_shapes() -> Vec<AttentionBenchShape> {
    let s = SynthArch::Gemma4E2b.spec(SynthQuant::Q4_0, 0);
    let mut v = Vec::new();
    for (kind, head_dim, window) in [
        ("sliding", s.head_dim, s.sliding_window),
        ("full", s.head_dim_full, 0),
    ] {
        for context in [512, 1024, 4096] {
            v.push(AttentionBenchShape {
                name: format!(
                    "{} attention {kind} ctx{context}",
                    SynthArch::Gemma4E2b.name()
                ),
                n_q_heads: s.n_heads,
                n_kv_heads: s.n_kv_heads,
                head_dim,
                window,
                context,
            });
        }
    }
    v
}

const GPU_TIMESTAMPS: &str = "gpu-timestamps";
const WALL_CLOCK: &str = "wall-clock";

/// The projection shapes of each model (smallest model first), from its `SynthSpec`:
/// `attn_q` (heads·head_dim × hidden), `attn_kv` (attn_k and attn_v: kv_heads·head_dim ×
/// hidden), `attn_output` (hidden × heads·head_dim), `ffn_gate` (also ffn_up: ff × hidden),
/// `ffn_down` (hidden × ff) and `lm_head` (vocab × hidden; E4B's is over 256 MiB even in Q4_0
/// and is split into parts). Gemma 4 uses its sliding-layer head size and first-layer MLP width.
pub fn shapes() -> Vec<BenchShape> {
    let archs = [
        SynthArch::Gemma3_270m,
        SynthArch::Gemma3_1b,
        SynthArch::Gemma4E2b,
        SynthArch::Gemma4E4b,
    ];
    let mut v = Vec::new();
    for arch in archs {
        let s = arch.spec(SynthQuant::Q4_0, 0);
        let q = s.n_heads * s.head_dim;
        let kv = s.n_kv_heads * s.head_dim;
        let ff = s.ff.first().copied().unwrap_or(s.hidden);
        for (proj, rows, k) in [
            ("attn_q", q, s.hidden),
            ("attn_kv", kv, s.hidden),
            ("attn_output", s.hidden, q),
            ("ffn_gate", ff, s.hidden),
            ("ffn_down", s.hidden, ff),
            ("lm_head", s.vocab, s.hidden),
        ] {
            v.push(BenchShape {
                name: format!("{} {proj}", arch.name()),
                rows,
                k,
            });
        }
    }
    v
}

/// Measures the device's buffer-to-buffer copy bandwidth: two buffers of min(256 MiB,
/// `max_buffer`) bytes, one warm-up copy (buffers are zero-filled lazily on first use), one
/// timed copy to calibrate, then as many copies as take about 0.2 s (at most 200) in one
/// submit, timed by the wall clock.
pub async fn copy_bandwidth(ctx: &GpuContext) -> Result<CopyBandwidth> {
    let bytes = COPY_BYTES.min(ctx.caps.max_buffer) & !(wgpu::COPY_BUFFER_ALIGNMENT - 1);
    if bytes == 0 {
        return Err(Error::InvalidArgument(
            "copy bandwidth: the device allows no buffer to copy".into(),
        ));
    }
    // Whole 16-byte words, bindable whole for the shader copy.
    let bytes = bytes.min(ctx.caps.max_binding) & !15;
    let make = |label| {
        // [bytes] u8, contents irrelevant
        ctx.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes,
            usage: wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST
                | wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        })
    };
    let (src, dst) = (make("bench.copy.src")?, make("bench.copy.dst")?);
    let kernel = ctx.kernel(&copy_spec())?;
    let bind = ctx.bind(&kernel, &[src.as_entire_binding(), dst.as_entire_binding()]);
    let groups = crate::gpu::grid(
        (bytes / 16).div_ceil(256) as u32,
        ctx.caps.max_workgroups_per_dim,
    );
    let timed = |copies: u32, shader: bool| {
        let mut encoder = ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("bench.copy"),
            });
        if shader {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("bench.copy"),
                timestamp_writes: None,
            });
            pass.set_pipeline(kernel.pipeline());
            pass.set_bind_group(0, bind.get(), &[]);
            for _ in 0..copies {
                crate::gpu::dispatch(&mut pass, groups);
            }
        } else {
            for _ in 0..copies {
                encoder.copy_buffer_to_buffer(&src, 0, &dst, 0, bytes);
            }
        }
        let commands = encoder.finish();
        async move {
            let started = web_time::Instant::now();
            ctx.submit([commands]);
            ctx.wait().await?;
            Ok::<f64, Error>(started.elapsed().as_secs_f64())
        }
    };
    let mut rates = [0.0; 2];
    let (mut copies, mut seconds) = (0, 0.0);
    for (i, shader) in [false, true].into_iter().enumerate() {
        timed(1, shader).await?;
        let once = timed(1, shader).await?.max(1e-6);
        copies = ((0.2 / once).ceil() as u32).clamp(1, 200);
        seconds = timed(copies, shader).await?.max(1e-9);
        rates[i] = 2.0 * bytes as f64 * copies as f64 / seconds / 1e9;
    }
    Ok(CopyBandwidth {
        buffer_bytes: bytes,
        copies,
        gb_per_s: rates[0].max(rates[1]),
        command_gb_per_s: rates[0],
        shader_gb_per_s: rates[1],
        seconds,
    })
}

/// Dispatches of the [`dispatch_cost`] chains (one submit each).
const TICKS: u32 = 2000;
/// Buffers the independent chain cycles through.
const TICK_BUFFERS: usize = 16;

/// Times [`TICKS`] one-workgroup dispatches in one submit, dependent and independent, and the
/// CPU time to record them.
pub async fn dispatch_cost(ctx: &GpuContext) -> Result<DispatchCost> {
    let kernel = ctx.kernel(&tick_spec())?;
    let buffers = (0..TICK_BUFFERS)
        .map(|_| ctx.storage("bench.tick", 4)) // [1] u32
        .collect::<Result<Vec<_>>>()?;
    let groups: Vec<crate::gpu::BindGroup> = buffers
        .iter()
        .map(|b| ctx.bind(&kernel, &[b.as_entire_binding()]))
        .collect();
    let run = |independent: bool| {
        let started = web_time::Instant::now();
        let mut encoder = ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("bench.ticks"),
            });
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("bench.ticks"),
                timestamp_writes: None,
            });
            pass.set_pipeline(kernel.pipeline());
            for i in 0..TICKS as usize {
                let g = if independent { i % TICK_BUFFERS } else { 0 };
                pass.set_bind_group(0, groups[g].get(), &[]);
                crate::gpu::dispatch(&mut pass, [1, 1, 1]);
            }
        }
        let commands = encoder.finish();
        let encode = started.elapsed().as_secs_f64();
        async move {
            let started = web_time::Instant::now();
            ctx.submit([commands]);
            ctx.wait().await?;
            Ok::<(f64, f64), Error>((encode, started.elapsed().as_secs_f64()))
        }
    };
    run(false).await?; // warm-up
    let (encode, dependent) = run(false).await?;
    let (_, independent) = run(true).await?;
    let per = |s: f64| s * 1e6 / TICKS as f64;
    Ok(DispatchCost {
        dispatches: TICKS,
        dependent_us: per(dependent),
        independent_us: per(independent),
        encode_us: per(encode),
    })
}

/// The kernel of [`dispatch_cost`] (listed for shader validation).
pub fn tick_spec() -> crate::gpu::KernelSpec {
    crate::gpu::KernelSpec::new("bench_tick", include_str!("../../shaders/bench_tick.wgsl"))
}

/// The shader copy of [`copy_bandwidth`] (listed for shader validation).
pub fn copy_spec() -> crate::gpu::KernelSpec {
    crate::gpu::KernelSpec::new("bench_copy", include_str!("../../shaders/bench_copy.wgsl"))
}

/// Runs the copy-bandwidth measurement and every selected (shape, type) case.
pub async fn run(ctx: &GpuContext, opts: &KernelBenchOptions) -> Result<KernelReport> {
    run_with_progress(ctx, opts, |_| {}).await
}

/// [`run`], calling `progress` with one line per finished case (a full run takes minutes).
pub async fn run_with_progress(
    ctx: &GpuContext,
    opts: &KernelBenchOptions,
    mut progress: impl FnMut(&str),
) -> Result<KernelReport> {
    if opts.iterations == 0 || opts.iterations > 2048 {
        return Err(Error::InvalidArgument(format!(
            "kernel benchmark: iterations must be 1..=2048, not {}",
            opts.iterations
        )));
    }
    if opts.prefill_tokens != 0 && opts.prefill_tokens <= MATVEC_MAX_TOKENS {
        return Err(Error::InvalidArgument(format!(
            "kernel benchmark: prefill tokens must exceed {MATVEC_MAX_TOKENS} (the mat-vec runs \
             up to there) or be 0, not {}",
            opts.prefill_tokens
        )));
    }
    let types: Vec<GgmlType> = if opts.types.is_empty() {
        DEFAULT_TYPES.to_vec()
    } else {
        opts.types.clone()
    };
    if let Some(ty) = types.iter().find(|t| !t.is_supported()) {
        return Err(Error::InvalidArgument(format!(
            "kernel benchmark: no kernels for type {ty}"
        )));
    }
    let filters: Vec<String> = opts.shapes.iter().map(|s| s.to_lowercase()).collect();
    let wanted = |name: &str| {
        let name = name.to_lowercase();
        filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str()))
    };
    let selected: Vec<BenchShape> = shapes().into_iter().filter(|s| wanted(&s.name)).collect();
    let attention: Vec<AttentionBenchShape> = attention_shapes()
        .into_iter()
        .filter(|s| wanted(&s.name))
        .collect();
    if selected.is_empty() && attention.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "kernel benchmark: no shape matches {:?} (shapes: {})",
            opts.shapes,
            shapes()
                .iter()
                .map(|s| s.name.clone())
                .chain(attention_shapes().into_iter().map(|s| s.name))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }

    let copy = match &opts.copy {
        Some(copy) => copy.clone(),
        None => copy_bandwidth(ctx).await?,
    };
    progress(&format!(
        "copy bandwidth: {:.1} GB/s ({} MiB buffers)",
        copy.gb_per_s,
        copy.buffer_bytes >> 20
    ));
    let dispatch = dispatch_cost(ctx).await?;
    progress(&format!(
        "dispatch: {:.2} µs dependent, {:.2} µs independent, {:.2} µs to encode",
        dispatch.dependent_us, dispatch.independent_us, dispatch.encode_us
    ));
    let mut report = KernelReport {
        adapter: ctx.describe(),
        timing: WALL_CLOCK,
        iterations: opts.iterations,
        prefill_tokens: opts.prefill_tokens,
        copy,
        dispatch,
        matvec: Vec::new(),
        matmul: Vec::new(),
        attention: Vec::new(),
        skipped: Vec::new(),
    };
    let mut seed = 0x6765_6d6d_6100_0001u64;
    for shape in &selected {
        for &ty in &types {
            seed = seed.wrapping_add(1);
            bench_case(ctx, opts, shape, ty, seed, &mut report, &mut progress).await?;
            // This case's buffers were dropped: let wgpu free them before the next upload.
            ctx.wait().await?;
        }
    }
    for shape in &attention {
        bench_attention(ctx, opts, shape, &mut report, &mut progress).await?;
        ctx.wait().await?;
    }
    let timings = report
        .matvec
        .iter()
        .map(|r| r.timing)
        .chain(report.matmul.iter().map(|r| r.timing))
        .chain(report.attention.iter().map(|r| r.timing));
    let (mut ts, mut wall) = (false, false);
    for t in timings {
        ts |= t == GPU_TIMESTAMPS;
        wall |= t == WALL_CLOCK;
    }
    report.timing = match (ts, wall) {
        (true, true) => "mixed",
        (true, false) => GPU_TIMESTAMPS,
        _ => WALL_CLOCK,
    };
    Ok(report)
}

/// Uploads one shape in one type (plus its copies), measures the mat-vec and the mat-mat, and
/// appends the results (or why a kernel was skipped) to `report`.
async fn bench_case(
    ctx: &GpuContext,
    opts: &KernelBenchOptions,
    shape: &BenchShape,
    ty: GgmlType,
    seed: u64,
    report: &mut KernelReport,
    progress: &mut impl FnMut(&str),
) -> Result<()> {
    let (n, k) = (shape.rows, shape.k);
    let skip = |kernel: &'static str, reason: String| SkippedCase {
        shape: shape.name.clone(),
        rows: n,
        k,
        weight_type: ty.name(),
        kernel,
        reason,
    };
    // A row length that is not a whole number of blocks cannot hold this type (Q4_K at 640).
    if let Err(e) = GpuLayout::new(&shape.name, ty, k) {
        progress(&format!("{} {ty}: skipped ({e})", shape.name));
        report.skipped.push(skip("both", e.to_string()));
        return Ok(());
    }
    let limit = ctx.caps.max_binding.min(ctx.caps.max_buffer);
    let one_copy: u64 = part_sizes(&shape.name, ty, k, n, limit)?.iter().sum();
    let copies = opts
        .rotate_bytes
        .div_ceil(one_copy.max(1))
        .clamp(1, MAX_COPIES as u64) as u32;

    let (tokens, matmul_skip) = match matmul_tokens(opts.prefill_tokens, n, k, limit) {
        Ok(t) => (t, None),
        Err(reason) => (1, Some(reason)),
    };

    let first = upload_random(ctx, &shape.name, ty, k, n, seed).await?;
    let matrices = replicate(ctx, first, copies).await?;
    let weight_bytes = matrices[0].gpu_bytes();
    let parts = matrices[0].parts.len() as u32;

    let mut rng = crate::reference::quant::Rng(seed ^ 0x5851_f42d_4c95_7f2d);
    let x_data: Vec<f32> = (0..tokens as usize * k as usize)
        .map(|_| rng.unit())
        .collect();
    let x = ctx.storage_init("bench.x", &x_data)?; // [tokens, k] f32
    drop(x_data);
    let y = ctx.storage("bench.y", tokens as u64 * n as u64 * 4)?; // [tokens, n] f32
    let step1 = StepParams::new(1, 0);
    let step1_buf = ctx.params_init("bench.step1", &step1); // StepParams, 1 token
    let build = |step: &wgpu::Buffer| {
        matrices
            .iter()
            .map(|m| {
                Matmul::new(
                    ctx,
                    m,
                    MatmulIo::plain(
                        x.as_entire_binding(),
                        y.as_entire_binding(),
                        n,
                        step.as_entire_binding(),
                    ),
                    MatmulOut::Store,
                )
            })
            .collect::<Result<Vec<_>>>()
    };

    // Mat-vec: a round is one call on every copy, so each reads its weights from DRAM. All
    // calls write one `y`, so each waits for the one before, as in a model's step.
    let mv = build(&step1_buf)?;
    let (secs, timing) = measure(ctx, opts.iterations, copies, |pass, _| {
        for op in &mv {
            op.encode(pass, &step1);
        }
    })
    .await?;
    drop(mv);
    // Streaming: each copy writes its own output, so nothing orders the calls and the GPU
    // may overlap one call's tail with the next one's start: the kernel's own bandwidth,
    // without the per-dispatch barrier.
    let outputs = (0..copies)
        .map(|_| ctx.storage("bench.y_stream", n as u64 * 4)) // [1, n] f32 per copy
        .collect::<Result<Vec<_>>>()?;
    let streaming = matrices
        .iter()
        .zip(&outputs)
        .map(|(m, y)| {
            Matmul::new(
                ctx,
                m,
                MatmulIo::plain(
                    x.as_entire_binding(),
                    y.as_entire_binding(),
                    n,
                    step1_buf.as_entire_binding(),
                ),
                MatmulOut::Store,
            )
        })
        .collect::<Result<Vec<_>>>()?;
    let (stream_secs, _) = measure(ctx, opts.iterations, copies, |pass, _| {
        for op in &streaming {
            op.encode(pass, &step1);
        }
    })
    .await?;
    drop(streaming);
    drop(outputs);
    // Several tokens, dependent calls as above: what a verify step pays per matrix.
    let mut few_tokens_us_per_call = Vec::new();
    for t in [2, 4, MATVEC_MAX_TOKENS] {
        if t > tokens {
            break;
        }
        let step = StepParams::new(t, 0);
        let step_buf = ctx.params_init("bench.step_few", &step); // StepParams, t tokens
        let mv = build(&step_buf)?;
        let (secs, _) = measure(ctx, opts.iterations, copies, |pass, _| {
            for op in &mv {
                op.encode(pass, &step);
            }
        })
        .await?;
        few_tokens_us_per_call.push((t, secs * 1e6));
    }
    let few_tokens_line: String = few_tokens_us_per_call
        .iter()
        .map(|(t, us)| format!("; {t} tokens {us:.1} µs"))
        .collect();
    let gb_per_s = weight_bytes as f64 / secs / 1e9;
    let stream_gb_per_s = weight_bytes as f64 / stream_secs / 1e9;
    let copy_gb = report.copy.gb_per_s;
    let share = |gb: f64| if copy_gb > 0.0 { gb / copy_gb } else { 0.0 };
    report.matvec.push(MatvecResult {
        shape: shape.name.clone(),
        rows: n,
        k,
        weight_type: ty.name(),
        weight_bytes,
        parts,
        copies,
        us_per_call: secs * 1e6,
        gb_per_s,
        copy_fraction: share(gb_per_s),
        streaming_us_per_call: stream_secs * 1e6,
        streaming_gb_per_s: stream_gb_per_s,
        streaming_copy_fraction: share(stream_gb_per_s),
        few_tokens_us_per_call,
        timing,
    });
    let mut line = format!(
        "{} {ty}: mat-vec {:.1} µs, {gb_per_s:.1} GB/s ({:.0}%); streaming {:.1} µs, \
         {stream_gb_per_s:.1} GB/s ({:.0}%)",
        shape.name,
        secs * 1e6,
        100.0 * share(gb_per_s),
        stream_secs * 1e6,
        100.0 * share(stream_gb_per_s),
    );
    line.push_str(&few_tokens_line);

    // Mat-mat: compute bound; a round is one call, on the next copy.
    match matmul_skip {
        Some(reason) => {
            if !reason.is_empty() {
                line.push_str(&format!("; mat-mat skipped ({reason})"));
                report.skipped.push(skip("matmul", reason));
            }
        }
        None => {
            let step = StepParams::new(tokens, 0);
            let step_buf = ctx.params_init("bench.step", &step); // StepParams, `tokens` tokens
            let mm = build(&step_buf)?;
            let (secs, timing) = measure(ctx, opts.iterations, 1, |pass, round| {
                mm[round as usize % mm.len()].encode(pass, &step);
            })
            .await?;
            let tflop_per_s = 2.0 * n as f64 * k as f64 * tokens as f64 / secs / 1e12;
            line.push_str(&format!(
                "; mat-mat ({tokens} tokens) {:.1} µs, {tflop_per_s:.2} TFLOP/s",
                secs * 1e6
            ));
            report.matmul.push(MatmulResult {
                shape: shape.name.clone(),
                rows: n,
                k,
                weight_type: ty.name(),
                weight_bytes,
                parts,
                copies,
                tokens,
                us_per_call: secs * 1e6,
                tflop_per_s,
                timing,
            });
        }
    }
    progress(&line);
    Ok(())
}

/// Times one decode step (T = 1 at position `context − 1`) of `shape` through the decode
/// kernel (what the model runs) and the tiled kernel, cycling through copies of a random f16
/// K/V cache, and appends the result to `report`.
async fn bench_attention(
    ctx: &GpuContext,
    opts: &KernelBenchOptions,
    shape: &AttentionBenchShape,
    report: &mut KernelReport,
    progress: &mut impl FnMut(&str),
) -> Result<()> {
    let (nq, nkv, d) = (shape.n_q_heads, shape.n_kv_heads, shape.head_dim);
    // As the model does: a sliding layer whose context fits in the window is a full layer.
    let window = if shape.context > shape.window {
        shape.window
    } else {
        0
    };
    let pos0 = shape.context - 1;
    let cap = AttentionParams::min_cap(window, 1, shape.context);
    let keys = if window > 0 {
        window.min(shape.context)
    } else {
        shape.context
    };
    let elem = kv_bytes_per_elem(false);
    let cache_bytes = cap as u64 * (nkv * d) as u64 * elem;
    let kv_bytes = 2 * keys as u64 * (nkv * d) as u64 * elem;
    let copies = opts
        .rotate_bytes
        .div_ceil(2 * cache_bytes)
        .clamp(1, MAX_ATTENTION_COPIES as u64) as u32;

    let mut rng = crate::reference::quant::Rng(0x6174_746e ^ shape.context as u64 ^ d as u64);
    let mut random = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.unit()).collect() };
    let q = ctx.storage_init("bench.attention.q", &random((nq * d) as usize))?; // [1, nq, d] f32
                                                                                // [cap, nkv, d] f16 pairs: the first copy uploaded, the others copied on the GPU.
    let k0: Vec<u32> = crate::reference::attention::pack_f16(&random((cap * nkv * d) as usize));
    let v0: Vec<u32> = crate::reference::attention::pack_f16(&random((cap * nkv * d) as usize));
    let k_first = ctx.storage_init("bench.attention.k", &k0)?;
    let v_first = ctx.storage_init("bench.attention.v", &v0)?;
    drop((k0, v0));
    let mut caches = vec![(k_first, v_first)];
    {
        let mut encoder = ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("bench.attention.replicate"),
            });
        for c in 1..copies {
            let k = ctx.storage(&format!("bench.attention.k#{c}"), cache_bytes)?;
            let v = ctx.storage(&format!("bench.attention.v#{c}"), cache_bytes)?;
            encoder.copy_buffer_to_buffer(&caches[0].0, 0, &k, 0, cache_bytes);
            encoder.copy_buffer_to_buffer(&caches[0].1, 0, &v, 0, cache_bytes);
            caches.push((k, v));
        }
        ctx.submit([encoder.finish()]);
        ctx.wait().await?;
    }
    let out = ctx.storage("bench.attention.out", (nq * d) as u64 * 4)?; // [1, nq, d] f32
    let step = StepParams::new(1, pos0);
    let step_buf = ctx.params_init("bench.attention.step", &step); // StepParams, 1 token
    let params = |kernel| AttentionParams {
        n_q_heads: nq,
        n_kv_heads: nkv,
        head_dim: d,
        cap,
        window,
        context: shape.context,
        scale: 1.0,
        max_tokens: 1,
        split_keys: 0,
        kv_f32: false,
        kernel,
    };
    // One scratch for every copy, as a model shares one across layers.
    let scratch_bytes = Attention::scratch_bytes(&params(AttentionKernel::Decode))
        .max(Attention::scratch_bytes(&params(AttentionKernel::Tiled)));
    let scratch = ctx.storage("bench.attention.partials", scratch_bytes)?;
    let build = |kernel| {
        caches
            .iter()
            .map(|(k, v)| {
                Attention::new(
                    ctx,
                    AttentionIo {
                        q: q.as_entire_binding(),
                        k_cache: k.as_entire_binding(),
                        v_cache: v.as_entire_binding(),
                        out: out.as_entire_binding(),
                        step: step_buf.as_entire_binding(),
                        scratch: Some(scratch.as_entire_binding()),
                    },
                    params(kernel),
                )
            })
            .collect::<Result<Vec<_>>>()
    };
    let time = |ops: Vec<Attention>| async move {
        let plan = ops[0].plan(&step);
        let (secs, timing) = measure(ctx, opts.iterations, copies, |pass, _| {
            for op in &ops {
                op.encode(pass, &step);
            }
        })
        .await?;
        Ok::<_, Error>((secs, timing, plan))
    };
    let (secs, timing, plan) = time(build(AttentionKernel::Decode)?).await?;
    let (tiled_secs, _, tiled_plan) = time(build(AttentionKernel::Tiled)?).await?;
    let gb_per_s = kv_bytes as f64 / secs / 1e9;
    progress(&format!(
        "{}: attention {:.1} µs ({} splits, {gb_per_s:.1} GB/s of K/V); tiled kernel {:.1} µs",
        shape.name,
        secs * 1e6,
        plan.splits,
        tiled_secs * 1e6
    ));
    report.attention.push(AttentionResult {
        shape: shape.name.clone(),
        n_q_heads: nq,
        n_kv_heads: nkv,
        head_dim: d,
        window,
        context: shape.context,
        keys,
        kv_type: "f16",
        kv_bytes,
        kernel: plan.kernel,
        splits: plan.splits,
        workgroups: plan.workgroups,
        copies,
        us_per_call: secs * 1e6,
        gb_per_s,
        tiled_us_per_call: tiled_secs * 1e6,
        tiled_splits: tiled_plan.splits,
        timing,
    });
    Ok(())
}

/// Tokens of the mat-mat for an `[n, k]` matrix: `requested`, lowered until the `[tokens, k]`
/// and `[tokens, n]` f32 activations fit one binding of `limit` bytes (the 262144-row LM head
/// at 512 tokens would need 512 MiB of output), to a multiple of the 32-token tile when it was
/// lowered. `Err` says why there is no mat-mat (empty when `requested` is 0: not asked for).
fn matmul_tokens(requested: u32, n: u32, k: u32, limit: u64) -> std::result::Result<u32, String> {
    if requested == 0 {
        return Err(String::new());
    }
    let fit = limit / (4 * n.max(k).max(1) as u64);
    let mut tokens = (requested as u64).min(fit) as u32;
    if tokens < requested && tokens >= MATMUL_TILE.1 {
        tokens -= tokens % MATMUL_TILE.1;
    }
    if tokens <= MATVEC_MAX_TOKENS {
        return Err(format!(
            "a [tokens, {}] f32 activation of more than {MATVEC_MAX_TOKENS} tokens exceeds the \
             {limit}-byte binding limit",
            n.max(k)
        ));
    }
    Ok(tokens)
}

/// Seconds per call of `encode`, which records one round of `per_round` calls (its argument is
/// the round index), and how it was timed. One untimed warm-up round runs first.
async fn measure(
    ctx: &GpuContext,
    rounds: u32,
    per_round: u32,
    encode: impl Fn(&mut wgpu::ComputePass<'_>, u32),
) -> Result<(f64, &'static str)> {
    ctx.run(|pass| encode(pass, 0)).await?;
    let per_round = per_round.max(1) as f64;
    if ctx.caps.timestamps {
        let round_secs = timestamped_rounds(ctx, rounds, &encode).await?;
        let secs = median(round_secs) / per_round;
        if secs.is_finite() && secs > 0.0 {
            return Ok((secs, GPU_TIMESTAMPS));
        }
        // Some drivers offer the feature but write zeros: fall back to the wall clock.
    }
    let mut encoder = ctx
        .device
        .create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("bench.rounds"),
        });
    {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("bench.rounds"),
            timestamp_writes: None,
        });
        for r in 0..rounds {
            encode(&mut pass, r);
        }
    }
    let commands = encoder.finish();
    let started = web_time::Instant::now();
    ctx.submit([commands]);
    ctx.wait().await?;
    let secs = started.elapsed().as_secs_f64() / (rounds as f64 * per_round);
    Ok((secs.max(1e-12), WALL_CLOCK))
}

/// GPU seconds of each round, each recorded as its own compute pass with begin/end timestamps.
async fn timestamped_rounds(
    ctx: &GpuContext,
    rounds: u32,
    encode: &impl Fn(&mut wgpu::ComputePass<'_>, u32),
) -> Result<Vec<f64>> {
    let count = rounds * 2;
    let set = ctx.device.create_query_set(&wgpu::QuerySetDescriptor {
        label: Some("bench.timestamps"),
        ty: wgpu::QueryType::Timestamp,
        count,
    });
    // [rounds, 2] u64 ticks (begin, end)
    let resolve = ctx.create_buffer(&wgpu::BufferDescriptor {
        label: Some("bench.timestamps.resolve"),
        size: count as u64 * 8,
        usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    })?;
    let mut encoder = ctx
        .device
        .create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("bench.rounds"),
        });
    for r in 0..rounds {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("bench.round"),
            timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                query_set: &set,
                beginning_of_pass_write_index: Some(2 * r),
                end_of_pass_write_index: Some(2 * r + 1),
            }),
        });
        encode(&mut pass, r);
    }
    encoder.resolve_query_set(&set, 0..count, &resolve, 0);
    ctx.submit([encoder.finish()]);
    ctx.wait().await?;
    let ticks: Vec<u64> = ctx.read(&resolve, 0, count as usize).await?;
    let period_ns = ctx.queue.get_timestamp_period() as f64;
    Ok(ticks
        .chunks_exact(2)
        .map(|t| t[1].saturating_sub(t[0]) as f64 * period_ns * 1e-9)
        .collect())
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// Uploads an `[n, k]` matrix of `ty` filled with random valid blocks, generated and written a
/// chunk at a time (the largest, E4B's F16 LM head, is 1.3 GB).
async fn upload_random(
    ctx: &GpuContext,
    name: &str,
    ty: GgmlType,
    k: u32,
    n: u32,
    seed: u64,
) -> Result<QuantMatrix> {
    let mut up = MatrixUpload::new(ctx, name, ty, k, n)?;
    let rows_per_chunk = up.chunk_rows(CHUNK_BYTES).max(1);
    let blocks_per_row = (k as u64 / ty.block_elems()) as usize;
    let (mut row, mut unflushed) = (0u32, 0u64);
    while row < n {
        let rows = rows_per_chunk.min(n - row);
        let bytes = synthetic_blocks(ty, rows as usize * blocks_per_row, seed ^ row as u64);
        up.write_rows(ctx, row, &bytes)?;
        row += rows;
        unflushed += bytes.len() as u64;
        if unflushed >= FLUSH_BYTES {
            ctx.submit([]);
            ctx.wait().await?;
            unflushed = 0;
        }
    }
    let m = up.finish()?;
    ctx.submit([]);
    ctx.wait().await?;
    Ok(m)
}

/// `first` and `copies - 1` GPU-side copies of it (same bytes, distinct memory).
async fn replicate(ctx: &GpuContext, first: QuantMatrix, copies: u32) -> Result<Vec<QuantMatrix>> {
    let mut out = Vec::with_capacity(copies as usize);
    for c in 1..copies {
        let mut encoder = ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("bench.replicate"),
            });
        let mut parts = Vec::with_capacity(first.parts.len());
        for p in &first.parts {
            let size = p.buffer.size();
            // [words] u32, the same planes as the original part
            let buffer = ctx.storage(&format!("{}#{c}", first.name), size)?;
            encoder.copy_buffer_to_buffer(&p.buffer, 0, &buffer, 0, size);
            parts.push(QuantPart {
                buffer,
                row0: p.row0,
                rows: p.rows,
                hbase: p.hbase,
                sbase: p.sbase,
                words: p.words,
            });
        }
        ctx.submit([encoder.finish()]);
        out.push(QuantMatrix {
            name: format!("{}#{c}", first.name),
            layout: first.layout,
            k: first.k,
            n: first.n,
            parts,
        });
    }
    ctx.wait().await?;
    out.insert(0, first);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_cover_every_model() {
        let s = shapes();
        assert_eq!(s.len(), 24);
        let head = s.iter().find(|s| s.name == "gemma4-e4b lm_head").unwrap();
        assert_eq!((head.rows, head.k), (262_144, 2560));
        let e2b = s.iter().find(|s| s.name == "gemma4-e2b ffn_gate").unwrap();
        assert_eq!((e2b.rows, e2b.k), (6144, 1536));
    }

    #[test]
    fn attention_shapes_are_e2b_decode() {
        let s = attention_shapes();
        assert_eq!(s.len(), 6);
        let full = s
            .iter()
            .find(|s| s.name == "gemma4-e2b attention full ctx1024")
            .unwrap();
        assert_eq!(
            (full.n_q_heads, full.n_kv_heads, full.head_dim, full.window),
            (8, 1, 512, 0)
        );
        let sliding = s
            .iter()
            .find(|s| s.name == "gemma4-e2b attention sliding ctx4096")
            .unwrap();
        assert_eq!((sliding.head_dim, sliding.window), (256, 512));
    }

    #[test]
    fn matmul_tokens_fit_one_binding() {
        let mib = 1u64 << 20;
        assert_eq!(matmul_tokens(512, 1024, 640, 128 * mib), Ok(512));
        // E4B's LM head: 1 MiB of output per token.
        assert_eq!(matmul_tokens(512, 262_144, 2560, 256 * mib), Ok(256));
        assert_eq!(matmul_tokens(512, 262_144, 2560, 128 * mib), Ok(128));
        assert_eq!(matmul_tokens(512, 262_144, 2560, 100 * mib), Ok(96));
        assert_eq!(matmul_tokens(100, 1024, 640, 128 * mib), Ok(100));
        assert!(matmul_tokens(512, 262_144, 2560, 4 * mib).is_err());
        assert_eq!(matmul_tokens(0, 1024, 640, 128 * mib), Err(String::new()));
    }

    #[test]
    fn median_of_even_and_odd() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(Vec::new()), 0.0);
    }
}
