//! Embedding gather (`kernels::embed::Embed`) against `quant::dequantize` of the same table
//! times the scale.
//!
//! Tolerance: `|Δ| ≤ 2.5e-7 · max|row| + 1e-30` per element. The kernel computes the same f32
//! operations as the CPU dequantizer, so most types match exactly; where a type adds a min
//! (`d·q + m`, `(d·sc)·q − dmin·m`) the shader compiler may contract it into an fma, which
//! changes the result by at most one rounding of the largest term (≤ 2^-23 · max|term|, and the
//! terms are bounded by the row's magnitude up to a small factor). A wrong row, element or scale
//! is off by far more.

mod common;

use common::{block, variants, Rng};
use gemma_wgpu::gguf::GgmlType;
use gemma_wgpu::gpu::{GpuContext, GpuOptions, Op, StepParams};
use gemma_wgpu::kernels::embed::{Embed, EmbedIo};
use gemma_wgpu::kernels::matmul::TYPES;
use gemma_wgpu::quant::{dequantize, GpuLayout, QuantMatrix};
use gemma_wgpu::reference::quant::synthetic_blocks;

const SENTINEL: f32 = -12345.0;

fn run_on(
    ctx: &GpuContext,
    vname: &str,
    ty: GgmlType,
    k: u32,
    n: u32,
    steps: &[u32],
    min_parts: usize,
) {
    let what = format!("embed {ty} k {k} n {n} [{vname}]");
    let blocks = (k as u64 * n as u64 / ty.block_elems()) as usize;
    let bytes = synthetic_blocks(ty, blocks, k as u64 + 3 * n as u64);
    let table = QuantMatrix::upload(ctx, "token_embd.weight", ty, k, n, &bytes).unwrap();
    assert!(
        table.parts.len() >= min_parts,
        "{what}: {} parts",
        table.parts.len()
    );
    let deq = dequantize(ty, &bytes, k as usize * n as usize).unwrap();
    let scale = 25.25f32;
    let tmax = *steps.iter().max().unwrap() as usize;
    let k = k as usize;
    let mut rng = Rng::new(n as u64);
    // First and last rows, repeats, and one id past the table (must write nothing).
    let mut tokens: Vec<u32> = (0..tmax).map(|_| rng.below(n as u64) as u32).collect();
    tokens[0] = n - 1;
    if tmax > 2 {
        tokens[1] = 0;
        tokens[2] = n;
    }
    if tmax > 3 {
        tokens[3] = tokens[0];
    }
    let tb = ctx.storage_init("tokens", &tokens).unwrap();
    let h0 = vec![SENTINEL; tmax * k];
    let hb = ctx.storage_init("h", &h0).unwrap();
    let sb = ctx.params_init("step", &StepParams::new(1, 0));
    let op = Embed::new(
        ctx,
        &table,
        EmbedIo {
            tokens: tb.as_entire_binding(),
            out: hb.as_entire_binding(),
            step: sb.as_entire_binding(),
        },
        scale,
    )
    .unwrap();
    for &t in steps {
        let step = StepParams::new(t, 0);
        ctx.queue.write_buffer(&hb, 0, bytemuck::cast_slice(&h0));
        ctx.queue.write_buffer(&sb, 0, bytemuck::bytes_of(&step));
        block(ctx.run(|pass| op.encode(pass, &step))).unwrap();
        let got: Vec<f32> = block(ctx.read(&hb, 0, tmax * k)).unwrap();
        for (ti, &tok) in tokens.iter().enumerate() {
            let row = &got[ti * k..(ti + 1) * k];
            if ti >= t as usize || tok >= n {
                assert!(
                    row.iter().all(|&v| v == SENTINEL),
                    "{what} n_tokens {t}: row {ti} (token {tok}) should be untouched"
                );
                continue;
            }
            let want: Vec<f32> = deq[tok as usize * k..(tok as usize + 1) * k]
                .iter()
                .map(|v| v * scale)
                .collect();
            let max = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (c, (&g, &w)) in row.iter().zip(&want).enumerate() {
                assert!(
                    (g - w).abs() <= 2.5e-7 * max + 1e-30,
                    "{what} n_tokens {t}: token {tok} [{c}] got {g} want {w}"
                );
            }
        }
    }
}

#[test]
fn every_type() {
    for v in variants() {
        for ty in TYPES {
            let b = GpuLayout::new("t", ty, 256).unwrap().block_elems();
            run_on(&v.ctx, v.name, ty, b, 50, &[1, 3, 17], 1);
            let k = if b == 256 { 1024 } else { 640 };
            run_on(&v.ctx, v.name, ty, k, 37, &[5, 2], 1);
        }
    }
}

/// Wider rows than one workgroup covers (k / 8 > 64 chunks, several groups per token). (A 2-D
/// embed dispatch needs > 65535 · 512 output floats, more than one 128 MiB binding holds, so
/// it cannot occur under WebGPU's default limits; `gpu::grid` is used anyway.)
#[test]
fn wide_rows_and_many_tokens() {
    for v in variants() {
        run_on(&v.ctx, v.name, GgmlType::Q6K, 2048, 20, &[3], 1);
        run_on(&v.ctx, v.name, GgmlType::Q8_0, 1152, 20, &[1, 64], 1);
        run_on(&v.ctx, v.name, GgmlType::Q4_0, 2048, 10, &[200], 1);
    }
}

/// A table split across buffers: each token's row comes from the part that holds it.
#[test]
fn split_table() {
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
        let name = if portable {
            "portable, 1 MiB"
        } else {
            "full, 1 MiB"
        };
        // 2000 rows · 680 B = 1.3 MiB → 2 parts; 4000 · 576 B → 3 parts.
        run_on(&ctx, name, GgmlType::Q8_0, 640, 2000, &[1, 17], 2);
        run_on(&ctx, name, GgmlType::Q4K, 1024, 4000, &[33], 3);
    }
}
