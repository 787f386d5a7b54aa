//! Runtime faults surface as errors, release what they allocated, and the next load works.
//!
//! - A lost device (`GpuContext::lose_device_for_test` destroys it, as a driver reset or a
//!   browser reclaiming the GPU would): every later generation step, wait, readback and load on
//!   that context returns `Error::DeviceLost`, never a panic or a hang, also when the device is
//!   lost from another thread while a step is waiting on the GPU. A fresh context and model then
//!   give the same greedy tokens as before the fault.
//! - Out of memory (`GpuOptions::memory_budget`, fault injection at the context's one buffer
//!   helper): a load over budget fails with `Error::OutOfMemory` naming the buffer and the
//!   numbers, leaves wgpu's allocator where it was before the load (nothing leaked), and the
//!   same model then loads on the same context. With a zero budget after loading, decoding
//!   still runs (a token allocates no buffer) and an op that needs a new buffer fails cleanly.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gemma_wgpu::generate::Generator;
use gemma_wgpu::gguf::{self, Gguf, MmapSource};
use gemma_wgpu::gpu::{GpuContext, GpuOptions};
use gemma_wgpu::model::{LoadOptions, Model};
use gemma_wgpu::sampler::SamplingParams;
use gemma_wgpu::tokenizer::Tokenizer;
use gemma_wgpu::{Error, Result};

const MODEL: &str = "gemma4_tiny_a.gguf";
const PROMPT: &str = "Once upon a time, a small boat";
const TOKENS: usize = 6;

fn path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/gemma4")
        .join(MODEL)
}

fn context(budget: Option<u64>) -> Arc<GpuContext> {
    Arc::new(
        common::block(GpuContext::new(&GpuOptions {
            webgpu_default_limits: true,
            backends: Some(wgpu::Backends::VULKAN | wgpu::Backends::METAL | wgpu::Backends::DX12),
            memory_budget: budget,
            ..Default::default()
        }))
        .expect("GPU"),
    )
}

fn open() -> (Gguf, Tokenizer) {
    let (g, _) = gguf::open(path()).expect("open model");
    let tok = Tokenizer::from_gguf(&g.metadata).expect("tokenizer");
    (g, tok)
}

fn load(ctx: Arc<GpuContext>, g: &Gguf) -> Result<Model> {
    let (_, mut src) = gguf::open(path())?;
    let opts = LoadOptions {
        context: Some(256),
        rows: Some(Arc::new(MmapSource::open(path())?)),
        ..Default::default()
    };
    common::block(Model::load(ctx, g, &mut src, &opts, |_, _| {}))
}

fn greedy() -> SamplingParams {
    SamplingParams {
        temperature: 0.0,
        ..Default::default()
    }
}

/// Greedy ids after `prompt`, from position 0.
fn generate(model: &mut Model, tok: &Tokenizer, prompt: &[u32], n: usize) -> Result<Vec<u32>> {
    model.reset();
    common::block(async {
        let mut g = Generator::start(model, tok, prompt, greedy(), n).await?;
        while g.next().await?.is_some() {}
        Ok(g.tokens().to_vec())
    })
}

fn assert_lost<T: std::fmt::Debug>(what: &str, r: Result<T>) {
    match r {
        Err(Error::DeviceLost(m)) => {
            let text = Error::DeviceLost(m).to_string();
            assert!(
                text.contains("device was lost") && text.contains("load the model again"),
                "{what}: message `{text}`"
            );
        }
        other => panic!("{what}: expected Error::DeviceLost, got {other:?}"),
    }
}

/// Live bytes of wgpu's memory allocator (`None` on backends without a report), after letting
/// wgpu free what finished work held.
fn allocator_bytes(ctx: &GpuContext) -> Option<u64> {
    // Writes still queued (the staging copies behind buffers created with contents) are
    // memory of the queue, not of whoever made them: flush them first.
    ctx.submit([]);
    ctx.device
        .poll(wgpu::PollType::wait_indefinitely())
        .expect("poll");
    ctx.device
        .generate_allocator_report()
        .map(|r| r.total_allocated_bytes)
}

#[test]
fn device_lost_is_an_error_and_a_fresh_context_works() {
    let (g, tok) = open();
    let prompt = tok.encode(PROMPT, true).unwrap();
    let ctx = context(None);
    let mut model = load(ctx.clone(), &g).expect("load");
    let before = generate(&mut model, &tok, &prompt, TOKENS).expect("generate");
    assert_eq!(before.len(), TOKENS, "no end token in {before:?}");

    // Lose the device in the middle of a generation.
    model.reset();
    let next = common::block(async {
        let mut gen = Generator::start(&mut model, &tok, &prompt, greedy(), 100).await?;
        gen.next().await?;
        gen.next().await?;
        ctx.lose_device_for_test();
        gen.next().await
    });
    assert_lost("the next token", next);
    assert!(ctx.is_lost());
    assert_lost(
        "forward",
        common::block(model.forward(&prompt[..1], &[], 1.0)),
    );
    assert_lost("generate", generate(&mut model, &tok, &prompt, 2));
    assert_lost("wait", common::block(ctx.wait()));
    let buffer_err = ctx.storage("after loss", 16).map(|_| ());
    assert_lost("a new buffer", buffer_err);
    assert_lost(
        "loading on the lost device",
        load(ctx.clone(), &g).map(|_| ()),
    );

    drop(model);
    drop(ctx);
    let ctx = context(None);
    let mut model = load(ctx, &g).expect("load on a fresh context");
    let after = generate(&mut model, &tok, &prompt, TOKENS).expect("generate after the fault");
    assert_eq!(after, before, "greedy tokens after the fault");
}

