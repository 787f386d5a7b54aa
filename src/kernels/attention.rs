//! Attention over the KV cache (`shaders/attention.wgsl`, `attention_merge.wgsl`) and the
//! KV-cache store (`shaders/kv_store.wgsl`).
//!
//! One tiled flash-attention kernel serves decode and prefill: a workgroup owns a tile of query
//! rows of one KV head (the (token, head) pairs of its GQA group, so grouped heads share every
//! K/V read) and walks its key range with an online softmax; the causal and sliding masks are
//! computed in the shader, so neither a mask nor a score matrix ever exists in memory. Two tile
//! shapes are built: 8 rows × 32 keys for decode-sized steps (T·G ≤ 8) and 16 rows × 32 keys
//! otherwise. When a step has few row tiles and a long key range (decode at long context), the
//! key range is split across workgroups (flash-decoding) and a merge pass combines the splits.
//!
//! Keys `j < pos0` come from the cache slot `j % cap`, keys `j ≥ pos0` from this step's staging
//! rows (`k_new`/`v_new`), which is why a sliding layer's ring needs only `W` slots even during
//! prefill: the model runs [`KvStore`] after the layer's attention. With
//! `keys_from_cache_only` (Gemma 4 KV-shared layers) every key is read from a cache that the
//! producer layer has already updated this step.
//!
//! K/V storage (cache and staging alike) is f16 pairs packed in u32 by default, or f32 with
//! [`AttentionParams::kv_f32`] (twice the memory, no K/V rounding; [`kv_bytes_per_elem`] sizes
//! the buffers). The f32 staging layout `[T, nkv, d]` f32 is exactly what
//! `HeadPrep` writes with `HeadOut::F32`.

use std::sync::Arc;

use crate::gpu::{grid, GpuContext, Kernel, KernelSpec, Op, StepParams};
use crate::{Error, Result};

const SOURCE: &str = include_str!("../../shaders/attention.wgsl");
const MERGE_SOURCE: &str = include_str!("../../shaders/attention_merge.wgsl");
const STORE_SOURCE: &str = include_str!("../../shaders/kv_store.wgsl");

/// Head dimensions the kernels are built for: Gemma's 256 and 512, and the smaller powers of
/// two that other configurations (and tiny test models) use.
pub const HEAD_DIMS: [u32; 7] = [8, 16, 32, 64, 128, 256, 512];

/// Most key splits of one step (bounds the partials scratch).
const MAX_SPLITS: u32 = 32;
/// Steps of up to this many tokens get the full `MAX_SPLITS` of scratch; longer steps split
/// less (they already have many row tiles).
const SPLIT_TOKENS: u32 = 4;
/// Aim for at least this many workgroups before splitting stops paying.
const TARGET_WORKGROUPS: u32 = 128;
/// Default least number of keys per split: below it the merge costs more than it saves.
pub const DEFAULT_SPLIT_KEYS: u32 = 256;

/// Layer geometry and masking, fixed when the op is built.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionParams {
    /// Query heads `nq` (≤ 16 in Gemma; any multiple of `n_kv_heads` works).
    pub n_q_heads: u32,
    /// KV heads `nkv`; query head `h` reads KV head `h / (nq / nkv)`.
    pub n_kv_heads: u32,
    /// Head dimension `d`, one of [`HEAD_DIMS`].
    pub head_dim: u32,
    /// Cache slots: key `j` lives in slot `j % cap`. Full layers: the context length. Sliding
    /// layers: a ring of at least `window` slots. A KV-shared consumer of a sliding ring sees
    /// correct keys for every row only if `cap ≥ window + T − 1` (Gemma 4 runs those layers on
    /// the last row only, where `cap = window` suffices).
    pub cap: u32,
    /// Sliding window `W` (0 = full attention): `p − W < j ≤ p`.
    pub window: u32,
    /// Multiplies `q·k`: Gemma 3 `query_pre_attn_scalar^−0.5`, Gemma 4 1.0.
    pub scale: f32,
    /// Read every key from the cache (this step's rows included) instead of staging.
    pub keys_from_cache_only: bool,
    /// Most tokens of one step (sizes the split scratch).
    pub max_tokens: u32,
    /// Least keys per split of the flash-decoding path (0: [`DEFAULT_SPLIT_KEYS`]).
    pub split_keys: u32,
    /// K/V cache and staging rows hold f32 instead of f16 pairs: twice the memory, no f16
    /// rounding of K/V (like llama.cpp's `--cache-type-k f32`). See [`kv_bytes_per_elem`].
    pub kv_f32: bool,
}

