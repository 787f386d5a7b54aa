//! Host side of every WGSL kernel: one Rust file per kernel family, mirroring `shaders/`.
//! Each op is built once (pipeline, bind group, parameter buffer) and implements `gpu::Op`.

pub mod embed;
pub mod matmul;
pub mod norm;

/// Workgroup size of row-wise kernels (norms, elementwise): within WebGPU's 256-invocation
/// default and a power of two, as the reductions require.
pub const ROW_WG: u32 = 256;
