//! The fused forms of the decode mat-vec (`kernels::matvec::Matvec`) against an f64 CPU
//! reference: several matrices of different types in one dispatch (q/k/v), the gate/up pair
//! with its GELU product, the per-layer gate against `z`, the norm prologues that replace a
//! layer's post-norm dispatches, and input/output offsets and strides.
//!
//! Tolerance: as `kernels_matmul.rs`, `|Δ| ≤ 1e-4 · Σ_c |w_rc · x_c| + 1e-6` for a product, with
//! `x` the f64 reference input (a prologue computes `x` in f32: its rounding, ~1e-7 relative,
//! moves the product by far less); through the GELU product the bound is scaled by the
//! epilogue's slope (≤ 1.13) times the other factor, as in `gelu_mul_epilogue`.

mod common;

use common::{block, matvec_variants as variants, Rng};
use gemma_wgpu::gguf::GgmlType;
use gemma_wgpu::gpu::{GpuContext, Op, StepParams};
use gemma_wgpu::kernels::matvec::{
    Matvec, MatvecIn, MatvecIo, MatvecOut, NormTerm, MATVEC_MAX_TOKENS,
};
use gemma_wgpu::quant::{dequantize, QuantMatrix};
use gemma_wgpu::reference::quant::synthetic_blocks;

const REL: f64 = 1e-4;
const ABS: f64 = 1e-6;
const EPS: f32 = 1e-6;

/// A random `[n, k]` matrix of `ty`: uploaded, and dequantized for the reference.
fn matrix(ctx: &GpuContext, ty: GgmlType, k: u32, n: u32, seed: u64) -> (QuantMatrix, Vec<f32>) {
    let blocks = (k as u64 * n as u64 / ty.block_elems()) as usize;
    let bytes = synthetic_blocks(ty, blocks, seed);
    let w = QuantMatrix::upload(ctx, "w", ty, k, n, &bytes).unwrap();
    let deq = dequantize(ty, &bytes, (k * n) as usize).unwrap();
    (w, deq)
}

/// `W·x` for one token and `Σ|w·x|` per row, in f64.
fn product(w: &[f32], k: usize, x: &[f64]) -> (Vec<f64>, Vec<f64>) {
    w.chunks_exact(k)
        .map(|row| {
            row.iter().zip(x).fold((0.0, 0.0), |(s, a), (&wv, &xv)| {
                (s + wv as f64 * xv, a + (wv as f64 * xv).abs())
            })
        })
        .unzip()
}

fn gelu(x: f64) -> f64 {
    0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh())
}

fn rms(v: &[f64]) -> Vec<f64> {
    let ms = v.iter().map(|x| x * x).sum::<f64>() / v.len() as f64;
    let s = 1.0 / (ms + EPS as f64).sqrt();
    v.iter().map(|x| x * s).collect()
}

/// The I/O of a prologue mat-vec: [arena, norms, y, step], `z` at element 3 for GeluZ.
fn prologue_io<'a>(
    [arena, norms, y, step]: [&'a wgpu::Buffer; 4],
    n: u32,
    z: Option<&'a wgpu::Buffer>,
) -> MatvecIo<'a> {
    MatvecIo {
        x: arena.as_entire_binding(),
        norms: Some(norms.as_entire_binding()),
        y: y.as_entire_binding(),
        y_offset: 0,
        y_stride: n,
        z: z.map(|b| (b.as_entire_binding(), 0, 3)),
        step: step.as_entire_binding(),
    }
}

/// Checks `got[i]` against `want[i]` within `REL · bound[i] + ABS`.
fn check(what: &str, got: &[f32], want: &[f64], bound: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let bad: Vec<String> = got
        .iter()
        .zip(want)
        .zip(bound)
        .enumerate()
        .filter(|(_, ((&g, &w), &b))| {
            let err = (g as f64 - w).abs();
            err.is_nan() || err > REL * b + ABS
        })
        .take(8)
        .map(|(i, ((g, w), b))| format!("  [{i}] got {g} want {w} (bound {b:.3e})"))
        .collect();
    assert!(bad.is_empty(), "{what}: mismatches\n{}", bad.join("\n"));
}

/// Runs `op` for a step of `t` tokens and reads `len` floats of `y`.
fn run(
    ctx: &GpuContext,
    op: &Matvec,
    step: &wgpu::Buffer,
    y: &wgpu::Buffer,
    t: u32,
    len: usize,
) -> Vec<f32> {
    let s = StepParams::new(t, 0);
    ctx.queue.write_buffer(step, 0, bytemuck::bytes_of(&s));
    block(ctx.run(|pass| op.encode(pass, &s))).unwrap();
    block(ctx.read(y, 0, len)).unwrap()
}

