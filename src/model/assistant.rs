//! Gemma 4's multi-token-prediction (MTP) assistant: a `gemma4-assistant` GGUF as llama.cpp's
//! converter writes Google's `gemma-4-*-assistant` checkpoints. Its hyper-parameters and
//! tensors are checked on their own and against the target model whose KV caches it reads, so
//! a drafter that cannot work with a target is refused before anything is loaded.
//!
//! The assistant drafts the target's next tokens (llama.cpp `src/models/gemma4-assistant.cpp`,
//! transformers `models/gemma4_assistant`):
//! * its input is `concat(sqrt(Hb) · target.token_embd[token], h)` through
//!   `nextn.pre_projection` (`[2·Hb] → [H]`; `Hb` is the target's width, `H` the assistant's),
//!   where `h` is the target's last hidden state for the first draft and the previous draft's
//!   `nextn.post_projection` output (`[H] → [Hb]`) after that;
//! * its layers are Gemma 4 layers with query-only attention: q/o projections, a q norm and
//!   RoPE, no K or V of their own. A sliding layer attends over the KV cache of the target's
//!   last sliding layer, a full layer over that of the target's last full layer;
//! * it scores the vocabulary through its own tied `token_embd` (`[H, V]`) after `output_norm`,
//!   without a softcap.
//!
//! The target's `h` is its hidden state after the final norm (the LM head's input) at the
//! position before the drafted one, and every draft step of a round uses the same RoPE position
//! and sees the same K/V (`pkg-scripts/make_gemma4_mtp_reference.py` records how transformers
//! and llama.cpp differ in which cache rows a draft sees).
//!   Google's E2B/E4B assistants can also restrict the head to a few token clusters
//!   (`masked_embedding.*`); the converter drops those tensors, so a GGUF assistant has the
//!   dense head only.

use super::config::LayerConfig;
use super::config::{
    check_dims, check_layer_shape, check_tensor_bytes, sliding_pattern, vocab_rows, Arch,
    LayerKeys, ModelConfig, Shared,
};
use super::plan::{check_tensor, layer_tensor, Placement, TensorPlan};
use crate::gguf::Gguf;
use crate::{Error, Result};
use std::collections::HashMap;

/// `general.architecture` of an assistant file.
pub const ASSISTANT_ARCH: &str = "gemma4-assistant";

/// One assistant layer.
#[derive(Clone, Debug, PartialEq)]
pub struct AssistantLayer {
    /// Sliding-window attention (over the target's last sliding layer's cache); otherwise full.
    pub sliding: bool,
    pub head_dim: u32,
    /// KV heads of the cache the layer reads.
    pub n_kv_heads: u32,
    /// MLP intermediate width.
    pub ff_len: u32,
    pub rope_theta: f32,
    /// Full layers: proportional RoPE through `rope_freqs.weight`, as in the target.
    pub rope_freq_factors: bool,
}

/// Everything drafting needs to know about an assistant.
#[derive(Clone, Debug, PartialEq)]
pub struct AssistantConfig {
    pub n_layers: u32,
    /// The assistant's own residual width `H`.
    pub hidden: u32,
    /// The target's residual width `Hb` (`embedding_length_out`): the width of `h` and of the
    /// target's embedding rows the assistant reads.
    pub backbone_hidden: u32,
    pub n_heads: u32,
    pub vocab: u32,
    /// Sliding window W of its sliding layers (the target's).
    pub sliding_window: u32,
    pub eps: f32,
    /// Draft logits are not softcapped: neither transformers nor llama.cpp applies the
    /// `final_logit_softcapping` the converter copies into the file (checked by
    /// `pkg-scripts/make_gemma4_mtp_reference.py`), so it is not read.
    pub layers: Vec<AssistantLayer>,
}

