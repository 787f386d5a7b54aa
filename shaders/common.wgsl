// Prelude prepended to every kernel (see src/gpu/shader.rs for the #if and placeholder syntax).
// Flags set by the context: F16 (shader-f16 enabled), SUBGROUPS (subgroup ops enabled),
// SUBGROUPS_DIRECTIVE (browser: Tint wants `enable subgroups;`, naga rejects it).
#if F16
enable f16;
#endif
#if SUBGROUPS_DIRECTIVE
enable subgroups;
#endif

// Per-step values; mirrors `gpu::StepParams`.
struct Step {
    n_tokens: u32,  // rows in this step (1 for decode)
    pos0: u32,      // position of the first row
    _pad0: u32,
    _pad1: u32,
}

// Linear workgroup index of a dispatch split by `gpu::grid`.
fn linear_group(wg: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wg.x + wg.y * nwg.x;
}

// f16 pairs packed in u32 (the portable storage form of f16 data, e.g. the KV cache).
fn f16_lo(w: u32) -> f32 {
    return unpack2x16float(w).x;
}
fn f16_hi(w: u32) -> f32 {
    return unpack2x16float(w).y;
}

// The builtins every kernel takes; entry points declare
// `fn main(inv: Invocation, grp: Workgroup)`. The workgroup's ids are a struct of their own:
// Chrome's compiler (Tint) treats a whole struct parameter as non-uniform when any member is,
// and a row index derived from a non-uniform value may not guard a barrier.
struct Invocation {
    @builtin(local_invocation_index) lid: u32,
#if SUBGROUPS
    @builtin(subgroup_invocation_id) sg_lane: u32,
    @builtin(subgroup_size) sg_size: u32,
#endif
}

// Uniform across the workgroup.
struct Workgroup {
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
}

// Scratch for workgroup reductions (only counted against the 16 KiB limit when used).
var<workgroup> reduce_scratch: array<f32, 256>;

// Sum of `v` over a workgroup of `n` invocations (n a power of two, <= 256). Every invocation
// must call it (uniform control flow); every invocation gets the result.
fn workgroup_sum(v: f32, inv: Invocation, n: u32) -> f32 {
#if SUBGROUPS
    let s = subgroupAdd(v);
    let size = min(inv.sg_size, n);
    if inv.sg_lane == 0u {
        reduce_scratch[inv.lid / size] = s;
    }
    workgroupBarrier();
    var total = 0.0;
    for (var i = 0u; i < n / size; i++) {
        total += reduce_scratch[i];
    }
    workgroupBarrier();
    return total;
#else
    reduce_scratch[inv.lid] = v;
    workgroupBarrier();
    for (var stride = n / 2u; stride > 0u; stride /= 2u) {
        if inv.lid < stride {
            reduce_scratch[inv.lid] += reduce_scratch[inv.lid + stride];
        }
        workgroupBarrier();
    }
    let total = reduce_scratch[0];
    workgroupBarrier();
    return total;
#endif
}

// Scratch for `workgroup_sum3` (only counted against the limit when used).
var<workgroup> reduce_scratch3: array<vec3<f32>, 256>;

// Three sums at once (one round of barriers instead of three); contract as `workgroup_sum`.
fn workgroup_sum3(v: vec3<f32>, inv: Invocation, n: u32) -> vec3<f32> {
#if SUBGROUPS
    let s = subgroupAdd(v);
    let size = min(inv.sg_size, n);
    if inv.sg_lane == 0u {
        reduce_scratch3[inv.lid / size] = s;
    }
    workgroupBarrier();
    var total = vec3<f32>(0.0);
    for (var i = 0u; i < n / size; i++) {
        total += reduce_scratch3[i];
    }
    workgroupBarrier();
    return total;
#else
    reduce_scratch3[inv.lid] = v;
    workgroupBarrier();
    for (var stride = n / 2u; stride > 0u; stride /= 2u) {
        if inv.lid < stride {
            reduce_scratch3[inv.lid] += reduce_scratch3[inv.lid + stride];
        }
        workgroupBarrier();
    }
    let total = reduce_scratch3[0];
    workgroupBarrier();
    return total;
#endif
}

// Maximum of `v` over the workgroup; same contract as `workgroup_sum`.
fn workgroup_max(v: f32, inv: Invocation, n: u32) -> f32 {
#if SUBGROUPS
    let s = subgroupMax(v);
    let size = min(inv.sg_size, n);
    if inv.sg_lane == 0u {
        reduce_scratch[inv.lid / size] = s;
    }
    workgroupBarrier();
    var best = reduce_scratch[0];
    for (var i = 1u; i < n / size; i++) {
        best = max(best, reduce_scratch[i]);
    }
    workgroupBarrier();
    return best;
#else
    reduce_scratch[inv.lid] = v;
    workgroupBarrier();
    for (var stride = n / 2u; stride > 0u; stride /= 2u) {
        if inv.lid < stride {
            reduce_scratch[inv.lid] = max(reduce_scratch[inv.lid], reduce_scratch[inv.lid + stride]);
        }
        workgroupBarrier();
    }
    let best = reduce_scratch[0];
    workgroupBarrier();
    return best;
#endif
}

// gelu_tanh(x) = 0.5·x·(1 + tanh(u)),  u = √(2/π)·(x + 0.044715·x³), evaluated as the
// algebraically equal x · sigmoid(2u) = x / (1 + exp(−2u)): no tanh (some implementations return
// NaN from tanh(x) = (e^2x − 1)/(e^2x + 1) once e^2x overflows) and no cancellation:
// 1 + exp(−2u) ≥ 1, so the only error is exp's (≤ a few ulp relative). Limits: x → +∞ gives
// x; x → −∞ gives −0 (the true value underflows f32 below x ≈ −10.5 anyway); x³ overflows only
// for |x| > 7e12.
fn gelu_tanh(x: f32) -> f32 {
    let u = 0.7978845608028654 * (x + 0.044715 * x * x * x);
    return x / (1.0 + exp(-2.0 * u));
}
