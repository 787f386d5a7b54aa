//! GPU plumbing shared by every kernel: the device context, WGSL specialisation, the per-step
//! uniform, and the `Op` convention (an op is built once, with its pipelines and bind groups,
//! and then only *encoded* into the step's compute pass).

mod context;
mod kernel;
pub mod profile;
pub mod shader;

pub use context::{map_read, Caps, GpuContext, GpuOptions, DEFAULT_MAX_BUFFER, PARAMS_USAGE};
pub use kernel::{BindGroup, Kernel, KernelSpec, COMMON_WGSL};
pub use profile::{Ablation, OpTime, Profile, Profiler, Recorder};

/// Values that change every step, uploaded once per step into one small buffer that every
/// kernel needing them binds (uniform or storage: [`Caps::uniform_params`]). Mirrors `struct Step` in `shaders/common.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct StepParams {
    /// Rows (tokens) processed in this step: 1 for decode, up to the chunk size for prefill.
    pub n_tokens: u32,
    /// Position of the first row.
    pub pos0: u32,
    pub _pad: [u32; 2],
}

impl StepParams {
    pub fn new(n_tokens: u32, pos0: u32) -> Self {
        Self {
            n_tokens,
            pos0,
            _pad: [0; 2],
        }
    }
}

/// A unit of GPU work built once (pipelines, bind groups, parameter buffers) and encoded into
/// the step's single compute pass as many times as the model runs.
pub trait Op {
    /// Records this op's dispatches for a step of `step.n_tokens` rows.
    fn encode(&self, pass: &mut wgpu::ComputePass<'_>, step: &StepParams);
}

std::thread_local! {
    /// Dispatches recorded on this thread (recording never crosses threads, so a recorder can
    /// take the difference around its own encoding).
    static RECORDED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Dispatches submitted by this process (benchmarks report dispatches per token).
static SUBMITTED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Records one dispatch; every kernel dispatches through here so the count stays true.
pub fn dispatch(pass: &mut wgpu::ComputePass<'_>, [x, y, z]: [u32; 3]) {
    RECORDED.with(|c| c.set(c.get() + 1));
    pass.dispatch_workgroups(x, y, z);
}

/// Dispatches recorded so far on this thread.
pub fn recorded_dispatches() -> u64 {
    RECORDED.with(|c| c.get())
}

/// Counts `n` recorded dispatches as submitted. A command buffer recorded ahead of time (the
/// next decode step) counts when it runs, not when it is recorded, and never if it is dropped.
pub fn count_submitted(n: u64) {
    SUBMITTED.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
}

/// Dispatches submitted so far by this process (those counted with `count_submitted`).
pub fn dispatch_count() -> u64 {
    SUBMITTED.load(std::sync::atomic::Ordering::Relaxed)
}

/// Splits `groups` workgroups over x and y so neither exceeds `max_per_dim`; shaders recover
/// the linear index as `wg.x + wg.y * num_workgroups.x` and must ignore indices past the end.
pub fn grid(groups: u32, max_per_dim: u32) -> [u32; 3] {
    if groups <= max_per_dim {
        [groups.max(1), 1, 1]
    } else {
        let y = groups.div_ceil(max_per_dim);
        [groups.div_ceil(y), y, 1]
    }
}

/// Polls a future once; `None` when it is not ready. wgpu-core's error scopes resolve at once,
/// so shader errors are caught synchronously natively.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn poll_ready<F: std::future::Future>(fut: F) -> Option<F::Output> {
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};
    let mut fut = pin!(fut);
    match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn grid_covers_and_respects_limit() {
        for groups in [1u32, 5, 65535, 65536, 262144, 1_000_003] {
            let [x, y, _] = super::grid(groups, 65535);
            assert!(x <= 65535 && y <= 65535);
            assert!(x as u64 * y as u64 >= groups as u64);
        }
    }
}
