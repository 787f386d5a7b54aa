//! The GPU context: adapter selection, device creation with the limits and features the engine
//! needs, error capture, and buffer helpers (the kernel cache is in `super::kernel`). Kernel code
//! takes a `&GpuContext`; it never creates devices (the wgpu `hello_compute` split), so tests can
//! inject their own.

use std::sync::{Arc, Mutex};

use wgpu::util::DeviceExt;

use super::kernel::KernelCache;
use crate::{Error, Result};

/// What the caller wants from the GPU. Defaults: any backend, the best adapter, every optional
/// feature the adapter offers, and the adapter's own limits.
#[derive(Clone, Debug, Default)]
pub struct GpuOptions {
    /// Restrict to these backends (`None`: Vulkan, Metal, DX12 and the browser's WebGPU).
    pub backends: Option<wgpu::Backends>,
    /// Pick the first adapter whose name contains this text (case-insensitive).
    pub adapter_name: Option<String>,
    /// Never use `shader-f16`, even when offered (tests the portable path).
    pub disable_f16: bool,
    /// Never use subgroup operations, even when offered.
    pub disable_subgroups: bool,
    /// Run under WebGPU's default limits (128 MiB per binding, 256 MiB per buffer, 16 KiB of
    /// workgroup memory, 256 invocations) instead of the adapter's: proves portability.
    pub webgpu_default_limits: bool,
    /// Lower the per-binding limit further (tests tensor splitting).
    pub max_binding_size: Option<u64>,
    /// Prefer a software adapter (e.g. lavapipe) even when a real GPU is present.
    pub force_fallback_adapter: bool,
    /// Allow buffers and bindings above 256 MiB when the adapter supports them. Off by
    /// default: phones and browsers refuse or kill large allocations, so the engine splits
    /// big tensors instead.
    pub allow_large_buffers: bool,
    /// Enable GPU timestamp queries when the adapter offers them (benchmarks: per-kernel times).
    pub timestamps: bool,
    /// Keep compiled pipelines in a file in this directory, where the backend supports a
    /// pipeline cache (Vulkan): later loads skip most of the driver's compilation. Native only.
    pub pipeline_cache_dir: Option<std::path::PathBuf>,
    /// How the mat-vec maps rows to invocations: `Some(true)` one row per invocation (what a
    /// CPU adapter runs fastest), `Some(false)` a workgroup per 4 rows (GPUs); `None` picks by
    /// the adapter's device type. Tests force each to cover both.
    pub matvec_lane_rows: Option<bool>,
    /// Keep naga's loop bounding: a 64-bit counter it adds to every shader loop so that a loop
    /// cannot run forever. Drivers then no longer see a loop's trip count, so they stop
    /// unrolling it and spill every array it indexes to (slow) local memory: on an H100 this
    /// made decode attention 4× slower (gfx-rs/wgpu#7698). Off by default: every loop in this
    /// crate's shaders has a constant positive step and a bound set from validated shapes, so
    /// none can run forever. Native only (a browser compiles WGSL its own way).
    pub shader_loop_bounding: bool,
    /// Where kernels read their parameters and the per-step values: `Some(true)` uniform
    /// buffers, `Some(false)` read-only storage buffers, `None` by the adapter's device type
    /// (storage on CPU adapters, uniform elsewhere). See [`Caps::uniform_params`].
    pub uniform_params: Option<bool>,
    /// Fault injection for tests: buffer creation through the context's helpers fails with
    /// [`Error::OutOfMemory`] once the bytes of buffers created since the budget was set would
    /// exceed this (see [`GpuContext::set_memory_budget`]). `None`: only the device's limits.
    pub memory_budget: Option<u64>,
}

/// Usage of buffers holding kernel parameters: bound as uniform or storage buffers
/// ([`Caps::uniform_params`]).
pub const PARAMS_USAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::UNIFORM)
    .union(wgpu::BufferUsages::COPY_DST);

/// Largest buffer (and binding) the engine creates unless asked otherwise.
pub const DEFAULT_MAX_BUFFER: u64 = 256 << 20;

