//! Token sampling on the CPU over the few candidates the GPU hands back.
//!
//! Reading a 262,144-entry logits row back every token costs more than the sampling itself, so
//! the GPU applies the repetition penalty, selects the top-K candidates (K ≤ 64), sorts them and
//! sends back only `(id, logit)` pairs. Everything here therefore works on a candidate list.
//! Settings that can keep tokens beyond those candidates (top-k 0 or above 64:
//! [`SamplingParams::needs_full_vocab`]) draw on the GPU instead, from the same distribution
//! over the whole row (`kernels::sample`, tested against [`Sampler::distribution`] over full
//! rows); this module then only supplies the seeds. [`apply_repeat_penalty`] is the CPU
//! reference the GPU penalty kernel is tested against.
//!
//! Pipeline, in this order (the order of Hugging Face `generate`'s logits warpers):
//! penalty (upstream, on the GPU) → temperature → top-k → softmax → top-p → min-p → draw.
//! Temperature 0 means greedy: the largest logit, ties broken towards the lowest id so results
//! do not depend on the GPU's sort stability.
//!
//! Speculative decoding checks each drafted token with [`Sampler::verify_draft`] against the
//! same pipeline's distribution ([`Sampler::distribution`]), so drafting leaves the output
//! distribution exactly the target's.
//!
//! Randomness comes from ChaCha8 seeded with [`SamplingParams::seed`]: the same seed and the
//! same logits give the same tokens on every platform, wasm32 included (no OS entropy needed).

use std::collections::VecDeque;

use rand_chacha::rand_core::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::{Error, Result};

/// Sampling settings.
///
/// The defaults are what Google ships with Gemma 3 and Gemma 4 (`generation_config.json`, GGUF
/// `general.sampling.*`, Ollama's parameters): temperature 1.0, top-k 64, top-p 0.95. Gemma's
/// configs set no min-p and no repetition penalty, so those are off (0.0 and 1.0).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingParams {
    /// Divides the logits; 0 = greedy (argmax). Must be finite and ≥ 0.
    pub temperature: f32,
    /// Keep the `top_k` most likely tokens; 0 = no limit (needs the full logits row).
    pub top_k: u32,
    /// Nucleus: keep the smallest set of most likely tokens whose probability sum reaches
    /// `top_p`. In (0, 1]; 1 disables it.
    pub top_p: f32,
    /// Drop tokens whose probability is below `min_p` × the top probability. In [0, 1]; 0
    /// disables it.
    pub min_p: f32,
    /// llama.cpp-style repetition penalty (see [`apply_repeat_penalty`]); 1 disables it. > 0.
    pub repeat_penalty: f32,
    /// How many of the most recent tokens the penalty looks at.
    pub repeat_last_n: usize,
    /// RNG seed; the same seed gives the same sequence.
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_k: 64,
            top_p: 0.95,
            min_p: 0.0,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 0,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding (temperature 0), e.g. for tests that compare against a reference.
    pub fn greedy() -> Self {
        SamplingParams {
            temperature: 0.0,
            ..Default::default()
        }
    }

    /// Checks every field; user input (CLI flags, JS options) goes through here.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(Error::InvalidArgument(what));
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return bad(format!(
                "temperature must be finite and >= 0 (0 = greedy), got {}",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad(format!("min_p must be in [0, 1], got {}", self.min_p));
        }
        if !self.repeat_penalty.is_finite() || self.repeat_penalty <= 0.0 {
            return bad(format!(
                "repeat_penalty must be finite and > 0 (1 = off), got {}",
                self.repeat_penalty
            ));
        }
        Ok(())
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }

    /// Whether these settings can keep tokens beyond the `candidates` most likely ones the
    /// GPU hands back, so the draw has to run on the GPU over the whole vocabulary
    /// (`kernels::sample`). Smaller top-k are sampled exactly from the candidates.
    pub fn needs_full_vocab(&self, candidates: u32) -> bool {
        !self.is_greedy() && (self.top_k == 0 || self.top_k > candidates)
    }

    /// The cuts and temperature of a full-vocabulary draw.
    pub fn vocab_sampling(&self) -> crate::kernels::sample::VocabSampling {
        crate::kernels::sample::VocabSampling {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
        }
    }
}

/// llama.cpp's repetition penalty on a full logits row, in place: every distinct id in
/// `recent` (once, however often it occurs) has a positive logit divided by `penalty` and a
/// negative one multiplied by it, so the token always becomes less likely. Ids outside the row
/// are ignored. This is the CPU reference for the GPU kernel.
pub fn apply_repeat_penalty(logits: &mut [f32], recent: &[u32], penalty: f32) {
    if penalty == 1.0 {
        return;
    }
    let mut seen = std::collections::HashSet::with_capacity(recent.len());
    for &id in recent {
        if !seen.insert(id) {
            continue;
        }
        if let Some(l) = logits.get_mut(id as usize) {
            *l = penalize(*l, penalty);
        }
    }
}

