//! Whole-model benchmark: prefill and decode speed (medians over repeats), time to first token
//! through the generation API, dispatches and bytes per token, the bandwidth that implies, and
//! a per-op GPU time breakdown from timestamp queries. Tokens are fed greedily and end tokens
//! are ignored, like `llama-bench`, so every run decodes exactly `gen` tokens.

use web_time::Instant;

use super::kernels::{copy_bandwidth, CopyBandwidth};
use crate::generate::Generation;
use crate::gpu::{dispatch_count, OpTime, Profile};
use crate::model::{Candidates, Drafter, HiddenRow, Model, MAX_DRAFT_TOKENS};
use crate::sampler::SamplingParams;
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};

/// Version of the JSON layout (BENCHMARKS.md documents it); bumped on any incompatible change.
pub const SCHEMA: u32 = 1;

/// Phone memory bandwidths the decode figure is extrapolated to (GB/s): iPhone-class GPUs.
pub const PHONE_BANDWIDTHS_GB_S: [f64; 2] = [60.0, 76.0];

/// What to measure. [`ModelBenchOptions::check`] says whether [`run`] can honour it, and
/// [`ModelBenchOptions::context_needed`] how many tokens the model's KV cache must hold.
/// The browser passes them as JS objects, camelCase (`Gemma.bench`); omitted fields take the
/// defaults.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ModelBenchOptions {
    /// Prompt tokens of the prefill (at least 1).
    pub prompt_len: u32,
    /// Tokens decoded per run (at least 1).
    pub gen: u32,
    /// Timed runs (after one untimed warm-up run; at least 1).
    pub repeat: u32,
    /// Decode steps run with per-op timestamps (0: no breakdown).
    pub profile_tokens: u32,
    /// Bytes per element of the KV cache (2: f16, 4: f32), for the bytes-per-token estimate.
    pub kv_elem_bytes: u32,
    /// Measure the device's copy bandwidth as the yardstick.
    pub copy_bandwidth: bool,
    /// Profile labels of ops left out of every step (an ablation: see `Model::ablate`).
    pub skip_ops: Vec<String>,
    /// Profile labels of ops recorded twice in every step (see `Model::ablate`).
    pub double_ops: Vec<String>,
    /// With a drafter: the largest draft length whose costs are measured (1..=this; 0 without
    /// a drafter).
    pub draft_tokens: u32,
}

impl Default for ModelBenchOptions {
    fn default() -> Self {
        Self {
            prompt_len: 512,
            gen: 128,
            repeat: 3,
            profile_tokens: 32,
            kv_elem_bytes: 2,
            copy_bandwidth: true,
            skip_ops: Vec::new(),
            double_ops: Vec::new(),
            draft_tokens: 0,
        }
    }
}

impl ModelBenchOptions {
    /// Refuses options [`run`] cannot honour, with a one-line reason naming the CLI option.
    pub fn check(&self) -> Result<()> {
        let bad = |msg: &str| Err(Error::InvalidArgument(msg.into()));
        if self.prompt_len == 0 {
            return bad("--prompt-len must be at least 1: the prefill needs a prompt");
        }
        if self.gen == 0 {
            return bad("--gen must be at least 1: the decode speed needs a decoded token");
        }
        if self.repeat == 0 {
            return bad("--repeat must be at least 1: medians need a timed run");
        }
        self.context_needed().map(|_| ())
    }

    /// Decode steps after the prompt in the longest run: the timed runs decode `gen` tokens
    /// (the warm-up and the dispatch count at most that), the profile `profile_tokens`; the
    /// time-to-first-token requests only prefill.
    fn decode_steps(&self) -> u32 {
        // With drafts: a verify step of `draft_tokens + 1` after the prompt and a decode step.
        let verify = if self.draft_tokens > 0 {
            self.draft_tokens + 2
        } else {
            0
        };
        self.gen.max(self.profile_tokens).max(verify)
    }

    /// Tokens the KV cache must hold for every run [`run`] performs: the prompt plus the
    /// longest decode after it.
    pub fn context_needed(&self) -> Result<u32> {
        let needed = self.prompt_len as u64 + self.decode_steps() as u64;
        u32::try_from(needed).map_err(|_| {
            Error::InvalidArgument(format!(
                "this bench needs a context of {needed} tokens ({}), more than any model holds",
                self.context_reason()
            ))
        })
    }

