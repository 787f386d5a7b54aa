//! The two model operations speculative decoding is made of. `Model::rewind`: rolling the KV
//! cache back (a chat's re-rendered history, rejected drafts) leaves the model exactly as if
//! the rolled-back tokens had never been fed, for rollbacks up to the prefill chunk even after
//! the sliding-window rings have wrapped several times; a rollback the rings cannot serve is
//! refused and changes nothing. `Model::verify`: one step over several tokens gives, after
//! each, the candidates that decoding them one by one gives. On the tiny Gemma 4 fixture
//! (windows of 16–32 tokens) with a prefill chunk of 8.

mod common;

use std::sync::Arc;

use gemma_wgpu::gguf::{self, MmapSource};
use gemma_wgpu::gpu::{GpuContext, GpuOptions};
use gemma_wgpu::model::{Candidates, LoadOptions, Model};

const CHUNK: u32 = 8;

fn load() -> Model {
    let path = format!(
        "{}/tests/data/gemma4/gemma4_tiny_a.gguf",
        env!("CARGO_MANIFEST_DIR")
    );
    let (g, mut src) = gguf::open(&path).expect("open model");
    let ctx = Arc::new(
        common::block(GpuContext::new(&GpuOptions {
            webgpu_default_limits: true,
            backends: Some(wgpu::Backends::VULKAN | wgpu::Backends::METAL | wgpu::Backends::DX12),
            ..Default::default()
        }))
        .expect("GPU"),
    );
    let opts = LoadOptions {
        context: Some(256),
        prefill_chunk: CHUNK,
        rows: Some(Arc::new(MmapSource::open(&path).expect("map model"))),
        ..Default::default()
    };
    common::block(Model::load(ctx, &g, &mut src, &opts, |_, _| {})).expect("load")
}

/// Token ids of a deterministic sequence (any ids of the vocabulary will do).
fn ids(n: usize, seed: u32, vocab: u32) -> Vec<u32> {
    (0..n as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 7) % vocab)
        .collect()
}

/// Feeds `tokens` one step per `steps` slice and returns the candidates after the last one.
fn feed(model: &mut Model, tokens: &[u32], per_step: usize) -> Candidates {
    let mut last = None;
    for part in tokens.chunks(per_step) {
        last = Some(common::block(model.forward(part, &[], 1.0)).expect("forward"));
    }
    last.expect("tokens")
}

fn same(what: &str, a: &Candidates, b: &Candidates) {
    assert_eq!(a.ids, b.ids, "{what}: candidate ids differ");
    assert_eq!(a.values, b.values, "{what}: candidate logits differ");
}

#[test]
fn rewind_is_exact_up_to_the_prefill_chunk() {
    let mut model = load();
    let w = model.cfg.sliding_window as usize;
    let vocab = model.cfg.vocab;
    assert_eq!(model.max_rewind(), CHUNK, "rings of W + chunk − 1 slots");
    // A prefix that wraps every ring several times, then two tokens to continue with.
    let prefix = ids(3 * w + 5, 1, vocab);
    let next = ids(2, 99, vocab);
    let n = prefix.len() as u32;

    feed(&mut model, &prefix, CHUNK as usize);
    let want_1 = feed(&mut model, &next[..1], 1);
    let want_2 = feed(&mut model, &next[1..], 1);

    // Rejected tokens fed as decode steps, as a verify step of several rows, and mixed.
    for (r, per_step) in [(1, 1), (3, 3), (CHUNK as usize, 1), (CHUNK as usize, 5)] {
        model.reset();
        feed(&mut model, &prefix, CHUNK as usize);
        feed(&mut model, &ids(r, 7 + r as u32, vocab), per_step);
        assert!(model.rewind(n), "rolling back {r} tokens");
        assert_eq!(model.position(), n);
        let what = format!("after rolling back {r} tokens fed {per_step} per step");
        same(&what, &feed(&mut model, &next[..1], 1), &want_1);
        same(&what, &feed(&mut model, &next[1..], 1), &want_2);
    }
}

