//! The Gemma forward pass on the GPU.
//!
//! Reads like llama2.c's `forward`: embed → per layer (norm → q/k/v → per-head norm + RoPE →
//! attention over the KV cache → output projection → post-norm + residual → norm → gated
//! GELU MLP → post-norm + residual) → final norm → tied LM head → top-k. Every op is built
//! once at load (pipelines, bind groups, parameter buffers); a step only writes the step
//! uniform, the token ids and the RoPE rows, then records every dispatch into **one compute
//! pass and one submit**. Only the top-k candidates come back to the CPU.
//!
//! Gemma 4 adds (GEMMA.md §2.4–2.5): per-layer inputs (a row of the per-layer-embedding table,
//! read from the mapped file on the CPU, plus a projection of the embedding), a PLE block and a
//! layer scalar at the end of every layer, and KV sharing: the last `shared_kv_layers` layers
//! compute no K/V and attend over the cache of the last earlier layer of their type. Those
//! layers write nothing another row needs, so a prompt runs them on its last token only: the
//! step's last row is moved to row 0 and they run as a one-token step (`step_tail`).

pub mod config;

pub use config::{Arch, LayerConfig, ModelConfig};

use std::collections::HashMap;
use std::sync::Arc;

use crate::gguf::{read_tensor_data, Gguf, RowSource, TensorInfo, TensorSource};
use crate::gpu::{GpuContext, Profile, Profiler, Recorder, StepParams};
use crate::kernels::attention::{
    kv_bytes_per_elem, Attention, AttentionIo, AttentionKernel, AttentionParams, KvStore, KvStoreIo,
};
use crate::kernels::embed::{Embed, EmbedIo};
use crate::kernels::gelu::{GeluMul, GeluMulIo};
use crate::kernels::head_prep::{HeadNorm, HeadOut, HeadPrep, HeadPrepConfig, HeadPrepIo};
use crate::kernels::logits::{LogitRows, Logits, LogitsConfig, LogitsIo, Sampling, MAX_K};
use crate::kernels::matmul::{Matmul, MatmulIo, MatmulOut, MatvecGeluMul, MatvecGeluMulIo};
use crate::kernels::norm::{NextNorm, NormOut, RmsNorm, RmsNormIo};
use crate::kernels::ple::{LastRowToFront, PleCombine, PleCombineIo, PleConfig};
use crate::quant::QuantMatrix;
use crate::rope::RopeTable;
use crate::{Error, Result};

/// Choices made when a model is loaded.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Tokens the KV cache holds (default: the model's context, at most 8192).
    pub context: Option<u32>,
    /// Prompt tokens processed per prefill step.
    pub prefill_chunk: u32,
    /// Candidates the GPU returns per token (the sampler's top-k ceiling).
    pub max_candidates: u32,
    /// Random access to the model file after loading: required by models whose per-layer
    /// embedding table stays off the GPU (Gemma 4), which read one row per token from it.
    pub rows: Option<Arc<dyn RowSource>>,
    /// Keep the KV cache in f32 instead of f16: twice its memory, no rounding of K and V
    /// (what the reference implementations compute; the tests use it for tight tolerances).
    pub kv_f32: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            context: None,
            prefill_chunk: 128,
            max_candidates: 64,
            rows: None,
            kv_f32: false,
        }
    }
}

/// Where a group of tensors lives and what it costs.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct TensorGroup {
    pub name: &'static str,
    pub tensors: u32,
    /// Bytes in the file.
    pub file_bytes: u64,
    /// Bytes on the GPU.
    pub gpu_bytes: u64,
    /// Bytes left in the file and read per token (never uploaded).
    pub mapped_bytes: u64,
}

/// GPU memory the model holds, by purpose.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct MemoryReport {
    /// Tensor bytes in the file (all tensors).
    pub file_tensor_bytes: u64,
    /// Weight bytes on the GPU (quantized matrices stay quantized).
    pub weights: u64,
    pub kv_cache: u64,
    pub activations: u64,
    /// Largest single GPU buffer.
    pub largest_buffer: u64,
    /// Tensor bytes that stay in the file and are read a row per token (Gemma 4's per-layer
    /// embedding table): address space of the mapped file, not GPU memory.
    pub mapped: u64,
    /// Every tensor of the file by group, with where it went.
    pub groups: Vec<TensorGroup>,
}

impl MemoryReport {
    /// GPU bytes in all: weights, KV cache and activations.
    pub fn total(&self) -> u64 {
        self.weights + self.kv_cache + self.activations
    }

    fn group(&mut self, name: &'static str) -> &mut TensorGroup {
        let i = match self.groups.iter().position(|g| g.name == name) {
            Some(i) => i,
            None => {
                self.groups.push(TensorGroup {
                    name,
                    ..Default::default()
                });
                self.groups.len() - 1
            }
        };
        &mut self.groups[i]
    }
}

/// The group a tensor is reported under.
fn tensor_group(name: &str) -> &'static str {
    let base = name.strip_suffix(".weight").unwrap_or(name);
    let leaf = base.rsplit('.').next().unwrap_or(base);
    match leaf {
        "token_embd" => "token embedding / LM head",
        "per_layer_token_embd" => "per-layer embedding table",
        "per_layer_model_proj" | "per_layer_proj_norm" | "inp_gate" | "proj" | "post_norm" => {
            "per-layer inputs"
        }
        "attn_q" | "attn_k" | "attn_v" | "attn_output" => "attention",
        "ffn_gate" | "ffn_up" | "ffn_down" => "MLP",
        _ => "norms and scalars",
    }
}

/// The next-token candidates of one position: ids and logits, best first, plus the
/// log-sum-exp of the whole row (so probabilities are exact without the full row).
pub use crate::kernels::logits::TopK as Candidates;

/// A weight tensor as uploaded.
enum Upload {
    Matrix(QuantMatrix),
    Vector(wgpu::Buffer),
}

/// Where a tensor the model uses lives once it is loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Placement {
    /// Uploaded to the GPU.
    Gpu,
    /// Read into host memory at load (RoPE factors, layer scalars).
    Host,
    /// Left in the file, read a row per token (Gemma 4's per-layer-embedding table).
    Mapped,
}

/// The tensors a model uses: expected `ne` shape and placement. Tensors of the file that are
/// not listed (the K/V projections of KV-shared layers) are never read.
type TensorPlan = HashMap<String, (Vec<u64>, Placement)>;

/// Gemma 4 per-layer-input buffers, allocated once for `chunk` rows.
struct PleBuffers {
    tok: wgpu::Buffer, // [chunk, L·P] f32 table rows, written by the CPU each step
    ctx: wgpu::Buffer, // [chunk, L·P] f32 W_plm·x
    out: wgpu::Buffer, // [chunk, L·P] f32 combined per-layer inputs
}

/// Activation buffers, allocated once for `chunk` rows (llama2.c's `RunState`).
struct Activations {
    step: wgpu::Buffer,     // uniform StepParams
    step_one: wgpu::Buffer, // uniform StepParams {1, 0}: ops over one row (LM head)
    /// Uniform StepParams of the KV-shared layers and the head (models with KV sharing only):
    /// `{1, last position}` when a prompt runs them on its last token, else equal to `step`.
    step_tail: Option<wgpu::Buffer>,
    tokens: wgpu::Buffer,       // [chunk] u32
    h: wgpu::Buffer,            // [chunk, H] f32 residual stream
    xn: wgpu::Buffer,           // [chunk, H] f32 normed input of a block
    q: wgpu::Buffer,            // [chunk, nq·d] f32 projection
    k: wgpu::Buffer,            // [chunk, nkv·d] f32
    v: wgpu::Buffer,            // [chunk, nkv·d] f32
    qp: wgpu::Buffer,           // [chunk, nq, d] f32 normed + RoPE'd queries
    k_new: wgpu::Buffer,        // [chunk, nkv, d] f16 (packed u32) or f32 staging keys
    v_new: wgpu::Buffer,        // [chunk, nkv, d] f16 (packed u32) or f32 staging values
    attn: wgpu::Buffer,         // [chunk, nq·d] f32 attention output
    o: wgpu::Buffer,            // [chunk, H] f32 block output before its post-norm
    gate: wgpu::Buffer,         // [chunk, I] f32
    up: wgpu::Buffer,           // [chunk, I] f32
    act: wgpu::Buffer,          // [chunk, I] f32 gelu(gate)·up
    last: wgpu::Buffer,         // [1, H] f32 final-normed last row
    logits: wgpu::Buffer,       // [1, V] f32
    penalty_ids: wgpu::Buffer,  // [max_penalty] u32 recent tokens for the repetition penalty
    attn_scratch: wgpu::Buffer, // split-key partials, shared by every layer's attention
    ropes: Vec<wgpu::Buffer>,   // per RoPE table: [chunk, d/2, 2] f32 (cos, sin)
    /// Per RoPE table, the rows the KV-shared layers read (see `step_tail`).
    ropes_tail: Vec<wgpu::Buffer>,
    ple: Option<PleBuffers>,
}

