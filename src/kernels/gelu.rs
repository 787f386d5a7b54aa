//! Gated-MLP activation (`shaders/gelu_mul.wgsl`): `a = gelu_tanh(gate) ⊙ up`, the middle of
//! `mlp(x) = W_down·(gelu_tanh(W_gate·x) ⊙ W_up·x)` (GEMMA.md §2.1.2–2.1.3), also used for the
//! Gemma 4 PLE gate (`gelu_tanh(W_inp_gate·h) ⊙ ple_l`).

use std::sync::Arc;

use crate::gpu::{grid, BindGroup, GpuContext, Kernel, KernelSpec, Op, StepParams};
use crate::{Error, Result};

const SOURCE: &str = include_str!("../../shaders/gelu_mul.wgsl");

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    width: u32,
    in_stride: u32,
    up_stride: u32,
    up_offset: u32,
}

/// Buffers a `GeluMul` reads and writes.
pub struct GeluMulIo<'a> {
    /// `[n_tokens, in_stride]` f32 (`W_gate·x`)
    pub gate: wgpu::BindingResource<'a>,
    /// `[n_tokens, in_stride]` f32 (`W_up·x`), or `[n_tokens, up_stride]` read from
    /// `up_offset` on (see [`GeluMul::with_up_rows`])
    pub up: wgpu::BindingResource<'a>,
    /// `[n_tokens, width]` f32 (may alias neither input)
    pub out: wgpu::BindingResource<'a>,
    /// the step parameters (`gpu::StepParams`): `n_tokens` rows
    pub step: wgpu::BindingResource<'a>,
}

/// Kernel specs this module can build (for shader validation).
pub fn specs() -> Vec<KernelSpec> {
    vec![spec()]
}

fn spec() -> KernelSpec {
    KernelSpec::new("gelu_mul", SOURCE).define("WG", super::ROW_WG)
}

/// `a[t, i] = gelu_tanh(gate[t, i]) · up[t, i]` over `n_tokens` rows of `width`.
pub struct GeluMul {
    kernel: Arc<Kernel>,
    bind_group: BindGroup,
    width: u32,
    max_per_dim: u32,
}

impl GeluMul {
    /// `in_stride`: elements between input rows; `None` means `width` (separate gate and up
    /// buffers). For a fused `[gate | up]` row of `2·width`, bind `up` at byte offset `4·width`
    /// and pass `Some(2·width)`.
    pub fn new(
        ctx: &GpuContext,
        io: GeluMulIo<'_>,
        width: u32,
        in_stride: Option<u32>,
    ) -> Result<Self> {
        let in_stride = in_stride.unwrap_or(width);
        Self::with_up_rows(ctx, io, width, in_stride, in_stride, 0)
    }

    /// Like [`GeluMul::new`] with the `up` rows laid out on their own: row `t` of `up` starts
    /// at element `t·up_stride + up_offset`. The Gemma 4 PLE gate reads layer `l`'s slice of
    /// the `[T, L·P]` per-layer inputs this way (`up_stride = L·P`, `up_offset = l·P`), with no
    /// 256-byte binding-offset alignment to satisfy.
    pub fn with_up_rows(
        ctx: &GpuContext,
        io: GeluMulIo<'_>,
        width: u32,
        in_stride: u32,
        up_stride: u32,
        up_offset: u32,
    ) -> Result<Self> {
        if width == 0 || in_stride < width || up_stride < width {
            return Err(Error::InvalidArgument(format!(
                "GeluMul: width {width} must be positive and ≤ the row strides {in_stride}, {up_stride}"
            )));
        }
        let kernel = ctx.kernel(&spec())?;
        let params = ctx.params_init(
            "gelu_mul.params",
            &Params {
                width,
                in_stride,
                up_stride,
                up_offset,
            },
        );
        let bind_group = ctx.bind(
            &kernel,
            &[io.gate, io.up, io.out, params.as_entire_binding(), io.step],
        );
        Ok(Self {
            kernel,
            bind_group,
            width,
            max_per_dim: ctx.caps.max_workgroups_per_dim,
        })
    }
}

impl Op for GeluMul {
    fn encode(&self, pass: &mut wgpu::ComputePass<'_>, step: &StepParams) {
        let groups = (step.n_tokens * self.width).div_ceil(super::ROW_WG);
        let [x, y, z] = grid(groups, self.max_per_dim);
        pass.set_pipeline(self.kernel.pipeline());
        pass.set_bind_group(0, self.bind_group.get(), &[]);
        crate::gpu::dispatch(pass, [x, y, z]);
    }
}
