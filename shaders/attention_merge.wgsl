// Merge of flash-decoding splits (second pass of attention_decode.wgsl or attention.wgsl when
// they ran with nwg.z > 1):
//
//   M = max_s m_s,   L = Σ_s e^(m_s − M) · l_s,   o = Σ_s e^(m_s − M) · o_s / L
//
// where split s holds the unnormalised output o_s, running max m_s and sum l_s of its key range
// (m_s = −3e38, l_s = 0 for a split that saw no key of this row).
// Dispatch: one workgroup of 256 invocations per (output row, block of 64 dims), split over
// x/y by gpu::grid. Invocation (split lane sl, column cl) merges the splits sl, sl + SL, … of
// dims 4·cl..4·cl+3 with an online maximum, four splits' partials loaded before they are used:
// a row's splits are read in parallel (a decode step may have 100+), in few dependent rounds.
// The SL partial results are then combined through workgroup memory.
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
const CL: u32 = 16u;               // vec4 columns per workgroup (64 dims)
const SL: u32 = WG / CL;           // split lanes
const NCB: u32 = (D / 4u + CL - 1u) / CL;  // column blocks per row
const U: u32 = 4u;                 // splits loaded before use, per lane and round
const NEG: f32 = -3.0e38;

// [0] = S, then o [S, T·nq, d], then (m, l) [S, T·nq, 2] (layout of the attention kernels),
// read as 16-byte words: o starts at word 1 and (m, l) at a whole word, since 4 | d.
@group(0) @binding(0) var<storage, read> part: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> out: array<vec4<f32>>;  // [T, nq, d] f32
@group(0) @binding(2) var<{{PARAMS}}> p: Params;
@group(0) @binding(3) var<{{PARAMS}}> step: Step;

var<workgroup> m_part: array<f32, WG>;
var<workgroup> l_part: array<f32, WG>;
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
    let live = col < D / 4u;
    let n_splits = u32(part[0].x);
    let ml = 4u + n_splits * n_rows * D;  // float index of the (m, l) pairs

    // This lane's splits, U at a time, against a running maximum.
    var m = NEG;
    var l = 0.0;
    var acc = vec4<f32>(0.0);
    for (var s0 = sl; s0 < n_splits; s0 += U * SL) {
        var mls: array<vec2<f32>, U>;
        var os: array<vec4<f32>, U>;
        for (var u = 0u; u < U; u++) {
            let s = s0 + u * SL;
            mls[u] = vec2<f32>(NEG, 0.0);
            os[u] = vec4<f32>(0.0);
            if s < n_splits {
                mls[u] = ml_of(ml + (s * n_rows + row) * 2u);
                if live {
                    os[u] = part[1u + (s * n_rows + row) * (D / 4u) + col];
                }
            }
        }
        var big = m;
        for (var u = 0u; u < U; u++) {
            big = max(big, mls[u].x);
        }
        // 1 while both are NEG (nothing seen yet): acc and l are still 0.
        let a = exp(m - big);
        acc *= a;
        l *= a;
        for (var u = 0u; u < U; u++) {
            // 1 for a split that saw nothing when big is NEG: its o and l are 0.
            let w = exp(mls[u].x - big);
            acc += w * os[u];
            l += w * mls[u].y;
        }
        m = big;
    }
    m_part[inv.lid] = m;
    l_part[inv.lid] = l;
    o_part[inv.lid] = acc;
    workgroupBarrier();
    if sl == 0u && live {
        let c = inv.lid;
        var big = NEG;
        for (var i = 0u; i < SL; i++) {
            big = max(big, m_part[i * CL + c]);
        }
        var total_l = 0.0;
        var total_o = vec4<f32>(0.0);
        for (var i = 0u; i < SL; i++) {
            let w = exp(m_part[i * CL + c] - big);
            total_l += w * l_part[i * CL + c];
            total_o += w * o_part[i * CL + c];
        }
        out[row * (D / 4u) + col] = total_o / total_l;
    }
}