impl Activations {
    /// The uniform the KV-shared layers and the head bind.
    fn tail_step(&self) -> &wgpu::Buffer {
        self.step_tail.as_ref().unwrap_or(&self.step)
    }
}

/// K/V projections and the cache store of a layer that owns a KV cache.
struct KvOps {
    k: Matmul,
    v: Matmul,
    k_prep: HeadPrep,
    v_prep: HeadPrep,
    store: KvStore,
}

/// Gemma 4's per-layer-input block: `h = (h + rms(W_proj·(gelu(W_gate·h) ⊙ ple_l))·w)·s`.
struct PleOps {
    gate: Matmul,
    gelu: GeluMul,
    /// `gate` and `gelu` in one dispatch, for decode-sized steps.
    gate_gelu: MatvecGeluMul,
    proj: Matmul,
    post_norm: RmsNorm,
}

struct LayerOps {
    /// `None` when the previous layer's last post-norm computes this norm too.
    attn_norm: Option<RmsNorm>,
    q: Matmul,
    q_prep: HeadPrep,
    /// `None` on KV-shared layers.
    kv: Option<KvOps>,
    attention: Attention,
    o: Matmul,
    /// The post-attention norm and residual add, fused with the FFN's input norm.
    post_attn: RmsNorm,
    gate: Matmul,
    up: Matmul,
    gelu: GeluMul,
    /// `gate` and `gelu` in one dispatch (after `up`), for decode-sized steps.
    gate_gelu: MatvecGeluMul,
    down: Matmul,
    post_ffw: RmsNorm,
    ple: Option<PleOps>,
}

impl LayerOps {
    /// Records the layer's dispatches in order; runs every step for every layer, so it
    /// allocates nothing.
    fn encode(&self, rec: &mut Recorder<'_, '_>, step: &StepParams) {
        if let Some(n) = &self.attn_norm {
            rec.op("attn_norm", n, step);
        }
        rec.op("attn_q", &self.q, step);
        if let Some(kv) = &self.kv {
            rec.op("attn_k", &kv.k, step);
            rec.op("attn_v", &kv.v, step);
        }
        rec.op("q_norm_rope", &self.q_prep, step);
        if let Some(kv) = &self.kv {
            rec.op("k_norm_rope", &kv.k_prep, step);
            rec.op("v_norm", &kv.v_prep, step);
            // Attention reads every key from the cache, this step's included.
            rec.op("kv_store", &kv.store, step);
        }
        rec.op("attention", &self.attention, step);
        rec.op("attn_output", &self.o, step);
        rec.op("post_attn_norm+ffn_norm", &self.post_attn, step);
        let fused = MatvecGeluMul::covers(step.n_tokens);
        if fused {
            rec.op("ffn_up", &self.up, step);
            rec.op("ffn_gate_gelu_mul", &self.gate_gelu, step);
        } else {
            rec.op("ffn_gate", &self.gate, step);
            rec.op("ffn_up", &self.up, step);
            rec.op("gelu_mul", &self.gelu, step);
        }
        rec.op("ffn_down", &self.down, step);
        rec.op("post_ffw_norm", &self.post_ffw, step);
        if let Some(p) = &self.ple {
            if fused {
                rec.op("ple_gate_gelu_mul", &p.gate_gelu, step);
            } else {
                rec.op("ple_gate", &p.gate, step);
                rec.op("ple_gelu_mul", &p.gelu, step);
            }
            rec.op("ple_proj", &p.proj, step);
            rec.op("ple_post_norm", &p.post_norm, step);
        }
    }
}

/// Gemma 4's per-layer inputs: the table rows come from the file, the rest from the GPU.
struct PleInput {
    /// `W_plm·x` into `PleBuffers::ctx`.
    proj: Matmul,
    combine: PleCombine,
    rows: Arc<dyn RowSource>,
    /// `per_layer_token_embd`: where its rows are and how they are stored.
    table: TensorInfo,
    /// `L·P` values per row.
    width: usize,
    /// Reused per step: one row's bytes, and `[T, L·P]` f32 rows.
    row_bytes: Vec<u8>,
    values: Vec<f32>,
}

/// Final norm + LM head + top-k over a set of rows.
struct Head {
    norm: RmsNorm,
    lm_head: Matmul,
    logits: Logits,
    /// `true`: one row (the step's last); `false`: every row of the step.
    last_row_only: bool,
    out: wgpu::Buffer,
    rows: u32,
}

/// Most rows one `score` step runs through the LM head (its logits are `[rows, V]` f32).
const SCORE_ROWS: u32 = 64;

/// Most recent tokens the repetition penalty looks at.
pub const MAX_PENALTY_TOKENS: u32 = 256;

/// What a step computes after the layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StepHead {
    /// An inner prefill chunk: the layers that fill KV caches, nothing else.
    None,
    /// Next-token candidates after the step's last token.
    Generate,
    /// Candidates after every token of the step (`score`).
    Score,
}

/// A loaded model: weights on the GPU, the KV cache, and every op of the forward pass.
pub struct Model {
    pub cfg: ModelConfig,
    ctx: Arc<GpuContext>,
    /// Tokens the KV cache holds.
    pub context: u32,
    chunk: u32,
    max_candidates: u32,
    /// Tokens already in the KV cache (the next token's position).
    pos: u32,
    acts: Activations,
    embed: Embed,
    ple: Option<PleInput>,
    layers: Vec<LayerOps>,
    /// Moves the last row of `h` and of the per-layer inputs to row 0 before the KV-shared
    /// layers run on a prompt's last token.
    to_front: Vec<LastRowToFront>,
    head: Head,
    score_head: Option<Head>,
    ropes: Vec<RopeTable>,
    uploads: HashMap<String, Upload>,
    memory: MemoryReport,
    rope_scratch: Vec<f32>,
    /// Where each step's top-k rows are copied for the CPU (reused: no per-token allocation).
    readback: wgpu::Buffer,
    /// Per-op GPU timestamps of every step while profiling (benchmarks).
    profiler: Option<Profiler>,
}

/// Checks a model file without touching the GPU: architecture, hyper-parameters, and that
/// every tensor the forward pass needs is present with the right shape and a supported type.
/// Returns the configuration.
pub fn check(gguf: &Gguf) -> Result<ModelConfig> {
    plan(gguf).map(|(cfg, _)| cfg)
}

