//! HeadPrep (per-head norm + RoPE + scale, f32 or packed-f16 out) against
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

// The shared harness trips this lint under clippy 1.95 (NaN-aware `!(err <= tol)` is deliberate).
mod common;

use common::{assert_close, block, variants, Rng};
use gemma_wgpu::gpu::{GpuContext, Op, StepParams};
use gemma_wgpu::kernels::head_prep::{HeadNorm, HeadOut, HeadPrep, HeadPrepConfig, HeadPrepIo};
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
