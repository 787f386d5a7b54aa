// Embedding gather: h[t, c] = dequant(E[token[t], c]) · scale for t < n_tokens, c < k, from
// one row-range part of the table (a token whose row lives in another part is skipped here:
// the op dispatches once per part).
//
// Dispatch: groups_per_token = ceil(k / 8 / WG) workgroups per token (linear index =
// token · groups_per_token + group, split over x/y by gpu::grid); invocation i of group g
// dequantizes chunk g·WG + i (8 elements). No barriers, so early returns are fine.
// Assumptions: k % QBLOCK == 0; token ids ≥ the table's rows write nothing.
// Precision: f32 dequantization, one f32 multiply by `scale`.

struct Params {
    k: u32,        // row length (elements)
    rows: u32,     // rows in this part
    bpr: u32,      // blocks per row
    sbase: u32,    // word offset of the scales plane in wq
    row0: u32,     // first row of this part in the whole table
    scale: f32,    // multiplier (e.g. sqrt(hidden) for Gemma's token embedding)
    hbase: u32,    // word offset of the high-bit plane in wq (Q5_0/Q5_1)
    _pad0: u32,
}

const WG: u32 = {{WG}}u;

@group(0) @binding(0) var<storage, read> wq: array<vec4<u32>>;  // part of E, GPU layout (src/quant/layout.rs), 16-byte padded
@group(0) @binding(1) var<storage, read> tokens: array<u32>;    // [n_tokens] row ids
@group(0) @binding(2) var<storage, read_write> h: array<f32>;   // [n_tokens, k]
@group(0) @binding(3) var<{{PARAMS}}> p: Params;
@group(0) @binding(4) var<{{PARAMS}}> step: Step;

{{QUANT}}

const CPB: u32 = QBLOCK / 8u;  // chunks per block

@compute @workgroup_size(WG)
fn main(inv: Invocation, grp: Workgroup) {
    let chunks = p.k / 8u;
    let per_token = (chunks + WG - 1u) / WG;
    let lin = linear_group(grp.wg, grp.nwg);
    let t = lin / per_token;
    let c = (lin % per_token) * WG + inv.lid;
    if t >= step.n_tokens || c >= chunks {
        return;
    }
    let row = tokens[t];
    if row < p.row0 || row - p.row0 >= p.rows {
        return;
    }
    let q = dq8((row - p.row0) * p.bpr + c / CPB, c % CPB);
    let o = t * p.k + c * 8u;
    for (var i = 0u; i < 4u; i++) {
        h[o + 2u * i] = q.ev[i] * p.scale;
        h[o + 2u * i + 1u] = q.od[i] * p.scale;
    }
}
