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
// Inputs: gate row t at gate[t·in_stride], up row t at up[t·in_stride] (in_stride = width for
// separate buffers, 2·width to read a fused [gate | up] row through two offset bindings).
// Precision: f32 in, f32 math, f32 out.

struct Params {
    width: u32,      // I, elements per row of the output
    in_stride: u32,  // elements between consecutive rows of gate and of up
    _pad0: u32,
    _pad1: u32,
}

const WG: u32 = {{WG}}u;

@group(0) @binding(0) var<storage, read> gate: array<f32>;       // [n_tokens, in_stride] f32
@group(0) @binding(1) var<storage, read> up: array<f32>;         // [n_tokens, in_stride] f32
@group(0) @binding(2) var<storage, read_write> a: array<f32>;    // [n_tokens, width] f32
@group(0) @binding(3) var<uniform> p: Params;
@group(0) @binding(4) var<uniform> step: Step;

fn gelu_tanh(x: f32) -> f32 {
    let u = 0.7978845608028654 * (x + 0.044715 * x * x * x);
    return x / (1.0 + exp(-2.0 * u));
}

@compute @workgroup_size(WG)
fn main(inv: Invocation) {
    let idx = linear_group(inv.wg, inv.nwg) * WG + inv.lid;
    if idx >= step.n_tokens * p.width {
        return;
    }
    let t = idx / p.width;
    let i = idx % p.width;
    let src = t * p.in_stride + i;
    a[idx] = gelu_tanh(gate[src]) * up[src];
}
