//! RMSNorm (`shaders/rmsnorm.wgsl`: plain norms, the final norm of the step's last row) and the
//! residual update (`shaders/residual.wgsl`: `h = (h + Σ rms(o_i)·w_i)·s`, then the next
//! block's input norm, in one dispatch).

use std::sync::Arc;

use crate::gpu::{grid, BindGroup, GpuContext, Kernel, KernelSpec, Op, StepParams};
use crate::{Error, Result};

const SOURCE: &str = include_str!("../../shaders/rmsnorm.wgsl");
const RESIDUAL: &str = include_str!("../../shaders/residual.wgsl");

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    len: u32,
    rows_per_token: u32,
    eps: f32,
    has_weight: u32,
    _pad: [u32; 4],
}

/// How the normalised row is written.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum NormOut {
    /// `y = rms(x)·w`
    Store,
    /// `y[0] = rms(x[n_tokens − 1])·w`: only the step's last row (before the LM head)
    LastRow,
}

/// Kernel specs this module can build (for shader validation).
pub fn specs() -> Vec<KernelSpec> {
    let mut v = vec![spec(NormOut::Store), spec(NormOut::LastRow)];
    for terms in 0..=3 {
        for next in [false, true] {
            if terms > 0 || next {
                v.push(residual_spec(64, terms, next));
            }
        }
    }
    v
}

fn spec(out: NormOut) -> KernelSpec {
    let name = match out {
        NormOut::Store => "rmsnorm",
        NormOut::LastRow => "rmsnorm_last_row",
    };
    KernelSpec::new(name, SOURCE)
        .define("WG", super::ROW_WG)
        .flag("LAST_ROW", out == NormOut::LastRow)
}

fn residual_spec(len: u32, terms: u32, next: bool) -> KernelSpec {
    KernelSpec::new(
        format!("residual_{len}_t{terms}{}", if next { "_next" } else { "" }),
        RESIDUAL,
    )
    .define("WG", super::ROW_WG)
    .define("LEN", len)
    .define("TERMS", terms)
    .flag("NEXT", next)
}

/// Mirrors `struct Params` in residual.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct ResidualParams {
    h: u32,
    o: [u32; 3],
    w: [u32; 3],
    wn: u32,
    eps: f32,
    out_scale: f32,
    _pad: [u32; 2],
}

/// `rms(o)·w`: a block output's row `o` (element offset of row 0 in the arena) and its norm
/// weight (element offset in the norm table).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Term {
    pub o: u32,
    pub w: u32,
}

/// What a [`Residual`] computes, per token row of `len` elements.
#[derive(Clone, Debug, PartialEq)]
pub struct ResidualConfig {
    pub len: u32,
    /// Element offset of h's row 0 in the arena.
    pub h: u32,
    /// `h = (h + Σ rms(o_i)·w_i)·out_scale` over these (at most three; none: h is only read).
    pub terms: Vec<Term>,
    pub out_scale: f32,
    /// `y = rms(h)·w_next`: the element offset of `w_next` in the norm table.
    pub next: Option<u32>,
    pub eps: f32,
}

/// Buffers a [`Residual`] reads and writes.
pub struct ResidualIo<'a> {
    /// The residual arena (h and the blocks' outputs, rows of `len` f32)
    pub arena: wgpu::BindingResource<'a>,
    /// The norm table (`[len]` f32 weights at element offsets)
    pub norms: wgpu::BindingResource<'a>,
    /// `[n_tokens, len]` f32 for the next block's input (with `next`)
    pub y: Option<wgpu::BindingResource<'a>>,
    /// the step parameters (`gpu::StepParams`): `n_tokens` rows
    pub step: wgpu::BindingResource<'a>,
}

/// The residual update of a block (or several deferred ones) and the next input norm, one
/// workgroup per token.
pub struct Residual {
    kernel: Arc<Kernel>,
    bind_group: BindGroup,
    _params: wgpu::Buffer,
    max_per_dim: u32,
}

