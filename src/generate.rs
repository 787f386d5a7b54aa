//! Token generation: prefill the prompt, then sample, stream and feed back one token at a
//! time until an end token of the model, the token budget or the context limit. One async path
//! serves the CLI and the browser; callers pull pieces with `next`.

use web_time::Instant;

use crate::model::{Candidates, Model};
use crate::sampler::{Sampler, SamplingParams};
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
}

/// The state of a generation in progress, without borrows: the model and tokenizer are passed
/// to every call, so a host that keeps them elsewhere (the browser engine, behind a JS handle)
/// can hold a generation across calls. [`Generator`] bundles the borrows for simple callers.
pub struct Generation {
    sampler: Sampler,
    stream: TokenStream,
    next: Option<Candidates>,
    max_tokens: usize,
    produced: Vec<u32>,
    /// How many of `produced` went through the model (are in the KV cache).
    fed: usize,
    /// The last token returned, to be fed at the start of the next call: a piece streams out
    /// as soon as it is sampled instead of one decode step later, and a stop costs no step.
    to_feed: Option<u32>,
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
        let sampler = Sampler::new(params)?;
        let most = model.max_candidates();
        if !params.is_greedy() && (params.top_k == 0 || params.top_k > most) {
            return Err(Error::InvalidArgument(format!(
                "top-k {} is not supported: the GPU returns the {most} most likely tokens, so top-k must be 1..={most}",
                params.top_k
            )));
        }
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
        let started = Instant::now();
        let candidates = model.forward(prompt, &[], 1.0).await?;
        let prefill_s = started.elapsed().as_secs_f64();
        Ok(Generation {
            sampler,
            stream: tok.stream(),
            next: Some(candidates),
            max_tokens,
            produced: Vec::new(),
            fed: 0,
            to_feed: None,
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

    /// The next piece, or `None` when generation has finished (see [`Generation::finish`]).
    pub async fn next(&mut self, model: &mut Model, tok: &Tokenizer) -> Result<Option<Piece>> {
        if self.finish.is_some() || self.max_tokens == 0 {
            self.finish.get_or_insert(Finish::MaxTokens);
            return Ok(None);
        }
        if let Some(prev) = self.to_feed.take() {
            let params = *self.sampler.params();
            let recent = if params.repeat_penalty != 1.0 {
                self.sampler.recent()
            } else {
                Vec::new()
            };
            self.next = Some(
                model
                    .forward(&[prev], &recent, params.repeat_penalty)
                    .await?,
            );
            self.fed = self.produced.len();
        }
        let Some(candidates) = self.next.take() else {
            return Ok(None);
        };
        let id = self.sampler.sample(&candidates.pairs())?;
        self.sampler.accept(id);
        if self.first_token_at.is_none() {
            let now = Instant::now();
            self.first_token_at = Some(now);
            self.stats.time_to_first_token_s = (now - self.started).as_secs_f64();
        }
        if tok.is_eos(id) {
            self.finish = Some(Finish::EndToken(id));
            let text = self.stream.finish();
            self.update_decode_stats();
            return Ok((!text.is_empty()).then_some(Piece { id, text }));
        }
        self.produced.push(id);
        let text = self.stream.push(id)?;
        if self.produced.len() >= self.max_tokens {
            self.finish = Some(Finish::MaxTokens);
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
    /// has been fed to the model; see [`Generation::fed`].
    pub fn cancel(&mut self) {
        if self.finish.is_none() {
            self.finish = Some(Finish::Cancelled);
            self.next = None;
            self.to_feed = None;
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
        &self.produced[..self.fed]
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }
}

/// A generation in progress that borrows its model and tokenizer (the CLI's form).
pub struct Generator<'a> {
    model: &'a mut Model,
    tok: &'a Tokenizer,
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
        let state = Generation::start(model, tok, prompt, params, max_tokens).await?;
        Ok(Generator { model, tok, state })
    }

    /// The next piece, or `None` when generation has finished (see [`Generator::finish`]).
    pub async fn next(&mut self) -> Result<Option<Piece>> {
        self.state.next(self.model, self.tok).await
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
