// Quantized mat-vec for decode (one to NT·PASSES tokens):  y[t, r] (=|+=) Σ_c W[r, c] · x[t, c].
//
// Bound by bytes: every weight is read once per step, so the kernel is built to keep the
// memory system busy rather than the ALUs. Each invocation works on whole *units* (32 elements
// of a quantized type — one Q4_0/Q5_0/Q8_0 block, one K-quant sub-block — or 8 of a float type):
// one or two 16-byte weight loads, scales read once per unit, the quants unpacked with integer
// operations and one add per byte (`u8x4`) and dotted with the activations before any scale
// is applied (see `Unit` in shaders/quant/prelude.wgsl). K is a pipeline constant, so the unit loop
// has a fixed trip count the compiler unrolls and issues all of a thread's loads up front
// (Little's law: a decode step must keep megabytes in flight), and no loop bound comes from a
// buffer (Mesa's lavapipe recompiles shaders whose bounds it can inline).
//
// Dispatch: one workgroup of WG invocations per G·GC·R consecutive output rows, in G rounds of
// GC groups of R rows (linear index split over x/y by gpu::grid; groups past p.rows return).
// G·GC > 1 only with a prologue, so fewer workgroups repeat it (its reads of the residual
// stream are K floats per term per workgroup): the workgroup's invocations form GC lane groups
// of LG, each computing one group of a round, so a round's loads are all in flight at once
// (rounds run one after another, one memory latency each). Invocation i of a lane group takes
// units i, i + LG, … of the row length; for each unit it loads the activations of its NT tokens once (reordered to the
// units' even/odd lanes, with their per-half sums for the affine offsets) and reuses them for
// its R rows (2R with PAIR). One batched reduction sums the R·NT partials of each lane group
// (subgroupAdd + one shared-memory pass where subgroups fit in a lane group, else a
// shared-memory tree).
//
// Matrices: up to three bound at once (w0, w1, w2: slot 0 rows [0, N0), slot 1 [N0, N0 + N1),
// slot 2 the rest), each with its own quant type, so q/k/v run as one dispatch into one
// [T, N0 + N1 + N2] output without being concatenated at load (a Q4_K_M file mixes types across
// them). N0 and N1 are multiples of R, so a workgroup never straddles two slots. With PAIR,
// workgroup g computes rows g·R… of both w0 (gate) and w1 (up) and writes gelu(gate) ⊙ up.
//
// Input: x[t] from `x` (vec4 offset p.x_offset, p.x_stride vec4s between tokens), or with PRO
// the prologue's vector in workgroup memory (one token; see `prologue`).
// Output (one of): y = W·x; ACC: y += W·x; PAIR: y = gelu_tanh(W0·x) ⊙ (W1·x); GELU_Z:
// y = gelu_tanh(W·x) ⊙ z[t·p.z_stride + p.z_offset + r] (Gemma 4's per-layer gate).
// y[t, r] lives at p.y_offset + t·p.y_stride + r.
//
// Specialisation: K, UNIT (8 or 32, of every bound type; flag UNIT32), WG ∈ {32 … 256} (power
// of two), GC (power of two, LG = WG / GC ≥ 32 and ≥ the largest subgroup), NT ∈ {1, 4} tokens per pass (flag NT4: see `chunk_acc`), PASSES, N0, N1; flags SLOT1, SLOT2, PAIR, ACC, GELU_Z, PRO, PRO_T1,
// PRO_T2, PRO_NORM. R = 4 rows per group, G groups per workgroup. The hot loop is straight-line code over
// structs of vectors (no dynamically indexed arrays: see `Unit`). Workgroup memory: NV·WG
// floats for the reductions (the prologue's too), plus K floats with PRO.
// Precision: f32 throughout (also in the F16 variant: q·x of Gemma activations can overflow
// f16); the scale of a unit half multiplies its f32 dot product once.

