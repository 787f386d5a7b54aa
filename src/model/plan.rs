//! What a model file asks for, known from its header alone: the configuration, every tensor
//! the forward pass uses with its shape and where it will live, the KV-cache and prefill sizes,
//! and the preflight that checks all of it against a device's limits before any weight moves.

use std::collections::HashMap;

use super::config::{Arch, ModelConfig};
use super::LoadOptions;
use crate::gguf::{Gguf, TensorInfo};
use crate::kernels::attention::{kv_bytes_per_elem, AttentionKernel, AttentionParams};
use crate::{Error, Result};

/// The group a tensor is reported under.
pub(super) fn tensor_group(name: &str) -> &'static str {
    let base = name.strip_suffix(".weight").unwrap_or(name);
    let leaf = base.rsplit('.').next().unwrap_or(base);
    match leaf {
        "token_embd" => "token embedding / LM head",
        "per_layer_token_embd" => "per-layer embedding table",
        "per_layer_model_proj" | "per_layer_proj_norm" | "inp_gate" | "proj" | "post_norm" => {
            "per-layer inputs"
        }
        "attn_q" | "attn_k" | "attn_v" | "attn_output" => "attention",
        "ffn_gate" | "ffn_up" | "ffn_down" => "MLP",
        _ => "norms and scalars",
    }
}

/// Where a tensor the model uses lives once it is loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Placement {
    /// Uploaded to the GPU.
    Gpu,
    /// A norm weight: one slot of the norm table, a single GPU buffer every norm reads
    /// (`super::weights::NormTable`).
    Norm,
    /// Read into host memory at load (RoPE factors, layer scalars).
    Host,
    /// Left in the file, read a row per token (Gemma 4's per-layer-embedding table).
    Mapped,
}

/// The tensors a model uses: expected `ne` shape and placement. Tensors of the file that are
/// not listed (the K/V projections of KV-shared layers) are never read.
pub(super) type TensorPlan = HashMap<String, (Vec<u64>, Placement)>;

/// Checks a model file without touching the GPU: architecture, hyper-parameters, and that
/// every tensor the forward pass needs is present with the right shape and a supported type.
/// Returns the configuration.
pub fn check(gguf: &Gguf) -> Result<ModelConfig> {
    plan(gguf).map(|(cfg, _)| cfg)
}

/// The configuration and the tensors the model uses.
pub(super) fn plan(gguf: &Gguf) -> Result<(ModelConfig, TensorPlan)> {
    let cfg = ModelConfig::from_gguf(gguf)?;
    let (h, v) = (cfg.hidden as u64, cfg.vocab as u64);
    let (n_layers, ple) = (cfg.n_layers as u64, cfg.ple_dim as u64);
    let mut wanted: TensorPlan = HashMap::new();
    let mut want = |name: String, shape: Vec<u64>, at: Placement| {
        wanted.insert(name, (shape, at));
    };
    want("token_embd.weight".into(), vec![h, v], Placement::Gpu);
    want("output_norm.weight".into(), vec![h], Placement::Norm);
    if let Some(d) = cfg.layers.iter().find(|l| l.rope_freq_factors) {
        want(
            "rope_freqs.weight".into(),
            vec![d.head_dim as u64 / 2],
            Placement::Host,
        );
    }
    if ple > 0 {
        want(
            "per_layer_token_embd.weight".into(),
            vec![n_layers * ple, v],
            Placement::Mapped,
        );
        want(
            "per_layer_model_proj.weight".into(),
            vec![h, n_layers * ple],
            Placement::Gpu,
        );
        want(
            "per_layer_proj_norm.weight".into(),
            vec![ple],
            Placement::Norm,
        );
    }
    for (l, lc) in cfg.layers.iter().enumerate() {
        let (d, nq, nkv, ff) = (
            lc.head_dim as u64,
            cfg.n_heads as u64,
            lc.n_kv_heads as u64,
            lc.ff_len as u64,
        );
        let mut w = |what: &str, shape: Vec<u64>| {
            let at = if shape.len() == 1 {
                Placement::Norm
            } else {
                Placement::Gpu
            };
            want(layer_tensor(l, what), shape, at)
        };
        w("attn_q", vec![h, nq * d]);
        w("attn_output", vec![nq * d, h]);
        w("ffn_gate", vec![h, ff]);
        w("ffn_up", vec![h, ff]);
        w("ffn_down", vec![ff, h]);
        for name in [
            "attn_norm",
            "post_attention_norm",
            "ffn_norm",
            "post_ffw_norm",
        ] {
            w(name, vec![h]);
        }
        w("attn_q_norm", vec![d]);
        if !lc.shares_kv(l) {
            w("attn_k", vec![h, nkv * d]);
            w("attn_v", vec![h, nkv * d]);
            w("attn_k_norm", vec![d]);
        }
        if ple > 0 {
            w("inp_gate", vec![h, ple]);
            w("proj", vec![ple, h]);
            w("post_norm", vec![h]);
        }
        // Every Gemma 4 layer scales its residual stream; llama.cpp's converter always writes it.
        if cfg.arch == Arch::Gemma4 {
            want(
                layer_tensor(l, "layer_output_scale"),
                vec![1],
                Placement::Host,
            );
        }
    }
    let mut names: Vec<&String> = wanted.keys().collect();
    names.sort();
    for name in names {
        check_tensor(gguf, name, &wanted[name].0)?;
    }
    Ok((cfg, wanted))
}

