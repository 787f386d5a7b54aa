//! Attention over the KV cache (`shaders/attention_decode.wgsl`, `attention.wgsl`,
//! `attention_merge.wgsl`).
//!
//! Every key is read from the cache: the step's own K/V rows are stored before attention runs
//! (by [`crate::kernels::qkv_prep::QkvPrep`]). That is correct
//! only if storing row `t` of a step never overwrites a key an earlier row of the same step
//! still needs, so the ring of a sliding layer (window `W`) must hold
//! `min(context, W + T_max − 1)` slots: row 0 of a `T`-row step reads keys from `pos0 − W + 1`
//! while the step writes up to `pos0 + T − 1` ([`AttentionParams::min_cap`], checked by
//! [`Attention::new`]). A full layer's cache holds the whole context.
//!
//! Two kernels, chosen per step by the rows each KV head has (`T·nq/nkv`):
//! - decode-sized steps (≤ [`DECODE_MAX_ROWS`] rows): flash-decoding. The key range is split
//!   across many workgroups so even one KV head fills a big GPU at long context (at decode the
//!   whole K/V of a layer, 0.5–2 MB for Gemma 4 E2B, must be in flight at once); lanes read K/V
//!   rows straight from the cache with 16-byte loads, and only the query tile and a block of
//!   scores live in workgroup memory;
//! - everything else: the tiled flash-attention kernel (a workgroup owns a tile of query rows
//!   of one KV head and walks its keys, staging K through workgroup memory), with the same key
//!   splitting when a step has few row tiles and a long key range.
//!
//! Either way, a merge pass combines the splits when there is more than one.
//!
//! The causal and sliding masks are computed in the shaders, so neither a mask nor a score
//! matrix ever exists in memory. K/V storage is f16 pairs packed in u32 by default, or f32 with
//! [`AttentionParams::kv_f32`] (twice the memory, no K/V rounding; [`kv_bytes_per_elem`] sizes
//! the buffers).

use std::sync::Arc;

use crate::gpu::{grid, BindGroup, Caps, GpuContext, Kernel, KernelSpec, Op, StepParams};
use crate::{Error, Result};

const SOURCE: &str = include_str!("../../shaders/attention.wgsl");
const DECODE_SOURCE: &str = include_str!("../../shaders/attention_decode.wgsl");
const MERGE_SOURCE: &str = include_str!("../../shaders/attention_merge.wgsl");

/// Head dimensions the kernels are built for: Gemma's 256 and 512, and the smaller powers of
/// two that other configurations (and tiny test models) use.
pub const HEAD_DIMS: [u32; 7] = [8, 16, 32, 64, 128, 256, 512];

/// Steps with at most this many query rows per KV head (`T·nq/nkv`) run the decode kernel:
/// decode steps, and the few-token steps that verify drafts (E2B: up to 8 tokens). The tiled
/// kernel's 64-row tiles would leave such a step's rows mostly empty (H100, E2B: a 2–4 token
/// step took 16.8 ms with it, against 4.6 ms for one token).
pub const DECODE_MAX_ROWS: u32 = 64;
/// Rows per KV head the decode kernel's split scratch is sized for (one E2B token): a step with
/// more rows gets proportionally fewer splits, and its extra row tiles keep the GPU busy.
const DECODE_SCRATCH_ROWS: u32 = 8;
/// Most key splits of a decode step (bounds the partials scratch): 128 splits of 32 keys cover
/// 4,096 keys; longer contexts get longer splits.
const DECODE_MAX_SPLITS: u32 = 128;
/// Aim for this many decode workgroups (two per SM of an H100) before splitting stops paying.
const DECODE_TARGET_WORKGROUPS: u32 = 256;
/// Default least number of keys per split of the decode kernel: two score passes. Below it the
/// partials (`rows·d` floats per split) outweigh the split's own K/V.
pub const DEFAULT_DECODE_SPLIT_KEYS: u32 = 32;

/// WebGPU's default workgroup memory limit, which every portable kernel shape fits.
const WEBGPU_WORKGROUP_BYTES: u32 = 16 << 10;

