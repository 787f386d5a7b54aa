//! One decoder layer's ops, built once at load, and the order they run in (GEMMA.md §2.3–2.4):
//!
//! ```text
//! q|k|v = W_qkv · xn                      one dispatch (up to three matrices, any types)
//! q, k, v: per-head norm, RoPE; k, v → the cache   one dispatch
//! attention over the cache (+ the merge of its key splits)
//! o_attn = W_o · attn
//! ── one token (decode): every post-norm is deferred to the end of the layer ──
//! act = gelu(W_gate·m) ⊙ (W_up·m),  m = rms(h + rms(o_attn)·w_pa)·w_ffn   (prologue)
//! o_ffn = W_down · act
//! Gemma 4: act = gelu(W_gate_ple·h'') ⊙ ple_l,  h'' = h + rms(o_attn)·w_pa + rms(o_ffn)·w_pf
//!          o_ple = W_proj · act
//! h = (h + rms(o_attn)·w_pa + rms(o_ffn)·w_pf [+ rms(o_ple)·w_post]) · s;  xn = rms(h)·w_next
//! ── several tokens (prefill): each post-norm updates h where its block ends ──
//! h += rms(o_attn)·w_pa; m = rms(h)·w_ffn → gate/up → act → o_ffn; h += rms(o_ffn)·w_pf …
//! ```
//!
//! `h`, `o_attn`, `o_ffn` and `o_ple` are slots of the residual arena (`super::buffers::Slot`).
//! A decode layer is at most 8 dispatches for Gemma 3 and 10 for Gemma 4 (attention counts its
//! split-merge pass) where the shapes allow the fused forms; otherwise the layer falls back to
//! the several-token list, which is correct for every step.

use std::sync::Arc;

use super::buffers::{Activations, Slot};
use super::config::{Arch, ModelConfig};
use super::plan::{attention_params, layer_tensor};
use super::weights::Weights;
use crate::gpu::{GpuContext, Op, Recorder, StepParams};
use crate::kernels::attention::{kv_bytes_per_elem, Attention, AttentionIo, AttentionParams};
use crate::kernels::gelu::{GeluMul, GeluMulIo};
use crate::kernels::matmul::{Matmul, MatmulIo, MatmulOut, MATVEC_MAX_TOKENS};
use crate::kernels::matvec::{Matvec, MatvecIn, MatvecIo, MatvecOut, NormTerm};
use crate::kernels::norm::{Residual, ResidualConfig, ResidualIo, Term};
use crate::kernels::qkv_prep::{QkvPrep, QkvPrepConfig, QkvPrepIo};
use crate::quant::QuantMatrix;
use crate::{Error, Result};

/// Products that share their input, computed as one mat-vec dispatch for decode-sized steps
/// where the kernel can bind them together (else one mat-vec each), and as separate mat-mats
/// for longer steps. Row `r` of product `i` lands in column `Σ_{j<i} n_j + r` of the output.
pub(super) struct Projections {
    /// One token / up to `MATVEC_MAX_TOKENS`: the fused mat-vec, when the shapes allow it.
    fused: Option<(Matvec, Matvec)>,
    each: Vec<Matmul>,
}

impl Projections {
    /// `x` `[T, k]` f32 into columns `[y_offset …)` of `y` (`[T, y_stride]`).
    pub(super) fn new(
        ctx: &GpuContext,
        mats: &[&QuantMatrix],
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        (y_offset, y_stride): (u32, u32),
        step: &wgpu::Buffer,
    ) -> Result<Self> {
        let input = MatvecIn::Buffer {
            offset: 0,
            stride: None,
        };
        let fused = if mats.len() > 1 && Matvec::fuses(mats, input, MatvecOut::Store) {
            let mv = |nt| {
                Matvec::new(
                    ctx,
                    mats,
                    input,
                    MatvecOut::Store,
                    nt,
                    MatvecIo {
                        x: x.as_entire_binding(),
                        norms: None,
                        y: y.as_entire_binding(),
                        y_offset,
                        y_stride,
                        z: None,
                        step: step.as_entire_binding(),
                    },
                )
            };
            Some((mv(1)?, mv(MATVEC_MAX_TOKENS)?))
        } else {
            None
        };
        let mut each = Vec::new();
        let mut col = y_offset;
        for m in mats {
            each.push(Matmul::new(
                ctx,
                m,
                MatmulIo {
                    x: x.as_entire_binding(),
                    x_offset: 0,
                    y: y.as_entire_binding(),
                    y_offset: col,
                    y_stride,
                    step: step.as_entire_binding(),
                },
                MatmulOut::Store,
            )?);
            col += m.n;
        }
        Ok(Self { fused, each })
    }
}

