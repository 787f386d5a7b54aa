// Merge of flash-decoding splits (second pass of attention.wgsl when nwg.z > 1):
//
//   M = max_s m_s,   L = Σ_s e^(m_s − M) · l_s,   o = Σ_s e^(m_s − M) · o_s / L
//
// where split s holds the unnormalised output o_s, running max m_s and sum l_s of its key range
// (m_s = −3e38, l_s = 0 for a split that saw no key of this row).
// Dispatch: one workgroup of 64 invocations per output row (token, query head), split over x/y
// by gpu::grid; invocations stride the d/2 column pairs.
// Assumptions: attention.wgsl ran earlier in the pass and wrote the split count into part[0].
// Precision: f32 throughout.

struct Params {
    n_q_heads: u32,
    n_kv_heads: u32,
    cap: u32,
    window: u32,
    scale: f32,
    cache_only: u32,
    _pad0: u32,
    _pad1: u32,
}

const D: u32 = {{HEAD_DIM}}u;
const DW: u32 = D / 2u;
const WG: u32 = 64u;

// [0] = S, then o [S, T·nq, d], then (m, l) [S, T·nq, 2] (layout of attention.wgsl).
@group(0) @binding(0) var<storage, read> part: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<vec2<f32>>;  // [T, nq, d] f32
@group(0) @binding(2) var<storage, read> p: Params;
@group(0) @binding(3) var<storage, read> step: Step;

@compute @workgroup_size(64)
fn main(inv: Invocation, grp: Workgroup) {
    let n_rows = step.n_tokens * p.n_q_heads;
    let row = linear_group(grp.wg, grp.nwg);
    if row >= n_rows {
        return;
    }
    let n_splits = u32(part[0]);
    let ml = 4u + n_splits * n_rows * D;
    var m = -3.0e38;
    for (var s = 0u; s < n_splits; s++) {
        m = max(m, part[ml + (s * n_rows + row) * 2u]);
    }
    var l = 0.0;
    for (var s = 0u; s < n_splits; s++) {
        let at = ml + (s * n_rows + row) * 2u;
        l += exp(part[at] - m) * part[at + 1u];
    }
    for (var w = inv.lid; w < DW; w += WG) {
        var acc = vec2<f32>(0.0);
        for (var s = 0u; s < n_splits; s++) {
            let wgt = exp(part[ml + (s * n_rows + row) * 2u] - m);
            let at = 4u + (s * n_rows + row) * D + 2u * w;
            acc += wgt * vec2<f32>(part[at], part[at + 1u]);
        }
        out[row * DW + w] = acc / l;
    }
}