/// Most key splits of one tiled step (bounds the partials scratch).
const MAX_SPLITS: u32 = 32;
/// Tiled steps of up to this many tokens get the full `MAX_SPLITS` of scratch; longer steps
/// split less (they already have many row tiles).
const SPLIT_TOKENS: u32 = 4;
/// Aim for at least this many tiled workgroups before splitting stops paying.
const TARGET_WORKGROUPS: u32 = 128;
/// Default least number of keys per split of the tiled kernel: below it the merge costs more
/// than it saves.
pub const DEFAULT_SPLIT_KEYS: u32 = 256;

/// Which kernel runs a step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AttentionKernel {
    /// The decode kernel for steps of ≤ [`DECODE_MAX_ROWS`] rows per KV head, else the tiled one.
    #[default]
    Auto,
    /// Always the decode kernel (correct for any step; slower than the tiled one for long ones).
    Decode,
    /// Always the tiled kernel (the pre-decode-kernel path; benchmarks compare against it).
    Tiled,
}

/// Layer geometry and masking, fixed when the op is built.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionParams {
    /// Query heads `nq` (≤ 16 in Gemma; any multiple of `n_kv_heads` works).
    pub n_q_heads: u32,
    /// KV heads `nkv`; query head `h` reads KV head `h / (nq / nkv)`.
    pub n_kv_heads: u32,
    /// Head dimension `d`, one of [`HEAD_DIMS`].
    pub head_dim: u32,
    /// Cache slots: key `j` lives in slot `j % cap`. At least [`AttentionParams::min_cap`]:
    /// the context for a full layer, `min(context, window + max_tokens − 1)` for a sliding one.
    pub cap: u32,
    /// Sliding window `W` (0 = full attention): `p − W < j ≤ p`.
    pub window: u32,
    /// Positions the cache serves: every step has `pos0 + T ≤ context`.
    pub context: u32,
    /// Multiplies `q·k`: Gemma 3 `query_pre_attn_scalar^−0.5`, Gemma 4 1.0 (or 1.0 when the
    /// queries were scaled already, e.g. by `QkvPrepConfig::q_scale`).
    pub scale: f32,
    /// Most tokens of one step (sizes the split scratch and the sliding ring).
    pub max_tokens: u32,
    /// Least keys per split (0: [`DEFAULT_DECODE_SPLIT_KEYS`] for the decode kernel,
    /// [`DEFAULT_SPLIT_KEYS`] for the tiled one).
    pub split_keys: u32,
    /// K/V cache rows hold f32 instead of f16 pairs: twice the memory, no f16 rounding of K/V
    /// (like llama.cpp's `--cache-type-k f32`). See [`kv_bytes_per_elem`].
    pub kv_f32: bool,
    /// Which kernel runs a step ([`AttentionKernel::Auto`] outside benchmarks and tests).
    pub kernel: AttentionKernel,
}

/// Bytes one K/V element takes in the cache: 2 (f16) or
/// 4 (`kv_f32`). A cache holds `cap · n_kv_heads · head_dim` elements.
pub fn kv_bytes_per_elem(kv_f32: bool) -> u64 {
    if kv_f32 {
        4
    } else {
        2
    }
}

impl AttentionParams {
    /// Least cache slots for a layer with sliding `window` (0: full attention) whose steps have
    /// up to `max_tokens` rows over `context` positions. The step's K/V rows are stored before
    /// attention runs, so row 0 of a `T`-row step still needs the keys from `pos0 − W + 1` on
    /// while row `T − 1` has been written: `W + T − 1` slots, or the whole context when that
    /// is fewer (a ring that never wraps). A full layer needs the context.
    pub fn min_cap(window: u32, max_tokens: u32, context: u32) -> u32 {
        if window == 0 {
            context
        } else {
            context.min(window.saturating_add(max_tokens.max(1) - 1))
        }
    }

    fn check(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidArgument(format!("attention: {m}")));
        if self.n_kv_heads == 0 || self.n_q_heads == 0 || self.n_q_heads % self.n_kv_heads != 0 {
            return bad(format!(
                "{} query heads are not a positive multiple of {} KV heads",
                self.n_q_heads, self.n_kv_heads
            ));
        }
        if !HEAD_DIMS.contains(&self.head_dim) {
            return bad(format!("head_dim {} not in {HEAD_DIMS:?}", self.head_dim));
        }
        if self.max_tokens == 0 {
            return bad("max_tokens is 0".into());
        }
        if self.context == 0 {
            return bad("context is 0".into());
        }
        if !self.scale.is_finite() {
            return bad(format!("scale {} is not finite", self.scale));
        }
        let need = Self::min_cap(self.window, self.max_tokens, self.context);
        if self.cap < need {
            return bad(if self.window == 0 {
                format!(
                    "a full-attention cache of {} slots cannot hold a context of {}",
                    self.cap, self.context
                )
            } else {
                format!(
                    "a sliding ring of {} slots is too small for window {} and steps of {} \
                     tokens over a context of {}: it needs min(context, window + tokens − 1) = \
                     {need} slots, or a step's own keys overwrite ones it still reads",
                    self.cap, self.window, self.max_tokens, self.context
                )
            });
        }
        Ok(())
    }
}

