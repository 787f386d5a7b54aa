//! The activation buffers of a loaded model (llama2.c's `RunState`), allocated once for the
//! prefill chunk, and the RoPE tables the steps fill.
//!
//! The residual stream lives in one *arena* with a slot per block output: `h`, the attention
//! projection, the MLP output and Gemma 4's per-layer projection, each `[chunk, H]` f32. A decode
//! step leaves a layer's post-norms for the last dispatch of the layer, which reads every slot;
//! the mat-vecs in between recompute the post-norms they need from the arena (see
//! `kernels::matvec::MatvecIn::Prologue`), so nothing writes `h` until the layer ends.

use super::config::ModelConfig;
use crate::gpu::{GpuContext, StepParams};
use crate::kernels::attention::{Attention, AttentionParams};
use crate::rope::RopeTable;
use crate::{Error, Result};

/// Most recent tokens the repetition penalty looks at.
pub const MAX_PENALTY_TOKENS: u32 = 256;

/// The slots of the residual arena.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Slot {
    /// The residual stream `h`.
    H = 0,
    /// The attention block's output projection.
    Attn = 1,
    /// The MLP's output.
    Ffn = 2,
    /// Gemma 4's per-layer-input projection.
    Ple = 3,
}

/// Gemma 4 per-layer-input buffers, allocated once for `chunk` rows.
pub(super) struct PleBuffers {
    pub tok: wgpu::Buffer, // [chunk, L·P] f32 table rows, written by the CPU each step
    pub ctx: wgpu::Buffer, // [chunk, L·P] f32 W_plm·x
    pub out: wgpu::Buffer, // [chunk, L·P] f32 combined per-layer inputs
}

pub(super) struct Activations {
    /// Rows per step the buffers hold.
    pub chunk: u32,
    pub hidden: u32,
    pub step: wgpu::Buffer,     // StepParams of the step
    pub step_one: wgpu::Buffer, // StepParams {1, 0}: ops over one row (LM head)
    /// StepParams of the KV-shared layers and the head (models with KV sharing only):
    /// `{1, last position}` when a prompt runs them on its last token, else equal to `step`.
    pub step_tail: Option<wgpu::Buffer>,
    pub tokens: wgpu::Buffer,       // [chunk] u32
    pub arena: wgpu::Buffer,        // [4 slots, chunk, H] f32 residual arena (see `Slot`)
    pub xn: wgpu::Buffer,           // [chunk, H] f32 normed input of a layer's attention
    pub qkv: wgpu::Buffer,          // [chunk, (nq + 2·nkv)·d] f32 projections, q|k|v per token
    pub qp: wgpu::Buffer,           // [chunk, nq, d] f32 normed + RoPE'd queries
    pub attn: wgpu::Buffer,         // [chunk, nq·d] f32 attention output
    pub gate: wgpu::Buffer,         // [chunk, I] f32
    pub up: wgpu::Buffer,           // [chunk, I] f32
    pub act: wgpu::Buffer,          // [chunk, I] f32 gelu(gate)·up
    pub last: wgpu::Buffer,         // [1, H] f32 final-normed last row
    pub logits: wgpu::Buffer,       // [1, V] f32
    pub penalty_ids: wgpu::Buffer,  // [MAX_PENALTY_TOKENS] u32 recent tokens
    pub attn_scratch: wgpu::Buffer, // split-key partials, shared by every layer's attention
    pub ropes: Vec<wgpu::Buffer>,   // per RoPE table: [chunk, d/2, 2] f32 (cos, sin)
    /// Per RoPE table, the rows the KV-shared layers read (see `step_tail`).
    pub ropes_tail: Vec<wgpu::Buffer>,
    pub ple: Option<PleBuffers>,
    /// Bytes of all of the above.
    pub bytes: u64,
}

impl Activations {
    /// The step parameters the KV-shared layers and the head bind.
    pub(super) fn tail_step(&self) -> &wgpu::Buffer {
        self.step_tail.as_ref().unwrap_or(&self.step)
    }

    /// Element offset of `slot`'s row 0 in the arena.
    pub(super) fn slot(&self, slot: Slot) -> u32 {
        slot as u32 * self.chunk * self.hidden
    }

