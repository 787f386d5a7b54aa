//! Gemma 4 per-layer-input kernels against their CPU references: `PleCombine` against
//! `reference::ple_combine` (f64), and `LastRowToFront` exactly.
//! Tolerance: atol 1e-5, rtol 1e-5, as for RMSNorm (the same f32 sum of ≤ 256 squares); a
//! scale applied after the norm instead of before, or a missing √P or 2^−0.5, is off by far more.

mod common;

use common::{assert_close, block, variants, Rng};
use gemma_wgpu::gpu::{Op, StepParams};
use gemma_wgpu::kernels::ple::{LastRowToFront, PleCombine, PleCombineIo, PleConfig};
use gemma_wgpu::reference;

fn combine_case(hidden: u32, width: u32, layers: u32, n_tokens: u32) {
    let mut rng = Rng::new((width * 7 + layers) as u64);
    let n = (n_tokens * layers * width) as usize;
    // W_plm·x has norm ≈ √H·|x|: large, as in the model.
    let ctx_in = rng.vec(n, 40.0);
    let tok = rng.vec(n, 0.05);
    let w: Vec<f32> = rng
        .vec(width as usize, 0.5)
        .iter()
        .map(|v| v + 1.0)
        .collect();
    let cfg = PleConfig::gemma4(hidden, width, layers, 1e-6);
    let want = reference::ple_combine(
        &ctx_in,
        &tok,
        &w,
        cfg.eps,
        cfg.ctx_scale,
        cfg.tok_scale,
        cfg.out_scale,
    );
    for v in variants() {
        let ctx = &v.ctx;
        let cb = ctx.storage_init("ctx", &ctx_in).unwrap();
        let tb = ctx.storage_init("tok", &tok).unwrap();
        let wb = ctx.storage_init("w", &w).unwrap();
        let ob = ctx.storage("ple", n as u64 * 4).unwrap();
        let step = StepParams::new(n_tokens, 0);
        let sb = ctx.params_init("step", &step);
        let op = PleCombine::new(
            ctx,
            PleCombineIo {
                ctx: cb.as_entire_binding(),
                tok: tb.as_entire_binding(),
                weight: wb.as_entire_binding(),
                out: ob.as_entire_binding(),
                step: sb.as_entire_binding(),
            },
            &cfg,
        )
        .unwrap();
        block(ctx.run(|pass| op.encode(pass, &step))).unwrap();
        let got: Vec<f32> = block(ctx.read(&ob, 0, n)).unwrap();
        let what = format!("ple_combine P {width} L {layers} T {n_tokens} [{}]", v.name);
        assert_close(&what, &got, &want, 1e-5, 1e-5);
    }
}

#[test]
fn ple_combine_shapes() {
    combine_case(1536, 256, 35, 1); // E2B decode
    combine_case(2560, 256, 42, 3); // E4B, a few prompt rows
    combine_case(128, 64, 6, 5); // tiny test models
}

#[test]
fn last_row_moves_to_the_front() {
    for (len, n_tokens) in [(1536u32, 7u32), (300, 2), (8960, 128), (64, 1)] {
        let mut rng = Rng::new(len as u64 + n_tokens as u64);
        let n = (len * n_tokens) as usize;
        let x = rng.vec(n, 1.0);
        let mut want = x.clone();
        want.copy_within(n - len as usize.., 0);
        for v in variants() {
            let ctx = &v.ctx;
            let xb = ctx.storage_init("x", &x).unwrap();
            let step = StepParams::new(n_tokens, 0);
            let sb = ctx.params_init("step", &step);
            let op = LastRowToFront::new(ctx, xb.as_entire_binding(), sb.as_entire_binding(), len)
                .unwrap();
            block(ctx.run(|pass| op.encode(pass, &step))).unwrap();
            let got: Vec<f32> = block(ctx.read(&xb, 0, n)).unwrap();
            assert_eq!(got, want, "copy_row len {len} T {n_tokens} [{}]", v.name);
        }
    }
}
