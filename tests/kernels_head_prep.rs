//! HeadPrep (per-head norm + RoPE + scale, f32 or packed-f16 out) and QkvPrep (the same for a
//! whole fused Q/K/V projection, K/V written into the cache) against
//! `reference::rope::head_prep` (f64 arithmetic on the same CPU-built cos/sin table).
//!
//! Tolerances:
//! - f32 out: atol 5e-6, rtol 1e-5 (measured on lavapipe: max |err| 7e-7 on values up to ~10).
//!   The GPU sums ≤ 512 squares in f32 (~1e-7 relative) and rotates in f32 (a few ulp); a wrong
//!   pairing, sign or angle is off by O(1).
//! - f16 out: the GPU value must be the f16 round-to-nearest-even of the f32 reference, or its
//!   neighbour when the reference lies within 2e-5 (relative) + ATOL of a rounding boundary
//!   (measured: all but 1 of 11,008 values equal RNE(reference) exactly).
//! - Pure packing (no norm, no RoPE, scale 1): bit-exact against `half::f16::from_f32` (RNE),
//!   ties included: this pins what `pack2x16float` does on the adapter.
//! - QkvPrep: the same criteria (queries and f32 caches at atol 5e-6, rtol 1e-5; f16 caches
//!   RNE(reference) or its boundary neighbour; pure packing bit-exact), plus bit-identity with
//!   HeadPrep on the same adapter, and cache slots it must not touch keep their contents.

// The shared harness trips this lint under clippy 1.95 (NaN-aware `!(err <= tol)` is deliberate).
mod common;

use common::{assert_close, block, variants, Rng};
use gemma_wgpu::gpu::{GpuContext, Op, StepParams};
use gemma_wgpu::kernels::head_prep::{HeadNorm, HeadOut, HeadPrep, HeadPrepConfig, HeadPrepIo};
use gemma_wgpu::kernels::qkv_prep::{QkvPrep, QkvPrepConfig, QkvPrepIo};
use gemma_wgpu::reference;
use gemma_wgpu::rope::RopeTable;
use half::f16;

const ATOL: f32 = 5e-6;
const RTOL: f32 = 1e-5;

/// Runs one HeadPrep on `x` (`[T, in_stride]`) and returns the output words (f32 bits or
/// packed f16 pairs).
fn run_gpu(
    ctx: &GpuContext,
    cfg: &HeadPrepConfig,
    x: &[f32],
    w: &[f32],
    table: &[f32],
    n_tokens: u32,
    pos0: u32,
) -> Vec<u32> {
    let xb = ctx.storage_init("x", x).unwrap();
    let wb = ctx.storage_init("w", w).unwrap();
    let tb = ctx.storage_init("rope", table).unwrap();
    let n_out = (n_tokens * cfg.n_heads * cfg.head_dim) as usize;
    let words = match cfg.out {
        HeadOut::F32 => n_out,
        HeadOut::F16Packed => n_out / 2,
    };
    let yb = ctx.storage("y", words as u64 * 4).unwrap();
    let step = StepParams::new(n_tokens, pos0);
    let sb = ctx.params_init("step", &step);
    let op = HeadPrep::new(
        ctx,
        HeadPrepIo {
            x: xb.as_entire_binding(),
            weight: (cfg.norm == HeadNorm::Weighted).then(|| wb.as_entire_binding()),
            rope: cfg.rope.then(|| tb.as_entire_binding()),
            y: yb.as_entire_binding(),
            step: sb.as_entire_binding(),
        },
        cfg,
    )
    .unwrap();
    block(ctx.run(|pass| op.encode(pass, &step))).unwrap();
    block(ctx.read(&yb, 0, words)).unwrap()
}

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

struct Case {
    name: &'static str,
    d: u32,
    n_heads: u32,
    norm: HeadNorm,
    table: Option<RopeTable>,
    scale: f32,
    out: HeadOut,
}