/// The configuration and the tensors the model uses.
fn plan(gguf: &Gguf) -> Result<(ModelConfig, TensorPlan)> {
    let cfg = ModelConfig::from_gguf(gguf)?;
    let (h, v) = (cfg.hidden as u64, cfg.vocab as u64);
    let (n_layers, ple) = (cfg.n_layers as u64, cfg.ple_dim as u64);
    let mut wanted: TensorPlan = HashMap::new();
    let mut want = |name: String, shape: Vec<u64>, at: Placement| {
        wanted.insert(name, (shape, at));
    };
    want("token_embd.weight".into(), vec![h, v], Placement::Gpu);
    want("output_norm.weight".into(), vec![h], Placement::Gpu);
    if let Some(d) = cfg.layers.iter().find(|l| l.rope_freq_factors) {
        want(
            "rope_freqs.weight".into(),
            vec![d.head_dim as u64 / 2],
            Placement::Host,
        );
    }
    if ple > 0 {
        want(
            "per_layer_token_embd.weight".into(),
            vec![n_layers * ple, v],
            Placement::Mapped,
        );
        want(
            "per_layer_model_proj.weight".into(),
            vec![h, n_layers * ple],
            Placement::Gpu,
        );
        want(
            "per_layer_proj_norm.weight".into(),
            vec![ple],
            Placement::Gpu,
        );
    }
    for (l, lc) in cfg.layers.iter().enumerate() {
        let (d, nq, nkv, ff) = (
            lc.head_dim as u64,
            cfg.n_heads as u64,
            lc.n_kv_heads as u64,
            lc.ff_len as u64,
        );
        let mut w =
            |what: &str, shape: Vec<u64>| want(layer_tensor(l, what), shape, Placement::Gpu);
        w("attn_q", vec![h, nq * d]);
        w("attn_output", vec![nq * d, h]);
        w("ffn_gate", vec![h, ff]);
        w("ffn_up", vec![h, ff]);
        w("ffn_down", vec![ff, h]);
        for name in [
            "attn_norm",
            "post_attention_norm",
            "ffn_norm",
            "post_ffw_norm",
        ] {
            w(name, vec![h]);
        }
        w("attn_q_norm", vec![d]);
        if !lc.shares_kv(l) {
            w("attn_k", vec![h, nkv * d]);
            w("attn_v", vec![h, nkv * d]);
            w("attn_k_norm", vec![d]);
        }
        if ple > 0 {
            w("inp_gate", vec![h, ple]);
            w("proj", vec![ple, h]);
            w("post_norm", vec![h]);
        }
        // Every Gemma 4 layer scales its residual stream; llama.cpp's converter always writes it.
        if cfg.arch == Arch::Gemma4 {
            want(
                layer_tensor(l, "layer_output_scale"),
                vec![1],
                Placement::Host,
            );
        }
    }
    let mut names: Vec<&String> = wanted.keys().collect();
    names.sort();
    for name in names {
        let info = gguf.tensor(name)?;
        let (expected, _) = &wanted[name];
        if &info.dims != expected {
            return Err(Error::Shape {
                tensor: info.name.clone(),
                expected: format!("{expected:?}"),
                found: format!("{:?}", info.dims),
            });
        }
        info.check_supported()?;
    }
    Ok((cfg, wanted))
}

/// KV cache length and prefill chunk for `opts`. A context the model was not trained for is
/// refused rather than clamped, so the caller learns the real limit.
fn sizes(cfg: &ModelConfig, opts: &LoadOptions) -> Result<(u32, u32)> {
    let max = cfg.context_length;
    let context = match opts.context {
        None => max.min(8192),
        Some(0) => {
            return Err(Error::InvalidArgument(
                "the context length must be at least 1 token".into(),
            ))
        }
        Some(c) if c > max => {
            return Err(Error::InvalidArgument(format!(
                "a context of {c} tokens is larger than the model's maximum of {max} \
                 ({}.context_length)",
                cfg.arch.name()
            )))
        }
        Some(c) => c,
    };
    Ok((context, opts.prefill_chunk.clamp(1, 1024).min(context)))
}

/// What loading a model will take, known from its header alone.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Preflight {
    pub architecture: String,
    pub layers: u32,
    pub vocab: u32,
    /// KV cache length the load will use.
    pub context_length: u32,
    /// Tensor bytes in the file.
    pub file_bytes: u64,
    /// Weight bytes the GPU will hold.
    pub weights: u64,
    pub kv_cache: u64,
    /// Largest single buffer among weights and KV cache.
    pub largest_buffer: u64,
    /// Tensor bytes left in the file and read a row per token.
    pub mapped: u64,
}

/// Checks, from the header only, that the model is supported and that every weight and KV
/// buffer fits the device's limits, and estimates what it will hold (activations, a few MiB,
/// are not counted). Run before downloading the weights, so that a model that cannot run fails
/// at once with the reason.
pub fn preflight(gguf: &Gguf, caps: &crate::gpu::Caps, opts: &LoadOptions) -> Result<Preflight> {
    let (cfg, wanted) = plan(gguf)?;
    let (context, chunk) = sizes(&cfg, opts)?;
    let limit = caps.max_binding.min(caps.max_buffer);
    let mut p = Preflight {
        architecture: gguf.architecture()?.to_string(),
        layers: cfg.n_layers,
        vocab: cfg.vocab,
        context_length: context,
        file_bytes: gguf.tensor_data_bytes(),
        ..Default::default()
    };
    for info in gguf.tensors_by_offset() {
        match wanted.get(&info.name).map(|(_, at)| *at) {
            Some(Placement::Gpu) if info.dims.len() > 1 => {
                let parts = crate::quant::part_sizes(
                    &info.name,
                    info.ty,
                    info.dims[0] as u32,
                    info.dims[1] as u32,
                    limit,
                )?;
                p.weights += parts.iter().sum::<u64>();
                p.largest_buffer = p.largest_buffer.max(parts.into_iter().max().unwrap_or(0));
            }
            Some(Placement::Gpu) => {
                let bytes = info.n_elements() * 4;
                caps.check_storage_size(&info.name, bytes)?;
                p.weights += bytes;
            }
            Some(Placement::Mapped) => p.mapped += info.n_bytes,
            Some(Placement::Host) | None => {}
        }
    }
    let elem = kv_bytes_per_elem(opts.kv_f32);
    for (l, lc) in cfg.layers.iter().enumerate() {
        if cfg.layers[l].kv_source != l {
            continue;
        }
        let cap = attention_params(&cfg, l, context, chunk, opts.kv_f32).cap as u64;
        let bytes = cap * (lc.n_kv_heads * lc.head_dim) as u64 * elem;
        caps.check_storage_size(&format!("the KV cache of layer {l} ({cap} tokens)"), bytes)?;
        p.kv_cache += 2 * bytes;
        p.largest_buffer = p.largest_buffer.max(bytes);
    }
    Ok(p)
}

/// GGUF bytes read per chunk while uploading a matrix: bounds the loader's memory (what a
/// browser tab holds while a model streams in) independently of the largest tensor.
const UPLOAD_CHUNK_BYTES: u64 = 4 << 20;

/// Streams one matrix from `src` to the GPU in row chunks; `progress(bytes)` after each chunk.
async fn upload_matrix<S: TensorSource>(
    ctx: &GpuContext,
    src: &mut S,
    info: &TensorInfo,
    progress: &mut impl FnMut(u64),
) -> Result<QuantMatrix> {
    let (k, n) = (info.dims[0] as u32, info.dims[1] as u32);
    let mut up = crate::quant::MatrixUpload::new(ctx, &info.name, info.ty, k, n)?;
    up.check_len(info.n_bytes)?;
    let rb = up.row_bytes();
    let step = up.chunk_rows(UPLOAD_CHUNK_BYTES);
    let mut buf = Vec::new();
    let mut row = 0u32;
    while row < n {
        let rows = step.min(n - row);
        buf.resize((rows as u64 * rb) as usize, 0);
        src.read_at(info.offset + row as u64 * rb, &mut buf).await?;
        up.write_rows(ctx, row, &buf)?;
        row += rows;
        progress(row as u64 * rb);
    }
    // Hand the staged writes to the GPU now, so staging memory never holds more than a tensor.
    ctx.queue.submit([]);
    up.finish()
}

/// GGUF name of a per-layer tensor.
fn layer_tensor(l: usize, what: &str) -> String {
    format!("blk.{l}.{what}.weight")
}

