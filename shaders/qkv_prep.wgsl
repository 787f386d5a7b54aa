// Q/K/V preparation and KV-cache store of one layer in one dispatch, from the fused projection
// output (per token: nq query heads, then nkv key heads, then nkv value heads, d floats each):
//
//   queries: q_out[t, h]            = rope(rms(q)·w_q) · q_scale             f32
//   keys:    k_cache[slot(t), g]    = rope(rms(k)·w_k)                       f16 pairs or f32
//   values:  v_cache[slot(t), g]    = v (v_norm = 0, Gemma 3) or rms(v) (1, Gemma 4)
//   slot(t) = (pos0 + t) % cap
//
// with rms(x) = x · inverseSqrt(mean(x²) + eps) and half-split RoPE from the step's CPU-built
// table rope[t, i] = (cos, sin) (src/rope.rs): out[i] = x[i]·cos_i − x[i+d/2]·sin_i,
// out[i+d/2] = x[i+d/2]·cos_i + x[i]·sin_i. The shader never evaluates sin/cos (WGSL gives no
// accuracy for large angles). The arithmetic is reference::rope::head_prep's, term for term.
//
// Why one dispatch: per-projection preps and a separate store would be four dependent
// dispatches per layer (≈ 2 µs each at the floor on an H100); writing K/V straight into the
// cache also lets attention read every key from one place.
//
// Dispatch: one workgroup of WG invocations per (token, head), T·heads workgroups split over x/y
// by gpu::grid, heads = nq + 2·nkv (nq when the layer stores no K/V: a Gemma 4 KV-shared layer,
// whose cache bindings are then never touched). Head kind is uniform per workgroup. Each
// invocation owns adjacent output pairs (2m, 2m+1), so an f16 cache row is written as whole
// u32 words with no workgroup memory beyond the norm's reduction.
// Rows t with T − t > cap would be overwritten by a later row of the same step: they are not
// stored (no two workgroups write one slot).
// Assumptions: d % 4 == 0; w_q and w_k ([d] each) lie at norm_w[q_norm_offset..] and
// norm_w[k_norm_offset..].
// Precision: f32 throughout; the f16 cache rounds with pack2x16float after clamping to ±65504
// (an out-of-range f16 conversion is indeterminate in WGSL); the tests pin the rounding mode.

struct Params {
    head_dim: u32,       // d
    n_q_heads: u32,      // nq
    n_kv_heads: u32,     // nkv (0 when the layer stores no K/V)
    in_stride: u32,      // elements per token of qkv: (nq + 2·nkv)·d
    q_norm_offset: u32,  // element offset of w_q in norm_w
    k_norm_offset: u32,  // element offset of w_k in norm_w
    v_norm: u32,         // 1: rms(v) (Gemma 4), 0: v as is (Gemma 3)
    cap: u32,            // cache slots
    eps: f32,
    q_scale: f32,        // final multiplier of the queries
    _pad0: u32,
    _pad1: u32,
}

const WG: u32 = {{WG}}u;

@group(0) @binding(0) var<storage, read> qkv: array<f32>;             // [T, in_stride] f32
@group(0) @binding(1) var<storage, read> norm_w: array<f32>;          // w_q [d] and w_k [d] at their offsets
@group(0) @binding(2) var<storage, read> rope: array<vec2<f32>>;      // [T, d/2] (cos, sin) f32
@group(0) @binding(3) var<storage, read_write> q_out: array<f32>;     // [T, nq, d] f32
#if KV_F32
@group(0) @binding(4) var<storage, read_write> k_cache: array<f32>;   // [cap, nkv, d] f32
@group(0) @binding(5) var<storage, read_write> v_cache: array<f32>;   // [cap, nkv, d] f32
#else
@group(0) @binding(4) var<storage, read_write> k_cache: array<u32>;   // [cap, nkv, d/2] f16 pairs (lo = even dim)
@group(0) @binding(5) var<storage, read_write> v_cache: array<u32>;   // [cap, nkv, d/2] f16 pairs (lo = even dim)
#endif
@group(0) @binding(6) var<{{PARAMS}}> p: Params;
@group(0) @binding(7) var<{{PARAMS}}> step: Step;