struct Params {
    rows: u32,      // output rows of this dispatch (one part of W, or all slots together)
    y_stride: u32,  // elements between tokens in y
    y_offset: u32,  // element of y[0, 0] for this dispatch's first row
    x_offset: u32,  // vec4 index of x[0, 0] (PRO: of h's row 0 in the residual arena)
    x_stride: u32,  // vec4s between tokens in x
    z_stride: u32,  // GELU_Z: elements between tokens in z
    z_offset: u32,  // GELU_Z: element of z for this dispatch's first row
    eps: f32,       // PRO: RMSNorm epsilon
    hbase: vec4<u32>,  // per slot: word offset of the high-bit plane
    sbase: vec4<u32>,  // per slot: word offset of the scales plane
    pro_o1: u32,    // PRO_T1: vec4 offset of o1 relative to h's row
    pro_o2: u32,    // PRO_T2: vec4 offset of o2 relative to h's row
    pro_w1: u32,    // PRO_T1: vec4 offset of o1's norm weight in nw
    pro_w2: u32,    // PRO_T2: vec4 offset of o2's norm weight in nw
    pro_wn: u32,    // PRO_NORM: vec4 offset of the final norm weight in nw
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

const K: u32 = {{K}}u;
const UNIT: u32 = {{UNIT}}u;
const U: u32 = K / UNIT;       // units per row
const UV: u32 = UNIT / 4u;     // activation vec4s per unit
const K4: u32 = K / 4u;
const WG: u32 = {{WG}}u;
#if LANE_ROWS
const R: u32 = WG;             // output rows per group: one per invocation
#else
const R: u32 = 4u;             // output rows per group (one vec4 of partial sums)
#endif
const G: u32 = {{G}}u;         // row groups per lane group, one after another (more with PRO: one prologue serves them)
const GC: u32 = {{GC}}u;       // lane groups: row groups computed at once (PRO; 1 with LANE_ROWS)
const LG: u32 = WG / GC;       // invocations per lane group
const NT: u32 = {{NT}}u;       // tokens per pass (1 or 4)
const PASSES: u32 = {{PASSES}}u; // passes over the rows: a step takes up to NT·PASSES tokens
const N0: u32 = {{N0}}u;       // rows of slot 0 (multi-slot dispatches)
const N1: u32 = {{N1}}u;       // rows of slot 1
#if PAIR
const RW: u32 = 8u;            // weight rows per group: 4 gate rows, 4 up rows
#else
const RW: u32 = 4u;
#endif
const NV: u32 = RW * NT;       // partial sums per invocation

@group(0) @binding(0) var<storage, read> w0: array<vec4<u32>>;   // slot 0: one part of W, GPU layout (src/quant/layout.rs)
#if SLOT1
@group(0) @binding(1) var<storage, read> w1: array<vec4<u32>>;   // slot 1
#endif
#if SLOT2
@group(0) @binding(2) var<storage, read> w2: array<vec4<u32>>;   // slot 2
#endif
@group(0) @binding(3) var<storage, read> x: array<vec4<f32>>;    // [T, x_stride] f32 (PRO: the residual arena, h at row t·x_stride)
#if PRO
@group(0) @binding(4) var<storage, read> nw: array<vec4<f32>>;   // norm weights, each [K] f32 at a vec4 offset
#endif
@group(0) @binding(5) var<storage, read_write> y: array<f32>;    // [T, y_stride] f32
@group(0) @binding(6) var<{{PARAMS}}> p: Params;
@group(0) @binding(7) var<{{PARAMS}}> step: Step;
#if GELU_Z
@group(0) @binding(8) var<storage, read> z: array<f32>;          // [T, z_stride] f32
#endif

{{QUANT}}

var<workgroup> red: array<f32, NV * WG>;  // [NV, WG] partial sums
#if PRO
// [K] the prologue's input vector, unit-major: vec4 j of unit u at xs[j·U + u], so the
// invocations of a warp, each reading its own unit, read consecutive addresses (unit by unit
// they would all hit one bank: the first version's prologue kernels ran 5-10x slower).
var<workgroup> xs: array<vec4<f32>, K4>;

// Where vec4 i of the vector lives in `xs`.
fn xs_at(i: u32) -> u32 {
    return (i % UV) * U + i / UV;
}
#endif

// The activations of one unit for one token, in the order of `Unit`: v{2c} / v{2c+1} are chunk
// c's even and odd lanes, s the sums of the unit's two halves (for the affine offsets).
// Fields, not arrays, for the same reason as `Unit`.
struct XUnit {
    v0: vec4<f32>,
    v1: vec4<f32>,
    v2: vec4<f32>,
    v3: vec4<f32>,
    v4: vec4<f32>,
    v5: vec4<f32>,
    v6: vec4<f32>,
    v7: vec4<f32>,
    s: vec2<f32>,
}

// Partial sums of the R rows of one slot, one vec4 per token.
struct Acc {
    t0: vec4<f32>,
    t1: vec4<f32>,
    t2: vec4<f32>,
    t3: vec4<f32>,
}

fn x_vec(t: u32, i: u32) -> vec4<f32> {
#if PRO
    return xs[xs_at(i)];
#else
    return x[p.x_offset + t * p.x_stride + i];
#endif
}

// Chunk c of a unit: the two vec4s of x as even and odd lanes.
fn x_even(a: vec4<f32>, b: vec4<f32>) -> vec4<f32> {
    return vec4<f32>(a.x, a.z, b.x, b.z);
}
fn x_odd(a: vec4<f32>, b: vec4<f32>) -> vec4<f32> {
    return vec4<f32>(a.y, a.w, b.y, b.w);
}
fn sum4(v: vec4<f32>) -> f32 {
    return (v.x + v.y) + (v.z + v.w);
}

// Token t's activations of unit u (zero when the step has no token t).
fn load_x(u: u32, t: u32, nt: u32) -> XUnit {
    var xu: XUnit;
    if t >= nt {
        return xu;
    }
    let i = u * UV;
    let a0 = x_vec(t, i);
    let b0 = x_vec(t, i + 1u);
    xu.v0 = x_even(a0, b0);
    xu.v1 = x_odd(a0, b0);
#if UNIT32
    let a1 = x_vec(t, i + 2u);
    let b1 = x_vec(t, i + 3u);
    let a2 = x_vec(t, i + 4u);
    let b2 = x_vec(t, i + 5u);
    let a3 = x_vec(t, i + 6u);
    let b3 = x_vec(t, i + 7u);
    xu.v2 = x_even(a1, b1);
    xu.v3 = x_odd(a1, b1);
    xu.v4 = x_even(a2, b2);
    xu.v5 = x_odd(a2, b2);
    xu.v6 = x_even(a3, b3);
    xu.v7 = x_odd(a3, b3);
    xu.s = vec2<f32>(sum4(a0 + b0) + sum4(a1 + b1), sum4(a2 + b2) + sum4(a3 + b3));
#else
    xu.s = vec2<f32>(0.0, sum4(a0 + b0));
#endif
    return xu;
}

// One row's unit dotted with one token's activations.
#if UNIT32
alias UnitT = Packed;
fn unit_dot(un: Packed, xu: XUnit) -> f32 {
    let s0 = dot(u8x4(un.lo.x), xu.v0) + dot(u8x4(un.hi.x), xu.v1)
        + dot(u8x4(un.lo.y), xu.v2) + dot(u8x4(un.hi.y), xu.v3);
    let s1 = dot(u8x4(un.lo.z), xu.v4) + dot(u8x4(un.hi.z), xu.v5)
        + dot(u8x4(un.lo.w), xu.v6) + dot(u8x4(un.hi.w), xu.v7);
    return un.a.x * s0 + un.a.y * s1 - dot(un.b, xu.s);
}
#else
alias UnitT = Chunk;
fn unit_dot(un: Chunk, xu: XUnit) -> f32 {
    return dot(un.ev, xu.v0) + dot(un.od, xu.v1);
}
#endif

// One row's unit dotted with every token's activations.
fn tokens_dot(un: UnitT, x0: XUnit, x1: XUnit, x2: XUnit, x3: XUnit) -> vec4<f32> {
#if NT4
    return vec4<f32>(unit_dot(un, x0), unit_dot(un, x1), unit_dot(un, x2), unit_dot(un, x3));
#else
    return vec4<f32>(unit_dot(un, x0), 0.0, 0.0, 0.0);
#endif
}

// Four rows' units dotted with one token's activations (the one-token kernel).
fn rows_dot(u0: UnitT, u1: UnitT, u2: UnitT, u3: UnitT, x0: XUnit) -> Acc {
    var a: Acc;
    a.t0 = vec4<f32>(unit_dot(u0, x0), unit_dot(u1, x0), unit_dot(u2, x0), unit_dot(u3, x0));
    return a;
}

// Several tokens (NT4): each row's unit is unpacked once, chunk by chunk, and dotted with every
// token's activations of that chunk, so a thread holds one chunk of its rows and two vec4s per
// token at a time — not every token's whole unit (136 floats), which cost the first four-token
// kernel its occupancy.

// One 8-element chunk of four rows, unpacked: even and odd lanes of each.
struct RowChunks {
    e0: vec4<f32>,
    o0: vec4<f32>,
    e1: vec4<f32>,
    o1: vec4<f32>,
    e2: vec4<f32>,
    o2: vec4<f32>,
    e3: vec4<f32>,
    o3: vec4<f32>,
}

// The four rows' chunk dotted with one token's chunk (vec4s xa, xb of x).
fn chunks_dot(r: RowChunks, xa: vec4<f32>, xb: vec4<f32>) -> vec4<f32> {
    let xe = x_even(xa, xb);
    let xo = x_odd(xa, xb);
    return vec4<f32>(
        dot(r.e0, xe) + dot(r.o0, xo),
        dot(r.e1, xe) + dot(r.o1, xo),
        dot(r.e2, xe) + dot(r.o2, xo),
        dot(r.e3, xe) + dot(r.o3, xo),
    );
}

// One unit of four consecutive rows (a row group), still packed.
struct Rows4 {
    u0: UnitT,
    u1: UnitT,
    u2: UnitT,
    u3: UnitT,
}

// One chunk of x for the pass's four tokens (zero for tokens ≥ te).
struct XChunk {
    a0: vec4<f32>,
    b0: vec4<f32>,
    a1: vec4<f32>,
    b1: vec4<f32>,
    a2: vec4<f32>,
    b2: vec4<f32>,
    a3: vec4<f32>,
    b3: vec4<f32>,
}

// vec4s i and i + 1 of tokens t0 … t0 + 3 (those < te).
fn x_chunk(i: u32, t0: u32, te: u32) -> XChunk {
    var xc: XChunk;
    if t0 < te {
        xc.a0 = x_vec(t0, i);
        xc.b0 = x_vec(t0, i + 1u);
    }
    if t0 + 1u < te {
        xc.a1 = x_vec(t0 + 1u, i);
        xc.b1 = x_vec(t0 + 1u, i + 1u);
    }
    if t0 + 2u < te {
        xc.a2 = x_vec(t0 + 2u, i);
        xc.b2 = x_vec(t0 + 2u, i + 1u);
    }
    if t0 + 3u < te {
        xc.a3 = x_vec(t0 + 3u, i);
        xc.b3 = x_vec(t0 + 3u, i + 1u);
    }
    return xc;
}

// a + sc · (the rows' chunk dotted with every token's chunk).
fn chunk_acc(a: Acc, rc: RowChunks, sc: vec4<f32>, xc: XChunk) -> Acc {
    return Acc(
        a.t0 + sc * chunks_dot(rc, xc.a0, xc.b0),
        a.t1 + sc * chunks_dot(rc, xc.a1, xc.b1),
        a.t2 + sc * chunks_dot(rc, xc.a2, xc.b2),
        a.t3 + sc * chunks_dot(rc, xc.a3, xc.b3),
    );
}

// Per-token sums of a unit's two halves (for the affine offsets).
struct Sums {
    t0: vec2<f32>,
    t1: vec2<f32>,
    t2: vec2<f32>,
    t3: vec2<f32>,
}

#if UNIT32
const CHUNKS: u32 = 4u;  // chunks per unit

fn rows_chunk(w: Rows4, c: u32) -> RowChunks {
    return RowChunks(
        u8x4(w.u0.lo[c]), u8x4(w.u0.hi[c]),
        u8x4(w.u1.lo[c]), u8x4(w.u1.hi[c]),
        u8x4(w.u2.lo[c]), u8x4(w.u2.hi[c]),
        u8x4(w.u3.lo[c]), u8x4(w.u3.hi[c]),
    );
}

// The four rows' scales of unit half h.
fn rows_scale(w: Rows4, h: u32) -> vec4<f32> {
    return vec4<f32>(w.u0.a[h], w.u1.a[h], w.u2.a[h], w.u3.a[h]);
}

fn sums_add(s: Sums, xc: XChunk, h: u32) -> Sums {
    var r = s;
    r.t0[h] += sum4(xc.a0 + xc.b0);
    r.t1[h] += sum4(xc.a1 + xc.b1);
    r.t2[h] += sum4(xc.a2 + xc.b2);
    r.t3[h] += sum4(xc.a3 + xc.b3);
    return r;
}

fn offsets(w: Rows4, s: vec2<f32>) -> vec4<f32> {
    return vec4<f32>(dot(w.u0.b, s), dot(w.u1.b, s), dot(w.u2.b, s), dot(w.u3.b, s));
}

// A unit's scaled dots less the rows' affine offsets.
fn unit_done(d: Acc, w: Rows4, s: Sums) -> Acc {
    return Acc(d.t0 - offsets(w, s.t0), d.t1 - offsets(w, s.t1), d.t2 - offsets(w, s.t2), d.t3 - offsets(w, s.t3));
}
#else
const CHUNKS: u32 = 1u;

fn rows_chunk(w: Rows4, c: u32) -> RowChunks {
    return RowChunks(w.u0.ev, w.u0.od, w.u1.ev, w.u1.od, w.u2.ev, w.u2.od, w.u3.ev, w.u3.od);
}

fn rows_scale(w: Rows4, h: u32) -> vec4<f32> {
    return vec4<f32>(1.0);
}

fn sums_add(s: Sums, xc: XChunk, h: u32) -> Sums {
    return s;
}

fn unit_done(d: Acc, w: Rows4, s: Sums) -> Acc {
    return d;
}
#endif

fn acc_add(a: Acc, b: Acc) -> Acc {
    return Acc(a.t0 + b.t0, a.t1 + b.t1, a.t2 + b.t2, a.t3 + b.t3);
}

{{ROWS}}

#if PRO
// Two sums over the whole workgroup, every invocation gets them (uniform control flow). Uses
// `red` (NV ≥ 4 rows of WG floats), which is free outside `row_group`.
fn pro_sum2(v: vec2<f32>, inv: Invocation) -> vec2<f32> {
#if SUBGROUPS
    let s = subgroupAdd(v);
    let size = min(inv.sg_size, WG);
    if inv.sg_lane == 0u {
        red[inv.lid / size] = s.x;
        red[WG + inv.lid / size] = s.y;
    }
    workgroupBarrier();
    var total = vec2<f32>(0.0);
    for (var i = 0u; i < WG / size; i++) {
        total += vec2<f32>(red[i], red[WG + i]);
    }
#else
    red[inv.lid] = v.x;
    red[WG + inv.lid] = v.y;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
        if inv.lid < stride {
            red[inv.lid] += red[inv.lid + stride];
            red[WG + inv.lid] += red[WG + inv.lid + stride];
        }
        workgroupBarrier();
    }
    let total = vec2<f32>(red[0], red[WG]);
#endif
    workgroupBarrier();
    return total;
}

