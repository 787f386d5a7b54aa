//! Synthetic Gemma models: GGUF files with the real tensor names, shapes, types and metadata of
//! Gemma 3 (270M, 1B) and Gemma 4 (E2B, E4B), a working tokenizer, and seeded random weights.
//!
//! They exist for benchmarks and memory tests, which need full-size files of every quantization
//! mix without downloading gigabytes: an E2B file (≈3 GB with its per-layer-embedding table)
//! is written in seconds. Quantized blocks are generated directly — random quant values and a
//! chosen f16 scale per block — and streamed through [`crate::gguf::writer`], so memory use is
//! one chunk plus the header whatever the model size.
//!
//! [`SynthSource`] serves the same bytes without writing them: each chunk is generated when a
//! read touches it, so full-size models load in tests without gigabytes of disk.
//!
//! **Weights** (what [`Init`] encodes), chosen so that a forward pass through every layer stays
//! finite and gives distinct logits:
//! * every matrix has dequantized values of mean ≈ 0 and standard deviation `1/sqrt(ne[0])`
//!   (`ne[0]` is the fan-in of a projection), so a projection of a unit-RMS vector has unit-RMS
//!   outputs. The token embedding (`ne[0] = H`) is therefore `1/sqrt(H)`: after Gemma's
//!   `sqrt(H)` input scaling the residual stream starts at RMS 1, and as the tied LM head it
//!   gives logits of standard deviation ≈ 1 from a normalised final state. The per-layer
//!   embedding table uses `1/sqrt(P)` instead, because each layer's slice is `P` wide and is
//!   scaled by `sqrt(P)`;
//! * the per-block scale has a random sign (quantizers produce both signs too), which cancels
//!   the −0.5 mean of the asymmetric integer ranges (Q4_0's −8…7) across blocks, and ±20 %
//!   jitter; K-quants get random 6-bit sub-block scales, and Q4_K a `dmin` that centres its
//!   unsigned nibbles (`dmin·m = 7.5·d·sc`). Scales are kept out of the f16 subnormal range,
//!   which some GPUs flush to zero;
//! * norm weights are `1 ± 0.05` (uniform): Gemma 4 applies them without `+1`, and Gemma 3
//!   GGUF files already include the `+1`, so both mean a gain of about one. Gemma 4's attention
//!   has no `1/sqrt(d)` scale (it is 1.0, the trained q/k norm weights set the temperature), so
//!   there `attn_q_norm` and `attn_k_norm` are `d^-¼ ± 5 %`, which gives attention logits of
//!   standard deviation ≈ 1 instead of ≈ `sqrt(d)`;
//! * `layer_output_scale` is uniform in [0.5, 1.0]; it shrinks the residual stream after every
//!   Gemma 4 layer, so its RMS settles at a few units instead of growing with depth;
//! * `rope_freqs` is exactly what the converter writes: `n_rot/2` ones then `1e30`.
//!
//! **Quantization mixes** ([`SynthQuant`]): `q4_0` and `q8_0` quantize every matrix (the
//! embedding tables and `per_layer_model_proj` too) and keep 1-D tensors F32; `q4_k_m` follows
//! llama.cpp's Q4_K_M rules (GEMMA.md §4.5), including the shape fallbacks Gemma 3 270M/1B hit;
//! `f16` is what the converter writes with `--outtype f16`.
//!
//! **Layout and metadata** copy real files: Gemma 3 the 270M Q4_K_M file (key order and types,
//! tensor order); Gemma 4 what llama.cpp's `convert_hf_to_gguf.py` writes (checked against the
//! converted fixtures in `tests/data/gemma4`): its key order and types (`feed_forward_length` an
//! i32 array when MLP widths differ, `sliding_window_pattern` an array of bool, no
//! `tokenizer.ggml.pre`, every score −1000, `mask_token_id`), its tensor order, and KV-shared
//! layers that still carry `attn_k`/`attn_v`/`attn_k_norm` as Google's checkpoints do
//! ([`SynthSpec::shared_kv_tensors`]). No `tokenizer.chat_template` is written: the engine's
//! built-in template for the family applies.
//!
//! **Tokenizer**: exactly `V` pieces laid out like Gemma's (specials at their ids, newline and
//! space runs, HTML tags, byte tokens at 238–493, then BPE pieces, then filler pieces `▁x<id>`
//! that no merge reaches), with about a thousand merges (letter pairs, `▁`+letter, a list of
//! common words; for Gemma 4 also the newline and space runs) so that ordinary English
//! tokenizes into word pieces: `gemma4` files carry the merges, `gemma3` files SentencePiece
//! scores from which the same pieces are derived.
//!
//! Randomness is ChaCha8, keyed by the seed and the tensor name, one stream per 4 MiB chunk:
//! equal seeds give identical files, and every tensor's bytes are independent of the others.

use std::collections::HashMap;
use std::io::Write;

use half::f16;
use rand_chacha::rand_core::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::gguf::writer::{GgufWriter, TensorDataWriter};
use crate::gguf::{Array, GgmlType, Value};
use crate::{Error, Result};

mod source;
pub use source::SynthSource;

/// The model family: which GGUF architecture, metadata keys and tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Gemma3,
    Gemma4,
}

impl Family {
    /// `general.architecture`.
    pub fn arch(self) -> &'static str {
        match self {
            Family::Gemma3 => "gemma3",
            Family::Gemma4 => "gemma4",
        }
    }
}

/// A quantization mix.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SynthQuant {
    /// Every matrix Q4_0, 1-D tensors F32.
    Q4_0,
    /// Every matrix Q8_0, 1-D tensors F32.
    Q8_0,
    /// llama.cpp's Q4_K_M choices (GEMMA.md §4.5).
    Q4_K_M,
    /// Every matrix F16, 1-D tensors F32: what `convert_hf_to_gguf.py --outtype f16` writes.
    F16,
}

impl SynthQuant {
    pub const ALL: [SynthQuant; 4] = [
        SynthQuant::Q4_0,
        SynthQuant::Q4_K_M,
        SynthQuant::Q8_0,
        SynthQuant::F16,
    ];
    /// The names the CLI accepts, in [`SynthQuant::ALL`] order.
    pub const NAMES: [&'static str; 4] = ["q4_0", "q4_k_m", "q8_0", "f16"];

    pub fn name(self) -> &'static str {
        match self {
            SynthQuant::Q4_0 => "q4_0",
            SynthQuant::Q4_K_M => "q4_k_m",
            SynthQuant::Q8_0 => "q8_0",
            SynthQuant::F16 => "f16",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|q| q.name().eq_ignore_ascii_case(s))
    }

    /// `general.file_type` (llama.cpp's `LLAMA_FTYPE_MOSTLY_*`).
    pub fn file_type(self) -> u32 {
        match self {
            SynthQuant::Q4_0 => 2,
            SynthQuant::Q8_0 => 7,
            SynthQuant::Q4_K_M => 15,
            SynthQuant::F16 => 1,
        }
    }
}

/// The models `synth` can imitate at full size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SynthArch {
    Gemma4E2b,
    Gemma4E4b,
    Gemma3_270m,
    Gemma3_1b,
    Gemma4E2bAssistant,
    Gemma4E4bAssistant,
}

impl SynthArch {
    pub const ALL: [SynthArch; 6] = [
        SynthArch::Gemma4E2b,
        SynthArch::Gemma4E4b,
        SynthArch::Gemma3_270m,
        SynthArch::Gemma3_1b,
        SynthArch::Gemma4E2bAssistant,
        SynthArch::Gemma4E4bAssistant,
    ];
    /// The names the CLI accepts, in [`SynthArch::ALL`] order.
    pub const NAMES: [&'static str; 6] = [
        "gemma4-e2b",
        "gemma4-e4b",
        "gemma3-270m",
        "gemma3-1b",
        "gemma4-e2b-assistant",
        "gemma4-e4b-assistant",
    ];

