//! Benchmarks (native builds): whole-model speed (`model`: load, prefill, time to first token,
//! decode, bytes per token, per-kernel GPU times) and kernel microbenchmarks (`kernels`:
//! mat-vec GB/s and mat-mat TFLOP/s at real model shapes, against the device's copy
//! bandwidth). Both produce serde structs; `gemma-wgpu bench` prints them (BENCHMARKS.md
//! documents the JSON).

pub mod kernels;
pub mod model;
