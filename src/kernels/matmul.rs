//! Quantized matrix products (`shaders/matvec.wgsl`, `shaders/matmul.wgsl`): every projection
//! and the LM head. `y[t, r] (=|+=) Σ_c W[r, c] · x[t, c]` for `t < step.n_tokens`, with `W` a
//! [`QuantMatrix`] of any supported type (the type's dequantizer comes from
//! `shaders/quant/<type>.wgsl`).
//!
//! `encode` picks the kernel from `step.n_tokens`: the mat-vec (decode: ≤ 4 tokens, bandwidth
//! bound, each weight read once for all tokens) or the tiled mat-mat (prefill: compute bound,
//! each weight dequantized once per 32-token tile). Both are built up front so encoding never
//! creates pipelines, and one op serves every step size. A matrix split across buffers is one
//! dispatch per part, each writing its own row range of `y`.

use std::sync::Arc;

use crate::gguf::GgmlType;
use crate::gpu::{grid, GpuContext, Kernel, KernelSpec, Op, StepParams};
use crate::quant::{QuantMatrix, QuantPart};
use crate::Result;

const MATVEC: &str = include_str!("../../shaders/matvec.wgsl");
const MATMUL: &str = include_str!("../../shaders/matmul.wgsl");
const QUANT_PRELUDE: &str = include_str!("../../shaders/quant/prelude.wgsl");

/// Up to this many tokens use the mat-vec kernel (ggml-webgpu switches at `ne[1] <= 4` too).
pub const MATVEC_MAX_TOKENS: u32 = 4;
/// Output rows per mat-vec workgroup: each activation load serves this many rows. More rows
/// per workgroup means fewer workgroups, each with a longer chain of loads: 8 rows at one token
/// was 1.3–1.7× slower than 4 on the H100 (BENCHMARKS.md).
pub const MATVEC_ROWS: u32 = 4;
/// Output tile of the mat-mat kernel (rows × tokens), mirrored from `shaders/matmul.wgsl`.
pub const MATMUL_TILE: (u32, u32) = (64, 32);

/// Every type the kernels handle.
pub const TYPES: [GgmlType; 11] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q4K,
    GgmlType::Q5K,
    GgmlType::Q6K,
];

/// The WGSL type module for `ty` (prelude + `shaders/quant/<type>.wgsl`), inserted at the
/// kernels' `{{QUANT}}` line.
pub(crate) fn quant_wgsl(ty: GgmlType) -> String {
    let module = match ty {
        GgmlType::F32 => include_str!("../../shaders/quant/f32.wgsl"),
        GgmlType::F16 => include_str!("../../shaders/quant/f16.wgsl"),
        GgmlType::BF16 => include_str!("../../shaders/quant/bf16.wgsl"),
        GgmlType::Q4_0 => include_str!("../../shaders/quant/q4_0.wgsl"),
        GgmlType::Q4_1 => include_str!("../../shaders/quant/q4_1.wgsl"),
        GgmlType::Q5_0 => include_str!("../../shaders/quant/q5_0.wgsl"),
        GgmlType::Q5_1 => include_str!("../../shaders/quant/q5_1.wgsl"),
        GgmlType::Q8_0 => include_str!("../../shaders/quant/q8_0.wgsl"),
        GgmlType::Q4K => include_str!("../../shaders/quant/q4_k.wgsl"),
        GgmlType::Q5K => include_str!("../../shaders/quant/q5_k.wgsl"),
        GgmlType::Q6K => include_str!("../../shaders/quant/q6_k.wgsl"),
        _ => unreachable!("QuantMatrix only holds supported types"),
    };
    format!("{QUANT_PRELUDE}\n{module}")
}

/// Parameters of one part, mirrored by `struct Params` in matvec.wgsl and matmul.wgsl.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    k: u32,
    rows: u32,
    bpr: u32,
    sbase: u32,
    row0: u32,
    n: u32,
    /// [`MatvecGeluMul`]: elements between rows of `z`, and before row 0's first value.
    z_stride: u32,
    z_offset: u32,
}

impl Params {
    fn new(w: &QuantMatrix, part: &QuantPart, z_stride: u32, z_offset: u32) -> Self {
        Params {
            k: w.k,
            rows: part.rows,
            bpr: w.layout.blocks_per_row(),
            sbase: part.sbase,
            row0: part.row0,
            n: w.n,
            z_stride,
            z_offset,
        }
    }
}

/// How the product is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MatmulOut {
    /// `y = W·x`
    Store,
    /// `y += W·x` (e.g. a projection feeding the residual stream)
    Accumulate,
}

