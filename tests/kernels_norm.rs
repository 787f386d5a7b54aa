//! RMSNorm kernels against `reference::rmsnorm`.
//! Tolerance: atol 1e-5, rtol 1e-5: f32 sums of ≤ 2048 squares lose ~1e-6 relative; a missing
//! weight, eps or +1 is off by orders of magnitude more.

mod common;

use common::{assert_close, block, variants, Rng};
use gemma_wgpu::gpu::StepParams;
use gemma_wgpu::kernels::norm::{NormOut, RmsNorm, RmsNormIo};
use gemma_wgpu::reference;

fn run_case(len: usize, rows_per_token: usize, n_tokens: usize, weighted: bool, out: NormOut) {
    let mut rng = Rng::new(len as u64 * 31 + rows_per_token as u64);
    let n = len * rows_per_token * n_tokens;
    let x = rng.vec(n, 3.0);
    let w: Vec<f32> = rng.vec(len, 1.0).iter().map(|v| v + 1.5).collect();
    let h0 = rng.vec(n, 1.0);
    let normed = reference::rmsnorm(&x, weighted.then_some(&w[..]), len, 1e-6);
    let mut want: Vec<f32> = match out {
        NormOut::Store => normed,
        NormOut::Add => h0.iter().zip(&normed).map(|(a, b)| a + b).collect(),
        NormOut::AddScaled(s) => h0.iter().zip(&normed).map(|(a, b)| (a + b) * s).collect(),
        NormOut::LastRow => {
            // Row 0 gets the last row's norm; the other rows keep their old contents.
            let mut w = h0.clone();
            w[..len].copy_from_slice(&normed[n - len..]);
            w
        }
    };
    want.truncate(n);
    for v in variants() {
        let ctx = &v.ctx;
        let xb = ctx.storage_init("x", &x).unwrap();
        let wb = ctx.storage_init("w", &w).unwrap();
        let yb = ctx.storage_init("y", &h0).unwrap();
        let step = StepParams::new(n_tokens as u32, 0);
        let sb = ctx.params_init("step", &step);
        let op = RmsNorm::new(
            ctx,
            RmsNormIo {
                x: xb.as_entire_binding(),
                weight: weighted.then(|| wb.as_entire_binding()),
                y: yb.as_entire_binding(),
                step: sb.as_entire_binding(),
            },
            len as u32,
            rows_per_token as u32,
            1e-6,
            out,
        )
        .unwrap();
        block(ctx.run(|pass| gemma_wgpu::gpu::Op::encode(&op, pass, &step))).unwrap();
        let got: Vec<f32> = block(ctx.read(&yb, 0, n)).unwrap();
        assert_close(
            &format!(
                "rmsnorm len {len} rows {rows_per_token}x{n_tokens} w {weighted} {out:?} [{}]",
                v.name
            ),
            &got,
            &want,
            1e-5,
            1e-5,
        );
    }
}

#[test]
fn rmsnorm_rows() {
    run_case(640, 1, 3, true, NormOut::Store);
    run_case(1, 1, 1, true, NormOut::Store);
    run_case(257, 1, 5, true, NormOut::Store);
    run_case(2560, 1, 1, true, NormOut::Store);
}

#[test]
fn rmsnorm_per_head_and_weightless() {
    run_case(256, 4, 7, true, NormOut::Store);
    run_case(512, 2, 3, false, NormOut::Store);
}

#[test]
fn rmsnorm_last_row_only() {
    run_case(640, 1, 1, true, NormOut::LastRow);
    run_case(640, 1, 6, true, NormOut::LastRow);
}

#[test]
fn rmsnorm_residual_add() {
    run_case(640, 1, 9, true, NormOut::Add);
    run_case(1536, 1, 1, true, NormOut::Add);
}

/// Gemma 4's last add of a layer, times `layer_output_scale`.
#[test]
fn rmsnorm_residual_add_scaled() {
    run_case(1536, 1, 1, true, NormOut::AddScaled(0.37));
    run_case(640, 1, 9, true, NormOut::AddScaled(1.75));
}
