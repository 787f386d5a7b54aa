//! gemma-wgpu: Gemma 3 and Gemma 4 text models on the GPU through wgpu.
//!
//! One code path serves native (Vulkan, Metal, DX12) and the browser (WebGPU): the core API is
//! async, weights stay quantized on the GPU, and every layer runs as WGSL compute kernels.

pub mod bench;
pub mod chat;
pub mod constrain;
pub mod error;
pub mod generate;
pub mod gguf;
pub mod gpu;
pub mod kernels;
pub mod model;
pub mod openai;
pub mod quant;
pub mod reference;
pub mod rope;
pub mod sampler;
/// The HTTP server of `gemma-wgpu serve` (native only).
#[cfg(all(feature = "cli", not(target_arch = "wasm32")))]
pub mod server;
pub mod synth;
pub mod tokenizer;
pub mod tool_calls;
#[cfg(target_arch = "wasm32")]
pub mod web;

pub use error::{Error, Result};
