//! The Gemma forward pass on the GPU.
//!
//! Reads like llama2.c's `forward`: embed → per layer (norm → q/k/v → per-head norm + RoPE →
//! attention over the KV cache → output projection → post-norm + residual → norm → gated
//! GELU MLP → post-norm + residual) → final norm → tied LM head → top-k. Every op is built
//! once at load (pipelines, bind groups, parameter buffers); a step only writes the step
//! uniform, the token ids and the RoPE rows, then records every dispatch into **one compute
//! pass and one submit**. Only the top-k candidates come back to the CPU.

pub mod config;

pub use config::{Arch, LayerConfig, ModelConfig};

use std::collections::HashMap;
use std::sync::Arc;

use crate::gguf::{read_tensor_data, Gguf, TensorInfo, TensorSource};
use crate::gpu::{GpuContext, Op, StepParams};
use crate::kernels::attention::{Attention, AttentionIo, AttentionParams, KvStore, KvStoreIo};
use crate::kernels::embed::{Embed, EmbedIo};
use crate::kernels::gelu::{GeluMul, GeluMulIo};
use crate::kernels::head_prep::{HeadNorm, HeadOut, HeadPrep, HeadPrepConfig, HeadPrepIo};
use crate::kernels::logits::{LogitRows, Logits, LogitsConfig, LogitsIo, Sampling, MAX_K};
use crate::kernels::matmul::{Matmul, MatmulIo, MatmulOut};
use crate::kernels::norm::{NormOut, RmsNorm, RmsNormIo};
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
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            context: None,
            prefill_chunk: 128,
            max_candidates: 64,
        }
    }
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
}