/// [`apply_repeat_penalty`] for a candidate list; the list is re-sorted (descending logit,
/// ascending id on ties) because a penalty can change the order.
pub fn apply_repeat_penalty_candidates(cands: &mut [(u32, f32)], recent: &[u32], penalty: f32) {
    if penalty == 1.0 {
        return;
    }
    for c in cands.iter_mut() {
        if recent.contains(&c.0) {
            c.1 = penalize(c.1, penalty);
        }
    }
    sort_candidates(cands);
}

fn penalize(l: f32, penalty: f32) -> f32 {
    if l > 0.0 {
        l / penalty
    } else {
        l * penalty
    }
}

/// Descending logit, ascending id on equal logits; NaN sorts last.
fn sort_candidates(c: &mut [(u32, f32)]) {
    c.sort_by(|a, b| {
        let key = |x: f32| if x.is_nan() { f32::NEG_INFINITY } else { x };
        key(b.1).total_cmp(&key(a.1)).then(a.0.cmp(&b.0))
    });
}

/// A seeded sampler. Keeps the recent-token window for the repetition penalty.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: ChaCha8Rng,
    recent: VecDeque<u32>,
    /// (id, logit or probability) scratch, reused to avoid allocating per token.
    work: Vec<(u32, f32)>,
    probs: Vec<f64>,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Result<Self> {
        params.validate()?;
        Ok(Sampler {
            params,
            rng: ChaCha8Rng::seed_from_u64(params.seed),
            recent: VecDeque::with_capacity(params.repeat_last_n),
            work: Vec::new(),
            probs: Vec::new(),
        })
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Records a token that was produced (or fed as prompt) for the penalty window.
    pub fn accept(&mut self, id: u32) {
        if self.params.repeat_last_n == 0 {
            return;
        }
        if self.recent.len() == self.params.repeat_last_n {
            self.recent.pop_front();
        }
        self.recent.push_back(id);
    }

    /// The last `repeat_last_n` accepted ids, oldest first (what the GPU penalty kernel reads).
    pub fn recent(&self) -> Vec<u32> {
        self.recent.iter().copied().collect()
    }

    /// A seed for the GPU's next full-vocabulary draw, from this sampler's stream (so a seed
    /// still fixes every token).
    pub fn draw_seed(&mut self) -> u64 {
        self.rng.next_u64()
    }

    /// Picks one id from `candidates` — `(id, logit)` pairs with the repetition penalty already
    /// applied, normally the GPU's top-K sorted descending (the order is not trusted; they are
    /// re-sorted). Errors on an empty list or when no logit is finite.
    pub fn sample(&mut self, candidates: &[(u32, f32)]) -> Result<u32> {
        if self.params.is_greedy() {
            check_candidates(candidates)?;
            return Ok(argmax(candidates));
        }
        let keep = self.filter(candidates)?;
        let total: f64 = self.probs[..keep].iter().sum();
        let u = uniform01(&mut self.rng) * total;
        let mut cum = 0.0;
        for i in 0..keep {
            cum += self.probs[i];
            if u < cum {
                return Ok(self.work[i].0);
            }
        }
        Ok(self.work[keep - 1].0) // rounding left u at the very top
    }

    /// The distribution [`Sampler::sample`] draws from: `(id, probability)` of every token it
    /// can pick, most likely first, summing to 1 (greedy: the argmax with probability 1).
    /// Speculative decoding compares the target's and the drafter's distributions with it.
    pub fn distribution(&mut self, candidates: &[(u32, f32)]) -> Result<Vec<(u32, f64)>> {
        if self.params.is_greedy() {
            check_candidates(candidates)?;
            return Ok(vec![(argmax(candidates), 1.0)]);
        }
        let keep = self.filter(candidates)?;
        let total: f64 = self.probs[..keep].iter().sum();
        Ok(self.work[..keep]
            .iter()
            .zip(&self.probs)
            .map(|(c, p)| (c.0, p / total))
            .collect())
    }

    /// Draws one id from a distribution of [`Sampler::distribution`]'s form.
    pub fn draw(&mut self, dist: &[(u32, f64)]) -> Result<u32> {
        let Some(last) = dist.last() else {
            return Err(Error::InvalidArgument("an empty distribution".into()));
        };
        let u = uniform01(&mut self.rng) * dist.iter().map(|d| d.1).sum::<f64>();
        let mut cum = 0.0;
        for &(id, p) in dist {
            cum += p;
            if u < cum {
                return Ok(id);
            }
        }
        Ok(last.0)
    }

    /// Speculative sampling's test of one drafted token (Leviathan et al. 2023; Chen et al.
    /// 2023): `target` are the target model's candidates at the drafted position, `draft` the
    /// distribution the drafter drew `drafted` from (its [`Sampler::distribution`] under the
    /// same settings). The token is kept with probability `min(1, p(x)/q(x))`; otherwise a
    /// replacement is drawn from `max(0, p − q)` renormalised. Either way the token that
    /// comes out is distributed exactly as `p`, the target's own sampling distribution, so
    /// drafting never changes what the model generates, only how fast. Greedy settings keep
    /// the draft exactly when it is the target's argmax.
    pub fn verify_draft(
        &mut self,
        target: &[(u32, f32)],
        draft: &[(u32, f64)],
        drafted: u32,
    ) -> Result<Verdict> {
        let p = self.distribution(target)?;
        if self.params.is_greedy() {
            return Ok(if p[0].0 == drafted {
                Verdict::Accept
            } else {
                Verdict::Replace(p[0].0)
            });
        }
        let prob = |d: &[(u32, f64)], id: u32| d.iter().find(|x| x.0 == id).map_or(0.0, |x| x.1);
        let (px, qx) = (prob(&p, drafted), prob(draft, drafted));
        if qx > 0.0 && uniform01(&mut self.rng) * qx < px {
            return Ok(Verdict::Accept);
        }
        let residual: Vec<(u32, f64)> = p
            .iter()
            .map(|&(id, pi)| (id, (pi - prob(draft, id)).max(0.0)))
            .filter(|r| r.1 > 0.0)
            .collect();
        // p = q (up to rounding) leaves no residual mass: then p itself is the residual.
        let from = if residual.is_empty() { &p } else { &residual };
        Ok(Verdict::Replace(self.draw(from)?))
    }

    /// Temperature, top-k, softmax, top-p and min-p over `candidates` into `self.work` (sorted,
    /// ids and logits) and `self.probs` (unnormalised probabilities); returns how many lead
    /// entries survive the cuts (at least one).
    fn filter(&mut self, candidates: &[(u32, f32)]) -> Result<usize> {
        check_candidates(candidates)?;
        self.work.clear();
        self.work
            .extend(candidates.iter().filter(|c| c.1.is_finite()));
        sort_candidates(&mut self.work);
        // Temperature, then top-k.
        let t = self.params.temperature;
        let k = match self.params.top_k {
            0 => self.work.len(),
            k => (k as usize).min(self.work.len()),
        };
        self.work.truncate(k);
        // Softmax in f64 (a 262k-entry row summed in f32 loses the tail).
        let max = f64::from(self.work[0].1) / f64::from(t);
        self.probs.clear();
        self.probs.extend(
            self.work
                .iter()
                .map(|c| (f64::from(c.1) / f64::from(t) - max).exp()),
        );
        let sum: f64 = self.probs.iter().sum();
        self.probs.iter_mut().for_each(|p| *p /= sum);
        // Top-p: the smallest prefix whose mass reaches top_p (at least one token).
        let mut keep = self.probs.len();
        if self.params.top_p < 1.0 {
            let mut cum = 0.0;
            for (i, p) in self.probs.iter().enumerate() {
                cum += p;
                if cum >= f64::from(self.params.top_p) {
                    keep = i + 1;
                    break;
                }
            }
        }
        // Min-p: relative to the most likely token (index 0, sorted).
        if self.params.min_p > 0.0 {
            let floor = self.probs[0] * f64::from(self.params.min_p);
            keep = self.probs[..keep]
                .iter()
                .position(|&p| p < floor)
                .unwrap_or(keep)
                .max(1);
        }
        Ok(keep)
    }

    /// Samples from a full logits row on the CPU (a reference; generation draws such rows on
    /// the GPU). The row must already carry the repetition penalty (see
    /// [`apply_repeat_penalty`]).
    pub fn sample_logits(&mut self, logits: &[f32]) -> Result<u32> {
        let cands: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, l))
            .collect();
        self.sample(&cands)
    }
}

/// What [`Sampler::verify_draft`] decided for a drafted token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The drafted token stands.
    Accept,
    /// The draft is rejected; this token takes its place and drafting restarts after it.
    Replace(u32),
}

/// Refuses an empty candidate list and one without a finite logit.
fn check_candidates(candidates: &[(u32, f32)]) -> Result<()> {
    if candidates.is_empty() {
        return Err(Error::InvalidArgument("sampler got no candidates".into()));
    }
    if !candidates.iter().any(|c| c.1.is_finite()) {
        return Err(Error::InvalidArgument(
            "sampler got no finite logit (NaN/inf in the logits?)".into(),
        ));
    }
    Ok(())
}

/// Largest logit, lowest id on ties; NaN never wins.
fn argmax(c: &[(u32, f32)]) -> u32 {
    let mut best = (u32::MAX, f32::NEG_INFINITY);
    for &(id, l) in c {
        if l.is_nan() {
            continue;
        }
        if best.0 == u32::MAX || l > best.1 || (l == best.1 && id < best.0) {
            best = (id, l);
        }
    }
    best.0
}

/// Uniform in [0, 1) with 53 random bits.
fn uniform01(rng: &mut ChaCha8Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}