// The input vector of one token, into `xs`: x = h + Σ_i rms(o_i) · w_i (PRO_T1, PRO_T2), then
// with PRO_NORM x = rms(x) · w_n, where rms(v) = v / sqrt(mean(v²) + eps) over K elements and
// h, o_i are rows of the residual arena (`x`) — the post-norms and the next block's input norm
// of a Gemma layer, recomputed by every workgroup instead of materialised by a dispatch of
// their own. One token: the step's first row. All invocations call it.
fn prologue(inv: Invocation) {
    let row = p.x_offset;
    var ss = vec2<f32>(0.0);
    for (var i = inv.lid; i < K4; i += WG) {
#if PRO_T1
        let o1 = x[row + p.pro_o1 + i];
        ss.x += dot(o1, o1);
#endif
#if PRO_T2
        let o2 = x[row + p.pro_o2 + i];
        ss.y += dot(o2, o2);
#endif
    }
#if PRO_T1
    // Both terms' sums of squares in one round of barriers.
    let total = pro_sum2(ss, inv);
    let s1 = inverseSqrt(total.x / f32(K) + p.eps);
    let s2 = inverseSqrt(total.y / f32(K) + p.eps);
#endif
    var sx = 0.0;
    for (var i = inv.lid; i < K4; i += WG) {
        var v = x[row + i];
#if PRO_T1
        v = v + x[row + p.pro_o1 + i] * s1 * nw[p.pro_w1 + i];
#endif
#if PRO_T2
        v = v + x[row + p.pro_o2 + i] * s2 * nw[p.pro_w2 + i];
#endif
        xs[xs_at(i)] = v;
        sx += dot(v, v);
    }
#if PRO_NORM
    let sn = inverseSqrt(pro_sum2(vec2<f32>(sx, 0.0), inv).x / f32(K) + p.eps);
    for (var i = inv.lid; i < K4; i += WG) {
        xs[xs_at(i)] = xs[xs_at(i)] * sn * nw[p.pro_wn + i];
    }
#endif
    workgroupBarrier();
}
#endif

