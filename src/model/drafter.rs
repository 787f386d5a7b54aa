//! The MTP assistant on the GPU: drafts the target's next tokens (see `assistant` for what the
//! assistant computes and how transformers and llama.cpp feed it).
//!
//! One draft round is one submit: for each of its `k` steps a compute pass (the target's
//! embedding row of the step's token, scaled, next to `h` → `nextn.pre_projection` → the
//! assistant's layers → `output_norm` → its LM head → top-k → `nextn.post_projection` into the
//! next step's `h`), then two copies: the candidates to the readback buffer, and the best
//! candidate's id to the token slot the next step embeds. Drafts are the assistant's argmax,
//! so no step waits for the CPU.
//!
//! The layers are the target's layer ops built for a Gemma 4 model whose every layer is
//! KV-shared, reading the target's caches. A draft at position `p` sees the target's keys
//! before `p` (llama.cpp's view: its own position is not in the cache): full layers keys
//! `0 … p − 1`, sliding layers `p − W + 1 … p − 1`. That is exactly the attention of a row at
//! position `p − 1` with a window one key shorter, so the layers run a step `{1, p − 1}`
//! with that window, while the queries are rotated for position `p` (their RoPE rows are
//! written for `p`; only the attention reads the step's position).

use std::sync::Arc;

use super::assistant::{plan_assistant, AssistantConfig};
use super::buffers::{rope_tables, Activations, Slot};
use super::layer::{build_layer, LayerCache, LayerEnv, LayerOps};
use super::plan::attention_params;
use super::step::read_candidates;
use super::{weights, Candidates, MemoryReport, Model};
use crate::gguf::{Gguf, TensorSource};
use crate::gpu::{Ablation, GpuContext, Recorder, StepParams};
use crate::kernels::embed::{Embed, EmbedIo};
use crate::kernels::logits::{LogitRows, Logits, LogitsConfig, LogitsIo, Sampling};
use crate::kernels::matmul::{Matmul, MatmulIo, MatmulOut};
use crate::kernels::norm::{NormOut, RmsNorm, RmsNormIo};
use crate::rope::RopeTable;
use crate::{Error, Result};

/// Most draft steps of one round.
pub const MAX_DRAFT_TOKENS: u32 = 16;

/// Draft steps per round unless the caller says otherwise. A verify step of `k + 1` tokens runs
/// the several-token mat-vec, which takes up to 8 tokens in passes of 4 (`MATVEC_MAX_TOKENS`):
/// on an H100 with E2B Q4_0 it costs 1.7–1.9× a one-token step for k = 1–3 and about 2.8–3.3×
/// for k = 4–7 (a second pass), so more drafts pay only when most of them are kept.
pub const DEFAULT_DRAFT_TOKENS: u32 = 3;

/// Where the first draft step of a round takes `h`, the target's final-normed hidden state at
/// the position before the drafted one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HiddenRow {
    /// The last row of the target's last generation step (after a prefill or a decode step).
    Last,
    /// Row `r` of the target's last `verify` step.
    Verified(u32),
}

/// A loaded assistant, bound to the target model it was loaded for.
pub struct Drafter {
    pub cfg: AssistantConfig,
    ctx: Arc<GpuContext>,
    acts: Activations,
    /// `[2·Hb]` f32: the scaled target embedding row of the step's token, then `h`.
    input: wgpu::Buffer,
    embed: Embed,
    pre_projection: Matmul,
    layers: Vec<LayerOps>,
    output_norm: RmsNorm,
    lm_head: Matmul,
    logits: Logits,
    /// `[1 + k]` pairs of u32: the step's candidates (`Logits` layout).
    out: wgpu::Buffer,
    post_projection: Matmul,
    ropes: Vec<RopeTable>,
    rope_scratch: Vec<f32>,
    /// `MAX_DRAFT_TOKENS` steps' candidates, mapped after each round.
    readback: wgpu::Buffer,
    /// Candidates per step.
    k: u32,
    memory: MemoryReport,
    /// The assistant's weights (its ops' bind groups reference them).
    _weights: weights::Weights,
    ablation: Ablation,
}

impl Drafter {
    /// Uploads the assistant `gguf` from `src` and builds its ops over `target`'s KV caches and
    /// embedding table. Refuses an assistant that does not fit the target, before uploading.
    pub async fn load<S: TensorSource>(
        target: &Model,
        gguf: &Gguf,
        src: &mut S,
        progress: impl FnMut(u64, u64),
    ) -> Result<Drafter> {
        let (cfg, caches, wanted) = plan_assistant(gguf, &target.cfg)?;
        let ctx = target.ctx.clone();
        let weights = weights::upload(&ctx, gguf, src, &wanted, progress).await?;
        ctx.defer_compilation();
        let built = Self::build(target, cfg, &caches, weights);
        match built {
            Ok(d) => {
                ctx.compile_deferred().await?;
                ctx.wait().await?;
                Ok(d)
            }
            Err(e) => {
                ctx.discard_deferred();
                Err(e)
            }
        }
    }