/// q, k and v of three types in one dispatch, reading x at an offset and writing one
/// `[T, nq + nk + nv]` row range of a wider output: every row lands in its column, nothing
/// outside the range moves.
#[test]
fn three_types_in_one_dispatch() {
    for v in variants() {
        let ctx = &v.ctx;
        for (types, k) in [
            ([GgmlType::Q4K, GgmlType::Q4K, GgmlType::Q6K], 512u32),
            ([GgmlType::Q5_0, GgmlType::Q5_0, GgmlType::Q8_0], 640),
            ([GgmlType::Q4_0, GgmlType::Q8_0, GgmlType::Q4_1], 96),
            ([GgmlType::F16, GgmlType::BF16, GgmlType::F32], 48),
        ] {
            let rows = [24u32, 8, 10];
            let mats: Vec<(QuantMatrix, Vec<f32>)> = types
                .iter()
                .zip(rows)
                .enumerate()
                .map(|(i, (&ty, n))| matrix(ctx, ty, k, n, 7 + i as u64 * 31 + k as u64))
                .collect();
            let total: u32 = rows.iter().sum();
            let (stride, offset) = (total + 9, 5u32); // y columns [5, 5 + total) of 51
            let (x_off, tmax) = (8u32, 6usize);
            let mut rng = Rng::new(k as u64);
            let x = rng.vec(x_off as usize + tmax * k as usize, 1.0);
            let y0 = rng.vec(tmax * stride as usize, 1.0);
            let xb = ctx.storage_init("x", &x).unwrap();
            let yb = ctx.storage_init("y", &y0).unwrap();
            let sb = ctx.params_init("step", &StepParams::new(1, 0));
            let slots: Vec<&QuantMatrix> = mats.iter().map(|(m, _)| m).collect();
            for nt in [1u32, MATVEC_MAX_TOKENS] {
                let op = Matvec::new(
                    ctx,
                    &slots,
                    MatvecIn::Buffer {
                        offset: x_off,
                        stride: None,
                    },
                    MatvecOut::Store,
                    nt,
                    MatvecIo {
                        x: xb.as_entire_binding(),
                        norms: None,
                        y: yb.as_entire_binding(),
                        y_offset: offset,
                        y_stride: stride,
                        z: None,
                        step: sb.as_entire_binding(),
                    },
                )
                .unwrap();
                for t in if nt == 1 { vec![1] } else { vec![3, 6] } {
                    ctx.queue.write_buffer(&yb, 0, bytemuck::cast_slice(&y0));
                    let got = run(ctx, &op, &sb, &yb, t, tmax * stride as usize);
                    let mut want: Vec<f64> = y0.iter().map(|&v| v as f64).collect();
                    let mut bound = vec![0.0; want.len()];
                    for tt in 0..t as usize {
                        let xt: Vec<f64> = x[x_off as usize + tt * k as usize..][..k as usize]
                            .iter()
                            .map(|&v| v as f64)
                            .collect();
                        let mut col = offset as usize;
                        for (_, deq) in &mats {
                            let (p, b) = product(deq, k as usize, &xt);
                            for (r, (pv, bv)) in p.iter().zip(&b).enumerate() {
                                want[tt * stride as usize + col + r] = *pv;
                                bound[tt * stride as usize + col + r] = *bv;
                            }
                            col += p.len();
                        }
                    }
                    check(
                        &format!("{types:?} k {k} nt {nt} t {t} [{}]", v.name),
                        &got,
                        &want,
                        &bound,
                    );
                }
            }
        }
    }
}

