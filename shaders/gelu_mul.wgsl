// Gated-MLP activation: a[t, i] = gelu_tanh(gate[t, i]) · up[t, i]   for t < n_tokens, i < width
// (gelu_tanh is in common.wgsl; the decode mat-vec applies the same epilogue itself).
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
@group(0) @binding(3) var<{{PARAMS}}> p: Params;
@group(0) @binding(4) var<{{PARAMS}}> step: Step;

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