    /// Buffers for steps of up to `chunk` rows of a model `cfg` whose layers attend as
    /// `attention` says (it sizes the split scratch they share).
    pub(super) fn new(
        ctx: &GpuContext,
        cfg: &ModelConfig,
        chunk: u32,
        attention: &[AttentionParams],
        ropes: &[RopeTable],
    ) -> Result<Self> {
        let c = chunk as u64;
        let f = 4u64;
        let hidden = cfg.hidden as u64;
        let nq = cfg.n_heads as u64;
        let d_max = cfg.layers.iter().map(|l| l.head_dim).max().unwrap_or(0) as u64;
        let qkv_max = cfg
            .layers
            .iter()
            .map(|l| ((cfg.n_heads + 2 * l.n_kv_heads) * l.head_dim) as u64)
            .max()
            .unwrap_or(0);
        let ff_max = cfg.layers.iter().map(|l| l.ff_len).max().unwrap_or(0) as u64;
        let ple_width = cfg.n_layers as u64 * cfg.ple_dim as u64;
        let mut bytes = 0u64;
        let mut buf = |label: &str, size: u64| -> Result<wgpu::Buffer> {
            bytes += size;
            ctx.storage(label, size)
        };
        let params = |label: &str| {
            ctx.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: std::mem::size_of::<StepParams>() as u64,
                usage: crate::gpu::PARAMS_USAGE,
                mapped_at_creation: false,
            })
        };
        let sharing = cfg.has_kv_sharing();
        let scratch = attention
            .iter()
            .map(Attention::scratch_bytes)
            .max()
            .unwrap_or(4);
        let rope_bufs = |buf: &mut dyn FnMut(&str, u64) -> Result<wgpu::Buffer>| {
            ropes
                .iter()
                .map(|t| buf("rope", c * t.floats_per_token() as u64 * f))
                .collect::<Result<Vec<_>>>()
        };
        let a = Activations {
            chunk,
            hidden: cfg.hidden,
            step: params("step")?,
            step_one: ctx.params_init("step_one", &StepParams::new(1, 0)),
            step_tail: sharing.then(|| params("step_tail")).transpose()?,
            tokens: buf("tokens", c * 4)?,
            arena: buf("residual arena", 4 * c * hidden * f)?,
            xn: buf("xn", c * hidden * f)?,
            qkv: buf("qkv", c * qkv_max * f)?,
            qp: buf("qp", c * nq * d_max * f)?,
            attn: buf("attn", c * nq * d_max * f)?,
            gate: buf("gate", c * ff_max * f)?,
            up: buf("up", c * ff_max * f)?,
            act: buf("act", c * ff_max.max(ple_width) * f)?,
            last: buf("last", hidden * f)?,
            logits: buf("logits", cfg.vocab as u64 * f)?,
            penalty_ids: buf("penalty_ids", MAX_PENALTY_TOKENS as u64 * 4)?,
            attn_scratch: buf("attention scratch", scratch)?,
            ropes: rope_bufs(&mut buf)?,
            ropes_tail: if sharing {
                rope_bufs(&mut buf)?
            } else {
                Vec::new()
            },
            ple: if ple_width > 0 {
                Some(PleBuffers {
                    tok: buf("ple_tok", c * ple_width * f)?,
                    ctx: buf("ple_ctx", c * ple_width * f)?,
                    out: buf("ple", c * ple_width * f)?,
                })
            } else {
                None
            },
            bytes: 0,
        };
        Ok(Activations { bytes, ..a })
    }
}

/// One RoPE table per distinct (θ, scale, head size, factors), and each layer's table.
pub(super) fn rope_tables(
    cfg: &ModelConfig,
    host: &std::collections::HashMap<String, Vec<f32>>,
) -> Result<(Vec<RopeTable>, Vec<usize>)> {
    let mut ropes: Vec<RopeTable> = Vec::new();
    let mut of_layer = Vec::new();
    for lc in &cfg.layers {
        let d = lc.head_dim as usize;
        let mut table = if lc.rope_freq_factors {
            let factors = host
                .get("rope_freqs.weight")
                .ok_or_else(|| Error::MissingTensor("rope_freqs.weight".into()))?;
            RopeTable::with_freq_factors(lc.rope_theta, d, factors)
                .map_err(|e| Error::Gguf(format!("tensor `rope_freqs.weight`: {e}")))?
        } else {
            RopeTable::new(lc.rope_theta, d)?
        };
        if lc.rope_scale != 1.0 {
            table = table.linear_scaled(lc.rope_scale);
        }
        let idx = match ropes.iter().position(|t| *t == table) {
            Some(i) => i,
            None => {
                ropes.push(table);
                ropes.len() - 1
            }
        };
        of_layer.push(idx);
    }
    Ok((ropes, of_layer))
}