fn run_case(case: &Case, pos0: u32, n_tokens: u32) {
    let (d, nh, t) = (case.d as usize, case.n_heads as usize, n_tokens as usize);
    let mut rng = Rng::new(pos0 as u64 * 7919 + d as u64 + nh as u64);
    let x = rng.vec(t * nh * d, 4.0);
    let w: Vec<f32> = rng.vec(d, 1.0).iter().map(|v| v + 1.2).collect();
    let mut table = Vec::new();
    if let Some(rt) = &case.table {
        rt.fill(pos0, t, &mut table);
    } else {
        table.resize(t * d, 0.0);
    }
    let want = reference::rope::head_prep(
        &x,
        t,
        nh,
        d,
        case.norm != HeadNorm::None,
        (case.norm == HeadNorm::Weighted).then_some(&w[..]),
        1e-6,
        case.table.is_some().then_some(&table[..]),
        case.scale,
    );
    let cfg = HeadPrepConfig {
        head_dim: case.d,
        n_heads: case.n_heads,
        norm: case.norm,
        rope: case.table.is_some(),
        scale: case.scale,
        eps: 1e-6,
        out: case.out,
        in_stride: None,
        in_offset: 0,
    };
    for v in variants() {
        let words = run_gpu(&v.ctx, &cfg, &x, &w, &table, n_tokens, pos0);
        let what = format!("{} d {d} heads {nh} pos {pos0}+{t} [{}]", case.name, v.name);
        match case.out {
            HeadOut::F32 => {
                let got: Vec<f32> = words.iter().map(|&b| f32::from_bits(b)).collect();
                assert_close(&what, &got, &want, ATOL, RTOL);
                eprintln!("{what}: max |err| {:.2e}", max_err(&got, &want));
            }
            HeadOut::F16Packed => {
                let got = unpack_f16(&words);
                let (exact, n) = assert_f16_close(&what, &got, &want);
                eprintln!("{what}: f16 {exact}/{n} equal to RNE(reference)");
            }
        }
    }
}

const POSITIONS: [(u32, u32); 4] = [(0, 2), (511, 2), (4097, 1), (32766, 2)];

#[test]
fn gemma3_queries_keys_values() {
    let rt = || Some(RopeTable::new(10_000.0, 256).unwrap());
    let q = Case {
        name: "g3 q",
        d: 256,
        n_heads: 4,
        norm: HeadNorm::Weighted,
        table: rt(),
        scale: 1.0 / 16.0,
        out: HeadOut::F32,
    };
    let k = Case {
        name: "g3 k",
        d: 256,
        n_heads: 1,
        norm: HeadNorm::Weighted,
        table: Some(RopeTable::new(1e6, 256).unwrap()),
        scale: 1.0,
        out: HeadOut::F16Packed,
    };
    let v = Case {
        name: "g3 v",
        d: 256,
        n_heads: 1,
        norm: HeadNorm::None,
        table: None,
        scale: 1.0,
        out: HeadOut::F16Packed,
    };
    for (pos0, t) in POSITIONS {
        run_case(&q, pos0, t);
        run_case(&k, pos0, t);
    }
    run_case(&v, 3, 3);
}

#[test]
fn gemma4_full_layer_proportional_rope() {
    let mut ff = vec![1.0f32; 64];
    ff.extend(std::iter::repeat_n(1e30f32, 192));
    let rt = RopeTable::with_freq_factors(1e6, 512, &ff).unwrap();
    let q = Case {
        name: "g4 q full",
        d: 512,
        n_heads: 8,
        norm: HeadNorm::Weighted,
        table: Some(rt.clone()),
        scale: 1.0,
        out: HeadOut::F32,
    };
    let k = Case {
        name: "g4 k full",
        d: 512,
        n_heads: 1,
        norm: HeadNorm::Weighted,
        table: Some(rt.clone()),
        scale: 1.0,
        out: HeadOut::F16Packed,
    };
    let v = Case {
        name: "g4 v full",
        d: 512,
        n_heads: 1,
        norm: HeadNorm::Weightless,
        table: None,
        scale: 1.0,
        out: HeadOut::F16Packed,
    };
    for (pos0, t) in POSITIONS {
        run_case(&q, pos0, t);
        run_case(&k, pos0, t);
    }
    run_case(&v, 100, 2);

    // Dims 64–255 and 320–511 must pass through unchanged: bit-equal to the same op without
    // RoPE, while dims 0–63 / 256–319 do rotate.
    let (d, nh, t, pos0) = (512usize, 2usize, 2usize, 32766u32);
    let mut rng = Rng::new(99);
    let x = rng.vec(t * nh * d, 3.0);
    let w: Vec<f32> = rng.vec(d, 1.0).iter().map(|v| v + 1.2).collect();
    let mut table = Vec::new();
    rt.fill(pos0, t, &mut table);
    let mut cfg = HeadPrepConfig::qk(512, nh as u32, 1e-6, 1.0, HeadOut::F32);
    for v in variants() {
        let rotated = run_gpu(&v.ctx, &cfg, &x, &w, &table, t as u32, pos0);
        cfg.rope = false;
        let plain = run_gpu(&v.ctx, &cfg, &x, &w, &table, t as u32, pos0);
        cfg.rope = true;
        for (hd, (r, p)) in rotated.chunks(d).zip(plain.chunks(d)).enumerate() {
            assert_eq!(
                r[64..256],
                p[64..256],
                "head {hd} dims 64..256 [{}]",
                v.name
            );
            assert_eq!(r[320..], p[320..], "head {hd} dims 320..512 [{}]", v.name);
            assert_ne!(r[..64], p[..64], "head {hd} dims 0..64 rotate [{}]", v.name);
        }
    }
}

