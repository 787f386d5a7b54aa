// Memory-bandwidth yardstick for `bench`: dst[i] = src[i] over 16-byte words, one word per
// invocation, so every byte is read once and written once with fully coalesced accesses (what
// a bandwidth-bound kernel can hope for). Some drivers' buffer-copy command is slower than
// this, so the benchmark reports the faster of the two.
//
// Dispatch: ceil(words / 256) workgroups of 256, split over x/y by gpu::grid; invocations past
// the end return.

@group(0) @binding(0) var<storage, read> src: array<vec4<u32>>;        // [words] 16-byte words
@group(0) @binding(1) var<storage, read_write> dst: array<vec4<u32>>;  // [words]

@compute @workgroup_size(256)
fn main(inv: Invocation, grp: Workgroup) {
    let i = linear_group(grp.wg, grp.nwg) * 256u + inv.lid;
    if i < arrayLength(&dst) {
        dst[i] = src[i];
    }
}