/// What the device can do; kernels choose their variant from this at run time.
#[derive(Clone, Debug)]
pub struct Caps {
    /// `shader-f16` is enabled on the device.
    pub f16: bool,
    /// Subgroup operations are enabled on the device.
    pub subgroups: bool,
    /// Smallest subgroup size the adapter may use (0 when unknown).
    pub subgroup_min_size: u32,
    /// Largest subgroup size the adapter may use (the WebGPU maximum, 128, when unknown).
    pub subgroup_max_size: u32,
    /// Largest storage binding, in bytes.
    pub max_binding: u64,
    /// Largest buffer, in bytes.
    pub max_buffer: u64,
    /// Workgroups per dispatch dimension.
    pub max_workgroups_per_dim: u32,
    /// Workgroup memory, in bytes.
    pub max_workgroup_storage: u32,
    /// Invocations per workgroup.
    pub max_invocations: u32,
    /// Alignment of storage-buffer binding offsets, in bytes.
    pub storage_offset_align: u32,
    /// Alignment of uniform-buffer binding offsets, in bytes.
    pub uniform_offset_align: u32,
    /// Storage buffers a shader stage may bind.
    pub max_storage_buffers: u32,
    /// Running in a browser through WebGPU (Tint wants `enable subgroups;`, naga rejects it).
    pub browser: bool,
    /// Timestamp queries may be written inside compute passes (per-kernel GPU times).
    pub timestamps: bool,
    /// The mat-vec gives each invocation whole rows (CPU adapters; see
    /// `GpuOptions::matvec_lane_rows`).
    pub matvec_lane_rows: bool,
    /// Kernels bind their parameters as uniform buffers: a GPU serves them from its constant
    /// cache, so a kernel computes its first addresses without a round trip to memory (every
    /// decode dispatch waits for the one before it, so that latency adds up). CPU adapters get
    /// read-only storage instead: Mesa's lavapipe inlines uniform values that reach a branch or
    /// loop bound and recompiles the shader at every dispatch, never freeing the variants.
    pub uniform_params: bool,
}

impl Caps {
    /// The capabilities of a device with WebGPU's default limits and the given optional
    /// features: what shader validation assumes when no GPU is at hand.
    pub fn webgpu_defaults(f16: bool, subgroups: bool) -> Self {
        let l = wgpu::Limits::default();
        Caps {
            f16,
            subgroups,
            subgroup_min_size: if subgroups { 4 } else { 0 },
            subgroup_max_size: 128,
            max_binding: l.max_storage_buffer_binding_size,
            max_buffer: l.max_buffer_size,
            max_workgroups_per_dim: l.max_compute_workgroups_per_dimension,
            max_workgroup_storage: l.max_compute_workgroup_storage_size,
            max_invocations: l.max_compute_invocations_per_workgroup,
            storage_offset_align: l.min_storage_buffer_offset_alignment,
            uniform_offset_align: l.min_uniform_buffer_offset_alignment,
            max_storage_buffers: l.max_storage_buffers_per_shader_stage,
            browser: false,
            timestamps: false,
            matvec_lane_rows: false,
            uniform_params: true,
        }
    }
}

impl Caps {
    /// Checks that a storage buffer of `bytes` can be created and bound whole on a device with
    /// these limits (also usable before any device exists, e.g. to plan a model).
    pub fn check_storage_size(&self, what: &str, bytes: u64) -> Result<()> {
        for (available, limit) in [
            (self.max_binding, "max_storage_buffer_binding_size"),
            (self.max_buffer, "max_buffer_size"),
        ] {
            if bytes > available {
                return Err(Error::Limit {
                    what: what.to_string(),
                    needed: bytes,
                    available,
                    limit,
                });
            }
        }
        Ok(())
    }
}

