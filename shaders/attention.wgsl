// Tiled flash attention over the KV cache (prefill-sized steps; decode-sized ones run
// attention_decode.wgsl).
//
//   o[t, h] = Σ_j softmax_j(scale · q[t, h] · k[j, g]) · v[j, g],   g = h / (nq / nkv)
//   over keys j with j ≤ p and, on sliding layers (window W > 0), j > p − W, where p = pos0 + t.
//
// Key j lives in cache slot j % cap: the step's own rows were stored before this runs, and the
// ring is large enough that none of them overwrote a key the step still needs (see
// AttentionParams).
//
// Dispatch: one workgroup of 256 invocations per (row tile, KV head) on x/y (linear index
// tile · nkv + g, split by gpu::grid) and one per key split on z. A KV head's query rows are the
// T·G pairs (token t, head h of its group) in order R = t·G + (h mod G); a tile is BQ
// consecutive rows, so the heads sharing a KV head read each K/V element once together. The
// workgroup walks its key range in tiles of BK keys with an online softmax (running max m, sum
// l, rescaled accumulators): no score row ever reaches global memory.
//   1. scores S[BQ, BK] = Q·Kᵀ, accumulated over d in chunks of DC staged in workgroup memory;
//   2. mask (causal, window, range) and per-row online-softmax update, each row's 256/BQ
//      invocations owning BQ·BK/256 consecutive scores and reducing max and sum together;
//   3. O[BQ, d] = α·O + P·V, each invocation owning RPT rows of one column pair, V read from
//      global memory (each word read once per workgroup when d = 512).
// With nwg.z = 1 the normalised output goes straight to `out`; otherwise each split writes
// (o unnormalised, m, l) to `part` and attention_merge.wgsl combines the splits.
//
// Specialisation: HEAD_DIM ∈ {8, …, 512}; BQ ≥ 16; BK·BQ ∈ {256, 512}; DC | HEAD_DIM,
// 4 | DC. Workgroup memory: (BQ + BK)·DC + BQ·BK + 3·BQ + 256 floats = 15.2 KiB at most
// (WebGPU's default is 16 KiB).
// Assumptions: nq % nkv == 0; positions < 2³²; cap ≥ the keys a step needs (see AttentionParams).
// Precision: K/V are f16 (packed pairs; the F16 variant reads them as vec2<f16>), or f32 with
// KV_F32 (pairs as vec2<f32>, twice the memory, in every capability variant); everything else
// f32: dot products, softmax statistics, accumulators and output. Either way a K/V row is DW
// pairs, so the indexing below is the same for both.