/// Mirrors `struct Params` in attention.wgsl, attention_decode.wgsl and attention_merge.wgsl.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n_q_heads: u32,
    n_kv_heads: u32,
    cap: u32,
    window: u32,
    scale: f32,
    _pad: [u32; 3],
}

/// A tile shape of the tiled kernel: `bq` query rows × `bk` keys, head dim staged `dc` at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Tile {
    bq: u32,
    bk: u32,
    dc: u32,
}

/// The tiled kernel's tile for head size `d`: 16 rows × 32 keys, 64 head dims staged per pass
/// (15.2 KiB of workgroup memory). Each output column pair is shared by `512 / d` invocations,
/// so a tile needs at least that many rows; below d = 64 the tile grows taller and narrower
/// (`bq · bk = 512`) and stages the whole head at once.
fn tile(d: u32) -> Tile {
    if d >= 64 {
        return Tile {
            bq: 16,
            bk: 32,
            dc: 64,
        };
    }
    let bq = (512 / d).max(16);
    Tile {
        bq,
        bk: 512 / bq,
        dc: d.min(32),
    }
}

/// The decode kernel's shape for one head size (see attention_decode.wgsl).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct DecodeShape {
    /// Invocations per workgroup: 256 at d = 512 (where 128 would leave each P·V lane half a
    /// block of keys, two rounds of V loads) and, with subgroups, at d = 256 (H100, E2B decode:
    /// attention 1,277 → 1,118 µs per token, the sliding-layer call 15.5 → 13.2 µs; the
    /// portable reduction's `WG·RQ` floats would not fit 16 KiB there); else 128.
    wg: u32,
    /// Query rows per workgroup: 8, or 4 at d = 512 (the f32 query tile stays ≤ 8 KiB).
    rq: u32,
    /// Lanes per key in the score phase (each reads every `ls`-th 8-dim chunk of the row).
    ls: u32,
    /// Keys per block (scores held in workgroup memory).
    nb: u32,
    /// Key groups of the P·V phase (≤ 4: their outputs are summed one group at a time).
    kg: u32,
    /// Output rows per lane in the P·V phase.
    rpl: u32,
    /// Reduces scores with subgroup operations (and is built for such devices only).
    subgroups: bool,
}

impl DecodeShape {
    /// For head size `d` on a device whose smallest subgroup is `subgroup_min` invocations
    /// (`None`: no subgroups). A subgroup butterfly over the lanes of a key needs subgroups of
    /// at least that many lanes; WebGPU guarantees 4 (assumed when the adapter does not say).
    fn new(d: u32, subgroup_min: Option<u32>) -> Self {
        let nc = d / 8;
        let subgroups = subgroup_min.is_some();
        let wg = if d >= 512 || (d >= 256 && subgroups) {
            256
        } else {
            128
        };
        let rq = (2048 / d).min(8);
        let max_ls = subgroup_min.map_or(8, |m| m.max(4));
        let ls = nc.min(8).min(max_ls);
        let nb = (wg / ls).max(64);
        // P·V lanes: every row of a chunk in one lane where the lanes allow (one V load feeds
        // all rows), the rest of the workgroup splitting the keys.
        let kg = (wg / nc).clamp(1, 4);
        let row_groups = (wg / (nc * kg)).clamp(1, rq);
        Self {
            wg,
            rq,
            ls,
            nb,
            kg,
            rpl: rq / row_groups,
            subgroups,
        }
    }

    /// Keys per score pass.
    #[cfg(test)]
    fn bk(&self) -> u32 {
        self.wg / self.ls
    }

