//! Running one step: the per-step uploads (step parameters, token ids, RoPE rows, per-layer
//! table rows, penalty ids), the step's dispatches recorded into one compute pass, one submit,
//! and the top-k readback.
//!
//! A decode step waits for the one before (its token is sampled on the CPU), so the GPU would
//! idle while the CPU records the next step's few hundred dispatches. Nothing a decode step
//! records depends on the token — ids, positions and table rows reach the GPU through buffers
//! written before the submit — so right after submitting step `n` the model records step `n + 1`
//! (one token at the next position) while the GPU runs step `n`, and submits that recording
//! when the next token comes, if it is indeed a one-token step at that position.

use super::buffers::MAX_PENALTY_TOKENS;
use super::{Candidates, Model};
use crate::gpu::{GpuContext, Recorder, StepParams};
use crate::kernels::logits::{Logits, Sampling};
use crate::kernels::sample::VocabSampler;
use crate::{Error, Result};

/// What a step computes after the layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum StepHead {
    /// An inner prefill chunk: the layers that fill KV caches, nothing else.
    None,
    /// Next-token candidates after the step's last token.
    Generate,
    /// Candidates after every token of the step (`score`).
    Score,
}

/// A decode step recorded ahead of time.
pub(super) struct PendingStep {
    /// Position of its one token.
    pos: u32,
    /// Candidates per position the head was recording for (its levels depend on k).
    k: u32,
    /// Whether it draws from the full vocabulary, and whether it masks tokens.
    full_vocab: bool,
    constrained: bool,
    commands: wgpu::CommandBuffer,
    /// Dispatches in `commands`.
    dispatches: u64,
}

impl Model {
    /// One step over `tokens` (≤ chunk) at the current position. `head` says what comes
    /// after the layers (nothing, for an inner prefill chunk).
    pub(super) async fn run_step(
        &mut self,
        tokens: &[u32],
        head: StepHead,
        recent: &[u32],
        penalty: f32,
    ) -> Result<Vec<Candidates>> {
        // Nothing is written or submitted to a lost device.
        self.ctx.check_lost()?;
        let encode_started = web_time::Instant::now();
        let ctx = self.ctx.clone();
        let q = &ctx.queue;
        let n = tokens.len() as u32;
        let step = StepParams::new(n, self.pos);
        let tail = self.tail(step, head);
        q.write_buffer(&self.acts.step, 0, bytemuck::bytes_of(&step));
        q.write_buffer(&self.acts.tokens, 0, bytemuck::cast_slice(tokens));
        // The KV-shared layers' step and RoPE rows: the same rows as the step's unless they
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
        // A penalty of 1 changes nothing: no ids, so the sampling stays the same every step.
        let (recent, penalty) = if penalty == 1.0 {
            (&recent[..0], 1.0)
        } else {
            (recent, penalty)
        };
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

        let pending = self.pending.take();
        let (commands, dispatches) = match pending {
            Some(p) if self.reuses(&p, step, head) => (p.commands, p.dispatches),
            _ => self.record(step, head),
        };
        ctx.submit([commands]);
        crate::gpu::count_submitted(dispatches);
        self.pos += n;
        self.stored = self.stored.max(self.pos);
        // Record the next decode step while the GPU runs this one.
        if head == StepHead::Generate
            && n == 1
            && self.profiler.is_none()
            && self.pos < self.context
        {
            let next = StepParams::new(1, self.pos);
            let (commands, dispatches) = self.record(next, StepHead::Generate);
            self.pending = Some(PendingStep {
                pos: self.pos,
                k: self.head.logits.sampling().k,
                full_vocab: self.head.full_vocab,
                constrained: self.head.constrained,
                commands,
                dispatches,
            });
        }
        self.encode_seconds += encode_started.elapsed().as_secs_f64();
        if let Some(p) = &mut self.profiler {
            p.collect(&ctx).await?;
        }

        let rows = match head {
            StepHead::None => return Ok(Vec::new()),
            StepHead::Generate => 1,
            StepHead::Score => n,
        };
        read_candidates(
            &ctx,
            &self.readback,
            rows,
            self.max_candidates,
            self.pos - rows,
            head == StepHead::Generate && self.head.full_vocab,
        )
        .await
    }