    pub fn name(self) -> &'static str {
        Self::NAMES[Self::ALL.iter().position(|a| *a == self).unwrap_or(0)]
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|a| a.name().eq_ignore_ascii_case(s))
    }

    /// The full-size spec of this model.
    pub fn spec(self, quant: SynthQuant, seed: u64) -> SynthSpec {
        match self {
            SynthArch::Gemma4E2b => SynthSpec::gemma4_e2b(quant, seed),
            SynthArch::Gemma4E4b => SynthSpec::gemma4_e4b(quant, seed),
            SynthArch::Gemma3_270m => SynthSpec::gemma3_270m(quant, seed),
            SynthArch::Gemma3_1b => SynthSpec::gemma3_1b(quant, seed),
            SynthArch::Gemma4E2bAssistant => {
                SynthSpec::assistant_for(&SynthSpec::gemma4_e2b(quant, seed))
            }
            SynthArch::Gemma4E4bAssistant => {
                SynthSpec::assistant_for(&SynthSpec::gemma4_e4b(quant, seed))
            }
        }
    }
}

/// Everything that determines a synthetic file. The constructors give the real models
/// (GEMMA.md §1) and small variants of the same structure for tests
/// ([`SynthSpec::tiny_gemma4`], [`SynthSpec::tiny_gemma3`]); the fields are public so a test
/// can override any of them, e.g. the real depth with narrow widths (then
/// [`SynthSpec::validate`] checks the combination).
#[derive(Debug, Clone, PartialEq)]
pub struct SynthSpec {
    pub family: Family,
    /// `general.name`.
    pub name: String,
    pub n_layers: u32,
    /// `H`.
    pub hidden: u32,
    pub n_heads: u32,
    pub n_kv_heads: u32,
    /// Head size of sliding-window layers (Gemma 3: of every layer).
    pub head_dim: u32,
    /// Head size of full-attention layers (Gemma 4's `global_head_dim`; Gemma 3: `head_dim`).
    pub head_dim_full: u32,
    /// MLP width per layer.
    pub ff: Vec<u32>,
    /// Per layer: `true` = sliding-window attention.
    pub sliding: Vec<bool>,
    /// Gemma 4: the last this many layers reuse earlier layers' KV caches (0 = none).
    pub shared_kv_layers: u32,
    /// Whether KV-shared layers still carry `attn_k`, `attn_v` and `attn_k_norm`. Google's
    /// checkpoints have them and the converter keeps them (the E4B conversion's 720 tensors =
    /// 42 × 17 + 6); a model saved by transformers has none. Unused either way.
    pub shared_kv_tensors: bool,
    /// Gemma 4 per-layer-embedding width `P` (0 = no per-layer embeddings).
    pub ple_dim: u32,
    /// `V`: vocabulary size, rows of the embedding tables.
    pub vocab: u32,
    pub context_length: u32,
    pub sliding_window: u32,
    /// RoPE θ of full layers.
    pub rope_base: f32,
    /// RoPE θ of sliding layers (Gemma 3 files carry no key for it; llama.cpp uses 10 000).
    pub rope_base_swa: f32,
    /// Gemma 4 full layers rotate this fraction of the head (`rope_freqs` marks the rest).
    pub partial_rotary_full: f32,
    pub final_softcap: Option<f32>,
    pub eps: f32,
    pub quant: SynthQuant,
    pub seed: u64,
    /// A Gemma 4 MTP assistant (`gemma4-assistant`) for a target of this residual width:
    /// every layer reads the target's KV cache, and `nextn.pre_projection` /
    /// `nextn.post_projection` map between the two widths.
    pub assistant_of: Option<u32>,
}

fn every_nth_full(n_layers: u32, period: u32) -> Vec<bool> {
    (0..n_layers).map(|i| i % period != period - 1).collect()
}

impl SynthSpec {
    /// Gemma 4 E2B: 35 layers, H 1536, 8/1 heads, head 256 / 512, full every 5th layer, MLP 6144
    /// (12288 on the 20 KV-shared layers), PLE 256.
    pub fn gemma4_e2b(quant: SynthQuant, seed: u64) -> Self {
        let n_layers = 35;
        let shared = 20;
        SynthSpec {
            family: Family::Gemma4,
            name: "Gemma 4 E2B (synthetic)".into(),
            n_layers,
            hidden: 1536,
            n_heads: 8,
            n_kv_heads: 1,
            head_dim: 256,
            head_dim_full: 512,
            ff: (0..n_layers)
                .map(|i| if i < n_layers - shared { 6144 } else { 12288 })
                .collect(),
            sliding: every_nth_full(n_layers, 5),
            shared_kv_layers: shared,
            shared_kv_tensors: true,
            ple_dim: 256,
            vocab: 262_144,
            context_length: 131_072,
            sliding_window: 512,
            rope_base: 1_000_000.0,
            rope_base_swa: 10_000.0,
            partial_rotary_full: 0.25,
            final_softcap: Some(30.0),
            eps: 1e-6,
            quant,
            seed,
            assistant_of: None,
        }
    }

    /// The MTP assistant of `target` as llama.cpp's converter writes Google's
    /// `gemma-4-*-assistant` checkpoints: 4 layers (three sliding, one full) of queries only
    /// over the target's K/V (its KV heads and head sizes), no per-layer inputs, its own tied
    /// embedding, the target's window and RoPE. Widths: H 256, 8 query heads, MLP 2048, which
    /// makes the E4B assistant 80.6 M parameters, near Google's "~78 M" (the published configs
    /// were not at hand; the file is for speed and memory, not for outputs).
    pub fn assistant_for(target: &SynthSpec) -> Self {
        SynthSpec {
            name: format!("{} assistant", target.name),
            n_layers: 4,
            hidden: 256,
            n_heads: 8,
            ff: vec![2048; 4],
            sliding: vec![true, true, true, false],
            shared_kv_layers: 4,
            shared_kv_tensors: false,
            ple_dim: 0,
            assistant_of: Some(target.hidden),
            ..target.clone()
        }
    }

