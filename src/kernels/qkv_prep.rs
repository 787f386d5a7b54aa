//! Q/K/V preparation and KV-cache store of one layer in one dispatch (`shaders/qkv_prep.wgsl`),
//! from the fused projection output `[T, (nq + 2·nkv)·d]`:
//! - queries: `rope(rms(q)·w_q)·q_scale` → `[T, nq, d]` f32;
//! - keys: `rope(rms(k)·w_k)` → K cache slot `(pos0 + t) % cap`;
//! - values: `v` (Gemma 3) or `rms(v)` (Gemma 4, no weight) → V cache slot `(pos0 + t) % cap`.
//!
//! The cache holds f16 pairs packed in u32 (clamped to ±65504, then `pack2x16float`:
//! round to nearest even) or f32 (`kv_f32`). A Gemma 4 KV-shared layer has no
//! K/V: its projection rows are `nq·d` and only the queries are prepared.
//!
//! One dispatch instead of a prep per projection and a cache store (four dependent dispatches
//! per layer), and attention has nothing to read but the cache. The math is
//! [`crate::reference::rope::head_prep`]'s term for term (RMSNorm, then half-split RoPE from the
//! CPU-built [`crate::rope::RopeTable`]).
//! `q_norm` and `k_norm` come from one buffer at element offsets, so the op binds 8 storage
//! buffers: WebGPU's default per stage.

use std::sync::Arc;

use crate::gpu::{grid, BindGroup, GpuContext, Kernel, KernelSpec, Op, StepParams};
use crate::{Error, Result};

const SOURCE: &str = include_str!("../../shaders/qkv_prep.wgsl");

/// Invocations per workgroup: one workgroup per (token, head) and one invocation per output
/// pair, so 128 keeps every lane busy for d = 256 (Gemma's smallest head) and loops twice for
/// d = 512.
const WG: u32 = 128;

/// Mirrors `struct Params` in qkv_prep.wgsl.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    head_dim: u32,
    n_q_heads: u32,
    n_kv_heads: u32,
    in_stride: u32,
    q_norm_offset: u32,
    k_norm_offset: u32,
    v_norm: u32,
    cap: u32,
    eps: f32,
    q_scale: f32,
    _pad: [u32; 2],
}

/// What a [`QkvPrep`] computes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QkvPrepConfig {
    /// `d`: a positive multiple of 4.
    pub head_dim: u32,
    /// Query heads `nq`.
    pub n_q_heads: u32,
    /// KV heads `nkv` of the layer's cache (ignored without `store_kv`).
    pub n_kv_heads: u32,
    /// Prepare K and V and store them in the cache. `false` for a KV-shared layer, whose
    /// projection rows hold only the `nq·d` query values and which binds no cache.
    pub store_kv: bool,
    /// Multiplies the queries last (Gemma 3: `query_pre_attn_scalar^−0.5` when attention runs
    /// with scale 1; otherwise 1.0).
    pub q_scale: f32,
    /// Element offset of `w_q` (`[d]` f32) in [`QkvPrepIo::norms`].
    pub q_norm_offset: u32,
    /// Element offset of `w_k` (`[d]` f32) in [`QkvPrepIo::norms`] (ignored without `store_kv`).
    pub k_norm_offset: u32,
    /// Values are `rms(v)` with no weight (Gemma 4) instead of `v` as projected (Gemma 3).
    pub v_norm: bool,
    /// RMSNorm epsilon (GGUF `*.attention.layer_norm_rms_epsilon`, 1e-6 for Gemma).
    pub eps: f32,
    /// Cache slots: row `t` goes to slot `(pos0 + t) % cap` (see
    /// [`crate::kernels::attention::AttentionParams::min_cap`]). Rows a later row of the same
    /// step would overwrite (`T − t > cap`) are not stored.
    pub cap: u32,
    /// The cache holds f32 instead of f16 pairs.
    pub kv_f32: bool,
}

impl QkvPrepConfig {
    /// Elements per token of the fused projection: `(nq + 2·nkv)·d`, or `nq·d` without K/V.
    pub fn row_len(&self) -> u32 {
        self.heads() * self.head_dim
    }

    /// Heads per token the op prepares.
    fn heads(&self) -> u32 {
        if self.store_kv {
            self.n_q_heads + 2 * self.n_kv_heads
        } else {
            self.n_q_heads
        }
    }

    fn check(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidArgument(format!("QkvPrep: {m}")));
        if self.head_dim == 0 || self.head_dim % 4 != 0 {
            return bad(format!(
                "head_dim {} must be a positive multiple of 4",
                self.head_dim
            ));
        }
        if self.n_q_heads == 0 {
            return bad("n_q_heads must be positive".into());
        }
        if self.store_kv && (self.n_kv_heads == 0 || self.cap == 0) {
            return bad(format!(
                "storing K/V needs KV heads and cache slots (n_kv_heads {}, cap {})",
                self.n_kv_heads, self.cap
            ));
        }
        if !(self.eps.is_finite() && self.eps >= 0.0 && self.q_scale.is_finite()) {
            return bad(format!(
                "eps {} and q_scale {} must be finite (eps ≥ 0)",
                self.eps, self.q_scale
            ));
        }
        Ok(())
    }
}