/// Refuses a tensor that is missing, of another shape than `expected` (`ne` order) or of a
/// type the kernels do not run, naming it.
pub(super) fn check_tensor(gguf: &Gguf, name: &str, expected: &[u64]) -> Result<()> {
    let info = gguf.tensor(name)?;
    if info.dims != expected {
        return Err(Error::Shape {
            tensor: info.name.clone(),
            expected: format!("{expected:?}"),
            found: format!("{:?}", info.dims),
        });
    }
    info.check_supported()
}

/// KV cache length and prefill chunk for `opts`. A context the model was not trained for is
/// refused rather than clamped, so the caller learns the real limit.
pub(super) fn sizes(cfg: &ModelConfig, opts: &LoadOptions) -> Result<(u32, u32)> {
    let max = cfg.context_length;
    let context = match opts.context {
        None => max.min(8192),
        Some(0) => {
            return Err(Error::InvalidArgument(
                "the context length must be at least 1 token".into(),
            ))
        }
        Some(c) if c > max => {
            return Err(Error::InvalidArgument(format!(
                "a context of {c} tokens is larger than the model's maximum of {max} \
                 ({}.context_length)",
                cfg.arch.name()
            )))
        }
        Some(c) => c,
    };
    Ok((context, opts.prefill_chunk.clamp(1, 1024).min(context)))
}

/// What loading a model will take, known from its header alone.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Preflight {
    pub architecture: String,
    pub layers: u32,
    pub vocab: u32,
    /// KV cache length the load will use.
    pub context_length: u32,
    /// Tensor bytes in the file.
    pub file_bytes: u64,
    /// Weight bytes the GPU will hold.
    pub weights: u64,
    pub kv_cache: u64,
    /// Largest single buffer among weights and KV cache.
    pub largest_buffer: u64,
    /// Tensor bytes left in the file and read a row per token.
    pub mapped: u64,
}

/// Checks, from the header only, that the model is supported and that every weight and KV
/// buffer fits the device's limits, and estimates what it will hold (activations, a few MiB,
/// are not counted). Run before downloading the weights, so that a model that cannot run fails
/// at once with the reason.
pub fn preflight(gguf: &Gguf, caps: &crate::gpu::Caps, opts: &LoadOptions) -> Result<Preflight> {
    let (cfg, wanted) = plan(gguf)?;
    check_against(gguf, &cfg, &wanted, caps, opts)
}