    /// `general.architecture`.
    pub fn arch(&self) -> &'static str {
        if self.assistant_of.is_some() {
            "gemma4-assistant"
        } else {
            self.family.arch()
        }
    }

    /// Gemma 4 E4B: 42 layers, H 2560, 8/2 heads, head 256 / 512, full every 6th layer, MLP
    /// 10240, 18 KV-shared layers, PLE 256.
    pub fn gemma4_e4b(quant: SynthQuant, seed: u64) -> Self {
        let n_layers = 42;
        SynthSpec {
            name: "Gemma 4 E4B (synthetic)".into(),
            n_layers,
            hidden: 2560,
            n_kv_heads: 2,
            ff: vec![10240; n_layers as usize],
            sliding: every_nth_full(n_layers, 6),
            shared_kv_layers: 18,
            ..Self::gemma4_e2b(quant, seed)
        }
    }

    /// Gemma 3 270M: 18 layers, H 640, MLP 2048, 4/1 heads of 256, full every 6th layer.
    pub fn gemma3_270m(quant: SynthQuant, seed: u64) -> Self {
        let n_layers = 18;
        SynthSpec {
            family: Family::Gemma3,
            name: "Gemma 3 270M (synthetic)".into(),
            n_layers,
            hidden: 640,
            n_heads: 4,
            n_kv_heads: 1,
            head_dim: 256,
            head_dim_full: 256,
            ff: vec![2048; n_layers as usize],
            sliding: every_nth_full(n_layers, 6),
            shared_kv_layers: 0,
            shared_kv_tensors: true,
            ple_dim: 0,
            vocab: 262_144,
            context_length: 32_768,
            sliding_window: 512,
            rope_base: 1_000_000.0,
            rope_base_swa: 10_000.0,
            partial_rotary_full: 1.0,
            final_softcap: None,
            eps: 1e-6,
            quant,
            seed,
            assistant_of: None,
        }
    }

    /// Gemma 3 1B: 26 layers, H 1152, MLP 6912, 4/1 heads of 256.
    pub fn gemma3_1b(quant: SynthQuant, seed: u64) -> Self {
        let n_layers = 26;
        SynthSpec {
            name: "Gemma 3 1B (synthetic)".into(),
            n_layers,
            hidden: 1152,
            ff: vec![6912; n_layers as usize],
            sliding: every_nth_full(n_layers, 6),
            ..Self::gemma3_270m(quant, seed)
        }
    }

    /// A small Gemma 4 with every structural feature of E2B: sliding and full layers with two
    /// head sizes (full every 3rd layer), KV sharing whose producers are the last sliding and
    /// the last full layer before it, double-wide MLPs on the shared layers, per-layer
    /// embeddings, `rope_freqs`, softcap. Dimensions are multiples of 256, like E2B's, so
    /// `q4_k_m` needs no fallback types. 6 layers, H 256, 2/1 heads of 128 / 256, V 2048:
    /// about 3 MB.
    pub fn tiny_gemma4(quant: SynthQuant, seed: u64) -> Self {
        let n_layers = 6;
        SynthSpec {
            name: "Gemma 4 tiny (synthetic)".into(),
            n_layers,
            hidden: 256,
            n_heads: 2,
            n_kv_heads: 1,
            head_dim: 128,
            head_dim_full: 256,
            ff: vec![256, 256, 256, 512, 512, 512],
            sliding: every_nth_full(n_layers, 3),
            shared_kv_layers: 3,
            ple_dim: 256,
            vocab: 2048,
            context_length: 2048,
            sliding_window: 128,
            ..Self::gemma4_e2b(quant, seed)
        }
    }

    /// A small Gemma 3 shaped like 270M: H 320 is not a multiple of 256, so `q4_k_m` takes the
    /// same fallbacks (Q5_0, Q8_0) as the real 270M and 1B files. 6 layers (the last full),
    /// 2/1 heads of 128, MLP 512, V 2048.
    pub fn tiny_gemma3(quant: SynthQuant, seed: u64) -> Self {
        let n_layers = 6;
        SynthSpec {
            name: "Gemma 3 tiny (synthetic)".into(),
            n_layers,
            hidden: 320,
            n_heads: 2,
            n_kv_heads: 1,
            head_dim: 128,
            head_dim_full: 128,
            ff: vec![512; n_layers as usize],
            sliding: every_nth_full(n_layers, 6),
            vocab: 2048,
            context_length: 2048,
            sliding_window: 128,
            ..Self::gemma3_270m(quant, seed)
        }
    }

    /// First layer that reuses another layer's KV cache (`n_layers` when none does).
    pub fn first_shared(&self) -> u32 {
        self.n_layers - self.shared_kv_layers
    }

    /// Head size of layer `l`.
    pub fn layer_head_dim(&self, l: usize) -> u32 {
        if self.sliding[l] {
            self.head_dim
        } else {
            self.head_dim_full
        }
    }

    /// Checks that the fields describe a model this module can write (and the engine load).
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidArgument(format!("synthetic model: {m}")));
        let l = self.n_layers as usize;
        if l == 0 || self.hidden == 0 || self.n_heads == 0 || self.n_kv_heads == 0 {
            return bad("a dimension is zero".into());
        }
        if self.ff.len() != l || self.sliding.len() != l {
            return bad(format!(
                "{l} layers but {} MLP widths and {} layer types",
                self.ff.len(),
                self.sliding.len()
            ));
        }
        if self.n_heads % self.n_kv_heads != 0 {
            return bad(format!(
                "{} KV heads do not divide {} query heads",
                self.n_kv_heads, self.n_heads
            ));
        }
        if (self.vocab as usize) < MIN_VOCAB {
            return bad(format!(
                "vocabulary {} is below the {MIN_VOCAB} a Gemma-style vocabulary needs",
                self.vocab
            ));
        }
        if self.family == Family::Gemma3 {
            if self.head_dim != self.head_dim_full
                || self.shared_kv_layers != 0
                || self.ple_dim != 0
            {
                return bad(
                    "Gemma 3 has one head size, no KV sharing and no per-layer embeddings".into(),
                );
            }
        } else if self.assistant_of.is_some() {
            if self.shared_kv_layers != self.n_layers || self.ple_dim != 0 {
                return bad(
                    "an assistant reads the target's KV cache in every layer and has no per-layer embeddings".into(),
                );
            }
            return Ok(());
        } else if self.shared_kv_layers >= self.n_layers {
            return bad(format!(
                "{} shared KV layers leave none to compute K/V",
                self.shared_kv_layers
            ));
        }
        let first_shared = self.first_shared() as usize;
        for i in first_shared..l {
            if !(0..first_shared).any(|j| self.sliding[j] == self.sliding[i]) {
                return bad(format!(
                    "shared layer {i} has no earlier layer of its type to take K/V from"
                ));
            }
        }
        Ok(())
    }

    /// The tensors in file order, with their types under this spec's quantization mix.
    ///
    /// Gemma 3 follows the real 270M file (globals, then each block's tensors by GGUF name).
    /// Gemma 4 follows llama.cpp's converter, which writes tensors in the checkpoint's
    /// (Hugging Face name) order after its generated `rope_freqs`: `token_embd`,
    /// `per_layer_token_embd`, the layers, `output_norm`, `per_layer_model_proj`,
    /// `per_layer_proj_norm`; inside a layer `input_layernorm`, `layer_scalar`, `mlp.*`,
    /// `per_layer_*`, the post/pre norms, then `self_attn.*`.
    pub fn tensors(&self) -> Result<Vec<SynthTensor>> {
        self.validate()?;
        let h = self.hidden as u64;
        let l = self.n_layers as u64;
        let p = self.ple_dim as u64;
        let v = self.vocab as u64;
        let g4 = self.family == Family::Gemma4;
        let ple = g4 && p > 0;
        let norm = |name: String, n: u64| SynthTensor {
            name,
            dims: vec![n],
            ty: GgmlType::F32,
            init: Init::Around {
                center: 1.0,
                noise: 0.05,
            },
        };
        let n_attn_v = (0..self.n_layers)
            .filter(|&i| self.shared_kv_tensors || i < self.first_shared())
            .count();
        let mut layers: Vec<Vec<SynthTensor>> = Vec::new();
        for i in 0..self.n_layers as usize {
            let d = self.layer_head_dim(i) as u64;
            let q = self.n_heads as u64 * d;
            let kv = self.n_kv_heads as u64 * d;
            let ff = self.ff[i] as u64;
            let blk = |s: &str| format!("blk.{i}.{s}.weight");
            let qk_norm = |name: String| {
                let mut t = norm(name, d);
                if g4 {
                    // Attention scale 1.0: the norm gains set the logit temperature.
                    let c = (d as f32).powf(-0.25);
                    t.init = Init::Around {
                        center: c,
                        noise: 0.05 * c,
                    };
                }
                t
            };
            let has_kv = self.shared_kv_tensors || (i as u32) < self.first_shared();
            let attn_k = has_kv.then(|| self.matrix(&blk("attn_k"), [h, kv], Role::Other, 0, 1));
            let attn_k_norm = has_kv.then(|| qk_norm(blk("attn_k_norm")));
            // One attn_v per layer that has one, so the counter is the layer index.
            let attn_v =
                has_kv.then(|| self.matrix(&blk("attn_v"), [h, kv], Role::MoreBits, i, n_attn_v));
            let attn_q = self.matrix(&blk("attn_q"), [h, q], Role::Other, 0, 1);
            let attn_q_norm = qk_norm(blk("attn_q_norm"));
            let attn_output = self.matrix(&blk("attn_output"), [q, h], Role::Other, 0, 1);
            let n = self.n_layers as usize;
            let ffn_down = self.matrix(&blk("ffn_down"), [ff, h], Role::MoreBits, i, n);
            let ffn_gate = self.matrix(&blk("ffn_gate"), [h, ff], Role::Other, 0, 1);
            let ffn_up = self.matrix(&blk("ffn_up"), [h, ff], Role::Other, 0, 1);
            let mut t: Vec<Option<SynthTensor>> = if g4 {
                vec![
                    Some(norm(blk("attn_norm"), h)),
                    Some(SynthTensor {
                        name: blk("layer_output_scale"),
                        dims: vec![1],
                        ty: GgmlType::F32,
                        init: Init::Uniform { lo: 0.5, hi: 1.0 },
                    }),
                    Some(ffn_down),
                    Some(ffn_gate),
                    Some(ffn_up),
                    ple.then(|| self.matrix(&blk("inp_gate"), [h, p], Role::Other, 0, 1)),
                    ple.then(|| self.matrix(&blk("proj"), [p, h], Role::Other, 0, 1)),
                    Some(norm(blk("post_attention_norm"), h)),
                    Some(norm(blk("post_ffw_norm"), h)),
                    ple.then(|| norm(blk("post_norm"), h)),
                    Some(norm(blk("ffn_norm"), h)),
                    attn_k_norm,
                    attn_k,
                    Some(attn_output),
                    Some(attn_q_norm),
                    Some(attn_q),
                    attn_v,
                ]
            } else {
                vec![
                    attn_k,
                    attn_k_norm,
                    Some(norm(blk("attn_norm"), h)),
                    Some(attn_output),
                    Some(attn_q),
                    Some(attn_q_norm),
                    attn_v,
                    Some(ffn_down),
                    Some(ffn_gate),
                    Some(norm(blk("ffn_norm"), h)),
                    Some(ffn_up),
                    Some(norm(blk("post_attention_norm"), h)),
                    Some(norm(blk("post_ffw_norm"), h)),
                ]
            };
            layers.push(t.drain(..).flatten().collect());
        }
        let token_embd = self.matrix("token_embd.weight", [h, v], Role::Embedding, 0, 1);
        let mut out = Vec::new();
        if g4 {
            let half = self.head_dim_full as u64 / 2;
            let rotated = (self.head_dim_full as f32 * self.partial_rotary_full / 2.0) as u64;
            out.push(SynthTensor {
                name: "rope_freqs.weight".into(),
                dims: vec![half],
                ty: GgmlType::F32,
                init: Init::RopeFreqs {
                    ones: rotated.min(half),
                },
            });
            out.push(token_embd);
            if ple {
                let mut t = self.matrix(
                    "per_layer_token_embd.weight",
                    [l * p, v],
                    Role::Embedding,
                    0,
                    1,
                );
                // Each layer's slice is P wide and scaled by sqrt(P) (GEMMA.md §2.4).
                t.init = Init::Random {
                    std: 1.0 / (p as f32).sqrt(),
                };
                out.push(t);
            }
            out.extend(layers.into_iter().flatten());
            out.push(norm("output_norm.weight".into(), h));
            if let Some(hb) = self.assistant_of {
                let hb = hb as u64;
                for (name, dims) in [
                    ("nextn.post_projection.weight", [h, hb]),
                    ("nextn.pre_projection.weight", [2 * hb, h]),
                ] {
                    out.push(self.matrix(name, dims, Role::Other, 0, 1));
                }
            }
            if ple {
                out.push(self.matrix(
                    "per_layer_model_proj.weight",
                    [h, l * p],
                    Role::PleProj,
                    0,
                    1,
                ));
                out.push(norm("per_layer_proj_norm.weight".into(), p));
            }
        } else {
            out.push(norm("output_norm.weight".into(), h));
            out.push(token_embd);
            out.extend(layers.into_iter().flatten());
        }
        Ok(out)
    }

    /// A 2-D weight `[ne0, ne1]` of the given role, typed by the quantization mix; `i` of `n`
    /// is its place among the tensors of its kind (for [`use_more_bits`]).
    fn matrix(&self, name: &str, dims: [u64; 2], role: Role, i: usize, n: usize) -> SynthTensor {
        SynthTensor {
            name: name.to_string(),
            dims: dims.to_vec(),
            ty: self.matrix_type(role, dims[0], i, n),
            init: Init::Random {
                std: 1.0 / (dims[0] as f32).sqrt(),
            },
        }
    }

    /// llama.cpp's choice for a matrix (GEMMA.md §4.5; `llama_tensor_get_type`).
    fn matrix_type(&self, role: Role, ne0: u64, i: usize, n: usize) -> GgmlType {
        match self.quant {
            SynthQuant::Q4_0 => GgmlType::Q4_0,
            SynthQuant::Q8_0 => GgmlType::Q8_0,
            SynthQuant::F16 => GgmlType::F16,
            SynthQuant::Q4_K_M => {
                let fits = ne0 % 256 == 0;
                match role {
                    // Tied embedding = output tensor: Q6_K, or Q8_0 when rows are not whole
                    // super-blocks. The per-layer table matches the same name rule.
                    Role::Embedding => {
                        if fits {
                            GgmlType::Q6K
                        } else {
                            GgmlType::Q8_0
                        }
                    }
                    // Excluded from quantization ("not too big"): the converter's F16.
                    Role::PleProj => GgmlType::F16,
                    // attn_v and ffn_down: counted separately over the tensors of each kind.
                    Role::MoreBits if use_more_bits(i, n) => {
                        if fits {
                            GgmlType::Q6K
                        } else {
                            GgmlType::Q8_0
                        }
                    }
                    _ => {
                        if fits {
                            GgmlType::Q4K
                        } else {
                            GgmlType::Q5_0
                        }
                    }
                }
            }
        }
    }

    /// The file's metadata: architecture keys as llama.cpp's converter writes them, then the
    /// tokenizer, then the quantization keys.
    pub fn metadata(&self) -> Result<Vec<(String, Value)>> {
        self.validate()?;
        let mut w = GgufWriter::new();
        self.put_metadata(&mut w)?;
        Ok(w.metadata().to_vec())
    }

    fn put_metadata(&self, w: &mut GgufWriter) -> Result<()> {
        let a = self.arch();
        let k = |s: &str| format!("{a}.{s}");
        w.str("general.architecture", a)
            .str("general.type", "model")
            .str("general.name", self.name.clone())
            .str("general.size_label", size_label(self.n_params()?));
        let file_type = self.quant.file_type();
        match self.family {
            Family::Gemma3 => {
                // Key order and types of the Gemma 3 270M Q4_K_M file.
                w.u32(k("context_length"), self.context_length)
                    .u32(k("embedding_length"), self.hidden)
                    .u32(k("block_count"), self.n_layers)
                    .u32(k("feed_forward_length"), self.ff[0])
                    .u32(k("attention.head_count"), self.n_heads)
                    .f32(k("attention.layer_norm_rms_epsilon"), self.eps)
                    .u32(k("attention.key_length"), self.head_dim)
                    .u32(k("attention.value_length"), self.head_dim)
                    .f32(k("rope.freq_base"), self.rope_base)
                    .u32(k("attention.sliding_window"), self.sliding_window)
                    .u32(k("attention.head_count_kv"), self.n_kv_heads);
            }
            Family::Gemma4 => {
                // Key order and types of llama.cpp's converter (`Gemma4Model`), as in the
                // converted fixtures; llama-quantize rewrites `general.file_type` in place.
                w.u32(k("block_count"), self.n_layers)
                    .u32(k("context_length"), self.context_length)
                    .u32(k("embedding_length"), self.hidden);
                // A number, or (double-wide MLPs) one per layer: gguf-py writes a list of
                // Python ints as an i32 array.
                if self.ff.iter().all(|&f| f == self.ff[0]) {
                    w.u32(k("feed_forward_length"), self.ff[0]);
                } else {
                    w.array(
                        k("feed_forward_length"),
                        Array::I32(self.ff.iter().map(|&f| f as i32).collect()),
                    );
                }
                w.u32(k("attention.head_count"), self.n_heads)
                    .u32(k("attention.head_count_kv"), self.n_kv_heads)
                    .f32(k("rope.freq_base"), self.rope_base)
                    .f32(k("rope.freq_base_swa"), self.rope_base_swa)
                    .f32(k("attention.layer_norm_rms_epsilon"), self.eps)
                    .u32(k("attention.key_length"), self.head_dim_full)
                    .u32(k("attention.value_length"), self.head_dim_full)
                    .u32("general.file_type", file_type);
                if let Some(c) = self.final_softcap {
                    w.f32(k("final_logit_softcapping"), c);
                }
                w.u32(k("attention.sliding_window"), self.sliding_window)
                    .u32(k("attention.shared_kv_layers"), self.shared_kv_layers)
                    .u32(k("embedding_length_per_layer_input"), self.ple_dim)
                    .array(
                        k("attention.sliding_window_pattern"),
                        Array::Bool(self.sliding.clone()),
                    )
                    .u32(k("attention.key_length_swa"), self.head_dim)
                    .u32(k("attention.value_length_swa"), self.head_dim)
                    .u32(k("rope.dimension_count"), self.head_dim_full)
                    .u32(k("rope.dimension_count_swa"), self.head_dim)
                    .u32("general.quantization_version", 2);
                if let Some(hb) = self.assistant_of {
                    w.u32(k("embedding_length_out"), hb)
                        .u32(k("nextn_predict_layers"), self.n_layers);
                }
            }
        }
        let vocab = build_vocab(self.family, self.vocab as usize)?;
        match self.family {
            Family::Gemma3 => {
                // SentencePiece model with scores (the 270M file).
                w.str("tokenizer.ggml.model", "llama")
                    .str("tokenizer.ggml.pre", "default")
                    .array("tokenizer.ggml.tokens", Array::String(vocab.tokens))
                    .array("tokenizer.ggml.scores", Array::F32(vocab.scores))
                    .array("tokenizer.ggml.token_type", Array::I32(vocab.types));
            }
            Family::Gemma4 => {
                // BPE with merges; the converter writes no `pre` and every score as −1000.
                let n = vocab.tokens.len();
                w.str("tokenizer.ggml.model", "gemma4")
                    .array("tokenizer.ggml.tokens", Array::String(vocab.tokens))
                    .array("tokenizer.ggml.scores", Array::F32(vec![-1000.0; n]))
                    .array("tokenizer.ggml.token_type", Array::I32(vocab.types))
                    .array("tokenizer.ggml.merges", Array::String(vocab.merges));
            }
        }
        w.u32("tokenizer.ggml.bos_token_id", 2)
            .u32("tokenizer.ggml.eos_token_id", 1)
            .u32("tokenizer.ggml.unknown_token_id", 3)
            .u32("tokenizer.ggml.padding_token_id", 0);
        if self.family == Family::Gemma4 {
            w.u32("tokenizer.ggml.mask_token_id", 4);
        }
        w.bool("tokenizer.ggml.add_bos_token", true)
            .bool("tokenizer.ggml.add_sep_token", false)
            .bool("tokenizer.ggml.add_eos_token", false)
            .bool("tokenizer.ggml.add_space_prefix", false);
        if self.family == Family::Gemma3 {
            w.u32("general.quantization_version", 2)
                .u32("general.file_type", file_type);
        }
        Ok(())
    }

    /// Number of weights (elements of every tensor).
    pub fn n_params(&self) -> Result<u64> {
        Ok(self.tensors()?.iter().map(|t| t.n_elements()).sum())
    }

    /// The file's layout: metadata and tensor infos with offsets (no data).
    pub fn plan(&self) -> Result<GgufWriter> {
        let tensors = self.tensors()?;
        self.plan_for(&tensors)
    }

    fn plan_for(&self, tensors: &[SynthTensor]) -> Result<GgufWriter> {
        let mut w = GgufWriter::new();
        self.put_metadata(&mut w)?;
        for t in tensors {
            w.tensor(t.name.clone(), &t.dims, t.ty)?;
        }
        Ok(w)
    }

    /// Bytes of tensor data (without alignment padding), from the shapes alone: no vocabulary
    /// is built, so this is instant even for full-size specs.
    pub fn tensor_data_bytes(&self) -> Result<u64> {
        Ok(self.tensors()?.iter().map(|t| t.n_bytes()).sum())
    }
}