@compute @workgroup_size(WG)
fn main(inv: Invocation, grp: Workgroup) {
    let first = linear_group(grp.wg, grp.nwg) * G * GC * R;
    // Uniform per workgroup, so the barriers below stay in uniform control flow.
    if first >= p.rows {
        return;
    }
#if PRO
    prologue(inv);
    let nt = min(step.n_tokens, 1u);
#else
    let nt = min(step.n_tokens, NT * PASSES);
#endif
    // Passes of NT tokens: a later pass reads the workgroup's rows again, from the cache.
    for (var ps = 0u; ps < PASSES; ps++) {
        let t0 = ps * NT;
        if t0 < nt {
#if LANE_ROWS
            for (var g = 0u; g < G; g++) {
                let r0 = first + g * R;
                if r0 < p.rows {
                    lane_row(r0 + inv.lid, t0, nt);
                }
            }
#else
            for (var g = 0u; g < G; g++) {
                let round = first + g * GC * R;
                if round < p.rows {
                    // A lane group past the last row computes the last row again and writes nothing.
                    row_group(inv, round + (inv.lid / LG) * R, t0, nt);
                }
                // `red` is reused by the next round.
                workgroupBarrier();
            }
#endif
        }
    }
}

#if LANE_ROWS
// Row r, whole, by one invocation (the mapping for CPU adapters: every invocation of a SIMD batch
// reads the same activations, so the emulated GPU loads them once instead of gathering them per
// lane, and no reduction is needed).
fn lane_row(r: u32, t0: u32, nt: u32) {
    var acc = vec4<f32>(0.0);  // per token
#if PAIR
    var acc_up = vec4<f32>(0.0);
#endif
    for (var u = 0u; u < U; u++) {
        let x0 = load_x(u, t0, nt);
#if NT4
        let x1 = load_x(u, t0 + 1u, nt);
        let x2 = load_x(u, t0 + 2u, nt);
        let x3 = load_x(u, t0 + 3u, nt);
#else
        let x1 = x0;
        let x2 = x0;
        let x3 = x0;
#endif
#if PAIR
        acc += row0(r, p.rows - 1u, u, x0, x1, x2, x3);
        acc_up += row1(r, p.rows - 1u, u, x0, x1, x2, x3);
#else
#if SLOT2
        if r < N0 {
            acc += row0(r, N0 - 1u, u, x0, x1, x2, x3);
        } else if r < N0 + N1 {
            acc += row1(r - N0, N1 - 1u, u, x0, x1, x2, x3);
        } else {
            acc += row2(r - N0 - N1, p.rows - N0 - N1 - 1u, u, x0, x1, x2, x3);
        }
#else
#if SLOT1
        if r < N0 {
            acc += row0(r, N0 - 1u, u, x0, x1, x2, x3);
        } else {
            acc += row1(r - N0, p.rows - N0 - 1u, u, x0, x1, x2, x3);
        }
#else
        acc += row0(r, p.rows - 1u, u, x0, x1, x2, x3);
#endif
#endif
#endif
    }
    if r >= p.rows {
        return;
    }
    // A fixed trip count (no loop bound from a uniform: see the header).
    for (var i = 0u; i < NT; i++) {
        let t = t0 + i;
        if t < nt {
            let o = p.y_offset + t * p.y_stride + r;
#if PAIR
            y[o] = gelu_tanh(acc[i]) * acc_up[i];
#else
#if GELU_Z
            y[o] = gelu_tanh(acc[i]) * z[p.z_offset + t * p.z_stride + r];
#else
#if ACC
            y[o] += acc[i];
#else
            y[o] = acc[i];
#endif
#endif
#endif
        }
    }
}
#else

