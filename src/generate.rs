//! Token generation: prefill the prompt, then sample, stream and feed back one token at a
//! time until an end token of the model, the token budget or the context limit. One async path
//! serves the CLI and the browser; callers pull pieces with `next`.
//!
//! With a drafter (a Gemma 4 MTP assistant, [`Generation::next_drafted`]) a step becomes a
//! round of speculative decoding: the assistant drafts `k` tokens after the last one, the
//! model verifies them all in one step, every draft up to the first the target's sampler
//! rejects is kept, plus the target's own token at the first rejection (or after the last
//! draft), and the KV cache is rolled back past the rest. Drafts are the assistant's argmax;
//! each is kept with probability `p(d)` under the target's sampling settings and otherwise
//! replaced by a draw from the target's distribution without it (`Sampler::verify_draft`), so
//! the tokens are distributed exactly as without a drafter, and greedy output is identical.

use std::collections::VecDeque;

use web_time::Instant;

use crate::constrain::OutputConstraint;
use crate::model::{Candidates, Drafter, HiddenRow, Model, MAX_DRAFT_TOKENS};
use crate::sampler::{Sampler, SamplingParams, Verdict};
use crate::tokenizer::{TokenStream, Tokenizer};
use crate::{Error, Result};

/// One generated token and the text it completed (may be empty while a multi-byte character
/// is still arriving).
#[derive(Clone, Debug, PartialEq)]
pub struct Piece {
    pub id: u32,
    pub text: String,
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Finish {
    /// The model produced one of its end tokens (this id).
    EndToken(u32),
    MaxTokens,
    /// The KV cache is full.
    ContextFull,
    /// The caller stopped it.
    Cancelled,
}

/// Timings of one generation.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Stats {
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    /// Seconds from the start of prefill to the first sampled token.
    pub time_to_first_token_s: f64,
    pub prefill_tokens_per_s: f64,
    /// Tokens per second after the first one.
    pub decode_tokens_per_s: f64,
    /// Speculative decoding: rounds run, tokens drafted, drafts kept.
    pub draft_rounds: usize,
    pub drafted_tokens: usize,
    pub accepted_drafts: usize,
}

impl Stats {
    /// Share of the drafted tokens the model kept (0 without drafting).
    pub fn acceptance_rate(&self) -> f64 {
        self.accepted_drafts as f64 / self.drafted_tokens.max(1) as f64
    }

    /// Tokens each round of speculative decoding produced on average: the kept drafts plus
    /// the model's own token (0 without drafting).
    pub fn tokens_per_round(&self) -> f64 {
        (self.accepted_drafts + self.draft_rounds) as f64 / self.draft_rounds.max(1) as f64
    }
}

/// The state of a generation in progress, without borrows: the model and tokenizer are passed
/// to every call, so a host that keeps them elsewhere (the browser engine, behind a JS handle)
/// can hold a generation across calls. [`Generator`] bundles the borrows for simple callers.
pub struct Generation {
    sampler: Sampler,
    /// Tokens are drawn on the GPU from the whole vocabulary (see [`Model::set_vocab_sampling`]).
    full_vocab: bool,
    /// Constrained decoding: what the output must match (its mask goes to the GPU each step).
    constraint: Option<OutputConstraint>,
    stream: TokenStream,
    next: Option<Candidates>,
    max_tokens: usize,
    produced: Vec<u32>,
    /// How many of `produced` went through the model (are in the KV cache); after a draft
    /// round it counts the kept drafts still waiting in `queue` too.
    fed: usize,
    /// The last token returned, to be fed at the start of the next call: a piece streams out
    /// as soon as it is sampled instead of one decode step later, and a stop costs no step.
    to_feed: Option<u32>,
    /// Tokens a draft round produced that have not been returned yet.
    queue: VecDeque<u32>,
    /// Drafts per round (0: no drafting).
    draft_tokens: u32,
    /// Which row of the model's last step the next draft round continues from.
    hidden: HiddenRow,
    /// The model's position after the prompt: `fed` tokens follow it in the cache.
    base_pos: u32,
    finish: Option<Finish>,
    stats: Stats,
    started: Instant,
    first_token_at: Option<Instant>,
}

impl Generation {
    /// Prefills `prompt` (appended at the model's current position) and gets ready to sample.
    pub async fn start(
        model: &mut Model,
        tok: &Tokenizer,
        prompt: &[u32],
        params: SamplingParams,
        max_tokens: usize,
    ) -> Result<Generation> {
        Self::start_constrained(model, tok, prompt, params, max_tokens, None).await
    }

