// Logits post-processing and GPU top-k, in levels of one dispatch each.
//
// Per row r of logits [R, V] (f32), in this order (HF/llama.cpp order: the model's softcap,
// then the sampler's penalty):
//   1. softcap (softcap = c > 0):  x = c·tanh(x/c), written back in place;
//   2. repetition penalty (n_ids > 0): for every *distinct* id in penalty_ids[0..n_ids):
//        x = x > 0 ? x / penalty : x · penalty      (llama.cpp), written back in place;
//   3. the k (≤ 64) best (x, id), best first: larger x, ties to the lower id, and
//      lse = log Σ_i exp(x_i·inv_temp) over the whole row.
//
// Levels (entry points), each one workgroup per (row, slice of up to S = 4096 entries):
//   `first`: steps 1–2 on a slice of the row, then the slice's k best plus its partial exp-sum
//     s = Σ exp((x − m)·inv_temp), m = the slice's best value.
//   `merge`: the candidates of ⌊S/k⌋ previous slices (≤ S entries): their k best, and the
//     exp-sums combined as Σ s_j·exp((m_j − M)·inv_temp).
// The host chains `first` and `merge` until one slice is left per row; that level (last = 1)
// writes the result. V = 262144: 64 → 1 workgroups per row for every k ≤ 64 (2 dispatches).
// Every dispatch is n_rows · n_out workgroups split over x/y by gpu::grid.
//
// Selection, without sorting the slice (a sort costs log² S barrier-separated passes, and
// barriers are what a CPU-emulated GPU pays for most). Each invocation holds E = 16 entries in
// registers; entry j of invocation t is slice position q = j·WG + t (coalesced loads).
//   a. Entries are ranked by the 44-bit composite key (value key, S − 1 − q): value keys are
//      order-preserving u32 maps of the f32 bits (sign-flipped IEEE), so ranking is exact
//      integer comparison, never depends on how -inf/NaN compare in floats, and the position
//      part makes every composite unique and breaks ties to the lower position. Positions are
//      in id order: in `first` q = id − slice start; in `merge` q indexes the input slices'
//      candidate lists, which are in id order between slices and best-first (ties by id)
//      within one.
//   b. A lower bound T with at least k value keys ≥ T: `first` splits the invocations into k
//      groups and takes the smallest group maximum; `merge` takes the best k-th candidate of
//      its input slices. Only "survivors" (key ≥ T, typically a few % of the slice; all of it
//      for rows of equal values) take part in what follows. M = the slice's best value key.
//   c. Radix select of the k-th best survivor: 8-bit digits of the composite key, from the
//      first bit where T and M differ (survivors share the bits above it). A round builds a
//      256-bin histogram of the survivors that match the prefix chosen so far (workgroup
//      atomics), finds the bin holding the k-th best (suffix sums, one bin per invocation)
//      and stops as soon as that bin's entries are exactly the ones still needed (at most
//      ⌈44/8⌉ = 6 rounds; usually 1–2, and none when exactly k survive, as is typical at k = 1).
//   d. The k entries at or above the threshold are compacted (an atomic counter) and each
//      finds its rank by comparing with the other k − 1 (≤ 64 comparisons), then is written
//      straight to its place in the output.
// Barriers per workgroup: 6, 3 more per radix round (1 more with the penalty), plus the
// exp-sum's reduction; a bitonic sort of 1024 entries took 55. Every entry costs a few integer
// operations and one exp; only survivors touch workgroup memory.
//
// -inf (and padding past V, value key 0) contribute 0 to the exp-sum. Padding ranks below every
// real value, so it only appears in a result when V < k. Assumes no +inf and no NaN (a positive
// NaN would rank first, a visible symptom of an upstream bug).
// Precision: f32; exp-sums are per-invocation sums of 16 terms then workgroup tree sums; lse
// error ~1e-6 relative.
// Workgroup memory: ~4.5 KiB (two histograms 2 KiB, reduce_scratch 1 KiB, penalty bits 512 B,
// candidates 512 B).