// Sums each lane group's partials by a shared-memory tree: red[v·WG + lane group start] holds
// lane group's total of partial v. Every invocation calls it.
fn tree_sum(part: array<f32, NV>, lid: u32, li: u32) {
    for (var v = 0u; v < NV; v++) {
        red[v * WG + lid] = part[v];
    }
    workgroupBarrier();
    for (var stride = LG / 2u; stride > 0u; stride /= 2u) {
        if li < stride {
            for (var v = 0u; v < NV; v++) {
                red[v * WG + lid] += red[v * WG + lid + stride];
            }
        }
        workgroupBarrier();
    }
}

// A row group's units: its four rows of W (PAIR: of the gate, and of the up projection in `v`).
struct Units {
    w: Rows4,
#if PAIR
    v: Rows4,
#endif
}

// Partial sums of a row group, one vec4 of rows per token (PAIR: the up rows' in `v`).
struct GAcc {
    g: Acc,
    v: Acc,
}

fn gacc_add(a: GAcc, b: GAcc) -> GAcc {
    return GAcc(acc_add(a.g, b.g), acc_add(a.v, b.v));
}

// Unit u of the row group from output row r (all of a lane group's rows lie in one slot).
fn group_units(r: u32, u: u32) -> Units {
#if PAIR
    return Units(rows_units0(r, p.rows - 1u, u), rows_units1(r, p.rows - 1u, u));
#else
#if SLOT2
    if r < N0 {
        return Units(rows_units0(r, N0 - 1u, u));
    }
    if r < N0 + N1 {
        return Units(rows_units1(r - N0, N1 - 1u, u));
    }
    return Units(rows_units2(r - N0 - N1, p.rows - N0 - N1 - 1u, u));
#else
#if SLOT1
    if r < N0 {
        return Units(rows_units0(r, N0 - 1u, u));
    }
    return Units(rows_units1(r - N0, p.rows - N0 - 1u, u));
#else
    return Units(rows_units0(r, p.rows - 1u, u));
#endif
#endif
#endif
}

