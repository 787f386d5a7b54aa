// Quantized mat-vec for decode (a few tokens): y[t, row0 + r] (=|+=) Σ_c W[r, c] · x[t, c]
// for t < min(n_tokens, NT), r < rows of this part of W.
//
// With GELU_MUL the output is the gated activation y = gelu_tanh(W·x) ⊙ z (the FFN's
// gelu(W_gate·x) ⊙ up, or Gemma 4's per-layer gate against its input slice), saving the
// separate activation pass and its dispatch.
//
// Dispatch: one workgroup of WG invocations per ROWS consecutive rows (linear index split over
// x/y by gpu::grid; groups past the end return). Invocations stride the row in 8-element chunks
// (chunk c = lid, lid + WG, …): consecutive invocations read consecutive payload words and
// activations. Each invocation loads its activations for all NT tokens into registers once per
// chunk and reuses them for the ROWS rows; each dequantized chunk is reused for the NT tokens.
// One batched reduction then sums all ROWS·NT partials (subgroupAdd + one shared-memory pass
// with subgroups; a shared-memory tree of log2(WG) barriers without) — one pass instead of
// ROWS·NT calls to workgroup_sum.
//
// Assumptions: k % QBLOCK == 0 (QuantMatrix checks); rows past the part are clamped for reading
// and never written. The weight type comes from the QUANT define (shaders/quant/).
// Specialisation: WG ∈ {64, 128} (power of two), ROWS ≥ 1 (MATVEC_ROWS = 4), NT ∈ {1, 4},
// flags ACC (y +=) and GELU_MUL (exclusive).
// Precision: weights dequantized to f32, products and all sums in f32 (also in the F16 variant:
// q·x of Gemma activations can overflow f16).

struct Params {
    k: u32,      // row length (elements)
    rows: u32,   // rows in this part
    bpr: u32,    // blocks per row
    sbase: u32,  // word offset of the scales plane in wq
    row0: u32,   // first row of this part in the whole matrix
    n: u32,      // rows of the whole matrix (row stride of y)
    z_stride: u32,  // GELU_MUL: elements between rows of z
    z_offset: u32,  // GELU_MUL: elements before row 0's first value in z
}

const WG: u32 = {{WG}}u;
const ROWS: u32 = {{ROWS}}u;
const NT: u32 = {{NT}}u;
const NV: u32 = ROWS * NT;  // partial sums per invocation

@group(0) @binding(0) var<storage, read> wq: array<u32>;        // part of W, GPU layout: [rows, bpr, QPW] payload, then scales
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;   // [n_tokens, k / 4]
@group(0) @binding(2) var<storage, read_write> y: array<f32>;   // [n_tokens, n]
@group(0) @binding(3) var<storage, read> p: Params;
@group(0) @binding(4) var<storage, read> step: Step;
#if GELU_MUL
@group(0) @binding(5) var<storage, read> z: array<f32>;         // [n_tokens, z_stride]
#endif

{{QUANT}}

const CPB: u32 = QBLOCK / 8u;  // chunks per block

var<workgroup> red: array<f32, NV * WG>;  // [NV, WG] partial sums

@compute @workgroup_size(WG)
fn main(inv: Invocation, grp: Workgroup) {
    let r0 = linear_group(grp.wg, grp.nwg) * ROWS;
    // Uniform per workgroup, so the barriers below stay in uniform control flow.
    if r0 >= p.rows {
        return;
    }
    let nt = min(step.n_tokens, NT);
    let chunks = p.k / 8u;

    var rb: array<u32, ROWS>;  // first block of each row
    for (var r = 0u; r < ROWS; r++) {
        rb[r] = min(r0 + r, p.rows - 1u) * p.bpr;
    }
    var acc: array<f32, NV>;
    for (var c = inv.lid; c < chunks; c += WG) {
        let b = c / CPB;
        let j = c % CPB;
        var xe: array<vec4<f32>, NT>;
        var xo: array<vec4<f32>, NT>;
        for (var t = 0u; t < NT; t++) {
            if t < nt {
                // Two 16-byte loads per 8 activations (k % 8 == 0, so never across a row).
                let xb = (t * p.k + c * 8u) / 4u;
                let a = x[xb];
                let b = x[xb + 1u];
                xe[t] = vec4<f32>(a.x, a.z, b.x, b.z);
                xo[t] = vec4<f32>(a.y, a.w, b.y, b.w);
            }
        }
        for (var r = 0u; r < ROWS; r++) {
            let q = dq8(rb[r] + b, j);
            for (var t = 0u; t < NT; t++) {
                acc[r * NT + t] += dot(q.ev, xe[t]) + dot(q.od, xo[t]);
            }
        }
    }

#if SUBGROUPS
    let size = min(inv.sg_size, WG);
    for (var v = 0u; v < NV; v++) {
        let s = subgroupAdd(acc[v]);
        if inv.sg_lane == 0u {
            red[v * WG + inv.lid / size] = s;
        }
    }
    workgroupBarrier();
    if inv.lid < NV {
        var total = 0.0;
        for (var i = 0u; i < WG / size; i++) {
            total += red[inv.lid * WG + i];
        }
#else
    for (var v = 0u; v < NV; v++) {
        red[v * WG + inv.lid] = acc[v];
    }
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
        if inv.lid < stride {
            for (var v = 0u; v < NV; v++) {
                red[v * WG + inv.lid] += red[v * WG + inv.lid + stride];
            }
        }
        workgroupBarrier();
    }
    if inv.lid < NV {
        let total = red[inv.lid * WG];
#endif
        let r = r0 + inv.lid / NT;
        let t = inv.lid % NT;
        if r < p.rows && t < nt {
            let o = t * p.n + p.row0 + r;
#if GELU_MUL
            y[o] = gelu_tanh(total) * z[t * p.z_stride + p.z_offset + p.row0 + r];
#else
#if ACC
            y[o] += total;
#else
            y[o] = total;
#endif
#endif
        }
    }
}