impl AssistantConfig {
    /// Reads and checks an assistant's hyper-parameters from its GGUF header.
    pub fn from_gguf(g: &Gguf) -> Result<Self> {
        let found = g.architecture()?;
        if found != ASSISTANT_ARCH {
            return Err(Error::UnsupportedArchitecture {
                found: found.to_string(),
                supported: format!("{ASSISTANT_ARCH} (an assistant model)"),
            });
        }
        check_tensor_bytes(g)?;
        let md = &g.metadata;
        let arch = ASSISTANT_ARCH;
        let key = |k: &str| format!("{arch}.{k}");
        let bad = |k: &str, problem: String| Error::Metadata {
            key: key(k),
            problem,
        };
        let n_layers = md.u32(&key("block_count"))?;
        let hidden = md.u32(&key("embedding_length"))?;
        let backbone_hidden = md.u32(&key("embedding_length_out"))?;
        let n_heads = md.u32(&key("attention.head_count"))?;
        check_dims(
            g,
            arch,
            &[
                ("block_count", n_layers),
                ("embedding_length", hidden),
                ("embedding_length_out", backbone_hidden),
                ("attention.head_count", n_heads),
            ],
        )?;
        if let Some(n) = md.opt_u32(&key("nextn_predict_layers"))? {
            if n != n_layers {
                return Err(bad(
                    "nextn_predict_layers",
                    format!("{n} differs from block_count {n_layers}"),
                ));
            }
        }
        let LayerKeys {
            kv_heads,
            ff,
            head_full,
            head_swa,
        } = LayerKeys::read(g, arch, n_layers)?;
        let shared = Shared::read(g, arch)?;
        let pattern = sliding_pattern(g, &key("attention.sliding_window_pattern"), n_layers)?;
        let has_rope_freqs = g.opt_tensor("rope_freqs.weight").is_some();
        let mut layers = Vec::with_capacity(n_layers as usize);
        for i in 0..n_layers as usize {
            let sliding = shared.sliding_window > 0 && pattern[i];
            let head_dim = if sliding { head_swa } else { head_full };
            let n_kv_heads = kv_heads[i];
            check_layer_shape(arch, i, sliding, head_dim, n_heads, n_kv_heads, ff[i])?;
            layers.push(AssistantLayer {
                sliding,
                head_dim,
                n_kv_heads,
                ff_len: ff[i],
                rope_theta: if sliding {
                    shared.theta_local
                } else {
                    shared.theta_full
                },
                rope_freq_factors: !sliding && has_rope_freqs,
            });
        }
        Ok(Self {
            n_layers,
            hidden,
            backbone_hidden,
            n_heads,
            vocab: vocab_rows(g)?,
            sliding_window: shared.sliding_window,
            eps: shared.eps,
            layers,
        })
    }

    /// The target layer whose KV cache each assistant layer attends over (the cache's owner,
    /// so a KV-shared target layer resolves to the layer that computes it). Refuses a target
    /// the assistant cannot draft for, naming what differs.
    pub fn target_caches(&self, target: &ModelConfig) -> Result<Vec<usize>> {
        let mismatch = |m: String| Err(Error::AssistantMismatch(m));
        if target.arch != Arch::Gemma4 {
            return mismatch(format!(
                "the target is a {} model; MTP assistants draft for Gemma 4 only",
                target.arch.name()
            ));
        }
        if self.vocab != target.vocab {
            return mismatch(format!(
                "the assistant's vocabulary has {} tokens, the target's {}",
                self.vocab, target.vocab
            ));
        }
        if self.backbone_hidden != target.hidden {
            return mismatch(format!(
                "the assistant expects a target of width {} ({ASSISTANT_ARCH}.embedding_length_out), the target's is {}",
                self.backbone_hidden, target.hidden
            ));
        }
        let mut caches = Vec::with_capacity(self.layers.len());
        for (i, l) in self.layers.iter().enumerate() {
            let kind = if l.sliding { "sliding" } else { "full" };
            let Some(last) = target.layers.iter().rposition(|t| t.sliding == l.sliding) else {
                return mismatch(format!(
                    "assistant layer {i} attends over the target's last {kind} layer, but the target has no {kind} layer"
                ));
            };
            let owner = target.layers[last].kv_source;
            let t = &target.layers[owner];
            if t.head_dim != l.head_dim || t.n_kv_heads != l.n_kv_heads {
                return mismatch(format!(
                    "assistant layer {i} ({kind}) reads {}×{} K/V heads, but the cache of target layer {owner} holds {}×{}",
                    l.n_kv_heads, l.head_dim, t.n_kv_heads, t.head_dim
                ));
            }
            if l.sliding && self.sliding_window != target.sliding_window {
                return mismatch(format!(
                    "the assistant's sliding window is {} tokens, the target's {}",
                    self.sliding_window, target.sliding_window
                ));
            }
            caches.push(owner);
        }
        Ok(caches)
    }
}