// One token: the group's units dotted with the token's activations of the unit.
fn group_dot(a: GAcc, n: Units, x0: XUnit) -> GAcc {
    var r = a;
    r.g = acc_add(r.g, rows_dot(n.w.u0, n.w.u1, n.w.u2, n.w.u3, x0));
#if PAIR
    r.v = acc_add(r.v, rows_dot(n.v.u0, n.v.u1, n.v.u2, n.v.u3, x0));
#endif
    return r;
}

// Several tokens: chunk c of the group's units, scaled, dotted with the tokens' chunk.
fn group_chunk(a: GAcc, n: Units, c: u32, xc: XChunk) -> GAcc {
    var r = a;
    r.g = chunk_acc(r.g, rows_chunk(n.w, c), rows_scale(n.w, c / 2u), xc);
#if PAIR
    r.v = chunk_acc(r.v, rows_chunk(n.v, c), rows_scale(n.v, c / 2u), xc);
#endif
    return r;
}

fn group_done(d: GAcc, n: Units, s: Sums) -> GAcc {
    var r = d;
    r.g = unit_done(d.g, n.w, s);
#if PAIR
    r.v = unit_done(d.v, n.v, s);
#endif
    return r;
}

// Partial v = r·NT + t of the row group's sums (PAIR: the up rows' at v + R·NT).
fn put(part: ptr<function, array<f32, NV>>, a: GAcc) {
    for (var r = 0u; r < R; r++) {
        let v = r * NT;
        (*part)[v] = a.g.t0[r];
#if NT4
        (*part)[v + 1u] = a.g.t1[r];
        if NT > 2u {
            (*part)[v + 2u] = a.g.t2[r];
            (*part)[v + 3u] = a.g.t3[r];
        }
#endif
#if PAIR
        let w = v + R * NT;
        (*part)[w] = a.v.t0[r];
#if NT4
        (*part)[w + 1u] = a.v.t1[r];
        if NT > 2u {
            (*part)[w + 2u] = a.v.t2[r];
            (*part)[w + 3u] = a.v.t3[r];
        }
#endif
#endif
    }
}

