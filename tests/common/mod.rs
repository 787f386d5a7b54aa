//! Shared test harness: one GPU context per capability variant, seeded inputs, and a
//! closeness check that reports the worst mismatches (llm.c style).
#![allow(dead_code)]

use std::sync::OnceLock;

use gemma_wgpu::gpu::{GpuContext, GpuOptions};

/// A capability variant every kernel test runs on.
pub struct Variant {
    pub name: &'static str,
    pub ctx: GpuContext,
}

fn make(name: &'static str, portable: bool) -> Variant {
    make_with(name, portable, None)
}

/// `lane_rows`: the mat-vec's row mapping, with the parameter binding that goes with it on
/// that kind of adapter (storage for a row per lane, as on CPUs; uniform otherwise); `None`:
/// the adapter's own choice of both.
pub fn make_with(name: &'static str, portable: bool, lane_rows: Option<bool>) -> Variant {
    let opts = GpuOptions {
        webgpu_default_limits: true,
        disable_f16: portable,
        disable_subgroups: portable,
        backends: Some(wgpu::Backends::VULKAN | wgpu::Backends::METAL | wgpu::Backends::DX12),
        matvec_lane_rows: lane_rows,
        uniform_params: lane_rows.map(|lanes| !lanes),
        ..Default::default()
    };
    let ctx = pollster::block_on(GpuContext::new(&opts)).unwrap_or_else(|e| {
        panic!("tests need a GPU adapter (on a machine without a GPU: apt-get install mesa-vulkan-drivers): {e}")
    });
    Variant { name, ctx }
}

/// Contexts under WebGPU's default limits: the portable path (no `shader-f16`, no subgroups)
/// and, where the adapter offers them, the fast path with both. Built once per test binary.
pub fn variants() -> &'static [Variant] {
    static V: OnceLock<Vec<Variant>> = OnceLock::new();
    V.get_or_init(|| {
        let mut v = vec![make("portable", true)];
        let full = make("f16+subgroups", false);
        if full.ctx.caps.f16 || full.ctx.caps.subgroups {
            v.push(full);
        } else {
            eprintln!(
                "adapter offers neither shader-f16 nor subgroups: testing the portable path only"
            );
        }
        v
    })
}

/// [`variants`], plus each with the mat-vec's other row mapping (one row per invocation on a
/// GPU, a workgroup per 4 rows on a CPU adapter) and the other parameter binding: the mat-vec
/// tests cover both wherever they run.
pub fn matvec_variants() -> &'static [Variant] {
    static V: OnceLock<Vec<Variant>> = OnceLock::new();
    V.get_or_init(|| {
        let base = variants();
        let lanes = !base[0].ctx.caps.matvec_lane_rows;
        let (portable, full) = if lanes {
            (
                "portable, row per lane, storage params",
                "f16+subgroups, row per lane, storage params",
            )
        } else {
            (
                "portable, 4 rows per workgroup, uniform params",
                "f16+subgroups, 4 rows per workgroup, uniform params",
            )
        };
        let mut v = vec![
            make_with("portable", true, None),
            make_with(portable, true, Some(lanes)),
        ];
        if base.len() > 1 {
            v.push(make_with("f16+subgroups", false, None));
            v.push(make_with(full, false, Some(lanes)));
        }
        v
    })
}

/// Deterministic pseudo-random numbers (SplitMix64), so failures reproduce.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E3779B97F4A7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.unit() * scale).collect()
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// Asserts `|got - want| <= atol + rtol·|want|` elementwise; on failure prints the first
/// mismatches, the worst error and the normalised mean squared error.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], atol: f32, rtol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut bad = Vec::new();
    let mut worst = (0usize, 0f32);
    let (mut se, mut sw) = (0f64, 0f64);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs();
        se += (err as f64).powi(2);
        sw += (w as f64).powi(2);
        if err.is_nan() || err > atol + rtol * w.abs() {
            if bad.len() < 10 {
                bad.push(format!("  [{i}] got {g} want {w} (err {err:.3e})"));
            }
            if err.is_nan() || err > worst.1 {
                worst = (i, err);
            }
        }
    }
    if !bad.is_empty() {
        panic!(
            "{what}: {} mismatches (atol {atol:e}, rtol {rtol:e}); worst at [{}] err {:.3e}; nmse {:.3e}\n{}",
            bad.len(),
            worst.0,
            worst.1,
            se / sw.max(1e-30),
            bad.join("\n")
        );
    }
}

/// Runs a future to completion (tests are the edge where blocking is fine).
pub fn block<F: std::future::Future>(f: F) -> F::Output {
    pollster::block_on(f)
}
pub mod gguf_writer;
pub mod reference;

/// The tiny Gemma 4 target of the MTP fixture (vocabulary 1,024, random weights) with its
/// tokenizer, on a context under WebGPU's default limits (`portable`: no f16, no subgroups).
pub fn tiny_gemma4(
    name: &'static str,
    portable: bool,
    context: u32,
) -> (gemma_wgpu::model::Model, gemma_wgpu::tokenizer::Tokenizer) {
    use gemma_wgpu::gguf::{self, MmapSource};
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/gemma4_mtp/gemma4_mtp_target.gguf");
    let (g, mut src) = gguf::open(&path).expect("open fixture");
    let tok = gemma_wgpu::tokenizer::Tokenizer::from_gguf(&g.metadata).expect("tokenizer");
    let opts = gemma_wgpu::model::LoadOptions {
        context: Some(context),
        rows: Some(std::sync::Arc::new(
            MmapSource::open(&path).expect("map fixture"),
        )),
        ..Default::default()
    };
    let ctx = std::sync::Arc::new(make_with(name, portable, None).ctx);
    let model = block(gemma_wgpu::model::Model::load(
        ctx,
        &g,
        &mut src,
        &opts,
        |_, _| {},
    ))
    .expect("load");
    (model, tok)
}

/// Plain sampling at temperature 1 with no top-p cut: `top_k` 64 takes the GPU's candidates,
/// 0 the whole vocabulary.
pub fn sampled(top_k: u32, seed: u64) -> gemma_wgpu::sampler::SamplingParams {
    gemma_wgpu::sampler::SamplingParams {
        temperature: 1.0,
        top_k,
        top_p: 1.0,
        seed,
        ..Default::default()
    }
}

/// Pearson's χ² of observed draws against expected counts, over bins of consecutive entries
/// (`(expected, observed)` each, in a meaningful order) merged until each expects at least
/// 10; the leftover joins the last bin. Returns `(χ², df, z)` with the normal approximation
/// `z = (χ² − df)/√(2·df)`.
pub fn chi_square(entries: impl IntoIterator<Item = (f64, u64)>) -> (f64, f64, f64) {
    let mut bins: Vec<(f64, u64)> = Vec::new();
    let (mut e, mut o) = (0.0, 0u64);
    for (ei, oi) in entries {
        e += ei;
        o += oi;
        if e >= 10.0 {
            bins.push((e, o));
            (e, o) = (0.0, 0);
        }
    }
    match bins.last_mut() {
        Some(last) => {
            last.0 += e;
            last.1 += o;
        }
        None => bins.push((e, o)),
    }
    let chi2: f64 = bins.iter().map(|&(e, o)| (o as f64 - e).powi(2) / e).sum();
    let df = (bins.len().max(2) - 1) as f64;
    (chi2, df, (chi2 - df) / (2.0 * df).sqrt())
}
