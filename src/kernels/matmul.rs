//! Quantized matrix products for every step size (`shaders/matmul.wgsl` and, through
//! [`Matvec`], `shaders/matvec.wgsl`): `y[t, r] (=|+=) Σ_c W[r, c] · x[t, c]` for
//! `t < step.n_tokens`, with `W` a [`QuantMatrix`] of any supported type.
//!
//! `encode` picks the kernel from `step.n_tokens`: the mat-vec (decode: ≤ 8 tokens, bandwidth
//! bound, each weight read once for all tokens) or the mat-mat (prefill: compute bound). The
//! mat-mat is the tiled one (`shaders/matmul.wgsl`, each weight dequantized once per 32-token
//! tile, staged in workgroup memory) on GPUs, and on CPU adapters, where barriers are what
//! costs, the one with a register block per invocation (`shaders/matmul_lanes.wgsl`; chosen
//! with the mat-vec's row-per-lane mapping, `Caps::matvec_lane_rows`). Both are built up front
//! so encoding never creates pipelines, and one op serves every step size. A matrix split
//! across buffers is one dispatch per part, each writing its own row range of `y`.

use std::sync::Arc;

use super::matvec::{quant_wgsl, Matvec, MatvecIn, MatvecIo, MatvecOut, SINGLE};
pub use super::matvec::{MATVEC_MAX_TOKENS, TYPES};
use crate::gguf::GgmlType;
use crate::gpu::{grid, BindGroup, GpuContext, Kernel, KernelSpec, Op, StepParams};
use crate::quant::QuantMatrix;
use crate::Result;

const MATMUL: &str = include_str!("../../shaders/matmul.wgsl");
const MATMUL_LANES: &str = include_str!("../../shaders/matmul_lanes.wgsl");

/// Output tile of the mat-mat kernel (rows × tokens), mirrored from `shaders/matmul.wgsl`.
pub const MATMUL_TILE: (u32, u32) = (64, 32);

/// The CPU mat-mat's block per invocation (rows × tokens) and its workgroup size, mirrored
/// from `shaders/matmul_lanes.wgsl`.
const LANES_BLOCK: (u32, u32) = (4, 16);
const LANES_WG: u32 = 64;

/// Parameters of one part, mirrored by `struct Params` in matmul.wgsl.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    k: u32,
    rows: u32,
    bpr: u32,
    sbase: u32,
    hbase: u32,
    y_stride: u32,
    y_offset: u32,
    x_offset: u32,
}

/// How the product is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MatmulOut {
    /// `y = W·x`
    Store,
    /// `y += W·x` (e.g. a projection feeding the residual stream)
    Accumulate,
}

/// `lanes`: the CPU kernel (a register block per invocation) instead of the tiled one.
fn matmul_spec(ty: GgmlType, out: MatmulOut, lanes: bool) -> KernelSpec {
    let acc = out == MatmulOut::Accumulate;
    KernelSpec::new(
        format!(
            "matmul{}_{}{}",
            if lanes { "_lanes" } else { "" },
            ty.name().to_lowercase(),
            if acc { "_acc" } else { "" }
        ),
        if lanes { MATMUL_LANES } else { MATMUL },
    )
    .define("QUANT", quant_wgsl(&[ty], &[SINGLE]))
    .flag("ACC", acc)
}

/// Kernel specs this module can build (for shader validation).
pub fn specs() -> Vec<KernelSpec> {
    let mut v = Vec::new();
    for ty in TYPES {
        for out in [MatmulOut::Store, MatmulOut::Accumulate] {
            for lanes in [false, true] {
                v.push(matmul_spec(ty, out, lanes));
            }
        }
    }
    v
}

/// Buffers a `Matmul` reads and writes.
pub struct MatmulIo<'a> {
    /// `[n_tokens, k]` f32 activations, from element `x_offset`
    pub x: wgpu::BindingResource<'a>,
    pub x_offset: u32,
    /// `[n_tokens, y_stride]` f32 output from element `y_offset` (must not alias `x`);
    /// `y_stride` is `n` (the matrix's rows) for a plain `[n_tokens, n]` output
    pub y: wgpu::BindingResource<'a>,
    pub y_offset: u32,
    pub y_stride: u32,
    /// the step parameters (`gpu::StepParams`)
    pub step: wgpu::BindingResource<'a>,
}

