//! RMSNorm (`shaders/rmsnorm.wgsl`): the input norms, per-head q/k norms, Gemma 4's
//! weightless V-norm, and the post-norms fused with the residual add (`h += rms(x)·w`, and
//! Gemma 4's `h = (h + rms(x)·w)·s` with the layer scalar `s`).

use std::sync::Arc;

use crate::gpu::{grid, GpuContext, Kernel, KernelSpec, Op, StepParams};
use crate::Result;

const SOURCE: &str = include_str!("../../shaders/rmsnorm.wgsl");

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    len: u32,
    rows_per_token: u32,
    eps: f32,
    has_weight: u32,
    out_scale: f32,
    _pad: [u32; 3],
}

/// How the normalised row is written.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum NormOut {
    /// `y = rms(x)·w`
    Store,
    /// `y += rms(x)·w` (residual add)
    Add,
    /// `y = (y + rms(x)·w)·s`: the residual add of Gemma 4's last block in a layer, followed
    /// by the layer's `layer_output_scale` `s` on the whole residual stream
    AddScaled(f32),
    /// `y[0] = rms(x[n_tokens − 1])·w`: only the step's last row (before the LM head)
    LastRow,
}

/// Kernel specs this module can build (for shader validation).
pub fn specs() -> Vec<KernelSpec> {
    let mut v: Vec<KernelSpec> = [NormOut::Store, NormOut::Add, NormOut::LastRow]
        .into_iter()
        .map(|o| spec(o, false))
        .collect();
    v.push(spec(NormOut::Add, true));
    v
}

fn spec(out: NormOut, then_norm: bool) -> KernelSpec {
    let name = match out {
        NormOut::Store => "rmsnorm",
        NormOut::Add | NormOut::AddScaled(_) if then_norm => "rmsnorm_add_norm",
        NormOut::Add | NormOut::AddScaled(_) => "rmsnorm_add",
        NormOut::LastRow => "rmsnorm_last_row",
    };
    KernelSpec::new(name, SOURCE)
        .define("WG", super::ROW_WG)
        .flag("ADD", matches!(out, NormOut::Add | NormOut::AddScaled(_)))
        .flag("THEN_NORM", then_norm)
        .flag("LAST_ROW", out == NormOut::LastRow)
}

/// The next block's input norm, computed by a post-norm's dispatch on the row it just updated
/// ([`RmsNorm::with_next_norm`]): saves a dispatch (and a pass over the row) per block.
pub struct NextNorm<'a> {
    /// `[len]` f32
    pub weight: wgpu::BindingResource<'a>,
    /// `[n_tokens, len]` f32: `rms(h)·weight` of the updated residual row
    pub y: wgpu::BindingResource<'a>,
}

/// `rows_per_token` rows of `len` elements per token.
pub struct RmsNorm {
    kernel: Arc<Kernel>,
    bind_group: wgpu::BindGroup,
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
        Self::build(ctx, io, None, len, rows_per_token, eps, out)
    }

    /// `h = (h + rms(x)·w)·s` (`out`: `Add` or `AddScaled`), then `next.y = rms(h)·next.weight`
    /// in the same dispatch. One row per token (the residual stream).
    pub fn with_next_norm(
        ctx: &GpuContext,
        io: RmsNormIo<'_>,
        next: NextNorm<'_>,
        len: u32,
        eps: f32,
        out: NormOut,
    ) -> Result<Self> {
        if !matches!(out, NormOut::Add | NormOut::AddScaled(_)) || io.weight.is_none() {
            return Err(crate::Error::InvalidArgument(
                "rmsnorm: a fused next norm follows a weighted residual add".into(),
            ));
        }
        Self::build(ctx, io, Some(next), len, 1, eps, out)
    }

    fn build(
        ctx: &GpuContext,
        io: RmsNormIo<'_>,
        next: Option<NextNorm<'_>>,
        len: u32,
        rows_per_token: u32,
        eps: f32,
        out: NormOut,
    ) -> Result<Self> {
        let kernel = ctx.kernel(&spec(out, next.is_some()))?;
        let params = ctx.params_init(
            "rmsnorm.params",
            &Params {
                len,
                rows_per_token,
                eps,
                has_weight: io.weight.is_some() as u32,
                out_scale: match out {
                    NormOut::AddScaled(s) => s,
                    _ => 1.0,
                },
                _pad: [0; 3],
            },
        );
        let weight = io.weight.unwrap_or_else(|| io.x.clone());
        let mut resources = vec![io.x, weight, io.y, params.as_entire_binding(), io.step];
        if let Some(n) = next {
            resources.extend([n.weight, n.y]);
        }
        let bind_group = ctx.bind(&kernel, &resources);
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
        pass.set_pipeline(&self.kernel.pipeline);
        pass.set_bind_group(0, &self.bind_group, &[]);
        crate::gpu::dispatch(pass, [x, y, z]);
    }
}
