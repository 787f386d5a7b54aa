//! Logits post-processing and GPU top-k (`shaders/logits.wgsl`): the final softcap (Gemma 4:
//! `30·tanh(x/30)`), the repetition penalty, and per row the k best candidates plus the row's
//! logsumexp, so a decode step reads back `8·(k+1)` bytes per row instead of the vocabulary.
//!
//! The op chains one `first` dispatch (one workgroup per 4096 logits, so a 262144-wide row
//! keeps 64 workgroups busy) and `merge` dispatches until one workgroup per row remains: two
//! dispatches for a 262144-token vocabulary at any k. Workgroups select their k best with a
//! radix select over a bounded set of survivors, not a sort (see the shader's header).
//! Softcap and penalty rewrite `logits` in place: encode the op once per step.
//!
//! Result layout (`[R, 1 + k]` pairs of u32, see [`Logits::parse`]): entry 0 of a row is
//! `(min(k, V), logsumexp bits)`, entries `1..=k` are `(token id, value bits)`, best first,
//! ties to the lower id, padded with `(u32::MAX, -inf)` when `V < k`.

use std::sync::Arc;

use crate::gpu::{grid, BindGroup, GpuContext, Kernel, KernelSpec, Op, StepParams};
use crate::{Error, Result};

const SOURCE: &str = include_str!("../../shaders/logits.wgsl");

/// Entries per workgroup (`S` in the shader).
const SLICE: u32 = 4096;
/// Invocations per workgroup: the shader's histograms have one bin per invocation.
const WG: u32 = 256;
/// Largest supported k: a merge workgroup must take at least 64 candidate lists (4096 / 64), so
/// a 262144-token vocabulary needs one merge level.
pub const MAX_K: u32 = 64;

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    vocab: u32,
    k: u32,
    n_in: u32,
    n_out: u32,
    group: u32,
    last: u32,
    rows: u32,
    rows_per_token: u32,
    n_ids: u32,
    penalty: f32,
    softcap: f32,
    inv_temp: f32,
    stats: u32,
    _pad: [u32; 3],
}

/// Which rows of `logits` the op processes each step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogitRows {
    /// Always this many rows (generation: 1, the last prompt row).
    Fixed(u32),
    /// One row per token of the step, at most `max` (score mode).
    PerToken { max: u32 },
}

impl LogitRows {
    fn max(self) -> u32 {
        match self {
            LogitRows::Fixed(n) => n,
            LogitRows::PerToken { max } => max,
        }
    }
}

/// Model-fixed shape of the logits.
#[derive(Clone, Copy, Debug)]
pub struct LogitsConfig {
    /// `V`: logits per row (row stride of the logits buffer).
    pub vocab: u32,
    pub rows: LogitRows,
    /// Final softcap `c` (`c·tanh(x/c)`): `Some(30.0)` for Gemma 4, `None` for Gemma 3.
    pub softcap: Option<f32>,
}

/// Per-request settings, changeable between steps with [`Logits::set_sampling`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampling {
    /// Candidates per row, `1..=MAX_K`.
    pub k: u32,
    /// llama.cpp repetition penalty (`x > 0 → x/penalty`, else `x·penalty`); 1.0 disables it.
    pub penalty: f32,
    /// How many leading entries of the penalty-id buffer are in use (clamped to its length).
    pub n_penalty_ids: u32,
    /// The result's logsumexp is of `x / temperature` (so the CPU gets exact tempered
    /// probabilities `exp(x/T − lse)`); values ≤ 0 (greedy) mean 1. Values stay untempered.
    pub temperature: f32,
}

impl Default for Sampling {
    fn default() -> Self {
        Self {
            k: 1,
            penalty: 1.0,
            n_penalty_ids: 0,
            temperature: 1.0,
        }
    }
}

/// Buffers a `Logits` op reads and writes.
pub struct LogitsIo<'a> {
    /// `[R, V]` f32; softcap and penalty are written back in place.
    pub logits: wgpu::BindingResource<'a>,
    /// `[n]` u32 previously seen token ids (duplicates are fine); `None`: no penalty ever.
    pub penalty_ids: Option<wgpu::BindingResource<'a>>,
    /// `[R, 1 + k]` pairs of u32: at least [`Logits::out_bytes`]`(rows, MAX_K)` bytes to allow
    /// any k.
    pub out: wgpu::BindingResource<'a>,
    /// the step parameters (`gpu::StepParams`; `n_tokens` gives the rows with `PerToken`).
    pub step: wgpu::BindingResource<'a>,
}

/// One candidate row read back from the result buffer.
#[derive(Clone, Debug, PartialEq)]
pub struct TopK {
    /// Best first; ties in value go to the lower id.
    pub ids: Vec<u32>,
    pub values: Vec<f32>,
    /// `log Σ_v exp(x_v / T)` over the whole (softcapped, penalised) row.
    pub logsumexp: f32,
    /// The token drawn on the GPU from the whole row (`kernels::sample`), when the step ran
    /// full-vocabulary sampling.
    pub drawn: Option<u32>,
}

