//! Model hyper-parameters read from GGUF metadata, validated once, so the forward pass never
//! guesses. Gemma 3 facts that the metadata leaves out (the 5:1 sliding pattern, θ = 10 000 on
//! sliding layers, the attention scale) follow llama.cpp, which wrote these files
//! (`../shared/GEMMA.md` §1.1, §4.2).

use crate::gguf::Gguf;
use crate::kernels::attention::HEAD_DIMS;
use crate::{Error, Result};

/// Architectures this engine runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    Gemma3,
    Gemma4,
}

impl Arch {
    pub const SUPPORTED: &'static str = "gemma3, gemma4";

    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "gemma3" => Ok(Arch::Gemma3),
            "gemma4" => Ok(Arch::Gemma4),
            super::assistant::ASSISTANT_ARCH => Err(Error::UnsupportedArchitecture {
                found: name.to_string(),
                supported: format!(
                    "{}; this file is a Gemma 4 MTP assistant, which drafts tokens beside its \
                     target model and does not run alone",
                    Self::SUPPORTED
                ),
            }),
            other => Err(Error::UnsupportedArchitecture {
                found: other.to_string(),
                supported: Self::SUPPORTED.to_string(),
            }),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Arch::Gemma3 => "gemma3",
            Arch::Gemma4 => "gemma4",
        }
    }
}

/// Per-layer shape: Gemma 4 varies head size, KV heads and MLP width by layer.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerConfig {
    /// Sliding-window (local) attention; otherwise full (global).
    pub sliding: bool,
    pub head_dim: u32,
    pub n_kv_heads: u32,
    /// MLP intermediate width.
    pub ff_len: u32,
    pub rope_theta: f32,
    /// Divides RoPE frequencies (Gemma 3 4B+ full layers: linear scaling ×8); 1.0 otherwise.
    pub rope_scale: f32,
    /// Gemma 4 full layers: per-pair RoPE frequency divisors from `rope_freqs.weight`
    /// (proportional RoPE); read from the tensor at load.
    pub rope_freq_factors: bool,
    /// The layer whose KV cache this layer attends over: itself for a layer that computes
    /// K/V, the last earlier layer of the same type for a Gemma 4 KV-shared layer.
    pub kv_source: usize,
}

impl LayerConfig {
    /// Computes no K/V and reads another layer's cache (Gemma 4 KV sharing).
    pub fn shares_kv(&self, l: usize) -> bool {
        self.kv_source != l
    }
}

/// Everything the forward pass needs to know about a model.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub arch: Arch,
    pub n_layers: u32,
    /// Residual width H.
    pub hidden: u32,
    pub n_heads: u32,
    pub vocab: u32,
    /// Longest context the model was trained for.
    pub context_length: u32,
    /// Sliding window W (keys `p − W < j ≤ p`).
    pub sliding_window: u32,
    pub eps: f32,
    /// Multiplies q·k (Gemma 3: `query_pre_attn_scalar^-0.5`; Gemma 4: 1.0).
    pub attn_scale: f32,
    /// `c·tanh(x/c)` on the logits (Gemma 4: 30), if any.
    pub final_softcap: Option<f32>,
    /// Multiplies the looked-up embedding row. Exact `sqrt(H)` in f32: what llama.cpp does,
    /// and what transformers does with fp32 weights (its bf16 rounding only happens in bf16).
    pub embed_scale: f32,
    /// Gemma 4 per-layer-embedding width P (0: the model has no per-layer inputs).
    pub ple_dim: u32,
    /// First KV-shared layer (`n_layers` when no layer shares).
    pub first_shared: u32,
    pub layers: Vec<LayerConfig>,
}

impl ModelConfig {
    /// Reads and checks the hyper-parameters of a GGUF header.
    pub fn from_gguf(g: &Gguf) -> Result<Self> {
        let arch = Arch::from_name(g.architecture()?)?;
        check_tensor_bytes(g)?;
        match arch {
            Arch::Gemma3 => Self::gemma3(g),
            Arch::Gemma4 => Self::gemma4(g),
        }
    }