    /// Bytes of workgroup memory (see attention_decode.wgsl), `portable`: without subgroups
    /// (a shape built with subgroups may exceed WebGPU's 16 KiB then: it is built for
    /// subgroup devices only).
    fn workgroup_bytes(&self, d: u32, portable: bool) -> u32 {
        let floats = self.rq * d + self.rq * self.nb + 2 * self.wg + 4 * self.rq;
        4 * (floats + if portable { self.wg * self.rq } else { 0 })
    }
}

/// The decode kernel's subgroup parameter on a device (see [`DecodeShape::new`]).
fn decode_subgroups(caps: &Caps) -> Option<u32> {
    caps.subgroups.then_some(caps.subgroup_min_size)
}

fn main_spec(head_dim: u32, t: Tile, kv_f32: bool) -> KernelSpec {
    let kv = if kv_f32 { "_kvf32" } else { "" };
    KernelSpec::new(
        format!("attention_d{head_dim}_q{}_k{}{kv}", t.bq, t.bk),
        SOURCE,
    )
    .define("HEAD_DIM", head_dim)
    .define("BQ", t.bq)
    .define("BK", t.bk)
    .define("DC", t.dc)
    .flag("KV_F32", kv_f32)
}

fn decode_spec(head_dim: u32, s: DecodeShape, kv_f32: bool) -> KernelSpec {
    let kv = if kv_f32 { "_kvf32" } else { "" };
    // Values live in the score butterfly after each of its steps (masks 4, 2, 1, where
    // ls > mask): halved while more than one.
    let after = |n: u32, mask: u32| if s.ls > mask { (n / 2).max(1) } else { n };
    let bn2 = after(s.rq, 4);
    let bn1 = after(bn2, 2);
    let bn0 = after(bn1, 1);
    KernelSpec::new(
        format!(
            "attention_decode_d{head_dim}_w{}_r{}_l{}{kv}",
            s.wg, s.rq, s.ls
        ),
        DECODE_SOURCE,
    )
    .subgroups_only(s.workgroup_bytes(head_dim, true) > WEBGPU_WORKGROUP_BYTES)
    .define("HEAD_DIM", head_dim)
    .define("WG", s.wg)
    .define("RQ", s.rq)
    .define("LS", s.ls)
    .define("NB", s.nb)
    .define("KG", s.kg)
    .define("RPL", s.rpl)
    .define("BN2", bn2)
    .define("BN1", bn1)
    .define("BN0", bn0)
    .flag("KV_F32", kv_f32)
}

fn merge_spec(head_dim: u32) -> KernelSpec {
    KernelSpec::new(format!("attention_merge_d{head_dim}"), MERGE_SOURCE)
        .define("HEAD_DIM", head_dim)
}

/// Kernel specs this module can build (for shader validation): every head size and K/V type,
/// and the decode kernel with 8 lanes per key and with 4 (devices with 4-wide subgroups).
pub fn specs() -> Vec<KernelSpec> {
    let mut v = Vec::new();
    for d in HEAD_DIMS {
        for kv_f32 in [false, true] {
            v.push(main_spec(d, tile(d), kv_f32));
            let mut shapes: Vec<DecodeShape> = Vec::new();
            for sg in [None, Some(32), Some(4)] {
                let s = DecodeShape::new(d, sg);
                if !shapes.contains(&s) {
                    v.push(decode_spec(d, s, kv_f32));
                    shapes.push(s);
                }
            }
        }
        v.push(merge_spec(d));
    }
    v
}

/// Buffers an [`Attention`] reads and writes.
pub struct AttentionIo<'a> {
    /// `[T, nq, d]` f32, normed and RoPE'd
    pub q: wgpu::BindingResource<'a>,
    /// `[cap, nkv, d]` f16 pairs in u32 (f32 with `kv_f32`), this step's rows included
    pub k_cache: wgpu::BindingResource<'a>,
    /// `[cap, nkv, d]` f16 pairs in u32 (f32 with `kv_f32`), this step's rows included
    pub v_cache: wgpu::BindingResource<'a>,
    /// `[T, nq, d]` f32 (must not alias `q`)
    pub out: wgpu::BindingResource<'a>,
    /// the step parameters (`gpu::StepParams`)
    pub step: wgpu::BindingResource<'a>,
    /// Split partials of at least [`Attention::scratch_bytes`] bytes, or `None` to allocate
    /// one. Layers run one after another in the pass, so every layer of a model may share
    /// one scratch (sized for the largest) instead of holding its own.
    pub scratch: Option<wgpu::BindingResource<'a>>,
}

