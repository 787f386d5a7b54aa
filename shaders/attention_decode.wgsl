// Flash-decoding attention for decode-sized steps (a few query rows per KV head), every key
// read from the KV cache:
//
//   o[t, h] = Σ_j softmax_j(scale · q[t, h] · k[j, g]) · v[j, g],   g = h / (nq / nkv)
//   over keys j with j ≤ p and, on sliding layers (window W > 0), j > p − W, where p = pos0 + t.
//
// Key j lives in cache slot j % cap (the step's own rows were stored before this runs; see
// AttentionParams for the ring size that guarantees it).
//
// Why this shape: at decode a KV head has only T·G ≤ 8 query rows, so the work is reading K and
// V (0.5–2 MB per layer for Gemma 4 E2B) and the time is memory latency: what counts is how
// many dependent rounds of loads a workgroup waits for. The key range is split across many
// workgroups (nwg.z splits) so the whole K/V is in flight at once on a big GPU; no K or V row is
// staged through workgroup memory: each lane reads its own 16-byte pieces straight from the
// cache, and only the query tile (≤ 8 KiB, read once) and one block of scores live in
// workgroup memory.
//
// Dispatch: one workgroup of WG invocations (256 at d = 512, and at d = 256 with subgroups; else
// 128) per (row tile, KV head) on
// x/y (linear index tile · nkv + g, split by gpu::grid) and one per key split on z. A KV
// head's query rows are the T·G pairs (token t, head h of its group) in order
// R = t·G + (h mod G); a tile is RQ rows.
// The workgroup walks its split's keys in blocks of NB:
//   1. scores S[NB, RQ], BK keys per pass: lane (key kk, slot s) of LS lanes per key owns the
//      head's 8-dim chunks c = e·LS + s (so the LS lanes of a key read 16·LS contiguous bytes
//      per load) and forms RQ partial dot products with the query tile; each pass's K chunks
//      are loaded one pass ahead (the first before the block's barrier). The LS partials
//      are summed by a subgroup butterfly (SUBGROUPS: subgroupShuffleXor, no barrier; needs
//      subgroups of ≥ LS consecutive invocations, which Rust checks) or through workgroup
//      memory (portable);
//   2. online softmax per row (running max m, sum l; α rescales the earlier blocks);
//   3. O = α·O + P·V: lane (key group kg, row group rg, chunk c) owns RPL rows of dims
//      8c..8c+7 for the keys kg, kg + KG, …; its first VU V chunks of the block are loaded
//      before step 1, so they arrive while the scores are computed, and later ones VU at a
//      time before they are used. For a block of ≤ 32 keys (d = 256) or ≤ 32 with WG = 256
//      (d = 512) every K and V load of the block is in flight at once.
// After the last block the KG key groups' outputs are summed through workgroup memory (the
// query tile's, free by then). With nwg.z = 1 the normalised output goes straight to `out`;
// otherwise each split writes (o unnormalised, m, l) to `part` and attention_merge.wgsl
// combines the splits.
// Barriers: 4 per block with subgroups, 4 + 2 per score pass without; 2·(KG − 1) + 1 at the end.
//
// Specialisation: HEAD_DIM = d ∈ {8, …, 512}; RQ ≤ 8 with RQ·d ≤ 2048 (the query tile is 8 KiB
// at most); LS | d/8 and LS ≤ 8; NB a multiple of BK = WG/LS; KG·(RQ/RPL)·(d/8) ≤ WG.
// Workgroup memory: 4·(RQ·d + RQ·NB + 2·WG + 4·RQ) bytes, plus 4·WG·RQ without subgroups:
// ≤ 15.4 KiB (d = 512, RQ = 4, WG = 256), within WebGPU's 16 KiB, for every shape Rust builds
// without subgroups (d = 256 at WG = 256 would need 20.4 KiB: it is built with subgroups only).
// Precision: K/V are f16 (packed pairs, read as 16-byte words and unpacked) or f32 with KV_F32;
// everything else f32.

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
const RQ: u32 = {{RQ}}u;           // query rows per workgroup
const LS: u32 = {{LS}}u;           // lanes per key in the score phase
const NB: u32 = {{NB}}u;           // keys per block (scores held in workgroup memory)
const KG: u32 = {{KG}}u;           // key groups of the P·V phase
const RPL: u32 = {{RPL}}u;         // output rows per lane in the P·V phase
const WG: u32 = {{WG}}u;           // invocations per workgroup
const NC: u32 = D / 8u;            // 8-dim chunks per head row
const NE: u32 = NC / LS;           // chunks per lane and key in the score phase
const BK: u32 = WG / LS;           // keys per score pass
const LPR: u32 = WG / RQ;          // softmax lanes per row
const NRG: u32 = RQ / RPL;         // row groups of the P·V phase
const PV_LANES: u32 = KG * NRG * NC;  // lanes busy in the P·V phase (≤ WG)
const VU: u32 = 8u;                // V chunks loaded before use in the P·V phase
const LPT: u32 = (LS + RQ - 1u) / RQ;  // lanes holding one row's total when RQ < LS
// Values live in the score butterfly after its mask-4, mask-2 and mask-1 steps.
const BN2: u32 = {{BN2}}u;
const BN1: u32 = {{BN1}}u;
const BN0: u32 = {{BN0}}u;
const NEG: f32 = -3.0e38;          // "masked" / "no key yet"; never a real score