    /// [`Generation::start`] with the output held to `constraint` (see [`crate::constrain`]).
    pub async fn start_constrained(
        model: &mut Model,
        tok: &Tokenizer,
        prompt: &[u32],
        params: SamplingParams,
        max_tokens: usize,
        mut constraint: Option<OutputConstraint>,
    ) -> Result<Generation> {
        let mut sampler = Sampler::new(params)?;
        if prompt.is_empty() {
            return Err(Error::InvalidArgument("the prompt is empty".into()));
        }
        if max_tokens == 0 {
            return Err(Error::InvalidArgument(
                "the most tokens to generate (--max-tokens, maxTokens) must be at least 1".into(),
            ));
        }
        let room = (model.context - model.position()) as usize;
        if prompt.len() > room {
            return Err(Error::ContextOverflow {
                tokens: model.position() as usize + prompt.len(),
                context: model.context as usize,
            });
        }
        // Settings that reach past the GPU's candidates draw on the GPU from the whole row.
        let full_vocab = params.needs_full_vocab(model.max_candidates());
        model.set_vocab_sampling(full_vocab.then(|| params.vocab_sampling()))?;
        if full_vocab {
            model.set_draw_seed(sampler.draw_seed());
        }
        match constraint.as_mut() {
            Some(c) => model.set_allowed_tokens(Some(c.mask()?))?,
            None => model.set_allowed_tokens(None)?,
        }
        let started = Instant::now();
        let candidates = model.forward(prompt, &[], 1.0).await?;
        let prefill_s = started.elapsed().as_secs_f64();
        Ok(Generation {
            sampler,
            full_vocab,
            constraint,
            stream: tok.stream(),
            next: Some(candidates),
            max_tokens,
            produced: Vec::new(),
            fed: 0,
            to_feed: None,
            queue: VecDeque::new(),
            draft_tokens: 0,
            hidden: HiddenRow::Last,
            base_pos: model.position(),
            finish: None,
            stats: Stats {
                prompt_tokens: prompt.len(),
                prefill_tokens_per_s: prompt.len() as f64 / prefill_s.max(1e-9),
                ..Default::default()
            },
            started,
            first_token_at: None,
        })
    }

    /// Drafts `k` tokens per round with the drafter [`Generation::next_drafted`] is given
    /// (1..=[`MAX_DRAFT_TOKENS`], and at most what one verify step of `model` takes).
    /// Without a repetition penalty only: each verified row would need its own window of
    /// recent tokens, so with one the generation decodes token by token.
    pub fn set_draft_tokens(&mut self, model: &Model, k: u32) -> Result<()> {
        let most = MAX_DRAFT_TOKENS.min(model.max_verify_tokens().saturating_sub(1));
        if k == 0 || k > most {
            return Err(Error::InvalidArgument(format!(
                "draft tokens must be 1..={most}, got {k}"
            )));
        }
        self.draft_tokens = k;
        Ok(())
    }

    /// The next piece, or `None` when generation has finished (see [`Generation::finish`]).
    pub async fn next(&mut self, model: &mut Model, tok: &Tokenizer) -> Result<Option<Piece>> {
        self.next_drafted(model, None, tok).await
    }

    /// [`Generation::next`], drafting with `drafter` (loaded for `model`) where a round can
    /// run: the tokens come out one by one either way.
    pub async fn next_drafted(
        &mut self,
        model: &mut Model,
        drafter: Option<&mut Drafter>,
        tok: &Tokenizer,
    ) -> Result<Option<Piece>> {
        if self.finish.is_some() || self.max_tokens == 0 {
            self.finish.get_or_insert(Finish::MaxTokens);
            return Ok(None);
        }
        if let Some(id) = self.queue.pop_front() {
            return self.emit(model, tok, id);
        }
        if let (Some(prev), Some(drafter)) = (self.to_feed, drafter) {
            let n = self.round_drafts(model);
            if n > 0 {
                self.to_feed = None;
                self.round(model, drafter, prev, n).await?;
                let id = self.queue.pop_front().expect("a round yields a token");
                return self.emit(model, tok, id);
            }
        }
        if let Some(prev) = self.to_feed.take() {
            let params = *self.sampler.params();
            let recent = if params.repeat_penalty != 1.0 {
                self.sampler.recent()
            } else {
                Vec::new()
            };
            if self.full_vocab {
                model.set_draw_seed(self.sampler.draw_seed());
            }
            if let Some(c) = &mut self.constraint {
                model.set_allowed_tokens(Some(c.mask()?))?;
            }
            self.next = Some(
                model
                    .forward(&[prev], &recent, params.repeat_penalty)
                    .await?,
            );
            self.fed = self.produced.len();
            self.hidden = HiddenRow::Last;
        }
        let Some(candidates) = self.next.take() else {
            return Ok(None);
        };
        let id = match (self.full_vocab, candidates.drawn) {
            (true, Some(id)) => id,
            (true, None) => return Err(Error::Readback("the step drew no token".into())),
            (false, _) => self.sampler.sample(&candidates.pairs())?,
        };
        self.emit(model, tok, id)
    }