/// How a step runs: which kernel, over how many workgroups and key splits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionPlan {
    /// `"decode"` or `"tiled"`.
    pub kernel: &'static str,
    /// Row tiles per KV head.
    pub row_tiles: u32,
    /// Key splits (a merge pass runs when above 1).
    pub splits: u32,
    /// Workgroups of the attention dispatch (`row_tiles · nkv · splits`).
    pub workgroups: u32,
}

/// Attention of one layer: `out = softmax(scale·q·kᵀ + mask)·v` with GQA, over the cache.
pub struct Attention {
    params: AttentionParams,
    /// The decode kernel, when a step may use it.
    decode: Option<(DecodeShape, Arc<Kernel>, BindGroup)>,
    /// The tiled kernel, when a step may use it.
    tiled: Option<(Tile, Arc<Kernel>, BindGroup)>,
    merge: (Arc<Kernel>, BindGroup),
    /// Partial rows (split × token × head) the scratch holds.
    split_rows: u32,
    max_per_dim: u32,
}

impl Attention {
    pub fn new(ctx: &GpuContext, io: AttentionIo<'_>, params: AttentionParams) -> Result<Self> {
        params.check()?;
        let d = params.head_dim;
        let (use_decode, use_tiled) = Self::kernels_used(&params);
        let split_rows = Self::split_rows(&params);
        let owned;
        let scratch = match io.scratch {
            Some(s) => s,
            None => {
                owned = ctx.storage("attention.partials", Self::scratch_bytes(&params))?;
                owned.as_entire_binding()
            }
        };
        let p = ctx.params_init(
            "attention.params",
            &Params {
                n_q_heads: params.n_q_heads,
                n_kv_heads: params.n_kv_heads,
                cap: params.cap,
                window: params.window,
                scale: params.scale,
                _pad: [0; 3],
            },
        );
        let bind = |kernel: &Arc<Kernel>| {
            ctx.bind(
                kernel,
                &[
                    io.q.clone(),
                    io.k_cache.clone(),
                    io.v_cache.clone(),
                    io.out.clone(),
                    scratch.clone(),
                    p.as_entire_binding(),
                    io.step.clone(),
                ],
            )
        };
        let decode = if use_decode {
            let shape = DecodeShape::new(d, decode_subgroups(&ctx.caps));
            let bytes = shape.workgroup_bytes(d, !ctx.caps.subgroups);
            if bytes > ctx.caps.max_workgroup_storage {
                return Err(Error::InvalidArgument(format!(
                    "attention: the decode kernel for head_dim {d} needs {bytes} bytes of \
                     workgroup memory, the device allows {}",
                    ctx.caps.max_workgroup_storage
                )));
            }
            let kernel = ctx.kernel(&decode_spec(d, shape, params.kv_f32))?;
            let bg = bind(&kernel);
            Some((shape, kernel, bg))
        } else {
            None
        };
        let tiled = if use_tiled {
            let t = tile(d);
            let kernel = ctx.kernel(&main_spec(d, t, params.kv_f32))?;
            let bg = bind(&kernel);
            Some((t, kernel, bg))
        } else {
            None
        };
        let merge_kernel = ctx.kernel(&merge_spec(d))?;
        let merge_bg = ctx.bind(
            &merge_kernel,
            &[
                scratch,
                io.out.clone(),
                p.as_entire_binding(),
                io.step.clone(),
            ],
        );
        Ok(Self {
            params,
            decode,
            tiled,
            merge: (merge_kernel, merge_bg),
            split_rows,
            max_per_dim: ctx.caps.max_workgroups_per_dim,
        })
    }

    /// Whether steps of `params` may run the (decode, tiled) kernels.
    fn kernels_used(params: &AttentionParams) -> (bool, bool) {
        let group = params.n_q_heads / params.n_kv_heads.max(1);
        match params.kernel {
            AttentionKernel::Decode => (true, false),
            AttentionKernel::Tiled => (false, true),
            AttentionKernel::Auto => (true, params.max_tokens * group > DECODE_MAX_ROWS),
        }
    }

