//! The Gemma forward pass on the GPU.
//!
//! Reads like llama2.c's `forward`: embed → per layer (norm → q/k/v → per-head norm + RoPE →
//! attention over the KV cache → output projection → post-norm + residual → norm → gated
//! GELU MLP → post-norm + residual) → final norm → tied LM head → top-k. Every op is built
//! once at load (pipelines, bind groups, parameter buffers); a step only writes the step
//! parameters, the token ids and the RoPE rows, then records every dispatch into **one compute
//! pass and one submit**. Only the top-k candidates come back to the CPU.
//!
//! Gemma 4 adds (GEMMA.md §2.4–2.5): per-layer inputs (a row of the per-layer-embedding table,
//! read from the mapped file on the CPU, plus a projection of the embedding), a PLE block and a
//! layer scalar at the end of every layer, and KV sharing: the last `shared_kv_layers` layers
//! compute no K/V and attend over the cache of the last earlier layer of their type. Those
//! layers write nothing another row needs, so a prompt runs them on its last token only: the
//! step's last row is moved to row 0 and they run as a one-token step (`step_tail`).
//!
//! Where things live: `plan` (what the file asks for, checked against the device before any
//! upload), `weights` (the upload), `buffers` (activations and the residual arena), `layer`
//! (one layer's ops and their order), `head` (per-layer inputs, final norm, LM head, top-k),
//! `step` (recording and running a step).

pub mod assistant;
mod buffers;
pub mod config;
pub mod drafter;
mod head;
mod layer;
mod plan;
mod step;
mod weights;

pub use assistant::{check_assistant, AssistantConfig, ASSISTANT_ARCH};
pub use buffers::MAX_PENALTY_TOKENS;
pub use config::{Arch, LayerConfig, ModelConfig};
pub use drafter::{Drafter, HiddenRow, MAX_DRAFT_TOKENS};
pub use plan::{check, preflight, Preflight};

use std::sync::Arc;

use crate::gguf::{Gguf, RowSource, TensorSource};
use crate::gpu::{Ablation, GpuContext, Profile, Profiler};
use crate::kernels::embed::{Embed, EmbedIo};
use crate::kernels::logits::{Logits, MAX_K};
use crate::kernels::ple::LastRowToFront;
use crate::rope::RopeTable;
use crate::{Error, Result};
use buffers::{Activations, Slot};
use head::{Head, PleInput};
use layer::{build_layer, KvCaches, LayerCache, LayerEnv, LayerOps};
use plan::attention_params;
use step::{PendingStep, StepHead};
use weights::Weights;

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
    /// Least keys per attention split, decode and prompt kernels alike (0: each kernel's
    /// default); for tuning.
    pub attention_split_keys: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            context: None,
            prefill_chunk: 128,
            max_candidates: 64,
            rows: None,
            kv_f32: false,
            attention_split_keys: 0,
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

/// The next-token candidates of one position: ids and logits, best first, plus the
/// log-sum-exp of the whole row (so probabilities are exact without the full row).
pub use crate::kernels::logits::TopK as Candidates;
pub use crate::kernels::sample::VocabSampling;

/// Most rows one `score` step runs through the LM head (its logits are `[rows, V]` f32).
const SCORE_ROWS: u32 = 64;