impl MemoryReport {
    pub fn total(&self) -> u64 {
        self.weights + self.kv_cache + self.activations
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

/// Activation buffers, allocated once for `chunk` rows (llama2.c's `RunState`).
struct Activations {
    step: wgpu::Buffer,         // uniform StepParams
    step_one: wgpu::Buffer,     // uniform StepParams {1, 0}: ops over one row (LM head)
    tokens: wgpu::Buffer,       // [chunk] u32
    h: wgpu::Buffer,            // [chunk, H] f32 residual stream
    xn: wgpu::Buffer,           // [chunk, H] f32 normed input of a block
    q: wgpu::Buffer,            // [chunk, nq·d] f32 projection
    k: wgpu::Buffer,            // [chunk, nkv·d] f32
    v: wgpu::Buffer,            // [chunk, nkv·d] f32
    qp: wgpu::Buffer,           // [chunk, nq, d] f32 normed + RoPE'd queries
    k_new: wgpu::Buffer,        // [chunk, nkv, d] f16 (packed u32) staging keys
    v_new: wgpu::Buffer,        // [chunk, nkv, d] f16 (packed u32) staging values
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
}

struct LayerOps {
    attn_norm: RmsNorm,
    q: Matmul,
    k: Matmul,
    v: Matmul,
    q_prep: HeadPrep,
    k_prep: HeadPrep,
    v_prep: HeadPrep,
    attention: Attention,
    kv_store: KvStore,
    o: Matmul,
    post_attn: RmsNorm,
    ffn_norm: RmsNorm,
    gate: Matmul,
    up: Matmul,
    gelu: GeluMul,
    down: Matmul,
    post_ffw: RmsNorm,
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
    layers: Vec<LayerOps>,
    head: Head,
    score_head: Option<Head>,
    /// (table, which activation buffer it fills) per distinct RoPE setting.
    ropes: Vec<RopeTable>,
    uploads: HashMap<String, Upload>,
    memory: MemoryReport,
    rope_scratch: Vec<f32>,
    /// Where each step's top-k rows are copied for the CPU (reused: no per-token allocation).
    readback: wgpu::Buffer,
}

/// Checks a model file without touching the GPU: architecture, hyper-parameters, and that
/// every tensor the forward pass needs is present with the right shape and a supported type.
/// Returns the configuration.
pub fn check(gguf: &Gguf) -> Result<ModelConfig> {
    plan(gguf).map(|(cfg, _)| cfg)
}

/// The configuration and the tensors to upload, with their expected `ne` shapes.
fn plan(gguf: &Gguf) -> Result<(ModelConfig, HashMap<String, Vec<u64>>)> {
    let cfg = ModelConfig::from_gguf(gguf)?;
    let (h, v) = (cfg.hidden as u64, cfg.vocab as u64);
    let mut wanted: HashMap<String, Vec<u64>> = HashMap::new();
    wanted.insert("token_embd.weight".into(), vec![h, v]);
    wanted.insert("output_norm.weight".into(), vec![h]);
    for (l, lc) in cfg.layers.iter().enumerate() {
        let (d, nq, nkv, ff) = (
            lc.head_dim as u64,
            cfg.n_heads as u64,
            lc.n_kv_heads as u64,
            lc.ff_len as u64,
        );
        let shapes = [
            vec![h, nq * d],
            vec![h, nkv * d],
            vec![h, nkv * d],
            vec![nq * d, h],
            vec![h, ff],
            vec![h, ff],
            vec![ff, h],
        ];
        for (name, shape) in LAYER_MATRICES.iter().zip(shapes) {
            wanted.insert(layer_tensor(l, name), shape);
        }
        for name in LAYER_VECTORS {
            let len = if name == "attn_q_norm" || name == "attn_k_norm" {
                d
            } else {
                h
            };
            wanted.insert(layer_tensor(l, name), vec![len]);
        }
    }
    let mut names: Vec<&String> = wanted.keys().collect();
    names.sort();
    for name in names {
        let info = gguf.tensor(name)?;
        let expected = &wanted[name];
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

/// GGUF names of the tensors a Gemma 3 layer uses.
fn layer_tensor(l: usize, what: &str) -> String {
    format!("blk.{l}.{what}.weight")
}

const LAYER_MATRICES: [&str; 7] = [
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_output",
    "ffn_gate",
    "ffn_up",
    "ffn_down",
];
const LAYER_VECTORS: [&str; 6] = [
    "attn_norm",
    "attn_q_norm",
    "attn_k_norm",
    "post_attention_norm",
    "ffn_norm",
    "post_ffw_norm",
];

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
        let (cfg, wanted) = plan(gguf)?;
        let context = opts
            .context
            .unwrap_or(cfg.context_length.min(8192))
            .clamp(1, cfg.context_length.max(1));
        let chunk = opts.prefill_chunk.clamp(1, 1024).min(context);
        let max_candidates = opts.max_candidates.clamp(1, 64);

        let mut infos: Vec<&TensorInfo> = gguf
            .tensors_by_offset()
            .into_iter()
            .filter(|t| wanted.contains_key(&t.name))
            .collect();
        infos.sort_by_key(|t| t.offset);
        let total: u64 = infos.iter().map(|t| t.n_bytes).sum();
        let mut done = 0;
        let mut uploads = HashMap::new();
        let mut memory = MemoryReport {
            file_tensor_bytes: gguf.tensor_data_bytes(),
            ..Default::default()
        };
        for info in infos {
            let bytes = read_tensor_data(src, info).await?;
            let upload = if info.dims.len() == 1 {
                let values = crate::quant::dequantize(info.ty, &bytes, info.n_elements() as usize)
                    .map_err(|e| tensor_error(info, e))?;
                memory.weights += values.len() as u64 * 4;
                Upload::Vector(ctx.storage_init(&info.name, &values)?)
            } else {
                let m = QuantMatrix::upload(
                    &ctx,
                    &info.name,
                    info.ty,
                    info.dims[0] as u32,
                    info.dims[1] as u32,
                    &bytes,
                )?;
                memory.weights += m.gpu_bytes();
                memory.largest_buffer = memory.largest_buffer.max(m.largest_buffer_bytes());
                Upload::Matrix(m)
            };
            uploads.insert(info.name.clone(), upload);
            done += info.n_bytes;
            progress(done, total);
        }

        let mut model = Self::build(ctx, cfg, context, chunk, max_candidates, uploads, memory)?;
        model.memory.largest_buffer = model.memory.largest_buffer.max(model.largest_activation());
        Ok(model)
    }

    fn build(
        ctx: Arc<GpuContext>,
        cfg: ModelConfig,
        context: u32,
        chunk: u32,
        max_candidates: u32,
        uploads: HashMap<String, Upload>,
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
        let ctx_ref = &*ctx;
        let mut act_bytes = 0u64;
        let mut buf = |label: &str, bytes: u64| -> Result<wgpu::Buffer> {
            act_bytes += bytes;
            ctx_ref.storage(label, bytes)
        };

        // One RoPE table per distinct (θ, scale, head size).
        let mut ropes: Vec<RopeTable> = Vec::new();
        let mut rope_of_layer = Vec::new();
        for lc in &cfg.layers {
            let mut table = RopeTable::new(lc.rope_theta, lc.head_dim as usize)?;
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

        let acts = Activations {
            step: ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("step"),
                size: std::mem::size_of::<StepParams>() as u64,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }),
            step_one: ctx.uniform_init("step_one", &StepParams::new(1, 0)),
            tokens: buf("tokens", c * 4)?,
            h: buf("h", c * hidden * f)?,
            xn: buf("xn", c * hidden * f)?,
            q: buf("q", c * nq * d_max * f)?,
            k: buf("k", c * kv_max * f)?,
            v: buf("v", c * kv_max * f)?,
            qp: buf("qp", c * nq * d_max * f)?,
            k_new: buf("k_new", c * kv_max * 2)?,
            v_new: buf("v_new", c * kv_max * 2)?,
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
                cfg.layers
                    .iter()
                    .map(|lc| Attention::scratch_bytes(&attention_params(&cfg, lc, context, chunk)))
                    .max()
                    .unwrap_or(4),
            )?,
            ropes: ropes
                .iter()
                .map(|t| buf("rope", c * t.floats_per_token() as u64 * f))
                .collect::<Result<_>>()?,
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
        let step = || a.step.as_entire_binding();
        let eps = cfg.eps;

        let embed = Embed::new(
            &ctx,
            matrix("token_embd.weight")?,
            EmbedIo {
                tokens: a.tokens.as_entire_binding(),
                out: a.h.as_entire_binding(),
                step: step(),
            },
            cfg.embed_scale,
        )?;

        let mut layers = Vec::with_capacity(cfg.layers.len());
        let mut kv_bytes = 0u64;
        for (l, lc) in cfg.layers.iter().enumerate() {
            let t = |w: &str| layer_tensor(l, w);
            let d = lc.head_dim;
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
            let rope = &a.ropes[rope_of_layer[l]];
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

            let cap = attention_params(&cfg, lc, context, chunk).cap;
            let cache_bytes = cap as u64 * (lc.n_kv_heads * d) as u64 * 2;
            let k_cache = ctx.storage(&t("k_cache"), cache_bytes)?;
            let v_cache = ctx.storage(&t("v_cache"), cache_bytes)?;
            kv_bytes += 2 * cache_bytes;
            memory.largest_buffer = memory.largest_buffer.max(cache_bytes);
            let params = attention_params(&cfg, lc, context, chunk);
            let attention = Attention::new(
                &ctx,
                AttentionIo {
                    q: a.qp.as_entire_binding(),
                    k_new: Some(a.k_new.as_entire_binding()),
                    v_new: Some(a.v_new.as_entire_binding()),
                    k_cache: k_cache.as_entire_binding(),
                    v_cache: v_cache.as_entire_binding(),
                    out: a.attn.as_entire_binding(),
                    step: step(),
                    scratch: Some(a.attn_scratch.as_entire_binding()),
                },
                params,
            )?;
            let kv_store = KvStore::new(
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
            layers.push(LayerOps {
                attn_norm: norm(&a.h, "attn_norm", &a.xn, NormOut::Store)?,
                q: mm("attn_q", &a.xn, &a.q)?,
                k: mm("attn_k", &a.xn, &a.k)?,
                v: mm("attn_v", &a.xn, &a.v)?,
                q_prep: prep(
                    &a.q,
                    Some("attn_q_norm"),
                    &a.qp,
                    HeadPrepConfig::qk(d, cfg.n_heads, eps, 1.0, HeadOut::F32),
                )?,
                k_prep: prep(
                    &a.k,
                    Some("attn_k_norm"),
                    &a.k_new,
                    HeadPrepConfig::qk(d, lc.n_kv_heads, eps, 1.0, HeadOut::F16Packed),
                )?,
                v_prep: prep(
                    &a.v,
                    None,
                    &a.v_new,
                    HeadPrepConfig::v(d, lc.n_kv_heads, eps, HeadNorm::None, HeadOut::F16Packed),
                )?,
                attention,
                kv_store,
                o: mm("attn_output", &a.attn, &a.o)?,
                post_attn: norm(&a.o, "post_attention_norm", &a.h, NormOut::Add)?,
                ffn_norm: norm(&a.h, "ffn_norm", &a.xn, NormOut::Store)?,
                gate: mm("ffn_gate", &a.xn, &a.gate)?,
                up: mm("ffn_up", &a.xn, &a.up)?,
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
                post_ffw: norm(&a.o, "post_ffw_norm", &a.h, NormOut::Add)?,
            });
        }
        memory.kv_cache = kv_bytes;

        let head = Self::build_head(&ctx, &cfg, &acts, &uploads, max_candidates, None)?;
        // Top-k rows of the largest score step, mapped and unmapped every step.
        let readback = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("topk readback"),
            size: Logits::out_bytes(SCORE_ROWS, MAX_K),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let model = Model {
            cfg,
            ctx,
            context,
            chunk,
            max_candidates,
            pos: 0,
            acts,
            embed,
            layers,
            head,
            score_head: None,
            readback,
            ropes,
            uploads,
            memory,
            rope_scratch: Vec::new(),
        };
        Ok(model)
    }

    /// The final norm, LM head and top-k. `score_rows: None` builds the generation head (the
    /// step's last row only); `Some(r)` a head over up to `r` rows for `score`.
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
        let rows = score_rows.unwrap_or(1);
        let (normed, logits, row_step) = match score_rows {
            None => (&a.last, a.logits.clone(), a.step_one.as_entire_binding()),
            Some(r) => (
                &a.xn,
                ctx.storage("score_logits", r as u64 * cfg.vocab as u64 * 4)?,
                a.step.as_entire_binding(),
            ),
        };
        let norm = RmsNorm::new(
            ctx,
            RmsNormIo {
                x: a.h.as_entire_binding(),
                weight: Some(norm_w.as_entire_binding()),
                y: normed.as_entire_binding(),
                step: a.step.as_entire_binding(),
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
                self.run_step(part, None, recent, penalty).await?;
            } else {
                let mut rows = self.run_step(part, Some(false), recent, penalty).await?;
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
            let mut got = self.run_step(part, Some(true), &[], 1.0).await?;
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
    async fn run_step(
        &mut self,
        tokens: &[u32],
        head: Option<bool>,
        recent: &[u32],
        penalty: f32,
    ) -> Result<Vec<Candidates>> {
        let ctx = self.ctx.clone();
        let q = &ctx.queue;
        let step = StepParams::new(tokens.len() as u32, self.pos);
        q.write_buffer(&self.acts.step, 0, bytemuck::bytes_of(&step));
        q.write_buffer(&self.acts.tokens, 0, bytemuck::cast_slice(tokens));
        for (table, buffer) in self.ropes.iter().zip(&self.acts.ropes) {
            table.fill(self.pos, tokens.len(), &mut self.rope_scratch);
            q.write_buffer(buffer, 0, bytemuck::cast_slice(&self.rope_scratch));
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
        match head {
            Some(false) if self.head.logits.sampling() != &sampling => {
                self.head.logits.set_sampling(&ctx, &sampling)?
            }
            _ => {}
        }
        let head_op = match head {
            None => None,
            Some(false) => Some(&self.head),
            Some(true) => self.score_head.as_ref(),
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
            self.encode_layers(&mut pass, &step);
            if let Some(h) = head_op {
                let rows = if h.last_row_only {
                    StepParams::new(1, 0)
                } else {
                    step
                };
                h.norm.encode(&mut pass, &step);
                h.lm_head.encode(&mut pass, &rows);
                h.logits.encode(&mut pass, &rows);
            }
        }
        let readback = head_op.map(|h| {
            let rows = if h.last_row_only {
                1
            } else {
                tokens.len() as u32
            };
            let bytes = Logits::out_bytes(rows, self.max_candidates);
            encoder.copy_buffer_to_buffer(&h.out, 0, &self.readback, 0, bytes);
            (bytes, rows)
        });
        q.submit([encoder.finish()]);
        self.pos += tokens.len() as u32;

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
        Ok(result)
    }

    fn encode_layers(&self, pass: &mut wgpu::ComputePass<'_>, step: &StepParams) {
        self.embed.encode(pass, step);
        for l in &self.layers {
            let ops: [&dyn Op; 17] = [
                &l.attn_norm,
                &l.q,
                &l.k,
                &l.v,
                &l.q_prep,
                &l.k_prep,
                &l.v_prep,
                &l.attention,
                &l.kv_store,
                &l.o,
                &l.post_attn,
                &l.ffn_norm,
                &l.gate,
                &l.up,
                &l.gelu,
                &l.down,
                &l.post_ffw,
            ];
            for op in ops {
                op.encode(pass, step);
            }
        }
    }
}

/// Attention shape of a layer: a full layer's cache holds the whole context; a sliding layer's
/// is a ring of exactly `W` slots (the step's own keys are read from staging).
fn attention_params(
    cfg: &ModelConfig,
    lc: &LayerConfig,
    context: u32,
    chunk: u32,
) -> AttentionParams {
    // With a context no longer than the window, a sliding layer sees every earlier key: it is
    // a full layer over `context` slots.
    let sliding = lc.sliding && context > cfg.sliding_window;
    AttentionParams {
        n_q_heads: cfg.n_heads,
        n_kv_heads: lc.n_kv_heads,
        head_dim: lc.head_dim,
        cap: if sliding { cfg.sliding_window } else { context },
        window: if sliding { cfg.sliding_window } else { 0 },
        scale: cfg.attn_scale,
        keys_from_cache_only: false,
        max_tokens: chunk,
        split_keys: 0,
    }
}

fn tensor_error(info: &TensorInfo, e: Error) -> Error {
    match e {
        Error::InvalidArgument(m) => Error::Gguf(format!("tensor `{}`: {m}", info.name)),
        other => other,
    }
}
