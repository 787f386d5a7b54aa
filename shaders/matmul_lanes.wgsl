// Quantized mat-mat for CPU adapters (lavapipe, SwiftShader): y[t, r] (=|+=) Σ_c W[r, c] · x[t, c]
// for t < n_tokens, the same product and layout as matmul.wgsl, without workgroup memory or
// barriers. A CPU driver runs a workgroup's invocations as SIMD loops and a barrier as a switch
// of every one of them, so the tiled kernel's two barriers per 32 columns bound it there
// (~1 GFLOP/s on two cores); here each invocation owns a RPI-row × TPI-token block of y and
// reads straight from the buffers, which the CPU's caches serve.
//
// Dispatch: workgroups of WG invocations over a linear index (gpu::grid, groups past the end
// return); invocation g takes row block g % row_blocks and token block g / row_blocks. Per
// 8-element chunk of k it dequantizes its RPI rows' chunks once (into registers) and streams
// the TPI tokens' activations through them: every weight is dequantized once per TPI tokens.
//
// Assumptions: k % 8 == 0 and x_offset % 4 == 0 (x is read as vec4s); rows and tokens past the end are clamped for reading and never
// written. Flag ACC: y += instead of y =. Precision: f32 dequantized weights, products and sums.

struct Params {
    k: u32,         // row length (elements)
    rows: u32,      // rows in this part
    bpr: u32,       // blocks per row
    sbase: u32,     // word offset of the scales plane in wq
    hbase: u32,     // word offset of the high-bit plane in wq (Q5_0/Q5_1)
    y_stride: u32,  // elements between tokens in y
    y_offset: u32,  // element of y[0, 0] for this part's first row
    x_offset: u32,  // element of x[0, 0]
}

const WG: u32 = 64u;
const RPI: u32 = 4u;  // rows per invocation
const TPI: u32 = 16u;  // tokens per invocation

@group(0) @binding(0) var<storage, read> wq: array<vec4<u32>>;  // part of W, GPU layout (src/quant/layout.rs), 16-byte padded
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;   // [n_tokens, k / 4] from x_offset / 4
@group(0) @binding(2) var<storage, read_write> y: array<f32>;   // [n_tokens, y_stride] from y_offset
@group(0) @binding(3) var<{{PARAMS}}> p: Params;
@group(0) @binding(4) var<{{PARAMS}}> step: Step;

{{QUANT}}

const CPB: u32 = QBLOCK / 8u;  // chunks per block

@compute @workgroup_size(WG)
fn main(inv: Invocation, grp: Workgroup) {
    let g = linear_group(grp.wg, grp.nwg) * WG + inv.lid;
    let row_blocks = (p.rows + RPI - 1u) / RPI;
    let nt = step.n_tokens;
    let r0 = (g % row_blocks) * RPI;
    let t0 = (g / row_blocks) * TPI;
    if t0 >= nt {
        return;
    }
    var rows: array<u32, RPI>;
    for (var a = 0u; a < RPI; a++) {
        rows[a] = min(r0 + a, p.rows - 1u) * p.bpr;
    }
    var xrow: array<u32, TPI>;
    for (var b = 0u; b < TPI; b++) {
        xrow[b] = (p.x_offset + min(t0 + b, nt - 1u) * p.k) / 4u;
    }
    var acc: array<vec4<f32>, TPI>;  // [token b][row a]
    let chunks = p.k / 8u;
    for (var c = 0u; c < chunks; c++) {
        let blk = c / CPB;
        let sub = c % CPB;
        var w: array<Chunk, RPI>;
        for (var a = 0u; a < RPI; a++) {
            w[a] = dq8(rows[a] + blk, sub);
        }
        for (var b = 0u; b < TPI; b++) {
            let lo = x[xrow[b] + 2u * c];
            let hi = x[xrow[b] + 2u * c + 1u];
            // A chunk's even and odd elements, as dq8 splits W's.
            let xe = vec4<f32>(lo.x, lo.z, hi.x, hi.z);
            let xo = vec4<f32>(lo.y, lo.w, hi.y, hi.w);
            acc[b] += vec4<f32>(
                dot(w[0].ev, xe) + dot(w[0].od, xo),
                dot(w[1].ev, xe) + dot(w[1].od, xo),
                dot(w[2].ev, xe) + dot(w[2].od, xo),
                dot(w[3].ev, xe) + dot(w[3].od, xo),
            );
        }
    }

    for (var b = 0u; b < TPI; b++) {
        let t = t0 + b;
        for (var a = 0u; a < RPI; a++) {
            let r = r0 + a;
            if r < p.rows && t < nt {
                let o = p.y_offset + t * p.y_stride + r;
#if ACC
                y[o] += acc[b][a];
#else
                y[o] = acc[b][a];
#endif
            }
        }
    }
}