    /// The step of the KV-shared layers and the head: on the last token only when a prompt
    /// needs just the next token's candidates, on every row for `score`, and not at all in an
    /// inner prefill chunk (they fill no cache).
    fn tail(&self, step: StepParams, head: StepHead) -> Option<StepParams> {
        match head {
            _ if !self.cfg.has_kv_sharing() => Some(step),
            StepHead::None => None,
            StepHead::Generate => Some(StepParams::new(1, step.pos0 + step.n_tokens - 1)),
            StepHead::Score => Some(step),
        }
    }

    /// Whether `pending` is the recording of this step.
    fn reuses(&self, pending: &PendingStep, step: StepParams, head: StepHead) -> bool {
        head == StepHead::Generate
            && step == StepParams::new(1, pending.pos)
            && self.profiler.is_none()
            && self.head.logits.sampling().k == pending.k
            && self.head.full_vocab == pending.full_vocab
            && self.head.constrained == pending.constrained
    }

    /// Records the step's dispatches (and the copy of its candidates for the CPU); returns
    /// them with their number.
    fn record(&mut self, step: StepParams, head: StepHead) -> (wgpu::CommandBuffer, u64) {
        let recorded = crate::gpu::recorded_dispatches();
        let tail = self.tail(step, head);
        let head_op = match head {
            StepHead::None => None,
            StepHead::Generate => Some(&self.head),
            StepHead::Score => self.score_head.as_ref(),
        };
        let mut encoder = self
            .ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("step"),
            });
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("step"),
                timestamp_writes: None,
            });
            let mut rec = Recorder::new(&mut pass, self.profiler.as_mut(), &mut self.ablation);
            rec.op("embed", &self.embed, &step);
            if let Some(p) = &self.ple {
                p.encode(&mut rec, &step);
            }
            let first_shared = self.cfg.first_shared as usize;
            for l in &self.layers[..first_shared] {
                l.encode(&mut rec, &step);
            }
            if let Some(ts) = tail {
                if ts.n_tokens < step.n_tokens {
                    for op in &self.to_front {
                        rec.op("last_row_to_front", op, &step);
                    }
                }
                for l in &self.layers[first_shared..] {
                    l.encode(&mut rec, &ts);
                }
                if let Some(h) = head_op {
                    h.encode(&mut rec, &ts);
                }
            }
        }
        if let Some(p) = &self.profiler {
            p.resolve(&mut encoder);
        }
        if let Some(h) = head_op {
            let rows = if h.last_row_only { 1 } else { step.n_tokens };
            let bytes = Logits::out_bytes(rows, self.max_candidates);
            encoder.copy_buffer_to_buffer(&h.out, 0, &self.readback, 0, bytes);
            if let Some(s) = h.active_sampler() {
                encoder.copy_buffer_to_buffer(&s.out, 0, &self.readback, bytes, DRAWN_BYTES);
            }
        }
        (
            encoder.finish(),
            crate::gpu::recorded_dispatches() - recorded,
        )
    }
}

/// Bytes of a full-vocabulary draw in the readback buffer (after the candidates).
const DRAWN_BYTES: u64 = 16;

/// Maps the first `rows` rows of top-`k` candidates that a step copied into `staging` and
/// decodes them; the first row belongs to `first_position`. With `drawn`, the token drawn from
/// the full vocabulary follows the candidates. NaN logits mean broken weights (a matrix
/// holding NaN or infinity): reported, naming the position, instead of sampled.
pub(super) async fn read_candidates(
    ctx: &GpuContext,
    staging: &wgpu::Buffer,
    rows: u32,
    k: u32,
    first_position: u32,
    drawn: bool,
) -> Result<Vec<Candidates>> {
    let bytes = Logits::out_bytes(rows, k);
    let mapped = bytes + if drawn { DRAWN_BYTES } else { 0 };
    crate::gpu::map_read(ctx, staging, 0, mapped).await?;
    let result = {
        let view = staging
            .slice(..mapped)
            .get_mapped_range()
            .map_err(|e| Error::Readback(e.to_string()))?;
        let words: &[u32] = bytemuck::cast_slice(&view);
        let mut rows = Logits::parse(words, rows as usize, k as usize);
        if drawn {
            rows[0].drawn = Some(VocabSampler::parse(&words[(bytes / 4) as usize..]));
        }
        rows
    };
    staging.unmap();
    if let Some(r) = result
        .iter()
        .position(|c| c.logsumexp.is_nan() || c.values.iter().any(|v| v.is_nan()))
    {
        return Err(Error::NonFiniteLogits {
            position: first_position + r as u32,
        });
    }
    Ok(result)
}
