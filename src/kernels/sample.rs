//! Exact sampling over the whole vocabulary on the GPU (`shaders/sample.wgsl`): the cuts of
//! top-k (any k), top-p and min-p as thresholds found by radix select over the full row, then
//! one Gumbel-max draw, whose argmax (a top-1 [`Logits`] op) is the sampled token. The CPU reads
//! back one `(id, value)` pair; nothing is approximated by the GPU's top-64 candidates.
//!
//! Used when the settings can reach past the candidates the GPU hands back (top-k 0 or above
//! [`MAX_K`]); smaller top-k keep the cheaper candidate path of `src/sampler.rs`, which gives
//! the same distribution. Dispatches per step: 4 × 2 for a top-k cut (when it cuts), 4 × 2
//! for top-p (when below 1), 1 for the perturbation and 2 for the argmax.

use std::sync::Arc;

use crate::gpu::{BindGroup, GpuContext, Kernel, KernelSpec, Op, StepParams};
use crate::kernels::logits::{LogitRows, Logits, LogitsConfig, LogitsIo, Sampling, MAX_K};
use crate::{Error, Result};

const SOURCE: &str = include_str!("../../shaders/sample.wgsl");

/// Entries per workgroup (`S` in the shader).
const SLICE: u32 = 4096;
/// Radix levels of a threshold search: 8 bits of the 32-bit key each.
const LEVELS: u32 = 4;

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    vocab: u32,
    mode: u32,
    shift: u32,
    first: u32,
    use_lower: u32,
    k: u32,
    top_p: f32,
    inv_temp: f32,
    min_p: f32,
    temperature: f32,
    has_k: u32,
    has_p: u32,
    _pad: [u32; 4],
}

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Draw {
    seed: [u32; 2],
    _pad: [u32; 2],
}

/// The cuts and temperature of one request (see `SamplingParams`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct VocabSampling {
    /// > 0.
    pub temperature: f32,
    /// 0 = no cut.
    pub top_k: u32,
    /// In (0, 1]; 1 = no cut.
    pub top_p: f32,
    /// In [0, 1]; 0 = no cut.
    pub min_p: f32,
}

/// Buffers a `VocabSampler` reads and writes.
pub struct VocabSamplerIo<'a> {
    /// `[V]` f32: one row of logits, softcapped and penalised (after the row's `Logits` op).
    pub logits: wgpu::BindingResource<'a>,
    /// the row's `Logits` result (`[1 + k]` pairs; its first candidate is the row maximum).
    pub topk: wgpu::BindingResource<'a>,
}

/// Kernel specs this module can build (for shader validation).
pub fn specs() -> Vec<KernelSpec> {
    ["hist", "pick", "perturb"]
        .into_iter()
        .map(|e| spec(e, 262_144))
        .collect()
}

fn spec(entry: &'static str, vocab: u32) -> KernelSpec {
    KernelSpec::new(format!("sample_{entry}"), SOURCE)
        .entry(entry)
        .define("N_SLICES", vocab.div_ceil(SLICE))
}

/// Draws one token from the full row: thresholds, Gumbel perturbation, argmax.
pub struct VocabSampler {
    hist: Arc<Kernel>,
    pick: Arc<Kernel>,
    perturb: Arc<Kernel>,
    /// `[2 · LEVELS]` (hist, pick) bind groups: the count search's levels, then the mass
    /// search's; and their params buffers.
    levels: Vec<(BindGroup, BindGroup)>,
    level_params: Vec<wgpu::Buffer>,
    perturb_group: BindGroup,
    perturb_params: wgpu::Buffer,
    draw: wgpu::Buffer,
    argmax: Logits,
    /// `[1 + MAX_K]` pairs: the argmax result (`(1, lse)`, then `(id, y)`).
    pub out: wgpu::Buffer,
    /// `[V]` f32: the last perturbed row (−inf outside the kept set), for tests.
    pub perturbed: wgpu::Buffer,
    _scratch: [wgpu::Buffer; 3],
    vocab: u32,
    slices: u32,
    /// Which searches run with the current settings.
    count_search: bool,
    mass_search: bool,
    sampling: Option<VocabSampling>,
}

