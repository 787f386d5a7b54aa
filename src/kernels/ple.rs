//! Gemma 4 per-layer inputs (`shaders/ple_combine.wgsl`) and the move of a step's last row to
//! the front (`shaders/copy_row.wgsl`) that lets the KV-shared layers run on one token.
//!
//! The per-layer-embedding table itself (`per_layer_token_embd`, 1.3–1.8 GiB for E2B) never
//! reaches the GPU: the model reads one row per token from the mapped file and uploads it
//! (`tok` below); only the context projection `W_plm·x` runs here, as a mat-vec.

use std::sync::Arc;

use crate::gpu::{grid, BindGroup, GpuContext, Kernel, KernelSpec, Op, StepParams};
use crate::{Error, Result};

const COMBINE_SOURCE: &str = include_str!("../../shaders/ple_combine.wgsl");
const COPY_SOURCE: &str = include_str!("../../shaders/copy_row.wgsl");

/// Kernel specs this module can build (for shader validation).
pub fn specs() -> Vec<KernelSpec> {
    vec![combine_spec(), copy_spec()]
}

fn combine_spec() -> KernelSpec {
    KernelSpec::new("ple_combine", COMBINE_SOURCE).define("WG", super::ROW_WG)
}

fn copy_spec() -> KernelSpec {
    KernelSpec::new("copy_row", COPY_SOURCE).define("WG", super::ROW_WG)
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct CombineParams {
    width: u32,
    layers: u32,
    eps: f32,
    ctx_scale: f32,
    tok_scale: f32,
    out_scale: f32,
    _pad: [u32; 2],
}

/// Shape and constants of the per-layer inputs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PleConfig {
    /// `P`, the per-layer input width.
    pub width: u32,
    /// `L`, one row of `P` per layer and token.
    pub layers: u32,
    pub eps: f32,
    /// Multiplies `W_plm·x` before its norm: `H^−0.5`.
    pub ctx_scale: f32,
    /// Multiplies the table row: `√P`.
    pub tok_scale: f32,
    /// Multiplies the sum: `2^−0.5`.
    pub out_scale: f32,
}

impl PleConfig {
    /// Gemma 4's constants for hidden size `hidden`, `layers` layers of width `width`.
    pub fn gemma4(hidden: u32, width: u32, layers: u32, eps: f32) -> Self {
        Self {
            width,
            layers,
            eps,
            ctx_scale: (hidden as f32).powf(-0.5),
            tok_scale: (width as f32).sqrt(),
            out_scale: std::f32::consts::FRAC_1_SQRT_2,
        }
    }
}

/// Buffers a [`PleCombine`] reads and writes.
pub struct PleCombineIo<'a> {
    /// `[n_tokens, L·P]` f32: `W_plm·x`
    pub ctx: wgpu::BindingResource<'a>,
    /// `[n_tokens, L·P]` f32: the tokens' rows of the per-layer table, unscaled
    pub tok: wgpu::BindingResource<'a>,
    /// `[P]` f32: `per_layer_proj_norm`
    pub weight: wgpu::BindingResource<'a>,
    /// `[n_tokens, L·P]` f32 (aliases neither input)
    pub out: wgpu::BindingResource<'a>,
    /// the step parameters (`gpu::StepParams`)
    pub step: wgpu::BindingResource<'a>,
}

/// `ple[t, l] = (rms(ctx[t, l]·ctx_scale)·w + tok[t, l]·tok_scale)·out_scale`.
pub struct PleCombine {
    kernel: Arc<Kernel>,
    bind_group: BindGroup,
    layers: u32,
    max_per_dim: u32,
}

impl PleCombine {
    pub fn new(ctx: &GpuContext, io: PleCombineIo<'_>, cfg: &PleConfig) -> Result<Self> {
        if cfg.width == 0 || cfg.layers == 0 {
            return Err(Error::InvalidArgument(format!(
                "per-layer inputs: width {} × {} layers",
                cfg.width, cfg.layers
            )));
        }
        let kernel = ctx.kernel(&combine_spec())?;
        let params = ctx.params_init(
            "ple_combine.params",
            &CombineParams {
                width: cfg.width,
                layers: cfg.layers,
                eps: cfg.eps,
                ctx_scale: cfg.ctx_scale,
                tok_scale: cfg.tok_scale,
                out_scale: cfg.out_scale,
                _pad: [0; 2],
            },
        );
        let bind_group = ctx.bind(
            &kernel,
            &[
                io.ctx,
                io.tok,
                io.weight,
                io.out,
                params.as_entire_binding(),
                io.step,
            ],
        );
        Ok(Self {
            kernel,
            bind_group,
            layers: cfg.layers,
            max_per_dim: ctx.caps.max_workgroups_per_dim,
        })
    }
}

impl Op for PleCombine {
    fn encode(&self, pass: &mut wgpu::ComputePass<'_>, step: &StepParams) {
        let [x, y, z] = grid(step.n_tokens * self.layers, self.max_per_dim);
        pass.set_pipeline(self.kernel.pipeline());
        pass.set_bind_group(0, self.bind_group.get(), &[]);
        crate::gpu::dispatch(pass, [x, y, z]);
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct CopyParams {
    len: u32,
    _pad: [u32; 3],
}

/// `x[0, :] = x[n_tokens − 1, :]` over rows of `len` f32.
pub struct LastRowToFront {
    kernel: Arc<Kernel>,
    bind_group: BindGroup,
    len: u32,
    max_per_dim: u32,
}

impl LastRowToFront {
    /// `x`: `[n_tokens, len]` f32; `step`: the step parameters whose `n_tokens` names the last row.
    pub fn new(
        ctx: &GpuContext,
        x: wgpu::BindingResource<'_>,
        step: wgpu::BindingResource<'_>,
        len: u32,
    ) -> Result<Self> {
        let kernel = ctx.kernel(&copy_spec())?;
        let params = ctx.params_init("copy_row.params", &CopyParams { len, _pad: [0; 3] });
        let bind_group = ctx.bind(&kernel, &[x, params.as_entire_binding(), step]);
        Ok(Self {
            kernel,
            bind_group,
            len,
            max_per_dim: ctx.caps.max_workgroups_per_dim,
        })
    }
}

impl Op for LastRowToFront {
    fn encode(&self, pass: &mut wgpu::ComputePass<'_>, step: &StepParams) {
        if step.n_tokens <= 1 {
            return;
        }
        let [x, y, z] = grid(self.len.div_ceil(super::ROW_WG), self.max_per_dim);
        pass.set_pipeline(self.kernel.pipeline());
        pass.set_bind_group(0, self.bind_group.get(), &[]);
        crate::gpu::dispatch(pass, [x, y, z]);
    }
}