@group(0) @binding(0) var<storage, read> q: array<vec4<f32>>;          // [T, nq, d] f32
#if KV_F32
@group(0) @binding(1) var<storage, read> k_cache: array<vec4<f32>>;    // [cap, nkv, d] f32
@group(0) @binding(2) var<storage, read> v_cache: array<vec4<f32>>;    // [cap, nkv, d] f32
#else
@group(0) @binding(1) var<storage, read> k_cache: array<vec4<u32>>;    // [cap, nkv, d/8] 8 f16 per word
@group(0) @binding(2) var<storage, read> v_cache: array<vec4<u32>>;    // [cap, nkv, d/8] 8 f16 per word
#endif
@group(0) @binding(3) var<storage, read_write> out: array<vec4<f32>>;  // [T, nq, d] f32
// Split partials: [0] = number of splits S, then o [S, T·nq, d], then (m, l) [S, T·nq, 2].
@group(0) @binding(4) var<storage, read_write> part: array<f32>;
@group(0) @binding(5) var<{{PARAMS}}> p: Params;
@group(0) @binding(6) var<{{PARAMS}}> step: Step;

// Query tile [RQ, 2 halves, NC chunks]; after the last block, one key group's outputs.
var<workgroup> qs: array<vec4<f32>, RQ * NC * 2u>;
var<workgroup> ss: array<f32, NB * RQ>;            // scores, then probabilities [NB, RQ]
var<workgroup> red_sm: array<f32, 2u * WG>;        // softmax partial max, then sum [RQ, LPR]
var<workgroup> m_sh: array<f32, 2u * RQ>;          // running max per row, by block parity
var<workgroup> l_sh: array<f32, RQ>;               // running sum per row
var<workgroup> alpha_sh: array<f32, RQ>;           // rescale of the earlier blocks per row
#if !SUBGROUPS
var<workgroup> red_qk: array<f32, WG * RQ>;        // score partials [RQ, BK, LS]
#endif

// Eight consecutive dims of a K or V row, as f32.
struct Chunk {
    lo: vec4<f32>,
    hi: vec4<f32>,
}

// A chunk as stored: 8 f16 in one 16-byte word, or 8 f32 in two (KV_F32).
#if KV_F32
alias Raw = Chunk;
fn k_raw(row: u32, c: u32) -> Raw {
    let i = (row * NC + c) * 2u;
    return Chunk(k_cache[i], k_cache[i + 1u]);
}
fn v_raw(row: u32, c: u32) -> Raw {
    let i = (row * NC + c) * 2u;
    return Chunk(v_cache[i], v_cache[i + 1u]);
}
fn unraw(x: Raw) -> Chunk {
    return x;
}
#else
alias Raw = vec4<u32>;
fn k_raw(row: u32, c: u32) -> Raw {
    return k_cache[row * NC + c];
}
fn v_raw(row: u32, c: u32) -> Raw {
    return v_cache[row * NC + c];
}
fn unraw(w: Raw) -> Chunk {
    return Chunk(
        vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y)),
        vec4<f32>(unpack2x16float(w.z), unpack2x16float(w.w)),
    );
}
#endif

// Cache row (slot · nkv + g) of key j, KV head g.
fn cache_row(j: u32, g: u32) -> u32 {
    return (j % p.cap) * p.n_kv_heads + g;
}

