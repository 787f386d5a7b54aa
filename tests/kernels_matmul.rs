//! Quantized mat-vec / mat-mat kernels (`kernels::matmul::Matmul`) against the CPU product of
//! the *same* dequantized weights (`quant::dequantize`) with x, accumulated in f64, so the test
//! measures kernel arithmetic, not quantization error.
//!
//! Tolerance (STYLE.md §3.9): `|Δ_i| ≤ 1e-4 · Σ_c |w_ic · x_c| + 1e-6`, for both variants.
//! The kernels dequantize to f32 and accumulate k ≤ 6144 f32 products in per-invocation partial
//! sums and a tree: the rounding error of such a sum is bounded by ~log2(k)·2^-24 ≈ 1e-6 of
//! Σ|w·x| (each partial sum accumulates ≤ k/(8·WG) chunks); 1e-4 leaves two orders of margin yet
//! still catches a single wrong element (|w·x| ≈ Σ|w·x|/k ≥ 1.6e-4·Σ for k ≤ 6144) or a wrong
//! scale. The f16 variant uses the same f32 arithmetic (q·x overflows f16 on Gemma activations),
//! so it is held to the same bound. 1e-6 absolute covers rows whose products cancel exactly.

mod common;

use common::{block, matvec_variants as variants, Rng};
use gemma_wgpu::gguf::GgmlType;
use gemma_wgpu::gpu::{GpuContext, GpuOptions, Op, StepParams};
use gemma_wgpu::kernels::matmul::{Matmul, MatmulIo, MatmulOut, MATVEC_MAX_TOKENS, TYPES};
use gemma_wgpu::kernels::matvec::{Matvec, MatvecIn, MatvecIo, MatvecOut};
use gemma_wgpu::quant::{dequantize, GpuLayout, QuantMatrix};
use gemma_wgpu::reference::quant::{matmul as ref_matmul, synthetic_blocks};

const REL: f64 = 1e-4;
const ABS: f64 = 1e-6;

fn check(what: &str, got: &[f32], want: &[f64], scale: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut bad = Vec::new();
    let mut n_bad = 0;
    let (mut se, mut sw) = (0f64, 0f64);
    for (i, ((&g, &w), &s)) in got.iter().zip(want).zip(scale).enumerate() {
        let err = (g as f64 - w).abs();
        se += err * err;
        sw += w * w;
        if err.is_nan() || err > REL * s + ABS {
            n_bad += 1;
            if bad.len() < 8 {
                bad.push(format!(
                    "  [{i}] got {g} want {w} (err {err:.3e}, Σ|wx| {s:.3e})"
                ));
            }
        }
    }
    assert!(
        n_bad == 0,
        "{what}: {n_bad} mismatches; nmse {:.3e}\n{}",
        se / sw.max(1e-30),
        bad.join("\n")
    );
}

/// k for a "one block" case and a few bigger ones, valid for `ty`.
fn block_k(ty: GgmlType) -> u32 {
    GpuLayout::new("t", ty, 256).unwrap().block_elems()
}

fn weights(ty: GgmlType, k: u32, n: u32, seed: u64) -> Vec<u8> {
    let blocks = (k as u64 * n as u64 / ty.block_elems()) as usize;
    synthetic_blocks(ty, blocks, seed)
}