/// What a matrix is, for the Q4_K_M type rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// `token_embd` (the tied output) and `per_layer_token_embd`.
    Embedding,
    /// `per_layer_model_proj`, never quantized.
    PleProj,
    /// `attn_v` and `ffn_down`: Q6_K where [`use_more_bits`].
    MoreBits,
    Other,
}

/// `general.size_label` as gguf-py writes it (`model_weight_count_rounded_notation`): at
/// least two significant digits, `K`/`M`/`B`/`T`.
pub fn size_label(n: u64) -> String {
    let n = n as f64;
    let (v, suffix) = if n > 1e12 {
        (n * 1e-12, "T")
    } else if n > 1e9 {
        (n * 1e-9, "B")
    } else if n > 1e6 {
        (n * 1e-6, "M")
    } else {
        (n * 1e-3, "K")
    };
    let digits = format!("{}", v.round() as u64)
        .trim_start_matches('0')
        .len();
    format!("{v:.*}{suffix}", 2usize.saturating_sub(digits))
}

/// llama.cpp's `use_more_bits`: the first and last eighth of the layers, and every third one in
/// between, get the bigger type.
pub fn use_more_bits(i: usize, n: usize) -> bool {
    // The last test runs only when i >= n/8, so the subtraction cannot underflow.
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

/// One tensor of a synthetic file.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthTensor {
    pub name: String,
    /// `ne[0]` first.
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    pub init: Init,
}