    fn build(
        target: &Model,
        cfg: AssistantConfig,
        caches: &[usize],
        mut weights: weights::Weights,
    ) -> Result<Drafter> {
        let ctx = target.ctx.clone();
        let model_cfg = cfg.as_model(&target.cfg, caches);
        let (ropes, rope_of_layer) = rope_tables(&model_cfg, &weights.host)?;
        let kv_f32 = target.kv_f32;
        // Each layer's attention: the target cache's slots, the assistant's query heads, and
        // for sliding layers a window one key shorter (see the module doc).
        let attention: Vec<_> = caches
            .iter()
            .zip(&model_cfg.layers)
            .map(|(&source, lc)| {
                let p = attention_params(&target.cfg, source, target.context, target.chunk, kv_f32);
                let window = p.window.saturating_sub(1);
                debug_assert_eq!(p.head_dim, lc.head_dim);
                crate::kernels::attention::AttentionParams {
                    n_q_heads: model_cfg.n_heads,
                    window,
                    max_tokens: 1,
                    ..p
                }
            })
            .collect();
        let acts = Activations::new(&ctx, &model_cfg, 1, &attention, &ropes)?;
        let hb = cfg.backbone_hidden;
        let input = ctx.storage("draft input", 2 * hb as u64 * 4)?;
        let env = LayerEnv {
            ctx: &ctx,
            cfg: &model_cfg,
            weights: &weights,
            acts: &acts,
            context: target.context,
            chunk: 1,
            kv_f32,
            attention_split_keys: 0,
            rope_of_layer: &rope_of_layer,
        };
        let mut layers = Vec::with_capacity(caches.len());
        for (i, &source) in caches.iter().enumerate() {
            let (k, v) = target.caches[source].as_ref().ok_or_else(|| {
                Error::AssistantMismatch(format!("target layer {source} holds no KV cache"))
            })?;
            let cache = LayerCache::Read {
                k,
                v,
                params: attention[i],
            };
            layers.push(build_layer(&env, i, cache)?.0);
        }
        let step = || acts.step.as_entire_binding();
        let embed = Embed::new(
            &ctx,
            target.weights.matrix("token_embd.weight")?,
            EmbedIo {
                tokens: acts.tokens.as_entire_binding(),
                out: input.as_entire_binding(),
                step: acts.step_one.as_entire_binding(),
            },
            target.cfg.embed_scale,
        )?;
        let pre_projection = Matmul::new(
            &ctx,
            weights.matrix("nextn.pre_projection.weight")?,
            MatmulIo {
                x: input.as_entire_binding(),
                x_offset: 0,
                y: acts.arena.as_entire_binding(),
                y_offset: acts.slot(Slot::H),
                y_stride: cfg.hidden,
                step: step(),
            },
            MatmulOut::Store,
        )?;
        let output_norm = RmsNorm::new(
            &ctx,
            RmsNormIo {
                x: acts.arena.as_entire_binding(),
                weight: Some(weights.norms.binding("output_norm.weight")?),
                y: acts.last.as_entire_binding(),
                step: step(),
            },
            cfg.hidden,
            1,
            cfg.eps,
            NormOut::LastRow,
        )?;
        let embd = weights.matrix("token_embd.weight")?;
        let lm_head = Matmul::new(
            &ctx,
            embd,
            MatmulIo::plain(
                acts.last.as_entire_binding(),
                acts.logits.as_entire_binding(),
                embd.n,
                acts.step_one.as_entire_binding(),
            ),
            MatmulOut::Store,
        )?;
        let k = target.max_candidates;
        let out = ctx.storage("draft topk", Logits::out_bytes(1, k))?;
        let mut logits = Logits::new(
            &ctx,
            LogitsIo {
                logits: acts.logits.as_entire_binding(),
                penalty_ids: None,
                out: out.as_entire_binding(),
                step: acts.step_one.as_entire_binding(),
            },
            &LogitsConfig {
                vocab: cfg.vocab,
                rows: LogitRows::Fixed(1),
                softcap: None,
            },
        )?;
        logits.set_sampling(
            &ctx,
            &Sampling {
                k,
                ..Default::default()
            },
        )?;
        let post_projection = Matmul::new(
            &ctx,
            weights.matrix("nextn.post_projection.weight")?,
            MatmulIo {
                x: acts.last.as_entire_binding(),
                x_offset: 0,
                y: input.as_entire_binding(),
                y_offset: hb,
                y_stride: 2 * hb,
                step: acts.step_one.as_entire_binding(),
            },
            MatmulOut::Store,
        )?;
        let readback = ctx.create_buffer(&wgpu::BufferDescriptor {
            label: Some("draft readback"),
            size: Logits::out_bytes(MAX_DRAFT_TOKENS, k),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })?;
        let mut memory = std::mem::take(&mut weights.memory);
        memory.activations = acts.bytes + input.size() + out.size();
        Ok(Drafter {
            cfg,
            ctx,
            acts,
            input,
            embed,
            pre_projection,
            layers,
            output_norm,
            lm_head,
            logits,
            out,
            post_projection,
            ropes,
            rope_scratch: Vec::new(),
            readback,
            k,
            memory,
            _weights: weights,
            ablation: Ablation::default(),
        })
    }

