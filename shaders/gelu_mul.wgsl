// Gated-MLP activation: a[t, i] = gelu_tanh(gate[t, i]) · up[t, i]   for t < n_tokens, i < width
//   gelu_tanh(x) = 0.5·x·(1 + tanh(u)),  u = √(2/π)·(x + 0.044715·x³)
// evaluated as the algebraically equal x · sigmoid(2u) = x / (1 + exp(−2u)): no tanh (some
// implementations return NaN from tanh(x) = (e^2x − 1)/(e^2x + 1) once e^2x overflows) and no
// cancellation: 1 + exp(−2u) ≥ 1, so the only error is exp's (≤ a few ulp relative).
// Limits: x → +∞ gives exp → 0, a = x·up; x → −∞ gives exp → +inf, gelu = −0 (true value
// underflows f32 below x ≈ −10.5 anyway); x³ overflows only for |x| > 7e12.
//
// Dispatch: one invocation per output element, WG per workgroup, ceil(n_tokens·width / WG)
// workgroups split over x/y by gpu::grid; elements past the end are skipped.
// Inputs: gate row t at gate[t·in_stride], up row t at up[t·up_stride + up_offset] (strides =
// width for separate buffers, 2·width to read a fused [gate | up] row through two offset
// bindings; Gemma 4's PLE gate reads layer l's slice of [T, L·P] with up_stride = L·P,
// up_offset = l·P).
// Precision: f32 in, f32 math, f32 out.

struct Params {
    width: u32,      // I, elements per row of the output
    in_stride: u32,  // elements between consecutive rows of gate
    up_stride: u32,  // elements between consecutive rows of up
    up_offset: u32,  // elements before row 0 of up
}

const WG: u32 = {{WG}}u;

@group(0) @binding(0) var<storage, read> gate: array<f32>;       // [n_tokens, in_stride] f32
@group(0) @binding(1) var<storage, read> up: array<f32>;         // [n_tokens, up_stride] f32
@group(0) @binding(2) var<storage, read_write> a: array<f32>;    // [n_tokens, width] f32
@group(0) @binding(3) var<uniform> p: Params;
@group(0) @binding(4) var<uniform> step: Step;

fn gelu_tanh(x: f32) -> f32 {
    let u = 0.7978845608028654 * (x + 0.044715 * x * x * x);
    return x / (1.0 + exp(-2.0 * u));
}

@compute @workgroup_size(WG)
fn main(inv: Invocation, grp: Workgroup) {
    let idx = linear_group(grp.wg, grp.nwg) * WG + inv.lid;
    if idx >= step.n_tokens * p.width {
        return;
    }
    let t = idx / p.width;
    let i = idx % p.width;
    a[idx] = gelu_tanh(gate[t * p.in_stride + i]) * up[t * p.up_stride + p.up_offset + i];
}