/// Bytes one K/V element takes in the cache and staging buffers: 2 (f16) or 4 (`kv_f32`).
/// A cache holds `cap · n_kv_heads · head_dim` elements, a staging buffer
/// `max_tokens · n_kv_heads · head_dim`.
pub fn kv_bytes_per_elem(kv_f32: bool) -> u64 {
    if kv_f32 {
        4
    } else {
        2
    }
}

impl AttentionParams {
    fn check(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidArgument(format!("attention: {m}")));
        if self.n_kv_heads == 0 || self.n_q_heads % self.n_kv_heads != 0 {
            return bad(format!(
                "{} query heads are not a multiple of {} KV heads",
                self.n_q_heads, self.n_kv_heads
            ));
        }
        if !HEAD_DIMS.contains(&self.head_dim) {
            return bad(format!("head_dim {} not in {HEAD_DIMS:?}", self.head_dim));
        }
        if self.cap == 0 || self.cap < self.window {
            return bad(format!("cap {} below window {}", self.cap, self.window));
        }
        if self.max_tokens == 0 {
            return bad("max_tokens is 0".into());
        }
        Ok(())
    }
}

/// Mirrors `struct Params` in attention.wgsl and attention_merge.wgsl.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n_q_heads: u32,
    n_kv_heads: u32,
    cap: u32,
    window: u32,
    scale: f32,
    cache_only: u32,
    _pad: [u32; 2],
}

/// A tile shape of the flash kernel: `bq` query rows × `bk` keys, head dim staged `dc` at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Tile {
    bq: u32,
    bk: u32,
    dc: u32,
}

/// Decode-sized steps (T·G ≤ 8 rows): a split is one such tile (see `n_splits`), and 32 keys
/// spread a context over twice the workgroups of 64, staging 64 head dims per pass halves the
/// barriers of 32 (E2B decode on the H100: attention 66 µs per layer, 94 with 64 × 32).
const SMALL: Tile = Tile {
    bq: 8,
    bk: 32,
    dc: 64,
};
/// Everything else: 15.2 KiB of workgroup memory.
const LARGE: Tile = Tile {
    bq: 16,
    bk: 32,
    dc: 64,
};

