//! Per-head Q/K/V preparation (`shaders/head_prep.wgsl`): RMSNorm (weighted or weightless),
//! half-split RoPE from the step's CPU table ([`crate::rope::RopeTable`]), a scale, and the
//! output either as f32 (queries) or as f16 pairs packed in u32 (K/V staging for the cache).
//!
//! One op per (layer, projection); the modes used by the models:
//! - Gemma 3: q = rope(rms(q)·w_q)·query_pre_attn_scalar^−0.5, k = rope(rms(k)·w_k), v = v;
//! - Gemma 4: q = rope(rms(q)·w_q), k = rope(rms(k)·w_k), v = rms(v) (no weight, no RoPE).
//!
//! [`crate::kernels::qkv_prep::QkvPrep`] does all three and the KV-cache store in one dispatch,
//! with the same arithmetic; this op stays while the model still runs the per-projection ops.

use std::sync::Arc;

use crate::gpu::{grid, GpuContext, Kernel, KernelSpec, Op, StepParams};
use crate::{Error, Result};

const SOURCE: &str = include_str!("../../shaders/head_prep.wgsl");

/// Invocations per workgroup: one workgroup per (token, head) and one invocation per output
/// pair, so 128 keeps every lane busy for d = 256 (Gemma's smallest head) and loops twice for
/// d = 512, instead of idling half of a 256-wide group.
const WG: u32 = 128;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    head_dim: u32,
    n_heads: u32,
    in_stride: u32,
    in_offset: u32,
    norm: u32,
    rope: u32,
    eps: f32,
    scale: f32,
}

/// Per-head normalisation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadNorm {
    /// No normalisation (Gemma 3 V).
    None,
    /// `rms(x)·w` with the `[d]` weight in [`HeadPrepIo::weight`] (q/k norms).
    Weighted,
    /// `rms(x)` with no weight (Gemma 4 V-norm).
    Weightless,
}

/// Element type of the output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadOut {
    /// `[T, n_heads, d]` f32.
    F32,
    /// `[T, n_heads, d/2]` u32, each holding dims (2m, 2m+1) as f16 (low half = even dim),
    /// rounded by `pack2x16float` after clamping to ±65504 (WGSL leaves out-of-range
    /// conversions indeterminate). WGSL lets the rounding go either way; lavapipe (Mesa 22.3)
    /// rounds to nearest, ties to even, and keeps f16 subnormals: the test
    /// `f16_packing_is_round_to_nearest_even` checks this bit-exactly on every adapter it runs on.
    F16Packed,
}

/// What a `HeadPrep` computes.
#[derive(Clone, Copy, Debug)]
pub struct HeadPrepConfig {
    /// `d`: a multiple of 4.
    pub head_dim: u32,
    pub n_heads: u32,
    pub norm: HeadNorm,
    /// Apply half-split RoPE from [`HeadPrepIo::rope`].
    pub rope: bool,
    /// Multiplier applied last (1.0 for none).
    pub scale: f32,
    /// RMSNorm epsilon (GGUF `*.attention.layer_norm_rms_epsilon`, 1e-6 for Gemma).
    pub eps: f32,
    pub out: HeadOut,
    /// Elements between consecutive tokens' input rows; `None` means `n_heads·d` (a plain
    /// `[T, n_heads·d]` projection output). Set it to read one part of a fused QKV row.
    pub in_stride: Option<u32>,
    /// Elements before the first head of token 0 (e.g. the K part of a fused QKV row).
    pub in_offset: u32,
}

impl HeadPrepConfig {
    /// Queries or keys: `rope(rms(x)·w)·scale`, f32 or f16 out.
    pub fn qk(head_dim: u32, n_heads: u32, eps: f32, scale: f32, out: HeadOut) -> Self {
        Self {
            head_dim,
            n_heads,
            norm: HeadNorm::Weighted,
            rope: true,
            scale,
            eps,
            out,
            in_stride: None,
            in_offset: 0,
        }
    }

    /// Values: `v` (Gemma 3, `norm = None`) or `rms(v)` (Gemma 4, `norm = Weightless`), no RoPE.
    pub fn v(head_dim: u32, n_heads: u32, eps: f32, norm: HeadNorm, out: HeadOut) -> Self {
        Self {
            head_dim,
            n_heads,
            norm,
            rope: false,
            scale: 1.0,
            eps,
            out,
            in_stride: None,
            in_offset: 0,
        }
    }
}

