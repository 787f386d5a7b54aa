// Per-head Q/K/V preparation: optional RMSNorm, optional half-split RoPE, optional scale.
//
//   n[j]   = x[j] · inverseSqrt(mean(x²) + eps) · w[j]       (norm = 1: weighted, Gemma q/k)
//          = x[j] · inverseSqrt(mean(x²) + eps)              (norm = 2: weightless, Gemma 4 V)
//          = x[j]                                            (norm = 0: Gemma 3 V)
//   out[i]     = (n[i]·cos_i     − n[i+h]·sin_i) · scale     for i < h = d/2 (rope = 1)
//   out[i+h]   = (n[i+h]·cos_i   + n[i]·sin_i)   · scale
//   out[j]     =  n[j] · scale                                (rope = 0)
// with (cos_i, sin_i) = rope[t, i], the step's CPU-built table (src/rope.rs) for position
// pos0 + t: the shader never evaluates sin/cos (WGSL gives no accuracy for large angles).
//
// Dispatch: one workgroup of WG invocations per (token, head), n_tokens·n_heads workgroups split
// over x/y by gpu::grid; head = group % n_heads. Each invocation owns adjacent output pairs
// (2m, 2m+1), so with F16_OUT it packs them straight into one u32 and needs no workgroup memory.
// Assumptions: d % 4 == 0 (pairs never straddle the halves), d ≤ any size (the loops stride).
// Input row t of head h starts at in_offset + t·in_stride + h·d (a fused QKV row works).
// Precision: f32 throughout; F16_OUT rounds with pack2x16float after clamping to ±65504 (an
// out-of-range f16 conversion is indeterminate in WGSL); the tests pin the rounding mode.

struct Params {
    head_dim: u32,   // d
    n_heads: u32,    // heads per token
    in_stride: u32,  // elements between consecutive tokens' input rows
    in_offset: u32,  // elements before head 0 of token 0
    norm: u32,       // 0: none, 1: RMSNorm · w, 2: RMSNorm without weight
    rope: u32,       // 0: none, 1: half-split RoPE from the table
    eps: f32,
    scale: f32,      // final multiplier (Gemma 3 q: query_pre_attn_scalar^-0.5; else 1)
}

const WG: u32 = {{WG}}u;

@group(0) @binding(0) var<storage, read> x: array<f32>;              // [n_tokens, in_stride] f32 (head h at in_offset + h·d)
@group(0) @binding(1) var<storage, read> w: array<f32>;              // [d] f32 norm weight (unused unless norm = 1)
@group(0) @binding(2) var<storage, read> rope: array<vec2<f32>>;     // [n_tokens, d/2] (cos, sin) f32 (unused unless rope = 1)
#if F16_OUT
@group(0) @binding(3) var<storage, read_write> y: array<u32>;        // [n_tokens, n_heads, d/2] f16 pairs (lo = even dim)
#else
@group(0) @binding(3) var<storage, read_write> y: array<f32>;        // [n_tokens, n_heads, d] f32
#endif
@group(0) @binding(4) var<storage, read> p: Params;
@group(0) @binding(5) var<storage, read> step: Step;

// Normalised element j of the head starting at `base`.
fn normed(base: u32, j: u32, scale: f32) -> f32 {
    var v = x[base + j];
    if p.norm != 0u {
        v *= scale;
    }
    if p.norm == 1u {
        v *= w[j];
    }
    return v;
}

// Final value of output dim j (rotation pairs j with j ± d/2).
fn prepared(base: u32, t: u32, j: u32, scale: f32) -> f32 {
    let v = normed(base, j, scale);
    if p.rope == 0u {
        return v * p.scale;
    }
    let h = p.head_dim / 2u;
    var r: f32;
    if j < h {
        let cs = rope[t * h + j];
        r = v * cs.x - normed(base, j + h, scale) * cs.y;
    } else {
        let cs = rope[t * h + j - h];
        r = v * cs.x + normed(base, j - h, scale) * cs.y;
    }
    return r * p.scale;
}

@compute @workgroup_size(WG)
fn main(inv: Invocation, grp: Workgroup) {
    let group = linear_group(grp.wg, grp.nwg);
    // Uniform per workgroup, so the barriers in workgroup_sum stay in uniform control flow.
    if group >= step.n_tokens * p.n_heads {
        return;
    }
    let t = group / p.n_heads;
    let head = group % p.n_heads;
    let d = p.head_dim;
    let base = p.in_offset + t * p.in_stride + head * d;

    var scale = 1.0;
    if p.norm != 0u {
        var ss = 0.0;
        for (var j = inv.lid; j < d; j += WG) {
            let v = x[base + j];
            ss += v * v;
        }
        let total = workgroup_sum(ss, inv, WG);
        scale = inverseSqrt(total / f32(d) + p.eps);
    }

    let out_base = group * d;
    for (var m = inv.lid; m < d / 2u; m += WG) {
        let a = prepared(base, t, 2u * m, scale);
        let b = prepared(base, t, 2u * m + 1u, scale);
#if F16_OUT
        let lim = 65504.0;
        y[out_base / 2u + m] = pack2x16float(clamp(vec2(a, b), vec2(-lim), vec2(lim)));
#else
        y[out_base + 2u * m] = a;
        y[out_base + 2u * m + 1u] = b;
#endif
    }
}
