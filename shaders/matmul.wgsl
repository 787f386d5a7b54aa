// Quantized mat-mat for prefill: y[t, r] (=|+=) Σ_c W[r, c] · x[t, c] for t < n_tokens,
// r < rows of this part of W; x[t] starts at x_offset + t·k, y[t, r] is at
// y_offset + t·y_stride + r (a projection can write into a column range of a wider buffer).
//
// Dispatch: one workgroup of 256 invocations per (BM rows × BT tokens) output tile; linear
// index = row_tile + token_tile · row_tiles, split over x/y by gpu::grid (groups past the end
// return). The K loop walks BK = 32 columns at a time: invocation i dequantizes one 8-element
// chunk of W (row i / 4, chunk i % 4) into shared memory and loads 4 activations; after a
// barrier each invocation accumulates a 4-row × 2-token register tile (rows 4·tr + a, tokens
// 2·tc + b, tr = lid % 16, tc = lid / 16): per column one vec4 load of its rows and one vec2
// load of its tokens feed 8 FMAs (scalar loads took 6). Each weight is dequantized once per
// token tile. Shared memory: (BK·BM + BK·BT)·4 = 12 KiB (within WebGPU's 16 KiB).
//
// Assumptions: k % 8 == 0 (a tail of k % 32 is zero-filled); rows and tokens past the end are
// clamped or zeroed for reading and never written. Flag ACC: y += instead of y =.
// Precision: f32 dequantized weights, f32 products and sums (also in the F16 variant).

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

const WG: u32 = 256u;
const BM: u32 = 64u;  // rows per tile
const BT: u32 = 32u;  // tokens per tile
const BK: u32 = 32u;  // columns per K step

@group(0) @binding(0) var<storage, read> wq: array<vec4<u32>>;  // part of W, GPU layout (src/quant/layout.rs), 16-byte padded
@group(0) @binding(1) var<storage, read> x: array<f32>;         // [n_tokens, k] from x_offset
@group(0) @binding(2) var<storage, read_write> y: array<f32>;   // [n_tokens, y_stride] from y_offset
@group(0) @binding(3) var<{{PARAMS}}> p: Params;
@group(0) @binding(4) var<{{PARAMS}}> step: Step;

{{QUANT}}

const CPB: u32 = QBLOCK / 8u;  // chunks per block

var<workgroup> ws: array<vec4<f32>, BK * BM / 4u>;  // [BK, BM] dequantized W tile, k-major
var<workgroup> xs: array<vec2<f32>, BK * BT / 2u>;  // [BK, BT] activation tile, k-major

@compute @workgroup_size(WG)
fn main(inv: Invocation, grp: Workgroup) {
    let lin = linear_group(grp.wg, grp.nwg);
    let row_tiles = (p.rows + BM - 1u) / BM;
    let nt = step.n_tokens;
    let r0 = (lin % row_tiles) * BM;
    let t0 = (lin / row_tiles) * BT;
    // Uniform per workgroup, so the barriers below stay in uniform control flow.
    if t0 >= nt {
        return;
    }
    let lid = inv.lid;
    let tr = lid % 16u;
    let tc = lid / 16u;
    // Loader role: one 8-element chunk of one W row per K step.
    let lrow = lid / 4u;
    let lj = lid % 4u;
    let wrow = min(r0 + lrow, p.rows - 1u);
    let chunks = p.k / 8u;

    var acc: array<vec2<f32>, 4>;  // [row a][token b]
    for (var k0 = 0u; k0 < p.k; k0 += BK) {
        let c = k0 / 8u + lj;
        var q = Chunk(vec4<f32>(0.0), vec4<f32>(0.0));
        if c < chunks {
            q = dq8(wrow * p.bpr + c / CPB, c % CPB);
        }
        for (var i = 0u; i < 4u; i++) {
            ws[((lj * 8u + 2u * i) * BM + lrow) / 4u][lrow % 4u] = q.ev[i];
            ws[((lj * 8u + 2u * i + 1u) * BM + lrow) / 4u][lrow % 4u] = q.od[i];
        }
        for (var m = 0u; m < 4u; m++) {
            let idx = lid + m * WG;
            let tk = idx / BK;
            let kk = idx % BK;
            var v = 0.0;
            if t0 + tk < nt && k0 + kk < p.k {
                v = x[p.x_offset + (t0 + tk) * p.k + k0 + kk];
            }
            xs[(kk * BT + tk) / 2u][tk % 2u] = v;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            let xv = xs[(kk * BT) / 2u + tc];
            let wv = ws[(kk * BM) / 4u + tr];
            acc[0] += wv.x * xv;
            acc[1] += wv.y * xv;
            acc[2] += wv.z * xv;
            acc[3] += wv.w * xv;
        }
        workgroupBarrier();
    }

    for (var a = 0u; a < 4u; a++) {
        let r = r0 + 4u * tr + a;
        for (var b = 0u; b < 2u; b++) {
            let t = t0 + 2u * tc + b;
            if r < p.rows && t < nt {
                let o = p.y_offset + t * p.y_stride + r;
#if ACC
                y[o] += acc[a][b];
#else
                y[o] = acc[a][b];
#endif
            }
        }
    }
}
