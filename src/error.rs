//! One error type for the whole engine. Every failure that depends on a file, a device or
//! user input is a variant here, with enough context (file, tensor, key, limit) to act on.

use std::path::PathBuf;

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{0}")]
    IoPlain(#[from] std::io::Error),

    /// The bytes are not a GGUF file, or its structure is broken.
    #[error("GGUF: {0}")]
    Gguf(String),

    /// The file ends before the data the header describes (most often an unfinished download).
    #[error("GGUF file is truncated (incomplete download?): {0}")]
    Truncated(String),

    /// A metadata key is missing or has the wrong type.
    #[error("GGUF metadata key `{key}`: {problem}")]
    Metadata { key: String, problem: String },

    #[error("unsupported architecture `{found}` (supported: {supported})")]
    UnsupportedArchitecture { found: String, supported: String },

    #[error("tensor `{tensor}` has unsupported type {ty} (supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K)")]
    UnsupportedTensorType { tensor: String, ty: String },

    #[error("tensor `{0}` is missing from the model file")]
    MissingTensor(String),

    #[error("tensor `{tensor}`: expected shape {expected}, found {found}")]
    Shape {
        tensor: String,
        expected: String,
        found: String,
    },

    /// A tensor's values are unusable (NaN or infinity in a norm weight or scale): refused at
    /// load, since they would turn every logit into NaN.
    #[error("tensor `{tensor}`: {problem}")]
    BadTensorData { tensor: String, problem: String },

    /// The forward pass produced NaN: some weight matrix holds NaN or infinity (matrices are
    /// not scanned at load; the logits are checked at every readback instead).
    #[error("the model produced NaN logits at position {position}: its weights hold NaN or infinite values (the file is corrupt)")]
    NonFiniteLogits { position: u32 },

    /// A buffer or binding would exceed what the adapter allows.
    #[error("{what} needs {needed} bytes but the GPU allows {available} ({limit})")]
    Limit {
        what: String,
        needed: u64,
        available: u64,
        limit: &'static str,
    },

    #[error("no usable GPU adapter{detail}. {}", if cfg!(target_arch = "wasm32") { "This browser offers no WebGPU adapter: use a browser with WebGPU enabled (Chrome or Edge 113+, Safari 26+, Firefox 141+ on Windows)" } else { "On a machine without a GPU install Mesa's software Vulkan driver (Debian/Ubuntu: `apt-get install mesa-vulkan-drivers libvulkan1`)" })]
    NoAdapter { detail: String },

    #[error("GPU device request failed: {0}")]
    Device(String),

    /// A GPU operation failed (validation error, lost device) where nothing caught it.
    #[error("GPU error: {0}")]
    Gpu(String),

    /// The GPU could not allocate a buffer.
    #[error("GPU out of memory: {0}")]
    OutOfMemory(String),

    /// The GPU device was lost (driver reset, GPU removed or reclaimed, or destroyed): nothing
    /// runs on it again; the model must be loaded again, on a new device.
    #[error("the GPU device was lost: {0}; load the model again")]
    DeviceLost(String),

    /// A shader failed to compile or validate (a bug, reported instead of a panic).
    #[error("shader `{name}`: {message}")]
    Shader { name: String, message: String },

    #[error("GPU readback failed: {0}")]
    Readback(String),

    #[error("tokenizer: {0}")]
    Tokenizer(String),

    #[error("prompt has {tokens} tokens but the context holds {context}")]
    ContextOverflow { tokens: usize, context: usize },

    /// A Gemma 4 MTP assistant that cannot draft for the model it was given: what differs.
    #[error("the assistant does not fit the target model: {0}")]
    AssistantMismatch(String),

    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// Reading the model file failed (the browser's file or cache storage reported an error).
    #[error("reading the model file: {0}")]
    Read(String),

    /// The caller stopped the operation.
    #[error("aborted: {0}")]
    Aborted(String),
}

impl Error {
    /// Attach a path to an I/O error.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