impl SynthTensor {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }

    pub fn n_bytes(&self) -> u64 {
        self.n_elements() / self.ty.block_elems() * self.ty.block_bytes()
    }
}

/// How a tensor's values are drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// Mean ≈ 0, standard deviation ≈ `std` after dequantization (uniform for float types,
    /// uniform quant values for block types).
    Random { std: f32 },
    /// `center` plus uniform noise in `±noise`.
    Around { center: f32, noise: f32 },
    /// Uniform in `[lo, hi]`.
    Uniform { lo: f32, hi: f32 },
    /// Gemma 4 `rope_freqs`: `ones` entries of 1.0, then 1e30 (dimensions that do not rotate).
    RopeFreqs { ones: u64 },
}

/// Writes `spec` as a GGUF file to `out` (wrap files in a `BufWriter`). Returns the bytes
/// written.
pub fn write<W: Write>(spec: &SynthSpec, out: W) -> Result<u64> {
    write_with_progress(spec, out, |_, _| {})
}

/// [`write()`], calling `progress(bytes written, file size)` after every chunk.
pub fn write_with_progress<W: Write>(
    spec: &SynthSpec,
    out: W,
    mut progress: impl FnMut(u64, u64),
) -> Result<u64> {
    let tensors = spec.tensors()?;
    let plan = spec.plan_for(&tensors)?;
    let mut w = plan.start(out)?;
    let total = w.position() + plan.data_bytes();
    progress(w.position(), total);
    for t in &tensors {
        write_tensor(t, spec.seed, &mut w, &mut progress, total)?;
    }
    let n = w.position();
    w.finish()?;
    Ok(n)
}

/// Bytes per generated chunk (rounded down to whole blocks); each chunk is one ChaCha stream.
const CHUNK_BYTES: usize = 4 << 20;