// First key any query at position `pos` may see.
fn first_key(pos: u32) -> u32 {
    if p.window > 0u && pos + 1u > p.window {
        return pos + 1u - p.window;
    }
    return 0u;
}

// The scaled score of tile row r for key j, or NEG where the mask hides it.
fn masked(total: f32, r: u32, j: u32, r0: u32, rows: u32, group: u32, hi: u32) -> f32 {
    let row = r0 + r;
    let pos = step.pos0 + row / group;
    if row < rows && j < hi && j <= pos && (p.window == 0u || j + p.window > pos) {
        return total * p.scale;
    }
    return NEG;
}

#if SUBGROUPS
// One step of the butterfly over the LS lanes of a key, partner = lane ^ m: with n > 1 values
// live, a lane keeps the half its bit `m` selects and adds its partner's copy of that half;
// with one value live, the two lanes add theirs. Called with constant n and m, so the
// compiler unrolls it and `v` stays in registers.
fn bfly(v: array<f32, RQ>, n: u32, m: u32, s: u32) -> array<f32, RQ> {
    var w = v;
    if n > 1u {
        let half = n / 2u;
        let upper = (s & m) != 0u;
        for (var i = 0u; i < half; i++) {
            let send = select(v[i + half], v[i], upper);
            let keep = select(v[i], v[i + half], upper);
            w[i] = keep + subgroupShuffleXor(send, m);
        }
    } else {
        w[0] = v[0] + subgroupShuffleXor(v[0], m);
    }
    return w;
}
#endif