/// Checks an assistant file: its configuration, every tensor the drafter uses (present, the
/// expected shape, a supported type), and that it fits `target`. Returns the configuration
/// and the target layer whose KV cache each assistant layer reads.
pub fn check_assistant(g: &Gguf, target: &ModelConfig) -> Result<(AssistantConfig, Vec<usize>)> {
    plan_assistant(g, target).map(|(cfg, caches, _)| (cfg, caches))
}

/// [`check_assistant`], and where each tensor goes when the drafter is loaded.
pub(super) fn plan_assistant(
    g: &Gguf,
    target: &ModelConfig,
) -> Result<(AssistantConfig, Vec<usize>, TensorPlan)> {
    let cfg = AssistantConfig::from_gguf(g)?;
    let (h, hb, v) = (
        cfg.hidden as u64,
        cfg.backbone_hidden as u64,
        cfg.vocab as u64,
    );
    let mut wanted: TensorPlan = HashMap::new();
    let mut want = |name: String, shape: Vec<u64>| {
        let at = match shape.len() {
            1 if name.ends_with(".layer_output_scale.weight") || name == "rope_freqs.weight" => {
                Placement::Host
            }
            1 => Placement::Norm,
            _ => Placement::Gpu,
        };
        wanted.insert(name, (shape, at));
    };
    want("token_embd.weight".into(), vec![h, v]);
    want("output_norm.weight".into(), vec![h]);
    want("nextn.pre_projection.weight".into(), vec![2 * hb, h]);
    want("nextn.post_projection.weight".into(), vec![h, hb]);
    if let Some(full) = cfg.layers.iter().find(|l| l.rope_freq_factors) {
        want("rope_freqs.weight".into(), vec![full.head_dim as u64 / 2]);
    }
    for (i, l) in cfg.layers.iter().enumerate() {
        let (q, ff) = (cfg.n_heads as u64 * l.head_dim as u64, l.ff_len as u64);
        for (what, shape) in [
            ("attn_norm", vec![h]),
            ("attn_q", vec![h, q]),
            ("attn_q_norm", vec![l.head_dim as u64]),
            ("attn_output", vec![q, h]),
            ("post_attention_norm", vec![h]),
            ("ffn_norm", vec![h]),
            ("ffn_gate", vec![h, ff]),
            ("ffn_up", vec![h, ff]),
            ("ffn_down", vec![ff, h]),
            ("post_ffw_norm", vec![h]),
            ("layer_output_scale", vec![1]),
        ] {
            want(layer_tensor(i, what), shape);
        }
    }
    let mut names: Vec<&String> = wanted.keys().collect();
    names.sort();
    for name in names {
        check_tensor(g, name, &wanted[name].0)?;
    }
    let caches = cfg.target_caches(target)?;
    Ok((cfg, caches, wanted))
}

impl AssistantConfig {
    /// The assistant as a Gemma 4 model whose every layer is KV-shared: the form the layer
    /// builder takes. Layer `i` reads the cache of target layer `caches[i]` (its `kv_source`
    /// names a layer of the target, not of this model); the RoPE, window and attention scale
    /// are the target's.
    pub(super) fn as_model(&self, target: &ModelConfig, caches: &[usize]) -> ModelConfig {
        ModelConfig {
            arch: Arch::Gemma4,
            n_layers: self.n_layers,
            hidden: self.hidden,
            n_heads: self.n_heads,
            vocab: self.vocab,
            context_length: target.context_length,
            sliding_window: self.sliding_window,
            eps: self.eps,
            attn_scale: target.attn_scale,
            final_softcap: None,
            embed_scale: target.embed_scale,
            ple_dim: 0,
            first_shared: 0,
            layers: self
                .layers
                .iter()
                .zip(caches)
                .map(|(l, &source)| LayerConfig {
                    sliding: l.sliding,
                    head_dim: l.head_dim,
                    n_kv_heads: l.n_kv_heads,
                    ff_len: l.ff_len,
                    rope_theta: l.rope_theta,
                    rope_scale: 1.0,
                    rope_freq_factors: l.rope_freq_factors,
                    kv_source: source,
                })
                .collect(),
        }
    }
}
