//! Host side of every WGSL kernel: one Rust file per kernel family, mirroring `shaders/`.
//! Each op is built once (pipeline, bind group, parameter buffer) and implements `gpu::Op`.

pub mod attention;
pub mod embed;
pub mod gelu;
pub mod logits;
pub mod matmul;
pub mod matvec;
pub mod norm;
pub mod ple;
pub mod qkv_prep;
pub mod sample;
pub mod token_mask;

/// Workgroup size of row-wise kernels (norms, elementwise): within WebGPU's 256-invocation
/// default and a power of two, as the reductions require.
pub const ROW_WG: u32 = 256;

/// Every kernel variant the engine can build (one entry per source × specialisation; the
/// capability flags are applied on top). Used to validate all shaders without a GPU.
pub fn all_specs() -> Vec<crate::gpu::KernelSpec> {
    let mut v = Vec::new();
    v.extend(norm::specs());
    v.extend(qkv_prep::specs());
    v.extend(gelu::specs());
    v.extend(logits::specs());
    v.extend(sample::specs());
    v.extend(token_mask::specs());
    v.extend(attention::specs());
    v.extend(matmul::specs());
    v.extend(matvec::specs());
    v.extend(embed::specs());
    v.extend(ple::specs());
    v
}