/// The (decode-sized, everything else) tiles for head size `d`. Each output column pair is
/// shared by `512 / d` invocations, so a tile needs at least that many rows; below d = 64 the
/// tile grows taller and narrower (`bq · bk = 512`) and stages the whole head at once.
fn tiles(d: u32) -> (Tile, Tile) {
    if d >= 64 {
        return (SMALL, LARGE);
    }
    let bq = (512 / d).max(16);
    let t = Tile {
        bq,
        bk: 512 / bq,
        dc: d.min(32),
    };
    (t, t)
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

fn merge_spec(head_dim: u32) -> KernelSpec {
    KernelSpec::new(format!("attention_merge_d{head_dim}"), MERGE_SOURCE)
        .define("HEAD_DIM", head_dim)
}

fn store_spec() -> KernelSpec {
    KernelSpec::new("kv_store", STORE_SOURCE).define("WG", super::ROW_WG)
}

/// Kernel specs this module can build (for shader validation).
pub fn specs() -> Vec<KernelSpec> {
    let mut v = Vec::new();
    for d in HEAD_DIMS {
        let (small, large) = tiles(d);
        for kv_f32 in [false, true] {
            v.push(main_spec(d, small, kv_f32));
            if large != small {
                v.push(main_spec(d, large, kv_f32));
            }
        }
        v.push(merge_spec(d));
    }
    v.push(store_spec());
    v
}

/// Buffers an [`Attention`] reads and writes.
pub struct AttentionIo<'a> {
    /// `[T, nq, d]` f32, normed and RoPE'd, not yet scaled
    pub q: wgpu::BindingResource<'a>,
    /// `[T, nkv, d]` f16 pairs in u32 (f32 with `kv_f32`): this step's keys (`None` with
    /// `keys_from_cache_only`)
    pub k_new: Option<wgpu::BindingResource<'a>>,
    /// `[T, nkv, d]` f16 pairs in u32 (f32 with `kv_f32`): this step's values (`None` with
    /// `keys_from_cache_only`)
    pub v_new: Option<wgpu::BindingResource<'a>>,
    /// `[cap, nkv, d]` f16 pairs in u32 (f32 with `kv_f32`)
    pub k_cache: wgpu::BindingResource<'a>,
    /// `[cap, nkv, d]` f16 pairs in u32 (f32 with `kv_f32`)
    pub v_cache: wgpu::BindingResource<'a>,
    /// `[T, nq, d]` f32 (must not alias `q`)
    pub out: wgpu::BindingResource<'a>,
    /// the step parameters (`gpu::StepParams`)
    pub step: wgpu::BindingResource<'a>,
    /// Split partials of at least [`Attention::scratch_bytes`] bytes, or `None` to allocate
    /// one. Layers run one after another in the pass, so every layer of a model may share
    /// one scratch (sized for the largest `nq·(d + 2)`) instead of holding its own.
    pub scratch: Option<wgpu::BindingResource<'a>>,
}

/// Attention of one layer: `out = softmax(scale·q·kᵀ + mask)·v` with GQA, over cache + staging.
pub struct Attention {
    params: AttentionParams,
    /// Tile and kernel for decode-sized steps, and for everything else.
    small: (Tile, (Arc<Kernel>, wgpu::BindGroup)),
    large: (Tile, (Arc<Kernel>, wgpu::BindGroup)),
    merge: (Arc<Kernel>, wgpu::BindGroup),
    /// Partial rows (split × token × head) the scratch holds.
    split_rows: u32,
    max_per_dim: u32,
}