/// Uploads W, builds one op, and runs it for each entry of `steps` (in order, same op: the
/// step size may change between encodes), checking rows `< n_tokens` against the reference
/// and rows past it untouched.
#[allow(clippy::too_many_arguments)]
fn run_on(
    ctx: &GpuContext,
    vname: &str,
    ty: GgmlType,
    k: u32,
    n: u32,
    steps: &[u32],
    out: MatmulOut,
    min_parts: usize,
) {
    let what = format!("{ty} k {k} n {n} {out:?} [{vname}]");
    let bytes = weights(ty, k, n, k as u64 * 7 + n as u64);
    let w = QuantMatrix::upload(ctx, "w", ty, k, n, &bytes).unwrap();
    assert!(
        w.parts.len() >= min_parts,
        "{what}: {} parts",
        w.parts.len()
    );
    let ratio = w.gpu_bytes() as f64 / w.gguf_bytes() as f64;
    assert!(
        ratio <= 1.1 + 64.0 / w.gguf_bytes() as f64,
        "{what}: GPU/GGUF bytes {ratio}"
    );
    let tmax = *steps.iter().max().unwrap() as usize;
    let (k, n) = (k as usize, n as usize);
    let mut rng = Rng::new(k as u64 * 131 + n as u64);
    let x = rng.vec(tmax * k, 1.0);
    let y0 = rng.vec(tmax * n, 1.0);
    let deq = dequantize(ty, &bytes, k * n).unwrap();
    let (prod, scale) = ref_matmul(&deq, k, n, &x, tmax);

    let xb = ctx.storage_init("x", &x).unwrap();
    let yb = ctx.storage_init("y", &y0).unwrap();
    let sb = ctx.params_init("step", &StepParams::new(1, 0));
    let op = Matmul::new(
        ctx,
        &w,
        MatmulIo::plain(
            xb.as_entire_binding(),
            yb.as_entire_binding(),
            n as u32,
            sb.as_entire_binding(),
        ),
        out,
    )
    .unwrap();
    for &t in steps {
        let step = StepParams::new(t, 0);
        ctx.queue.write_buffer(&yb, 0, bytemuck::cast_slice(&y0));
        ctx.queue.write_buffer(&sb, 0, bytemuck::bytes_of(&step));
        block(ctx.run(|pass| op.encode(pass, &step))).unwrap();
        let got: Vec<f32> = block(ctx.read(&yb, 0, tmax * n)).unwrap();
        let t = t as usize;
        let want: Vec<f64> = match out {
            MatmulOut::Store => prod[..t * n].to_vec(),
            MatmulOut::Accumulate => prod[..t * n]
                .iter()
                .zip(&y0)
                .map(|(p, &y)| p + y as f64)
                .collect(),
        };
        let sc: Vec<f64> = match out {
            MatmulOut::Store => scale[..t * n].to_vec(),
            MatmulOut::Accumulate => scale[..t * n]
                .iter()
                .zip(&y0)
                .map(|(s, &y)| s + y.abs() as f64)
                .collect(),
        };
        check(&format!("{what} n_tokens {t}"), &got[..t * n], &want, &sc);
        assert!(
            got[t * n..] == y0[t * n..],
            "{what} n_tokens {t}: wrote past the step's tokens"
        );
    }
}

fn run(ty: GgmlType, k: u32, n: u32, steps: &[u32], out: MatmulOut) {
    for v in variants() {
        run_on(&v.ctx, v.name, ty, k, n, steps, out, 1);
    }
}

/// Mat-vec (1, 2, 3 tokens) and mat-mat (5, 17, 64) for every type, one-block rows and odd
/// row counts (not multiples of the 4 rows per workgroup or the 64-row tile).
#[test]
fn every_type_small_and_odd_shapes() {
    for ty in TYPES {
        let b = block_k(ty);
        run(ty, b, 7, &[1, 2, 3, 5, 8, 17, 64], MatmulOut::Store);
        let k = if b == 256 { 1024 } else { 640 };
        run(ty, k, 33, &[1, 2, 3, 5, 7, 17, 64], MatmulOut::Store);
    }
}

#[test]
fn every_type_single_row_and_1152() {
    for ty in TYPES {
        let k = if block_k(ty) == 256 { 2048 } else { 1152 };
        run(ty, k, 1, &[1, 3, 5], MatmulOut::Store);
    }
}

#[test]
fn thousand_rows() {
    run(GgmlType::Q4_0, 640, 1000, &[1, 3, 17], MatmulOut::Store);
    run(GgmlType::Q6K, 256, 1000, &[2, 5], MatmulOut::Store);
}

/// Real Gemma shapes: 270M attn_q (ne = [640, 1024], Q5_0 or Q8_0 in the Q4_K_M file),
/// ffn_down (ne = [2048, 640], Q4_K/Q6_K), and a Gemma 4 E2B ffn_down row length (6144, which
/// takes the 128-invocation mat-vec).
#[test]
fn gemma_shapes() {
    run(GgmlType::Q5_0, 640, 1024, &[1, 4, 64], MatmulOut::Store);
    run(GgmlType::Q8_0, 640, 1024, &[1, 17], MatmulOut::Store);
    run(GgmlType::Q4K, 2048, 640, &[1, 64], MatmulOut::Store);
    run(GgmlType::Q6K, 2048, 640, &[1, 3, 17], MatmulOut::Store);
    run(GgmlType::Q4K, 6144, 33, &[1, 2, 5], MatmulOut::Store);
    run(GgmlType::F16, 1536, 70, &[1, 9], MatmulOut::Store);
}

#[test]
fn accumulate_into_y() {
    for ty in [
        GgmlType::Q4K,
        GgmlType::Q8_0,
        GgmlType::BF16,
        GgmlType::Q5_1,
    ] {
        let k = if block_k(ty) == 256 { 512 } else { 640 };
        run(ty, k, 37, &[1, 3, 6, 17], MatmulOut::Accumulate);
    }
}

fn gelu_tanh(x: f64) -> f64 {
    0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh())
}