/// Buffers a `HeadPrep` reads and writes.
pub struct HeadPrepIo<'a> {
    /// `[n_tokens, in_stride]` f32 projection output.
    pub x: wgpu::BindingResource<'a>,
    /// `[d]` f32 norm weight; required for `HeadNorm::Weighted`, ignored otherwise.
    pub weight: Option<wgpu::BindingResource<'a>>,
    /// `[n_tokens, d/2, 2]` f32 (cos, sin) from `RopeTable::fill` for this step's positions;
    /// required when `rope` is set, ignored otherwise.
    pub rope: Option<wgpu::BindingResource<'a>>,
    /// `[n_tokens, n_heads, d]` f32, or `[n_tokens, n_heads, d/2]` u32 f16 pairs
    /// (must not alias `x`).
    pub y: wgpu::BindingResource<'a>,
    /// the step parameters (`gpu::StepParams`): `n_tokens` rows.
    pub step: wgpu::BindingResource<'a>,
}

/// Kernel specs this module can build (for shader validation).
pub fn specs() -> Vec<KernelSpec> {
    vec![spec(HeadOut::F32), spec(HeadOut::F16Packed)]
}

fn spec(out: HeadOut) -> KernelSpec {
    let f16 = out == HeadOut::F16Packed;
    KernelSpec::new(if f16 { "head_prep_f16out" } else { "head_prep" }, SOURCE)
        .define("WG", WG)
        .flag("F16_OUT", f16)
}

/// Norm + RoPE + scale for `n_heads` heads of every token in the step.
pub struct HeadPrep {
    kernel: Arc<Kernel>,
    bind_group: wgpu::BindGroup,
    n_heads: u32,
    max_per_dim: u32,
}

impl HeadPrep {
    pub fn new(ctx: &GpuContext, io: HeadPrepIo<'_>, cfg: &HeadPrepConfig) -> Result<Self> {
        let bad = |m: String| Err(Error::InvalidArgument(format!("HeadPrep: {m}")));
        if cfg.head_dim == 0 || cfg.head_dim % 4 != 0 {
            return bad(format!(
                "head_dim {} must be a positive multiple of 4",
                cfg.head_dim
            ));
        }
        if cfg.n_heads == 0 {
            return bad("n_heads must be positive".into());
        }
        let row = cfg.n_heads * cfg.head_dim;
        let in_stride = cfg.in_stride.unwrap_or(row);
        if in_stride < row {
            return bad(format!("in_stride {in_stride} < n_heads·d = {row}"));
        }
        if cfg.norm == HeadNorm::Weighted && io.weight.is_none() {
            return bad("HeadNorm::Weighted needs a weight".into());
        }
        if cfg.rope && io.rope.is_none() {
            return bad("rope needs the step's cos/sin table".into());
        }
        let kernel = ctx.kernel(&spec(cfg.out))?;
        let params = ctx.params_init(
            "head_prep.params",
            &Params {
                head_dim: cfg.head_dim,
                n_heads: cfg.n_heads,
                in_stride,
                in_offset: cfg.in_offset,
                norm: match cfg.norm {
                    HeadNorm::None => 0,
                    HeadNorm::Weighted => 1,
                    HeadNorm::Weightless => 2,
                },
                rope: cfg.rope as u32,
                eps: cfg.eps,
                scale: cfg.scale,
            },
        );
        // Unused bindings still need a buffer: reuse the (read-only) input.
        let weight = match (cfg.norm, io.weight) {
            (HeadNorm::Weighted, Some(w)) => w,
            _ => io.x.clone(),
        };
        let rope = match (cfg.rope, io.rope) {
            (true, Some(r)) => r,
            _ => io.x.clone(),
        };
        let bind_group = ctx.bind(
            &kernel,
            &[
                io.x,
                weight,
                rope,
                io.y,
                params.as_entire_binding(),
                io.step,
            ],
        );
        Ok(Self {
            kernel,
            bind_group,
            n_heads: cfg.n_heads,
            max_per_dim: ctx.caps.max_workgroups_per_dim,
        })
    }
}

impl Op for HeadPrep {
    fn encode(&self, pass: &mut wgpu::ComputePass<'_>, step: &StepParams) {
        let [x, y, z] = grid(step.n_tokens * self.n_heads, self.max_per_dim);
        pass.set_pipeline(&self.kernel.pipeline);
        pass.set_bind_group(0, &self.bind_group, &[]);
        crate::gpu::dispatch(pass, [x, y, z]);
    }
}
