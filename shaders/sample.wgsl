// Exact sampling over the whole vocabulary: temperature, top-k (any k), top-p and min-p on a
// row of V logits, one token drawn on the GPU, so the CPU reads back a few bytes instead of
// the row. Runs after `logits.wgsl` (softcap and penalty already applied in place; its
// top-1 gives the row maximum m).
//
// The sampler's pipeline (src/sampler.rs, Hugging Face's order) is top-k → softmax → top-p →
// min-p → draw. Every cut keeps a prefix of the tokens sorted by value, so each is a threshold
// on the order-preserving u32 key of the value, and the kept set is {key ≥ max(thresholds)}:
//   top-k:  τ_k = key of the k-th largest value (ties at τ_k are all kept, as in Hugging
//           Face's TopKLogitsWarper);
//   top-p:  τ_p = the largest key whose set {key ≥ τ_p} (within {key ≥ τ_k}) holds at least
//           top_p of that set's mass Σ exp((x − m)/T): the smallest such prefix (the nucleus);
//   min-p:  p ≥ min_p·p_max  ⟺  x ≥ m + T·ln(min_p).
// τ_k and τ_p are found by radix select, 8 bits of the key per level from the top (4 levels):
//   `hist`: one workgroup per slice of S = 4096 entries; a 256-bin histogram of the digit at
//     `shift` of the keys that match the digits chosen so far (count, and mass in 64-bit fixed
//     point: 2^40 per unit, atomics with carry, so sums are exact integers in any order);
//   `pick`: one workgroup; sums the slices' histograms and walks the bins from the top until
//     the running count (or mass) reaches what is still needed; that bin's digit joins the
//     prefix. After the 4th level the prefix is the threshold key.
// `perturb` then writes y = x/T + G (G a Gumbel(0, 1) variate from a counter-based hash of the
// entry index and the step's seed) for kept entries and −inf elsewhere; the index of max y is
// distributed exactly as softmax(x/T) over the kept set (Gumbel-max), and the host takes it
// with the top-1 of `logits.wgsl`. Nothing here reads a loop bound from a parameter buffer
// (lavapipe would specialise the shader at every dispatch): the slice count is a constant.
//
// Precision: masses are exp((x − m)/T) in f32 rounded to 2^-40, summed exactly; the top-p
// target is top_p × total in f32 (24 bits). The Gumbel variate comes from a 32-bit hash: its
// largest value is ~22.9, so a token more than ~22 nats below the best is drawn with
// probability < 1e-10 instead of e^-22 relative; nothing a statistical test can see.
// Workgroup memory: 3 KiB (hist), 3 KiB (pick).

struct Params {
    vocab: u32,      // V
    mode: u32,       // hist/pick: 0 = count (top-k), 1 = mass (top-p)
    shift: u32,      // hist/pick: bit position of this level's digit (24, 16, 8, 0)
    first: u32,      // pick: 1 at the first level of a search (prefix and target start over)
    use_lower: u32,  // hist/pick, mass search: only keys ≥ state.tau_k take part
    k: u32,          // count search: the k of top-k
    top_p: f32,      // mass search: the p of top-p
    inv_temp: f32,   // 1/T
    min_p: f32,      // perturb: min-p (0: off)
    temperature: f32, // T
    has_k: u32,      // perturb: a count search ran (τ_k valid)
    has_p: u32,      // perturb: a mass search ran (τ_p valid)
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
    _pad3: u32,
}

struct Draw {
    seed_lo: u32,  // the step's random seed (the host's ChaCha8 stream)
    seed_hi: u32,
    _pad0: u32,
    _pad1: u32,
}

const WG: u32 = 256u;
const E: u32 = 16u;              // entries per invocation
const S: u32 = 4096u;            // entries per slice (WG · E)
const N_SLICES: u32 = {{N_SLICES}}u; // ⌈V / S⌉
const BINS: u32 = 256u;
// -inf as bits: Tint refuses -inf as a constant f32 value, so it is only ever compared and
// stored as bits.
const NEG_INF_BITS: u32 = 0xff800000u;

@group(0) @binding(0) var<storage, read> logits: array<f32>;          // [V] f32: softcapped, penalised
@group(0) @binding(1) var<storage, read> topk: array<u32>;            // logits.wgsl result: [n, lse, id0, value0 bits, …]
@group(0) @binding(2) var<storage, read_write> hist_out: array<u32>;  // [N_SLICES, BINS, 3] u32: count, mass hi, mass lo
@group(0) @binding(3) var<storage, read_write> state: array<u32>;     // [8] u32, see STATE_*
@group(0) @binding(4) var<{{PARAMS}}> p: Params;
@group(0) @binding(5) var<{{PARAMS}}> draw: Draw;
@group(0) @binding(6) var<storage, read_write> y: array<u32>;         // [V] f32 bits: x/T + Gumbel, or -inf