impl<'a> MatmulIo<'a> {
    /// `x` `[T, k]` into `y` `[T, n]`, both from element 0.
    pub fn plain(
        x: wgpu::BindingResource<'a>,
        y: wgpu::BindingResource<'a>,
        n: u32,
        step: wgpu::BindingResource<'a>,
    ) -> Self {
        Self {
            x,
            x_offset: 0,
            y,
            y_offset: 0,
            y_stride: n,
            step,
        }
    }
}

struct Part {
    rows: u32,
    bind_group: BindGroup,
    _params: wgpu::Buffer,
}

/// `y (=|+=) W·x` for one weight matrix, built once per (matrix, activation buffers).
pub struct Matmul {
    /// Mat-vecs of one token and of up to `MATVEC_MAX_TOKENS`.
    mv1: Matvec,
    mv4: Matvec,
    mm: Arc<Kernel>,
    /// `mm` is the CPU kernel (`shaders/matmul_lanes.wgsl`).
    lanes: bool,
    parts: Vec<Part>,
    max_per_dim: u32,
}

impl Matmul {
    pub fn new(
        ctx: &GpuContext,
        w: &QuantMatrix,
        io: MatmulIo<'_>,
        out: MatmulOut,
    ) -> Result<Self> {
        let ty = w.ty();
        let mv_out = match out {
            MatmulOut::Store => MatvecOut::Store,
            MatmulOut::Accumulate => MatvecOut::Accumulate,
        };
        let matvec = |nt: u32| {
            Matvec::new(
                ctx,
                &[w],
                MatvecIn::Buffer {
                    offset: io.x_offset,
                    stride: None,
                },
                mv_out,
                nt,
                MatvecIo {
                    x: io.x.clone(),
                    norms: None,
                    y: io.y.clone(),
                    y_offset: io.y_offset,
                    y_stride: io.y_stride,
                    z: None,
                    step: io.step.clone(),
                },
            )
        };
        let mv1 = matvec(1)?;
        let mv4 = matvec(MATVEC_MAX_TOKENS)?;
        // The CPU kernel reads x as vec4s.
        let lanes = ctx.caps.matvec_lane_rows && io.x_offset % 4 == 0 && w.k % 8 == 0;
        let mm = ctx.kernel(&matmul_spec(ty, out, lanes))?;
        let parts = w
            .parts
            .iter()
            .map(|part| {
                let params = ctx.params_init(
                    "matmul.params",
                    &Params {
                        k: w.k,
                        rows: part.rows,
                        bpr: w.layout.blocks_per_row(),
                        sbase: part.sbase,
                        hbase: part.hbase,
                        y_stride: io.y_stride,
                        y_offset: io.y_offset + part.row0,
                        x_offset: io.x_offset,
                    },
                );
                Part {
                    rows: part.rows,
                    bind_group: ctx.bind(
                        &mm,
                        &[
                            part.buffer.as_entire_binding(),
                            io.x.clone(),
                            io.y.clone(),
                            params.as_entire_binding(),
                            io.step.clone(),
                        ],
                    ),
                    _params: params,
                }
            })
            .collect();
        Ok(Self {
            mv1,
            mv4,
            mm,
            lanes,
            parts,
            max_per_dim: ctx.caps.max_workgroups_per_dim,
        })
    }
}

impl Op for Matmul {
    fn encode(&self, pass: &mut wgpu::ComputePass<'_>, step: &StepParams) {
        let t = step.n_tokens;
        if t == 0 {
            return;
        }
        if t == 1 {
            return self.mv1.encode(pass, step);
        }
        if t <= MATVEC_MAX_TOKENS {
            return self.mv4.encode(pass, step);
        }
        pass.set_pipeline(self.mm.pipeline());
        for part in &self.parts {
            let groups = if self.lanes {
                (part.rows.div_ceil(LANES_BLOCK.0) * t.div_ceil(LANES_BLOCK.1)).div_ceil(LANES_WG)
            } else {
                part.rows.div_ceil(MATMUL_TILE.0) * t.div_ceil(MATMUL_TILE.1)
            };
            pass.set_bind_group(0, part.bind_group.get(), &[]);
            crate::gpu::dispatch(pass, grid(groups, self.max_per_dim));
        }
    }
}