impl Op for Projections {
    fn encode(&self, pass: &mut wgpu::ComputePass<'_>, step: &StepParams) {
        match &self.fused {
            Some((one, _)) if step.n_tokens == 1 => one.encode(pass, step),
            Some((_, few)) if step.n_tokens <= MATVEC_MAX_TOKENS => few.encode(pass, step),
            _ => self.each.iter().for_each(|op| op.encode(pass, step)),
        }
    }
}

/// The gated MLP's `act = gelu(W_gate·m) ⊙ (W_up·m)` from `m` in a buffer: one mat-vec for
/// decode-sized steps (two products and the product in its epilogue), else two mat-mats and
/// the activation pass.
struct GatedMlp {
    pair: Option<Matvec>,
    gate: Matmul,
    up: Matmul,
    gelu: GeluMul,
}

impl Op for GatedMlp {
    fn encode(&self, pass: &mut wgpu::ComputePass<'_>, step: &StepParams) {
        match &self.pair {
            Some(pair) if step.n_tokens <= MATVEC_MAX_TOKENS => pair.encode(pass, step),
            _ => {
                self.gate.encode(pass, step);
                self.up.encode(pass, step);
                self.gelu.encode(pass, step);
            }
        }
    }
}

/// Gemma 4's per-layer-input block: `act = gelu(W_gate·h) ⊙ ple_l`, `o_ple = W_proj·act`.
struct PleOps {
    /// Decode: the gate's input `h + rms(o_attn)·w_pa + rms(o_ffn)·w_pf` recomputed in its
    /// prologue.
    gate_fused: Option<Matvec>,
    /// Several tokens: the gate from the updated `h`, `gelu(·) ⊙ ple_l` in the epilogue for up
    /// to `MATVEC_MAX_TOKENS` tokens, else a mat-mat and the activation pass.
    gate_few: Matvec,
    gate: Matmul,
    gelu: GeluMul,
    proj: Matmul,
    /// Several tokens: `h += rms(o_ffn)·w_pf` before the gate.
    post_ffw: Residual,
}

/// One layer's ops (see the module doc for the order).
pub(super) struct LayerOps {
    /// The input norm when no earlier op computes it: layer 0, and the first KV-shared layer
    /// (which runs on a different step than the layer before it).
    attn_norm: Option<Residual>,
    qkv: Projections,
    /// Per-head norms and RoPE of q (and k), k and v into the cache.
    prep: QkvPrep,
    attention: Attention,
    /// The attention's label in profiles: sliding or full, own cache or an earlier layer's.
    attention_label: &'static str,
    o: Matmul,
    /// Decode: the gate/up pair with the post-attention and FFN norms in its prologue.
    mlp_fused: Option<Matvec>,
    /// Several tokens: `h += rms(o_attn)·w_pa; xn = rms(h)·w_ffn`, then the MLP from `xn`.
    post_attn: Residual,
    mlp: GatedMlp,
    down: Matmul,
    ple: Option<PleOps>,
    /// Decode: every post-norm of the layer, the layer scalar and the next input norm.
    end_fused: Residual,
    /// Several tokens: the last post-norm, the layer scalar and the next input norm.
    end: Residual,
}

impl LayerOps {
    /// Whether a step of `n_tokens` runs the decode list.
    fn fused(&self, n_tokens: u32) -> bool {
        n_tokens == 1
            && self.mlp_fused.is_some()
            && self.ple.as_ref().is_none_or(|p| p.gate_fused.is_some())
    }