impl TopK {
    /// `(id, value)` pairs, best first (what the sampler takes).
    pub fn pairs(&self) -> Vec<(u32, f32)> {
        self.ids
            .iter()
            .copied()
            .zip(self.values.iter().copied())
            .collect()
    }
}

/// Kernel specs this module can build (for shader validation).
pub fn specs() -> Vec<KernelSpec> {
    vec![spec("first"), spec("merge")]
}

fn spec(entry: &'static str) -> KernelSpec {
    KernelSpec::new(format!("logits_{entry}"), SOURCE)
        .entry(entry)
        .define("WG", WG)
}

fn entry(binding: u32, resource: wgpu::BindingResource<'_>) -> (u32, wgpu::BindingResource<'_>) {
    (binding, resource)
}

/// `(n_in, n_out, group)` per level for this vocabulary and k.
fn levels(vocab: u32, k: u32) -> Vec<(u32, u32, u32)> {
    let n0 = vocab.div_ceil(SLICE);
    let mut out = vec![(vocab, n0, 0)];
    let group = SLICE / k;
    let mut n = n0;
    while n > 1 {
        let m = n.div_ceil(group);
        out.push((n, m, group));
        n = m;
    }
    out
}

/// Softcap + repetition penalty + top-k + logsumexp over `R` rows of `V` logits.
pub struct Logits {
    first: Arc<Kernel>,
    merge: Arc<Kernel>,
    /// One bind group and one params buffer per possible level (k = 1 and k = MAX_K bound
    /// the count); level `l` writes `scratch[l % 2]` and `merge` levels read the other.
    bind_groups: Vec<BindGroup>,
    params: Vec<wgpu::Buffer>,
    _scratch: [wgpu::Buffer; 2],
    _no_ids: Option<wgpu::Buffer>,
    cfg: LogitsConfig,
    has_ids: bool,
    stats: u32,
    sampling: Sampling,
    /// Levels in use for the current k: `(n_out)` per level.
    active: Vec<u32>,
    max_per_dim: u32,
}

impl Logits {
    /// Bytes of the result for `rows` rows and `k` candidates.
    pub fn out_bytes(rows: u32, k: u32) -> u64 {
        rows as u64 * (k as u64 + 1) * 8
    }

    /// Decodes `rows` rows of a result read back from `out` (`k` as set when it was encoded).
    pub fn parse(words: &[u32], rows: usize, k: usize) -> Vec<TopK> {
        (0..rows)
            .map(|r| {
                let row = &words[r * (k + 1) * 2..][..(k + 1) * 2];
                let n = (row[0] as usize).min(k);
                let pairs = &row[2..];
                TopK {
                    ids: (0..n).map(|c| pairs[2 * c]).collect(),
                    values: (0..n).map(|c| f32::from_bits(pairs[2 * c + 1])).collect(),
                    logsumexp: f32::from_bits(row[1]),
                    drawn: None,
                }
            })
            .collect()
    }

    pub fn new(ctx: &GpuContext, io: LogitsIo<'_>, cfg: &LogitsConfig) -> Result<Self> {
        let max_rows = cfg.rows.max();
        if cfg.vocab == 0 || max_rows == 0 {
            return Err(Error::InvalidArgument(format!(
                "Logits: vocab {} and rows {max_rows} must be positive",
                cfg.vocab
            )));
        }
        if let Some(c) = cfg.softcap {
            if !(c > 0.0 && c.is_finite()) {
                return Err(Error::InvalidArgument(format!(
                    "Logits: softcap {c} must be positive"
                )));
            }
        }
        let first = ctx.kernel(&spec("first"))?;
        let merge = ctx.kernel(&spec("merge"))?;

        // Scratch: candidates [rows, n0, MAX_K] then exp-sums [rows, n0], 8 bytes each.
        let n0 = cfg.vocab.div_ceil(SLICE);
        let cand = max_rows as u64 * n0 as u64 * MAX_K as u64;
        let stats = u32::try_from(cand).map_err(|_| Error::Limit {
            what: "logits top-k scratch".into(),
            needed: cand * 8,
            available: u32::MAX as u64,
            limit: "u32 indexing",
        })?;
        let scratch_bytes = (cand + max_rows as u64 * n0 as u64) * 8;
        let scratch = [
            ctx.storage("logits.scratch0", scratch_bytes)?,
            ctx.storage("logits.scratch1", scratch_bytes)?,
        ];
        let no_ids = match io.penalty_ids {
            Some(_) => None,
            None => Some(ctx.storage("logits.no_penalty_ids", 4)?),
        };
        let has_ids = io.penalty_ids.is_some();
        let ids = io
            .penalty_ids
            .unwrap_or_else(|| no_ids.as_ref().unwrap().as_entire_binding());

        let n_levels = levels(cfg.vocab, 1)
            .len()
            .max(levels(cfg.vocab, MAX_K).len());
        let mut params = Vec::new();
        let mut bind_groups = Vec::new();
        for level in 0..n_levels {
            let buf = ctx.params_init("logits.params", &Params::default());
            let out = scratch[level % 2].as_entire_binding();
            let (kernel, entries) = if level == 0 {
                (
                    &first,
                    vec![
                        entry(0, io.logits.clone()),
                        entry(1, ids.clone()),
                        entry(3, out),
                        entry(4, io.out.clone()),
                        entry(5, buf.as_entire_binding()),
                        entry(6, io.step.clone()),
                    ],
                )
            } else {
                (
                    &merge,
                    vec![
                        entry(2, scratch[(level + 1) % 2].as_entire_binding()),
                        entry(3, out),
                        entry(4, io.out.clone()),
                        entry(5, buf.as_entire_binding()),
                        entry(6, io.step.clone()),
                    ],
                )
            };
            bind_groups.push(ctx.bind_at(kernel, &entries));
            params.push(buf);
        }

        let mut op = Self {
            first,
            merge,
            bind_groups,
            params,
            _scratch: scratch,
            _no_ids: no_ids,
            cfg: *cfg,
            has_ids,
            stats,
            sampling: Sampling::default(),
            active: Vec::new(),
            max_per_dim: ctx.caps.max_workgroups_per_dim,
        };
        op.set_sampling(ctx, &Sampling::default())?;
        Ok(op)
    }