    /// Partial rows (split × token × head) the scratch must hold.
    fn split_rows(params: &AttentionParams) -> u32 {
        let (decode, tiled) = Self::kernels_used(params);
        let group = params.n_q_heads / params.n_kv_heads.max(1);
        let mut rows = 0;
        if decode {
            // Tokens of the longest step the decode kernel runs.
            let tokens = match params.kernel {
                AttentionKernel::Auto => (DECODE_SCRATCH_ROWS / group).max(1),
                _ => params.max_tokens,
            };
            rows = DECODE_MAX_SPLITS * params.max_tokens.min(tokens) * params.n_q_heads;
        }
        if tiled {
            rows = rows.max(MAX_SPLITS * params.max_tokens.min(SPLIT_TOKENS) * params.n_q_heads);
        }
        rows
    }

    /// Bytes of split scratch an op with `params` needs: a 4-float header, then the
    /// unnormalised outputs `[S·T·nq, d]` and the `(m, l)` pairs `[S·T·nq, 2]`, f32, in whole
    /// 16-byte words (the merge reads it as `vec4`s).
    pub fn scratch_bytes(params: &AttentionParams) -> u64 {
        (4 * (4 + Self::split_rows(params) as u64 * (params.head_dim as u64 + 2)))
            .next_multiple_of(16)
    }

    /// Keys the step's first row may see through its last row's position.
    fn span(&self, step: &StepParams) -> u32 {
        let p = &self.params;
        let first = if p.window > 0 {
            (step.pos0 + 1).saturating_sub(p.window)
        } else {
            0
        };
        step.pos0 + step.n_tokens - first
    }

    /// Splits of `span` keys for `tiles` row tiles per KV head: enough workgroups to fill the
    /// GPU (`target`), at least `least` keys each, within the scratch and `max`.
    fn n_splits(&self, step: &StepParams, tiles: u32, least: u32, target: u32, max: u32) -> u32 {
        let p = &self.params;
        let by_keys = self.span(step).div_ceil(least.max(1));
        let by_occupancy = target.div_ceil(tiles * p.n_kv_heads);
        let by_scratch = self.split_rows / (step.n_tokens * p.n_q_heads).max(1);
        by_keys.min(by_occupancy).min(by_scratch).clamp(1, max)
    }

    /// How a step of `step.n_tokens` rows at `step.pos0` runs.
    pub fn plan(&self, step: &StepParams) -> AttentionPlan {
        let p = &self.params;
        let rows = step.n_tokens.max(1) * (p.n_q_heads / p.n_kv_heads);
        let decode = match (&self.decode, &self.tiled) {
            (Some(_), None) => true,
            (Some(_), Some(_)) => rows <= DECODE_MAX_ROWS,
            _ => false,
        };
        let step = StepParams::new(step.n_tokens.max(1), step.pos0);
        let (kernel, row_tiles, splits) = match (&self.decode, &self.tiled) {
            (Some((shape, ..)), _) if decode => {
                let tiles = rows.div_ceil(shape.rq);
                let least = match p.split_keys {
                    0 => DEFAULT_DECODE_SPLIT_KEYS,
                    n => n,
                };
                let splits = self.n_splits(
                    &step,
                    tiles,
                    least,
                    DECODE_TARGET_WORKGROUPS,
                    DECODE_MAX_SPLITS,
                );
                ("decode", tiles, splits)
            }
            (_, Some((t, ..))) => {
                let tiles = rows.div_ceil(t.bq);
                let least = match p.split_keys {
                    0 => DEFAULT_SPLIT_KEYS,
                    n => n,
                };
                let splits = self.n_splits(&step, tiles, least, TARGET_WORKGROUPS, MAX_SPLITS);
                ("tiled", tiles, splits)
            }
            // `new` builds at least one kernel.
            _ => ("none", 0, 0),
        };
        AttentionPlan {
            kernel,
            row_tiles,
            splits,
            workgroups: row_tiles * p.n_kv_heads * splits,
        }
    }
}