    /// Records the layer's dispatches in order; runs every step for every layer, so it
    /// allocates nothing.
    pub(super) fn encode(&self, rec: &mut Recorder<'_, '_>, step: &StepParams) {
        if let Some(n) = &self.attn_norm {
            rec.op("attn_norm", n, step);
        }
        rec.op("attn_qkv", &self.qkv, step);
        rec.op("qkv_norm_rope_store", &self.prep, step);
        rec.op(self.attention_label, &self.attention, step);
        rec.op("attn_output", &self.o, step);
        if self.fused(step.n_tokens) {
            let mlp = self.mlp_fused.as_ref().expect("checked by fused()");
            rec.op("ffn_gate_up (+post_attn_norm, ffn_norm)", mlp, step);
            rec.op("ffn_down", &self.down, step);
            if let Some(p) = &self.ple {
                let gate = p.gate_fused.as_ref().expect("checked by fused()");
                rec.op("ple_gate (+post_norms)", gate, step);
                rec.op("ple_proj", &p.proj, step);
            }
            rec.op(
                "layer_end (post_norms + next attn_norm)",
                &self.end_fused,
                step,
            );
            return;
        }
        rec.op("post_attn_norm+ffn_norm", &self.post_attn, step);
        rec.op("ffn_gate_up", &self.mlp, step);
        rec.op("ffn_down", &self.down, step);
        if let Some(p) = &self.ple {
            rec.op("post_ffw_norm", &p.post_ffw, step);
            if step.n_tokens <= MATVEC_MAX_TOKENS {
                rec.op("ple_gate", &p.gate_few, step);
            } else {
                rec.op("ple_gate", &p.gate, step);
                rec.op("ple_gelu_mul", &p.gelu, step);
            }
            rec.op("ple_proj", &p.proj, step);
        }
        rec.op("layer_end (post_norm + next attn_norm)", &self.end, step);
    }
}

/// What building the layers needs besides the weights and buffers.
pub(super) struct LayerEnv<'a> {
    pub ctx: &'a Arc<GpuContext>,
    pub cfg: &'a ModelConfig,
    pub weights: &'a Weights,
    pub acts: &'a Activations,
    pub context: u32,
    pub chunk: u32,
    pub kv_f32: bool,
    /// Least keys per attention split (0: the kernels' defaults).
    pub attention_split_keys: u32,
    /// Each layer's RoPE table (index into `acts.ropes`).
    pub rope_of_layer: &'a [usize],
}

/// The KV caches of the layers that own one, by layer (K, V): `[cap, nkv, d]` each.
pub(super) type KvCaches = Vec<Option<(wgpu::Buffer, wgpu::Buffer)>>;

/// Where a layer's attention finds its keys and values.
pub(super) enum LayerCache<'a> {
    /// The layer computes K/V and stores them in a cache of its own, allocated with the layer.
    Own,
    /// The layer computes only queries and reads a cache another layer fills: an earlier
    /// layer's (Gemma 4 KV sharing) or the target model's (an MTP assistant). `params` is the
    /// attention over it (the cache's slots, this layer's query heads and mask).
    Read {
        k: &'a wgpu::Buffer,
        v: &'a wgpu::Buffer,
        params: AttentionParams,
    },
}