impl Residual {
    pub fn new(ctx: &GpuContext, io: ResidualIo<'_>, cfg: &ResidualConfig) -> Result<Self> {
        if cfg.terms.len() > 3 || (cfg.terms.is_empty() && cfg.next.is_none()) {
            return Err(Error::InvalidArgument(format!(
                "residual: {} terms{}",
                cfg.terms.len(),
                if cfg.next.is_none() {
                    " and no next norm"
                } else {
                    ""
                }
            )));
        }
        if cfg.next.is_some() != io.y.is_some() {
            return Err(Error::InvalidArgument(
                "residual: a next norm needs an output and only it".into(),
            ));
        }
        let kernel = ctx.kernel(&residual_spec(
            cfg.len,
            cfg.terms.len() as u32,
            cfg.next.is_some(),
        ))?;
        let offsets = std::iter::once(cfg.h)
            .chain(cfg.next)
            .chain(cfg.terms.iter().flat_map(|t| [t.o, t.w]));
        if cfg.len % 4 != 0 || offsets.clone().any(|o| o % 4 != 0) {
            return Err(Error::InvalidArgument(format!(
                "residual: rows of {} and offsets {:?} must be multiples of 4 elements",
                cfg.len,
                offsets.collect::<Vec<_>>()
            )));
        }
        let mut p = ResidualParams {
            h: cfg.h / 4,
            wn: cfg.next.unwrap_or(0) / 4,
            eps: cfg.eps,
            out_scale: cfg.out_scale,
            ..Default::default()
        };
        for (i, t) in cfg.terms.iter().enumerate() {
            p.o[i] = t.o / 4;
            p.w[i] = t.w / 4;
        }
        let params = ctx.params_init("residual.params", &p);
        let mut entries = vec![(0, io.arena), (1, io.norms)];
        if let Some(y) = io.y {
            entries.push((2, y));
        }
        entries.push((3, params.as_entire_binding()));
        entries.push((4, io.step));
        let bind_group = ctx.bind_at(&kernel, &entries);
        Ok(Self {
            kernel,
            bind_group,
            _params: params,
            max_per_dim: ctx.caps.max_workgroups_per_dim,
        })
    }
}

impl Op for Residual {
    fn encode(&self, pass: &mut wgpu::ComputePass<'_>, step: &StepParams) {
        pass.set_pipeline(self.kernel.pipeline());
        pass.set_bind_group(0, self.bind_group.get(), &[]);
        crate::gpu::dispatch(pass, grid(step.n_tokens, self.max_per_dim));
    }
}

/// `rows_per_token` rows of `len` elements per token.
pub struct RmsNorm {
    kernel: Arc<Kernel>,
    bind_group: BindGroup,
    rows_per_token: u32,
    last_row: bool,
    max_per_dim: u32,
}

/// Buffers an `RmsNorm` reads and writes.
pub struct RmsNormIo<'a> {
    /// `[n_tokens · rows_per_token, len]` f32
    pub x: wgpu::BindingResource<'a>,
    /// `[len]` f32, or `None` for a weightless norm
    pub weight: Option<wgpu::BindingResource<'a>>,
    /// `[n_tokens · rows_per_token, len]` f32 (must not alias `x`)
    pub y: wgpu::BindingResource<'a>,
    /// the step parameters (`gpu::StepParams`)
    pub step: wgpu::BindingResource<'a>,
}

impl RmsNorm {
    pub fn new(
        ctx: &GpuContext,
        io: RmsNormIo<'_>,
        len: u32,
        rows_per_token: u32,
        eps: f32,
        out: NormOut,
    ) -> Result<Self> {
        let kernel = ctx.kernel(&spec(out))?;
        let params = ctx.params_init(
            "rmsnorm.params",
            &Params {
                len,
                rows_per_token,
                eps,
                has_weight: io.weight.is_some() as u32,
                _pad: [0; 4],
            },
        );
        let weight = io.weight.unwrap_or_else(|| io.x.clone());
        let bind_group = ctx.bind(
            &kernel,
            &[io.x, weight, io.y, params.as_entire_binding(), io.step],
        );
        Ok(Self {
            kernel,
            bind_group,
            rows_per_token,
            last_row: out == NormOut::LastRow,
            max_per_dim: ctx.caps.max_workgroups_per_dim,
        })
    }
}

impl Op for RmsNorm {
    fn encode(&self, pass: &mut wgpu::ComputePass<'_>, step: &StepParams) {
        let rows = if self.last_row {
            1
        } else {
            step.n_tokens * self.rows_per_token
        };
        let [x, y, z] = grid(rows, self.max_per_dim);
        pass.set_pipeline(self.kernel.pipeline());
        pass.set_bind_group(0, self.bind_group.get(), &[]);
        crate::gpu::dispatch(pass, [x, y, z]);
    }
}