impl Model {
    /// Uploads the weights named by `gguf` from `src` (in file order, so a streaming source
    /// works) and builds every op. `progress(done, total)` is called after each tensor.
    pub async fn load<S: TensorSource>(
        ctx: Arc<GpuContext>,
        gguf: &Gguf,
        src: &mut S,
        opts: &LoadOptions,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<Model> {
        // Everything the header decides (shapes, types, every buffer against the device's
        // limits) is refused here, before the first byte is uploaded.
        preflight(gguf, &ctx.caps, opts)?;
        let (cfg, wanted) = plan(gguf)?;
        let (context, chunk) = sizes(&cfg, opts)?;
        let max_candidates = opts.max_candidates.clamp(1, 64);
        let rows = match (cfg.ple_dim > 0, &opts.rows) {
            (false, _) => None,
            (true, Some(r)) => Some(r.clone()),
            (true, None) => {
                return Err(Error::InvalidArgument(
                    "this model keeps its per-layer embedding table in the file: loading it needs random access to the file (LoadOptions::rows)".into(),
                ))
            }
        };

        let mut memory = MemoryReport {
            file_tensor_bytes: gguf.tensor_data_bytes(),
            ..Default::default()
        };
        let mut infos: Vec<&TensorInfo> = gguf.tensors_by_offset();
        infos.sort_by_key(|t| t.offset);
        let total: u64 = infos
            .iter()
            .filter(|t| {
                matches!(
                    wanted.get(&t.name),
                    Some((_, Placement::Gpu | Placement::Host))
                )
            })
            .map(|t| t.n_bytes)
            .sum();
        let mut done = 0;
        let mut uploads = HashMap::new();
        let mut host: HashMap<String, Vec<f32>> = HashMap::new();
        for info in infos {
            let group = tensor_group(&info.name);
            let placement = wanted.get(&info.name).map(|(_, p)| *p);
            {
                let g = memory.group(group);
                g.tensors += 1;
                g.file_bytes += info.n_bytes;
            }
            match placement {
                None => continue,
                Some(Placement::Mapped) => {
                    memory.group(group).mapped_bytes += info.n_bytes;
                    memory.mapped += info.n_bytes;
                    continue;
                }
                Some(_) => {}
            }
            if placement == Some(Placement::Gpu) && info.dims.len() > 1 {
                let m = upload_matrix(&ctx, src, info, &mut |bytes| progress(done + bytes, total))
                    .await?;
                memory.largest_buffer = memory.largest_buffer.max(m.largest_buffer_bytes());
                memory.weights += m.gpu_bytes();
                memory.group(group).gpu_bytes += m.gpu_bytes();
                uploads.insert(info.name.clone(), Upload::Matrix(m));
                done += info.n_bytes;
                progress(done, total);
                continue;
            }
            let bytes = read_tensor_data(src, info).await?;
            // Norm weights and scales: small, and one NaN or infinity among them turns every
            // logit into NaN, so they are checked (matrices are not scanned; a non-finite
            // logit is caught when the step's candidates are read back).
            let values = crate::quant::dequantize(info.ty, &bytes, info.n_elements() as usize)
                .map_err(|e| tensor_error(info, e))?;
            check_finite(info, &values)?;
            if placement == Some(Placement::Host) {
                host.insert(info.name.clone(), values);
            } else {
                let buffer = ctx.storage_init(&info.name, &values)?;
                memory.weights += buffer.size();
                memory.group(group).gpu_bytes += buffer.size();
                uploads.insert(info.name.clone(), Upload::Vector(buffer));
            }
            done += info.n_bytes;
            progress(done, total);
        }
        let ple_table = match rows {
            Some(r) => Some((r, gguf.tensor("per_layer_token_embd.weight")?.clone())),
            None => None,
        };

        let mut model = Self::build(
            ctx,
            cfg,
            context,
            chunk,
            max_candidates,
            opts.kv_f32,
            uploads,
            &host,
            ple_table,
            memory,
        )?;
        model.memory.largest_buffer = model.memory.largest_buffer.max(model.largest_activation());
        // The uploads have reached the GPU and any error they raised that nothing caught (an
        // allocation the device refused, reported late in a browser) fails the load, not the
        // first token; on `Err` every buffer made so far is dropped with `model`.
        model.ctx.wait().await?;
        Ok(model)
    }

    #[allow(clippy::too_many_arguments)]
    fn build(
        ctx: Arc<GpuContext>,
        cfg: ModelConfig,
        context: u32,
        chunk: u32,
        max_candidates: u32,
        kv_f32: bool,
        uploads: HashMap<String, Upload>,
        host: &HashMap<String, Vec<f32>>,
        ple_table: Option<(Arc<dyn RowSource>, TensorInfo)>,
        mut memory: MemoryReport,
    ) -> Result<Model> {
        let c = chunk as u64;
        let f = 4u64;
        let hidden = cfg.hidden as u64;
        let nq = cfg.n_heads as u64;
        let d_max = cfg.layers.iter().map(|l| l.head_dim).max().unwrap_or(0) as u64;
        let kv_max = cfg
            .layers
            .iter()
            .map(|l| (l.n_kv_heads * l.head_dim) as u64)
            .max()
            .unwrap_or(0);
        let ff_max = cfg.layers.iter().map(|l| l.ff_len).max().unwrap_or(0) as u64;
        let ple_width = cfg.n_layers as u64 * cfg.ple_dim as u64;
        let kv_elem = kv_bytes_per_elem(kv_f32);
        let kv_out = if kv_f32 {
            HeadOut::F32
        } else {
            HeadOut::F16Packed
        };
        let ctx_ref = &*ctx;
        let mut act_bytes = 0u64;
        let mut buf = |label: &str, bytes: u64| -> Result<wgpu::Buffer> {
            act_bytes += bytes;
            ctx_ref.storage(label, bytes)
        };

        // One RoPE table per distinct (θ, scale, head size, factors).
        let mut ropes: Vec<RopeTable> = Vec::new();
        let mut rope_of_layer = Vec::new();
        for lc in &cfg.layers {
            let d = lc.head_dim as usize;
            let mut table = if lc.rope_freq_factors {
                let factors = host
                    .get("rope_freqs.weight")
                    .ok_or_else(|| Error::MissingTensor("rope_freqs.weight".into()))?;
                RopeTable::with_freq_factors(lc.rope_theta, d, factors)
                    .map_err(|e| Error::Gguf(format!("tensor `rope_freqs.weight`: {e}")))?
            } else {
                RopeTable::new(lc.rope_theta, d)?
            };
            if lc.rope_scale != 1.0 {
                table = table.linear_scaled(lc.rope_scale);
            }
            let idx = match ropes.iter().position(|t| *t == table) {
                Some(i) => i,
                None => {
                    ropes.push(table);
                    ropes.len() - 1
                }
            };
            rope_of_layer.push(idx);
        }
        let uniform = |label: &str| {
            ctx.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: std::mem::size_of::<StepParams>() as u64,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        };
        let sharing = cfg.has_kv_sharing();
        let rope_bufs = |buf: &mut dyn FnMut(&str, u64) -> Result<wgpu::Buffer>| {
            ropes
                .iter()
                .map(|t| buf("rope", c * t.floats_per_token() as u64 * f))
                .collect::<Result<Vec<_>>>()
        };

        let acts = Activations {
            step: uniform("step")?,
            step_one: ctx.params_init("step_one", &StepParams::new(1, 0)),
            step_tail: sharing.then(|| uniform("step_tail")).transpose()?,
            tokens: buf("tokens", c * 4)?,
            h: buf("h", c * hidden * f)?,
            xn: buf("xn", c * hidden * f)?,
            q: buf("q", c * nq * d_max * f)?,
            k: buf("k", c * kv_max * f)?,
            v: buf("v", c * kv_max * f)?,
            qp: buf("qp", c * nq * d_max * f)?,
            k_new: buf("k_new", c * kv_max * kv_elem)?,
            v_new: buf("v_new", c * kv_max * kv_elem)?,
            attn: buf("attn", c * nq * d_max * f)?,
            o: buf("o", c * hidden * f)?,
            gate: buf("gate", c * ff_max * f)?,
            up: buf("up", c * ff_max * f)?,
            act: buf("act", c * ff_max * f)?,
            last: buf("last", hidden * f)?,
            logits: buf("logits", cfg.vocab as u64 * f)?,
            penalty_ids: buf("penalty_ids", MAX_PENALTY_TOKENS as u64 * 4)?,
            attn_scratch: buf(
                "attention scratch",
                (0..cfg.layers.len())
                    .map(|l| {
                        Attention::scratch_bytes(&attention_params(&cfg, l, context, chunk, kv_f32))
                    })
                    .max()
                    .unwrap_or(4),
            )?,
            ropes: rope_bufs(&mut buf)?,
            ropes_tail: if sharing {
                rope_bufs(&mut buf)?
            } else {
                Vec::new()
            },
            ple: if ple_width > 0 {
                Some(PleBuffers {
                    tok: buf("ple_tok", c * ple_width * f)?,
                    ctx: buf("ple_ctx", c * ple_width * f)?,
                    out: buf("ple", c * ple_width * f)?,
                })
            } else {
                None
            },
        };
        memory.activations = act_bytes;

        let matrix = |name: &str| -> Result<&QuantMatrix> {
            match uploads.get(name) {
                Some(Upload::Matrix(m)) => Ok(m),
                _ => Err(Error::MissingTensor(name.to_string())),
            }
        };
        let vector = |name: &str| -> Result<wgpu::BindingResource<'_>> {
            match uploads.get(name) {
                Some(Upload::Vector(b)) => Ok(b.as_entire_binding()),
                _ => Err(Error::MissingTensor(name.to_string())),
            }
        };
        let a = &acts;
        let eps = cfg.eps;

        let embed = Embed::new(
            &ctx,
            matrix("token_embd.weight")?,
            EmbedIo {
                tokens: a.tokens.as_entire_binding(),
                out: a.h.as_entire_binding(),
                step: a.step.as_entire_binding(),
            },
            cfg.embed_scale,
        )?;
        let ple = match (&a.ple, ple_table) {
            (Some(pb), Some((rows, table))) => Some(PleInput {
                proj: Matmul::new(
                    &ctx,
                    matrix("per_layer_model_proj.weight")?,
                    MatmulIo {
                        x: a.h.as_entire_binding(),
                        y: pb.ctx.as_entire_binding(),
                        step: a.step.as_entire_binding(),
                    },
                    MatmulOut::Store,
                )?,
                combine: PleCombine::new(
                    &ctx,
                    PleCombineIo {
                        ctx: pb.ctx.as_entire_binding(),
                        tok: pb.tok.as_entire_binding(),
                        weight: vector("per_layer_proj_norm.weight")?,
                        out: pb.out.as_entire_binding(),
                        step: a.step.as_entire_binding(),
                    },
                    &PleConfig::gemma4(cfg.hidden, cfg.ple_dim, cfg.n_layers, eps),
                )?,
                rows,
                width: ple_width as usize,
                row_bytes: vec![0; table.row_bytes() as usize],
                table,
                values: Vec::new(),
            }),
            _ => None,
        };

        let mut layers = Vec::with_capacity(cfg.layers.len());
        let mut kv_total = 0u64;
        // Each KV-owning layer's cache, for the layers that share it.
        let mut caches: Vec<Option<(wgpu::Buffer, wgpu::Buffer)>> = Vec::new();
        for (l, lc) in cfg.layers.iter().enumerate() {
            let t = |w: &str| layer_tensor(l, w);
            let d = lc.head_dim;
            let shared = lc.shares_kv(l);
            // KV-shared layers run as the tail of the step (see `step_tail`).
            let (step_buf, rope) = if shared {
                (a.tail_step(), &a.ropes_tail[rope_of_layer[l]])
            } else {
                (&a.step, &a.ropes[rope_of_layer[l]])
            };
            let step = || step_buf.as_entire_binding();
            let norm =
                |x: &wgpu::Buffer, w: &str, y: &wgpu::Buffer, out: NormOut| -> Result<RmsNorm> {
                    RmsNorm::new(
                        &ctx,
                        RmsNormIo {
                            x: x.as_entire_binding(),
                            weight: Some(vector(&t(w))?),
                            y: y.as_entire_binding(),
                            step: step(),
                        },
                        cfg.hidden,
                        1,
                        eps,
                        out,
                    )
                };
            // A post-norm that also computes the next block's input norm into `xn`: the
            // tensor `next` (a full GGUF name) weights it.
            let norm_then = |x: &wgpu::Buffer, w: &str, out: NormOut, next: &str| {
                RmsNorm::with_next_norm(
                    &ctx,
                    RmsNormIo {
                        x: x.as_entire_binding(),
                        weight: Some(vector(&t(w))?),
                        y: a.h.as_entire_binding(),
                        step: step(),
                    },
                    NextNorm {
                        weight: vector(next)?,
                        y: a.xn.as_entire_binding(),
                    },
                    cfg.hidden,
                    eps,
                    out,
                )
            };
            // The layer's last post-norm computes the next layer's input norm, except before
            // the first KV-shared layer: that one runs on a different step (the prompt's last
            // row, moved to the front in between), so it norms its own input.
            let fused_into = |l: usize| {
                l + 1 < cfg.layers.len() && !(sharing && l + 1 == cfg.first_shared as usize)
            };
            let last_norm = |x: &wgpu::Buffer, w: &str, out: NormOut| -> Result<RmsNorm> {
                if fused_into(l) {
                    norm_then(x, w, out, &layer_tensor(l + 1, "attn_norm"))
                } else {
                    norm(x, w, &a.h, out)
                }
            };
            let mm = |w: &str, x: &wgpu::Buffer, y: &wgpu::Buffer| -> Result<Matmul> {
                Matmul::new(
                    &ctx,
                    matrix(&t(w))?,
                    MatmulIo {
                        x: x.as_entire_binding(),
                        y: y.as_entire_binding(),
                        step: step(),
                    },
                    MatmulOut::Store,
                )
            };
            let prep = |input: &wgpu::Buffer,
                        weight: Option<&str>,
                        out: &wgpu::Buffer,
                        cfg: HeadPrepConfig|
             -> Result<HeadPrep> {
                HeadPrep::new(
                    &ctx,
                    HeadPrepIo {
                        x: input.as_entire_binding(),
                        weight: weight.map(|w| vector(&t(w))).transpose()?,
                        rope: cfg.rope.then(|| rope.as_entire_binding()),
                        y: out.as_entire_binding(),
                        step: step(),
                    },
                    &cfg,
                )
            };

            let params = attention_params(&cfg, l, context, chunk, kv_f32);
            let (kv, cache) = if shared {
                (None, None)
            } else {
                let cache_bytes = params.cap as u64 * (lc.n_kv_heads * d) as u64 * kv_elem;
                let k_cache = ctx.storage(&format!("blk.{l}.k_cache"), cache_bytes)?;
                let v_cache = ctx.storage(&format!("blk.{l}.v_cache"), cache_bytes)?;
                kv_total += 2 * cache_bytes;
                memory.largest_buffer = memory.largest_buffer.max(cache_bytes);
                let store = KvStore::new(
                    &ctx,
                    KvStoreIo {
                        k_new: a.k_new.as_entire_binding(),
                        v_new: a.v_new.as_entire_binding(),
                        k_cache: k_cache.as_entire_binding(),
                        v_cache: v_cache.as_entire_binding(),
                        step: step(),
                    },
                    &params,
                )?;
                // Gemma 3 keeps V as projected; Gemma 4 normalises it with no weight.
                let v_norm = match cfg.arch {
                    Arch::Gemma3 => HeadNorm::None,
                    Arch::Gemma4 => HeadNorm::Weightless,
                };
                let kv = KvOps {
                    k: mm("attn_k", &a.xn, &a.k)?,
                    v: mm("attn_v", &a.xn, &a.v)?,
                    k_prep: prep(
                        &a.k,
                        Some("attn_k_norm"),
                        &a.k_new,
                        HeadPrepConfig::qk(d, lc.n_kv_heads, eps, 1.0, kv_out),
                    )?,
                    v_prep: prep(
                        &a.v,
                        None,
                        &a.v_new,
                        HeadPrepConfig::v(d, lc.n_kv_heads, eps, v_norm, kv_out),
                    )?,
                    store,
                };
                (Some(kv), Some((k_cache, v_cache)))
            };
            caches.push(cache);
            let (k_cache, v_cache) = caches[lc.kv_source].as_ref().ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "layer {l} reads the KV cache of layer {}, which has none",
                    lc.kv_source
                ))
            })?;
            let attention = Attention::new(
                &ctx,
                AttentionIo {
                    q: a.qp.as_entire_binding(),
                    k_cache: k_cache.as_entire_binding(),
                    v_cache: v_cache.as_entire_binding(),
                    out: a.attn.as_entire_binding(),
                    step: step(),
                    scratch: Some(a.attn_scratch.as_entire_binding()),
                },
                params,
            )?;
            // Gemma 4 scales the whole residual stream at the end of every layer.
            let scale_name = t("layer_output_scale");
            let layer_scale = match host.get(&scale_name) {
                Some(v) if v.len() == 1 && v[0].is_finite() => v[0],
                Some(v) => {
                    return Err(Error::Gguf(format!(
                        "tensor `{scale_name}`: expected one finite value, found {v:?}"
                    )))
                }
                None => 1.0,
            };
            let last_add = if layer_scale == 1.0 {
                NormOut::Add
            } else {
                NormOut::AddScaled(layer_scale)
            };
            let ple_ops = match &a.ple {
                None => None,
                Some(pb) => Some(PleOps {
                    gate: mm("inp_gate", &a.h, &a.gate)?,
                    gate_gelu: MatvecGeluMul::new(
                        &ctx,
                        matrix(&t("inp_gate"))?,
                        MatvecGeluMulIo {
                            x: a.h.as_entire_binding(),
                            z: pb.out.as_entire_binding(),
                            y: a.act.as_entire_binding(),
                            step: step(),
                        },
                        ple_width as u32,
                        l as u32 * cfg.ple_dim,
                    )?,
                    gelu: GeluMul::with_up_rows(
                        &ctx,
                        GeluMulIo {
                            gate: a.gate.as_entire_binding(),
                            up: pb.out.as_entire_binding(),
                            out: a.act.as_entire_binding(),
                            step: step(),
                        },
                        cfg.ple_dim,
                        cfg.ple_dim,
                        ple_width as u32,
                        l as u32 * cfg.ple_dim,
                    )?,
                    proj: mm("proj", &a.act, &a.o)?,
                    post_norm: last_norm(&a.o, "post_norm", last_add)?,
                }),
            };
            layers.push(LayerOps {
                attn_norm: if l > 0 && fused_into(l - 1) {
                    None
                } else {
                    Some(norm(&a.h, "attn_norm", &a.xn, NormOut::Store)?)
                },
                q: mm("attn_q", &a.xn, &a.q)?,
                q_prep: prep(
                    &a.q,
                    Some("attn_q_norm"),
                    &a.qp,
                    HeadPrepConfig::qk(d, cfg.n_heads, eps, 1.0, HeadOut::F32),
                )?,
                kv,
                attention,
                o: mm("attn_output", &a.attn, &a.o)?,
                post_attn: norm_then(&a.o, "post_attention_norm", NormOut::Add, &t("ffn_norm"))?,
                gate: mm("ffn_gate", &a.xn, &a.gate)?,
                up: mm("ffn_up", &a.xn, &a.up)?,
                gate_gelu: MatvecGeluMul::new(
                    &ctx,
                    matrix(&t("ffn_gate"))?,
                    MatvecGeluMulIo {
                        x: a.xn.as_entire_binding(),
                        z: a.up.as_entire_binding(),
                        y: a.act.as_entire_binding(),
                        step: step(),
                    },
                    lc.ff_len,
                    0,
                )?,
                gelu: GeluMul::new(
                    &ctx,
                    GeluMulIo {
                        gate: a.gate.as_entire_binding(),
                        up: a.up.as_entire_binding(),
                        out: a.act.as_entire_binding(),
                        step: step(),
                    },
                    lc.ff_len,
                    None,
                )?,
                down: mm("ffn_down", &a.act, &a.o)?,
                post_ffw: if ple_ops.is_some() {
                    norm(&a.o, "post_ffw_norm", &a.h, NormOut::Add)?
                } else {
                    last_norm(&a.o, "post_ffw_norm", last_add)?
                },
                ple: ple_ops,
            });
        }
        memory.kv_cache = kv_total;

        let mut to_front = Vec::new();
        if sharing {
            to_front.push(LastRowToFront::new(
                &ctx,
                a.h.as_entire_binding(),
                a.step.as_entire_binding(),
                cfg.hidden,
            )?);
            if let Some(pb) = &a.ple {
                to_front.push(LastRowToFront::new(
                    &ctx,
                    pb.out.as_entire_binding(),
                    a.step.as_entire_binding(),
                    ple_width as u32,
                )?);
            }
        }

        let head = Self::build_head(&ctx, &cfg, &acts, &uploads, max_candidates, None)?;
        // Top-k rows of the largest score step, mapped and unmapped every step.
        let readback = ctx.create_buffer(&wgpu::BufferDescriptor {
            label: Some("topk readback"),
            size: Logits::out_bytes(SCORE_ROWS, MAX_K),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })?;
        let model = Model {
            cfg,
            ctx,
            context,
            chunk,
            max_candidates,
            pos: 0,
            acts,
            embed,
            ple,
            layers,
            to_front,
            head,
            score_head: None,
            profiler: None,
            readback,
            ropes,
            uploads,
            memory,
            rope_scratch: Vec::new(),
        };
        Ok(model)
    }

    /// The final norm, LM head and top-k. `score_rows: None` builds the generation head (the
    /// step's last row only); `Some(r)` a head over up to `r` rows for `score`. It runs after
    /// the KV-shared layers, so it binds their step uniform.
    fn build_head(
        ctx: &GpuContext,
        cfg: &ModelConfig,
        a: &Activations,
        uploads: &HashMap<String, Upload>,
        k: u32,
        score_rows: Option<u32>,
    ) -> Result<Head> {
        let embd = match uploads.get("token_embd.weight") {
            Some(Upload::Matrix(m)) => m,
            _ => return Err(Error::MissingTensor("token_embd.weight".into())),
        };
        let norm_w = match uploads.get("output_norm.weight") {
            Some(Upload::Vector(b)) => b,
            _ => return Err(Error::MissingTensor("output_norm.weight".into())),
        };
        let step = a.tail_step();
        let rows = score_rows.unwrap_or(1);
        let (normed, logits, row_step) = match score_rows {
            None => (&a.last, a.logits.clone(), a.step_one.as_entire_binding()),
            Some(r) => (
                &a.xn,
                ctx.storage("score_logits", r as u64 * cfg.vocab as u64 * 4)?,
                step.as_entire_binding(),
            ),
        };
        let norm = RmsNorm::new(
            ctx,
            RmsNormIo {
                x: a.h.as_entire_binding(),
                weight: Some(norm_w.as_entire_binding()),
                y: normed.as_entire_binding(),
                step: step.as_entire_binding(),
            },
            cfg.hidden,
            1,
            cfg.eps,
            if score_rows.is_some() {
                NormOut::Store
            } else {
                NormOut::LastRow
            },
        )?;
        let lm_head = Matmul::new(
            ctx,
            embd,
            MatmulIo {
                x: normed.as_entire_binding(),
                y: logits.as_entire_binding(),
                step: row_step.clone(),
            },
            MatmulOut::Store,
        )?;
        let out = ctx.storage("topk", Logits::out_bytes(rows, MAX_K))?;
        let mut logits_op = Logits::new(
            ctx,
            LogitsIo {
                logits: logits.as_entire_binding(),
                penalty_ids: Some(a.penalty_ids.as_entire_binding()),
                out: out.as_entire_binding(),
                step: row_step,
            },
            &LogitsConfig {
                vocab: cfg.vocab,
                rows: match score_rows {
                    None => LogitRows::Fixed(1),
                    Some(r) => LogitRows::PerToken { max: r },
                },
                softcap: cfg.final_softcap,
            },
        )?;
        logits_op.set_sampling(
            ctx,
            &Sampling {
                k,
                ..Default::default()
            },
        )?;
        Ok(Head {
            norm,
            lm_head,
            logits: logits_op,
            last_row_only: score_rows.is_none(),
            out,
            rows,
        })
    }

    fn largest_activation(&self) -> u64 {
        let c = self.chunk as u64;
        let ff = self.cfg.layers.iter().map(|l| l.ff_len).max().unwrap_or(0) as u64;
        (c * ff * 4).max(self.cfg.vocab as u64 * 4)
    }

    /// GPU memory in use, by purpose.
    pub fn memory(&self) -> &MemoryReport {
        &self.memory
    }

    /// The context this model runs on.
    pub fn gpu(&self) -> &Arc<GpuContext> {
        &self.ctx
    }

    /// Candidates the GPU returns per position (the sampler's top-k ceiling).
    pub fn max_candidates(&self) -> u32 {
        self.max_candidates
    }

    /// Tokens in the KV cache (the position of the next token).
    pub fn position(&self) -> u32 {
        self.pos
    }

    /// Forgets the KV cache (the next token is position 0).
    pub fn reset(&mut self) {
        self.pos = 0;
    }

    /// Rolls the cache back to `n` tokens. Possible only while sliding-window rings still hold
    /// the keys position `n` needs: rolling back at most one token, or staying within the
    /// window. Returns `false` (and changes nothing) when a fresh prefill is needed instead.
    pub fn rewind(&mut self, n: u32) -> bool {
        let w = self.cfg.sliding_window;
        let has_sliding = self.context > w && self.cfg.layers.iter().any(|l| l.sliding);
        let ok = n <= self.pos && (!has_sliding || self.pos <= n + 1 || self.pos <= w);
        if ok {
            self.pos = n;
        }
        ok
    }

    /// Feeds `tokens` at the current position and returns the next-token candidates after the
    /// last one. `recent` are the tokens the repetition penalty applies to (empty: none).
    pub async fn forward(
        &mut self,
        tokens: &[u32],
        recent: &[u32],
        penalty: f32,
    ) -> Result<Candidates> {
        if tokens.is_empty() {
            return Err(Error::InvalidArgument("no tokens to process".into()));
        }
        self.check_room(tokens.len())?;
        self.check_ids(tokens)?;
        let chunks: Vec<&[u32]> = tokens.chunks(self.chunk as usize).collect();
        let n = chunks.len();
        for (i, part) in chunks.into_iter().enumerate() {
            if i + 1 < n {
                self.run_step(part, StepHead::None, recent, penalty).await?;
            } else {
                let mut rows = self
                    .run_step(part, StepHead::Generate, recent, penalty)
                    .await?;
                return rows
                    .pop()
                    .ok_or_else(|| Error::Readback("no candidates".into()));
            }
        }
        unreachable!("tokens is not empty")
    }

    /// Scores a whole sequence from position 0: the top-`k` candidates after every position
    /// (teacher forcing). This is how numerics are compared with a reference implementation.
    pub async fn score(&mut self, tokens: &[u32], k: u32) -> Result<Vec<Candidates>> {
        if k == 0 || k > self.max_candidates {
            return Err(Error::InvalidArgument(format!(
                "top-k must be 1..={}",
                self.max_candidates
            )));
        }
        self.reset();
        self.check_room(tokens.len())?;
        self.check_ids(tokens)?;
        // Rows per step: the [rows, V] logits must fit one binding.
        let row_bytes = self.cfg.vocab as u64 * 4;
        let rows = self
            .chunk
            .min(SCORE_ROWS)
            .min((self.ctx.caps.max_binding / row_bytes).max(1) as u32);
        if self.score_head.as_ref().is_none_or(|h| h.rows < rows) {
            self.score_head = Some(Self::build_head(
                &self.ctx,
                &self.cfg,
                &self.acts,
                &self.uploads,
                self.max_candidates,
                Some(rows),
            )?);
        }
        let mut out = Vec::with_capacity(tokens.len());
        for part in tokens.chunks(rows as usize) {
            let mut got = self.run_step(part, StepHead::Score, &[], 1.0).await?;
            for c in got.iter_mut() {
                c.ids.truncate(k as usize);
                c.values.truncate(k as usize);
            }
            out.extend(got);
        }
        Ok(out)
    }

    fn check_room(&self, n: usize) -> Result<()> {
        if self.pos as usize + n > self.context as usize {
            return Err(Error::ContextOverflow {
                tokens: self.pos as usize + n,
                context: self.context as usize,
            });
        }
        Ok(())
    }

    fn check_ids(&self, tokens: &[u32]) -> Result<()> {
        if let Some(bad) = tokens.iter().find(|&&t| t >= self.cfg.vocab) {
            return Err(Error::InvalidArgument(format!(
                "token id {bad} is outside the vocabulary (size {})",
                self.cfg.vocab
            )));
        }
        Ok(())
    }

    /// One step over `tokens` (≤ chunk) at the current position. `head`: `None` runs the layers
    /// only (an inner prefill chunk); `Some(false)` adds the generation head (last row);
    /// `Some(true)` the score head (every row).
    /// One step over `tokens` (≤ chunk) at the current position. `head` says what comes
    /// after the layers (nothing, for an inner prefill chunk).
    async fn run_step(
        &mut self,
        tokens: &[u32],
        head: StepHead,
        recent: &[u32],
        penalty: f32,
    ) -> Result<Vec<Candidates>> {
        // Nothing is written or submitted to a lost device.
        self.ctx.check_lost()?;
        let ctx = self.ctx.clone();
        let q = &ctx.queue;
        let n = tokens.len() as u32;
        let step = StepParams::new(n, self.pos);
        // The KV-shared layers (and the head after them) run on the last token only when a
        // prompt needs just the next token's candidates, on every row for `score`, and not at
        // all in an inner prefill chunk: they fill no cache.
        let tail = match head {
            _ if !self.cfg.has_kv_sharing() => Some(step),
            StepHead::None => None,
            StepHead::Generate => Some(StepParams::new(1, self.pos + n - 1)),
            StepHead::Score => Some(step),
        };
        q.write_buffer(&self.acts.step, 0, bytemuck::bytes_of(&step));
        q.write_buffer(&self.acts.tokens, 0, bytemuck::cast_slice(tokens));
        // The KV-shared layers' uniform and RoPE rows: the same rows as the step's unless they
        // run on the last token alone (then one row, computed on its own).
        let tail_written = match (tail, &self.acts.step_tail) {
            (Some(ts), Some(buffer)) => {
                q.write_buffer(buffer, 0, bytemuck::bytes_of(&ts));
                Some(ts)
            }
            _ => None,
        };
        for (i, (table, buffer)) in self.ropes.iter().zip(&self.acts.ropes).enumerate() {
            table.fill(self.pos, tokens.len(), &mut self.rope_scratch);
            q.write_buffer(buffer, 0, bytemuck::cast_slice(&self.rope_scratch));
            if let Some(ts) = tail_written {
                if ts != step {
                    table.fill(ts.pos0, ts.n_tokens as usize, &mut self.rope_scratch);
                }
                let tail_rope = &self.acts.ropes_tail[i];
                q.write_buffer(tail_rope, 0, bytemuck::cast_slice(&self.rope_scratch));
            }
        }
        if let (Some(ple), Some(pb)) = (&mut self.ple, &self.acts.ple) {
            ple.read_rows(tokens)?;
            q.write_buffer(&pb.tok, 0, bytemuck::cast_slice(&ple.values));
        }
        let recent = &recent[recent.len().saturating_sub(MAX_PENALTY_TOKENS as usize)..];
        let sampling = Sampling {
            k: self.max_candidates,
            penalty: if recent.is_empty() { 1.0 } else { penalty },
            n_penalty_ids: recent.len() as u32,
            temperature: 1.0,
        };
        if !recent.is_empty() {
            q.write_buffer(&self.acts.penalty_ids, 0, bytemuck::cast_slice(recent));
        }
        if head == StepHead::Generate && self.head.logits.sampling() != &sampling {
            self.head.logits.set_sampling(&ctx, &sampling)?
        }
        let head_op = match head {
            StepHead::None => None,
            StepHead::Generate => Some(&self.head),
            StepHead::Score => self.score_head.as_ref(),
        };

        let mut encoder = ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("step"),
            });
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("step"),
                timestamp_writes: None,
            });
            let mut rec = Recorder::new(&mut pass, self.profiler.as_mut());
            Self::encode_layers(
                &self.embed,
                self.ple.as_ref(),
                &self.layers,
                &self.to_front,
                self.cfg.first_shared as usize,
                &mut rec,
                &step,
                tail.as_ref(),
            );
            if let (Some(h), Some(ts)) = (head_op, tail) {
                let rows = if h.last_row_only {
                    StepParams::new(1, 0)
                } else {
                    ts
                };
                rec.op("final_norm", &h.norm, &ts);
                rec.op("lm_head", &h.lm_head, &rows);
                rec.op("logits_topk", &h.logits, &rows);
            }
        }
        if let Some(p) = &self.profiler {
            p.resolve(&mut encoder);
        }
        let readback = head_op.map(|h| {
            let rows = if h.last_row_only { 1 } else { n };
            let bytes = Logits::out_bytes(rows, self.max_candidates);
            encoder.copy_buffer_to_buffer(&h.out, 0, &self.readback, 0, bytes);
            (bytes, rows)
        });
        q.submit([encoder.finish()]);
        self.pos += n;
        if let Some(p) = &mut self.profiler {
            p.collect(&ctx).await?;
        }

        let Some((bytes, rows)) = readback else {
            return Ok(Vec::new());
        };
        let staging = &self.readback;
        crate::gpu::map_read(&ctx, staging, 0, bytes).await?;
        let result = {
            let view = staging
                .slice(..bytes)
                .get_mapped_range()
                .map_err(|e| Error::Readback(e.to_string()))?;
            Logits::parse(
                bytemuck::cast_slice(&view),
                rows as usize,
                self.max_candidates as usize,
            )
        };
        staging.unmap();
        // NaN logits mean broken weights (a matrix holding NaN or infinity): report it instead
        // of sampling garbage.
        if let Some(r) = result
            .iter()
            .position(|c| c.logsumexp.is_nan() || c.values.iter().any(|v| v.is_nan()))
        {
            return Err(Error::NonFiniteLogits {
                position: self.pos - rows + r as u32,
            });
        }
        Ok(result)
    }

    /// Records the embedding, the per-layer inputs and every layer. `tail`: the step of the
    /// KV-shared layers (`None`: skip them); when it is shorter than `step`, the last row is
    /// moved to the front first.
    #[allow(clippy::too_many_arguments)]
    fn encode_layers(
        embed: &Embed,
        ple: Option<&PleInput>,
        layers: &[LayerOps],
        to_front: &[LastRowToFront],
        first_shared: usize,
        rec: &mut Recorder<'_, '_>,
        step: &StepParams,
        tail: Option<&StepParams>,
    ) {
        rec.op("embed", embed, step);
        if let Some(p) = ple {
            rec.op("ple_model_proj", &p.proj, step);
            rec.op("ple_combine", &p.combine, step);
        }
        for l in &layers[..first_shared] {
            l.encode(rec, step);
        }
        let Some(ts) = tail else { return };
        if ts.n_tokens < step.n_tokens {
            for op in to_front {
                rec.op("last_row_to_front", op, step);
            }
        }
        for l in &layers[first_shared..] {
            l.encode(rec, ts);
        }
    }

    /// Starts (or, with `false`, stops) recording per-op GPU times of every step. Fails when
    /// the device has no timestamp queries inside passes.
    pub fn set_profiling(&mut self, on: bool) -> Result<()> {
        self.profiler = if on {
            // Ops per step: about 25 per layer plus the embedding and the head.
            Some(Profiler::new(&self.ctx, 32 * self.cfg.n_layers + 64)?)
        } else {
            None
        };
        Ok(())
    }

    /// Per-op GPU times collected since profiling started or was last taken.
    pub fn take_profile(&mut self) -> Option<Profile> {
        self.profiler.as_mut().map(Profiler::take)
    }
}

