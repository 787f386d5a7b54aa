//! QkvPrep (per-head norm + RoPE + scale of a whole fused Q/K/V projection, K/V written into
//! the cache) against `reference::rope::head_prep` (f64 arithmetic on the same CPU-built cos/sin
//! table).
//!
//! Tolerances:
//! - queries and f32 caches: atol 5e-6, rtol 1e-5 (measured on lavapipe: max |err| 7e-7 on
//!   values up to ~10). The GPU sums ≤ 512 squares in f32 (~1e-7 relative) and rotates in f32
//!   (a few ulp); a wrong pairing, sign or angle is off by O(1).
//! - f16 caches: the GPU value must be the f16 round-to-nearest-even of the f32 reference, or its
//!   neighbour when the reference lies within 2e-5 (relative) + ATOL of a rounding boundary.
//! - Pure packing (no norm, no RoPE): bit-exact against `half::f16::from_f32` (RNE), ties
//!   included: this pins what `pack2x16float` does on the adapter.
//! - Cache slots the step must not touch keep their contents.

mod common;

use common::{assert_close, block, variants, Rng};
use gemma_wgpu::gpu::{GpuContext, Op, StepParams};
use gemma_wgpu::kernels::qkv_prep::{QkvPrep, QkvPrepConfig, QkvPrepIo};
use gemma_wgpu::reference;
use gemma_wgpu::rope::RopeTable;
use half::f16;

const ATOL: f32 = 5e-6;
const RTOL: f32 = 1e-5;

/// (pos0, tokens) of the steps each case runs: the start, a sliding window's edge, past 4K, and
/// near 32K (large RoPE angles).
const POSITIONS: [(u32, u32); 4] = [(0, 2), (511, 2), (4097, 1), (32766, 2)];

fn unpack_f16(words: &[u32]) -> Vec<f32> {
    words
        .iter()
        .flat_map(|&w| {
            [
                f16::from_bits(w as u16).to_f32(),
                f16::from_bits((w >> 16) as u16).to_f32(),
            ]
        })
        .collect()
}

/// f16 outputs: RNE of the reference, or the neighbour when the reference sits on a boundary.
fn assert_f16_close(what: &str, got: &[f32], want: &[f32]) -> (usize, usize) {
    assert_eq!(got.len(), want.len());
    let mut exact = 0;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let r = f16::from_f32(w).to_f32();
        if g == r {
            exact += 1;
            continue;
        }
        let lo = f16::from_f32(w * (1.0 - 2e-5) - ATOL).to_f32();
        let hi = f16::from_f32(w * (1.0 + 2e-5) + ATOL).to_f32();
        let (lo, hi) = (lo.min(hi), lo.max(hi));
        assert!(
            g >= lo && g <= hi,
            "{what}: [{i}] got {g} want f16({w}) = {r} (allowed {lo}..={hi})"
        );
    }
    (exact, got.len())
}

fn max_err(got: &[f32], want: &[f32]) -> f32 {
    got.iter()
        .zip(want)
        .map(|(g, w)| (g - w).abs())
        .fold(0.0, f32::max)
}

/// A word no f16 pair or f32 the op writes here has: marks cache slots it must not touch.
const SENTINEL: u32 = 0x7e01_7e01;

/// What one QkvPrep step produced: the queries and the whole K and V caches (words).
struct PrepOut {
    q: Vec<f32>,
    k: Vec<u32>,
    v: Vec<u32>,
}

/// Runs one QkvPrep step over `qkv` (`[T, row_len]`) into caches pre-filled with `SENTINEL`.
fn run_qkv(
    ctx: &GpuContext,
    cfg: &QkvPrepConfig,
    qkv: &[f32],
    norms: &[f32],
    table: &[f32],
    n_tokens: u32,
    pos0: u32,
) -> PrepOut {
    let d = cfg.head_dim as usize;
    let xb = ctx.storage_init("qkv", qkv).unwrap();
    let nb = ctx.storage_init("norms", norms).unwrap();
    let tb = ctx.storage_init("rope", table).unwrap();
    let n_q = n_tokens as usize * cfg.n_q_heads as usize * d;
    let qb = ctx.storage("q", n_q as u64 * 4).unwrap();
    let words = cfg.cap as usize * cfg.n_kv_heads as usize * d / if cfg.kv_f32 { 1 } else { 2 };
    let sentinel = vec![SENTINEL; words.max(1)];
    let kb = ctx.storage_init("k_cache", &sentinel).unwrap();
    let vb = ctx.storage_init("v_cache", &sentinel).unwrap();
    let step = StepParams::new(n_tokens, pos0);
    let sb = ctx.params_init("step", &step);
    let op = QkvPrep::new(
        ctx,
        QkvPrepIo {
            qkv: xb.as_entire_binding(),
            norms: nb.as_entire_binding(),
            rope: tb.as_entire_binding(),
            q_out: qb.as_entire_binding(),
            k_cache: cfg.store_kv.then(|| kb.as_entire_binding()),
            v_cache: cfg.store_kv.then(|| vb.as_entire_binding()),
            step: sb.as_entire_binding(),
        },
        cfg,
    )
    .unwrap();
    block(ctx.run(|pass| op.encode(pass, &step))).unwrap();
    PrepOut {
        q: block(ctx.read(&qb, 0, n_q)).unwrap(),
        k: block(ctx.read(&kb, 0, words)).unwrap(),
        v: block(ctx.read(&vb, 0, words)).unwrap(),
    }
}

