// RMSNorm over rows: y[r] = x[r] / sqrt(mean(x[r]^2) + eps) * w   (w optional: Gemma 4 V-norm)
// With ADD: h[r] = (h[r] + rmsnorm(x[r]) * w) * out_scale   (Gemma's post-norms feed the
// residual stream this way; out_scale is Gemma 4's layer_output_scale on a layer's last add,
// 1.0 everywhere else, where the multiply is exact)
// With ADD and THEN_NORM: also y2[r] = rmsnorm(h[r]) * w2 on the updated row, the next block's
// input norm, in the same dispatch (each invocation re-reads only elements it wrote itself, so
// the second pass needs no barrier beyond the reduction's).
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
    out_scale: f32,       // ADD only: multiplies the sum
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

const WG: u32 = {{WG}}u;

@group(0) @binding(0) var<storage, read> x: array<f32>;          // [n_tokens * rows_per_token, len]
@group(0) @binding(1) var<storage, read> w: array<f32>;          // [len]
@group(0) @binding(2) var<storage, read_write> y: array<f32>;    // [n_tokens * rows_per_token, len]
@group(0) @binding(3) var<storage, read> p: Params;
@group(0) @binding(4) var<storage, read> step: Step;
#if THEN_NORM
@group(0) @binding(5) var<storage, read> w2: array<f32>;         // [len] weight of the next norm
@group(0) @binding(6) var<storage, read_write> y2: array<f32>;   // [n_tokens, len] its output
#endif

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
    var ss2 = 0.0;
    for (var i = inv.lid; i < p.len; i += WG) {
        var v = x[in_base + i] * scale;
        if p.has_weight != 0u {
            v *= w[i];
        }
#if ADD
        let sum = (y[base + i] + v) * p.out_scale;
        y[base + i] = sum;
#if THEN_NORM
        ss2 += sum * sum;
#endif
#else
        y[base + i] = v;
#endif
    }
#if THEN_NORM
    let scale2 = inverseSqrt(workgroup_sum(ss2, inv, WG) / f32(p.len) + p.eps);
    for (var i = inv.lid; i < p.len; i += WG) {
        y2[base + i] = y[base + i] * scale2 * w2[i];
    }
#endif
}