/// The decode mat-vec with the gated-activation epilogue, `y = gelu_tanh(W·x) ⊙ z`, reading z
/// through a row stride and offset (Gemma 4's per-layer slice). Tolerance: gelu's slope is at
/// most 1.13, so the product's bound (above) times 1.2·|z|, plus exp's few-ulp relative error.
#[test]
fn gelu_mul_epilogue() {
    for v in variants() {
        let ctx = &v.ctx;
        for (ty, k, n) in [
            (GgmlType::Q4_0, 640, 37),
            (GgmlType::Q4K, 1536, 70),
            (GgmlType::Q8_0, 256, 9),
            (GgmlType::F16, 64, 5),
        ] {
            let (z_stride, z_offset) = (3 * n + 5, n + 2);
            let bytes = weights(ty, k, n, 11 + k as u64);
            let w = QuantMatrix::upload(ctx, "w", ty, k, n, &bytes).unwrap();
            let (ku, nu) = (k as usize, n as usize);
            let tmax = MATVEC_MAX_TOKENS as usize;
            let mut rng = Rng::new(5 + k as u64);
            let x = rng.vec(tmax * ku, 1.0);
            let z = rng.vec(tmax * z_stride as usize, 2.0);
            let deq = dequantize(ty, &bytes, ku * nu).unwrap();
            let (prod, scale) = ref_matmul(&deq, ku, nu, &x, tmax);
            let xb = ctx.storage_init("x", &x).unwrap();
            let zb = ctx.storage_init("z", &z).unwrap();
            let yb = ctx.storage_init("y", &vec![0f32; tmax * nu]).unwrap();
            let sb = ctx.params_init("step", &StepParams::new(1, 0));
            let op = Matvec::new(
                ctx,
                &[&w],
                MatvecIn::Buffer {
                    offset: 0,
                    stride: None,
                },
                MatvecOut::GeluZ,
                MATVEC_MAX_TOKENS,
                MatvecIo {
                    x: xb.as_entire_binding(),
                    norms: None,
                    y: yb.as_entire_binding(),
                    y_offset: 0,
                    y_stride: n,
                    z: Some((zb.as_entire_binding(), z_stride, z_offset)),
                    step: sb.as_entire_binding(),
                },
            )
            .unwrap();
            for t in [1u32, 3, 4, 7, 8] {
                let step = StepParams::new(t, 0);
                ctx.queue.write_buffer(&sb, 0, bytemuck::bytes_of(&step));
                block(ctx.run(|pass| op.encode(pass, &step))).unwrap();
                let got: Vec<f32> = block(ctx.read(&yb, 0, t as usize * nu)).unwrap();
                let mut want = Vec::new();
                let mut bound = Vec::new();
                for tt in 0..t as usize {
                    for r in 0..nu {
                        let zv = z[tt * z_stride as usize + z_offset as usize + r] as f64;
                        let g = gelu_tanh(prod[tt * nu + r]);
                        want.push(g * zv);
                        // check() allows REL·s + ABS: express the epilogue's bound that way.
                        let allowed = 1.2 * zv.abs() * (REL * scale[tt * nu + r] + ABS)
                            + 1e-6 * (g * zv).abs();
                        bound.push(((allowed - ABS) / REL).max(0.0));
                    }
                }
                check(
                    &format!("{ty} k {k} n {n} gelu_mul n_tokens {t} [{}]", v.name),
                    &got,
                    &want,
                    &bound,
                );
            }
        }
    }
}

/// The same op encoded with a changing step size, both ways across the mat-vec/mat-mat switch.
#[test]
fn n_tokens_varies_between_encodes() {
    run(
        GgmlType::Q4_1,
        640,
        70,
        &[17, 1, 64, 2, 1, 4, 5, 8, 9, 3],
        MatmulOut::Store,
    );
    run(GgmlType::Q5K, 512, 70, &[3, 33, 1], MatmulOut::Accumulate);
}

/// More than 65535 mat-vec workgroups (262147 rows / 4): the 2-D dispatch path of an LM head.
#[test]
fn lm_head_needs_2d_dispatch() {
    run(GgmlType::Q4_0, 32, 262_147, &[1, 2, 6], MatmulOut::Store);
}