impl Attention {
    pub fn new(ctx: &GpuContext, io: AttentionIo<'_>, params: AttentionParams) -> Result<Self> {
        params.check()?;
        let d = params.head_dim;
        let split_rows = Self::split_rows(&params);
        let owned;
        let scratch = match io.scratch {
            Some(s) => s,
            None => {
                owned = ctx.storage("attention.partials", Self::scratch_bytes(&params))?;
                owned.as_entire_binding()
            }
        };
        let p = Params {
            n_q_heads: params.n_q_heads,
            n_kv_heads: params.n_kv_heads,
            cap: params.cap,
            window: params.window,
            scale: params.scale,
            cache_only: params.keys_from_cache_only as u32,
            _pad: [0; 2],
        };
        // The flash kernel already binds 8 storage buffers (WebGPU's default limit), so its
        // parameters stay a uniform buffer; the merge pass reads the same values from storage.
        let uniform = {
            use wgpu::util::DeviceExt;
            ctx.device
                .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some("attention.params"),
                    contents: bytemuck::bytes_of(&p),
                    usage: wgpu::BufferUsages::UNIFORM,
                })
        };
        let merge_params = ctx.params_init("attention.merge_params", &p);
        let (k_new, v_new) = match (io.k_new, io.v_new) {
            (Some(k), Some(v)) => (k, v),
            (None, None) if params.keys_from_cache_only => (io.k_cache.clone(), io.v_cache.clone()),
            _ => {
                return Err(Error::InvalidArgument(
                    "attention: k_new/v_new are required unless keys_from_cache_only".into(),
                ))
            }
        };
        let main = |tile: Tile| -> Result<(Arc<Kernel>, wgpu::BindGroup)> {
            let kernel = ctx.kernel(&main_spec(d, tile, params.kv_f32))?;
            let bind_group = ctx.bind(
                &kernel,
                &[
                    io.q.clone(),
                    k_new.clone(),
                    v_new.clone(),
                    io.k_cache.clone(),
                    io.v_cache.clone(),
                    io.out.clone(),
                    scratch.clone(),
                    uniform.as_entire_binding(),
                    io.step.clone(),
                ],
            );
            Ok((kernel, bind_group))
        };
        let (small_tile, large_tile) = tiles(d);
        let small = (small_tile, main(small_tile)?);
        let large = (large_tile, main(large_tile)?);
        let merge_kernel = ctx.kernel(&merge_spec(d))?;
        let merge_bg = ctx.bind(
            &merge_kernel,
            &[
                scratch,
                io.out.clone(),
                merge_params.as_entire_binding(),
                io.step.clone(),
            ],
        );
        Ok(Self {
            params,
            small,
            large,
            merge: (merge_kernel, merge_bg),
            split_rows,
            max_per_dim: ctx.caps.max_workgroups_per_dim,
        })
    }

    /// Partial rows (split × token × head) the scratch must hold.
    fn split_rows(params: &AttentionParams) -> u32 {
        MAX_SPLITS * params.max_tokens.min(SPLIT_TOKENS) * params.n_q_heads
    }

    /// Bytes of split scratch an op with `params` needs: a 4-float header, then the
    /// unnormalised outputs `[S·T·nq, d]` and the `(m, l)` pairs `[S·T·nq, 2]`, f32.
    pub fn scratch_bytes(params: &AttentionParams) -> u64 {
        4 * (4 + Self::split_rows(params) as u64 * (params.head_dim as u64 + 2))
    }

    /// Key splits for a step with `tiles` row tiles per KV head: enough workgroups to fill the
    /// GPU, at least `split_keys` keys each, within the scratch.
    fn n_splits(&self, step: &StepParams, tiles: u32, tile: Tile) -> u32 {
        let p = &self.params;
        let first = if p.window > 0 {
            (step.pos0 + 1).saturating_sub(p.window)
        } else {
            0
        };
        let span = step.pos0 + step.n_tokens - first;
        // Decode-sized steps have one row tile per KV head: a handful of workgroups, each
        // alone on its SM and bound by load latency. There a split is one key tile, so the
        // keys spread over as many workgroups as the scratch allows.
        let split_keys = match p.split_keys {
            0 if tile == self.small.0 && tiles == 1 => tile.bk,
            0 => DEFAULT_SPLIT_KEYS,
            n => n,
        };
        let by_keys = span.div_ceil(split_keys);
        let by_occupancy = TARGET_WORKGROUPS.div_ceil(tiles * p.n_kv_heads);
        let by_scratch = self.split_rows / (step.n_tokens * p.n_q_heads);
        by_keys
            .min(by_occupancy)
            .min(by_scratch)
            .clamp(1, MAX_SPLITS)
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
            p.window > 0 || step.pos0 + step.n_tokens <= p.cap,
            "full-attention cache of {} slots cannot hold position {}",
            p.cap,
            step.pos0 + step.n_tokens - 1
        );
        let rows = step.n_tokens * (p.n_q_heads / p.n_kv_heads);
        let (tile, (kernel, bind_group)) = if rows <= self.small.0.bq {
            &self.small
        } else {
            &self.large
        };
        let tiles = rows.div_ceil(tile.bq);
        let splits = self.n_splits(step, tiles, *tile);
        let [x, y, _] = grid(tiles * p.n_kv_heads, self.max_per_dim);
        pass.set_pipeline(&kernel.pipeline);
        pass.set_bind_group(0, bind_group, &[]);
        crate::gpu::dispatch(pass, [x, y, splits]);
        if splits > 1 {
            let [x, y, z] = grid(step.n_tokens * p.n_q_heads, self.max_per_dim);
            pass.set_pipeline(&self.merge.0.pipeline);
            pass.set_bind_group(0, &self.merge.1, &[]);
            crate::gpu::dispatch(pass, [x, y, z]);
        }
    }
}