    fn gemma3(g: &Gguf) -> Result<Self> {
        let md = &g.metadata;
        let arch_name = "gemma3";
        let key = |k: &str| format!("{arch_name}.{k}");
        let n_layers = md.u32(&key("block_count"))?;
        let hidden = md.u32(&key("embedding_length"))?;
        let n_heads = md.u32(&key("attention.head_count"))?;
        let n_kv_heads = md.u32(&key("attention.head_count_kv"))?;
        let head_dim = md
            .opt_u32(&key("attention.key_length"))?
            .unwrap_or(hidden / n_heads.max(1));
        let value_len = md
            .opt_u32(&key("attention.value_length"))?
            .unwrap_or(head_dim);
        let ff_len = md.u32(&key("feed_forward_length"))?;
        let Shared {
            context_length,
            sliding_window,
            eps,
            theta_full,
            theta_local,
        } = Shared::read(g, arch_name)?;
        let scaling_type = md.opt_str(&key("rope.scaling.type"))?.unwrap_or("none");
        let rope_scale_full = match scaling_type {
            "linear" => md.opt_f32(&key("rope.scaling.factor"))?.unwrap_or(1.0),
            "none" | "" => 1.0,
            other => {
                return Err(Error::Metadata {
                    key: key("rope.scaling.type"),
                    problem: format!("`{other}` is not supported (only linear)"),
                })
            }
        };

        let bad = |k: &str, problem: String| Error::Metadata {
            key: key(k),
            problem,
        };
        check_dims(
            g,
            arch_name,
            &[
                ("block_count", n_layers),
                ("embedding_length", hidden),
                ("attention.head_count", n_heads),
                ("attention.head_count_kv", n_kv_heads),
                ("feed_forward_length", ff_len),
            ],
        )?;
        if !(rope_scale_full.is_finite() && rope_scale_full > 0.0) {
            return Err(bad(
                "rope.scaling.factor",
                format!("{rope_scale_full} is not a positive number"),
            ));
        }
        if n_heads % n_kv_heads != 0 {
            return Err(bad(
                "attention.head_count_kv",
                format!("{n_kv_heads} does not divide head_count {n_heads}"),
            ));
        }
        if !HEAD_DIMS.contains(&head_dim) || value_len != head_dim {
            return Err(bad(
                "attention.key_length",
                format!("head size {head_dim} (value {value_len}) is not supported: one of {HEAD_DIMS:?}, keys = values"),
            ));
        }
        check_heads_width(arch_name, n_heads, head_dim)?;

        // Sliding layers: an explicit pattern if the converter wrote one (newer llama.cpp), else
        // llama.cpp's hard-coded period of 6 (layer i is local iff i % 6 < 5).
        let pattern = sliding_pattern(g, &key("attention.sliding_window_pattern"), n_layers)?;

        // llama.cpp's f_attention_scale: 1/sqrt(head_dim), except Gemma 3 27B (62 layers),
        // which uses query_pre_attn_scalar = hidden / n_heads.
        let attn_scale = if n_layers == 62 {
            1.0 / ((hidden / n_heads) as f32).sqrt()
        } else {
            1.0 / (head_dim as f32).sqrt()
        };
        let vocab = vocab_rows(g)?;

        let layers = (0..n_layers as usize)
            .map(|i| {
                let sliding = sliding_window > 0 && pattern[i];
                LayerConfig {
                    sliding,
                    head_dim,
                    n_kv_heads,
                    ff_len,
                    rope_theta: if sliding { theta_local } else { theta_full },
                    rope_scale: if sliding { 1.0 } else { rope_scale_full },
                    rope_freq_factors: false,
                    kv_source: i,
                }
            })
            .collect();
        Ok(ModelConfig {
            arch: Arch::Gemma3,
            n_layers,
            hidden,
            n_heads,
            vocab,
            context_length,
            sliding_window,
            eps,
            attn_scale,
            final_softcap: md
                .opt_f32(&key("final_logit_softcapping"))?
                .filter(|c| *c > 0.0),
            embed_scale: (hidden as f32).sqrt(),
            ple_dim: 0,
            first_shared: n_layers,
            layers,
        })
    }