/// The 32-byte ChaCha key of one tensor: the seed and an FNV-1a hash of the name.
fn tensor_key(seed: u64, name: &str) -> [u8; 32] {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&h.to_le_bytes());
    key[16..24].copy_from_slice(b"gemma-sy");
    key[24..].copy_from_slice(&(name.len() as u64).to_le_bytes());
    key
}

fn rng_stream(key: [u8; 32], stream: u64) -> ChaCha8Rng {
    let mut r = ChaCha8Rng::from_seed(key);
    r.set_stream(stream);
    r
}

/// Uniform in [0, 1).
fn unit(r: &mut ChaCha8Rng) -> f32 {
    (r.next_u32() >> 8) as f32 * (1.0 / (1u32 << 24) as f32)
}

fn write_tensor<W: Write>(
    t: &SynthTensor,
    seed: u64,
    w: &mut TensorDataWriter<'_, W>,
    progress: &mut impl FnMut(u64, u64),
    total: u64,
) -> Result<()> {
    let stream = TensorStream::new(t, seed)?;
    let mut buf = vec![0u8; stream.chunk_len(0)];
    for chunk in 0..stream.n_chunks() {
        let bytes = &mut buf[..stream.chunk_len(chunk)];
        stream.fill_chunk(chunk, bytes);
        w.write(bytes)?;
        progress(w.position(), total);
    }
    Ok(())
}

/// One tensor's bytes as a run of chunks, each generated from its own ChaCha stream, so any
/// chunk can be made without the ones before it: [`write()`] makes them in order, and
/// [`SynthSource`] makes the ones a read touches.
struct TensorStream {
    key: [u8; 32],
    gen: Generator,
    block_elems: u64,
    block_bytes: u64,
    /// Blocks in the tensor.
    blocks: u64,
    /// Blocks per chunk: [`CHUNK_BYTES`] rounded down to whole blocks.
    per_chunk: u64,
}

impl TensorStream {
    fn new(t: &SynthTensor, seed: u64) -> Result<Self> {
        let key = tensor_key(seed, &t.name);
        let block_bytes = t.ty.block_bytes();
        Ok(Self {
            key,
            gen: Generator::new(t, &mut rng_stream(key, u64::MAX))?,
            block_elems: t.ty.block_elems(),
            block_bytes,
            blocks: t.n_elements() / t.ty.block_elems(),
            per_chunk: (CHUNK_BYTES as u64 / block_bytes).max(1),
        })
    }

    fn n_chunks(&self) -> u64 {
        self.blocks.div_ceil(self.per_chunk)
    }

    /// Bytes of a full chunk (every chunk but the last).
    fn chunk_bytes(&self) -> u64 {
        self.per_chunk * self.block_bytes
    }

    /// Bytes of chunk `i` (0 past the end).
    fn chunk_len(&self, i: u64) -> usize {
        let first = i.saturating_mul(self.per_chunk).min(self.blocks);
        (self.per_chunk.min(self.blocks - first) * self.block_bytes) as usize
    }

    /// Generates chunk `i` into `buf` (exactly [`TensorStream::chunk_len`] bytes).
    fn fill_chunk(&self, i: u64, buf: &mut [u8]) {
        debug_assert_eq!(buf.len(), self.chunk_len(i));
        let mut r = rng_stream(self.key, i);
        self.gen
            .fill(&mut r, buf, i * self.per_chunk * self.block_elems);
    }
}

/// Per-block header fields (scales) are taken from a table of 256 variants, indexed by a random
/// byte of the block that the header then overwrites, so a block's scale is independent of its
/// quant values.
struct QuantGen {
    block_bytes: usize,
    /// Offset and length of the header within a block.
    at: usize,
    len: usize,
    table: Vec<u8>,
}

enum Generator {
    Quant(QuantGen),
    F32(Init),
    /// 2-D float weights: uniform in ±`half_width`.
    Float {
        half_width: f32,
        f16: bool,
    },
}

/// RMS of the integer values `lo..=hi`, each equally likely.
fn uniform_int_rms(lo: i32, hi: i32) -> f32 {
    let n = (hi - lo + 1) as f64;
    ((lo..=hi).map(|v| (v as f64) * (v as f64)).sum::<f64>() / n).sqrt() as f32
}

/// Smallest f16 scale used: twice the smallest normal, so no scale is subnormal.
const MIN_SCALE: f32 = 1.2e-4;

/// Sub-block scale range for a K-quant: as large as possible up to `max`, but small enough that
/// the super-block scale `d` stays at least [`MIN_SCALE`].
fn sub_scale_range(std: f32, q_rms: f32, max: i32) -> (i32, i32) {
    let hi = ((std / (q_rms * MIN_SCALE)).floor() as i32).clamp(2, max);
    ((hi + 1) / 2, hi)
}

/// `±(0.8 … 1.2)`, normalised afterwards so the mean square over the table is exactly 1.
fn jitters(r: &mut ChaCha8Rng, signed: bool) -> Vec<f32> {
    let mut j: Vec<f32> = (0..256)
        .map(|_| {
            let m = 0.8 + 0.4 * unit(r);
            if signed && r.next_u32() & 1 == 1 {
                -m
            } else {
                m
            }
        })
        .collect();
    let ms = j.iter().map(|x| x * x).sum::<f32>() / 256.0;
    for x in &mut j {
        *x /= ms.sqrt();
    }
    j
}

fn f16_bytes(x: f32) -> [u8; 2] {
    f16::from_f32(x).to_bits().to_le_bytes()
}

/// Packs 8 six-bit scales and mins the way Q4_K/Q5_K store them (inverse of `k4_scale_min`).
fn pack_k4_scales(sc: &[u8; 8], mn: &[u8; 8]) -> [u8; 12] {
    let mut s = [0u8; 12];
    for j in 0..4 {
        s[j] = sc[j] & 63;
        s[j + 4] = mn[j] & 63;
    }
    for j in 4..8 {
        s[j + 4] = (sc[j] & 0xF) | ((mn[j] & 0xF) << 4);
        s[j - 4] |= (sc[j] >> 4) << 6;
        s[j] |= (mn[j] >> 4) << 6;
    }
    s
}

