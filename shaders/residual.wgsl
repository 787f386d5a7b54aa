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
// reductions' (two rounds: the terms' three sums of squares together, then h's). LEN % 4 == 0
// and every offset is a multiple of 4 (vec4 loads). Precision: f32 throughout.

struct Params {
    h: u32,          // vec4 offset of h's row 0 in the arena
    o1: u32,         // vec4 offsets of o_1 … o_3's row 0 in the arena
    o2: u32,
    o3: u32,
    w1: u32,         // vec4 offsets of w_1 … w_3 and w_next in the norm table
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
const LEN4: u32 = LEN / 4u;
const TERMS: u32 = {{TERMS}}u;

@group(0) @binding(0) var<storage, read_write> arena: array<vec4<f32>>;  // residual arena: rows of LEN f32, token t at +t·LEN
@group(0) @binding(1) var<storage, read> nw: array<vec4<f32>>;           // norm table: [LEN] f32 weights at offsets
#if NEXT
@group(0) @binding(2) var<storage, read_write> y: array<vec4<f32>>;      // [T, LEN] f32 next block's input
#endif
@group(0) @binding(3) var<{{PARAMS}}> p: Params;
@group(0) @binding(4) var<{{PARAMS}}> step: Step;

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
    let r = t * LEN4;
    // The terms' scales: their three sums of squares reduced together.
    var s = vec3<f32>(0.0);
    if TERMS > 0u {
        var ss = vec3<f32>(0.0);
        for (var i = inv.lid; i < LEN4; i += WG) {
            let a = arena[p.o1 + r + i];
            ss.x += dot(a, a);
            if TERMS > 1u {
                let b = arena[p.o2 + r + i];
                ss.y += dot(b, b);
            }
            if TERMS > 2u {
                let c = arena[p.o3 + r + i];
                ss.z += dot(c, c);
            }
        }
        let total = workgroup_sum3(ss, inv, WG);
        s = vec3<f32>(inv_rms(total.x), inv_rms(total.y), inv_rms(total.z));
    }
    var sh = 0.0;
    for (var i = inv.lid; i < LEN4; i += WG) {
        var v = arena[p.h + r + i];
        if TERMS > 0u {
            v = v + arena[p.o1 + r + i] * s.x * nw[p.w1 + i];
            if TERMS > 1u {
                v = v + arena[p.o2 + r + i] * s.y * nw[p.w2 + i];
            }
            if TERMS > 2u {
                v = v + arena[p.o3 + r + i] * s.z * nw[p.w3 + i];
            }
            v = v * p.out_scale;
            arena[p.h + r + i] = v;
        }
        sh += dot(v, v);
    }
#if NEXT
    let sn = inv_rms(workgroup_sum(sh, inv, WG));
    for (var i = inv.lid; i < LEN4; i += WG) {
        y[r + i] = arena[p.h + r + i] * sn * nw[p.wn + i];
    }
#endif
}
