// RMSNorm over rows: y[r] = x[r] / sqrt(mean(x[r]^2) + eps) * w   (w optional: weightless)
// (The post-norms that update the residual stream are residual.wgsl.)
// With LAST_ROW: only the step's last row of x, written to row 0 of y (the final norm before
// the LM head when only the next token's logits are needed).
//
// Rows: n_tokens * rows_per_token (per-head q/k norms use rows_per_token = n_heads, len = d).
// Dispatch: one workgroup of WG invocations per row (split over x/y by gpu::grid).
// Precision: f32 in, f32 accumulate, f32 out.

struct Params {
    len: u32,             // elements per row
    rows_per_token: u32,  // rows per token (1, or the number of heads)
    eps: f32,
    has_weight: u32,      // 0: no weight (plain normalisation)
    _pad3: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

const WG: u32 = {{WG}}u;

@group(0) @binding(0) var<storage, read> x: array<f32>;          // [n_tokens * rows_per_token, len]
@group(0) @binding(1) var<storage, read> w: array<f32>;          // [len]
@group(0) @binding(2) var<storage, read_write> y: array<f32>;    // [n_tokens * rows_per_token, len]
@group(0) @binding(3) var<{{PARAMS}}> p: Params;
@group(0) @binding(4) var<{{PARAMS}}> step: Step;

@compute @workgroup_size(WG)
fn main(inv: Invocation, grp: Workgroup) {
    let row = linear_group(grp.wg, grp.nwg);
#if LAST_ROW
    let rows = 1u;
    let in_base = (step.n_tokens - 1u) * p.len;
#else
    let rows = step.n_tokens * p.rows_per_token;
    let in_base = row * p.len;
#endif
    // Uniform per workgroup, so the barriers below stay in uniform control flow.
    if row >= rows {
        return;
    }
    let base = row * p.len;
    var ss = 0.0;
    for (var i = inv.lid; i < p.len; i += WG) {
        let v = x[in_base + i];
        ss += v * v;
    }
    let total = workgroup_sum(ss, inv, WG);
    let scale = inverseSqrt(total / f32(p.len) + p.eps);
    for (var i = inv.lid; i < p.len; i += WG) {
        var v = x[in_base + i] * scale;
        if p.has_weight != 0u {
            v *= w[i];
        }
        y[base + i] = v;
    }
}