impl Generator {
    fn new(t: &SynthTensor, r: &mut ChaCha8Rng) -> Result<Self> {
        let std = match t.init {
            Init::Random { std } => std,
            init if t.ty == GgmlType::F32 => return Ok(Generator::F32(init)),
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "synthetic tensor `{}`: {:?} needs type F32, not {}",
                    t.name,
                    t.init,
                    t.ty.name()
                )))
            }
        };
        let simple = |bb: usize, q_rms: f32, r: &mut ChaCha8Rng| {
            let d = std / q_rms;
            let table = jitters(r, true)
                .into_iter()
                .flat_map(|j| f16_bytes(d * j))
                .collect();
            Generator::Quant(QuantGen {
                block_bytes: bb,
                at: 0,
                len: 2,
                table,
            })
        };
        Ok(match t.ty {
            GgmlType::F32 | GgmlType::F16 => Generator::Float {
                half_width: std * 3f32.sqrt(),
                f16: t.ty == GgmlType::F16,
            },
            // d·(q − 8), q a random nibble.
            GgmlType::Q4_0 => simple(18, uniform_int_rms(-8, 7), r),
            // d·(q − 16), q five random bits.
            GgmlType::Q5_0 => simple(22, uniform_int_rms(-16, 15), r),
            // d·q, q a random i8.
            GgmlType::Q8_0 => simple(34, uniform_int_rms(-128, 127), r),
            GgmlType::Q4K => {
                // y = d·sc·q − dmin·mn with mn = sc and dmin = 7.5·d: y = d·sc·(q − 7.5).
                let q_rms = 21.25f32.sqrt(); // RMS of q − 7.5 over q = 0…15
                let (lo, hi) = sub_scale_range(std, q_rms, 63);
                let jit = jitters(r, false);
                let subs: Vec<[u8; 8]> = (0..256)
                    .map(|_| {
                        std::array::from_fn(|_| {
                            (lo + (r.next_u32() % (hi - lo + 1) as u32) as i32) as u8
                        })
                    })
                    .collect();
                let ms = subs
                    .iter()
                    .flatten()
                    .map(|&c| (c as f32).powi(2))
                    .sum::<f32>()
                    / (256.0 * 8.0);
                let d = std / (q_rms * ms.sqrt());
                let mut table = Vec::with_capacity(256 * 16);
                for (j, sc) in jit.iter().zip(&subs) {
                    // Clearing 4 mantissa bits makes 7.5·d exact in f16.
                    let dh = f16::from_bits(f16::from_f32(d * j).to_bits() & !0xF);
                    table.extend(dh.to_bits().to_le_bytes());
                    table.extend(f16_bytes(7.5 * dh.to_f32()));
                    table.extend(pack_k4_scales(sc, sc));
                }
                Generator::Quant(QuantGen {
                    block_bytes: 144,
                    at: 0,
                    len: 16,
                    table,
                })
            }
            GgmlType::Q6K => {
                // y = d·sc·(q − 32), sc a signed 8-bit scale per 16 values.
                let q_rms = uniform_int_rms(-32, 31);
                let (lo, hi) = sub_scale_range(std, q_rms, 127);
                let jit = jitters(r, false);
                let subs: Vec<[i8; 16]> = (0..256)
                    .map(|_| {
                        std::array::from_fn(|_| {
                            let m = lo + (r.next_u32() % (hi - lo + 1) as u32) as i32;
                            (if r.next_u32() & 1 == 1 { -m } else { m }) as i8
                        })
                    })
                    .collect();
                let ms = subs
                    .iter()
                    .flatten()
                    .map(|&c| (c as f32).powi(2))
                    .sum::<f32>()
                    / (256.0 * 16.0);
                let d = std / (q_rms * ms.sqrt());
                let mut table = Vec::with_capacity(256 * 18);
                for (j, sc) in jit.iter().zip(&subs) {
                    table.extend(sc.iter().map(|&c| c as u8));
                    table.extend(f16_bytes(d * j));
                }
                Generator::Quant(QuantGen {
                    block_bytes: 210,
                    at: 192,
                    len: 18,
                    table,
                })
            }
            other => {
                return Err(Error::InvalidArgument(format!(
                    "synthetic tensor `{}`: type {} is not generated",
                    t.name,
                    other.name()
                )))
            }
        })
    }

    /// Fills `buf` with the data of elements `first..` (`first` matters only for
    /// `rope_freqs`, whose values depend on the position).
    fn fill(&self, r: &mut ChaCha8Rng, buf: &mut [u8], first: u64) {
        match self {
            Generator::Quant(g) => {
                r.fill_bytes(buf);
                for block in buf.chunks_exact_mut(g.block_bytes) {
                    let i = block[g.at] as usize;
                    block[g.at..g.at + g.len].copy_from_slice(&g.table[i * g.len..][..g.len]);
                }
            }
            Generator::Float { half_width, f16 } => {
                let size = if *f16 { 2 } else { 4 };
                for e in buf.chunks_exact_mut(size) {
                    let v = (2.0 * unit(r) - 1.0) * half_width;
                    if *f16 {
                        e.copy_from_slice(&f16_bytes(v));
                    } else {
                        e.copy_from_slice(&v.to_le_bytes());
                    }
                }
            }
            Generator::F32(init) => {
                for (k, e) in buf.chunks_exact_mut(4).enumerate() {
                    let v = match *init {
                        Init::Around { center, noise } => center + noise * (2.0 * unit(r) - 1.0),
                        Init::Uniform { lo, hi } => lo + (hi - lo) * unit(r),
                        Init::RopeFreqs { ones } => {
                            if first + (k as u64) < ones {
                                1.0
                            } else {
                                1e30
                            }
                        }
                        Init::Random { .. } => unreachable!("handled by Generator::Float"),
                    };
                    e.copy_from_slice(&v.to_le_bytes());
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Vocabulary

/// Byte tokens end at id 493; a vocabulary needs room after them for its BPE pieces.
const MIN_VOCAB: usize = 1024;

const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const BYTE: i32 = 6;

/// First id of the byte-fallback tokens `<0x00>`…`<0xFF>`.
const FIRST_BYTE: usize = 238;
/// First id after them: ordinary BPE pieces start here.
const FIRST_PIECE: usize = FIRST_BYTE + 256;
/// From here on (full-size vocabularies only) Gemma's ids are multimodal markers and unused
/// control tokens.
const FIRST_TAIL: usize = 256_001;

/// The HTML tags Gemma's vocabulary keeps as single user-defined tokens (ids 168–237).
const HTML_TAGS: [&str; 70] = [
    "<table>",
    "<caption>",
    "<thead>",
    "<tbody>",
    "<tfoot>",
    "<tr>",
    "<th>",
    "<td>",
    "</table>",
    "</caption>",
    "</thead>",
    "</tbody>",
    "</tfoot>",
    "</tr>",
    "</th>",
    "</td>",
    "<h1>",
    "<h2>",
    "<h3>",
    "<h4>",
    "<h5>",
    "<h6>",
    "<blockquote>",
    "</h1>",
    "</h2>",
    "</h3>",
    "</h4>",
    "</h5>",
    "</h6>",
    "</blockquote>",
    "<strong>",
    "<em>",
    "<b>",
    "<i>",
    "<u>",
    "<s>",
    "<sub>",
    "<sup>",
    "<code>",
    "</strong>",
    "</em>",
    "</b>",
    "</i>",
    "</u>",
    "</s>",
    "</sub>",
    "</sup>",
    "</code>",
    "<a>",
    "<html>",
    "<body>",
    "<img>",
    "<span>",
    "<bbox>",
    "<ul>",
    "<li>",
    "<div>",
    "<iframe>",
    "<footer>",
    "</a>",
    "</html>",
    "</body>",
    "</img>",
    "</span>",
    "</bbox>",
    "</ul>",
    "</li>",
    "</div>",
    "</iframe>",
    "</footer>",
];

/// Words that get whole-word tokens (with and without a leading `▁`).
const WORDS: &[&str] = &[
    "the", "of", "and", "to", "in", "is", "was", "for", "that", "on", "with", "as", "by", "at",
    "from", "it", "be", "this", "are", "or", "an", "not", "which", "but", "have", "had", "they",
    "you", "he", "she", "we", "one", "all", "their", "has", "were", "been", "there", "more", "can",
    "will", "what", "when", "who", "about", "into", "time", "would", "other", "some", "also",
    "first", "new", "people", "world", "year", "city", "country", "capital", "France", "Paris",
    "Hello", "The", "In", "It", "This", "model", "language", "water", "history", "between",
    "after", "over", "many", "most", "only", "two", "three", "Once", "upon", "story",
];

struct Vocab {
    tokens: Vec<String>,
    types: Vec<i32>,
    scores: Vec<f32>,
    /// `"left right"`, best first.
    merges: Vec<String>,
}

/// Merges over single characters, best first, and the pieces in id order (single characters
/// first, then merge results in merge order).
fn bpe_pieces() -> (Vec<String>, Vec<(String, String)>) {
    let sp = '\u{2581}'.to_string();
    let mut singles = vec![sp.clone()];
    singles.extend((33u8..=126).map(|b| (b as char).to_string()));
    let mut merges: Vec<(String, String)> = Vec::new();
    let mut ranks: HashMap<(String, String), usize> = HashMap::new();
    let mut pieces = singles.clone();
    let mut add =
        |a: String, b: String, merges: &mut Vec<(String, String)>, pieces: &mut Vec<String>| {
            if ranks.contains_key(&(a.clone(), b.clone())) {
                return;
            }
            let joined = format!("{a}{b}");
            if !pieces.contains(&joined) {
                pieces.push(joined);
            }
            ranks.insert((a.clone(), b.clone()), merges.len());
            merges.push((a, b));
        };
    for c in ('a'..='z').chain('A'..='Z') {
        add(sp.clone(), c.to_string(), &mut merges, &mut pieces);
    }
    for a in 'a'..='z' {
        for b in 'a'..='z' {
            add(a.to_string(), b.to_string(), &mut merges, &mut pieces);
        }
    }
    // Whole words: tokenize with the merges so far, then join the resulting pieces left to
    // right with new (lower-priority) merges, which BPE then applies in exactly that order.
    for w in WORDS {
        for form in [format!("{sp}{w}"), w.to_string()] {
            let mut toks = bpe(&form, &merges);
            while toks.len() > 1 {
                let (a, b) = (toks[0].clone(), toks[1].clone());
                add(a.clone(), b.clone(), &mut merges, &mut pieces);
                toks.splice(0..2, [format!("{a}{b}")]);
            }
        }
    }
    (pieces, merges)
}

/// Plain BPE of `word` (split into characters) with `merges` in rank order.
fn bpe(word: &str, merges: &[(String, String)]) -> Vec<String> {
    let rank: HashMap<(&str, &str), usize> = merges
        .iter()
        .enumerate()
        .map(|(i, (a, b))| ((a.as_str(), b.as_str()), i))
        .collect();
    let mut toks: Vec<String> = word.chars().map(|c| c.to_string()).collect();
    loop {
        let best = (0..toks.len().saturating_sub(1))
            .filter_map(|i| {
                rank.get(&(toks[i].as_str(), toks[i + 1].as_str()))
                    .map(|&r| (r, i))
            })
            .min();
        let Some((_, i)) = best else { return toks };
        let joined = format!("{}{}", toks[i], toks[i + 1]);
        toks.splice(i..i + 2, [joined]);
    }
}

/// A Gemma-shaped vocabulary of exactly `n` pieces (GEMMA.md §3; the layouts of the 270M file
/// and of the converted Gemma 4 fixtures).
///
/// Gemma 3 types its specials, newline/space runs and HTML tags CONTROL or USER_DEFINED and
/// writes space runs with real spaces, as the 270M file does. llama.cpp's Gemma 4 converter
/// (BPE vocabulary) types only the named specials CONTROL/USER_DEFINED and everything else
/// NORMAL, keeps `▁`, and reaches newline and space runs through merges, which come first.
fn build_vocab(family: Family, n: usize) -> Result<Vocab> {
    if n < MIN_VOCAB {
        return Err(Error::InvalidArgument(format!(
            "vocabulary of {n} is below {MIN_VOCAB}"
        )));
    }
    let g4 = family == Family::Gemma4;
    // Gemma 4's converter leaves these NORMAL.
    let (runs, tags) = if g4 {
        (NORMAL, NORMAL)
    } else {
        (USER_DEFINED, USER_DEFINED)
    };
    let sp = '\u{2581}';
    let mut slots: Vec<Option<(String, i32)>> = vec![None; n];
    let mut put = |id: usize, s: &str, ty: i32| {
        if id < n {
            slots[id] = Some((s.to_string(), ty));
        }
    };
    for (id, s) in ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
        .iter()
        .enumerate()
    {
        put(id, s, CONTROL);
    }
    put(5, "[multimodal]", tags);
    match family {
        Family::Gemma3 => {
            put(105, "<start_of_turn>", CONTROL);
            put(106, "<end_of_turn>", CONTROL);
            put(255_999, "<start_of_image>", USER_DEFINED);
            put(256_000, "<end_of_image>", USER_DEFINED);
        }
        Family::Gemma4 => {
            // GEMMA.md §3.3. The converter marks the ones the model writes as visible text
            // USER_DEFINED; the others are control tokens.
            for (id, s, ty) in [
                (46, "<|tool>", CONTROL),
                (47, "<tool|>", CONTROL),
                (48, "<|tool_call>", USER_DEFINED),
                (49, "<tool_call|>", USER_DEFINED),
                (50, "<|tool_response>", USER_DEFINED),
                (51, "<tool_response|>", USER_DEFINED),
                (52, "<|\"|>", USER_DEFINED),
                (98, "<|think|>", CONTROL),
                (100, "<|channel>", USER_DEFINED),
                (101, "<channel|>", USER_DEFINED),
                (105, "<|turn>", CONTROL),
                (106, "<turn|>", CONTROL),
                (255_999, "<|image>", CONTROL),
                (256_000, "<|audio>", CONTROL),
                (258_880, "<|image|>", CONTROL),
                (258_881, "<|audio|>", CONTROL),
                (258_882, "<image|>", CONTROL),
                (258_883, "<audio|>", CONTROL),
                (258_884, "<|video|>", CONTROL),
            ] {
                put(id, s, ty);
            }
        }
    }
    // Runs of newlines (107…), of spaces (138…) and of tabs (near the end).
    let space = if g4 { sp.to_string() } else { " ".into() };
    for k in 1..=MAX_RUN {
        put(106 + k, &"\n".repeat(k), runs);
        put(255_967 + k, &"\t".repeat(k), runs);
        if k >= 2 {
            put(136 + k, &space.repeat(k), runs);
        }
    }
    for (i, tag) in HTML_TAGS.iter().enumerate() {
        put(168 + i, tag, tags);
    }
    for b in 0..256 {
        put(FIRST_BYTE + b, &format!("<0x{b:02X}>"), BYTE);
    }
    let (pieces, mut merges) = bpe_pieces();
    if g4 {
        merges.splice(0..0, run_merges());
    }
    let mut pieces = pieces.into_iter();
    let mut tokens = Vec::with_capacity(n);
    let mut types = Vec::with_capacity(n);
    let mut scores = Vec::with_capacity(n);
    for (id, slot) in slots.into_iter().enumerate() {
        let (s, ty) = match slot {
            Some(x) => x,
            None if (FIRST_PIECE..FIRST_TAIL).contains(&id) => {
                // BPE pieces, then unreachable filler pieces (decoding them gives readable text).
                let s = pieces.next().unwrap_or_else(|| format!("{sp}x{id}"));
                (s, NORMAL)
            }
            None => {
                // Gemma numbers its unused tokens across the specials that took their places.
                let k = if id < FIRST_PIECE {
                    id - 6
                } else {
                    99 + id - FIRST_TAIL
                };
                (format!("<unused{k}>"), if g4 { NORMAL } else { CONTROL })
            }
        };
        scores.push(match ty {
            NORMAL => -((id.saturating_sub(FIRST_PIECE)) as f32),
            BYTE => 0.0,
            _ => -1000.0,
        });
        tokens.push(s);
        types.push(ty);
    }
    // Keep the merges whose parts and result made it into a (possibly small) vocabulary.
    let have: std::collections::HashSet<&str> = tokens.iter().map(|t| t.as_str()).collect();
    let merges = merges
        .into_iter()
        .filter(|(a, b)| {
            have.contains(a.as_str())
                && have.contains(b.as_str())
                && have.contains(format!("{a}{b}").as_str())
        })
        .map(|(a, b)| format!("{a} {b}"))
        .collect();
    Ok(Vocab {
        tokens,
        types,
        scores,
        merges,
    })
}

/// Longest newline and space (`▁`) run Gemma has a token for.
const MAX_RUN: usize = 31;

/// Merges that build every newline and `▁` run from two shorter ones, longest results first
/// (the order of the real merge list, so a run always ends as one token).
fn run_merges() -> Vec<(String, String)> {
    let mut m = Vec::new();
    for k in (2..=MAX_RUN).rev() {
        for a in (1..k).rev() {
            for c in ["\n", "\u{2581}"] {
                m.push((c.repeat(a), c.repeat(k - a)));
            }
        }
    }
    m
}
