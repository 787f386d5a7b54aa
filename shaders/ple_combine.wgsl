// Gemma 4 per-layer inputs (GEMMA.md §2.4 step 2), one row of P values per (token t, layer l):
//
//   ple[t, l, :] = (rms(ctx[t, l, :] · ctx_scale) · w  +  tok[t, l, :] · tok_scale) · out_scale
//
// ctx = W_plm · x with x the *scaled* token embedding, ctx_scale = H^−0.5; w is the one [P]
// `per_layer_proj_norm` weight shared by every layer; tok is row t of the per-layer token table
// exactly as stored (dequantized on the CPU from the mapped file), tok_scale = √P;
// out_scale = 2^−0.5. The scale is applied before the norm, as transformers does: with eps in
// the norm, rms(c·x) ≠ rms(x).
//
// Dispatch: one workgroup of WG invocations per row, n_tokens · layers rows (split over x/y by
// gpu::grid). Precision: f32 in, f32 sum of squares, f32 out.

struct Params {
    width: u32,        // P
    layers: u32,       // L: rows per token
    eps: f32,
    ctx_scale: f32,
    tok_scale: f32,
    out_scale: f32,
    _pad0: u32,
    _pad1: u32,
}

const WG: u32 = {{WG}}u;

@group(0) @binding(0) var<storage, read> ctx: array<f32>;          // [n_tokens, L, P] f32
@group(0) @binding(1) var<storage, read> tok: array<f32>;          // [n_tokens, L, P] f32
@group(0) @binding(2) var<storage, read> w: array<f32>;            // [P] f32
@group(0) @binding(3) var<storage, read_write> ple: array<f32>;    // [n_tokens, L, P] f32
@group(0) @binding(4) var<{{PARAMS}}> p: Params;
@group(0) @binding(5) var<{{PARAMS}}> step: Step;

@compute @workgroup_size(WG)
fn main(inv: Invocation, grp: Workgroup) {
    let row = linear_group(grp.wg, grp.nwg);
    // Uniform per workgroup, so the barriers of workgroup_sum stay in uniform control flow.
    if row >= step.n_tokens * p.layers {
        return;
    }
    let base = row * p.width;
    var ss = 0.0;
    for (var i = inv.lid; i < p.width; i += WG) {
        let v = ctx[base + i] * p.ctx_scale;
        ss += v * v;
    }
    let total = workgroup_sum(ss, inv, WG);
    let norm = inverseSqrt(total / f32(p.width) + p.eps);
    for (var i = inv.lid; i < p.width; i += WG) {
        let c = ctx[base + i] * p.ctx_scale * norm * w[i];
        ple[base + i] = (c + tok[base + i] * p.tok_scale) * p.out_scale;
    }
}