/// Buffers a [`KvStore`] reads and writes.
pub struct KvStoreIo<'a> {
    /// `[T, nkv, d]` f16 pairs in u32 (f32 with `kv_f32`)
    pub k_new: wgpu::BindingResource<'a>,
    /// `[T, nkv, d]` f16 pairs in u32 (f32 with `kv_f32`)
    pub v_new: wgpu::BindingResource<'a>,
    /// `[cap, nkv, d]` f16 pairs in u32 (f32 with `kv_f32`)
    pub k_cache: wgpu::BindingResource<'a>,
    /// `[cap, nkv, d]` f16 pairs in u32 (f32 with `kv_f32`)
    pub v_cache: wgpu::BindingResource<'a>,
    /// the step parameters (`gpu::StepParams`)
    pub step: wgpu::BindingResource<'a>,
}

/// Mirrors `struct Params` in kv_store.wgsl.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct StoreParams {
    n_kv_heads: u32,
    words: u32,
    cap: u32,
    _pad: u32,
}

/// Writes this step's K/V rows into cache slots `(pos0 + t) % cap`. Rows a later row of the
/// same step would overwrite (T − t > cap) are skipped. A pure u32 copy: one kernel serves
/// f16 and f32 (`kv_f32`) rows, which differ only in words per row.
pub struct KvStore {
    kernel: Arc<Kernel>,
    bind_group: wgpu::BindGroup,
    row_words: u32,
    max_per_dim: u32,
}

impl KvStore {
    pub fn new(ctx: &GpuContext, io: KvStoreIo<'_>, params: &AttentionParams) -> Result<Self> {
        params.check()?;
        // u32 words per head row: an f16 pair or one f32 each.
        let words = if params.kv_f32 {
            params.head_dim
        } else {
            params.head_dim / 2
        };
        let kernel = ctx.kernel(&store_spec())?;
        let uniform = ctx.params_init(
            "kv_store.params",
            &StoreParams {
                n_kv_heads: params.n_kv_heads,
                words,
                cap: params.cap,
                _pad: 0,
            },
        );
        let bind_group = ctx.bind(
            &kernel,
            &[
                io.k_new,
                io.v_new,
                io.k_cache,
                io.v_cache,
                uniform.as_entire_binding(),
                io.step,
            ],
        );
        Ok(Self {
            kernel,
            bind_group,
            row_words: params.n_kv_heads * words,
            max_per_dim: ctx.caps.max_workgroups_per_dim,
        })
    }
}

impl Op for KvStore {
    fn encode(&self, pass: &mut wgpu::ComputePass<'_>, step: &StepParams) {
        if step.n_tokens == 0 {
            return;
        }
        let groups = (step.n_tokens * self.row_words).div_ceil(super::ROW_WG);
        let [x, y, z] = grid(groups, self.max_per_dim);
        pass.set_pipeline(&self.kernel.pipeline);
        pass.set_bind_group(0, &self.bind_group, &[]);
        crate::gpu::dispatch(pass, [x, y, z]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_layout_matches_wgsl() {
        assert_eq!(std::mem::size_of::<Params>(), 32);
        assert_eq!(std::mem::size_of::<StoreParams>(), 16);
    }

    #[test]
    fn tiles_fit_webgpu_workgroup_memory() {
        for d in HEAD_DIMS {
            let (small, large) = tiles(d);
            for t in [small, large] {
                let floats = (t.bq + t.bk) * t.dc + t.bq * t.bk + 3 * t.bq + 256;
                assert!(floats * 4 <= 16384, "{t:?}: {} bytes", floats * 4);
                assert_eq!(t.bq * t.bk % 256, 0);
                assert_eq!(d % t.dc, 0);
                assert_eq!(t.dc % 4, 0);
                assert_eq!(t.bq % (256 / (d / 2)), 0, "rows per column pair, d {d}");
            }
        }
    }
}
