//! Quantized weights: GGUF block formats, their bit-exact CPU dequantizers, the repacked GPU
//! layout the WGSL kernels read (`layout`), and `QuantMatrix`, a weight matrix uploaded in that
//! layout (split by rows across buffers when it exceeds one binding).
//!
//! Types are `gguf::GgmlType`. Supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K,
//! Q5_K, Q6_K (GEMMA.md §4.6).

mod dequant;
mod layout;
mod matrix;

pub use dequant::dequantize;
pub use layout::GpuLayout;
pub use matrix::{part_sizes, MatrixUpload, QuantMatrix, QuantPart};