/// Builds layer `l`'s ops over `cache`; returns them with the cache the layer allocated, if it
/// owns one.
pub(super) fn build_layer(
    env: &LayerEnv<'_>,
    l: usize,
    cache: LayerCache<'_>,
) -> Result<(LayerOps, Option<(wgpu::Buffer, wgpu::Buffer)>)> {
    let LayerEnv {
        ctx,
        cfg,
        weights,
        acts: a,
        ..
    } = *env;
    let lc = &cfg.layers[l];
    let t = |w: &str| layer_tensor(l, w);
    let m = |w: &str| weights.matrix(&t(w));
    let norm = |w: &str| weights.norms.offset(&t(w));
    let (d, eps, hidden) = (lc.head_dim, cfg.eps, cfg.hidden);
    let shared = matches!(cache, LayerCache::Read { .. });
    let sharing = cfg.has_kv_sharing();
    // KV-shared layers run as the tail of the step (see `Activations::step_tail`).
    let (step_buf, rope) = if shared {
        (a.tail_step(), &a.ropes_tail[env.rope_of_layer[l]])
    } else {
        (&a.step, &a.ropes[env.rope_of_layer[l]])
    };
    let step = || step_buf.as_entire_binding();
    let (h_at, attn_at, ffn_at, ple_at) = (
        a.slot(Slot::H),
        a.slot(Slot::Attn),
        a.slot(Slot::Ffn),
        a.slot(Slot::Ple),
    );
    let residual = |terms: Vec<Term>, out_scale: f32, next: Option<u32>| {
        Residual::new(
            ctx,
            ResidualIo {
                arena: a.arena.as_entire_binding(),
                norms: weights.norms.all(),
                y: next.map(|_| a.xn.as_entire_binding()),
                step: step(),
            },
            &ResidualConfig {
                len: hidden,
                h: h_at,
                terms,
                out_scale,
                next,
                eps,
            },
        )
    };
    // The input norm of the next layer, when this layer's last dispatch computes it: not
    // before the first KV-shared layer, which runs on a different step (the prompt's last
    // row, moved to the front in between) and norms its own input.
    let next_norm = if l + 1 < cfg.layers.len() && !(sharing && l + 1 == cfg.first_shared as usize)
    {
        Some(weights.norms.offset(&layer_tensor(l + 1, "attn_norm"))?)
    } else {
        None
    };
    let own_norm = l == 0 || (sharing && l == cfg.first_shared as usize);

    // Attention: q|k|v, per-head prep, attention, the cache store.
    let wq = m("attn_q")?;
    let qkv_mats: Vec<&QuantMatrix> = if shared {
        vec![wq]
    } else {
        vec![wq, m("attn_k")?, m("attn_v")?]
    };
    let kv_rows = lc.n_kv_heads * d;
    let qkv_stride: u32 = qkv_mats.iter().map(|w| w.n).sum();
    let qkv = Projections::new(ctx, &qkv_mats, &a.xn, &a.qkv, (0, qkv_stride), step_buf)?;
    let params = match &cache {
        LayerCache::Own => attention_params(cfg, l, env.context, env.chunk, env.kv_f32),
        LayerCache::Read { params, .. } => *params,
    };
    let params = AttentionParams {
        split_keys: env.attention_split_keys,
        ..params
    };
    let own_cache = if shared {
        None
    } else {
        let bytes = params.cap as u64 * kv_rows as u64 * kv_bytes_per_elem(env.kv_f32);
        Some((
            ctx.storage(&format!("blk.{l}.k_cache"), bytes)?,
            ctx.storage(&format!("blk.{l}.v_cache"), bytes)?,
        ))
    };
    let prep = QkvPrep::new(
        ctx,
        QkvPrepIo {
            qkv: a.qkv.as_entire_binding(),
            norms: weights.norms.all(),
            rope: rope.as_entire_binding(),
            q_out: a.qp.as_entire_binding(),
            k_cache: own_cache.as_ref().map(|(k, _)| k.as_entire_binding()),
            v_cache: own_cache.as_ref().map(|(_, v)| v.as_entire_binding()),
            step: step(),
        },
        &QkvPrepConfig {
            head_dim: d,
            n_q_heads: cfg.n_heads,
            n_kv_heads: lc.n_kv_heads,
            store_kv: !shared,
            q_scale: 1.0,
            q_norm_offset: norm("attn_q_norm")?,
            k_norm_offset: if shared { 0 } else { norm("attn_k_norm")? },
            // Gemma 3 keeps V as projected; Gemma 4 normalises it with no weight.
            v_norm: cfg.arch == Arch::Gemma4,
            eps,
            cap: params.cap,
            kv_f32: env.kv_f32,
        },
    )?;
    let (k_cache, v_cache) = match (&cache, &own_cache) {
        (LayerCache::Read { k, v, .. }, _) => (*k, *v),
        (LayerCache::Own, Some((k, v))) => (k, v),
        (LayerCache::Own, None) => unreachable!("a layer with its own cache allocates it"),
    };
    let attention = Attention::new(
        ctx,
        AttentionIo {
            q: a.qp.as_entire_binding(),
            k_cache: k_cache.as_entire_binding(),
            v_cache: v_cache.as_entire_binding(),
            out: a.attn.as_entire_binding(),
            step: step(),
            scratch: Some(a.attn_scratch.as_entire_binding()),
        },
        params,
    )?;
    let into_arena = |w: &QuantMatrix, x: &wgpu::Buffer, at: u32| {
        Matmul::new(
            ctx,
            w,
            MatmulIo {
                x: x.as_entire_binding(),
                x_offset: 0,
                y: a.arena.as_entire_binding(),
                y_offset: at,
                y_stride: hidden,
                step: step(),
            },
            MatmulOut::Store,
        )
    };
    let o = into_arena(m("attn_output")?, &a.attn, attn_at)?;

    // Gemma 4 scales the whole residual stream at the end of every layer.
    let scale_name = t("layer_output_scale");
    let layer_scale = match weights.host.get(&scale_name) {
        Some(v) if v.len() == 1 && v[0].is_finite() => v[0],
        Some(v) => {
            return Err(Error::Gguf(format!(
                "tensor `{scale_name}`: expected one finite value, found {v:?}"
            )))
        }
        None => 1.0,
    };
    let pa = Term {
        o: attn_at,
        w: norm("post_attention_norm")?,
    };
    let pf = Term {
        o: ffn_at,
        w: norm("post_ffw_norm")?,
    };
    // A prologue's term: the arena row `at` and its weight, relative to h's row.
    let pro_term = |term: Term| NormTerm {
        offset: term.o - h_at,
        weight: term.w,
    };
    let prologue = |terms: [Option<NormTerm>; 2], norm: Option<u32>| MatvecIn::Prologue {
        h: h_at,
        terms,
        norm,
        eps,
    };
    // A mat-vec from the arena (or its h rows) into `act`, rows `y_stride` apart; with `z`
    // (stride, offset) its factors from the per-layer inputs.
    let ple_out = a.ple.as_ref().map(|pb| &pb.out);
    let mv_io = |y_stride: u32, z: Option<(u32, u32)>, norms: bool| MatvecIo {
        x: a.arena.as_entire_binding(),
        norms: norms.then(|| weights.norms.all()),
        y: a.act.as_entire_binding(),
        y_offset: 0,
        y_stride,
        z: z.zip(ple_out)
            .map(|((stride, offset), b)| (b.as_entire_binding(), stride, offset)),
        step: step(),
    };

    // The MLP.
    let (wg, wu) = (m("ffn_gate")?, m("ffn_up")?);
    let ffn_in = prologue([Some(pro_term(pa)), None], Some(norm("ffn_norm")?));
    let mlp_fused = if Matvec::fuses(&[wg, wu], ffn_in, MatvecOut::GeluPair) {
        Some(Matvec::new(
            ctx,
            &[wg, wu],
            ffn_in,
            MatvecOut::GeluPair,
            1,
            mv_io(lc.ff_len, None, true),
        )?)
    } else {
        None
    };
    let from_xn = MatvecIn::Buffer {
        offset: 0,
        stride: None,
    };
    let plain = |w: &QuantMatrix, x: &wgpu::Buffer, y: &wgpu::Buffer| {
        Matmul::new(
            ctx,
            w,
            MatmulIo::plain(x.as_entire_binding(), y.as_entire_binding(), w.n, step()),
            MatmulOut::Store,
        )
    };
    let mlp = GatedMlp {
        pair: if Matvec::fuses(&[wg, wu], from_xn, MatvecOut::GeluPair) {
            Some(Matvec::new(
                ctx,
                &[wg, wu],
                from_xn,
                MatvecOut::GeluPair,
                MATVEC_MAX_TOKENS,
                MatvecIo {
                    x: a.xn.as_entire_binding(),
                    norms: None,
                    y: a.act.as_entire_binding(),
                    y_offset: 0,
                    y_stride: lc.ff_len,
                    z: None,
                    step: step(),
                },
            )?)
        } else {
            None
        },
        gate: plain(wg, &a.xn, &a.gate)?,
        up: plain(wu, &a.xn, &a.up)?,
        gelu: GeluMul::new(
            ctx,
            GeluMulIo {
                gate: a.gate.as_entire_binding(),
                up: a.up.as_entire_binding(),
                out: a.act.as_entire_binding(),
                step: step(),
            },
            lc.ff_len,
            None,
        )?,
    };
    let down = into_arena(m("ffn_down")?, &a.act, ffn_at)?;

    // Gemma 4's per-layer input.
    let (ple, end_terms_fused, end_term) = match &a.ple {
        None => (None, vec![pa, pf], pf),
        Some(pb) => {
            let wgate = m("inp_gate")?;
            let width = cfg.n_layers * cfg.ple_dim;
            let z = (width, l as u32 * cfg.ple_dim);
            let gate_in = prologue([Some(pro_term(pa)), Some(pro_term(pf))], None);
            let pp = Term {
                o: ple_at,
                w: norm("post_norm")?,
            };
            let ops = PleOps {
                gate_fused: if Matvec::fuses(&[wgate], gate_in, MatvecOut::GeluZ) {
                    Some(Matvec::new(
                        ctx,
                        &[wgate],
                        gate_in,
                        MatvecOut::GeluZ,
                        1,
                        mv_io(cfg.ple_dim, Some(z), true),
                    )?)
                } else {
                    None
                },
                gate_few: Matvec::new(
                    ctx,
                    &[wgate],
                    MatvecIn::Buffer {
                        offset: h_at,
                        stride: Some(hidden),
                    },
                    MatvecOut::GeluZ,
                    MATVEC_MAX_TOKENS,
                    mv_io(cfg.ple_dim, Some(z), false),
                )?,
                gate: Matmul::new(
                    ctx,
                    wgate,
                    MatmulIo {
                        x: a.arena.as_entire_binding(),
                        x_offset: h_at,
                        y: a.gate.as_entire_binding(),
                        y_offset: 0,
                        y_stride: cfg.ple_dim,
                        step: step(),
                    },
                    MatmulOut::Store,
                )?,
                gelu: GeluMul::with_up_rows(
                    ctx,
                    GeluMulIo {
                        gate: a.gate.as_entire_binding(),
                        up: pb.out.as_entire_binding(),
                        out: a.act.as_entire_binding(),
                        step: step(),
                    },
                    cfg.ple_dim,
                    cfg.ple_dim,
                    width,
                    l as u32 * cfg.ple_dim,
                )?,
                proj: into_arena(m("proj")?, &a.act, ple_at)?,
                post_ffw: residual(vec![pf], 1.0, None)?,
            };
            (Some(ops), vec![pa, pf, pp], pp)
        }
    };
    let ops = LayerOps {
        attn_norm: if own_norm {
            Some(residual(Vec::new(), 1.0, Some(norm("attn_norm")?))?)
        } else {
            None
        },
        qkv,
        prep,
        attention,
        attention_label: match (params.window > 0, shared) {
            (true, false) => "attention (sliding)",
            (true, true) => "attention (sliding, shared cache)",
            (false, false) => "attention (full)",
            (false, true) => "attention (full, shared cache)",
        },
        o,
        mlp_fused,
        post_attn: residual(vec![pa], 1.0, Some(norm("ffn_norm")?))?,
        mlp,
        down,
        ple,
        end_fused: residual(end_terms_fused, layer_scale, next_norm)?,
        end: residual(vec![end_term], layer_scale, next_norm)?,
    };
    Ok((ops, own_cache))
}