    /// Gemma 4 (GEMMA.md §1.2, §2.4, §4.3): two head sizes (`key_length` for full layers,
    /// `key_length_swa` for sliding ones), per-layer MLP widths and KV heads (a number or an
    /// array per layer), an explicit sliding pattern, KV sharing from `shared_kv_layers`, the
    /// per-layer-embedding width, attention scale 1.0 and the final softcap.
    fn gemma4(g: &Gguf) -> Result<Self> {
        let md = &g.metadata;
        let arch_name = "gemma4";
        let key = |k: &str| format!("{arch_name}.{k}");
        let bad = |k: &str, problem: String| Error::Metadata {
            key: key(k),
            problem,
        };
        let n_layers = md.u32(&key("block_count"))?;
        let hidden = md.u32(&key("embedding_length"))?;
        let n_heads = md.u32(&key("attention.head_count"))?;
        check_dims(
            g,
            arch_name,
            &[
                ("block_count", n_layers),
                ("embedding_length", hidden),
                ("attention.head_count", n_heads),
            ],
        )?;
        let LayerKeys {
            kv_heads,
            ff,
            head_full,
            head_swa,
        } = LayerKeys::read(g, arch_name, n_layers)?;
        let Shared {
            context_length,
            sliding_window,
            eps,
            theta_full,
            theta_local,
        } = Shared::read(g, arch_name)?;
        let pattern = sliding_pattern(g, &key("attention.sliding_window_pattern"), n_layers)?;
        let shared = md.opt_u32(&key("attention.shared_kv_layers"))?.unwrap_or(0);
        if shared >= n_layers {
            return Err(bad(
                "attention.shared_kv_layers",
                format!("{shared} shared layers leave no layer to compute K/V ({n_layers} layers)"),
            ));
        }
        let first_shared = n_layers - shared;
        let ple_dim = md
            .opt_u32(&key("embedding_length_per_layer_input"))?
            .unwrap_or(0);
        let has_rope_freqs = g.opt_tensor("rope_freqs.weight").is_some();

        let mut layers: Vec<LayerConfig> = Vec::with_capacity(n_layers as usize);
        for i in 0..n_layers as usize {
            let sliding = sliding_window > 0 && pattern[i];
            let head_dim = if sliding { head_swa } else { head_full };
            let n_kv_heads = kv_heads[i];
            check_layer_shape(arch_name, i, sliding, head_dim, n_heads, n_kv_heads, ff[i])?;
            // A shared layer reads the cache of the last earlier layer of its own type
            // (transformers' `kv_sharing` rule; GEMMA.md §1.2).
            let kv_source = if (i as u32) < first_shared {
                i
            } else {
                (0..first_shared as usize)
                    .rev()
                    .find(|&j| layers[j].sliding == sliding)
                    .ok_or_else(|| {
                        bad(
                            "attention.shared_kv_layers",
                            format!(
                                "layer {i} shares the KV cache of an earlier {} layer, but none of layers 0..{first_shared} is one",
                                if sliding { "sliding" } else { "full" }
                            ),
                        )
                    })?
            };
            if kv_source != i {
                let src = &layers[kv_source];
                if src.head_dim != head_dim || src.n_kv_heads != n_kv_heads {
                    return Err(bad(
                        "attention.shared_kv_layers",
                        format!(
                            "layer {i} ({n_kv_heads}×{head_dim}) cannot read the cache of layer {kv_source} ({}×{})",
                            src.n_kv_heads, src.head_dim
                        ),
                    ));
                }
            }
            layers.push(LayerConfig {
                sliding,
                head_dim,
                n_kv_heads,
                ff_len: ff[i],
                rope_theta: if sliding { theta_local } else { theta_full },
                rope_scale: 1.0,
                rope_freq_factors: !sliding && has_rope_freqs,
                kv_source,
            });
        }
        Ok(ModelConfig {
            arch: Arch::Gemma4,
            n_layers,
            hidden,
            n_heads,
            vocab: vocab_rows(g)?,
            context_length,
            sliding_window,
            eps,
            attn_scale: 1.0,
            final_softcap: md
                .opt_f32(&key("final_logit_softcapping"))?
                .filter(|c| *c > 0.0),
            embed_scale: (hidden as f32).sqrt(),
            ple_dim,
            first_shared,
            layers,
        })
    }

    /// Whether any layer reads another layer's KV cache.
    pub fn has_kv_sharing(&self) -> bool {
        self.first_shared < self.n_layers
    }

    /// Head size of layer `l`.
    pub fn head_dim(&self, l: usize) -> u32 {
        self.layers[l].head_dim
    }
}

/// Keys both families store the same way, with llama.cpp's defaults where a file leaves one out.
pub(super) struct Shared {
    pub context_length: u32,
    pub sliding_window: u32,
    pub eps: f32,
    /// RoPE θ of full and of sliding layers.
    pub theta_full: f32,
    pub theta_local: f32,
}