    /// Refuses a KV cache of `context` tokens that is too small for this bench.
    pub fn check_context(&self, context: u32) -> Result<()> {
        let needed = self.context_needed()?;
        if context < needed {
            return Err(Error::InvalidArgument(format!(
                "a context of {context} tokens is too small for this bench, which needs {needed} ({})",
                self.context_reason()
            )));
        }
        Ok(())
    }

    /// Where [`ModelBenchOptions::context_needed`] comes from, in CLI options.
    pub fn context_reason(&self) -> String {
        let (g, t) = (self.gen, self.profile_tokens);
        let steps = if t > g {
            format!("--profile-tokens {t} profiled decode steps")
        } else {
            format!("--gen {g} decode steps")
        };
        format!("--prompt-len {} + {steps}", self.prompt_len)
    }
}

/// A rate measured over several runs.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Rate {
    /// Median over the timed runs.
    pub tokens_per_s: f64,
    /// Seconds of each timed run.
    pub runs_s: Vec<f64>,
}

/// Bytes one decode step reads from memory.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BytesPerToken {
    /// Every weight on the GPU (all are read once per token; the tied LM head included).
    pub weights: u64,
    /// Gemma 4's per-layer-embedding row, read from the file on the CPU.
    pub per_layer_row: u64,
    /// K and V read by attention, at the mean position of the decode runs.
    pub kv_cache: u64,
    pub total: u64,
}

/// One op's share of a step, per token (decode) or per prompt (prefill).
#[derive(Clone, Debug, serde::Serialize)]
pub struct OpShare {
    pub op: &'static str,
    /// Calls per token (decode) or per prompt (prefill).
    pub calls: f64,
    /// GPU microseconds per token (decode) or per prompt (prefill).
    pub us: f64,
    /// Fraction of the profiled GPU time.
    pub share: f64,
}

/// Where the GPU time goes.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Breakdown {
    /// Decode: per token, largest first.
    pub decode: Vec<OpShare>,
    /// GPU microseconds per decode token (first to last timestamp of a step).
    pub decode_gpu_us_per_token: f64,
    /// Wall-clock microseconds per decode token in the timed runs; the gap to the GPU time is
    /// encoding, submission and the readback round trip.
    pub decode_wall_us_per_token: f64,
    /// Prefill of one prompt, largest first.
    pub prefill: Vec<OpShare>,
    pub prefill_gpu_ms: f64,
}

/// The decode speed a memory bandwidth allows at this many bytes per token.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PhoneBound {
    pub gb_per_s: f64,
    pub tokens_per_s: f64,
}

/// Everything `bench` measures on a loaded model.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ModelBench {
    pub prompt_tokens: u32,
    pub generated_tokens: u32,
    pub repeat: u32,
    pub prefill: Rate,
    pub decode: Rate,
    /// Median, warm: a request through the generation API (prefill, first sample, first piece).
    pub time_to_first_token_s: f64,
    /// The first request after loading (includes any first-use cost).
    pub time_to_first_token_cold_s: f64,
    pub dispatches_per_decode_token: f64,
    pub dispatches_per_prefill: f64,
    /// CPU µs per decode token spent recording and submitting the step (median run): the
    /// part of the wall time the GPU cannot overlap, since each step waits for the last.
    pub decode_encode_us_per_token: f64,
    pub bytes_per_decode_token: BytesPerToken,
    /// `bytes_per_decode_token.total` × decode tokens/s.
    pub achieved_gb_per_s: f64,
    pub copy_bandwidth: Option<CopyBandwidth>,
    /// `achieved_gb_per_s` ÷ the measured copy bandwidth.
    pub bandwidth_fraction: Option<f64>,
    /// Decode tok/s if bound only by `bytes_per_decode_token` at phone bandwidths.
    pub phone_bound: Vec<PhoneBound>,
    /// `None` when the adapter has no timestamp queries inside passes (see `breakdown_note`).
    pub breakdown: Option<Breakdown>,
    pub breakdown_note: Option<String>,
    /// Ops left out of every step (`--skip-ops`): the figures measure the model without them.
    pub skipped_ops: Vec<String>,
    /// Ops recorded twice in every step (`--double-ops`): the figures measure the model with
    /// each of them run a second time right after the first.
    pub doubled_ops: Vec<String>,
    /// With a drafter (`bench --draft`): what speculative decoding costs and would give.
    pub draft: Option<DraftBench>,
}

