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
// Levels (entry points):
//   `first`: one workgroup per (row, slice of S = 1024 logits): steps 1–2 on its slice, bitonic
//     sort of the slice in workgroup memory, and the slice's k best plus its partial exp-sum
//     s = Σ exp((x − m)·inv_temp), m = the slice's best value (read back from candidate 0).
//   `merge`: one workgroup per (row, group of ⌊S/k⌋ previous slices): sorts their ≤ S
//     candidates, keeps k, and combines the exp-sums as Σ s_j·exp((m_j − M)·inv_temp).
// The host chains `first` and `merge` until one slice is left per row; that level (last = 1)
// writes the result. V = 262144, k = 64: 256 → 16 → 1 workgroups per row (3 dispatches).
// Every dispatch is n_rows · n_out workgroups split over x/y by gpu::grid.
//
// Values are sorted as order-preserving u32 keys (sign-flipped IEEE bits), so the sort and the
// tie rule are exact integer comparisons and never depend on how -inf/NaN compare in floats.
// -inf (and padding past V) contribute 0 to the exp-sum. Assumes no +inf and no NaN (a NaN
// would rank first, a visible symptom of an upstream bug).
// Precision: f32; exp-sums are workgroup tree sums; lse error ~1e-6 relative.
// Workgroup memory: keys + ids (8 KiB), penalty flags in `first` (4 KiB), reduce_scratch (1 KiB).

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

const S: u32 = 1024u;       // slice length (entries sorted per workgroup)
const WG: u32 = {{WG}}u;    // invocations; S / WG entries each
const NONE: u32 = 0xffffffffu;
const NEG_INF_KEY: u32 = 0x007fffffu;  // key of -inf; keys ≤ this are excluded from the sum
const NEG_INF_BITS: u32 = 0xff800000u;

@group(0) @binding(0) var<storage, read_write> logits: array<f32>;        // [R, V] f32, updated in place by steps 1–2
@group(0) @binding(1) var<storage, read> penalty_ids: array<u32>;         // [≥ n_ids] u32 token ids (duplicates allowed)
@group(0) @binding(2) var<storage, read> scratch_in: array<vec2<u32>>;    // candidates [R, n_in, k] (key, id); exp-sums at stats + r·n_in + j (f32 bits in .x)
@group(0) @binding(3) var<storage, read_write> scratch_out: array<vec2<u32>>; // same layout for this level's n_out slices
@group(0) @binding(4) var<storage, read_write> result: array<vec2<u32>>;  // [R, 1 + k]: (min(k, V), lse bits), then k × (id, value bits); padding (0xffffffff, -inf)
@group(0) @binding(5) var<storage, read> p: Params;
@group(0) @binding(6) var<storage, read> step: Step;

var<workgroup> keys: array<u32, S>;
var<workgroup> ids: array<u32, S>;
var<workgroup> flags: array<atomic<u32>, S>;

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

// Bitonic sort of keys/ids, best first: larger key, then smaller id.
fn sort(lid: u32) {
    for (var size = 2u; size <= S; size <<= 1u) {
        for (var stride = size >> 1u; stride > 0u; stride >>= 1u) {
            for (var t = lid; t < S / 2u; t += WG) {
                let i = 2u * stride * (t / stride) + (t % stride);
                let l = i + stride;
                let ki = keys[i];
                let kl = keys[l];
                let ii = ids[i];
                let il = ids[l];
                let l_better = kl > ki || (kl == ki && il < ii);
                // Blocks with bit `size` clear sort best-first, the others worst-first, so each
                // merge sees a bitonic sequence; at size = S the whole array is best-first.
                if l_better == ((i & size) == 0u) {
                    keys[i] = kl;
                    keys[l] = ki;
                    ids[i] = il;
                    ids[l] = ii;
                }
            }
            workgroupBarrier();
        }
    }
}

// Writes the sorted workgroup's k best and its exp-sum `total` (relative to keys[0]).
fn emit(row: u32, slice: u32, total: f32, lid: u32) {
    if p.last == 0u {
        let base = (row * p.n_out + slice) * p.k;
        for (var c = lid; c < p.k; c += WG) {
            scratch_out[base + c] = vec2(keys[c], ids[c]);
        }
        if lid == 0u {
            scratch_out[p.stats + row * p.n_out + slice] = vec2(bitcast<u32>(total), 0u);
        }
    } else {
        let base = row * (p.k + 1u);
        for (var c = lid; c < p.k; c += WG) {
            let id = ids[c];
            let bits = select(bitcast<u32>(from_key(keys[c])), NEG_INF_BITS, id == NONE);
            result[base + 1u + c] = vec2(id, bits);
        }
        if lid == 0u {
            // -inf stays as bits: WGSL may not spell an infinite f32 (Tint rejects it).
            var lse_bits = NEG_INF_BITS;
            if total > 0.0 {
                lse_bits = bitcast<u32>(from_key(keys[0]) * p.inv_temp + log(total));
            }
            result[base] = vec2(min(p.k, p.vocab), lse_bits);
        }
    }
}