impl Shared {
    pub(super) fn read(g: &Gguf, arch: &str) -> Result<Self> {
        let md = &g.metadata;
        let key = |k: &str| format!("{arch}.{k}");
        let s = Self {
            context_length: md.u32(&key("context_length"))?,
            sliding_window: md.opt_u32(&key("attention.sliding_window"))?.unwrap_or(0),
            eps: md
                .opt_f32(&key("attention.layer_norm_rms_epsilon"))?
                .unwrap_or(1e-6),
            theta_full: md.opt_f32(&key("rope.freq_base"))?.unwrap_or(1_000_000.0),
            theta_local: md.opt_f32(&key("rope.freq_base_swa"))?.unwrap_or(10_000.0),
        };
        if s.context_length == 0 {
            return Err(Error::Metadata {
                key: key("context_length"),
                problem: "is 0".into(),
            });
        }
        for (k, v) in [
            ("attention.layer_norm_rms_epsilon", s.eps),
            ("rope.freq_base", s.theta_full),
            ("rope.freq_base_swa", s.theta_local),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(Error::Metadata {
                    key: key(k),
                    problem: format!("{v} is not a positive number"),
                });
            }
        }
        Ok(s)
    }
}

/// Gemma 4's per-layer shape keys, which models and MTP assistants store alike.
pub(super) struct LayerKeys {
    /// KV heads per layer.
    pub kv_heads: Vec<u32>,
    /// MLP width per layer.
    pub ff: Vec<u32>,
    /// Head size of full and of sliding layers.
    pub head_full: u32,
    pub head_swa: u32,
}

impl LayerKeys {
    /// Reads them for `n_layers` layers under `arch`; a value length must equal its key length.
    pub(super) fn read(g: &Gguf, arch: &str, n_layers: u32) -> Result<Self> {
        let md = &g.metadata;
        let key = |k: &str| format!("{arch}.{k}");
        let head_full = md.u32(&key("attention.key_length"))?;
        let head_swa = md
            .opt_u32(&key("attention.key_length_swa"))?
            .unwrap_or(head_full);
        for (k, d) in [
            ("attention.value_length", head_full),
            ("attention.value_length_swa", head_swa),
        ] {
            if let Some(v) = md.opt_u32(&key(k))?.filter(|&v| v != d) {
                return Err(Error::Metadata {
                    key: key(k),
                    problem: format!("{v} differs from the key length {d}"),
                });
            }
        }
        Ok(Self {
            kv_heads: per_layer_u32(g, &key("attention.head_count_kv"), n_layers)?,
            ff: per_layer_u32(g, &key("feed_forward_length"), n_layers)?,
            head_full,
            head_swa,
        })
    }
}

/// Refuses a layer the kernels cannot run: a head size they are not built for, KV heads that
/// do not divide the query heads, an MLP of width 0.
pub(super) fn check_layer_shape(
    arch: &str,
    i: usize,
    sliding: bool,
    head_dim: u32,
    n_heads: u32,
    n_kv_heads: u32,
    ff: u32,
) -> Result<()> {
    let bad = |k: &str, problem: String| Error::Metadata {
        key: format!("{arch}.{k}"),
        problem,
    };
    if n_kv_heads == 0 || n_heads % n_kv_heads != 0 {
        return Err(bad(
            "attention.head_count_kv",
            format!("layer {i}: {n_kv_heads} KV heads do not divide {n_heads} query heads"),
        ));
    }
    if ff == 0 {
        return Err(bad("feed_forward_length", format!("layer {i} has width 0")));
    }
    if !HEAD_DIMS.contains(&head_dim) {
        return Err(bad(
            if sliding {
                "attention.key_length_swa"
            } else {
                "attention.key_length"
            },
            format!(
                "layer {i}: head size {head_dim} is not supported (the attention kernels are built for {HEAD_DIMS:?})"
            ),
        ));
    }
    check_heads_width(arch, n_heads, head_dim)?;
    Ok(())
}

/// Refuses a zero among the model dimensions `dims` (`(key, value)`, `block_count` first), and a
/// layer count above the file's tensor count (every layer has several tensors, so that header is
/// corrupt); checked before anything is sized per layer.
pub(super) fn check_dims(g: &Gguf, arch: &str, dims: &[(&str, u32)]) -> Result<()> {
    let bad = |k: &str, problem: String| Error::Metadata {
        key: format!("{arch}.{k}"),
        problem,
    };
    if let Some((k, _)) = dims.iter().find(|(_, v)| *v == 0) {
        return Err(bad(k, "is 0".into()));
    }
    let n_layers = dims[0].1;
    if n_layers as usize > g.tensors.len() {
        return Err(bad(
            "block_count",
            format!(
                "{n_layers} layers, but the file has only {} tensors",
                g.tensors.len()
            ),
        ));
    }
    Ok(())
}

