//! What runs before and after the layers: Gemma 4's per-layer inputs (a row of the per-layer
//! table read from the file, plus a projection of the embedding), and the head (final norm, tied
//! LM head, logit post-processing and the GPU top-k).

use std::sync::Arc;

use super::buffers::{Activations, Slot};
use super::config::ModelConfig;
use super::plan::tensor_error;
use super::weights::Weights;
use crate::gguf::{RowSource, TensorInfo};
use crate::gpu::{GpuContext, Recorder, StepParams};
use crate::kernels::logits::{LogitRows, Logits, LogitsConfig, LogitsIo, Sampling, MAX_K};
use crate::kernels::matmul::{Matmul, MatmulIo, MatmulOut};
use crate::kernels::norm::{NormOut, RmsNorm, RmsNormIo};
use crate::kernels::ple::{PleCombine, PleCombineIo, PleConfig};
use crate::kernels::sample::{VocabSampler, VocabSamplerIo, VocabSampling};
use crate::kernels::token_mask::{TokenMask, TokenMaskIo};
use crate::Result;

/// Gemma 4's per-layer inputs: the table rows come from the file, the rest from the GPU.
pub(super) struct PleInput {
    /// `W_plm·x` into `PleBuffers::ctx`.
    proj: Matmul,
    combine: PleCombine,
    rows: Arc<dyn RowSource>,
    /// `per_layer_token_embd`: where its rows are and how they are stored.
    table: TensorInfo,
    /// `L·P` values per row.
    width: usize,
    /// Reused per step: one row's bytes, and `[T, L·P]` f32 rows.
    row_bytes: Vec<u8>,
    pub(super) values: Vec<f32>,
}

impl PleInput {
    pub(super) fn new(
        ctx: &GpuContext,
        cfg: &ModelConfig,
        weights: &Weights,
        a: &Activations,
        rows: Arc<dyn RowSource>,
        table: TensorInfo,
    ) -> Result<Option<Self>> {
        let Some(pb) = &a.ple else { return Ok(None) };
        let width = cfg.n_layers * cfg.ple_dim;
        Ok(Some(PleInput {
            proj: Matmul::new(
                ctx,
                weights.matrix("per_layer_model_proj.weight")?,
                MatmulIo {
                    x: a.arena.as_entire_binding(),
                    x_offset: a.slot(Slot::H),
                    y: pb.ctx.as_entire_binding(),
                    y_offset: 0,
                    y_stride: width,
                    step: a.step.as_entire_binding(),
                },
                MatmulOut::Store,
            )?,
            combine: PleCombine::new(
                ctx,
                PleCombineIo {
                    ctx: pb.ctx.as_entire_binding(),
                    tok: pb.tok.as_entire_binding(),
                    weight: weights.norms.binding("per_layer_proj_norm.weight")?,
                    out: pb.out.as_entire_binding(),
                    step: a.step.as_entire_binding(),
                },
                &PleConfig::gemma4(cfg.hidden, cfg.ple_dim, cfg.n_layers, cfg.eps),
            )?,
            rows,
            width: width as usize,
            row_bytes: vec![0; table.row_bytes() as usize],
            table,
            values: Vec::new(),
        }))
    }

    /// Reads and dequantizes the per-layer-table rows of `tokens` into `values`
    /// (`[T, L·P]` f32).
    pub(super) fn read_rows(&mut self, tokens: &[u32]) -> Result<()> {
        self.values.clear();
        let row_bytes = self.row_bytes.len() as u64;
        for &t in tokens {
            self.rows.read_rows(
                self.table.offset + t as u64 * row_bytes,
                &mut self.row_bytes,
            )?;
            let row = crate::quant::dequantize(self.table.ty, &self.row_bytes, self.width)
                .map_err(|e| tensor_error(&self.table, e))?;
            self.values.extend_from_slice(&row);
        }
        Ok(())
    }

    pub(super) fn encode(&self, rec: &mut Recorder<'_, '_>, step: &StepParams) {
        rec.op("ple_model_proj", &self.proj, step);
        rec.op("ple_combine", &self.combine, step);
    }
}

/// Final norm + LM head + top-k over a set of rows.
pub(super) struct Head {
    norm: RmsNorm,
    lm_head: Matmul,
    pub(super) logits: Logits,
    /// `true`: one row (the step's last); `false`: every row of the step.
    pub(super) last_row_only: bool,
    pub(super) out: wgpu::Buffer,
    pub(super) rows: u32,
    /// Full-vocabulary sampling after the top-k (generation head only), and whether it runs.
    pub(super) vocab_sampler: Option<VocabSampler>,
    pub(super) full_vocab: bool,
    /// Constrained decoding (generation head only): the allowed-token bitmask
    /// (`[⌈V/32⌉]` u32, written before each step), its op, and whether it runs.
    pub(super) token_mask: Option<(TokenMask, wgpu::Buffer)>,
    pub(super) constrained: bool,
}