@compute @workgroup_size(WG)
fn first(inv: Invocation, grp: Workgroup) {
    let g = linear_group(grp.wg, grp.nwg);
    if g >= n_rows() * p.n_out {
        return;
    }
    let row = g / p.n_out;
    let slice = g % p.n_out;
    let start = slice * S;
    let end = min(start + S, p.vocab);
    let row_base = row * p.vocab;

    // Load (raw f32 bits in keys for now), with the softcap.
    for (var i = inv.lid; i < S; i += WG) {
        let id = start + i;
        var v = 0.0;
        if id < end {
            v = logits[row_base + id];
            if p.softcap > 0.0 {
                v = p.softcap * tanh_safe(v / p.softcap);
            }
            ids[i] = id;
        } else {
            ids[i] = NONE;
        }
        keys[i] = bitcast<u32>(v);
        atomicStore(&flags[i], 0u);
    }
    workgroupBarrier();

    // Repetition penalty: the thread that first claims an id's flag penalises it, so repeated
    // ids count once. Cost: every slice scans the id list (n_ids / WG loads per invocation).
    let n_ids = min(p.n_ids, arrayLength(&penalty_ids));
    if n_ids > 0u && p.penalty != 1.0 {
        for (var j = inv.lid; j < n_ids; j += WG) {
            let id = penalty_ids[j];
            if id >= start && id < end {
                let i = id - start;
                if atomicExchange(&flags[i], 1u) == 0u {
                    let v = bitcast<f32>(keys[i]);
                    let pv = select(v * p.penalty, v / p.penalty, v > 0.0);
                    keys[i] = bitcast<u32>(pv);
                    if p.softcap <= 0.0 {
                        logits[row_base + id] = pv;
                    }
                }
            }
        }
        workgroupBarrier();
    }

    // Write back (softcap changed every value) and switch to sortable keys.
    for (var i = inv.lid; i < S; i += WG) {
        if ids[i] != NONE {
            if p.softcap > 0.0 {
                logits[row_base + start + i] = bitcast<f32>(keys[i]);
            }
            keys[i] = to_key(keys[i]);
        } else {
            keys[i] = 0u;
        }
    }
    workgroupBarrier();

    sort(inv.lid);

    let top = keys[0];
    var partial = 0.0;
    if top > NEG_INF_KEY {
        let m = from_key(top);
        for (var i = inv.lid; i < S; i += WG) {
            if keys[i] > NEG_INF_KEY {
                partial += exp((from_key(keys[i]) - m) * p.inv_temp);
            }
        }
    }
    let total = workgroup_sum(partial, inv, WG);
    emit(row, slice, total, inv.lid);
}

@compute @workgroup_size(WG)
fn merge(inv: Invocation, grp: Workgroup) {
    let g = linear_group(grp.wg, grp.nwg);
    if g >= n_rows() * p.n_out {
        return;
    }
    let row = g / p.n_out;
    let slice = g % p.n_out;
    let first_in = row * p.n_in + slice * p.group;
    let n_slices = min(p.group, p.n_in - slice * p.group);
    let n_cand = n_slices * p.k;

    for (var i = inv.lid; i < S; i += WG) {
        if i < n_cand {
            let c = scratch_in[first_in * p.k + i];
            keys[i] = c.x;
            ids[i] = c.y;
        } else {
            keys[i] = 0u;
            ids[i] = NONE;
        }
    }
    workgroupBarrier();

    sort(inv.lid);

    let top = keys[0];
    var partial = 0.0;
    if top > NEG_INF_KEY {
        let m = from_key(top);
        for (var j = inv.lid; j < n_slices; j += WG) {
            let s = bitcast<f32>(scratch_in[p.stats + first_in + j].x);
            if s > 0.0 {
                let mj = from_key(scratch_in[(first_in + j) * p.k].x);
                partial += s * exp((mj - m) * p.inv_temp);
            }
        }
    }
    let total = workgroup_sum(partial, inv, WG);
    emit(row, slice, total, inv.lid);
}