// Element j of the head starting at `base` times the rms factor `scale` (1 when the head is
// not normalised) and, when `weighted`, the norm weight norm_w[w_off + j].
fn normed(base: u32, j: u32, scale: f32, w_off: u32, weighted: bool) -> f32 {
    var v = qkv[base + j] * scale;
    if weighted {
        v *= norm_w[w_off + j];
    }
    return v;
}

// Output dim j after RoPE (rotation pairs j with j ± d/2) for token t.
fn rotated(base: u32, t: u32, j: u32, scale: f32, w_off: u32) -> f32 {
    let v = normed(base, j, scale, w_off, true);
    let h = p.head_dim / 2u;
    if j < h {
        let cs = rope[t * h + j];
        return v * cs.x - normed(base, j + h, scale, w_off, true) * cs.y;
    }
    let cs = rope[t * h + j - h];
    return v * cs.x + normed(base, j - h, scale, w_off, true) * cs.y;
}

#if !KV_F32
fn f16_pair(a: f32, b: f32) -> u32 {
    let lim = 65504.0;
    return pack2x16float(clamp(vec2(a, b), vec2(-lim), vec2(lim)));
}
#endif

@compute @workgroup_size(WG)
fn main(inv: Invocation, grp: Workgroup) {
    let heads = p.n_q_heads + 2u * p.n_kv_heads;
    let group = linear_group(grp.wg, grp.nwg);
    // Uniform per workgroup, so the barriers in workgroup_sum stay in uniform control flow.
    if group >= step.n_tokens * heads {
        return;
    }
    let t = group / heads;
    let head = group % heads;
    let d = p.head_dim;
    let base = t * p.in_stride + head * d;
    // 0: query, 1: key, 2: value.
    var kind = 0u;
    if head >= p.n_q_heads + p.n_kv_heads {
        kind = 2u;
    } else if head >= p.n_q_heads {
        kind = 1u;
    }
    // A cache row that a later row of this step would overwrite is not stored.
    if kind != 0u && step.n_tokens - t > p.cap {
        return;
    }

    var scale = 1.0;
    if kind != 2u || p.v_norm == 1u {
        var ss = 0.0;
        for (var j = inv.lid; j < d; j += WG) {
            let v = qkv[base + j];
            ss += v * v;
        }
        let total = workgroup_sum(ss, inv, WG);
        scale = inverseSqrt(total / f32(d) + p.eps);
    }

    if kind == 0u {
        let out_base = (t * p.n_q_heads + head) * d;
        let w_off = p.q_norm_offset;
        for (var m = inv.lid; m < d / 2u; m += WG) {
            q_out[out_base + 2u * m] = rotated(base, t, 2u * m, scale, w_off) * p.q_scale;
            q_out[out_base + 2u * m + 1u] = rotated(base, t, 2u * m + 1u, scale, w_off) * p.q_scale;
        }
        return;
    }
    let g = head - p.n_q_heads - (kind - 1u) * p.n_kv_heads;
    let row = ((step.pos0 + t) % p.cap) * p.n_kv_heads + g;
    for (var m = inv.lid; m < d / 2u; m += WG) {
        var a: f32;
        var b: f32;
        if kind == 1u {
            a = rotated(base, t, 2u * m, scale, p.k_norm_offset);
            b = rotated(base, t, 2u * m + 1u, scale, p.k_norm_offset);
        } else {
            a = normed(base, 2u * m, scale, 0u, false);
            b = normed(base, 2u * m + 1u, scale, 0u, false);
        }
#if KV_F32
        let at = row * d + 2u * m;
        if kind == 1u {
            k_cache[at] = a;
            k_cache[at + 1u] = b;
        } else {
            v_cache[at] = a;
            v_cache[at + 1u] = b;
        }
#else
        let at = row * (d / 2u) + m;
        if kind == 1u {
            k_cache[at] = f16_pair(a, b);
        } else {
            v_cache[at] = f16_pair(a, b);
        }
#endif
    }
}