const STATE_PREFIX: u32 = 0u;   // digits chosen so far
const STATE_NEED: u32 = 1u;     // count still needed (count search)
const STATE_NEED_HI: u32 = 2u;  // mass still needed, 2^40 fixed point (mass search)
const STATE_NEED_LO: u32 = 3u;
const STATE_TAU_K: u32 = 4u;    // τ_k after a count search
const STATE_TAU_P: u32 = 5u;    // τ_p after a mass search

// Order-preserving map f32 → u32 (as in logits.wgsl).
fn to_key(x: f32) -> u32 {
    let bits = bitcast<u32>(x);
    return select(bits | 0x80000000u, ~bits, (bits & 0x80000000u) != 0u);
}

fn row_max() -> f32 {
    return bitcast<f32>(topk[3]);
}

// Bits of the key above this level's digit (the prefix part), as a mask.
fn prefix_mask(shift: u32) -> u32 {
    return select(0xffffffffu << (shift + 8u), 0u, shift >= 24u);
}

fn lower_bound() -> u32 {
    return select(0u, state[STATE_TAU_K], p.use_lower != 0u);
}

var<workgroup> count_bins: array<atomic<u32>, BINS>;
var<workgroup> mass_hi: array<atomic<u32>, BINS>;
var<workgroup> mass_lo: array<atomic<u32>, BINS>;

@compute @workgroup_size(WG)
fn hist(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    atomicStore(&count_bins[lid], 0u);
    atomicStore(&mass_hi[lid], 0u);
    atomicStore(&mass_lo[lid], 0u);
    workgroupBarrier();
    let slice = wg.x;
    let mask = prefix_mask(p.shift);
    let prefix = select(state[STATE_PREFIX], 0u, p.first != 0u) & mask;
    let lower = lower_bound();
    let m = row_max();
    for (var j = 0u; j < E; j++) {
        let i = slice * S + j * WG + lid;
        if i >= p.vocab {
            break;
        }
        let x = logits[i];
        let key = to_key(x);
        if key < lower || (key & mask) != prefix || bitcast<u32>(x) == NEG_INF_BITS {
            continue;
        }
        let d = (key >> p.shift) & 0xffu;
        atomicAdd(&count_bins[d], 1u);
        if p.mode == 1u {
            // exp((x − m)/T) ∈ (0, 1] as 2^40 fixed point: 8 integer-ish bits in hi, 32 in lo.
            let v = exp((x - m) * p.inv_temp) * 256.0;
            let hi = u32(floor(v));
            let lo = u32(min((v - f32(hi)) * 4294967296.0, 4294967040.0));
            let old = atomicAdd(&mass_lo[d], lo);
            let carry = select(0u, 1u, old + lo < old);
            if hi + carry != 0u {
                atomicAdd(&mass_hi[d], hi + carry);
            }
        }
    }
    workgroupBarrier();
    let o = (slice * BINS + lid) * 3u;
    hist_out[o] = atomicLoad(&count_bins[lid]);
    hist_out[o + 1u] = atomicLoad(&mass_hi[lid]);
    hist_out[o + 2u] = atomicLoad(&mass_lo[lid]);
}

var<workgroup> bin_count: array<u32, BINS>;
var<workgroup> bin_hi: array<u32, BINS>;
var<workgroup> bin_lo: array<u32, BINS>;

// 64-bit (hi, lo) helpers.
fn add64(a: vec2<u32>, b: vec2<u32>) -> vec2<u32> {
    let lo = a.y + b.y;
    return vec2<u32>(a.x + b.x + select(0u, 1u, lo < a.y), lo);
}
fn sub64(a: vec2<u32>, b: vec2<u32>) -> vec2<u32> {
    return vec2<u32>(a.x - b.x - select(0u, 1u, a.y < b.y), a.y - b.y);
}
fn ge64(a: vec2<u32>, b: vec2<u32>) -> bool {
    return a.x > b.x || (a.x == b.x && a.y >= b.y);
}