    /// Drafts the next round may make: none without drafting, with a repetition penalty, with
    /// full-vocabulary sampling (a verify step reads back candidates, not draws), with a
    /// constraint (each verified row would need its own mask), or when too few tokens remain (the round's last token is always the model's own).
    fn round_drafts(&self, model: &Model) -> u32 {
        if self.draft_tokens == 0
            || self.sampler.params().repeat_penalty != 1.0
            || self.full_vocab
            || self.constraint.is_some()
        {
            return 0;
        }
        let budget = self.max_tokens.saturating_sub(self.produced.len()) as u32;
        let room = model.context.saturating_sub(model.position());
        self.draft_tokens
            .min(budget.saturating_sub(1))
            .min(room.saturating_sub(1))
    }

    /// One round: draft `n` tokens after `prev` (the last token returned, not yet fed), verify
    /// `prev` and the drafts in one step, keep what the sampler accepts, roll the rest back,
    /// and queue the kept drafts and the model's own token.
    async fn round(
        &mut self,
        model: &mut Model,
        drafter: &mut Drafter,
        prev: u32,
        n: u32,
    ) -> Result<()> {
        let p = model.position();
        let drafts: Vec<u32> = drafter
            .draft(model, prev, self.hidden, n)
            .await?
            .iter()
            .map(|c| c.ids[0])
            .collect();
        let mut batch = Vec::with_capacity(drafts.len() + 1);
        batch.push(prev);
        batch.extend(&drafts);
        let rows = model.verify(&batch, model.max_candidates()).await?;
        let mut kept = 0;
        let mut own = None;
        for (&d, row) in drafts.iter().zip(&rows) {
            match self.sampler.verify_draft(&row.pairs(), &[(d, 1.0)], d)? {
                Verdict::Accept => {
                    self.queue.push_back(d);
                    kept += 1;
                }
                Verdict::Replace(id) => {
                    own = Some(id);
                    break;
                }
            }
        }
        let own = match own {
            Some(id) => id,
            None => self.sampler.sample(&rows[kept].pairs())?,
        };
        self.queue.push_back(own);
        // `prev` and the kept drafts stay in the cache; the rest of the batch goes.
        if !model.rewind(p + kept as u32 + 1) {
            return Err(Error::InvalidArgument(format!(
                "the KV cache cannot roll back {} rejected drafts",
                n as usize - kept
            )));
        }
        self.fed = self.produced.len() + kept;
        self.hidden = HiddenRow::Verified(kept as u32);
        self.stats.draft_rounds += 1;
        self.stats.drafted_tokens += n as usize;
        self.stats.accepted_drafts += kept;
        Ok(())
    }

    /// Returns `id` as the next piece: the end of the generation if it is an end token, else
    /// the text it completes, feeding it at the next call unless a limit ends the generation.
    fn emit(&mut self, model: &mut Model, tok: &Tokenizer, id: u32) -> Result<Option<Piece>> {
        self.sampler.accept(id);
        if self.first_token_at.is_none() {
            let now = Instant::now();
            self.first_token_at = Some(now);
            self.stats.time_to_first_token_s = (now - self.started).as_secs_f64();
        }
        if tok.is_eos(id) {
            self.finish = Some(Finish::EndToken(id));
            self.drop_queue(model);
            let text = self.stream.finish();
            self.update_decode_stats();
            return Ok((!text.is_empty()).then_some(Piece { id, text }));
        }
        if let Some(c) = &mut self.constraint {
            c.commit(id)?;
        }
        self.produced.push(id);
        let text = self.stream.push(id)?;
        if self.produced.len() >= self.max_tokens {
            self.finish = Some(Finish::MaxTokens);
            self.drop_queue(model);
        } else if !self.queue.is_empty() {
            // A kept draft: already in the cache; the round's last token is fed next.
        } else if model.position() >= model.context {
            self.finish = Some(Finish::ContextFull);
        } else {
            self.to_feed = Some(id);
        }
        let mut text = text;
        if self.finish.is_some() {
            text.push_str(&self.stream.finish());
        }
        self.update_decode_stats();
        Ok(Some(Piece { id, text }))
    }