/// gelu(gate·x) ⊙ (up·x) from two matrices in one dispatch, rows not a multiple of 4.
#[test]
fn gate_up_pair() {
    for v in variants() {
        let ctx = &v.ctx;
        for (ty, k, n) in [
            (GgmlType::Q4_0, 640u32, 37u32),
            (GgmlType::Q4K, 1536, 70),
            (GgmlType::Q6K, 256, 9),
            (GgmlType::F16, 64, 5),
        ] {
            let (g, gd) = matrix(ctx, ty, k, n, 3 + k as u64);
            let (u, ud) = matrix(ctx, ty, k, n, 4 + k as u64);
            let mut rng = Rng::new(9 + k as u64);
            let tmax = MATVEC_MAX_TOKENS;
            let x = rng.vec((tmax * k) as usize, 1.0);
            let xb = ctx.storage_init("x", &x).unwrap();
            let yb = ctx.storage("y", (tmax * n) as u64 * 4).unwrap();
            let sb = ctx.params_init("step", &StepParams::new(1, 0));
            let op = Matvec::new(
                ctx,
                &[&g, &u],
                MatvecIn::Buffer {
                    offset: 0,
                    stride: None,
                },
                MatvecOut::GeluPair,
                tmax,
                MatvecIo {
                    x: xb.as_entire_binding(),
                    norms: None,
                    y: yb.as_entire_binding(),
                    y_offset: 0,
                    y_stride: n,
                    z: None,
                    step: sb.as_entire_binding(),
                },
            )
            .unwrap();
            for t in [1u32, 2, 4, 5, 8] {
                let got = run(ctx, &op, &sb, &yb, t, (t * n) as usize);
                let (mut want, mut bound) = (Vec::new(), Vec::new());
                for tt in 0..t as usize {
                    let xt: Vec<f64> = x[tt * k as usize..][..k as usize]
                        .iter()
                        .map(|&v| v as f64)
                        .collect();
                    let (pg, bg) = product(&gd, k as usize, &xt);
                    let (pu, bu) = product(&ud, k as usize, &xt);
                    for r in 0..n as usize {
                        want.push(gelu(pg[r]) * pu[r]);
                        // |Δ(gelu(a)·b)| ≤ 1.13·|Δa|·|b| + |gelu(a)|·|Δb|
                        let e = 1.2 * (REL * bg[r] + ABS) * pu[r].abs()
                            + gelu(pg[r]).abs() * (REL * bu[r] + ABS);
                        bound.push(e / REL);
                    }
                }
                check(
                    &format!("{ty} k {k} n {n} pair t {t} [{}]", v.name),
                    &got,
                    &want,
                    &bound,
                );
            }
        }
    }
}

/// The prologues: Gemma's FFN input `rms(h + rms(o)·w1)·wn` into the gate/up pair, Gemma 4's
/// per-layer-gate input `h + rms(o1)·w1 + rms(o2)·w2` into `gelu(W·x) ⊙ z`, and both terms with
/// a norm into a matrix whose workgroups take several row groups each.
#[test]
fn norm_prologues() {
    for v in variants() {
        let ctx = &v.ctx;
        let (k, n, t_rows) = (256u32, 36u32, 3usize);
        let ku = k as usize;
        let mut rng = Rng::new(77);
        // Arena rows: h, then o1, o2 at the same row stride (as the model lays them out).
        let stride = 3 * k;
        let arena = rng.vec(t_rows * stride as usize, 2.0);
        let norms = rng.vec(3 * ku, 1.0);
        let ab = ctx.storage_init("arena", &arena).unwrap();
        let nb = ctx.storage_init("norms", &norms).unwrap();
        let z = rng.vec(n as usize + 3, 1.0);
        // Leaked: the closure below hands out one lifetime for every buffer.
        let zb: &'static wgpu::Buffer = Box::leak(Box::new(ctx.storage_init("z", &z).unwrap()));
        let yb = ctx.storage("y", n as u64 * 4).unwrap();
        let sb = ctx.params_init("step", &StepParams::new(1, 0));
        let (g, gd) = matrix(ctx, GgmlType::Q4K, k, n, 1);
        let (u, ud) = matrix(ctx, GgmlType::Q4K, k, n, 2);
        let row = |r: usize, off: usize| -> Vec<f64> {
            arena[r * stride as usize + off..][..ku]
                .iter()
                .map(|&v| v as f64)
                .collect()
        };
        let weight =
            |i: usize| -> Vec<f64> { norms[i * ku..][..ku].iter().map(|&v| v as f64).collect() };
        let term = |o: &[f64], w: &[f64]| -> Vec<f64> {
            rms(o).iter().zip(w).map(|(a, b)| a * b).collect()
        };
        let io = |z: Option<&'static wgpu::Buffer>| prologue_io([&ab, &nb, &yb, &sb], n, z);
        let t1 = NormTerm {
            offset: k,
            weight: 0,
        };
        let t2 = NormTerm {
            offset: 2 * k,
            weight: k,
        };

        // 1. FFN input into the gate/up pair (row 0 of a 3-row step).
        let op = Matvec::new(
            ctx,
            &[&g, &u],
            MatvecIn::Prologue {
                h: 0,
                terms: [Some(t1), None],
                norm: Some(2 * k),
                eps: EPS,
            },
            MatvecOut::GeluPair,
            1,
            io(None),
        )
        .unwrap();
        let got = run(ctx, &op, &sb, &yb, t_rows as u32, n as usize);
        let h1: Vec<f64> = row(0, 0)
            .iter()
            .zip(term(&row(0, ku), &weight(0)))
            .map(|(a, b)| a + b)
            .collect();
        let x: Vec<f64> = term(&h1, &weight(2));
        let (pg, bg) = product(&gd, ku, &x);
        let (pu, bu) = product(&ud, ku, &x);
        let want: Vec<f64> = pg.iter().zip(&pu).map(|(a, b)| gelu(*a) * b).collect();
        let bound: Vec<f64> = (0..n as usize)
            .map(|r| {
                (1.2 * (REL * bg[r] + ABS) * pu[r].abs() + gelu(pg[r]).abs() * (REL * bu[r] + ABS))
                    / REL
            })
            .collect();
        check(&format!("ffn prologue [{}]", v.name), &got, &want, &bound);

        // 2. Two terms, no norm, into gelu(W·x) ⊙ z (z from element 3).
        let op = Matvec::new(
            ctx,
            &[&g],
            MatvecIn::Prologue {
                h: 0,
                terms: [Some(t1), Some(t2)],
                norm: None,
                eps: EPS,
            },
            MatvecOut::GeluZ,
            1,
            io(Some(zb)),
        )
        .unwrap();
        let got = run(ctx, &op, &sb, &yb, 1, n as usize);
        let x: Vec<f64> = row(0, 0)
            .iter()
            .zip(term(&row(0, ku), &weight(0)))
            .zip(term(&row(0, 2 * ku), &weight(1)))
            .map(|((a, b), c)| a + b + c)
            .collect();
        let (pg, bg) = product(&gd, ku, &x);
        let want: Vec<f64> = (0..n as usize)
            .map(|r| gelu(pg[r]) * z[3 + r] as f64)
            .collect();
        let bound: Vec<f64> = (0..n as usize)
            .map(|r| 1.2 * (REL * bg[r] + ABS) * (z[3 + r] as f64).abs() / REL)
            .collect();
        check(&format!("ple prologue [{}]", v.name), &got, &want, &bound);

        // 3. Two terms and a norm into a matrix tall enough that each workgroup takes
        // several row groups (its prologue is not repeated per 4 rows), computed at once by
        // lane groups; 33,000 rows leave the last workgroup with lane groups past the end.
        let tall = 33000u32;
        let (big, bigd) = matrix(ctx, GgmlType::Q8_0, k, tall, 5);
        let yb2 = ctx.storage("y2", tall as u64 * 4).unwrap();
        let op = Matvec::new(
            ctx,
            &[&big],
            MatvecIn::Prologue {
                h: 0,
                terms: [Some(t1), Some(t2)],
                norm: Some(2 * k),
                eps: EPS,
            },
            MatvecOut::Store,
            1,
            prologue_io([&ab, &nb, &yb2, &sb], tall, None),
        )
        .unwrap();
        let got = run(ctx, &op, &sb, &yb2, 1, tall as usize);
        let h2: Vec<f64> = row(0, 0)
            .iter()
            .zip(term(&row(0, ku), &weight(0)))
            .zip(term(&row(0, 2 * ku), &weight(1)))
            .map(|((a, b), c)| a + b + c)
            .collect();
        let x = term(&h2, &weight(2));
        let (p, b) = product(&bigd, ku, &x);
        check(&format!("norm prologue [{}]", v.name), &got, &p, &b);
    }
}

