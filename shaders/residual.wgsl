// The residual stream's update at the end of a block, and the next block's input norm:
//
//   h = (h + Σ_{i < TERMS} rms(o_i) · w_i) · out_scale      (h written back; TERMS ≥ 1)
//   y = rms(h) · w_next                                      (NEXT)
//
// with rms(v) = v / sqrt(mean(v²) + eps) per row of LEN elements. h and the o_i are rows of the
// residual arena (one buffer holding h and the blocks' outputs, each [T, LEN] at its own
// offset), the weights live in the model's norm table. One dispatch does every post-norm a
// decode step deferred (a Gemma layer's post-attention, post-FFN and per-layer-input norms:
// Gemma 4's `out_scale` is the layer scalar, 1 elsewhere, where the multiply is exact) plus the
// next layer's input norm; with TERMS = 0 it is the plain input norm of h.
// The sums are taken in the order of the reference: ((h + t1) + t2) + t3.
//
// Dispatch: one workgroup of WG invocations per token row (split over x/y by gpu::grid); each
// invocation re-reads only elements it wrote itself, so the passes need no barrier beyond the
// reductions'. Precision: f32 throughout.

struct Params {
    h: u32,          // element offset of h's row 0 in the arena
    o1: u32,         // element offsets of o_1 … o_3's row 0 in the arena
    o2: u32,
    o3: u32,
    w1: u32,         // element offsets of w_1 … w_3 and w_next in the norm table
    w2: u32,
    w3: u32,
    wn: u32,
    eps: f32,
    out_scale: f32,
    _pad0: u32,
    _pad1: u32,
}

const WG: u32 = {{WG}}u;
const LEN: u32 = {{LEN}}u;
const TERMS: u32 = {{TERMS}}u;

@group(0) @binding(0) var<storage, read_write> arena: array<f32>;  // residual arena: rows of LEN f32, token t at +t·LEN
@group(0) @binding(1) var<storage, read> nw: array<f32>;           // norm table: [LEN] f32 weights at offsets
#if NEXT
@group(0) @binding(2) var<storage, read_write> y: array<f32>;      // [T, LEN] f32 next block's input
#endif
@group(0) @binding(3) var<storage, read> p: Params;
@group(0) @binding(4) var<storage, read> step: Step;

fn inv_rms(ss: f32) -> f32 {
    return inverseSqrt(ss / f32(LEN) + p.eps);
}

@compute @workgroup_size(WG)
fn main(inv: Invocation, grp: Workgroup) {
    let t = linear_group(grp.wg, grp.nwg);
    // Uniform per workgroup, so the barriers below stay in uniform control flow.
    if t >= step.n_tokens {
        return;
    }
    let r = t * LEN;
    var s1 = 0.0;
    var s2 = 0.0;
    var s3 = 0.0;
    if TERMS > 0u {
        var ss = vec3<f32>(0.0);
        for (var i = inv.lid; i < LEN; i += WG) {
            let a = arena[p.o1 + r + i];
            ss.x += a * a;
            if TERMS > 1u {
                let b = arena[p.o2 + r + i];
                ss.y += b * b;
            }
            if TERMS > 2u {
                let c = arena[p.o3 + r + i];
                ss.z += c * c;
            }
        }
        s1 = inv_rms(workgroup_sum(ss.x, inv, WG));
        if TERMS > 1u {
            s2 = inv_rms(workgroup_sum(ss.y, inv, WG));
        }
        if TERMS > 2u {
            s3 = inv_rms(workgroup_sum(ss.z, inv, WG));
        }
    }
    var sh = 0.0;
    for (var i = inv.lid; i < LEN; i += WG) {
        var v = arena[p.h + r + i];
        if TERMS > 0u {
            v = v + arena[p.o1 + r + i] * s1 * nw[p.w1 + i];
            if TERMS > 1u {
                v = v + arena[p.o2 + r + i] * s2 * nw[p.w2 + i];
            }
            if TERMS > 2u {
                v = v + arena[p.o3 + r + i] * s3 * nw[p.w3 + i];
            }
            v = v * p.out_scale;
            arena[p.h + r + i] = v;
        }
        sh += v * v;
    }
#if NEXT
    let sn = inv_rms(workgroup_sum(sh, inv, WG));
    for (var i = inv.lid; i < LEN; i += WG) {
        y[r + i] = arena[p.h + r + i] * sn * nw[p.wn + i];
    }
#endif
}
