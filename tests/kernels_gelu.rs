//! GeluMul (`a = gelu_tanh(gate) ⊙ up`) against `reference::gelu` (f64).
//! Tolerance: atol 1e-6, rtol 2e-5 (STYLE §3.9 elementwise row, rtol measured then given 2×
//! headroom): WGSL's `exp` may be off by a few ulp times |x|, which is the only error source in
//! `x / (1 + exp(−2u))`. A tanh that overflows to NaN, or a missing 0.044715·x³ term, fails by
//! far more.

// The shared harness trips this lint under clippy 1.95 (NaN-aware `!(err <= tol)` is deliberate).
mod common;

use common::{assert_close, block, variants, Rng};
use gemma_wgpu::gpu::{GpuContext, Op, StepParams};
use gemma_wgpu::kernels::gelu::{GeluMul, GeluMulIo};
use gemma_wgpu::reference;

const ATOL: f32 = 1e-6;
const RTOL: f32 = 2e-5;

/// Runs GeluMul on separate gate/up buffers of `[n_tokens, width]`.
fn run_gpu(ctx: &GpuContext, gate: &[f32], up: &[f32], width: u32, n_tokens: u32) -> Vec<f32> {
    let gb = ctx.storage_init("gate", gate).unwrap();
    let ub = ctx.storage_init("up", up).unwrap();
    let n = (width * n_tokens) as usize;
    let ab = ctx.storage("a", n as u64 * 4).unwrap();
    let step = StepParams::new(n_tokens, 0);
    let sb = ctx.params_init("step", &step);
    let op = GeluMul::new(
        ctx,
        GeluMulIo {
            gate: gb.as_entire_binding(),
            up: ub.as_entire_binding(),
            out: ab.as_entire_binding(),
            step: sb.as_entire_binding(),
        },
        width,
        None,
    )
    .unwrap();
    block(ctx.run(|pass| op.encode(pass, &step))).unwrap();
    block(ctx.read(&ab, 0, n)).unwrap()
}

fn rel_err(got: &[f32], want: &[f32]) -> f32 {
    got.iter()
        .zip(want)
        .map(|(g, w)| (g - w).abs() / w.abs().max(1e-3))
        .fold(0.0, f32::max)
}

fn run_case(width: u32, n_tokens: u32, scale: f32) {
    let mut rng = Rng::new(width as u64 * 13 + n_tokens as u64);
    let n = (width * n_tokens) as usize;
    let gate = rng.vec(n, scale);
    let up = rng.vec(n, 2.0);
    let want = reference::gelu::gelu_mul(&gate, &up);
    for v in variants() {
        let got = run_gpu(&v.ctx, &gate, &up, width, n_tokens);
        let what = format!("gelu_mul I {width} T {n_tokens} [{}]", v.name);
        assert_close(&what, &got, &want, ATOL, RTOL);
        eprintln!("{what}: max rel err {:.2e}", rel_err(&got, &want));
    }
}

#[test]
fn gemma_widths() {
    run_case(2048, 3, 4.0); // Gemma 3 270M
    run_case(6912, 1, 4.0); // Gemma 3 1B
    run_case(6144, 2, 6.0); // Gemma 4 E2B
    run_case(12288, 1, 6.0); // Gemma 4 E2B, double-wide layers
    run_case(1000, 5, 3.0); // not a multiple of the workgroup size
}

/// |x| up to 100: no NaN or inf from tanh overflow, exact limits gelu(x) → x and → 0.
#[test]
fn large_and_special_inputs() {
    let mut gate: Vec<f32> = vec![
        0.0, -0.0, 1e-30, -1e-30, 1e-7, -1e-7, 0.5, -0.5, 3.0, -3.0, 5.0, -5.0, 9.9, -9.9, 10.0,
        -10.0, 10.6, -10.6, 20.0, -20.0, 50.0, -50.0, 99.0, -99.0, 100.0, -100.0,
    ];
    let mut rng = Rng::new(3);
    gate.extend(rng.vec(998, 100.0));
    let up: Vec<f32> = (0..gate.len())
        .map(|i| 1.0 + (i % 7) as f32 * 0.25)
        .collect();
    let width = gate.len() as u32;
    let want = reference::gelu::gelu_mul(&gate, &up);
    for v in variants() {
        let got = run_gpu(&v.ctx, &gate, &up, width, 1);
        assert!(got.iter().all(|g| g.is_finite()), "[{}] non-finite", v.name);
        assert_close(&format!("gelu large [{}]", v.name), &got, &want, ATOL, RTOL);
        for (i, &x) in gate.iter().enumerate() {
            if x >= 10.0 {
                assert_eq!(got[i], x * up[i], "gelu({x}) = x exactly [{}]", v.name);
            }
        }
    }
}