/// Buffers a [`QkvPrep`] reads and writes.
pub struct QkvPrepIo<'a> {
    /// `[T, (nq + 2·nkv)·d]` f32 fused projection output (`[T, nq·d]` without K/V).
    pub qkv: wgpu::BindingResource<'a>,
    /// f32 norm weights: `w_q` `[d]` at `q_norm_offset`, `w_k` `[d]` at `k_norm_offset`.
    pub norms: wgpu::BindingResource<'a>,
    /// `[T, d/2, 2]` f32 (cos, sin) from `RopeTable::fill` for this step's positions.
    pub rope: wgpu::BindingResource<'a>,
    /// `[T, nq, d]` f32 prepared queries (must not alias `qkv`).
    pub q_out: wgpu::BindingResource<'a>,
    /// `[cap, nkv, d]` f16 pairs in u32 (f32 with `kv_f32`); `None` without `store_kv`.
    pub k_cache: Option<wgpu::BindingResource<'a>>,
    /// `[cap, nkv, d]` f16 pairs in u32 (f32 with `kv_f32`); `None` without `store_kv`.
    pub v_cache: Option<wgpu::BindingResource<'a>>,
    /// the step parameters (`gpu::StepParams`): `n_tokens` rows from `pos0`.
    pub step: wgpu::BindingResource<'a>,
}

fn spec(kv_f32: bool) -> KernelSpec {
    let name = if kv_f32 { "qkv_prep_kvf32" } else { "qkv_prep" };
    KernelSpec::new(name, SOURCE)
        .define("WG", WG)
        .flag("KV_F32", kv_f32)
}

/// Kernel specs this module can build (for shader validation).
pub fn specs() -> Vec<KernelSpec> {
    vec![spec(false), spec(true)]
}

/// Norm + RoPE + scale of every head of the step's tokens, with K/V written into the cache.
pub struct QkvPrep {
    kernel: Arc<Kernel>,
    bind_group: BindGroup,
    heads: u32,
    max_per_dim: u32,
}

impl QkvPrep {
    pub fn new(ctx: &GpuContext, io: QkvPrepIo<'_>, cfg: &QkvPrepConfig) -> Result<Self> {
        cfg.check()?;
        let kernel = ctx.kernel(&spec(cfg.kv_f32))?;
        let params = ctx.params_init(
            "qkv_prep.params",
            &Params {
                head_dim: cfg.head_dim,
                n_q_heads: cfg.n_q_heads,
                n_kv_heads: if cfg.store_kv { cfg.n_kv_heads } else { 0 },
                in_stride: cfg.row_len(),
                q_norm_offset: cfg.q_norm_offset,
                k_norm_offset: cfg.k_norm_offset,
                v_norm: cfg.v_norm as u32,
                cap: cfg.cap.max(1),
                eps: cfg.eps,
                q_scale: cfg.q_scale,
                _pad: [0; 2],
            },
        );
        let unused;
        let (k_cache, v_cache) = match (cfg.store_kv, io.k_cache, io.v_cache) {
            (true, Some(k), Some(v)) => (k, v),
            (false, None, None) => {
                // The shader never touches them, but WebGPU refuses one buffer in two writable
                // bindings of a bind group (Dawn: "writable storage buffer binding aliasing"):
                // two small buffers.
                unused = (
                    ctx.storage("qkv_prep.no_k_cache", 16)?,
                    ctx.storage("qkv_prep.no_v_cache", 16)?,
                );
                (unused.0.as_entire_binding(), unused.1.as_entire_binding())
            }
            (store, ..) => {
                return Err(Error::InvalidArgument(format!(
                    "QkvPrep: store_kv is {store} but the K/V cache bindings {} given",
                    if store { "are not both" } else { "are" }
                )))
            }
        };
        let bind_group = ctx.bind(
            &kernel,
            &[
                io.qkv,
                io.norms,
                io.rope,
                io.q_out,
                k_cache,
                v_cache,
                params.as_entire_binding(),
                io.step,
            ],
        );
        Ok(Self {
            kernel,
            bind_group,
            heads: cfg.heads(),
            max_per_dim: ctx.caps.max_workgroups_per_dim,
        })
    }
}

impl Op for QkvPrep {
    fn encode(&self, pass: &mut wgpu::ComputePass<'_>, step: &StepParams) {
        if step.n_tokens == 0 {
            return;
        }
        let [x, y, z] = grid(step.n_tokens * self.heads, self.max_per_dim);
        pass.set_pipeline(self.kernel.pipeline());
        pass.set_bind_group(0, self.bind_group.get(), &[]);
        crate::gpu::dispatch(pass, [x, y, z]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_layout_matches_wgsl() {
        assert_eq!(std::mem::size_of::<Params>(), 48);
    }

    #[test]
    fn row_len_covers_the_fused_projection() {
        let mut cfg = QkvPrepConfig {
            head_dim: 256,
            n_q_heads: 8,
            n_kv_heads: 1,
            store_kv: true,
            q_scale: 1.0,
            q_norm_offset: 0,
            k_norm_offset: 256,
            v_norm: true,
            eps: 1e-6,
            cap: 512,
            kv_f32: false,
        };
        assert_eq!(cfg.row_len(), 10 * 256);
        assert!(cfg.check().is_ok());
        cfg.store_kv = false;
        assert_eq!(cfg.row_len(), 8 * 256);
        cfg.head_dim = 6;
        assert!(cfg.check().is_err());
    }
}
