// Dispatch-cost yardstick for `bench --kernels`: the smallest useful dispatch. One workgroup
// increments one counter, so a chain of these measures what each dispatch costs besides its
// work (launch, and the barrier when it depends on the one before).

@group(0) @binding(0) var<storage, read_write> counter: array<u32>;  // [1] u32

@compute @workgroup_size(64)
fn main(inv: Invocation) {
    if inv.lid == 0u {
        counter[0] += 1u;
    }
}