/// Speculative decoding on this GPU: the cost of its two halves per draft length, and the
/// decode speed they give at a range of acceptance (with random weights almost nothing is
/// accepted, so the speed-up a real assistant gives is projected from the costs, not measured).
#[derive(Clone, Debug, serde::Serialize)]
pub struct DraftBench {
    /// ms of one decode step (1 ÷ the decode rate above).
    pub decode_step_ms: f64,
    pub costs: Vec<DraftCost>,
    /// Decode speed if a round yields this many tokens on average (the kept drafts plus the
    /// model's own), at the best draft length for it.
    pub projections: Vec<DraftProjection>,
    /// A drafted greedy run of `--gen` tokens on the bench prompt (with this file's weights).
    pub run: DraftRun,
    /// Where the GPU time of a verify step goes, op by op, next to a decode step's (GPU
    /// timestamps; `None` where the adapter has none).
    pub verify_breakdown: Option<VerifyBreakdown>,
}

/// Per-op GPU time of one decode step and of one verify step (medians of nothing: sums over
/// `--repeat` steps, divided by it).
#[derive(Clone, Debug, serde::Serialize)]
pub struct VerifyBreakdown {
    /// Tokens of the verify step.
    pub tokens: u32,
    pub decode_gpu_us: f64,
    pub decode: Vec<OpShare>,
    pub verify_gpu_us: f64,
    pub verify: Vec<OpShare>,
}

/// Medians over `--repeat` calls, after the prompt, wall time (submit to readback).
#[derive(Clone, Debug, serde::Serialize)]
pub struct DraftCost {
    /// Drafts.
    pub k: u32,
    /// The assistant drafting `k` tokens (one submit).
    pub draft_ms: f64,
    /// The model verifying `k + 1` tokens in one step.
    pub verify_ms: f64,
    /// `verify_ms` ÷ one decode step.
    pub verify_over_decode_step: f64,
    /// `draft_ms + verify_ms`.
    pub round_ms: f64,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct DraftProjection {
    pub tokens_per_round: f64,
    pub best_k: u32,
    pub tokens_per_s: f64,
    /// Against plain decoding.
    pub speedup: f64,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct DraftRun {
    pub draft_tokens: u32,
    pub rounds: usize,
    pub acceptance_rate: f64,
    pub tokens_per_round: f64,
    pub decode_tokens_per_s: f64,
}

/// Tokens per round the projections are made for.
pub const DRAFT_TOKENS_PER_ROUND: [f64; 4] = [1.5, 2.0, 2.5, 3.0];

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => 0.0,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// A deterministic prompt of `n` ids: BOS, then ids spread over the vocabulary (a bench needs
/// no meaning, only real embedding rows and attention over `n` positions).
pub fn bench_prompt(n: u32, vocab: u32) -> Vec<u32> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..n)
        .map(|i| {
            if i == 0 {
                return 2.min(vocab - 1);
            }
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let lo = 256.min(vocab / 2);
            lo + ((x >> 33) as u32) % (vocab - lo)
        })
        .collect()
}

/// `steps` single-token steps, each feeding the previous step's most likely token.
async fn decode_greedy(model: &mut Model, mut c: Candidates, steps: u32) -> Result<()> {
    for _ in 0..steps {
        let next = c.ids.first().copied().unwrap_or(0);
        c = model.forward(&[next], &[], 1.0).await?;
    }
    Ok(())
}