impl PleInput {
    /// Reads and dequantizes the per-layer-table rows of `tokens` into `values`
    /// (`[T, L·P]` f32).
    fn read_rows(&mut self, tokens: &[u32]) -> Result<()> {
        self.values.clear();
        let row_bytes = self.row_bytes.len() as u64;
        for &t in tokens {
            self.rows.read_rows(
                self.table.offset + t as u64 * row_bytes,
                &mut self.row_bytes,
            )?;
            let row = crate::quant::dequantize(self.table.ty, &self.row_bytes, self.width)
                .map_err(|e| tensor_error(&self.table, e))?;
            self.values.extend_from_slice(&row);
        }
        Ok(())
    }
}

/// Cache slots of KV-owning layer `l`. A full layer's cache holds the whole context; a sliding
/// layer's is a ring of `W + chunk − 1` slots (or the context, when that is fewer): each step
/// stores its K/V rows before attention reads every key from the cache, and row 0 of a
/// `chunk`-row step still needs the keys from `pos0 − W + 1` on
/// ([`AttentionParams::min_cap`]). KV-shared layers read these caches the same way.
fn cache_slots(cfg: &ModelConfig, l: usize, context: u32, chunk: u32) -> u32 {
    let lc = &cfg.layers[l];
    let w = cfg.sliding_window;
    // With a context no longer than the window, a sliding layer sees every earlier key: it is
    // a full layer over `context` slots.
    if !lc.sliding || context <= w {
        return context;
    }
    AttentionParams::min_cap(w, chunk, context)
}