struct Params {
    n_q_heads: u32,   // nq
    n_kv_heads: u32,  // nkv
    cap: u32,         // cache slots; key j lives in slot j % cap
    window: u32,      // sliding window W, 0 = full attention
    scale: f32,       // multiplies q·k
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

const D: u32 = {{HEAD_DIM}}u;
const DW: u32 = D / 2u;            // K/V pairs (f16 words or f32 pairs) per head row
const BQ: u32 = {{BQ}}u;           // query rows per workgroup
const BK: u32 = {{BK}}u;           // keys per tile
const DC: u32 = {{DC}}u;           // head-dim chunk staged per pass
const DC4: u32 = DC / 4u;
const WG: u32 = 256u;
const TPR: u32 = WG / BQ;          // invocations per score row
const SPT: u32 = BK / TPR;         // scores per invocation (consecutive keys of one row)
const TPP: u32 = WG / DW;          // invocations sharing one output column pair
const RPT: u32 = BQ / TPP;         // output rows per invocation
const NEG: f32 = -3.0e38;          // "masked" / "no key yet"; never a real score

@group(0) @binding(0) var<storage, read> q: array<vec4<f32>>;         // [T, nq, d] f32
#if KV_F32
@group(0) @binding(1) var<storage, read> k_cache: array<vec2<f32>>;   // [cap, nkv, d/2] f32 pairs
@group(0) @binding(2) var<storage, read> v_cache: array<vec2<f32>>;   // [cap, nkv, d/2] f32 pairs
#else
#if F16
@group(0) @binding(1) var<storage, read> k_cache: array<vec2<f16>>;   // [cap, nkv, d] f16
@group(0) @binding(2) var<storage, read> v_cache: array<vec2<f16>>;   // [cap, nkv, d] f16
#else
@group(0) @binding(1) var<storage, read> k_cache: array<u32>;         // [cap, nkv, d/2] f16 pairs
@group(0) @binding(2) var<storage, read> v_cache: array<u32>;         // [cap, nkv, d/2] f16 pairs
#endif
#endif
@group(0) @binding(3) var<storage, read_write> out: array<vec2<f32>>; // [T, nq, d] f32
// Split partials: [0] = number of splits S, then o [S, T·nq, d], then (m, l) [S, T·nq, 2].
@group(0) @binding(4) var<storage, read_write> part: array<f32>;
@group(0) @binding(5) var<{{PARAMS}}> p: Params;
@group(0) @binding(6) var<{{PARAMS}}> step: Step;

var<workgroup> qs: array<vec4<f32>, BQ * DC4>;   // Q chunk [BQ, DC]
var<workgroup> ks: array<vec4<f32>, BK * DC4>;   // K chunk [BK, DC]
var<workgroup> ss: array<f32, BQ * BK>;          // scores, then probabilities [BQ, BK]
var<workgroup> m_sh: array<f32, BQ>;             // running max per row
var<workgroup> l_sh: array<f32, BQ>;             // running sum per row
var<workgroup> alpha_sh: array<f32, BQ>;         // rescale of this tile per row
var<workgroup> red: array<f32, WG>;              // per-invocation row max / sum partials

// Index of pair w (one array element: an f16 word or an f32 pair) of key j, KV head g.
fn cache_word(j: u32, g: u32, w: u32) -> u32 {
    return ((j % p.cap) * p.n_kv_heads + g) * DW + w;
}

// One stored K/V pair as f32.
#if KV_F32
fn kv_pair(x: vec2<f32>) -> vec2<f32> {
    return x;
}
#else
#if F16
fn kv_pair(x: vec2<f16>) -> vec2<f32> {
    return vec2<f32>(x);
}
#else
fn kv_pair(x: u32) -> vec2<f32> {
    return unpack2x16float(x);
}
#endif
#endif

// Dims (2w, 2w+1) of key j, KV head g.
fn load_k(j: u32, g: u32, w: u32) -> vec2<f32> {
    return kv_pair(k_cache[cache_word(j, g, w)]);
}

fn load_v(j: u32, g: u32, w: u32) -> vec2<f32> {
    return kv_pair(v_cache[cache_word(j, g, w)]);
}

// First key any query of this step may see (the split ranges partition [step_lo, pos0 + T)).
fn first_key(pos: u32) -> u32 {
    if p.window > 0u && pos + 1u > p.window {
        return pos + 1u - p.window;
    }
    return 0u;
}

@compute @workgroup_size(256)
fn main(inv: Invocation, grp: Workgroup) {
    let lid = inv.lid;
    let group = p.n_q_heads / p.n_kv_heads;
    let rows = step.n_tokens * group;      // query rows of one KV head
    let n_tiles = (rows + BQ - 1u) / BQ;
    let lin = linear_group(grp.wg, grp.nwg);
    // Uniform per workgroup: barriers below stay in uniform control flow.
    if lin >= n_tiles * p.n_kv_heads {
        return;
    }
    let g = lin % p.n_kv_heads;
    let r0 = (lin / p.n_kv_heads) * BQ;
    let split = grp.wg.z;
    let n_splits = grp.nwg.z;

    // Keys this tile needs: from the first row's window start to the last row's position,
    // cut to this split's share of the step's key range.
    let p_first = step.pos0 + r0 / group;
    let p_last = step.pos0 + (min(r0 + BQ, rows) - 1u) / group;
    let step_lo = first_key(step.pos0);
    let step_hi = step.pos0 + step.n_tokens;
    let chunk = ((step_hi - step_lo + n_splits - 1u) / n_splits + BK - 1u) / BK * BK;
    let lo = max(first_key(p_first), step_lo + split * chunk);
    let hi = min(p_last + 1u, step_lo + min(split + 1u, n_splits) * chunk);

    if lid < BQ {
        m_sh[lid] = NEG;
        l_sh[lid] = 0.0;
    }
    let sr = lid / TPR;          // score row
    let sc0 = (lid % TPR) * SPT; // first score column
    let cp = lid % DW;   // output column pair
    let rg = lid / DW;   // first output row; rows rg + k·TPP
    var o: array<vec2<f32>, RPT>;
    for (var k = 0u; k < RPT; k++) {
        o[k] = vec2<f32>(0.0);
    }
    workgroupBarrier();

    for (var j0 = lo; j0 < hi; j0 += BK) {
        // 1. Scores, d in chunks of DC.
        var sc: array<f32, SPT>;
        for (var i = 0u; i < SPT; i++) {
            sc[i] = 0.0;
        }
        for (var c0 = 0u; c0 < D; c0 += DC) {
            for (var i = lid; i < BQ * DC4; i += WG) {
                let row = r0 + i / DC4;
                var val = vec4<f32>(0.0);
                if row < rows {
                    let h = g * group + row % group;
                    val = q[((row / group * p.n_q_heads + h) * D + c0) / 4u + i % DC4];
                }
                qs[i] = val;
            }
            for (var i = lid; i < BK * DC4; i += WG) {
                let j = j0 + i / DC4;
                var val = vec4<f32>(0.0);
                if j < hi {
                    let w = c0 / 2u + 2u * (i % DC4);
                    val = vec4<f32>(load_k(j, g, w), load_k(j, g, w + 1u));
                }
                ks[i] = val;
            }
            workgroupBarrier();
            for (var i = 0u; i < SPT; i++) {
                let qb = sr * DC4;
                let kb = (sc0 + i) * DC4;
                var acc = 0.0;
                for (var e = 0u; e < DC4; e++) {
                    acc += dot(qs[qb + e], ks[kb + e]);
                }
                sc[i] += acc;
            }
            workgroupBarrier();
        }
        // 2. Mask (causal, sliding window p − W < j ≤ p, end of range) and the online-softmax
        // update, the TPR invocations of a row reducing through `red`.
        let row = r0 + sr;
        let pos = step.pos0 + row / group;
        var mx_part = NEG;
        for (var i = 0u; i < SPT; i++) {
            let j = j0 + sc0 + i;
            var val = NEG;
            if row < rows && j < hi && j <= pos && (p.window == 0u || j + p.window > pos) {
                val = sc[i] * p.scale;
            }
            sc[i] = val;
            mx_part = max(mx_part, val);
        }
        red[lid] = mx_part;
        workgroupBarrier();
        let m_old = m_sh[sr];
        var mx = m_old;
        for (var k = 0u; k < TPR; k++) {
            mx = max(mx, red[sr * TPR + k]);
        }
        var sum_part = 0.0;
        for (var i = 0u; i < SPT; i++) {
            var e = 0.0;
            if sc[i] != NEG {
                e = exp(sc[i] - mx);
            }
            ss[sr * BK + sc0 + i] = e;
            sum_part += e;
        }
        workgroupBarrier();
        red[lid] = sum_part;
        workgroupBarrier();
        if lid % TPR == 0u {
            var sum = 0.0;
            for (var k = 0u; k < TPR; k++) {
                sum += red[sr * TPR + k];
            }
            // Both NEG (nothing seen yet): exp(0) = 1 rescales zeros, harmless.
            let a = exp(m_old - mx);
            alpha_sh[sr] = a;
            m_sh[sr] = mx;
            l_sh[sr] = l_sh[sr] * a + sum;
        }
        workgroupBarrier();
        // 3. O = α·O + P·V. Keys past `hi` are never read (their V may be garbage); masked keys
        // inside the range have p = 0 and real (finite) V rows.
        for (var k = 0u; k < RPT; k++) {
            o[k] *= alpha_sh[rg + k * TPP];
        }
        // Four keys per iteration: four independent V loads in flight instead of one (at
        // decode a workgroup is alone on its SM, so load latency is the whole cost).
        let n_keys = min(BK, hi - j0);
        var c = 0u;
        for (; c + 4u <= n_keys; c += 4u) {
            let v0 = load_v(j0 + c, g, cp);
            let v1 = load_v(j0 + c + 1u, g, cp);
            let v2 = load_v(j0 + c + 2u, g, cp);
            let v3 = load_v(j0 + c + 3u, g, cp);
            for (var k = 0u; k < RPT; k++) {
                let s = (rg + k * TPP) * BK + c;
                o[k] += ss[s] * v0 + ss[s + 1u] * v1 + ss[s + 2u] * v2 + ss[s + 3u] * v3;
            }
        }
        for (; c < n_keys; c++) {
            let v = load_v(j0 + c, g, cp);
            for (var k = 0u; k < RPT; k++) {
                o[k] += ss[(rg + k * TPP) * BK + c] * v;
            }
        }
        // The next tile's first write to ss/alpha_sh is behind the two barriers of its score
        // loop, so no barrier is needed here.
    }

    let n_rows = step.n_tokens * p.n_q_heads;
    for (var k = 0u; k < RPT; k++) {
        let r = rg + k * TPP;
        let row = r0 + r;
        if row >= rows {
            continue;
        }
        let out_row = row / group * p.n_q_heads + g * group + row % group;
        if n_splits == 1u {
            out[out_row * DW + cp] = o[k] / l_sh[r];
        } else {
            let at = 4u + ((split * n_rows + out_row) * D + 2u * cp);
            part[at] = o[k].x;
            part[at + 1u] = o[k].y;
            if cp == 0u {
                let ml = 4u + n_splits * n_rows * D + (split * n_rows + out_row) * 2u;
                part[ml] = m_sh[r];
                part[ml + 1u] = l_sh[r];
            }
        }
    }
    if lin == 0u && split == 0u && lid == 0u {
        part[0] = f32(n_splits);
    }
}