#[test]
fn gemma4_sliding_layer_and_weightless_v() {
    let q = Case {
        name: "g4 q sliding",
        d: 256,
        n_heads: 8,
        norm: HeadNorm::Weighted,
        table: Some(RopeTable::new(10_000.0, 256).unwrap()),
        scale: 1.0,
        out: HeadOut::F32,
    };
    run_case(&q, 0, 5);
    run_case(&q, 32766, 2);
    let v = Case {
        name: "g4 v sliding",
        d: 256,
        n_heads: 2,
        norm: HeadNorm::Weightless,
        table: None,
        scale: 1.0,
        out: HeadOut::F32,
    };
    run_case(&v, 7, 3);
}

/// Reads the K part of a fused `[q | k | v]` row through `in_stride` / `in_offset`.
#[test]
fn fused_qkv_row() {
    let (d, nq, nkv, t) = (256usize, 4usize, 1usize, 3usize);
    let stride = (nq + 2 * nkv) * d;
    let mut rng = Rng::new(5);
    let x = rng.vec(t * stride, 2.0);
    let w: Vec<f32> = rng.vec(d, 1.0).iter().map(|v| v + 1.2).collect();
    let rt = RopeTable::new(10_000.0, 256).unwrap();
    let mut table = Vec::new();
    rt.fill(40, t, &mut table);
    let k_only: Vec<f32> = x
        .chunks(stride)
        .flat_map(|row| row[nq * d..(nq + nkv) * d].to_vec())
        .collect();
    let want =
        reference::rope::head_prep(&k_only, t, nkv, d, true, Some(&w), 1e-6, Some(&table), 1.0);
    let mut cfg = HeadPrepConfig::qk(d as u32, nkv as u32, 1e-6, 1.0, HeadOut::F32);
    cfg.in_stride = Some(stride as u32);
    cfg.in_offset = (nq * d) as u32;
    for v in variants() {
        let words = run_gpu(&v.ctx, &cfg, &x, &w, &table, t as u32, 40);
        let got: Vec<f32> = words.iter().map(|&b| f32::from_bits(b)).collect();
        assert_close(&format!("fused k [{}]", v.name), &got, &want, ATOL, RTOL);
    }
}