/// Owns the device and queue and caches compiled kernels.
pub struct GpuContext {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub caps: Caps,
    /// Compiled kernels, and the batch being collected (`super::kernel`).
    pub(super) kernel_cache: Mutex<KernelCache>,
    /// `GpuOptions::shader_loop_bounding`.
    pub(super) loop_bounding: bool,
    /// The driver's pipeline cache and the file it is kept in (`GpuOptions::pipeline_cache_dir`).
    pub(super) pipeline_cache: Option<(wgpu::PipelineCache, std::path::PathBuf)>,
    /// The first GPU error nobody caught (wgpu's default would panic; a browser would only log
    /// it): reported by the next wait or readback, so a failed dispatch never reads as zeros.
    uncaptured: Arc<Mutex<Option<GpuFault>>>,
    /// Why the device was lost (set by wgpu's device-lost callback or `lose_device_for_test`):
    /// every later wait, readback, submit and allocation returns [`Error::DeviceLost`].
    lost: Arc<Mutex<Option<String>>>,
    /// Bytes of buffers created through this context, and the test budget.
    allocated: Mutex<Allocated>,
    /// Held while this context polls the device or submits to it: wgpu-core 30 can panic when
    /// threads sharing a device poll at once, or one submits (which maintains the queue), while
    /// a poll times out ("If the queue is empty, the current submission index … should be at
    /// least the wait submission index": a poll that timed out reads a stale fence value while
    /// another thread empties the queue).
    #[cfg(not(target_arch = "wasm32"))]
    poll_lock: Mutex<()>,
}

/// What [`GpuContext`]'s buffer helpers have created.
#[derive(Clone, Copy, Debug, Default)]
struct Allocated {
    /// Bytes of every buffer created through the helpers (never decremented: `wgpu::Buffer`
    /// has no drop hook; live GPU memory is what wgpu's allocator report says).
    created: u64,
    /// `created` when the budget was set.
    base: u64,
    budget: Option<u64>,
}

/// An uncaptured GPU error, kept until a wait or readback reports it.
#[derive(Clone, Debug)]
struct GpuFault {
    out_of_memory: bool,
    message: String,
}

impl std::fmt::Debug for GpuContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuContext")
            .field("adapter", &self.info.name)
            .field("caps", &self.caps)
            .finish()
    }
}