impl Op for Attention {
    fn encode(&self, pass: &mut wgpu::ComputePass<'_>, step: &StepParams) {
        let p = &self.params;
        if step.n_tokens == 0 {
            return;
        }
        debug_assert!(step.n_tokens <= p.max_tokens);
        debug_assert!(
            step.pos0 + step.n_tokens <= p.context,
            "positions up to {} beyond the context of {}",
            step.pos0 + step.n_tokens - 1,
            p.context
        );
        let plan = self.plan(step);
        let kernel = match (plan.kernel, &self.decode, &self.tiled) {
            ("decode", Some((_, k, bg)), _) | ("tiled", _, Some((_, k, bg))) => (k, bg),
            _ => return,
        };
        let [x, y, _] = grid(plan.row_tiles * p.n_kv_heads, self.max_per_dim);
        pass.set_pipeline(kernel.0.pipeline());
        pass.set_bind_group(0, kernel.1.get(), &[]);
        crate::gpu::dispatch(pass, [x, y, plan.splits]);
        if plan.splits > 1 {
            // attention_merge.wgsl: one workgroup per (row, 64 dims).
            let blocks = p.head_dim.div_ceil(64);
            let [x, y, z] = grid(step.n_tokens * p.n_q_heads * blocks, self.max_per_dim);
            pass.set_pipeline(self.merge.0.pipeline());
            pass.set_bind_group(0, self.merge.1.get(), &[]);
            crate::gpu::dispatch(pass, [x, y, z]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_layout_matches_wgsl() {
        assert_eq!(std::mem::size_of::<Params>(), 32);
    }

    #[test]
    fn tiles_fit_webgpu_workgroup_memory() {
        for d in HEAD_DIMS {
            let t = tile(d);
            let floats = (t.bq + t.bk) * t.dc + t.bq * t.bk + 3 * t.bq + 256;
            assert!(floats * 4 <= 16384, "{t:?}: {} bytes", floats * 4);
            assert_eq!(t.bq * t.bk % 256, 0);
            assert_eq!(d % t.dc, 0);
            assert_eq!(t.dc % 4, 0);
            assert_eq!(t.bq % (256 / (d / 2)), 0, "rows per column pair, d {d}");
        }
    }

    /// The decode kernel's constraints (attention_decode.wgsl's header) for every head size and
    /// lane count, within WebGPU's 16 KiB of workgroup memory with and without subgroups.
    #[test]
    fn decode_shapes_fit_webgpu_limits() {
        for d in HEAD_DIMS {
            for sg in [
                None,
                Some(4),
                Some(8),
                Some(16),
                Some(32),
                Some(64),
                Some(128),
            ] {
                let s = DecodeShape::new(d, sg);
                let nc = d / 8;
                assert!(s.rq <= 8 && s.rq * d <= 2048, "{s:?}");
                let max_ls = sg.unwrap_or(8);
                assert!(s.ls <= 8 && s.ls <= max_ls && nc % s.ls == 0, "{s:?}");
                assert!(s.ls.is_power_of_two() && s.rq.is_power_of_two());
                assert_eq!(s.nb % s.bk(), 0, "{s:?}");
                assert!(s.wg <= 256 && s.wg % s.rq == 0, "{s:?}");
                assert_eq!(s.rq % s.rpl, 0, "{s:?}");
                let pv = s.kg * (s.rq / s.rpl) * nc;
                assert!(pv <= s.wg && s.kg <= 4, "{s:?}");
                let bytes = s.workgroup_bytes(d, sg.is_none());
                assert!(
                    bytes <= WEBGPU_WORKGROUP_BYTES,
                    "d {d} {s:?}: {bytes} bytes"
                );
            }
        }
        // Gemma 4 E2B: 8 rows of d = 256, 4 of d = 512.
        let s = DecodeShape::new(256, Some(32));
        assert_eq!((s.wg, s.rq, s.ls, s.kg, s.rpl), (256, 8, 8, 4, 4));
        let s = DecodeShape::new(256, None);
        assert_eq!((s.wg, s.rq, s.ls, s.kg, s.rpl), (128, 8, 8, 4, 8));
        let s = DecodeShape::new(512, Some(32));
        assert_eq!((s.wg, s.rq, s.ls, s.kg, s.rpl), (256, 4, 8, 4, 4));
    }

    #[test]
    fn min_cap_holds_the_window_and_a_step() {
        assert_eq!(AttentionParams::min_cap(0, 128, 4096), 4096);
        assert_eq!(AttentionParams::min_cap(512, 1, 4096), 512);
        assert_eq!(AttentionParams::min_cap(512, 128, 4096), 639);
        assert_eq!(AttentionParams::min_cap(512, 128, 600), 600);
        assert_eq!(AttentionParams::min_cap(512, 128, 100), 100);
    }
}