/// [`preflight`] for a plan already made (loading plans once and checks it here).
pub(super) fn check_against(
    gguf: &Gguf,
    cfg: &ModelConfig,
    wanted: &TensorPlan,
    caps: &crate::gpu::Caps,
    opts: &LoadOptions,
) -> Result<Preflight> {
    let (context, chunk) = sizes(cfg, opts)?;
    let limit = caps.max_binding.min(caps.max_buffer);
    let mut p = Preflight {
        architecture: gguf.architecture()?.to_string(),
        layers: cfg.n_layers,
        vocab: cfg.vocab,
        context_length: context,
        file_bytes: gguf.tensor_data_bytes(),
        ..Default::default()
    };
    let mut norms = 0u64;
    for info in gguf.tensors_by_offset() {
        match wanted.get(&info.name).map(|(_, at)| *at) {
            Some(Placement::Gpu) => {
                let parts = crate::quant::part_sizes(
                    &info.name,
                    info.ty,
                    info.dims[0] as u32,
                    info.dims[1] as u32,
                    limit,
                )?;
                p.weights += parts.iter().sum::<u64>();
                p.largest_buffer = p.largest_buffer.max(parts.into_iter().max().unwrap_or(0));
            }
            Some(Placement::Norm) => norms += super::weights::NormTable::slot_bytes(info),
            Some(Placement::Mapped) => p.mapped += info.n_bytes,
            Some(Placement::Host) | None => {}
        }
    }
    caps.check_storage_size("the norm table", norms)?;
    p.weights += norms;
    p.largest_buffer = p.largest_buffer.max(norms);
    let elem = kv_bytes_per_elem(opts.kv_f32);
    for (l, lc) in cfg.layers.iter().enumerate() {
        if cfg.layers[l].kv_source != l {
            continue;
        }
        let cap = attention_params(cfg, l, context, chunk, opts.kv_f32).cap as u64;
        let bytes = cap * (lc.n_kv_heads * lc.head_dim) as u64 * elem;
        caps.check_storage_size(&format!("the KV cache of layer {l} ({cap} tokens)"), bytes)?;
        p.kv_cache += 2 * bytes;
        p.largest_buffer = p.largest_buffer.max(bytes);
    }
    Ok(p)
}

/// GGUF name of a per-layer tensor.
pub(super) fn layer_tensor(l: usize, what: &str) -> String {
    format!("blk.{l}.{what}.weight")
}

/// Cache slots of KV-owning layer `l`. A full layer's cache holds the whole context; a sliding
/// layer's is a ring of `W + chunk − 1` slots (or the context, when that is fewer): each step
/// stores its K/V rows before attention reads every key from the cache, and row 0 of a
/// `chunk`-row step still needs the keys from `pos0 − W + 1` on
/// ([`AttentionParams::min_cap`]). KV-shared layers read these caches the same way.
pub(super) fn cache_slots(cfg: &ModelConfig, l: usize, context: u32, chunk: u32) -> u32 {
    let lc = &cfg.layers[l];
    let w = cfg.sliding_window;
    // With a context no longer than the window, a sliding layer sees every earlier key: it is
    // a full layer over `context` slots.
    if !lc.sliding || context <= w {
        return context;
    }
    AttentionParams::min_cap(w, chunk, context)
}

/// Attention shape of layer `l`: its own cache, or for a KV-shared layer the cache of the
/// layer it reads.
pub(super) fn attention_params(
    cfg: &ModelConfig,
    l: usize,
    context: u32,
    chunk: u32,
    kv_f32: bool,
) -> AttentionParams {
    let lc = &cfg.layers[l];
    let sliding = lc.sliding && context > cfg.sliding_window;
    AttentionParams {
        n_q_heads: cfg.n_heads,
        n_kv_heads: lc.n_kv_heads,
        head_dim: lc.head_dim,
        cap: cache_slots(cfg, lc.kv_source, context, chunk),
        window: if sliding { cfg.sliding_window } else { 0 },
        context,
        scale: cfg.attn_scale,
        max_tokens: chunk,
        split_keys: 0,
        kv_f32,
        kernel: AttentionKernel::Auto,
    }
}

/// `Error::BadTensorData` naming the first NaN or infinite value of a tensor.
pub(super) fn check_finite(info: &TensorInfo, values: &[f32]) -> Result<()> {
    match values.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(i) => Err(Error::BadTensorData {
            tensor: info.name.clone(),
            problem: format!(
                "element {i} of {} is {} (the file is corrupt)",
                values.len(),
                values[i]
            ),
        }),
    }
}

pub(super) fn tensor_error(info: &TensorInfo, e: Error) -> Error {
    match e {
        Error::InvalidArgument(m) => Error::Gguf(format!("tensor `{}`: {m}", info.name)),
        other => other,
    }
}