    /// GPU memory the assistant holds (its weights and buffers; the KV caches it reads are the
    /// target's).
    pub fn memory(&self) -> &MemoryReport {
        &self.memory
    }

    /// Drafts `n` tokens after `token`, which the target has not seen yet and which sits at
    /// the target's current position; `h` says which of the target's rows the first step
    /// continues. Returns each step's candidates (the assistant's logits, best first); the
    /// drafts are their first ids.
    pub async fn draft(
        &mut self,
        target: &Model,
        token: u32,
        h: HiddenRow,
        n: u32,
    ) -> Result<Vec<Candidates>> {
        if n == 0 || n > MAX_DRAFT_TOKENS {
            return Err(Error::InvalidArgument(format!(
                "a draft round makes 1..={MAX_DRAFT_TOKENS} tokens, got {n}"
            )));
        }
        if token >= self.cfg.vocab {
            return Err(Error::InvalidArgument(format!(
                "token id {token} is outside the vocabulary of {} tokens",
                self.cfg.vocab
            )));
        }
        let p = target.pos;
        if p == 0 {
            return Err(Error::InvalidArgument(
                "drafting needs the target to have processed at least one token".into(),
            ));
        }
        self.ctx.check_lost()?;
        let q = &self.ctx.queue;
        // The layers' step: a row at p − 1 (see the module doc); their queries' RoPE rows: p.
        let step = StepParams::new(1, p - 1);
        q.write_buffer(&self.acts.step, 0, bytemuck::bytes_of(&step));
        let tail = self.acts.tail_step();
        q.write_buffer(tail, 0, bytemuck::bytes_of(&step));
        for (table, buffer) in self.ropes.iter().zip(&self.acts.ropes_tail) {
            table.fill(p, 1, &mut self.rope_scratch);
            q.write_buffer(buffer, 0, bytemuck::cast_slice(&self.rope_scratch));
        }
        q.write_buffer(&self.acts.tokens, 0, bytemuck::bytes_of(&token));

        let hb = self.cfg.backbone_hidden as u64 * 4;
        let (h_buffer, h_offset) = match h {
            HiddenRow::Last => (&target.acts.last, 0),
            HiddenRow::Verified(r) => (&target.acts.xn, r as u64 * hb),
        };
        if h_offset + hb > h_buffer.size() {
            return Err(Error::InvalidArgument(format!(
                "row {h:?} is outside the target's last step"
            )));
        }
        let recorded = crate::gpu::recorded_dispatches();
        let mut encoder = self
            .ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("draft"),
            });
        encoder.copy_buffer_to_buffer(h_buffer, h_offset, &self.input, hb, hb);
        let out_bytes = Logits::out_bytes(1, self.k);
        for j in 0..n as u64 {
            {
                let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("draft step"),
                    timestamp_writes: None,
                });
                let mut rec = Recorder::new(&mut pass, None, &mut self.ablation);
                rec.op("draft_embed", &self.embed, &step);
                rec.op("draft_pre_projection", &self.pre_projection, &step);
                for l in &self.layers {
                    l.encode(&mut rec, &step);
                }
                rec.op("draft_output_norm", &self.output_norm, &step);
                rec.op("draft_lm_head", &self.lm_head, &step);
                rec.op("draft_topk", &self.logits, &step);
                rec.op("draft_post_projection", &self.post_projection, &step);
            }
            encoder.copy_buffer_to_buffer(&self.out, 0, &self.readback, j * out_bytes, out_bytes);
            // The best candidate's id (entry 1 of the row) is the next step's token.
            encoder.copy_buffer_to_buffer(&self.out, 8, &self.acts.tokens, 0, 4);
        }
        self.ctx.submit([encoder.finish()]);
        crate::gpu::count_submitted(crate::gpu::recorded_dispatches() - recorded);
        read_candidates(&self.ctx, &self.readback, n, self.k, p, false).await
    }
}
