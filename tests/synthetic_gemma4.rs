//! Full-size synthetic Gemma 4 E2B and E4B (the real tensor names, shapes, types and metadata,
//! random weights) load and generate end to end, and E2B fits the phone budget: with every
//! matrix in Q4_0 at a 4096-token context it takes at most 1.30 GiB of GPU memory in all, no
//! GPU buffer is over 256 MiB, and the per-layer-embedding table (1.23 GiB) stays in the file.
//! With its MTP assistant (synthetic too, `SynthSpec::assistant_for`) drafting, E2B and the
//! assistant together stay within 1.40 GiB.
//!
//! The models are served by `SynthSource`, which generates each tensor's bytes as the loader
//! reads them (the same bytes `gemma-wgpu synth` writes): the 3 and 5 GB files never touch the
//! disk, and the per-layer table is read a row per token from the same source.

mod common;

use std::sync::Arc;

use gemma_wgpu::generate::{Finish, Generator};
use gemma_wgpu::gguf;
use gemma_wgpu::gpu::{GpuContext, GpuOptions};
use gemma_wgpu::model::{Drafter, LoadOptions, MemoryReport, Model, TensorGroup};
use gemma_wgpu::sampler::SamplingParams;
use gemma_wgpu::synth::{SynthArch, SynthQuant, SynthSource};
use gemma_wgpu::tokenizer::Tokenizer;

const MIB: u64 = 1 << 20;

/// Loads the synthetic model with the command-line tool's defaults (and, given one, its
/// synthetic assistant, drafting 3 tokens per round), generates `tokens` greedy tokens after
/// "Hi" and returns the memory reports of the model and of the assistant.
fn run(
    arch: SynthArch,
    quant: SynthQuant,
    context: u32,
    tokens: usize,
    assistant: Option<SynthArch>,
) -> (MemoryReport, Option<MemoryReport>) {
    let spec = arch.spec(quant, 7);
    let mut src = SynthSource::new(&spec).expect("lay out the synthetic file");
    let g = common::block(gguf::read_header(&mut src)).expect("read the header");
    let cfg = gemma_wgpu::model::check(&g).expect("a valid Gemma 4 file");
    let tok = Tokenizer::from_gguf(&g.metadata).expect("tokenizer");
    tok.check_model_vocab(cfg.vocab).expect("vocabulary");
    let ctx = Arc::new(common::block(GpuContext::new(&GpuOptions::default())).expect("GPU"));
    let opts = LoadOptions {
        context: Some(context),
        rows: Some(Arc::new(SynthSource::new(&spec).unwrap())),
        ..Default::default()
    };
    let mut model =
        common::block(Model::load(ctx, &g, &mut src, &opts, |_, _| {})).expect("load the model");
    let mut drafter = assistant.map(|a| {
        let spec = a.spec(quant, 8);
        let mut src = SynthSource::new(&spec).expect("lay out the assistant");
        let g = common::block(gguf::read_header(&mut src)).expect("read the assistant's header");
        common::block(Drafter::load(&model, &g, &mut src, |_, _| {})).expect("load the assistant")
    });
    let prompt = tok.encode("Hi", true).unwrap();
    let greedy = SamplingParams {
        temperature: 0.0,
        ..Default::default()
    };
    common::block(async {
        let mut gen = Generator::start(&mut model, &tok, &prompt, greedy, tokens).await?;
        if let Some(d) = drafter.as_mut() {
            gen.draft_with(d, 3)?;
        }
        while gen.next().await?.is_some() {}
        assert_eq!(gen.tokens().len(), tokens);
        assert_eq!(gen.finish(), Some(Finish::MaxTokens));
        if assistant.is_some() {
            assert!(gen.stats().draft_rounds > 0, "no draft round ran");
        }
        Ok::<(), gemma_wgpu::Error>(())
    })
    .expect("generate");
    (model.memory().clone(), drafter.map(|d| d.memory().clone()))
}

fn group<'a>(mem: &'a MemoryReport, name: &str) -> &'a TensorGroup {
    mem.groups
        .iter()
        .find(|g| g.name == name)
        .unwrap_or_else(|| panic!("no tensor group {name}"))
}

#[test]
fn e2b_q4_0_runs_and_fits_the_phone_budget() {
    let (mem, assistant) = run(
        SynthArch::Gemma4E2b,
        SynthQuant::Q4_0,
        4096,
        4,
        Some(SynthArch::Gemma4E2bAssistant),
    );
    let assistant = assistant.expect("the assistant's memory");
    let total = mem.total();
    let mib = |b: u64| b as f64 / MIB as f64;
    eprintln!(
        "E2B Q4_0 at 4096 context: {:.1} MiB of GPU memory (weights {:.1}, KV {:.1}, activations {:.1}), largest buffer {:.1} MiB, {:.1} MiB mapped",
        mib(total),
        mib(mem.weights),
        mib(mem.kv_cache),
        mib(mem.activations),
        mib(mem.largest_buffer),
        mib(mem.mapped),
    );
    assert!(total <= 1331 * MIB, "E2B needs {total} bytes > 1.30 GiB");
    let with_assistant = total + assistant.total();
    eprintln!(
        "with its assistant: {:.1} MiB (assistant weights {:.1}, activations {:.1})",
        mib(with_assistant),
        mib(assistant.weights),
        mib(assistant.activations)
    );
    assert!(
        with_assistant <= 1434 * MIB,
        "E2B and its assistant need {with_assistant} bytes > 1.40 GiB"
    );
    assert_eq!(
        assistant.kv_cache, 0,
        "the assistant reads the target's caches"
    );
    assert!(mem.largest_buffer <= 256 * MIB);
    // The per-layer table stays in the file; nothing of it is on the GPU.
    let table = group(&mem, "per-layer embedding table");
    assert_eq!(table.gpu_bytes, 0);
    assert!(table.mapped_bytes > 1200 * MIB);
    assert_eq!(mem.mapped, table.mapped_bytes);
    // The 20 KV-shared layers' K/V projections are in the file but not uploaded.
    let attn = group(&mem, "attention");
    assert!(attn.gpu_bytes < attn.file_bytes);
    // KV caches: 12 sliding rings of W + chunk − 1 = 639 slots (a step stores its K/V before
    // attention reads the cache, so a 128-token chunk's first row still finds the window) and
    // 3 full layers, f16 K and V, 1 KV head.
    let kv_per_token_full = 3 * 2 * 512 * 2;
    let ring = 512 + 128 - 1;
    assert!(mem.kv_cache <= (4096 * kv_per_token_full + 12 * ring * 2 * 256 * 2) as u64);
}

#[test]
fn e4b_q4_k_m_runs() {
    let (mem, _) = run(SynthArch::Gemma4E4b, SynthQuant::Q4_K_M, 1024, 2, None);
    assert_eq!(group(&mem, "per-layer embedding table").gpu_bytes, 0);
    assert!(mem.largest_buffer <= 256 * MIB);
}