struct Params {
    vocab: u32,           // V: logits per row (also the row stride)
    k: u32,               // candidates kept per slice and in the result (1..=64)
    n_in: u32,            // merge: slices per row in the input level
    n_out: u32,           // slices (workgroups) per row at this level
    group: u32,           // merge: input slices per workgroup
    last: u32,            // 1: write the result, 0: write candidates + exp-sums to scratch_out
    rows: u32,            // rows (or the most rows, with rows_per_token)
    rows_per_token: u32,  // 1: rows = min(step.n_tokens, rows)
    n_ids: u32,           // penalty ids in use (clamped to the buffer)
    penalty: f32,         // repetition penalty (1: none)
    softcap: f32,         // c of c·tanh(x/c) (0: none)
    inv_temp: f32,        // lse is of x·inv_temp
    stats: u32,           // index of the exp-sum region in the scratch buffers (vec2 units)
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

const WG: u32 = {{WG}}u;    // invocations: must be 256 (one histogram bin each)
const E: u32 = 16u;         // entries per invocation
const S: u32 = 4096u;       // entries per workgroup (WG · E)
const POS_BITS: u32 = 12u;  // log2(S): the position part of the composite key
const BITS: u32 = 44u;      // composite key bits: 32 (value key) + POS_BITS
const BINS: u32 = 256u;     // histogram bins (8-bit digits)
const MAX_K: u32 = 64u;
const NONE: u32 = 0xffffffffu;
const NEG_INF_KEY: u32 = 0x007fffffu;  // key of -inf; keys ≤ this are excluded from the sum
const NEG_INF_BITS: u32 = 0xff800000u;

@group(0) @binding(0) var<storage, read_write> logits: array<f32>;        // [R, V] f32, updated in place by steps 1–2
@group(0) @binding(1) var<storage, read> penalty_ids: array<u32>;         // [≥ n_ids] u32 token ids (duplicates allowed)
@group(0) @binding(2) var<storage, read> scratch_in: array<vec2<u32>>;    // candidates [R, n_in, k] (key, id); exp-sums at stats + r·n_in + j (f32 bits in .x)
@group(0) @binding(3) var<storage, read_write> scratch_out: array<vec2<u32>>; // same layout for this level's n_out slices
@group(0) @binding(4) var<storage, read_write> result: array<vec2<u32>>;  // [R, 1 + k]: (min(k, V), lse bits), then k × (id, value bits); padding (0xffffffff, -inf)
@group(0) @binding(5) var<{{PARAMS}}> p: Params;
@group(0) @binding(6) var<{{PARAMS}}> step: Step;

// This invocation's entries (value keys; f32 bits while steps 1–2 run): entry j is slice
// position j·WG + lid.
var<private> x: array<u32, E>;

var<workgroup> hist: array<atomic<u32>, 512>;       // two BINS histograms, used alternately
var<workgroup> bin_groups: array<u32, 16>;          // sums of 16 consecutive bins
var<workgroup> group_max: array<atomic<u32>, MAX_K>; // first: best key per invocation group
var<workgroup> penalised: array<atomic<u32>, 128>;  // first: S bits, positions the penalty hits
var<workgroup> cand_key: array<u32, MAX_K>;
var<workgroup> cand_pos: array<u32, MAX_K>;
var<workgroup> bound: atomic<u32>;                  // T
var<workgroup> best: atomic<u32>;                   // M
var<workgroup> counter: atomic<u32>;                // survivors, then compacted candidates
var<workgroup> sel_digit: u32;
var<workgroup> sel_need: u32;
var<workgroup> sel_done: u32;

// Order-preserving map f32 → u32: negative floats flip every bit, others flip the sign bit.
fn to_key(bits: u32) -> u32 {
    return select(bits | 0x80000000u, ~bits, (bits & 0x80000000u) != 0u);
}
fn from_key(key: u32) -> f32 {
    return bitcast<f32>(select(~key, key & 0x7fffffffu, (key & 0x80000000u) != 0u));
}

// tanh without overflow (large |x| gives ±1, not NaN) or cancellation near 0 (odd Taylor
// series there, relative error < 1e-8 for |x| < 0.3).
fn tanh_safe(x: f32) -> f32 {
    let a = abs(x);
    if a < 0.3 {
        let x2 = x * x;
        return x * (1.0 + x2 * (-1.0 / 3.0 + x2 * (2.0 / 15.0 + x2 * (-17.0 / 315.0
            + x2 * (62.0 / 2835.0 + x2 * (-1382.0 / 155925.0))))));
    }
    if a > 9.0 {
        return sign(x);  // tanh(9) rounds to 1 in f32
    }
    let t = 1.0 - 2.0 / (exp(2.0 * a) + 1.0);
    return select(t, -t, x < 0.0);
}

fn n_rows() -> u32 {
    return select(p.rows, min(step.n_tokens, p.rows), p.rows_per_token != 0u);
}

// Composite key (key, lo = S − 1 − position), 44 bits, as two words. Masks of the bits at
// composite positions ≥ pos, in the key word and in the lo word.
fn key_mask(pos: u32) -> u32 {
    if pos >= BITS {
        return 0u;
    }
    if pos <= POS_BITS {
        return 0xffffffffu;
    }
    return 0xffffffffu << (pos - POS_BITS);
}
fn lo_mask(pos: u32) -> u32 {
    if pos >= POS_BITS {
        return 0u;
    }
    return (0xffffffffu << pos) & (S - 1u);
}
// The nb (≤ 8) composite bits from bit `low` up.
fn digit(key: u32, lo: u32, low: u32, nb: u32) -> u32 {
    var v = 0u;
    if low >= POS_BITS {
        v = key >> (low - POS_BITS);
    } else {
        v = (lo >> low) | (key << (POS_BITS - low));
    }
    return v & ((1u << nb) - 1u);
}

// Initialises the selection's workgroup state (before the caller's first barrier).
fn init_shared(lid: u32, bound0: u32) {
    atomicStore(&hist[lid], 0u);
    atomicStore(&hist[BINS + lid], 0u);
    if lid < MAX_K {
        atomicStore(&group_max[lid], 0u);
    }
    if lid < S / 32u {
        atomicStore(&penalised[lid], 0u);
    }
    if lid == 0u {
        atomicStore(&bound, bound0);
        atomicStore(&best, 0u);
        atomicStore(&counter, 0u);
        sel_done = 0u;
    }
}

// Steps b–d once `bound` and `best` hold T and M (the caller's barrier made them visible):
// leaves the k best entries in cand_key/cand_pos (in no particular order).
fn choose(lid: u32) {
    let t = atomicLoad(&bound);
    let m = atomicLoad(&best);
    var n = 0u;
    for (var j = 0u; j < E; j++) {
        n += select(0u, 1u, x[j] >= t);
    }
    if n > 0u {
        atomicAdd(&counter, n);
    }
    workgroupBarrier();
    if lid == 0u {
        sel_done = select(0u, 1u, atomicLoad(&counter) == p.k);
        atomicStore(&counter, 0u);
    }
    var done = workgroupUniformLoad(&sel_done);

    // Threshold so far: composite bits ≥ pos fixed to (tk, tl).
    var pos = BITS - countLeadingZeros(t ^ m);
    var tk = t & key_mask(pos);
    var tl = 0u;
    var need = p.k;
    var h = 0u;
    for (var round = 0u; round < 6u; round++) {
        if done != 0u {
            break;
        }
        let nb = min(8u, pos);
        let low = pos - nb;
        let km = key_mask(pos);
        let lm = lo_mask(pos);
        for (var j = 0u; j < E; j++) {
            let lo = S - 1u - (j * WG + lid);
            if x[j] >= t && (x[j] & km) == tk && (lo & lm) == tl {
                atomicAdd(&hist[h + digit(x[j], lo, low, nb)], 1u);
            }
        }
        workgroupBarrier();
        if lid < 16u {
            var s = 0u;
            for (var b = 0u; b < 16u; b++) {
                s += atomicLoad(&hist[h + lid * 16u + b]);
            }
            bin_groups[lid] = s;
        }
        workgroupBarrier();
        // Bin `lid`: entries in higher bins are in the top k for sure.
        let c = atomicLoad(&hist[h + lid]);
        var above = 0u;
        for (var g = lid / 16u + 1u; g < 16u; g++) {
            above += bin_groups[g];
        }
        for (var b = lid + 1u; b < (lid / 16u + 1u) * 16u; b++) {
            above += atomicLoad(&hist[h + b]);
        }
        if c > 0u && above < need && above + c >= need {
            sel_digit = lid;
            sel_need = need - above;
            sel_done = select(0u, 1u, c == need - above || low == 0u);
        }
        atomicStore(&hist[BINS - h + lid], 0u);  // the other histogram, for the next round
        h = BINS - h;
        done = workgroupUniformLoad(&sel_done);
        let d = sel_digit;
        need = sel_need;
        if low >= POS_BITS {
            tk |= d << (low - POS_BITS);
        } else {
            tl |= (d << low) & (S - 1u);
            tk |= d >> (POS_BITS - low);
        }
        pos = low;
    }

    // Compact the entries at or above the threshold: exactly k.
    let km = key_mask(pos);
    let lm = lo_mask(pos);
    for (var j = 0u; j < E; j++) {
        let q = j * WG + lid;
        let lo = S - 1u - q;
        let kk = x[j] & km;
        if x[j] >= t && (kk > tk || (kk == tk && (lo & lm) >= tl)) {
            let slot = atomicAdd(&counter, 1u);
            if slot < p.k {
                cand_key[slot] = x[j];
                cand_pos[slot] = q;
            }
        }
    }
    workgroupBarrier();
}

// For invocation c < k after `choose`: (rank, key, position) of candidate c.
fn ranked(c: u32) -> vec3<u32> {
    let kc = cand_key[c];
    let qc = cand_pos[c];
    var rank = 0u;
    for (var j = 0u; j < p.k; j++) {
        let kj = cand_key[j];
        rank += select(0u, 1u, kj > kc || (kj == kc && cand_pos[j] < qc));
    }
    return vec3(rank, kc, qc);
}

// Writes one ranked candidate (id NONE: padding).
fn emit(row: u32, slice: u32, rank: u32, key: u32, id: u32) {
    if p.last == 0u {
        scratch_out[(row * p.n_out + slice) * p.k + rank] = vec2(key, id);
    } else {
        let bits = select(bitcast<u32>(from_key(key)), NEG_INF_BITS, id == NONE);
        result[row * (p.k + 1u) + 1u + rank] = vec2(id, bits);
    }
}

// Writes the exp-sum `total` (relative to the best key m) of a slice, or the row's lse.
fn emit_total(row: u32, slice: u32, total: f32, m: u32) {
    if p.last == 0u {
        scratch_out[p.stats + row * p.n_out + slice] = vec2(bitcast<u32>(total), 0u);
    } else {
        // -inf stays as bits: WGSL may not spell an infinite f32 (Tint rejects it).
        var lse_bits = NEG_INF_BITS;
        if total > 0.0 {
            lse_bits = bitcast<u32>(from_key(m) * p.inv_temp + log(total));
        }
        result[row * (p.k + 1u)] = vec2(min(p.k, p.vocab), lse_bits);
    }
}

@compute @workgroup_size(WG)
fn first(inv: Invocation, grp: Workgroup) {
    let g = linear_group(grp.wg, grp.nwg);
    if g >= n_rows() * p.n_out {
        return;
    }
    let lid = inv.lid;
    let row = g / p.n_out;
    let slice = g % p.n_out;
    let start = slice * S;
    let n_real = min(S, p.vocab - start);
    let row_base = row * p.vocab + start;

    // Load (f32 bits for now), with the softcap.
    for (var j = 0u; j < E; j++) {
        let q = j * WG + lid;
        var v = 0.0;
        if q < n_real {
            v = logits[row_base + q];
            if p.softcap > 0.0 {
                v = p.softcap * tanh_safe(v / p.softcap);
            }
        }
        x[j] = bitcast<u32>(v);
    }
    init_shared(lid, NONE);
    workgroupBarrier();

    // Repetition penalty: each listed id sets its position's bit, so repeated ids count once.
    // Cost: every slice scans the id list (n_ids / WG loads per invocation).
    let n_ids = min(p.n_ids, arrayLength(&penalty_ids));
    let penalise = n_ids > 0u && p.penalty != 1.0;
    if penalise {
        for (var i = lid; i < n_ids; i += WG) {
            let id = penalty_ids[i];
            if id >= start && id - start < n_real {
                let q = id - start;
                atomicOr(&penalised[q / 32u], 1u << (q % 32u));
            }
        }
        workgroupBarrier();
    }

    // Write back (softcap changed every value, the penalty some), switch to value keys, and
    // record the best key of this invocation's group (k groups: the bound T is the smallest
    // group best, and every group holds at least one entry ≥ it).
    var mine = 0u;
    for (var j = 0u; j < E; j++) {
        let q = j * WG + lid;
        if q < n_real {
            var v = bitcast<f32>(x[j]);
            var changed = p.softcap > 0.0;
            if penalise && (atomicLoad(&penalised[q / 32u]) & (1u << (q % 32u))) != 0u {
                v = select(v * p.penalty, v / p.penalty, v > 0.0);
                changed = true;
            }
            if changed {
                logits[row_base + q] = v;
            }
            x[j] = to_key(bitcast<u32>(v));
        } else {
            x[j] = 0u;
        }
        mine = max(mine, x[j]);
    }
    atomicMax(&group_max[lid * p.k / WG], mine);
    workgroupBarrier();
    if lid < p.k {
        let gm = atomicLoad(&group_max[lid]);
        atomicMin(&bound, gm);
        atomicMax(&best, gm);
    }
    workgroupBarrier();
    let m = atomicLoad(&best);

    var partial = 0.0;
    if m > NEG_INF_KEY {
        let mv = from_key(m);
        for (var j = 0u; j < E; j++) {
            if x[j] > NEG_INF_KEY {
                partial += exp((from_key(x[j]) - mv) * p.inv_temp);
            }
        }
    }

    choose(lid);
    if lid < p.k {
        let r = ranked(lid);
        emit(row, slice, r.x, r.y, select(NONE, start + r.z, r.z < n_real));
    }
    let total = workgroup_sum(partial, inv, WG);
    if lid == 0u {
        emit_total(row, slice, total, m);
    }
}

@compute @workgroup_size(WG)
fn merge(inv: Invocation, grp: Workgroup) {
    let g = linear_group(grp.wg, grp.nwg);
    if g >= n_rows() * p.n_out {
        return;
    }
    let lid = inv.lid;
    let row = g / p.n_out;
    let slice = g % p.n_out;
    let first_in = row * p.n_in + slice * p.group;
    let n_slices = min(p.group, p.n_in - slice * p.group);
    let n_cand = n_slices * p.k;
    let cand_base = first_in * p.k;

    for (var j = 0u; j < E; j++) {
        let q = j * WG + lid;
        x[j] = 0u;
        if q < n_cand {
            x[j] = scratch_in[cand_base + q].x;
        }
    }
    init_shared(lid, 0u);
    workgroupBarrier();
    // Input lists are best-first: T = the best k-th candidate of a list, M = the best first.
    for (var j = lid; j < n_slices; j += WG) {
        let base = cand_base + j * p.k;
        atomicMax(&bound, scratch_in[base + p.k - 1u].x);
        atomicMax(&best, scratch_in[base].x);
    }
    workgroupBarrier();
    let m = atomicLoad(&best);

    var partial = 0.0;
    if m > NEG_INF_KEY {
        let mv = from_key(m);
        for (var j = lid; j < n_slices; j += WG) {
            let s = bitcast<f32>(scratch_in[p.stats + first_in + j].x);
            if s > 0.0 {
                let mj = from_key(scratch_in[cand_base + j * p.k].x);
                partial += s * exp((mj - mv) * p.inv_temp);
            }
        }
    }

    choose(lid);
    if lid < p.k {
        let r = ranked(lid);
        emit(row, slice, r.x, r.y, select(NONE, scratch_in[cand_base + r.z].y, r.z < n_cand));
    }
    let total = workgroup_sum(partial, inv, WG);
    if lid == 0u {
        emit_total(row, slice, total, m);
    }
}