@compute @workgroup_size(WG)
fn pick(@builtin(local_invocation_index) lid: u32) {
    var c = 0u;
    var mass = vec2<u32>(0u, 0u);
    for (var s = 0u; s < N_SLICES; s++) {
        let o = (s * BINS + lid) * 3u;
        c += hist_out[o];
        mass = add64(mass, vec2<u32>(hist_out[o + 1u], hist_out[o + 2u]));
    }
    bin_count[lid] = c;
    bin_hi[lid] = mass.x;
    bin_lo[lid] = mass.y;
    workgroupBarrier();
    if lid != 0u {
        return;
    }
    let prefix = select(state[STATE_PREFIX], 0u, p.first != 0u) & prefix_mask(p.shift);
    var chosen = 0u;
    if p.mode == 0u {
        var need = select(state[STATE_NEED], p.k, p.first != 0u);
        var above = 0u;
        for (var d = BINS; d > 0u; d--) {
            let n = bin_count[d - 1u];
            if above + n >= need {
                chosen = d - 1u;
                break;
            }
            above += n;
        }
        state[STATE_NEED] = need - above;
    } else {
        var need = vec2<u32>(state[STATE_NEED_HI], state[STATE_NEED_LO]);
        if p.first != 0u {
            var total = vec2<u32>(0u, 0u);
            for (var d = 0u; d < BINS; d++) {
                total = add64(total, vec2<u32>(bin_hi[d], bin_lo[d]));
            }
            let t = (f32(total.x) * 4294967296.0 + f32(total.y)) * p.top_p;
            let t_hi = min(floor(t / 4294967296.0), 4294967040.0);
            let t_lo = min(max(t - t_hi * 4294967296.0, 0.0), 4294967040.0);
            need = vec2<u32>(u32(t_hi), u32(t_lo));
            // Rounding must not ask for more than there is.
            if !ge64(total, need) {
                need = total;
            }
        }
        var above = vec2<u32>(0u, 0u);
        for (var d = BINS; d > 0u; d--) {
            let with_bin = add64(above, vec2<u32>(bin_hi[d - 1u], bin_lo[d - 1u]));
            chosen = d - 1u;
            if ge64(with_bin, need) {
                break;
            }
            above = with_bin;
        }
        let left = sub64(need, above);
        state[STATE_NEED_HI] = left.x;
        state[STATE_NEED_LO] = left.y;
    }
    let next = prefix | (chosen << p.shift);
    state[STATE_PREFIX] = next;
    if p.shift == 0u {
        state[select(STATE_TAU_K, STATE_TAU_P, p.mode == 1u)] = next;
    }
}

// PCG4D (Jarzynski & Olano, "Hash Functions for GPU Rendering", JCGT 2020).
fn pcg4d(seed: vec4<u32>) -> vec4<u32> {
    var v = seed * 1664525u + 1013904223u;
    v.x += v.y * v.w;
    v.y += v.z * v.x;
    v.z += v.x * v.y;
    v.w += v.y * v.z;
    v ^= v >> vec4<u32>(16u);
    v.x += v.y * v.w;
    v.y += v.z * v.x;
    v.z += v.x * v.y;
    v.w += v.y * v.z;
    return v;
}

// Gumbel(0, 1) = −ln(E), E = −ln(U) exponential, U = (h + ½)/2^32 uniform in (0, 1). For
// U ≥ ½, E is computed from 1 − U so the upper tail keeps its 32 bits.
fn gumbel(h: u32) -> f32 {
    var e: f32;
    if h < 0x80000000u {
        e = -log((f32(h) + 0.5) * 2.3283064e-10);
    } else {
        let v = (f32(~h) + 0.5) * 2.3283064e-10;  // 1 − U ∈ (0, ½]
        e = select(-log(1.0 - v), v * (1.0 + v * (0.5 + v * (1.0 / 3.0))), v < 1e-3);
    }
    return -log(e);
}

@compute @workgroup_size(WG)
fn perturb(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    var threshold = 0u;
    if p.has_k != 0u {
        threshold = max(threshold, state[STATE_TAU_K]);
    }
    if p.has_p != 0u {
        threshold = max(threshold, state[STATE_TAU_P]);
    }
    if p.min_p > 0.0 {
        threshold = max(threshold, to_key(row_max() + p.temperature * log(p.min_p)));
    }
    for (var j = 0u; j < E; j++) {
        let i = wg.x * S + j * WG + lid;
        if i >= p.vocab {
            break;
        }
        let x = logits[i];
        var out = NEG_INF_BITS;
        if to_key(x) >= threshold && bitcast<u32>(x) != NEG_INF_BITS {
            let h = pcg4d(vec4<u32>(i, draw.seed_lo, draw.seed_hi, 0x9e3779b9u)).x;
            out = bitcast<u32>(x * p.inv_temp + gumbel(h));
        }
        y[i] = out;
    }
}