    /// The settings in use.
    pub fn sampling(&self) -> &Sampling {
        &self.sampling
    }

    /// Changes k, the penalty and the temperature for the steps encoded from now on (one small
    /// `write_buffer` per level; it lands before the next submit).
    pub fn set_sampling(&mut self, ctx: &GpuContext, s: &Sampling) -> Result<()> {
        if s.k == 0 || s.k > MAX_K {
            return Err(Error::InvalidArgument(format!(
                "top-k k = {} (supported: 1..={MAX_K})",
                s.k
            )));
        }
        if !(s.penalty > 0.0 && s.penalty.is_finite()) {
            return Err(Error::InvalidArgument(format!(
                "repetition penalty {} must be positive",
                s.penalty
            )));
        }
        if s.n_penalty_ids > 0 && !self.has_ids {
            return Err(Error::InvalidArgument(
                "repetition penalty ids given but the op was built without an id buffer".into(),
            ));
        }
        let inv_temp = if s.temperature > 0.0 {
            1.0 / s.temperature
        } else {
            1.0
        };
        let lv = levels(self.cfg.vocab, s.k);
        let last = lv.len() - 1;
        for (l, &(n_in, n_out, group)) in lv.iter().enumerate() {
            let params = Params {
                vocab: self.cfg.vocab,
                k: s.k,
                n_in,
                n_out,
                group,
                last: (l == last) as u32,
                rows: self.cfg.rows.max(),
                rows_per_token: matches!(self.cfg.rows, LogitRows::PerToken { .. }) as u32,
                n_ids: s.n_penalty_ids,
                penalty: s.penalty,
                softcap: self.cfg.softcap.unwrap_or(0.0),
                inv_temp,
                stats: self.stats,
                _pad: [0; 3],
            };
            ctx.queue
                .write_buffer(&self.params[l], 0, bytemuck::bytes_of(&params));
        }
        self.active = lv.iter().map(|&(_, n_out, _)| n_out).collect();
        self.sampling = *s;
        Ok(())
    }

    /// Rows processed for a step.
    pub fn rows(&self, step: &StepParams) -> u32 {
        match self.cfg.rows {
            LogitRows::Fixed(n) => n,
            LogitRows::PerToken { max } => step.n_tokens.min(max),
        }
    }
}

impl Op for Logits {
    fn encode(&self, pass: &mut wgpu::ComputePass<'_>, step: &StepParams) {
        let rows = self.rows(step);
        for (l, &n_out) in self.active.iter().enumerate() {
            let kernel = if l == 0 { &self.first } else { &self.merge };
            let [x, y, z] = grid(rows * n_out, self.max_per_dim);
            pass.set_pipeline(kernel.pipeline());
            pass.set_bind_group(0, self.bind_groups[l].get(), &[]);
            crate::gpu::dispatch(pass, [x, y, z]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemma_vocabulary_takes_two_dispatches_at_every_k() {
        for k in 1..=MAX_K {
            assert_eq!(levels(262_144, k).len(), 2, "k = {k}");
        }
        assert_eq!(levels(4096, 64).len(), 1);
        assert_eq!(levels(4097, 64), vec![(4097, 2, 0), (2, 1, 64)]);
        assert_eq!(levels(262_145, 64).len(), 3);
    }
}
