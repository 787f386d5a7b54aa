//! Embedding gather (`shaders/embed.wgsl`): `h[t, :] = dequant(E[token[t], :]) · scale` for
//! `t < step.n_tokens`, from a [`QuantMatrix`] table of any supported type (Gemma's
//! `token_embd`, Q8_0/Q6_K/Q4_K…, and `per_layer_token_embd`). A table split across buffers is
//! one dispatch per part; each token's row lives in exactly one part, the others skip it.

use std::sync::Arc;

use super::matvec::{quant_wgsl, SINGLE, TYPES};
use crate::gguf::GgmlType;
use crate::gpu::{grid, BindGroup, GpuContext, Kernel, KernelSpec, Op, StepParams};
use crate::quant::QuantMatrix;
use crate::Result;

const SOURCE: &str = include_str!("../../shaders/embed.wgsl");
/// Invocations per workgroup (each dequantizes 8 elements).
const WG: u32 = 64;

/// Mirrors `struct Params` in embed.wgsl.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    k: u32,
    rows: u32,
    bpr: u32,
    sbase: u32,
    row0: u32,
    scale: f32,
    hbase: u32,
    _pad: u32,
}

fn spec(ty: GgmlType) -> KernelSpec {
    KernelSpec::new(format!("embed_{}", ty.name().to_lowercase()), SOURCE)
        .define("WG", WG)
        .define("QUANT", quant_wgsl(&[ty], &[SINGLE]))
}

/// Kernel specs this module can build (for shader validation).
pub fn specs() -> Vec<KernelSpec> {
    TYPES.into_iter().map(spec).collect()
}

/// Buffers an `Embed` reads and writes.
pub struct EmbedIo<'a> {
    /// `[n_tokens]` u32 token ids (rows of the table; ids ≥ its rows write nothing)
    pub tokens: wgpu::BindingResource<'a>,
    /// `[n_tokens, k]` f32 output
    pub out: wgpu::BindingResource<'a>,
    /// the step parameters (`gpu::StepParams`)
    pub step: wgpu::BindingResource<'a>,
}

/// Row gather from one embedding table, built once.
pub struct Embed {
    kernel: Arc<Kernel>,
    parts: Vec<(BindGroup, wgpu::Buffer)>,
    groups_per_token: u32,
    max_per_dim: u32,
}

impl Embed {
    /// `scale` multiplies every value (Gemma: `sqrt(hidden)` for `token_embd`).
    pub fn new(ctx: &GpuContext, table: &QuantMatrix, io: EmbedIo<'_>, scale: f32) -> Result<Self> {
        let kernel = ctx.kernel(&spec(table.ty()))?;
        let parts = table
            .parts
            .iter()
            .map(|part| {
                let params = ctx.params_init(
                    "embed.params",
                    &Params {
                        k: table.k,
                        rows: part.rows,
                        bpr: table.layout.blocks_per_row(),
                        sbase: part.sbase,
                        row0: part.row0,
                        scale,
                        hbase: part.hbase,
                        _pad: 0,
                    },
                );
                let bg = ctx.bind(
                    &kernel,
                    &[
                        part.buffer.as_entire_binding(),
                        io.tokens.clone(),
                        io.out.clone(),
                        params.as_entire_binding(),
                        io.step.clone(),
                    ],
                );
                (bg, params)
            })
            .collect();
        Ok(Self {
            kernel,
            parts,
            groups_per_token: (table.k / 8).div_ceil(WG),
            max_per_dim: ctx.caps.max_workgroups_per_dim,
        })
    }
}

impl Op for Embed {
    fn encode(&self, pass: &mut wgpu::ComputePass<'_>, step: &StepParams) {
        if step.n_tokens == 0 {
            return;
        }
        let [x, y, z] = grid(step.n_tokens * self.groups_per_token, self.max_per_dim);
        pass.set_pipeline(self.kernel.pipeline());
        for (bg, _) in &self.parts {
            pass.set_bind_group(0, bg.get(), &[]);
            crate::gpu::dispatch(pass, [x, y, z]);
        }
    }
}