/// Heads `first..first + n` of every token of a fused `[T, row_len]` projection, as
/// `[T, n·d]` rows (the input the per-projection reference takes).
fn heads_of(qkv: &[f32], row_len: usize, d: usize, first: usize, n: usize) -> Vec<f32> {
    qkv.chunks(row_len)
        .flat_map(|row| row[first * d..(first + n) * d].to_vec())
        .collect()
}

/// The cache row (`nkv·d` values) of slot `slot`, as f32.
fn cache_row(words: &[u32], slot: usize, row: usize, kv_f32: bool) -> Vec<f32> {
    if kv_f32 {
        words[slot * row..][..row]
            .iter()
            .map(|&b| f32::from_bits(b))
            .collect()
    } else {
        unpack_f16(&words[slot * row / 2..][..row / 2])
    }
}

struct QkvCase {
    name: &'static str,
    cfg: QkvPrepConfig,
    table: RopeTable,
}

fn qkv_config(
    d: u32,
    nq: u32,
    nkv: u32,
    q_scale: f32,
    v_norm: bool,
    kv_f32: bool,
) -> QkvPrepConfig {
    QkvPrepConfig {
        head_dim: d,
        n_q_heads: nq,
        n_kv_heads: nkv,
        store_kv: true,
        q_scale,
        // w_q, then w_k after a gap: the offsets are free.
        q_norm_offset: 3,
        k_norm_offset: 3 + d + 5,
        v_norm,
        eps: 1e-6,
        cap: 8,
        kv_f32,
    }
}

/// Runs `case` at `pos0` for `n_tokens` rows on every variant and checks the queries, the
/// cache slots the rows go to (against `reference::rope::head_prep`) and that every other slot
/// is untouched.
fn run_qkv_case(case: &QkvCase, pos0: u32, n_tokens: u32) {
    let cfg = &case.cfg;
    let (d, nq, t) = (
        cfg.head_dim as usize,
        cfg.n_q_heads as usize,
        n_tokens as usize,
    );
    let nkv = if cfg.store_kv {
        cfg.n_kv_heads as usize
    } else {
        0
    };
    let row_len = cfg.row_len() as usize;
    let mut rng = Rng::new(pos0 as u64 * 31 + d as u64 + nq as u64 * 7 + nkv as u64);
    let qkv = rng.vec(t * row_len, 4.0);
    let mut norms = vec![0f32; cfg.k_norm_offset as usize + d];
    for w in norms.iter_mut() {
        *w = rng.unit() + 1.2;
    }
    let (q_off, k_off) = (cfg.q_norm_offset as usize, cfg.k_norm_offset as usize);
    let mut table = Vec::new();
    case.table.fill(pos0, t, &mut table);
    let want_q = reference::rope::head_prep(
        &heads_of(&qkv, row_len, d, 0, nq),
        t,
        nq,
        d,
        true,
        Some(&norms[q_off..q_off + d]),
        cfg.eps,
        Some(&table),
        cfg.q_scale,
    );
    let want_k = reference::rope::head_prep(
        &heads_of(&qkv, row_len, d, nq, nkv),
        t,
        nkv,
        d,
        true,
        Some(&norms[k_off..k_off + d]),
        cfg.eps,
        Some(&table),
        1.0,
    );
    let want_v = reference::rope::head_prep(
        &heads_of(&qkv, row_len, d, nq + nkv, nkv),
        t,
        nkv,
        d,
        cfg.v_norm,
        None,
        cfg.eps,
        None,
        1.0,
    );
    let cap = cfg.cap as usize;
    let row = nkv * d;
    for v in variants() {
        let out = run_qkv(&v.ctx, cfg, &qkv, &norms, &table, n_tokens, pos0);
        let what = format!("{} pos {pos0}+{t} [{}]", case.name, v.name);
        assert_close(&format!("{what} q"), &out.q, &want_q, ATOL, RTOL);
        eprintln!("{what}: q max |err| {:.2e}", max_err(&out.q, &want_q));
        if !cfg.store_kv {
            assert!(
                out.k.iter().chain(&out.v).all(|&w| w == SENTINEL),
                "{what}: a q-only layer wrote a cache"
            );
            continue;
        }
        // Rows that reach the cache: the last `cap` of the step.
        let first = t.saturating_sub(cap);
        let mut written = vec![false; cap];
        for r in first..t {
            let slot = (pos0 as usize + r) % cap;
            written[slot] = true;
            for (name, words, want) in [("k", &out.k, &want_k), ("v", &out.v, &want_v)] {
                let got = cache_row(words, slot, row, cfg.kv_f32);
                let want = &want[r * row..][..row];
                let label = format!("{what} {name} row {r} slot {slot}");
                if cfg.kv_f32 {
                    assert_close(&label, &got, want, ATOL, RTOL);
                } else {
                    let (exact, n) = assert_f16_close(&label, &got, want);
                    if r == first {
                        eprintln!("{label}: f16 {exact}/{n} equal to RNE(reference)");
                    }
                }
            }
        }
        let words_per_slot = if cfg.kv_f32 { row } else { row / 2 };
        for (slot, _) in written.iter().enumerate().filter(|(_, w)| !**w) {
            for words in [&out.k, &out.v] {
                assert!(
                    words[slot * words_per_slot..][..words_per_slot]
                        .iter()
                        .all(|&w| w == SENTINEL),
                    "{what}: slot {slot} was not this step's but was written"
                );
            }
        }
    }
}