/// Most tensor data a model may have: 1 TiB, far above any Gemma (27B in F32 is 108 GB).
/// Bounding it bounds what the loader plans per tensor from shapes alone: a header whose size
/// was unknown (so nothing bounded its tensors by the file) describing petabytes of matrices
/// made `preflight` list tens of millions of buffer parts (found by fuzz/gguf).
const MAX_TENSOR_DATA: u64 = 1 << 40;

/// Refuses a header whose tensors add up to more than [`MAX_TENSOR_DATA`].
pub(super) fn check_tensor_bytes(g: &Gguf) -> Result<()> {
    let total = g
        .tensors
        .iter()
        .fold(0u64, |s, t| s.saturating_add(t.n_bytes));
    if total > MAX_TENSOR_DATA {
        return Err(Error::Limit {
            what: "the model's tensor data".into(),
            needed: total,
            available: MAX_TENSOR_DATA,
            limit: "1 TiB, more than any GPU holds",
        });
    }
    Ok(())
}

/// Refuses a head count whose heads are wider than `u32` in all (a hostile header): the
/// loader sizes attention buffers in `u32` from `heads × head size` (preflight's KV-cache size
/// overflowed on one, found while triaging fuzz/gguf). KV heads divide the query heads, so this bounds
/// them too.
pub(super) fn check_heads_width(arch: &str, n_heads: u32, head_dim: u32) -> Result<()> {
    if n_heads.checked_mul(head_dim).is_none() {
        return Err(Error::Metadata {
            key: format!("{arch}.attention.head_count"),
            problem: format!("{n_heads} heads of size {head_dim} are not plausible"),
        });
    }
    Ok(())
}

/// The vocabulary size: the rows of the token embedding table.
pub(super) fn vocab_rows(g: &Gguf) -> Result<u32> {
    let t = g.tensor("token_embd.weight")?;
    u32::try_from(t.n_rows())
        .ok()
        .filter(|&v| v > 0)
        .ok_or_else(|| Error::Shape {
            tensor: t.name.clone(),
            expected: "[hidden, vocab] with 1..=4294967295 rows".into(),
            found: format!("{:?}", t.dims),
        })
}

/// A per-layer count stored either as one number for every layer or as an array of
/// `n_layers` numbers (Gemma 4's `feed_forward_length` with double-wide MLPs).
pub(super) fn per_layer_u32(g: &Gguf, key: &str, n_layers: u32) -> Result<Vec<u32>> {
    use crate::gguf::{Array, Value};
    let bad = |problem: String| Error::Metadata {
        key: key.into(),
        problem,
    };
    let v: Vec<u32> = match g.metadata.get(key) {
        Some(Value::Array(Array::U32(v))) => v.clone(),
        Some(Value::Array(Array::I32(v))) => v
            .iter()
            .map(|&x| u32::try_from(x).map_err(|_| bad(format!("negative entry {x}"))))
            .collect::<Result<_>>()?,
        Some(Value::Array(other)) => {
            return Err(bad(format!(
                "expected an array of u32, found {}",
                other.type_name()
            )))
        }
        _ => return Ok(vec![g.metadata.u32(key)?; n_layers as usize]),
    };
    if v.len() != n_layers as usize {
        return Err(bad(format!("{} entries for {n_layers} layers", v.len())));
    }
    Ok(v)
}

/// `true` where layer i uses sliding-window attention.
pub(super) fn sliding_pattern(g: &Gguf, key: &str, n_layers: u32) -> Result<Vec<bool>> {
    use crate::gguf::{Array, Value};
    match g.metadata.get(key) {
        None => Ok((0..n_layers).map(|i| i % 6 < 5).collect()),
        Some(Value::Array(Array::Bool(v))) => {
            if v.len() != n_layers as usize {
                return Err(Error::Metadata {
                    key: key.into(),
                    problem: format!("{} entries for {n_layers} layers", v.len()),
                });
            }
            Ok(v.clone())
        }
        Some(Value::Array(other)) => Err(Error::Metadata {
            key: key.into(),
            problem: format!("expected an array of bool, found {}", other.type_name()),
        }),
        Some(_) => {
            // A period n: layer i is sliding unless (i + 1) % n == 0.
            let n = g.metadata.u32(key)?.max(1);
            Ok((0..n_layers).map(|i| (i + 1) % n != 0).collect())
        }
    }
}