/// A fused `[gate | up]` row read through `in_stride` and an offset binding.
#[test]
fn fused_gate_up_rows() {
    let (width, t) = (2048u32, 3u32);
    let mut rng = Rng::new(17);
    let fused = rng.vec((2 * width * t) as usize, 3.0);
    let (mut gate, mut up) = (Vec::new(), Vec::new());
    for row in fused.chunks(2 * width as usize) {
        gate.extend_from_slice(&row[..width as usize]);
        up.extend_from_slice(&row[width as usize..]);
    }
    let want = reference::gelu::gelu_mul(&gate, &up);
    for v in variants() {
        let ctx = &v.ctx;
        let fb = ctx.storage_init("fused", &fused).unwrap();
        let n = (width * t) as usize;
        let ab = ctx.storage("a", n as u64 * 4).unwrap();
        let step = StepParams::new(t, 0);
        let sb = ctx.params_init("step", &step);
        let op = GeluMul::new(
            ctx,
            GeluMulIo {
                gate: fb.as_entire_binding(),
                up: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: &fb,
                    offset: width as u64 * 4,
                    size: None,
                }),
                out: ab.as_entire_binding(),
                step: sb.as_entire_binding(),
            },
            width,
            Some(2 * width),
        )
        .unwrap();
        block(ctx.run(|pass| op.encode(pass, &step))).unwrap();
        let got: Vec<f32> = block(ctx.read(&ab, 0, n)).unwrap();
        assert_close(&format!("gelu fused [{}]", v.name), &got, &want, ATOL, RTOL);
    }
}

/// More than 65535 workgroups: the dispatch is split over x and y by `gpu::grid`.
#[test]
fn two_dimensional_dispatch() {
    let (width, t) = (12288u32, 1400u32); // 67,200 workgroups of 256
    let mut rng = Rng::new(23);
    let n = (width * t) as usize;
    let gate = rng.vec(n, 4.0);
    let up = rng.vec(n, 1.0);
    let want = reference::gelu::gelu_mul(&gate, &up);
    let v = &variants()[0];
    let got = run_gpu(&v.ctx, &gate, &up, width, t);
    assert_close("gelu 2D dispatch", &got, &want, ATOL, RTOL);
}

/// Gemma 4's PLE gate: `gelu(W_inp_gate·h)[t] ⊙ ple[t, l, :]`, the `up` rows read from layer
/// `l`'s slice of the `[T, L·P]` per-layer inputs (`up_stride = L·P`, `up_offset = l·P`).
#[test]
fn per_layer_input_rows() {
    let (width, layers, t) = (64u32, 5u32, 3u32);
    let mut rng = Rng::new(29);
    let gate = rng.vec((width * t) as usize, 3.0);
    let ple = rng.vec((width * layers * t) as usize, 2.0);
    for l in [0u32, 3, 4] {
        let up: Vec<f32> = ple
            .chunks((width * layers) as usize)
            .flat_map(|row| row[(l * width) as usize..((l + 1) * width) as usize].to_vec())
            .collect();
        let want = reference::gelu::gelu_mul(&gate, &up);
        for v in variants() {
            let ctx = &v.ctx;
            let gb = ctx.storage_init("gate", &gate).unwrap();
            let pb = ctx.storage_init("ple", &ple).unwrap();
            let n = (width * t) as usize;
            let ab = ctx.storage("a", n as u64 * 4).unwrap();
            let step = StepParams::new(t, 0);
            let sb = ctx.params_init("step", &step);
            let op = GeluMul::with_up_rows(
                ctx,
                GeluMulIo {
                    gate: gb.as_entire_binding(),
                    up: pb.as_entire_binding(),
                    out: ab.as_entire_binding(),
                    step: sb.as_entire_binding(),
                },
                width,
                width,
                width * layers,
                width * l,
            )
            .unwrap();
            block(ctx.run(|pass| op.encode(pass, &step))).unwrap();
            let got: Vec<f32> = block(ctx.read(&ab, 0, n)).unwrap();
            assert_close(
                &format!("gelu ple layer {l} [{}]", v.name),
                &got,
                &want,
                ATOL,
                RTOL,
            );
        }
    }
}