/// A matrix larger than the binding limit is split by rows into several buffers.
#[test]
fn split_across_buffers() {
    for portable in [true, false] {
        let opts = GpuOptions {
            webgpu_default_limits: true,
            disable_f16: portable,
            disable_subgroups: portable,
            max_binding_size: Some(1 << 20),
            backends: Some(wgpu::Backends::VULKAN | wgpu::Backends::METAL | wgpu::Backends::DX12),
            ..Default::default()
        };
        let ctx = block(GpuContext::new(&opts)).unwrap();
        assert_eq!(ctx.caps.max_binding, 1 << 20);
        let name = if portable {
            "portable, 1 MiB"
        } else {
            "full, 1 MiB"
        };
        // 1100 · 1088 B = 1.14 MiB → 2 parts; 5000 · 212 B → 2 parts; 3000 · 680 B → 2 parts.
        run_on(
            &ctx,
            name,
            GgmlType::Q8_0,
            1024,
            1100,
            &[1, 3, 17],
            MatmulOut::Store,
            2,
        );
        run_on(
            &ctx,
            name,
            GgmlType::Q6K,
            256,
            5000,
            &[2, 5],
            MatmulOut::Accumulate,
            2,
        );
        run_on(
            &ctx,
            name,
            GgmlType::F16,
            344,
            3000,
            &[1, 6],
            MatmulOut::Store,
            2,
        );
    }
}

#[test]
fn upload_errors_name_the_tensor() {
    let ctx = &variants()[0].ctx;
    let e = QuantMatrix::upload(ctx, "blk.0.attn_q.weight", GgmlType::Q4K, 640, 2, &[0; 720])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("blk.0.attn_q.weight") && e.contains("256"),
        "{e}"
    );
    let e = QuantMatrix::upload(ctx, "blk.1.ffn_up.weight", GgmlType::Q8_0, 64, 2, &[0; 100])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("blk.1.ffn_up.weight") && e.contains("136 bytes"),
        "{e}"
    );
    let e = QuantMatrix::upload(ctx, "output.weight", GgmlType::Q2K, 256, 1, &[0; 84])
        .unwrap_err()
        .to_string();
    assert!(e.contains("output.weight") && e.contains("Q2_K"), "{e}");
}

/// Throughput on the default adapter (not a correctness test; run on real GPUs with
/// `cargo test --release --no-default-features --test kernels_matmul bench -- --ignored
/// --nocapture`). Reports GGUF-weight GB/s for decode (1 token) and GFLOP/s for a 64-token
/// prefill chunk; each figure is the wall time of
/// `BENCH_REPS` (default 100) dispatches in one pass and one submit,
/// so it includes per-dispatch overhead as a decode step would.
#[test]
#[ignore]
fn bench() {
    let reps: u32 = std::env::var("BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let ctx = block(GpuContext::new(&GpuOptions::default())).unwrap();
    println!("{}", ctx.describe());
    for (k, n) in [(2560u32, 10240u32), (10240, 2560), (640, 65536)] {
        for ty in [
            GgmlType::Q4_0,
            GgmlType::Q8_0,
            GgmlType::Q4K,
            GgmlType::Q6K,
            GgmlType::F16,
        ] {
            if k % block_k(ty) != 0 {
                continue;
            }
            let bytes = weights(ty, k, n, 1);
            let w = QuantMatrix::upload(&ctx, "w", ty, k, n, &bytes).unwrap();
            let x = Rng::new(1).vec(64 * k as usize, 1.0);
            let xb = ctx.storage_init("x", &x).unwrap();
            let yb = ctx.storage("y", 64 * n as u64 * 4).unwrap();
            let sb = ctx.params_init("step", &StepParams::new(1, 0));
            let op = Matmul::new(
                &ctx,
                &w,
                MatmulIo::plain(
                    xb.as_entire_binding(),
                    yb.as_entire_binding(),
                    n,
                    sb.as_entire_binding(),
                ),
                MatmulOut::Store,
            )
            .unwrap();
            let mut line = format!("{ty:5} k {k:5} n {n:5}:");
            for t in [1u32, 64] {
                let step = StepParams::new(t, 0);
                ctx.queue.write_buffer(&sb, 0, bytemuck::bytes_of(&step));
                block(ctx.run(|pass| op.encode(pass, &step))).unwrap();
                let start = std::time::Instant::now();
                block(ctx.run(|pass| {
                    for _ in 0..reps {
                        op.encode(pass, &step);
                    }
                }))
                .unwrap();
                let s = start.elapsed().as_secs_f64() / reps as f64;
                if t == 1 {
                    line += &format!(
                        " decode {:7.1} µs {:7.1} GB/s;",
                        s * 1e6,
                        w.gguf_bytes() as f64 / s / 1e9
                    );
                } else {
                    line += &format!(
                        " prefill64 {:8.1} µs {:8.1} GFLOP/s",
                        s * 1e6,
                        2.0 * 64.0 * k as f64 * n as f64 / s / 1e9
                    );
                }
            }
            println!("{line}");
        }
    }
}
