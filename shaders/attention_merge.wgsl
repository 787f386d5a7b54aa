// Merge of flash-decoding splits (second pass of attention_decode.wgsl or attention.wgsl when
// they ran with nwg.z > 1):
//
//   M = max_s m_s,   L = Σ_s e^(m_s − M) · l_s,   o = Σ_s e^(m_s − M) · o_s / L
//
// where split s holds the unnormalised output o_s, running max m_s and sum l_s of its key range
// (m_s = −3e38, l_s = 0 for a split that saw no key of this row).
// Dispatch: one workgroup of 256 invocations per (output row, block of 128 dims), split over
// x/y by gpu::grid. Invocation (split lane sl, column cl) merges the splits sl, sl + SL, … of
// dims 4·cl..4·cl+3 against their own maximum, so a row's splits are read in parallel (a decode
// step may have 100+ splits); the SL partial results are then combined through workgroup memory.
// Assumptions: the attention pass ran earlier in the pass and wrote the split count into part[0].
// Precision: f32 throughout.

// The attention kernels' parameters (only n_q_heads is used here).
struct Params {
    n_q_heads: u32,
    n_kv_heads: u32,
    cap: u32,
    window: u32,
    scale: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

const D: u32 = {{HEAD_DIM}}u;
const WG: u32 = 256u;
const CL: u32 = 32u;               // vec4 columns per workgroup (128 dims)
const SL: u32 = WG / CL;           // split lanes
const NCB: u32 = (D / 4u + CL - 1u) / CL;  // column blocks per row
const NEG: f32 = -3.0e38;

// [0] = S, then o [S, T·nq, d], then (m, l) [S, T·nq, 2] (layout of the attention kernels),
// read as 16-byte words: o starts at word 1 and (m, l) at a whole word, since 4 | d.
@group(0) @binding(0) var<storage, read> part: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> out: array<vec4<f32>>;  // [T, nq, d] f32
@group(0) @binding(2) var<storage, read> p: Params;
@group(0) @binding(3) var<storage, read> step: Step;

var<workgroup> m_part: array<f32, SL>;
var<workgroup> l_part: array<f32, SL>;
var<workgroup> o_part: array<vec4<f32>, WG>;

// The (m, l) pair at float index `at` (even).
fn ml_of(at: u32) -> vec2<f32> {
    let w = part[at / 4u];
    return select(w.xy, w.zw, at % 4u != 0u);
}

@compute @workgroup_size(256)
fn main(inv: Invocation, grp: Workgroup) {
    let n_rows = step.n_tokens * p.n_q_heads;
    let lin = linear_group(grp.wg, grp.nwg);
    if lin >= n_rows * NCB {
        return;
    }
    let row = lin / NCB;
    let col = (lin % NCB) * CL + inv.lid % CL;   // vec4 column of the row
    let sl = inv.lid / CL;
    let n_splits = u32(part[0].x);
    let ml = 4u + n_splits * n_rows * D;  // float index of the (m, l) pairs

    // This lane's splits against their own maximum.
    var m = NEG;
    for (var s = sl; s < n_splits; s += SL) {
        m = max(m, ml_of(ml + (s * n_rows + row) * 2u).x);
    }
    var l = 0.0;
    var acc = vec4<f32>(0.0);
    for (var s = sl; s < n_splits; s += SL) {
        let pair = ml_of(ml + (s * n_rows + row) * 2u);
        let w = exp(pair.x - m);  // 1 for a split that saw nothing when m is NEG: o, l are 0
        l += w * pair.y;
        if col < D / 4u {
            acc += w * part[1u + (s * n_rows + row) * (D / 4u) + col];
        }
    }
    if inv.lid % CL == 0u {
        m_part[sl] = m;
        l_part[sl] = l;
    }
    o_part[inv.lid] = acc;
    workgroupBarrier();
    if sl == 0u && col < D / 4u {
        var big = NEG;
        for (var i = 0u; i < SL; i++) {
            big = max(big, m_part[i]);
        }
        var total_l = 0.0;
        var total_o = vec4<f32>(0.0);
        for (var i = 0u; i < SL; i++) {
            let w = exp(m_part[i] - big);
            total_l += w * l_part[i];
            total_o += w * o_part[i * CL + inv.lid];
        }
        out[row * (D / 4u) + col] = total_o / total_l;
    }
}