#[test]
fn qkv_prep_gemma3() {
    // q·query_pre_attn_scalar^−0.5 in the prep, k normed + RoPE'd, v as projected.
    let case = QkvCase {
        name: "g3",
        cfg: qkv_config(256, 4, 1, 1.0 / 16.0, false, false),
        table: RopeTable::new(10_000.0, 256).unwrap(),
    };
    for (pos0, t) in POSITIONS {
        run_qkv_case(&case, pos0, t);
    }
    let case = QkvCase {
        name: "g3 kv_f32",
        cfg: qkv_config(256, 4, 1, 1.0 / 16.0, false, true),
        table: RopeTable::new(1e6, 256).unwrap(),
    };
    run_qkv_case(&case, 4097, 3);
}

#[test]
fn qkv_prep_gemma4() {
    let mut ff = vec![1.0f32; 64];
    ff.extend(std::iter::repeat_n(1e30f32, 192));
    let full = RopeTable::with_freq_factors(1e6, 512, &ff).unwrap();
    for kv_f32 in [false, true] {
        // E2B full layer: d = 512, proportional RoPE, weightless V-norm.
        let case = QkvCase {
            name: "g4 full",
            cfg: qkv_config(512, 8, 1, 1.0, true, kv_f32),
            table: full.clone(),
        };
        for (pos0, t) in POSITIONS {
            run_qkv_case(&case, pos0, t);
        }
        // E4B sliding layer: two KV heads.
        let case = QkvCase {
            name: "g4 sliding nkv 2",
            cfg: qkv_config(256, 8, 2, 1.0, true, kv_f32),
            table: RopeTable::new(10_000.0, 256).unwrap(),
        };
        run_qkv_case(&case, 0, 5);
        run_qkv_case(&case, 32766, 2);
    }
}

/// A Gemma 4 KV-shared layer: projection rows of `nq·d`, queries only, no cache bound (and
/// the op's placeholder bindings are never written).
#[test]
fn qkv_prep_shared_kv_layer_prepares_queries_only() {
    let mut cfg = qkv_config(256, 8, 1, 1.0, true, false);
    cfg.store_kv = false;
    assert_eq!(cfg.row_len(), 8 * 256);
    let case = QkvCase {
        name: "g4 shared",
        cfg,
        table: RopeTable::new(10_000.0, 256).unwrap(),
    };
    run_qkv_case(&case, 0, 3);
    run_qkv_case(&case, 4097, 1);
}

/// Ring slots: rows go to `(pos0 + t) % cap`, a step longer than the ring keeps its last `cap`
/// rows (the earlier ones are never written: no two workgroups race for a slot), and every
/// other slot is untouched (`run_qkv_case` checks both).
#[test]
fn qkv_prep_writes_ring_slots() {
    let mut cfg = qkv_config(128, 4, 2, 1.0, true, false);
    let table = RopeTable::new(10_000.0, 128).unwrap();
    for (cap, pos0, t) in [(8, 6, 3), (8, 5, 11), (8, 13, 1), (16, 100, 16)] {
        cfg.cap = cap;
        for kv_f32 in [false, true] {
            cfg.kv_f32 = kv_f32;
            let case = QkvCase {
                name: "ring",
                cfg,
                table: table.clone(),
            };
            run_qkv_case(&case, pos0, t);
        }
    }
}