/// Combinations the kernel cannot run are refused with the reason, not run wrongly.
#[test]
fn refuses_what_it_cannot_fuse() {
    let ctx = &variants()[0].ctx;
    let (a, _) = matrix(ctx, GgmlType::Q4_0, 64, 6, 1);
    let (b, _) = matrix(ctx, GgmlType::Q4_0, 64, 8, 2);
    let (c, _) = matrix(ctx, GgmlType::Q4_0, 96, 8, 3);
    let (f, _) = matrix(ctx, GgmlType::F16, 64, 8, 4);
    let buffer = MatvecIn::Buffer {
        offset: 0,
        stride: None,
    };
    // A slot whose rows are not a multiple of a workgroup's 4 rows before another slot.
    assert!(!Matvec::fuses(&[&a, &b], buffer, MatvecOut::Store));
    assert!(Matvec::fuses(&[&b, &a], buffer, MatvecOut::Store));
    // Different row lengths, different unit sizes, unequal gate/up.
    assert!(!Matvec::fuses(&[&b, &c], buffer, MatvecOut::Store));
    assert!(!Matvec::fuses(&[&b, &f], buffer, MatvecOut::Store));
    assert!(!Matvec::fuses(&[&a, &b], buffer, MatvecOut::GeluPair));
    assert!(!Matvec::fuses(&[&b], buffer, MatvecOut::GeluPair));
    // An input offset that is not a whole vec4.
    let odd = MatvecIn::Buffer {
        offset: 2,
        stride: None,
    };
    assert!(!Matvec::fuses(&[&b], odd, MatvecOut::Store));
}