impl GpuContext {
    /// Picks an adapter and creates the device.
    pub async fn new(opts: &GpuOptions) -> Result<Self> {
        let backends = opts.backends.unwrap_or(wgpu::Backends::PRIMARY);
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
        desc.backends = backends;
        let instance = wgpu::Instance::new(desc);
        let adapter = select_adapter(&instance, backends, opts).await?;
        let info = adapter.get_info();
        let adapter_limits = adapter.limits();
        let offered = adapter.features();

        let mut features = wgpu::Features::empty();
        if !opts.disable_f16 && offered.contains(wgpu::Features::SHADER_F16) {
            features |= wgpu::Features::SHADER_F16;
        }
        if !opts.disable_subgroups && offered.contains(wgpu::Features::SUBGROUP) {
            features |= wgpu::Features::SUBGROUP;
        }
        let timestamps = wgpu::Features::TIMESTAMP_QUERY
            | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS
            | wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES;
        if opts.timestamps && offered.contains(timestamps) {
            features |= timestamps;
        }
        let cache_file = opts.pipeline_cache_dir.as_ref().and_then(|dir| {
            let key = wgpu::util::pipeline_cache_key(&info)?;
            offered
                .contains(wgpu::Features::PIPELINE_CACHE)
                .then(|| dir.join(key))
        });
        if cache_file.is_some() {
            features |= wgpu::Features::PIPELINE_CACHE;
        }

        let mut limits = if opts.webgpu_default_limits {
            wgpu::Limits::default()
        } else {
            adapter_limits.clone()
        };
        if let Some(max) = opts.max_binding_size {
            limits.max_storage_buffer_binding_size =
                limits.max_storage_buffer_binding_size.min(max);
        }
        if !opts.allow_large_buffers {
            limits.max_buffer_size = limits.max_buffer_size.min(DEFAULT_MAX_BUFFER);
            limits.max_storage_buffer_binding_size = limits
                .max_storage_buffer_binding_size
                .min(DEFAULT_MAX_BUFFER);
        }
        // Never ask for more than the adapter has (a WebGPU default can exceed a weak adapter).
        limits = limits.using_resolution(adapter_limits.clone());
        limits.max_storage_buffer_binding_size = limits
            .max_storage_buffer_binding_size
            .min(adapter_limits.max_storage_buffer_binding_size);

        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("gemma-wgpu"),
                required_features: features,
                required_limits: limits.clone(),
                experimental_features: wgpu::ExperimentalFeatures::disabled(),
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .map_err(|e| Error::Device(format!("{} ({:?}): {e}", info.name, info.backend)))?;

        let uncaptured: Arc<Mutex<Option<GpuFault>>> = Arc::default();
        let sink = uncaptured.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            let mut slot = sink.lock().unwrap_or_else(|p| p.into_inner());
            if slot.is_none() {
                *slot = Some(GpuFault {
                    out_of_memory: matches!(e, wgpu::Error::OutOfMemory { .. }),
                    message: e.to_string(),
                });
            }
        }));

        let lost: Arc<Mutex<Option<String>>> = Arc::default();
        let slot = lost.clone();
        device.set_device_lost_callback(move |reason, message| {
            let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
            if slot.is_none() {
                let why = match reason {
                    wgpu::DeviceLostReason::Destroyed => "the device was destroyed",
                    wgpu::DeviceLostReason::Unknown => "the driver or the browser gave it up",
                };
                *slot = Some(match one_line(&message).as_str() {
                    "" => why.to_string(),
                    m => format!("{why} ({m})"),
                });
            }
        });

        let caps = Caps {
            f16: features.contains(wgpu::Features::SHADER_F16),
            subgroups: features.contains(wgpu::Features::SUBGROUP),
            subgroup_min_size: info.subgroup_min_size,
            subgroup_max_size: if info.subgroup_max_size == 0 {
                128
            } else {
                info.subgroup_max_size
            },
            max_binding: limits.max_storage_buffer_binding_size,
            max_buffer: limits.max_buffer_size,
            max_workgroups_per_dim: limits.max_compute_workgroups_per_dimension,
            max_workgroup_storage: limits.max_compute_workgroup_storage_size,
            max_invocations: limits.max_compute_invocations_per_workgroup,
            storage_offset_align: limits.min_storage_buffer_offset_alignment,
            uniform_offset_align: limits.min_uniform_buffer_offset_alignment,
            max_storage_buffers: limits.max_storage_buffers_per_shader_stage,
            browser: info.backend == wgpu::Backend::BrowserWebGpu,
            timestamps: features.contains(timestamps),
            matvec_lane_rows: opts
                .matvec_lane_rows
                .unwrap_or(info.device_type == wgpu::DeviceType::Cpu),
            uniform_params: opts
                .uniform_params
                .unwrap_or(info.device_type != wgpu::DeviceType::Cpu),
        };
        let pipeline_cache = cache_file.map(|file| {
            let data = std::fs::read(&file).ok();
            // SAFETY: the data was written by `save_pipeline_cache` for an adapter with the
            // same vendor and device id (the file's name); with `fallback` wgpu and the driver
            // validate it and start an empty cache when it does not match (e.g. a new driver).
            let cache = unsafe {
                device.create_pipeline_cache(&wgpu::PipelineCacheDescriptor {
                    label: Some("gemma-wgpu pipelines"),
                    data: data.as_deref(),
                    fallback: true,
                })
            };
            (cache, file)
        });
        Ok(Self {
            device,
            queue,
            info,
            caps,
            pipeline_cache,
            kernel_cache: Mutex::default(),
            loop_bounding: opts.shader_loop_bounding,
            uncaptured,
            lost,
            #[cfg(not(target_arch = "wasm32"))]
            poll_lock: Mutex::new(()),
            allocated: Mutex::new(Allocated {
                budget: opts.memory_budget,
                ..Default::default()
            }),
        })
    }

    /// `Some(reason)` once the device is lost: nothing will run on it again, and the model
    /// must be loaded again on a new context.
    pub fn lost_reason(&self) -> Option<String> {
        self.lost.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether the device is lost.
    pub fn is_lost(&self) -> bool {
        self.lost_reason().is_some()
    }

    /// `Err(DeviceLost)` once the device is lost.
    pub fn check_lost(&self) -> Result<()> {
        match self.lost_reason() {
            Some(reason) => Err(Error::DeviceLost(reason)),
            None => Ok(()),
        }
    }

    /// Test hook: destroys the device as a driver reset or a browser reclaiming the GPU would,
    /// so the error paths of a lost device can be tested. wgpu's device-lost callback records
    /// the loss (natively at the next poll, in a browser from the event loop), exactly as for a
    /// real loss; from then on every operation on this context fails with
    /// [`Error::DeviceLost`]. A new context works.
    pub fn lose_device_for_test(&self) {
        self.device.destroy();
    }

    /// Sets (or with `None` clears) the test memory budget: from now on buffer creation through
    /// the helpers fails with [`Error::OutOfMemory`] once the bytes created since this call
    /// would exceed `budget`.
    pub fn set_memory_budget(&self, budget: Option<u64>) {
        let mut a = self.allocated.lock().unwrap_or_else(|e| e.into_inner());
        a.base = a.created;
        a.budget = budget;
    }

    /// Bytes of every buffer created through this context's helpers so far (dropped buffers
    /// included).
    pub fn created_bytes(&self) -> u64 {
        self.allocated
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .created
    }

    /// Checks a buffer of `bytes` against the test budget.
    fn admit(&self, label: &str, bytes: u64) -> Result<()> {
        let a = self.allocated.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(budget) = a.budget {
            let used = a.created - a.base;
            if used + bytes > budget {
                return Err(Error::OutOfMemory(format!(
                    "buffer `{label}` needs {bytes} bytes, {used} bytes are allocated and the memory budget is {budget} bytes"
                )));
            }
        }
        Ok(())
    }

    /// Counts a created buffer.
    fn count(&self, bytes: u64) {
        self.allocated
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .created += bytes;
    }

    /// Creates a buffer: the one place the engine allocates GPU memory. Fails with
    /// `DeviceLost` on a lost device, and with `OutOfMemory` naming the buffer when the test
    /// budget or (natively, where the error is known at once) the device refuses it.
    pub fn create_buffer(&self, desc: &wgpu::BufferDescriptor<'_>) -> Result<wgpu::Buffer> {
        self.allocate(desc.label.unwrap_or("buffer"), desc.size, || {
            self.device.create_buffer(desc)
        })
    }

    /// A buffer holding `contents` (through [`GpuContext::create_buffer`]'s checks).
    pub fn create_buffer_init(
        &self,
        label: &str,
        contents: &[u8],
        usage: wgpu::BufferUsages,
    ) -> Result<wgpu::Buffer> {
        self.allocate(label, contents.len() as u64, || {
            self.device
                .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some(label),
                    contents,
                    usage,
                })
        })
    }

    fn allocate(
        &self,
        label: &str,
        bytes: u64,
        create: impl FnOnce() -> wgpu::Buffer,
    ) -> Result<wgpu::Buffer> {
        self.check_lost()?;
        self.admit(label, bytes)?;
        // Natively the scope resolves at once, so an allocation failure names its buffer. In a
        // browser it resolves later: there the error reaches the uncaptured-error sink and the
        // next wait or readback reports it.
        #[cfg(not(target_arch = "wasm32"))]
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let buffer = create();
        #[cfg(not(target_arch = "wasm32"))]
        if let Some(error) = super::poll_ready(scope.pop()).flatten() {
            return Err(Error::OutOfMemory(format!(
                "buffer `{label}` ({bytes} bytes): {}",
                one_line(&error.to_string())
            )));
        }
        self.count(bytes);
        Ok(buffer)
    }

    /// The first uncaptured GPU error since the last call, as an error (`OutOfMemory` for
    /// allocation failures).
    pub fn take_fault(&self) -> Option<Error> {
        if let Some(reason) = self.lost_reason() {
            return Some(Error::DeviceLost(reason));
        }
        let fault = self
            .uncaptured
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()?;
        Some(if fault.out_of_memory {
            Error::OutOfMemory(fault.message)
        } else {
            Error::Gpu(fault.message)
        })
    }

    /// `Err` with the pending uncaptured error, if any.
    fn check_fault(&self) -> Result<()> {
        match self.take_fault() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Writes the pipeline cache to its file (atomically), when the context keeps one. Call
    /// after the model's pipelines are built; failing to save only costs the next load time.
    pub fn save_pipeline_cache(&self) -> Result<()> {
        let Some((cache, file)) = &self.pipeline_cache else {
            return Ok(());
        };
        let Some(data) = cache.get_data() else {
            return Ok(());
        };
        let io = |e: std::io::Error| Error::InvalidArgument(format!("{}: {e}", file.display()));
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let tmp = file.with_extension("partial");
        std::fs::write(&tmp, &data).map_err(io)?;
        std::fs::rename(&tmp, file).map_err(io)
    }

    /// One line naming the adapter, backend and the variant in use.
    pub fn describe(&self) -> String {
        format!(
            "{} ({:?}, {:?}; f16 {}, subgroups {}, max binding {} MiB)",
            self.info.name,
            self.info.backend,
            self.info.device_type,
            if self.caps.f16 { "on" } else { "off" },
            if self.caps.subgroups { "on" } else { "off" },
            self.caps.max_binding >> 20
        )
    }

    /// Whether shaders are compiled with wgpu's loop bounding (`GpuOptions::shader_loop_bounding`).
    pub fn loop_bounding(&self) -> bool {
        self.loop_bounding
    }

    /// Checks that a storage buffer of `bytes` can be created and bound whole.
    pub fn check_storage_size(&self, what: &str, bytes: u64) -> Result<()> {
        self.caps.check_storage_size(what, bytes)
    }

    /// A zeroed storage buffer (also a copy source and destination).
    pub fn storage(&self, label: &str, bytes: u64) -> Result<wgpu::Buffer> {
        let bytes = bytes.max(4).next_multiple_of(4);
        self.check_storage_size(label, bytes)?;
        self.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_DST
                | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        })
    }

    /// A storage buffer holding `data`.
    pub fn storage_init<T: bytemuck::Pod>(&self, label: &str, data: &[T]) -> Result<wgpu::Buffer> {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        if bytes.len() % 4 != 0 || bytes.is_empty() {
            let mut padded = bytes.to_vec();
            padded.resize(bytes.len().max(4).next_multiple_of(4), 0);
            return self.storage_init(label, &padded);
        }
        self.check_storage_size(label, bytes.len() as u64)?;
        self.create_buffer_init(
            label,
            bytes,
            wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_DST
                | wgpu::BufferUsages::COPY_SRC,
        )
    }

    /// A buffer holding `value` (kernel parameters, written once at build time), bound as a
    /// uniform or a read-only storage buffer as [`Caps::uniform_params`] says. Its few bytes
    /// count towards the test budget but are never refused (this helper cannot fail; the next
    /// fallible allocation reports an exceeded budget).
    pub fn params_init<T: bytemuck::Pod>(&self, label: &str, value: &T) -> wgpu::Buffer {
        let contents = bytemuck::bytes_of(value);
        self.count(contents.len() as u64);
        self.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents,
                usage: PARAMS_USAGE,
            })
    }

    /// Copies `count` elements of `T` starting at byte `offset` of `buffer` back to the CPU.
    pub async fn read<T: bytemuck::Pod>(
        &self,
        buffer: &wgpu::Buffer,
        offset: u64,
        count: usize,
    ) -> Result<Vec<T>> {
        let bytes = (count * std::mem::size_of::<T>()) as u64;
        let padded = bytes.max(4).next_multiple_of(4);
        let staging = self.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size: padded,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })?;
        let mut encoder = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("readback"),
            });
        encoder.copy_buffer_to_buffer(buffer, offset, &staging, 0, padded);
        self.submit([encoder.finish()]);
        map_read(self, &staging, 0, padded).await?;
        let data = {
            let view = staging
                .slice(..)
                .get_mapped_range()
                .map_err(|e| Error::Readback(e.to_string()))?;
            bytemuck::cast_slice::<u8, T>(&view[..bytes as usize]).to_vec()
        };
        staging.unmap();
        self.check_fault()?;
        Ok(data)
    }

    /// Runs `encode` in one compute pass and one submit, then waits for the GPU (tests and
    /// one-off work; the model's step loop manages its own encoder).
    pub async fn run(&self, encode: impl FnOnce(&mut wgpu::ComputePass<'_>)) -> Result<()> {
        self.check_lost()?;
        let mut encoder = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("run") });
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("run"),
                timestamp_writes: None,
            });
            encode(&mut pass);
        }
        self.submit([encoder.finish()]);
        self.wait().await
    }

    /// Submits command buffers. Natively under the poll lock: wgpu-core maintains the queue
    /// inside `Queue::submit` too, and one doing so while another thread's poll has timed out
    /// trips the same assertion as two polls (see `poll_lock`); tests share a context across
    /// threads.
    pub fn submit<I: IntoIterator<Item = wgpu::CommandBuffer>>(
        &self,
        commands: I,
    ) -> wgpu::SubmissionIndex {
        #[cfg(not(target_arch = "wasm32"))]
        let _one_poller = self.poll_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.queue.submit(commands)
    }

    /// Waits until all submitted work has finished.
    pub async fn wait(&self) -> Result<()> {
        self.check_lost()?;
        let (tx, rx) = futures_channel::oneshot::channel();
        self.queue.on_submitted_work_done(move || {
            let _ = tx.send(());
        });
        #[cfg(not(target_arch = "wasm32"))]
        self.poll_wait()?;
        if rx.await.is_err() {
            return Err(self.lost_or(Error::Readback(
                "the GPU dropped the completion callback".into(),
            )));
        }
        self.check_fault()
    }

    /// `DeviceLost` when the device is lost (whatever failed then failed because of it), else
    /// `e`.
    pub fn lost_or(&self, e: Error) -> Error {
        match self.lost_reason() {
            Some(reason) => Error::DeviceLost(reason),
            None => e,
        }
    }

    /// Blocks until the submitted work is done, waking every `POLL_SLICE` to check whether
    /// the device was lost meanwhile, so a lost device never leaves a wait hanging.
    #[cfg(not(target_arch = "wasm32"))]
    fn poll_wait(&self) -> Result<()> {
        loop {
            self.check_lost()?;
            let polled = {
                let _one_poller = self.poll_lock.lock().unwrap_or_else(|e| e.into_inner());
                self.device.poll(wgpu::PollType::Wait {
                    submission_index: None,
                    timeout: Some(POLL_SLICE),
                })
            };
            match polled {
                Ok(_) => return Ok(()),
                Err(wgpu::PollError::Timeout) => continue,
                Err(e) => return Err(self.lost_or(Error::Readback(e.to_string()))),
            }
        }
    }
}