/// The f16 cache rounds to nearest even, ties included, f16
/// subnormals kept, values beyond the f16 range clamped to ±65504 (not ±inf) — through the V
/// path of a Gemma 3 layer (no norm: the cache gets exactly RNE(clamp(input))), bit-exact
/// against `half::f16::from_f32`.
#[test]
fn qkv_prep_f16_cache_is_round_to_nearest_even() {
    let mut rng = Rng::new(11);
    let mut x: Vec<f32> = rng.vec(2048, 50.0);
    for i in 0..1024u16 {
        let a = f16::from_bits(0x3c00 + i * 7).to_f32();
        let b = f16::from_bits(0x3c00 + i * 7 + 1).to_f32();
        x.push((a + b) / 2.0);
        x.push(-(a + b) / 2.0);
    }
    x.extend([
        1e-6, -3e-7, 6e-8, 65504.0, 65519.0, -65519.0, 0.0, -0.0, 1e9, -1e9,
    ]);
    let d = 256usize;
    x.resize(x.len().next_multiple_of(d), 0.25);
    let t = x.len() / d;
    // One token per row: q (1 head, zeros), k (zeros), v = the values.
    let mut cfg = qkv_config(d as u32, 1, 1, 1.0, false, false);
    cfg.cap = t as u32;
    let mut qkv = Vec::with_capacity(t * 3 * d);
    for row in x.chunks(d) {
        qkv.extend(std::iter::repeat_n(0.0, 2 * d));
        qkv.extend_from_slice(row);
    }
    let norms = vec![1.0f32; cfg.k_norm_offset as usize + d];
    let mut table = Vec::new();
    RopeTable::new(10_000.0, d).unwrap().fill(0, t, &mut table);
    let want: Vec<u16> = x
        .iter()
        .map(|&v| f16::from_f32(v.clamp(-65504.0, 65504.0)).to_bits())
        .collect();
    for v in variants() {
        let out = run_qkv(&v.ctx, &cfg, &qkv, &norms, &table, t as u32, 0);
        let got: Vec<u16> = out
            .v
            .iter()
            .flat_map(|&w| [w as u16, (w >> 16) as u16])
            .collect();
        let bad: Vec<String> = got
            .iter()
            .zip(&want)
            .zip(&x)
            .filter(|((g, w), _)| g != w)
            .take(10)
            .map(|((g, w), x)| format!("x {x}: got {g:#06x} want {w:#06x}"))
            .collect();
        assert!(bad.is_empty(), "[{}] {}", v.name, bad.join("\n"));
    }
}

#[test]
fn qkv_prep_rejects_bad_configs() {
    let ctx = &variants()[0].ctx;
    let b = ctx.storage("b", 4096).unwrap();
    let c = ctx.storage("c", 4096).unwrap();
    let s = ctx.params_init("s", &StepParams::new(1, 0));
    let build = |cfg: &QkvPrepConfig, caches: bool| {
        QkvPrep::new(
            ctx,
            QkvPrepIo {
                qkv: b.as_entire_binding(),
                norms: b.as_entire_binding(),
                rope: b.as_entire_binding(),
                q_out: c.as_entire_binding(),
                k_cache: caches.then(|| c.as_entire_binding()),
                v_cache: caches.then(|| c.as_entire_binding()),
                step: s.as_entire_binding(),
            },
            cfg,
        )
    };
    let good = qkv_config(8, 2, 1, 1.0, true, false);
    assert!(build(&good, true).is_ok());
    assert!(build(&good, false).is_err(), "store_kv without caches");
    let mut q_only = good;
    q_only.store_kv = false;
    assert!(build(&q_only, false).is_ok());
    assert!(
        build(&q_only, true).is_err(),
        "caches given to a q-only layer"
    );
    for bad in [
        QkvPrepConfig {
            head_dim: 6,
            ..good
        },
        QkvPrepConfig {
            n_q_heads: 0,
            ..good
        },
        QkvPrepConfig {
            n_kv_heads: 0,
            ..good
        },
        QkvPrepConfig { cap: 0, ..good },
        QkvPrepConfig {
            eps: f32::NAN,
            ..good
        },
    ] {
        let e = build(&bad, true).err().expect("refused").to_string();
        assert!(e.starts_with("QkvPrep") || e.contains("QkvPrep"), "{e}");
    }
}