/// Prefill + greedy decode of `gen` tokens from position 0. Returns (prefill s, decode s,
/// CPU s spent encoding the decode steps).
async fn run_once(model: &mut Model, prompt: &[u32], gen: u32) -> Result<(f64, f64, f64)> {
    model.reset();
    let t0 = Instant::now();
    let c = model.forward(prompt, &[], 1.0).await?;
    let prefill = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let e0 = model.encode_seconds();
    decode_greedy(model, c, gen).await?;
    Ok((
        prefill,
        t1.elapsed().as_secs_f64(),
        model.encode_seconds() - e0,
    ))
}

/// Seconds from a request to its first piece through the generation API.
async fn first_token(model: &mut Model, tok: &Tokenizer, prompt: &[u32]) -> Result<f64> {
    model.reset();
    let t0 = Instant::now();
    let mut g = Generation::start(model, tok, prompt, SamplingParams::greedy(), 1).await?;
    g.next(model, tok).await?;
    Ok(t0.elapsed().as_secs_f64())
}

/// Ops largest first, scaled to one token (`per` = tokens or prompts profiled).
fn shares(ops: &[OpTime], per: f64, total_us: f64) -> Vec<OpShare> {
    let mut v: Vec<OpShare> = ops
        .iter()
        .map(|o| OpShare {
            op: o.op,
            calls: o.calls as f64 / per,
            us: o.total_us / per,
            share: if total_us > 0.0 {
                o.total_us / total_us
            } else {
                0.0
            },
        })
        .collect();
    v.sort_by(|a, b| b.us.total_cmp(&a.us));
    v
}

/// K and V bytes attention reads for one token at position `pos`.
fn kv_bytes_at(model: &Model, pos: u32, elem: u32) -> u64 {
    let cfg = &model.cfg;
    cfg.layers
        .iter()
        .map(|l| {
            let seen = if l.sliding {
                (pos + 1).min(cfg.sliding_window)
            } else {
                pos + 1
            };
            seen as u64 * l.n_kv_heads as u64 * l.head_dim as u64 * 2 * elem as u64
        })
        .sum()
}