/// Mat-vec workgroup size for rows of `k` elements: enough invocations to cover a row in one or
/// two passes of 8-element chunks, at most 128 (so the batched reduction's 16·WG floats stay
/// within 8 KiB of workgroup memory).
fn matvec_wg(k: u32) -> u32 {
    if k / 8 > 512 {
        128
    } else {
        64
    }
}

fn lower(ty: GgmlType) -> String {
    ty.name().to_lowercase()
}

/// The mat-vec's write: plain, accumulate, or the gated activation of [`MatvecGeluMul`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MatvecOut {
    Plain(MatmulOut),
    GeluMul,
}

fn matvec_spec(ty: GgmlType, nt: u32, wg: u32, out: MatvecOut) -> KernelSpec {
    let acc = out == MatvecOut::Plain(MatmulOut::Accumulate);
    let gelu = out == MatvecOut::GeluMul;
    let suffix = match out {
        MatvecOut::Plain(MatmulOut::Store) => "",
        MatvecOut::Plain(MatmulOut::Accumulate) => "_acc",
        MatvecOut::GeluMul => "_gelu_mul",
    };
    KernelSpec::new(
        format!("matvec_{}_nt{nt}_wg{wg}{suffix}", lower(ty)),
        MATVEC,
    )
    .define("WG", wg)
    .define("ROWS", MATVEC_ROWS)
    .define("NT", nt)
    .define("QUANT", quant_wgsl(ty))
    .flag("ACC", acc)
    .flag("GELU_MUL", gelu)
}

fn matmul_spec(ty: GgmlType, out: MatmulOut) -> KernelSpec {
    let acc = out == MatmulOut::Accumulate;
    KernelSpec::new(
        format!("matmul_{}{}", lower(ty), if acc { "_acc" } else { "" }),
        MATMUL,
    )
    .define("QUANT", quant_wgsl(ty))
    .flag("ACC", acc)
}

/// Kernel specs this module can build (for shader validation).
pub fn specs() -> Vec<KernelSpec> {
    let mut v = Vec::new();
    for ty in TYPES {
        for out in [MatmulOut::Store, MatmulOut::Accumulate] {
            v.push(matmul_spec(ty, out));
        }
        for out in [
            MatvecOut::Plain(MatmulOut::Store),
            MatvecOut::Plain(MatmulOut::Accumulate),
            MatvecOut::GeluMul,
        ] {
            for nt in [1, MATVEC_MAX_TOKENS] {
                for wg in [64, 128] {
                    v.push(matvec_spec(ty, nt, wg, out));
                }
            }
        }
    }
    v
}

/// Buffers a `Matmul` reads and writes.
pub struct MatmulIo<'a> {
    /// `[n_tokens, k]` f32 activations
    pub x: wgpu::BindingResource<'a>,
    /// `[n_tokens, n]` f32 output (must not alias `x`)
    pub y: wgpu::BindingResource<'a>,
    /// the step parameters (`gpu::StepParams`)
    pub step: wgpu::BindingResource<'a>,
}

struct Part {
    rows: u32,
    /// Bind groups of the 1-token mat-vec, the ≤4-token mat-vec and the mat-mat.
    mv1: wgpu::BindGroup,
    mv4: wgpu::BindGroup,
    mm: wgpu::BindGroup,
    _params: wgpu::Buffer,
}

/// `y (=|+=) W·x` for one weight matrix, built once per (matrix, activation buffers).
pub struct Matmul {
    mv1: Arc<Kernel>,
    mv4: Arc<Kernel>,
    mm: Arc<Kernel>,
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
        let wg = matvec_wg(w.k);
        let mv1 = ctx.kernel(&matvec_spec(ty, 1, wg, MatvecOut::Plain(out)))?;
        let mv4 = ctx.kernel(&matvec_spec(
            ty,
            MATVEC_MAX_TOKENS,
            wg,
            MatvecOut::Plain(out),
        ))?;
        let mm = ctx.kernel(&matmul_spec(ty, out))?;
        let parts = w
            .parts
            .iter()
            .map(|part| {
                let params = ctx.params_init("matmul.params", &Params::new(w, part, 0, 0));
                let bind = |kernel: &Kernel| {
                    ctx.bind(
                        kernel,
                        &[
                            part.buffer.as_entire_binding(),
                            io.x.clone(),
                            io.y.clone(),
                            params.as_entire_binding(),
                            io.step.clone(),
                        ],
                    )
                };
                Part {
                    rows: part.rows,
                    mv1: bind(&mv1),
                    mv4: bind(&mv4),
                    mm: bind(&mm),
                    _params: params,
                }
            })
            .collect();
        Ok(Self {
            mv1,
            mv4,
            mm,
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
        let (kernel, pick): (&Kernel, fn(&Part) -> &wgpu::BindGroup) = if t == 1 {
            (&self.mv1, |p| &p.mv1)
        } else if t <= MATVEC_MAX_TOKENS {
            (&self.mv4, |p| &p.mv4)
        } else {
            (&self.mm, |p| &p.mm)
        };
        pass.set_pipeline(&kernel.pipeline);
        for part in &self.parts {
            let groups = if t <= MATVEC_MAX_TOKENS {
                part.rows.div_ceil(MATVEC_ROWS)
            } else {
                part.rows.div_ceil(MATMUL_TILE.0) * t.div_ceil(MATMUL_TILE.1)
            };
            let [x, y, z] = grid(groups, self.max_per_dim);
            pass.set_bind_group(0, pick(part), &[]);
            crate::gpu::dispatch(pass, [x, y, z]);
        }
    }
}

/// Buffers a [`MatvecGeluMul`] reads and writes.
pub struct MatvecGeluMulIo<'a> {
    /// `[n_tokens, k]` f32 activations
    pub x: wgpu::BindingResource<'a>,
    /// `[n_tokens, z_stride]` f32: row `t`'s factors start at element `t·z_stride + z_offset`
    pub z: wgpu::BindingResource<'a>,
    /// `[n_tokens, n]` f32 output (aliases neither input)
    pub y: wgpu::BindingResource<'a>,
    /// the step parameters (`gpu::StepParams`)
    pub step: wgpu::BindingResource<'a>,
}