@compute @workgroup_size(WG)
fn main(inv: Invocation, grp: Workgroup) {
    let lid = inv.lid;
    let group = p.n_q_heads / p.n_kv_heads;
    let rows = step.n_tokens * group;      // query rows of one KV head
    let n_tiles = (rows + RQ - 1u) / RQ;
    let lin = linear_group(grp.wg, grp.nwg);
    // Uniform per workgroup: every barrier below stays in uniform control flow.
    if lin >= n_tiles * p.n_kv_heads {
        return;
    }
    let g = lin % p.n_kv_heads;
    let r0 = (lin / p.n_kv_heads) * RQ;
    let split = grp.wg.z;
    let n_splits = grp.nwg.z;

    // Keys this tile needs (first row's window start to last row's position), cut to this
    // split's share of the step's key range.
    let p_first = step.pos0 + r0 / group;
    let p_last = step.pos0 + (min(r0 + RQ, rows) - 1u) / group;
    let step_lo = first_key(step.pos0);
    let step_hi = step.pos0 + step.n_tokens;
    let chunk = ((step_hi - step_lo + n_splits - 1u) / n_splits + BK - 1u) / BK * BK;
    let lo = max(first_key(p_first), step_lo + split * chunk);
    let hi = min(p_last + 1u, step_lo + min(split + 1u, n_splits) * chunk);

    // Query tile: row r of the tile is (token R / G, head g·G + R mod G), R = r0 + r; the two
    // halves of each 8-dim chunk are stored apart so the LS lanes of a key read consecutive
    // 16-byte words (no bank conflicts).
    for (var i = lid; i < RQ * NC * 2u; i += WG) {
        let r = i / (2u * NC);
        let half = (i / NC) % 2u;
        let c = i % NC;
        let row = r0 + r;
        var val = vec4<f32>(0.0);
        if row < rows {
            let h = g * group + row % group;
            val = q[((row / group * p.n_q_heads + h) * D + c * 8u + half * 4u) / 4u];
        }
        qs[i] = val;
    }
    if lid < RQ {
        m_sh[lid] = NEG;
        l_sh[lid] = 0.0;
    }

    let kk = lid / LS;              // key of the score phase
    let s = lid % LS;               // slot among the key's lanes
    let sr = lid / LPR;             // softmax row
    let sp = lid % LPR;             // softmax lane within the row
    let c = lid % NC;               // P·V chunk
    let rg = (lid / NC) % NRG;      // P·V row group: rows rg·RPL + i
    let kg = lid / (NC * NRG);      // P·V key group: keys kg, kg + KG, …
    let in_pv = lid < PV_LANES;
    var o_lo: array<vec4<f32>, RPL>;
    var o_hi: array<vec4<f32>, RPL>;
    for (var i = 0u; i < RPL; i++) {
        o_lo[i] = vec4<f32>(0.0);
        o_hi[i] = vec4<f32>(0.0);
    }

    var par = 0u;  // block parity: m_sh[par] holds the running max
    for (var j0 = lo; j0 < hi; j0 += NB) {
        let n_keys = min(NB, hi - j0);
        let n_pass = (n_keys + BK - 1u) / BK;

        // This lane's first VU V chunks of the block and its K chunks of the first score pass,
        // in flight during the barrier and steps 1 and 2 (registers only: no barrier needed).
        var vpre: array<Raw, VU>;
        if in_pv {
            for (var u = 0u; u < VU; u++) {
                let k = kg + u * KG;
                if k < n_keys {
                    vpre[u] = v_raw(cache_row(j0 + k, g), c);
                }
            }
        }
        var next: array<Raw, NE>;
        if kk < n_keys {
            let row = cache_row(j0 + kk, g);
            for (var e = 0u; e < NE; e++) {
                next[e] = k_raw(row, e * LS + s);
            }
        }
        // The previous block's P·V has read `ss` (and the first block needs the query tile).
        workgroupBarrier();

        // 1. Scores of this block, BK keys per pass; the next pass's K chunks are in flight
        // while this one's are used.
        for (var ps = 0u; ps < n_pass; ps++) {
            let kb = ps * BK + kk;   // key within the block
            let j = j0 + kb;
            let cur = next;
            if kb + BK < n_keys {
                let row = cache_row(j + BK, g);
                for (var e = 0u; e < NE; e++) {
                    next[e] = k_raw(row, e * LS + s);
                }
            }
            var acc: array<f32, RQ>;
            for (var r = 0u; r < RQ; r++) {
                acc[r] = 0.0;
            }
            if kb < n_keys {
                for (var e = 0u; e < NE; e++) {
                    let cc = e * LS + s;
                    let kc = unraw(cur[e]);
                    for (var r = 0u; r < RQ; r++) {
                        acc[r] += dot(qs[(2u * r) * NC + cc], kc.lo)
                            + dot(qs[(2u * r + 1u) * NC + cc], kc.hi);
                    }
                }
            }
#if SUBGROUPS
            // Butterfly over the LS lanes (masks 4, 2, 1 as LS allows; BN2, BN1, BN0 values
            // live after each): lane s ends with the total of row s·RQ/LS (RQ ≤ LS) or of
            // rows s·RQ/LS + i, i < RQ/LS (RQ > LS).
            var v = acc;
            if LS > 4u {
                v = bfly(v, RQ, 4u, s);
            }
            if LS > 2u {
                v = bfly(v, BN2, 2u, s);
            }
            if LS > 1u {
                v = bfly(v, BN1, 1u, s);
            }
            if RQ >= LS {
                for (var i = 0u; i < BN0; i++) {
                    let r = s * BN0 + i;
                    ss[kb * RQ + r] = masked(v[i], r, j, r0, rows, group, hi);
                }
            } else if s % LPT == 0u {
                let r = s / LPT;
                ss[kb * RQ + r] = masked(v[0], r, j, r0, rows, group, hi);
            }
#else
            for (var r = 0u; r < RQ; r++) {
                red_qk[(r * BK + kk) * LS + s] = acc[r];
            }
            workgroupBarrier();
            for (var i = lid; i < RQ * BK; i += WG) {
                let r = i / BK;
                let key = ps * BK + i % BK;
                var total = 0.0;
                for (var t = 0u; t < LS; t++) {
                    total += red_qk[i * LS + t];
                }
                ss[key * RQ + r] = masked(total, r, j0 + key, r0, rows, group, hi);
            }
            workgroupBarrier();
#endif
        }
        workgroupBarrier();

        // 2. Online softmax: LPR lanes per row reduce the block's max, then its sum.
        var mx = NEG;
        for (var k = sp; k < n_keys; k += LPR) {
            mx = max(mx, ss[k * RQ + sr]);
        }
        red_sm[lid] = mx;
        workgroupBarrier();
        let m_old = m_sh[par * RQ + sr];
        var m_new = m_old;
        for (var i = 0u; i < LPR; i++) {
            m_new = max(m_new, red_sm[sr * LPR + i]);
        }
        var sum = 0.0;
        for (var k = sp; k < n_keys; k += LPR) {
            let sc = ss[k * RQ + sr];
            var e = 0.0;
            if sc != NEG {
                e = exp(sc - m_new);
            }
            ss[k * RQ + sr] = e;
            sum += e;
        }
        red_sm[WG + lid] = sum;
        let alpha = exp(m_old - m_new);  // 1 while both are NEG (nothing seen yet)
        if sp == 0u {
            m_sh[(1u - par) * RQ + sr] = m_new;
            alpha_sh[sr] = alpha;
        }
        workgroupBarrier();
        if sp == 0u {
            var total = 0.0;
            for (var i = 0u; i < LPR; i++) {
                total += red_sm[WG + sr * LPR + i];
            }
            l_sh[sr] = l_sh[sr] * alpha + total;
        }
        par = 1u - par;

        // 3. O = α·O + P·V over this key group's keys of the block: the prefetched chunks, then
        // VU chunks loaded at a time before they are used. Keys past n_keys are never read;
        // masked keys inside the block have p = 0 and real V rows.
        if in_pv {
            for (var i = 0u; i < RPL; i++) {
                let a = alpha_sh[rg * RPL + i];
                o_lo[i] *= a;
                o_hi[i] *= a;
            }
            for (var u = 0u; u < VU; u++) {
                let k = kg + u * KG;
                if k < n_keys {
                    let vc = unraw(vpre[u]);
                    let b = k * RQ + rg * RPL;
                    for (var i = 0u; i < RPL; i++) {
                        let w = ss[b + i];
                        o_lo[i] += w * vc.lo;
                        o_hi[i] += w * vc.hi;
                    }
                }
            }
            var k = kg + VU * KG;
            for (; k + (VU - 1u) * KG < n_keys; k += VU * KG) {
                var vr: array<Raw, VU>;
                for (var u = 0u; u < VU; u++) {
                    vr[u] = v_raw(cache_row(j0 + k + u * KG, g), c);
                }
                for (var u = 0u; u < VU; u++) {
                    let vc = unraw(vr[u]);
                    let b = (k + u * KG) * RQ + rg * RPL;
                    for (var i = 0u; i < RPL; i++) {
                        let w = ss[b + i];
                        o_lo[i] += w * vc.lo;
                        o_hi[i] += w * vc.hi;
                    }
                }
            }
            for (; k < n_keys; k += KG) {
                let vc = unraw(v_raw(cache_row(j0 + k, g), c));
                let b = k * RQ + rg * RPL;
                for (var i = 0u; i < RPL; i++) {
                    let w = ss[b + i];
                    o_lo[i] += w * vc.lo;
                    o_hi[i] += w * vc.hi;
                }
            }
        }
    }
    // Every block is done with `qs` and `ss`; l_sh and m_sh are final.
    workgroupBarrier();

    // Sum the key groups' outputs into key group 0, one group at a time through `qs`.
    for (var k = 1u; k < KG; k++) {
        if in_pv && kg == k {
            for (var i = 0u; i < RPL; i++) {
                let r = rg * RPL + i;
                qs[(2u * r) * NC + c] = o_lo[i];
                qs[(2u * r + 1u) * NC + c] = o_hi[i];
            }
        }
        workgroupBarrier();
        if in_pv && kg == 0u {
            for (var i = 0u; i < RPL; i++) {
                let r = rg * RPL + i;
                o_lo[i] += qs[(2u * r) * NC + c];
                o_hi[i] += qs[(2u * r + 1u) * NC + c];
            }
        }
        workgroupBarrier();
    }

    let n_rows = step.n_tokens * p.n_q_heads;
    if in_pv && kg == 0u {
        for (var i = 0u; i < RPL; i++) {
            let r = rg * RPL + i;
            let row = r0 + r;
            if row >= rows {
                continue;
            }
            let out_row = row / group * p.n_q_heads + g * group + row % group;
            if n_splits == 1u {
                let l = l_sh[r];
                let at = (out_row * D + 8u * c) / 4u;
                out[at] = o_lo[i] / l;
                out[at + 1u] = o_hi[i] / l;
            } else {
                let at = 4u + (split * n_rows + out_row) * D + 8u * c;
                for (var e = 0u; e < 4u; e++) {
                    part[at + e] = o_lo[i][e];
                    part[at + 4u + e] = o_hi[i][e];
                }
                if c == 0u {
                    let ml = 4u + n_splits * n_rows * D + (split * n_rows + out_row) * 2u;
                    part[ml] = m_sh[par * RQ + r];
                    part[ml + 1u] = l_sh[r];
                }
            }
        }
    }
    if lin == 0u && split == 0u && lid == 0u {
        part[0] = f32(n_splits);
    }
}