/// Runs the benchmark on a loaded model, whose KV cache must hold
/// [`ModelBenchOptions::context_needed`] tokens (refused at once otherwise).
pub async fn run(
    model: &mut Model,
    drafter: Option<&mut Drafter>,
    tok: &Tokenizer,
    opts: &ModelBenchOptions,
) -> Result<ModelBench> {
    opts.check()?;
    opts.check_context(model.context)?;
    let prompt = bench_prompt(opts.prompt_len, model.cfg.vocab);
    let repeat = opts.repeat;
    model.ablate(opts.skip_ops.clone(), opts.double_ops.clone());

    let ttft_cold = first_token(model, tok, &prompt).await?;
    // Warm-up. After it a prefill and decode steps have run, so every op name has been seen.
    run_once(model, &prompt, opts.gen.min(8)).await?;
    if let Some((unknown, known)) = model.unknown_ablated_ops() {
        return Err(Error::InvalidArgument(format!(
            "--skip-ops/--double-ops: no op named {} in this model's steps (its ops: {})",
            unknown
                .iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", "),
            known.join(", ")
        )));
    }

    let mut prefill_s = Vec::new();
    let mut decode_s = Vec::new();
    let mut encode_s = Vec::new();
    let mut ttft = Vec::new();
    for _ in 0..repeat {
        let (p, d, e) = run_once(model, &prompt, opts.gen).await?;
        prefill_s.push(p);
        decode_s.push(d);
        encode_s.push(e);
        ttft.push(first_token(model, tok, &prompt).await?);
    }
    let n_prompt = prompt.len() as f64;
    let prefill = Rate {
        tokens_per_s: n_prompt / median(&prefill_s).max(1e-12),
        runs_s: prefill_s,
    };
    let decode = Rate {
        tokens_per_s: opts.gen as f64 / median(&decode_s).max(1e-12),
        runs_s: decode_s,
    };
    let decode_encode_us_per_token = median(&encode_s) * 1e6 / opts.gen.max(1) as f64;

    // Dispatch counts: one prefill, then single-token steps.
    model.reset();
    let d0 = dispatch_count();
    let c = model.forward(&prompt, &[], 1.0).await?;
    let d1 = dispatch_count();
    let steps = opts.gen.min(8);
    decode_greedy(model, c, steps).await?;
    let d2 = dispatch_count();

    let mem = model.memory().clone();
    let per_layer_row = mem
        .groups
        .iter()
        .find(|g| g.mapped_bytes > 0)
        .map_or(0, |g| g.mapped_bytes / model.cfg.vocab as u64);
    let mid = opts.prompt_len + opts.gen / 2;
    let kv_cache = kv_bytes_at(model, mid, opts.kv_elem_bytes);
    let bytes = BytesPerToken {
        weights: mem.weights,
        per_layer_row,
        kv_cache,
        total: mem.weights + per_layer_row + kv_cache,
    };
    let achieved = bytes.total as f64 * decode.tokens_per_s / 1e9;
    let copy = if opts.copy_bandwidth {
        Some(copy_bandwidth(model.gpu()).await?)
    } else {
        None
    };
    let fraction = copy.as_ref().map(|c| achieved / c.gb_per_s);

    let (breakdown, breakdown_note) = if opts.profile_tokens == 0 {
        (None, Some("not requested".to_string()))
    } else {
        match model.set_profiling(true) {
            Err(e) => (None, Some(e.to_string())),
            Ok(()) => {
                let b = profile(model, &prompt, opts.profile_tokens, &decode).await;
                model.set_profiling(false)?;
                (Some(b?), None)
            }
        }
    };

    let draft = match drafter {
        Some(d) => Some(bench_drafts(model, d, tok, &prompt, opts, &decode).await?),
        None => None,
    };

    Ok(ModelBench {
        prompt_tokens: prompt.len() as u32,
        generated_tokens: opts.gen,
        repeat,
        time_to_first_token_s: median(&ttft),
        time_to_first_token_cold_s: ttft_cold,
        dispatches_per_decode_token: (d2 - d1) as f64 / steps as f64,
        dispatches_per_prefill: (d1 - d0) as f64,
        decode_encode_us_per_token,
        achieved_gb_per_s: achieved,
        bandwidth_fraction: fraction,
        phone_bound: PHONE_BANDWIDTHS_GB_S
            .iter()
            .map(|&gb_per_s| PhoneBound {
                gb_per_s,
                tokens_per_s: gb_per_s * 1e9 / bytes.total.max(1) as f64,
            })
            .collect(),
        bytes_per_decode_token: bytes,
        copy_bandwidth: copy,
        prefill,
        decode,
        breakdown,
        breakdown_note,
        skipped_ops: opts.skip_ops.clone(),
        doubled_ops: opts.double_ops.clone(),
        draft,
    })
}