/// `pack2x16float` rounding on this adapter: round-to-nearest-even, ties included.
#[test]
fn f16_packing_is_round_to_nearest_even() {
    let mut rng = Rng::new(11);
    let mut x: Vec<f32> = rng.vec(2048, 50.0);
    // Exact midpoints between adjacent f16 values (ties go to the even mantissa).
    for i in 0..1024u16 {
        let a = f16::from_bits(0x3c00 + i * 7).to_f32();
        let b = f16::from_bits(0x3c00 + i * 7 + 1).to_f32();
        x.push((a + b) / 2.0);
        x.push(-(a + b) / 2.0);
    }
    // Subnormals, just below/above the largest finite value, and zero.
    x.extend([1e-6, -3e-7, 6e-8, 65504.0, 65519.0, -65519.0, 0.0, -0.0]);
    x.resize(x.len().next_multiple_of(256), 0.25);
    let t = (x.len() / 256) as u32;
    let want: Vec<u16> = x.iter().map(|&v| f16::from_f32(v).to_bits()).collect();
    let cfg = HeadPrepConfig::v(256, 1, 1e-6, HeadNorm::None, HeadOut::F16Packed);
    for v in variants() {
        let words = run_gpu(&v.ctx, &cfg, &x, &[], &[], t, 0);
        let got: Vec<u16> = words
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
fn rejects_bad_configs() {
    let ctx = &variants()[0].ctx;
    let b = ctx.storage("b", 4096).unwrap();
    let s = ctx.params_init("s", &StepParams::new(1, 0));
    let io = || HeadPrepIo {
        x: b.as_entire_binding(),
        weight: None,
        rope: None,
        y: b.as_entire_binding(),
        step: s.as_entire_binding(),
    };
    let cfg = HeadPrepConfig::qk(256, 1, 1e-6, 1.0, HeadOut::F32);
    assert!(
        HeadPrep::new(ctx, io(), &cfg).is_err(),
        "missing weight/table"
    );
    let cfg = HeadPrepConfig::v(6, 1, 1e-6, HeadNorm::None, HeadOut::F32);
    assert!(HeadPrep::new(ctx, io(), &cfg).is_err(), "d % 4 != 0");
}

// ---- QkvPrep: the fused Q/K/V preparation + KV-cache store (same tolerances as above) ----

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

/// QkvPrep is HeadPrep's math term for term: on the same adapter its queries and its K/V
/// cache rows are bit-identical to `HeadPrep` (q, k with RoPE, v) followed by the store.
#[test]
fn qkv_prep_equals_head_prep_bitwise() {
    let (d, nq, nkv, t, pos0) = (256u32, 8u32, 2u32, 3u32, 509u32);
    let (du, nkvu, tu) = (d as usize, nkv as usize, t as usize);
    for (kv_f32, v_norm) in [(false, true), (true, false)] {
        let mut cfg = qkv_config(d, nq, nkv, 0.0625, v_norm, kv_f32);
        cfg.cap = 512;
        let row_len = cfg.row_len() as usize;
        let mut rng = Rng::new(1234);
        let qkv = rng.vec(tu * row_len, 4.0);
        let mut norms = vec![0f32; cfg.k_norm_offset as usize + du];
        for w in norms.iter_mut() {
            *w = rng.unit() + 1.2;
        }
        let (q_off, k_off) = (cfg.q_norm_offset as usize, cfg.k_norm_offset as usize);
        let w_q = norms[q_off..q_off + du].to_vec();
        let w_k = norms[k_off..k_off + du].to_vec();
        let mut table = Vec::new();
        RopeTable::new(10_000.0, du)
            .unwrap()
            .fill(pos0, tu, &mut table);
        let kv_out = if kv_f32 {
            HeadOut::F32
        } else {
            HeadOut::F16Packed
        };
        for v in variants() {
            let ctx = &v.ctx;
            let fused = run_qkv(ctx, &cfg, &qkv, &norms, &table, t, pos0);
            let mut q_cfg = HeadPrepConfig::qk(d, nq, 1e-6, 0.0625, HeadOut::F32);
            q_cfg.in_stride = Some(row_len as u32);
            let q = run_gpu(ctx, &q_cfg, &qkv, &w_q, &table, t, pos0);
            let mut k_cfg = HeadPrepConfig::qk(d, nkv, 1e-6, 1.0, kv_out);
            k_cfg.in_stride = Some(row_len as u32);
            k_cfg.in_offset = nq * d;
            let k = run_gpu(ctx, &k_cfg, &qkv, &w_k, &table, t, pos0);
            let norm = if v_norm {
                HeadNorm::Weightless
            } else {
                HeadNorm::None
            };
            let mut v_cfg = HeadPrepConfig::v(d, nkv, 1e-6, norm, kv_out);
            v_cfg.in_stride = Some(row_len as u32);
            v_cfg.in_offset = (nq + nkv) * d;
            let vv = run_gpu(ctx, &v_cfg, &qkv, &[], &table, t, pos0);
            let q_bits: Vec<u32> = fused.q.iter().map(|x| x.to_bits()).collect();
            assert_eq!(q_bits, q, "q [{}]", v.name);
            let words = (nkvu * du) / if kv_f32 { 1 } else { 2 };
            for r in 0..tu {
                let slot = (pos0 as usize + r) % cfg.cap as usize;
                assert_eq!(
                    fused.k[slot * words..][..words],
                    k[r * words..][..words],
                    "k row {r} kv_f32 {kv_f32} [{}]",
                    v.name
                );
                assert_eq!(
                    fused.v[slot * words..][..words],
                    vv[r * words..][..words],
                    "v row {r} kv_f32 {kv_f32} [{}]",
                    v.name
                );
            }
        }
    }
}

/// The f16 cache rounds like `HeadOut::F16Packed`: round-to-nearest-even, ties included, f16
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