/// A loaded model: weights on the GPU, the KV cache, and every op of the forward pass.
pub struct Model {
    pub cfg: ModelConfig,
    ctx: Arc<GpuContext>,
    /// Tokens the KV cache holds.
    pub context: u32,
    chunk: u32,
    max_candidates: u32,
    /// The KV cache holds f32 (`LoadOptions::kv_f32`).
    kv_f32: bool,
    /// Tokens already in the KV cache (the next token's position).
    pos: u32,
    /// One past the highest position stored since the last reset (above `pos` after a
    /// rewind): what a sliding-window ring may have overwritten.
    stored: u32,
    acts: Activations,
    embed: Embed,
    ple: Option<PleInput>,
    layers: Vec<LayerOps>,
    /// Each layer's own KV cache (K, V), `None` for a KV-shared layer: an MTP assistant's
    /// layers read them too.
    caches: KvCaches,
    /// Moves the last row of `h` and of the per-layer inputs to row 0 before the KV-shared
    /// layers run on a prompt's last token.
    to_front: Vec<LastRowToFront>,
    head: Head,
    score_head: Option<Head>,
    ropes: Vec<RopeTable>,
    weights: Weights,
    memory: MemoryReport,
    rope_scratch: Vec<f32>,
    /// Where each step's top-k rows are copied for the CPU (reused: no per-token allocation).
    readback: wgpu::Buffer,
    /// Per-op GPU timestamps of every step while profiling (benchmarks).
    profiler: Option<Profiler>,
    /// Ops left out of every step or recorded twice (`ablate`).
    ablation: Ablation,
    /// The next decode step, recorded while the GPU ran the last one.
    pending: Option<PendingStep>,
    /// CPU seconds spent recording and submitting steps (benchmarks: what encoding costs).
    encode_seconds: f64,
}