/// Decode-sized steps only (`n_tokens ≤ MATVEC_MAX_TOKENS`, see [`MatvecGeluMul::covers`]):
/// `y[t, r] = gelu_tanh(Σ_c W[r, c]·x[t, c]) · z[t·z_stride + z_offset + r]`, the mat-vec and
/// the gated activation in one dispatch (the FFN's `gelu(W_gate·x) ⊙ up` with `up` computed
/// first, or Gemma 4's per-layer gate against its input slice). Longer steps use [`Matmul`]
/// and `GeluMul`, whose mat-mat has no epilogue.
pub struct MatvecGeluMul {
    mv1: Arc<Kernel>,
    mv4: Arc<Kernel>,
    /// Per part: rows, and the bind groups of the 1-token and ≤4-token kernels.
    parts: Vec<(u32, wgpu::BindGroup, wgpu::BindGroup, wgpu::Buffer)>,
    max_per_dim: u32,
}

impl MatvecGeluMul {
    pub fn new(
        ctx: &GpuContext,
        w: &QuantMatrix,
        io: MatvecGeluMulIo<'_>,
        z_stride: u32,
        z_offset: u32,
    ) -> Result<Self> {
        let ty = w.ty();
        let wg = matvec_wg(w.k);
        let mv1 = ctx.kernel(&matvec_spec(ty, 1, wg, MatvecOut::GeluMul))?;
        let mv4 = ctx.kernel(&matvec_spec(ty, MATVEC_MAX_TOKENS, wg, MatvecOut::GeluMul))?;
        let parts = w
            .parts
            .iter()
            .map(|part| {
                let params = ctx.params_init(
                    "matvec_gelu_mul.params",
                    &Params::new(w, part, z_stride, z_offset),
                );
                let bind = |kernel: &Kernel| {
                    ctx.bind(
                        kernel,
                        &[
                            part.buffer.as_entire_binding(),
                            io.x.clone(),
                            io.y.clone(),
                            params.as_entire_binding(),
                            io.step.clone(),
                            io.z.clone(),
                        ],
                    )
                };
                (part.rows, bind(&mv1), bind(&mv4), params)
            })
            .collect();
        Ok(Self {
            mv1,
            mv4,
            parts,
            max_per_dim: ctx.caps.max_workgroups_per_dim,
        })
    }

    /// Whether a step of `n_tokens` rows can use this op.
    pub fn covers(n_tokens: u32) -> bool {
        n_tokens <= MATVEC_MAX_TOKENS
    }
}

impl Op for MatvecGeluMul {
    fn encode(&self, pass: &mut wgpu::ComputePass<'_>, step: &StepParams) {
        let t = step.n_tokens;
        debug_assert!(Self::covers(t), "MatvecGeluMul runs steps of ≤ 4 tokens");
        if t == 0 || !Self::covers(t) {
            return;
        }
        let kernel = if t == 1 { &self.mv1 } else { &self.mv4 };
        pass.set_pipeline(&kernel.pipeline);
        for (rows, bg1, bg4, _) in &self.parts {
            let [x, y, z] = grid(rows.div_ceil(MATVEC_ROWS), self.max_per_dim);
            pass.set_bind_group(0, if t == 1 { bg1 } else { bg4 }, &[]);
            crate::gpu::dispatch(pass, [x, y, z]);
        }
    }
}