    /// Ends the generation early (the caller stopped it). Every generated token except the last
    /// has been fed to the model; see [`Generation::fed`]. In a draft round the cache may also
    /// hold kept drafts that were never returned: callers that continue from the cache roll it
    /// back to what they know it holds, as they do after any generation.
    pub fn cancel(&mut self) {
        if self.finish.is_none() {
            self.finish = Some(Finish::Cancelled);
            self.next = None;
            self.to_feed = None;
        }
    }

    /// Ends a draft round early: its tokens not returned are forgotten, and those of them
    /// already in the cache are rolled back, so the cache holds exactly [`Generation::fed`].
    fn drop_queue(&mut self, model: &mut Model) {
        self.queue.clear();
        if self.fed > self.produced.len() {
            self.fed = self.produced.len();
            // Never refused: it rolls back fewer tokens than the round's verify step fed.
            model.rewind(self.base_pos + self.fed as u32);
        }
    }

    fn update_decode_stats(&mut self) {
        self.stats.generated_tokens = self.produced.len();
        if let Some(t0) = self.first_token_at {
            let s = t0.elapsed().as_secs_f64();
            let n = self.produced.len().saturating_sub(1);
            if n > 0 && s > 0.0 {
                self.stats.decode_tokens_per_s = n as f64 / s;
            }
        }
    }

    /// Why generation ended (`None` while it runs).
    pub fn finish(&self) -> Option<Finish> {
        self.finish
    }

    /// Generated ids (without the end token).
    pub fn tokens(&self) -> &[u32] {
        &self.produced
    }

    /// Generated ids that went through the model and so sit in its KV cache: all of them,
    /// except the last when generation stopped on a limit (it was sampled but never fed).
    pub fn fed(&self) -> &[u32] {
        &self.produced[..self.fed.min(self.produced.len())]
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }
}

/// A generation in progress that borrows its model and tokenizer (the CLI's form).
pub struct Generator<'a> {
    model: &'a mut Model,
    tok: &'a Tokenizer,
    drafter: Option<&'a mut Drafter>,
    state: Generation,
}

impl<'a> Generator<'a> {
    /// Prefills `prompt` (appended at the model's current position) and gets ready to sample.
    pub async fn start(
        model: &'a mut Model,
        tok: &'a Tokenizer,
        prompt: &[u32],
        params: SamplingParams,
        max_tokens: usize,
    ) -> Result<Generator<'a>> {
        Self::start_constrained(model, tok, prompt, params, max_tokens, None).await
    }

    /// [`Generator::start`] with the output held to `constraint` (see [`crate::constrain`]).
    pub async fn start_constrained(
        model: &'a mut Model,
        tok: &'a Tokenizer,
        prompt: &[u32],
        params: SamplingParams,
        max_tokens: usize,
        constraint: Option<OutputConstraint>,
    ) -> Result<Generator<'a>> {
        let state =
            Generation::start_constrained(model, tok, prompt, params, max_tokens, constraint)
                .await?;
        Ok(Generator {
            model,
            tok,
            drafter: None,
            state,
        })
    }

    /// Drafts `k` tokens per round with `drafter` (see [`Generation::set_draft_tokens`]).
    pub fn draft_with(&mut self, drafter: &'a mut Drafter, k: u32) -> Result<()> {
        self.state.set_draft_tokens(self.model, k)?;
        self.drafter = Some(drafter);
        Ok(())
    }

    /// The next piece, or `None` when generation has finished (see [`Generator::finish`]).
    pub async fn next(&mut self) -> Result<Option<Piece>> {
        let drafter = self.drafter.as_deref_mut();
        self.state.next_drafted(self.model, drafter, self.tok).await
    }

    /// Why generation ended (`None` while it runs).
    pub fn finish(&self) -> Option<Finish> {
        self.state.finish()
    }

    /// Generated ids (without the end token).
    pub fn tokens(&self) -> &[u32] {
        self.state.tokens()
    }

    /// Generated ids now in the KV cache (see [`Generation::fed`]).
    pub fn fed(&self) -> &[u32] {
        self.state.fed()
    }

    pub fn stats(&self) -> &Stats {
        self.state.stats()
    }
}
