//! RMSNorm and the residual update against `reference::rmsnorm`.
//! Tolerance: atol 1e-5, rtol 1e-5: f32 sums of ≤ 2048 squares lose ~1e-6 relative; a missing
//! weight, eps, term or scale is off by orders of magnitude more.

mod common;

use common::{assert_close, block, variants, Rng};
use gemma_wgpu::gpu::StepParams;
use gemma_wgpu::kernels::norm::{
    NormOut, Residual, ResidualConfig, ResidualIo, RmsNorm, RmsNormIo, Term,
};
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

/// `h = (h + Σ rms(o_i)·w_i)·s` over 0 to 3 terms read from an arena, then (optionally) the
/// next input norm `y = rms(h)·w_next`; rows per token, weights at offsets of one table.
fn residual_case(len: usize, n_tokens: usize, terms: usize, scale: f32, next: bool) {
    let mut rng = Rng::new(len as u64 * 7 + terms as u64);
    let n = len * n_tokens;
    // Arena: 4 slots of [n_tokens, len]: h, then the terms' outputs.
    let arena = rng.vec(4 * n, 2.0);
    let table: Vec<f32> = rng.vec(4 * len, 1.0).iter().map(|v| v + 1.2).collect();
    let mut h: Vec<f32> = arena[..n].to_vec();
    for i in 0..terms {
        let o = &arena[(i + 1) * n..(i + 2) * n];
        let normed = reference::rmsnorm(o, Some(&table[i * len..(i + 1) * len]), len, 1e-6);
        for (a, b) in h.iter_mut().zip(&normed) {
            *a += b;
        }
    }
    if terms > 0 {
        h.iter_mut().for_each(|v| *v *= scale);
    }
    let want_y = reference::rmsnorm(&h, Some(&table[3 * len..]), len, 1e-6);
    for v in variants() {
        let ctx = &v.ctx;
        let ab = ctx.storage_init("arena", &arena).unwrap();
        let tb = ctx.storage_init("norms", &table).unwrap();
        let yb = ctx.storage("y", n as u64 * 4).unwrap();
        let step = StepParams::new(n_tokens as u32, 0);
        let sb = ctx.params_init("step", &step);
        let op = Residual::new(
            ctx,
            ResidualIo {
                arena: ab.as_entire_binding(),
                norms: tb.as_entire_binding(),
                y: next.then(|| yb.as_entire_binding()),
                step: sb.as_entire_binding(),
            },
            &ResidualConfig {
                len: len as u32,
                h: 0,
                terms: (0..terms)
                    .map(|i| Term {
                        o: ((i + 1) * n) as u32,
                        w: (i * len) as u32,
                    })
                    .collect(),
                out_scale: scale,
                next: next.then_some(3 * len as u32),
                eps: 1e-6,
            },
        )
        .unwrap();
        block(ctx.run(|pass| gemma_wgpu::gpu::Op::encode(&op, pass, &step))).unwrap();
        let what = format!(
            "residual len {len} x{n_tokens} terms {terms} next {next} [{}]",
            v.name
        );
        let got_h: Vec<f32> = block(ctx.read(&ab, 0, n)).unwrap();
        assert_close(&format!("{what}: h"), &got_h, &h, 1e-5, 1e-5);
        if next {
            let got_y: Vec<f32> = block(ctx.read(&yb, 0, n)).unwrap();
            assert_close(&format!("{what}: y"), &got_y, &want_y, 1e-5, 1e-5);
        }
    }
}

#[test]
fn residual_terms_and_next_norm() {
    residual_case(640, 9, 1, 1.0, true);
    residual_case(1536, 1, 2, 1.0, true);
    residual_case(256, 3, 2, 1.0, false);
}

/// Gemma 4's end of a layer: three deferred post-norms times `layer_output_scale`; and the
/// plain input norm (no term).
#[test]
fn residual_scaled_and_norm_only() {
    residual_case(1536, 1, 3, 0.37, true);
    residual_case(640, 5, 3, 1.75, false);
    residual_case(640, 4, 0, 1.0, true);
}