// The R output rows from r0 for tokens t0 … t0 + NT − 1 by the invocation's lane group: every
// invocation's partial sums, then the reduction and the write.
fn row_group(inv: Invocation, r0: u32, t0: u32, nt: u32) {
    var acc: GAcc;
    let li = inv.lid % LG;
    // The pass's tokens end at t0 + NT (an XChunk holds up to four).
    let te = min(nt, t0 + NT);
    for (var u = li; u < U; u += LG) {
        let n = group_units(r0, u);
#if NT4
        var d: GAcc;
        var sums: Sums;
        for (var c = 0u; c < CHUNKS; c++) {
            let xc = x_chunk(u * UV + 2u * c, t0, te);
            sums = sums_add(sums, xc, c / 2u);
            d = group_chunk(d, n, c, xc);
        }
        acc = gacc_add(acc, group_done(d, n, sums));
#else
        acc = group_dot(acc, n, load_x(u, 0u, nt));
#endif
    }

    var part: array<f32, NV>;
    put(&part, acc);

    // Lane group gi sums its partials into red[v·WG + at + i], i < parts.
    let gi = inv.lid / LG;
    var at = gi * LG;
    var parts = 1u;
#if SUBGROUPS
    // Every subgroup lies in one lane group (Rust makes lane groups no smaller than the
    // adapter's largest subgroup).
    let size = min(inv.sg_size, WG);
    for (var v = 0u; v < NV; v++) {
        let s = subgroupAdd(part[v]);
        if inv.sg_lane == 0u {
            red[v * WG + inv.lid / size] = s;
        }
    }
    workgroupBarrier();
    at = gi * (LG / size);
    parts = LG / size;
#else
    tree_sum(part, inv.lid, li);
#endif
    for (var v = li; v < R * NT; v += LG) {
        var total = 0.0;
        for (var i = 0u; i < parts; i++) {
            total += red[v * WG + at + i];
        }
        let r = r0 + v / NT;
        let t = t0 + v % NT;
        if r < p.rows && t < nt {
            let o = p.y_offset + t * p.y_stride + r;
#if PAIR
            var up = 0.0;
            for (var i = 0u; i < parts; i++) {
                up += red[(v + R * NT) * WG + at + i];
            }
            y[o] = gelu_tanh(total) * up;
#else
#if GELU_Z
            y[o] = gelu_tanh(total) * z[p.z_offset + t * p.z_stride + r];
#else
#if ACC
            y[o] += total;
#else
            y[o] = total;
#endif
#endif
#endif
        }
    }
}
#endif