impl Head {
    /// `score_rows: None` builds the generation head (the step's last row only); `Some(r)` a
    /// head over up to `r` rows for `score`. It runs after the KV-shared layers, so it binds
    /// their step parameters.
    pub(super) fn new(
        ctx: &GpuContext,
        cfg: &ModelConfig,
        weights: &Weights,
        a: &Activations,
        k: u32,
        score_rows: Option<u32>,
    ) -> Result<Self> {
        let embd = weights.matrix("token_embd.weight")?;
        let step = a.tail_step();
        let rows = score_rows.unwrap_or(1);
        let (normed, logits, row_step) = match score_rows {
            None => (&a.last, a.logits.clone(), a.step_one.as_entire_binding()),
            Some(r) => (
                &a.xn,
                ctx.storage("score_logits", r as u64 * cfg.vocab as u64 * 4)?,
                step.as_entire_binding(),
            ),
        };
        // The final norm is a dispatch of its own: as a prologue of the LM head's mat-vec,
        // each of its hundred-thousand-row workgroups would repeat it.
        let norm = RmsNorm::new(
            ctx,
            RmsNormIo {
                x: a.arena.as_entire_binding(),
                weight: Some(weights.norms.binding("output_norm.weight")?),
                y: normed.as_entire_binding(),
                step: step.as_entire_binding(),
            },
            cfg.hidden,
            1,
            cfg.eps,
            if score_rows.is_some() {
                NormOut::Store
            } else {
                NormOut::LastRow
            },
        )?;
        let lm_head = Matmul::new(
            ctx,
            embd,
            MatmulIo::plain(
                normed.as_entire_binding(),
                logits.as_entire_binding(),
                embd.n,
                row_step.clone(),
            ),
            MatmulOut::Store,
        )?;
        let out = ctx.storage("topk", Logits::out_bytes(rows, MAX_K))?;
        let mut logits_op = Logits::new(
            ctx,
            LogitsIo {
                logits: logits.as_entire_binding(),
                penalty_ids: Some(a.penalty_ids.as_entire_binding()),
                out: out.as_entire_binding(),
                step: row_step,
            },
            &LogitsConfig {
                vocab: cfg.vocab,
                rows: match score_rows {
                    None => LogitRows::Fixed(1),
                    Some(r) => LogitRows::PerToken { max: r },
                },
                softcap: cfg.final_softcap,
            },
        )?;
        logits_op.set_sampling(
            ctx,
            &Sampling {
                k,
                ..Default::default()
            },
        )?;
        let vocab_sampler = match score_rows {
            Some(_) => None,
            None => Some(VocabSampler::new(
                ctx,
                VocabSamplerIo {
                    logits: logits.as_entire_binding(),
                    topk: out.as_entire_binding(),
                },
                cfg.vocab,
            )?),
        };
        let token_mask = match score_rows {
            Some(_) => None,
            None => {
                let allowed =
                    ctx.storage("allowed_tokens", TokenMask::words(cfg.vocab) as u64 * 4)?;
                let op = TokenMask::new(
                    ctx,
                    TokenMaskIo {
                        logits: logits.as_entire_binding(),
                        allowed: allowed.as_entire_binding(),
                    },
                    cfg.vocab,
                )?;
                Some((op, allowed))
            }
        };
        Ok(Head {
            norm,
            lm_head,
            logits: logits_op,
            last_row_only: score_rows.is_none(),
            out,
            rows,
            vocab_sampler,
            full_vocab: false,
            token_mask,
            constrained: false,
        })
    }

    /// Turns full-vocabulary sampling on with these settings, or off (`None`).
    pub(super) fn set_vocab_sampling(
        &mut self,
        ctx: &GpuContext,
        s: Option<&VocabSampling>,
    ) -> Result<()> {
        match (s, &mut self.vocab_sampler) {
            (None, _) => self.full_vocab = false,
            (Some(s), Some(v)) => {
                if v.sampling() != Some(s) {
                    v.set_sampling(ctx, s)?;
                }
                self.full_vocab = true;
            }
            (Some(_), None) => {
                return Err(crate::Error::InvalidArgument(
                    "full-vocabulary sampling runs on the generation head only".into(),
                ))
            }
        }
        Ok(())
    }

    /// The sampler that runs this step, if any.
    pub(super) fn active_sampler(&self) -> Option<&VocabSampler> {
        self.vocab_sampler.as_ref().filter(|_| self.full_vocab)
    }

    /// Records the head for the rows of `tail` (the step of the layers before it).
    pub(super) fn encode(&self, rec: &mut Recorder<'_, '_>, tail: &StepParams) {
        let rows = if self.last_row_only {
            StepParams::new(1, 0)
        } else {
            *tail
        };
        rec.op("final_norm", &self.norm, tail);
        rec.op("lm_head", &self.lm_head, &rows);
        if let (Some((mask, _)), true) = (&self.token_mask, self.constrained) {
            rec.op("token_mask", mask, &rows);
        }
        rec.op("logits_topk", &self.logits, &rows);
        if let Some(s) = self.active_sampler() {
            rec.op("sample_vocab", s, &rows);
        }
    }
}
