// KV-cache store: copies this step's staging rows into the layer's cache slots.
//
//   k_cache[(pos0 + t) % cap, g, :] = k_new[t, g, :]   (and the same for v)
//
// A full layer has cap ≥ every position (slot = position); a sliding layer is a ring of
// cap ≥ W slots. Rows t with T − t > cap would be overwritten by a later row of the same step,
// so they are skipped: no two invocations write the same slot (no race), and the ring ends up
// holding the last cap positions.
// Dispatch: one invocation per u32 word of K and V, T·nkv·words of them, WG per workgroup,
// split over x/y by gpu::grid. Pure u32 copy, blind to the element type: identical in every
// capability variant and for both cache types (f16 pairs: words = d/2; f32: words = d, each
// f32 a word, so a row is copied bit for bit either way).

struct Params {
    n_kv_heads: u32,
    words: u32,       // u32 words per head row: d / 2 (f16 pairs) or d (f32)
    cap: u32,
    _pad: u32,
}

const WG: u32 = {{WG}}u;

// Rows of `words` u32 per KV head: f16 pairs (words = d/2) or f32 bit patterns (words = d).
@group(0) @binding(0) var<storage, read> k_new: array<u32>;           // [T, nkv, words]
@group(0) @binding(1) var<storage, read> v_new: array<u32>;           // [T, nkv, words]
@group(0) @binding(2) var<storage, read_write> k_cache: array<u32>;   // [cap, nkv, words]
@group(0) @binding(3) var<storage, read_write> v_cache: array<u32>;   // [cap, nkv, words]
@group(0) @binding(4) var<storage, read> p: Params;
@group(0) @binding(5) var<storage, read> step: Step;

@compute @workgroup_size(WG)
fn main(inv: Invocation, grp: Workgroup) {
    let i = linear_group(grp.wg, grp.nwg) * WG + inv.lid;
    let row_words = p.n_kv_heads * p.words;
    let t = i / row_words;
    if t >= step.n_tokens || step.n_tokens - t > p.cap {
        return;
    }
    let dst = ((step.pos0 + t) % p.cap) * row_words + i % row_words;
    k_cache[dst] = k_new[i];
    v_cache[dst] = v_new[i];
}
