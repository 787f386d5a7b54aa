// Constrained decoding's token mask: logits of tokens the grammar does not allow become −inf
// before the top-k and the sampler (src/constrain.rs computes the mask on the CPU each step).
// One invocation per logit; the row width is a constant of the pipeline.

const WG: u32 = 256u;
const VOCAB: u32 = {{VOCAB}}u;

@group(0) @binding(0) var<storage, read_write> logits: array<u32>;  // [V] f32 bits, one row (-inf is written as bits: Tint refuses it as an f32 constant)
@group(0) @binding(1) var<storage, read> allowed: array<u32>;       // [⌈V/32⌉] u32: bit i % 32 of word i / 32 allows token i

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if i >= VOCAB {
        return;
    }
    if ((allowed[i / 32u] >> (i % 32u)) & 1u) == 0u {
        logits[i] = 0xff800000u;
    }
}