impl Model {
    /// Uploads the weights named by `gguf` from `src` (in file order, so a streaming source
    /// works) and builds every op. `progress(done, total)` is called after each tensor.
    pub async fn load<S: TensorSource>(
        ctx: Arc<GpuContext>,
        gguf: &Gguf,
        src: &mut S,
        opts: &LoadOptions,
        progress: impl FnMut(u64, u64),
    ) -> Result<Model> {
        // Everything the header decides (shapes, types, every buffer against the device's
        // limits) is refused here, before the first byte is uploaded.
        let (cfg, wanted) = plan::plan(gguf)?;
        plan::check_against(gguf, &cfg, &wanted, &ctx.caps, opts)?;
        let (context, chunk) = plan::sizes(&cfg, opts)?;
        let max_candidates = opts.max_candidates.clamp(1, MAX_K);
        let rows = match (cfg.ple_dim > 0, &opts.rows) {
            (false, _) => None,
            (true, Some(r)) => Some(r.clone()),
            (true, None) => {
                return Err(Error::InvalidArgument(
                    "this model keeps its per-layer embedding table in the file: loading it needs random access to the file (LoadOptions::rows)".into(),
                ))
            }
        };
        let weights = weights::upload(&ctx, gguf, src, &wanted, progress).await?;
        let ple_table = match rows {
            Some(r) => Some((r, gguf.tensor("per_layer_token_embd.weight")?.clone())),
            None => None,
        };
        // The ops only name their kernels; the pipelines then compile as one batch (on every
        // core natively, off the page's thread in a browser) instead of one after another.
        ctx.defer_compilation();
        let built = Self::build(
            ctx.clone(),
            cfg,
            context,
            chunk,
            max_candidates,
            opts,
            weights,
            ple_table,
        );
        let mut model = match built {
            Ok(model) => model,
            Err(e) => {
                ctx.discard_deferred();
                return Err(e);
            }
        };
        ctx.compile_deferred().await?;
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
        opts: &LoadOptions,
        mut weights: Weights,
        ple_table: Option<(Arc<dyn RowSource>, crate::gguf::TensorInfo)>,
    ) -> Result<Model> {
        let kv_f32 = opts.kv_f32;
        let mut memory = std::mem::take(&mut weights.memory);
        let (ropes, rope_of_layer) = buffers::rope_tables(&cfg, &weights.host)?;
        let attention: Vec<_> = (0..cfg.layers.len())
            .map(|l| attention_params(&cfg, l, context, chunk, kv_f32))
            .collect();
        let acts = Activations::new(&ctx, &cfg, chunk, &attention, &ropes)?;
        memory.activations = acts.bytes;

        let embed = Embed::new(
            &ctx,
            weights.matrix("token_embd.weight")?,
            EmbedIo {
                tokens: acts.tokens.as_entire_binding(),
                out: acts.arena.as_entire_binding(),
                step: acts.step.as_entire_binding(),
            },
            cfg.embed_scale,
        )?;
        let ple = match ple_table {
            Some((rows, table)) => PleInput::new(&ctx, &cfg, &weights, &acts, rows, table)?,
            None => None,
        };
        let env = LayerEnv {
            ctx: &ctx,
            cfg: &cfg,
            weights: &weights,
            acts: &acts,
            context,
            chunk,
            kv_f32,
            attention_split_keys: opts.attention_split_keys,
            rope_of_layer: &rope_of_layer,
        };
        let mut caches: KvCaches = Vec::new();
        let mut layers = Vec::with_capacity(cfg.layers.len());
        for (l, lc) in cfg.layers.iter().enumerate() {
            let cache = if lc.shares_kv(l) {
                let (k, v) = caches[lc.kv_source].as_ref().ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "layer {l} reads the KV cache of layer {}, which has none",
                        lc.kv_source
                    ))
                })?;
                LayerCache::Read {
                    k,
                    v,
                    params: attention[l],
                }
            } else {
                LayerCache::Own
            };
            let (ops, own) = build_layer(&env, l, cache)?;
            memory.kv_cache += own.iter().map(|(k, v)| k.size() + v.size()).sum::<u64>();
            caches.push(own);
            layers.push(ops);
        }
        memory.largest_buffer = caches
            .iter()
            .flatten()
            .map(|(k, _)| k.size())
            .fold(memory.largest_buffer, u64::max);

        let mut to_front = Vec::new();
        if cfg.has_kv_sharing() {
            to_front.push(LastRowToFront::new(
                &ctx,
                acts.arena.as_entire_binding(),
                acts.step.as_entire_binding(),
                cfg.hidden,
            )?);
            if let Some(pb) = &acts.ple {
                to_front.push(LastRowToFront::new(
                    &ctx,
                    pb.out.as_entire_binding(),
                    acts.step.as_entire_binding(),
                    cfg.n_layers * cfg.ple_dim,
                )?);
            }
        }

        let head = Head::new(&ctx, &cfg, &weights, &acts, max_candidates, None)?;
        // Top-k rows of the largest score step, mapped and unmapped every step.
        let readback = ctx.create_buffer(&wgpu::BufferDescriptor {
            label: Some("topk readback"),
            size: Logits::out_bytes(SCORE_ROWS, MAX_K),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })?;
        debug_assert_eq!(acts.slot(Slot::H), 0, "the embedding writes h at row 0");
        Ok(Model {
            cfg,
            ctx,
            context,
            chunk,
            max_candidates,
            kv_f32,
            pos: 0,
            stored: 0,
            acts,
            embed,
            ple,
            layers,
            caches,
            to_front,
            head,
            score_head: None,
            ropes,
            weights,
            memory,
            rope_scratch: Vec::new(),
            readback,
            profiler: None,
            ablation: Ablation::default(),
            pending: None,
            encode_seconds: 0.0,
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

    /// Draws the next tokens on the GPU from the whole vocabulary with these settings
    /// (`kernels::sample`; [`Candidates::drawn`] holds the token), or stops (`None`). Each
    /// step draws with the seed of the last [`Model::set_draw_seed`].
    pub fn set_vocab_sampling(&mut self, s: Option<VocabSampling>) -> Result<()> {
        self.head.set_vocab_sampling(&self.ctx, s.as_ref())
    }

    /// Constrained decoding: only the tokens whose bits are set in `allowed` (`[⌈V/32⌉]` u32,
    /// bit `i % 32` of word `i / 32` for token `i`) can come out of the next steps; `None`
    /// lifts the constraint. Write it before every step (it changes with each token).
    pub fn set_allowed_tokens(&mut self, allowed: Option<&[u32]>) -> Result<()> {
        let Some((_, buffer)) = &self.head.token_mask else {
            return Ok(());
        };
        match allowed {
            None => self.head.constrained = false,
            Some(words) => {
                let want = self.cfg.vocab.div_ceil(32) as usize;
                if words.len() != want {
                    return Err(Error::InvalidArgument(format!(
                        "the allowed-token mask has {} words, the vocabulary needs {want}",
                        words.len()
                    )));
                }
                self.ctx
                    .queue
                    .write_buffer(buffer, 0, bytemuck::cast_slice(words));
                self.head.constrained = true;
            }
        }
        Ok(())
    }

    /// The random seed of the next full-vocabulary draw.
    pub fn set_draw_seed(&mut self, seed: u64) {
        if let Some(s) = &self.head.vocab_sampler {
            s.set_seed(&self.ctx, seed);
        }
    }

    /// Tokens in the KV cache (the position of the next token).
    pub fn position(&self) -> u32 {
        self.pos
    }

    /// Forgets the KV cache (the next token is position 0).
    pub fn reset(&mut self) {
        self.pos = 0;
        self.stored = 0;
    }

    /// Rolls the cache back to `n` tokens: the next step runs at position `n` as if nothing
    /// after it had been fed (a chat's re-rendered history, speculative decoding's rejected
    /// drafts). Possible while every sliding-window ring still holds the `W − 1` keys before
    /// position `n`: a ring of `W + C − 1` slots (`C` the prefill chunk) keeps them for a
    /// rollback of up to `C` tokens past the highest position stored, and a context no longer
    /// than the ring never overwrites anything. Returns `false` (and changes nothing) when a
    /// fresh prefill is needed instead.
    pub fn rewind(&mut self, n: u32) -> bool {
        let ok = n <= self.pos && self.rings_hold(n);
        if ok {
            self.pos = n;
        }
        ok
    }

    /// Most tokens [`Model::rewind`] can always roll back from the highest position stored
    /// (`u32::MAX` when no ring ever overwrites a key: no sliding layer, or a context within
    /// the ring).
    pub fn max_rewind(&self) -> u32 {
        let w = self.cfg.sliding_window;
        self.ring_slots()
            .filter(|&cap| cap < self.context)
            .map(|cap| (cap + 1).saturating_sub(w))
            .min()
            .unwrap_or(u32::MAX)
    }

    /// Whether a step at position `n` finds every key it reads: positions `n − W + 1 … n − 1`
    /// of a ring of `cap` slots survive while nothing at or past their position + `cap` was
    /// stored.
    fn rings_hold(&self, n: u32) -> bool {
        let first_needed = (n + 1).saturating_sub(self.cfg.sliding_window);
        self.ring_slots()
            .all(|cap| first_needed as u64 + cap as u64 >= self.stored as u64)
    }

    /// The KV-cache slots of every sliding-window layer.
    fn ring_slots(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.cfg.layers.len())
            .filter(|&l| self.cfg.layers[l].sliding)
            .map(|l| plan::cache_slots(&self.cfg, l, self.context, self.chunk))
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
        self.check_score_k(k)?;
        self.reset();
        self.check_room(tokens.len())?;
        self.check_ids(tokens)?;
        let rows = self.score_rows();
        let mut out = Vec::with_capacity(tokens.len());
        for part in tokens.chunks(rows as usize) {
            out.extend(self.score_step(part, k).await?);
        }
        Ok(out)
    }

    /// Feeds `tokens` at the current position in one step and returns the top-`k` candidates
    /// after every one of them: speculative decoding's verify step, which checks a drafted
    /// continuation (the last sampled token and the drafts after it) in a single pass over the
    /// weights. At most [`Model::max_verify_tokens`] tokens. No repetition penalty is applied
    /// (each row would need its own window of recent tokens). Rejected drafts are dropped with
    /// [`Model::rewind`].
    pub async fn verify(&mut self, tokens: &[u32], k: u32) -> Result<Vec<Candidates>> {
        self.check_score_k(k)?;
        if tokens.is_empty() || tokens.len() > self.max_verify_tokens() as usize {
            return Err(Error::InvalidArgument(format!(
                "a verify step takes 1..={} tokens, got {}",
                self.max_verify_tokens(),
                tokens.len()
            )));
        }
        self.check_room(tokens.len())?;
        self.check_ids(tokens)?;
        self.score_step(tokens, k).await
    }

    /// Most tokens one [`Model::verify`] step takes.
    pub fn max_verify_tokens(&self) -> u32 {
        self.score_rows()
    }

    fn check_score_k(&self, k: u32) -> Result<()> {
        if k == 0 || k > self.max_candidates {
            return Err(Error::InvalidArgument(format!(
                "top-k must be 1..={}",
                self.max_candidates
            )));
        }
        Ok(())
    }

    /// Rows per scoring step: the [rows, V] logits must fit one binding.
    fn score_rows(&self) -> u32 {
        let row_bytes = self.cfg.vocab as u64 * 4;
        self.chunk
            .min(SCORE_ROWS)
            .min((self.ctx.caps.max_binding / row_bytes).max(1) as u32)
    }

    /// One step over `tokens` (at most [`Model::score_rows`]) with candidates after each.
    async fn score_step(&mut self, tokens: &[u32], k: u32) -> Result<Vec<Candidates>> {
        let rows = self.score_rows();
        if self.score_head.as_ref().is_none_or(|h| h.rows < rows) {
            self.score_head = Some(Head::new(
                &self.ctx,
                &self.cfg,
                &self.weights,
                &self.acts,
                self.max_candidates,
                Some(rows),
            )?);
        }
        let mut got = self.run_step(tokens, StepHead::Score, &[], 1.0).await?;
        for c in got.iter_mut() {
            c.ids.truncate(k as usize);
            c.values.truncate(k as usize);
        }
        Ok(got)
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

    /// Starts (or, with `false`, stops) recording per-op GPU times of every step. Fails when
    /// the device has no timestamp queries inside passes.
    pub fn set_profiling(&mut self, on: bool) -> Result<()> {
        self.pending = None;
        self.profiler = if on {
            // Ops per step: at most about 20 per layer plus the embedding and the head.
            Some(Profiler::new(&self.ctx, 32 * self.cfg.n_layers + 64)?)
        } else {
            None
        };
        Ok(())
    }

    /// Leaves the ops named in `skip` (`attention`, `ffn_down`, …: see `Recorder::op`) out of
    /// every step from now on, and records those in `double` twice in a row: ablations for
    /// benchmarks, where the change in wall time is what those ops cost in the dependent chain
    /// of a step (GPU timestamps between ops overstate short ops) — a doubled op's second run
    /// follows itself, on the weights and data its first run just read. The model's outputs are
    /// meaningless while any op is skipped or doubled.
    pub fn ablate(&mut self, skip: Vec<String>, double: Vec<String>) {
        self.pending = None;
        self.ablation = Ablation {
            skip,
            double,
            ..Default::default()
        };
    }

    /// Names given to [`Model::ablate`] that matched no op of the steps run since, with the
    /// names that exist: `None` when every name matched.
    pub fn unknown_ablated_ops(&self) -> Option<(Vec<String>, Vec<String>)> {
        let unknown = self.ablation.unknown();
        (!unknown.is_empty()).then(|| {
            (
                unknown.into_iter().map(String::from).collect(),
                self.ablation.seen.iter().map(|s| s.to_string()).collect(),
            )
        })
    }

    /// CPU seconds spent so far recording and submitting steps (the step's uploads, its
    /// compute pass and the submit; not the wait for the GPU).
    pub fn encode_seconds(&self) -> f64 {
        self.encode_seconds
    }

    /// Per-op GPU times collected since profiling started or was last taken.
    pub fn take_profile(&mut self) -> Option<Profile> {
        self.profiler.as_mut().map(Profiler::take)
    }
}
