//! The Gemma model: configuration and the GPU forward pass.