#[test]
fn rewind_past_what_the_rings_hold_is_refused() {
    let mut model = load();
    let w = model.cfg.sliding_window as usize;
    let vocab = model.cfg.vocab;
    let prefix = ids(3 * w + 5, 1, vocab);
    let n = prefix.len() as u32;
    feed(&mut model, &prefix, CHUNK as usize);
    feed(&mut model, &ids(CHUNK as usize + 1, 5, vocab), 3);
    let at = model.position();
    assert!(!model.rewind(n), "one token more than the chunk");
    assert_eq!(model.position(), at, "a refused rewind changes nothing");
    // The highest position stored counts, not the current one: after rolling back 4 of 8,
    // rolling back 5 more is 9 past what was stored.
    model.reset();
    feed(&mut model, &prefix, CHUNK as usize);
    feed(&mut model, &ids(CHUNK as usize, 5, vocab), 1);
    assert!(model.rewind(n + 4));
    assert!(!model.rewind(n - 1));
    assert!(model.rewind(n));
    // Forward is never refused, and before the rings wrap any rollback works.
    model.reset();
    feed(&mut model, &prefix[..w / 2], 1);
    assert!(model.rewind(0));
    assert!(!model.rewind(1), "past the current position");
}

/// `verify`'s rows against one-token decode steps: the same candidates after every drafted
/// token (the multi-row step runs other kernels: logits agree to 5e-4, about 15 times the
/// largest difference seen on lavapipe, 3.2e-5, while a wrong position or mask moves them by
/// whole units); then
/// the speculative loop's pattern — verify, keep a prefix, rewind, verify again — gives the
/// same rows once more.
#[test]
fn verify_scores_every_token_as_decoding_does() {
    const TOL: f32 = 5e-4;
    let mut model = load();
    let w = model.cfg.sliding_window as usize;
    let vocab = model.cfg.vocab;
    let prefix = ids(3 * w + 5, 1, vocab);
    let drafts = ids(5, 31, vocab);
    let n = prefix.len() as u32;

    feed(&mut model, &prefix, CHUNK as usize);
    let decoded: Vec<Candidates> = drafts.iter().map(|&t| feed(&mut model, &[t], 1)).collect();

    let close = |what: &str, got: &Candidates, want: &Candidates| {
        for (id, v) in want.ids.iter().zip(&want.values).take(5) {
            let at = got.ids.iter().position(|g| g == id);
            let g = at.map(|i| got.values[i]);
            assert!(
                g.is_some_and(|g| (g - v).abs() <= TOL),
                "{what}: token {id} has logit {g:?}, decoding gave {v}"
            );
        }
        if want.values[0] - want.values[1] > 2.0 * TOL {
            assert_eq!(got.ids[0], want.ids[0], "{what}: another top token");
        }
    };
    model.reset();
    feed(&mut model, &prefix, CHUNK as usize);
    let rows = common::block(model.verify(&drafts, 10)).expect("verify");
    assert_eq!(rows.len(), drafts.len());
    assert_eq!(model.position(), n + drafts.len() as u32);
    for (i, (r, d)) in rows.iter().zip(&decoded).enumerate() {
        assert_eq!(r.ids.len(), 10);
        close(&format!("row {i}"), r, d);
    }
    // Keep two drafts, roll the other three back, verify them again.
    assert!(model.rewind(n + 2));
    let again = common::block(model.verify(&drafts[2..], 10)).expect("verify again");
    for (i, (r, d)) in again.iter().zip(&decoded[2..]).enumerate() {
        close(&format!("row {} after the rewind", i + 2), r, d);
    }
    // The next decode step carries on from the verified tokens.
    let next = feed(&mut model, &ids(1, 77, vocab), 1);
    model.reset();
    feed(&mut model, &prefix, CHUNK as usize);
    feed(&mut model, &drafts, 1);
    close(
        "the step after",
        &next,
        &feed(&mut model, &ids(1, 77, vocab), 1),
    );

    let max = model.max_verify_tokens() as usize;
    assert_eq!(max, CHUNK as usize);
    let e = common::block(model.verify(&ids(max + 1, 3, vocab), 10)).unwrap_err();
    assert!(
        e.to_string()
            .contains("a verify step takes 1..=8 tokens, got 9"),
        "{e}"
    );
    assert!(common::block(model.verify(&[], 10)).is_err());
    assert!(common::block(model.verify(&[vocab], 10)).is_err());
}