impl VocabSampler {
    pub fn new(ctx: &GpuContext, io: VocabSamplerIo<'_>, vocab: u32) -> Result<Self> {
        if vocab == 0 {
            return Err(Error::InvalidArgument(
                "VocabSampler: empty vocabulary".into(),
            ));
        }
        let slices = vocab.div_ceil(SLICE);
        let hist = ctx.kernel(&spec("hist", vocab))?;
        let pick = ctx.kernel(&spec("pick", vocab))?;
        let perturb = ctx.kernel(&spec("perturb", vocab))?;
        let histograms = ctx.storage("sample.hist", slices as u64 * 256 * 3 * 4)?;
        let state = ctx.storage("sample.state", 8 * 4)?;
        let y = ctx.storage("sample.y", vocab as u64 * 4)?;
        let out = ctx.storage("sample.out", Logits::out_bytes(1, MAX_K))?;
        let draw = ctx.params_init("sample.draw", &Draw::default());

        let mut levels = Vec::new();
        let mut level_params = Vec::new();
        for _ in 0..2 * LEVELS {
            let buf = ctx.params_init("sample.params", &Params::default());
            let h = ctx.bind_at(
                &hist,
                &[
                    (0, io.logits.clone()),
                    (1, io.topk.clone()),
                    (2, histograms.as_entire_binding()),
                    (3, state.as_entire_binding()),
                    (4, buf.as_entire_binding()),
                ],
            );
            let pk = ctx.bind_at(
                &pick,
                &[
                    (2, histograms.as_entire_binding()),
                    (3, state.as_entire_binding()),
                    (4, buf.as_entire_binding()),
                ],
            );
            levels.push((h, pk));
            level_params.push(buf);
        }
        let perturb_params = ctx.params_init("sample.perturb", &Params::default());
        let perturb_group = ctx.bind_at(
            &perturb,
            &[
                (0, io.logits.clone()),
                (1, io.topk.clone()),
                (3, state.as_entire_binding()),
                (4, perturb_params.as_entire_binding()),
                (5, draw.as_entire_binding()),
                (6, y.as_entire_binding()),
            ],
        );
        let step = ctx.params_init("sample.step", &StepParams::new(1, 0));
        let mut argmax = Logits::new(
            ctx,
            LogitsIo {
                logits: y.as_entire_binding(),
                penalty_ids: None,
                out: out.as_entire_binding(),
                step: step.as_entire_binding(),
            },
            &LogitsConfig {
                vocab,
                rows: LogitRows::Fixed(1),
                softcap: None,
            },
        )?;
        argmax.set_sampling(ctx, &Sampling::default())?;
        Ok(VocabSampler {
            hist,
            pick,
            perturb,
            levels,
            level_params,
            perturb_group,
            perturb_params,
            draw,
            argmax,
            out,
            perturbed: y,
            _scratch: [histograms, state, step],
            vocab,
            slices,
            count_search: false,
            mass_search: false,
            sampling: None,
        })
    }

    /// The settings in use (`None` before the first [`VocabSampler::set_sampling`]).
    pub fn sampling(&self) -> Option<&VocabSampling> {
        self.sampling.as_ref()
    }

    /// Sets the cuts and temperature for the steps encoded from now on.
    pub fn set_sampling(&mut self, ctx: &GpuContext, s: &VocabSampling) -> Result<()> {
        if !(s.temperature > 0.0 && s.temperature.is_finite()) {
            return Err(Error::InvalidArgument(format!(
                "full-vocabulary sampling needs a temperature > 0, got {}",
                s.temperature
            )));
        }
        if !(s.top_p > 0.0 && s.top_p <= 1.0 && (0.0..=1.0).contains(&s.min_p)) {
            return Err(Error::InvalidArgument(format!(
                "top_p {} must be in (0, 1] and min_p {} in [0, 1]",
                s.top_p, s.min_p
            )));
        }
        self.count_search = s.top_k > 0 && s.top_k < self.vocab;
        self.mass_search = s.top_p < 1.0;
        let base = Params {
            vocab: self.vocab,
            k: s.top_k,
            top_p: s.top_p,
            inv_temp: 1.0 / s.temperature,
            min_p: s.min_p,
            temperature: s.temperature,
            has_k: self.count_search as u32,
            has_p: self.mass_search as u32,
            ..Default::default()
        };
        for (i, buf) in self.level_params.iter().enumerate() {
            let level = i as u32 % LEVELS;
            let params = Params {
                mode: i as u32 / LEVELS,
                shift: 24 - 8 * level,
                first: (level == 0) as u32,
                use_lower: (i as u32 >= LEVELS && self.count_search) as u32,
                ..base
            };
            ctx.queue.write_buffer(buf, 0, bytemuck::bytes_of(&params));
        }
        ctx.queue
            .write_buffer(&self.perturb_params, 0, bytemuck::bytes_of(&base));
        self.sampling = Some(*s);
        Ok(())
    }

    /// The random seed of the next step's draw (written before its submit).
    pub fn set_seed(&self, ctx: &GpuContext, seed: u64) {
        let draw = Draw {
            seed: [seed as u32, (seed >> 32) as u32],
            _pad: [0; 2],
        };
        ctx.queue
            .write_buffer(&self.draw, 0, bytemuck::bytes_of(&draw));
    }

    /// Decodes the drawn token from the bytes of `out` (its first two pairs).
    pub fn parse(words: &[u32]) -> u32 {
        words[2]
    }
}

impl Op for VocabSampler {
    fn encode(&self, pass: &mut wgpu::ComputePass<'_>, step: &StepParams) {
        let searches = [(0, self.count_search), (LEVELS as usize, self.mass_search)];
        for (first, on) in searches {
            if !on {
                continue;
            }
            for (h, pk) in &self.levels[first..first + LEVELS as usize] {
                pass.set_pipeline(self.hist.pipeline());
                pass.set_bind_group(0, h.get(), &[]);
                crate::gpu::dispatch(pass, [self.slices, 1, 1]);
                pass.set_pipeline(self.pick.pipeline());
                pass.set_bind_group(0, pk.get(), &[]);
                crate::gpu::dispatch(pass, [1, 1, 1]);
            }
        }
        pass.set_pipeline(self.perturb.pipeline());
        pass.set_bind_group(0, self.perturb_group.get(), &[]);
        crate::gpu::dispatch(pass, [self.slices, 1, 1]);
        self.argmax.encode(pass, step);
    }
}
