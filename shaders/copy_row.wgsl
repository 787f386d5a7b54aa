// Moves the step's last row to the front: x[0, :] = x[n_tokens − 1, :].
//
// Gemma 4 runs its KV-shared layers on a prompt's last token only (GEMMA.md §2.5): they write
// no cache, so no other row's output is ever used. Before them the residual stream and the
// per-layer inputs of that token are moved to row 0 and the rest of the step runs as a
// one-token step. Reads row n_tokens − 1 and writes row 0 of the same binding: disjoint for
// n_tokens > 1, and an element copied onto itself for n_tokens = 1.
//
// Dispatch: one invocation per element of a row, WG per workgroup (split over x/y by gpu::grid).

struct Params {
    len: u32,   // elements per row
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

const WG: u32 = {{WG}}u;

@group(0) @binding(0) var<storage, read_write> x: array<f32>;   // [n_tokens, len] f32
@group(0) @binding(1) var<{{PARAMS}}> p: Params;
@group(0) @binding(2) var<{{PARAMS}}> step: Step;

@compute @workgroup_size(WG)
fn main(inv: Invocation, grp: Workgroup) {
    let i = linear_group(grp.wg, grp.nwg) * WG + inv.lid;
    if i >= p.len {
        return;
    }
    x[i] = x[(step.n_tokens - 1u) * p.len + i];
}