/// `text` on one line (wgpu's and drivers' messages may span several): the CLI prints every
/// error as one `error:` line.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// How long a native wait blocks before it checks again whether the device was lost. Short,
/// because the wait holds the poll lock, which other threads' submits take too.
#[cfg(not(target_arch = "wasm32"))]
const POLL_SLICE: std::time::Duration = std::time::Duration::from_millis(2);

/// Maps `buffer[offset..offset+size]` for reading and waits for it (native: by polling the
/// device; browser: the promise resolves from the event loop). A lost device gives
/// `Error::DeviceLost`.
pub async fn map_read(
    ctx: &GpuContext,
    buffer: &wgpu::Buffer,
    offset: u64,
    size: u64,
) -> Result<()> {
    ctx.check_lost()?;
    let (tx, rx) = futures_channel::oneshot::channel();
    buffer
        .slice(offset..offset + size)
        .map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
    #[cfg(not(target_arch = "wasm32"))]
    ctx.poll_wait()?;
    let mapped = match rx.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(ctx.lost_or(Error::Readback(e.to_string()))),
        Err(_) => Err(ctx.lost_or(Error::Readback("the GPU dropped the map callback".into()))),
    };
    ctx.check_fault()?;
    mapped
}

async fn select_adapter(
    instance: &wgpu::Instance,
    backends: wgpu::Backends,
    opts: &GpuOptions,
) -> Result<wgpu::Adapter> {
    if let Some(want) = &opts.adapter_name {
        let want_lc = want.to_lowercase();
        let adapters = instance.enumerate_adapters(backends).await;
        let names: Vec<String> = adapters.iter().map(|a| a.get_info().name).collect();
        return adapters
            .into_iter()
            .find(|a| a.get_info().name.to_lowercase().contains(&want_lc))
            .ok_or_else(|| Error::NoAdapter {
                detail: format!(
                    " named like `{want}` (found: {})",
                    if names.is_empty() {
                        "none".to_string()
                    } else {
                        names.join(", ")
                    }
                ),
            });
    }
    instance
        .request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            force_fallback_adapter: opts.force_fallback_adapter,
            compatible_surface: None,
            apply_limit_buckets: false,
        })
        .await
        .map_err(|e| Error::NoAdapter {
            detail: format!(" for backends {backends:?} ({e})"),
        })
}