/// A device lost from another thread while a step waits on the GPU ends the generation with
/// `DeviceLost` within a bounded time: the wait wakes to check, it does not hang.
#[test]
fn device_lost_from_another_thread_ends_a_running_generation() {
    let (g, tok) = open();
    let prompt = tok.encode(PROMPT, true).unwrap();
    let ctx = context(None);
    let mut model = load(ctx.clone(), &g).expect("load");
    let killer = {
        let ctx = ctx.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            ctx.lose_device_for_test();
            Instant::now()
        })
    };
    // Generate, starting over whenever the context is full, until the loss stops it (a fast GPU
    // fills the 256-token context many times in 300 ms).
    let started = Instant::now();
    let mut produced = 0usize;
    let result: Result<()> = loop {
        model.reset();
        let r = common::block(async {
            let mut gen = Generator::start(&mut model, &tok, &prompt, greedy(), 100_000).await?;
            let mut n = 0;
            while gen.next().await?.is_some() {
                n += 1;
            }
            Ok(n)
        });
        match r {
            Ok(n) => produced += n,
            Err(e) => break Err(e),
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the device was never lost"
        );
    };
    let lost_at = killer.join().unwrap();
    let ended = Instant::now();
    eprintln!(
        "{produced} tokens before the loss; generation ended {:?} after it",
        ended.saturating_duration_since(lost_at)
    );
    assert_lost("the running generation", result);
    assert!(
        ended.saturating_duration_since(lost_at) < Duration::from_secs(10),
        "the generation took {:?} to notice the lost device",
        ended.saturating_duration_since(lost_at)
    );
}

#[test]
fn out_of_memory_on_load_releases_everything_and_the_next_load_works() {
    let (g, tok) = open();
    let prompt = tok.encode(PROMPT, true).unwrap();
    let reference = {
        let mut m = load(context(None), &g).expect("load");
        let gpu = m.memory().total();
        (
            generate(&mut m, &tok, &prompt, TOKENS).expect("generate"),
            gpu,
        )
    };

    // Half of what the model needs on the GPU.
    let budget = reference.1 / 2;
    let ctx = context(Some(budget));
    let idle = allocator_bytes(&ctx);
    let err = match load(ctx.clone(), &g) {
        Ok(_) => panic!("a load over the {budget}-byte budget succeeded"),
        Err(e) => e,
    };
    let text = err.to_string();
    eprintln!("load over budget: {text}");
    match &err {
        Error::OutOfMemory(m) => {
            assert!(m.contains("buffer `"), "names the buffer: {m}");
            assert!(m.contains(&format!("budget is {budget} bytes")), "{m}");
            assert!(m.contains("bytes are allocated"), "{m}");
        }
        other => panic!("expected Error::OutOfMemory, got {other:?}"),
    }
    // Every buffer the failed load made is gone again.
    assert_eq!(
        allocator_bytes(&ctx),
        idle,
        "wgpu's allocator after the failed load (before it: {idle:?})"
    );

    // The same context loads the model once the budget is lifted.
    ctx.set_memory_budget(None);
    let mut model = load(ctx.clone(), &g).expect("load after the failed one");
    let tokens = generate(&mut model, &tok, &prompt, TOKENS).expect("generate");
    assert_eq!(tokens, reference.0, "greedy tokens after the failed load");

    // Decoding allocates nothing: with no budget left a generation still runs...
    ctx.set_memory_budget(Some(0));
    let tokens = generate(&mut model, &tok, &prompt, TOKENS).expect("generate with no budget");
    assert_eq!(tokens, reference.0);
    // ...while an op that needs a new buffer (the scoring head) fails with the numbers.
    match common::block(model.score(&prompt, 4)) {
        Err(Error::OutOfMemory(m)) => assert!(m.contains("budget is 0 bytes"), "{m}"),
        other => panic!("expected Error::OutOfMemory from score, got {other:?}"),
    }
    // And the model is intact afterwards.
    ctx.set_memory_budget(None);
    let tokens = generate(&mut model, &tok, &prompt, TOKENS).expect("generate after the OOM");
    assert_eq!(tokens, reference.0);

    // A fresh load in the same process, on a new context, works too.
    drop(model);
    let mut again = load(context(None), &g).expect("a second load");
    assert_eq!(
        generate(&mut again, &tok, &prompt, TOKENS).expect("generate"),
        reference.0
    );
}