/// Measures [`DraftBench`]: for each draft length, drafting after a decode step and verifying
/// `k + 1` tokens after it (rolled back each time), then a drafted greedy run.
async fn bench_drafts(
    model: &mut Model,
    drafter: &mut Drafter,
    tok: &Tokenizer,
    prompt: &[u32],
    opts: &ModelBenchOptions,
    decode: &Rate,
) -> Result<DraftBench> {
    let max_k = opts.draft_tokens.clamp(
        1,
        MAX_DRAFT_TOKENS.min(model.max_verify_tokens().saturating_sub(1)),
    );
    let step_ms = 1e3 / decode.tokens_per_s.max(1e-9);
    model.reset();
    let c = model.forward(prompt, &[], 1.0).await?;
    let token = c.ids.first().copied().unwrap_or(0);
    let at = model.position();
    let k_out = model.max_candidates();
    let mut costs = Vec::new();
    for k in 1..=max_k {
        let batch: Vec<u32> = std::iter::repeat_n(token, k as usize + 1).collect();
        // Untimed once: first use of this row count compiles nothing, but warms the caches.
        drafter.draft(model, token, HiddenRow::Last, k).await?;
        model.verify(&batch, k_out).await?;
        model.rewind(at);
        let (mut draft_s, mut verify_s) = (Vec::new(), Vec::new());
        for _ in 0..opts.repeat {
            let t = Instant::now();
            drafter.draft(model, token, HiddenRow::Last, k).await?;
            draft_s.push(t.elapsed().as_secs_f64());
            let t = Instant::now();
            model.verify(&batch, k_out).await?;
            verify_s.push(t.elapsed().as_secs_f64());
            model.rewind(at);
        }
        let (draft_ms, verify_ms) = (median(&draft_s) * 1e3, median(&verify_s) * 1e3);
        costs.push(DraftCost {
            k,
            draft_ms,
            verify_ms,
            verify_over_decode_step: verify_ms / step_ms,
            round_ms: draft_ms + verify_ms,
        });
    }
    let projections = DRAFT_TOKENS_PER_ROUND
        .iter()
        .filter_map(|&tokens| {
            costs
                .iter()
                .filter(|c| c.k as f64 + 1.0 >= tokens)
                .map(|c| (c.k, tokens * 1e3 / c.round_ms))
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .map(|(k, tps)| DraftProjection {
                    tokens_per_round: tokens,
                    best_k: k,
                    tokens_per_s: tps,
                    speedup: tps / decode.tokens_per_s.max(1e-9),
                })
        })
        .collect();
    let verify_breakdown = match model.set_profiling(true) {
        Err(_) => None,
        Ok(()) => {
            let k = crate::model::drafter::DEFAULT_DRAFT_TOKENS.min(max_k);
            let batch: Vec<u32> = std::iter::repeat_n(token, k as usize + 1).collect();
            let per = opts.repeat.max(1) as f64;
            let profiled = async {
                model.rewind(at);
                model.take_profile();
                for _ in 0..opts.repeat {
                    model.forward(&[token], &[], 1.0).await?;
                    model.rewind(at);
                }
                let dec = model.take_profile().unwrap_or_default();
                for _ in 0..opts.repeat {
                    model.verify(&batch, k_out).await?;
                    model.rewind(at);
                }
                let ver = model.take_profile().unwrap_or_default();
                Ok::<_, Error>(VerifyBreakdown {
                    tokens: k + 1,
                    decode_gpu_us: dec.total_us / per,
                    decode: shares(&dec.ops, per, dec.total_us),
                    verify_gpu_us: ver.total_us / per,
                    verify: shares(&ver.ops, per, ver.total_us),
                })
            }
            .await;
            model.set_profiling(false)?;
            Some(profiled?)
        }
    };
    // A real drafted run, greedy, end tokens ignored as in the plain runs.
    let k = crate::model::drafter::DEFAULT_DRAFT_TOKENS.min(max_k);
    model.reset();
    let mut g = Generation::start(
        model,
        tok,
        prompt,
        SamplingParams::greedy(),
        opts.gen as usize,
    )
    .await?;
    g.set_draft_tokens(model, k)?;
    let t = Instant::now();
    let mut n = 0usize;
    while g
        .next_drafted(model, Some(&mut *drafter), tok)
        .await?
        .is_some()
    {
        n += 1;
    }
    let secs = t.elapsed().as_secs_f64();
    let s = g.stats();
    Ok(DraftBench {
        decode_step_ms: step_ms,
        costs,
        projections,
        run: DraftRun {
            draft_tokens: k,
            rounds: s.draft_rounds,
            acceptance_rate: s.acceptance_rate(),
            tokens_per_round: s.tokens_per_round(),
            decode_tokens_per_s: n.saturating_sub(1) as f64 / secs.max(1e-9),
        },
        verify_breakdown,
    })
}

/// One profiled prefill and `tokens` profiled decode steps.
async fn profile(
    model: &mut Model,
    prompt: &[u32],
    tokens: u32,
    decode: &Rate,
) -> Result<Breakdown> {
    model.reset();
    model.take_profile();
    let c = model.forward(prompt, &[], 1.0).await?;
    let pre: Profile = model.take_profile().unwrap_or_default();
    decode_greedy(model, c, tokens).await?;
    let dec: Profile = model.take_profile().unwrap_or_default();
    let per = tokens.max(1) as f64;
    Ok(Breakdown {
        decode: shares(&dec.ops, per, dec.total_us),
        decode_gpu_us_per_token: dec.total_us / per,
        decode_wall_us_per_token: 1e6 / decode.tokens_per_s.max(1e-12),
        prefill: shares(&pre.ops, 1.0, pre.total_us),
        prefill_gpu_ms: pre.total_us / 1000.0,
    })
}