/// Attention shape of layer `l`: its own cache, or for a KV-shared layer the cache of the
/// layer it reads.
fn attention_params(
    cfg: &ModelConfig,
    l: usize,
    context: u32,
    chunk: u32,
    kv_f32: bool,
) -> AttentionParams {
    let lc = &cfg.layers[l];
    let sliding = lc.sliding && context > cfg.sliding_window;
    AttentionParams {
        n_q_heads: cfg.n_heads,
        n_kv_heads: lc.n_kv_heads,
        head_dim: lc.head_dim,
        cap: cache_slots(cfg, lc.kv_source, context, chunk),
        window: if sliding { cfg.sliding_window } else { 0 },
        context,
        scale: cfg.attn_scale,
        max_tokens: chunk,
        split_keys: 0,
        kv_f32,
        kernel: AttentionKernel::Auto,
    }
}

/// `Error::BadTensorData` naming the first NaN or infinite value of a tensor.
fn check_finite(info: &TensorInfo, values: &[f32]) -> Result<()> {
    match values.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(i) => Err(Error::BadTensorData {
            tensor: info.name.clone(),
            problem: format!(
                "element {i} of {} is {} (the file is corrupt)",
                values.len(),
                values[i]
            ),
        }),
    }
}

fn tensor_error(info: &TensorInfo, e: Error) -> Error {
    match e {
        Error::InvalidArgument(m) => Error::Gguf(format!("tensor `{}`: {m}", info.name)),
        other => other,
    }
}
