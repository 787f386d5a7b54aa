//! Kernels: WGSL specialised for the device, compiled into pipelines and cached per context,
//! and the bind groups that feed them.
//!
//! A model needs a few dozen pipelines, and a driver takes tens of milliseconds for each (a
//! browser more), so loading compiles them as one batch: while a batch is open
//! ([`GpuContext::defer_compilation`]) a kernel is only *named* and its bind groups only
//! *described*; [`GpuContext::compile_deferred`] then compiles them all at once — on threads
//! natively, through `createComputePipelineAsync` in a browser — and makes the bind groups.
//! Outside a batch everything is made at once, as before.

use std::collections::HashMap;
use std::num::NonZeroU64;
use std::sync::{Arc, OnceLock};

use super::context::{Caps, GpuContext};
use super::shader::preprocess;
use crate::{Error, Result};

/// Prelude shared by every kernel.
pub const COMMON_WGSL: &str = include_str!("../../shaders/common.wgsl");

/// What identifies a kernel: its source, entry point and specialisation. The capability flags
/// (`F16`, `SUBGROUPS`) come from the context, so one context builds one variant.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct KernelSpec {
    /// Label, also used in error messages (e.g. `matvec_q4_0`).
    pub name: String,
    /// WGSL source; `shaders/common.wgsl` is prepended.
    pub source: &'static str,
    pub entry: &'static str,
    /// Extra boolean flags for `#if`.
    pub flags: Vec<(&'static str, bool)>,
    /// `{{NAME}}` substitutions.
    pub defines: Vec<(&'static str, String)>,
    /// Built only for devices with subgroups (its portable form would exceed a WebGPU limit):
    /// expanding it without them is an error, and shader validation skips those variants.
    pub requires_subgroups: bool,
}

impl KernelSpec {
    pub fn new(name: impl Into<String>, source: &'static str) -> Self {
        Self {
            name: name.into(),
            source,
            entry: "main",
            flags: Vec::new(),
            defines: Vec::new(),
            requires_subgroups: false,
        }
    }

    /// Marks the spec as built for subgroup devices only (see `requires_subgroups`).
    pub fn subgroups_only(mut self, only: bool) -> Self {
        self.requires_subgroups = only;
        self
    }

    /// Whether a device with `caps` can run the spec.
    pub fn runs_on(&self, caps: &Caps) -> bool {
        caps.subgroups || !self.requires_subgroups
    }

    fn check_runs_on(&self, caps: &Caps) -> Result<()> {
        if self.runs_on(caps) {
            return Ok(());
        }
        Err(Error::InvalidArgument(format!(
            "shader {} is built for devices with subgroups only",
            self.name
        )))
    }

    pub fn define(mut self, name: &'static str, value: impl ToString) -> Self {
        self.defines.push((name, value.to_string()));
        self
    }

    pub fn flag(mut self, name: &'static str, on: bool) -> Self {
        self.flags.push((name, on));
        self
    }

    pub fn entry(mut self, entry: &'static str) -> Self {
        self.entry = entry;
        self
    }

    /// The final WGSL text for a device with these capabilities.
    pub fn expand(&self, caps: &Caps) -> Result<String> {
        self.check_runs_on(caps)?;
        let mut flags = vec![
            ("F16", caps.f16),
            ("SUBGROUPS", caps.subgroups),
            ("SUBGROUPS_DIRECTIVE", caps.subgroups && caps.browser),
        ];
        flags.extend(self.flags.iter().copied());
        let mut defines = self.defines.clone();
        let params = if caps.uniform_params {
            "uniform"
        } else {
            "storage, read"
        };
        defines.push(("PARAMS", params.to_string()));
        let mut text = String::from(COMMON_WGSL);
        text.push_str(self.source);
        preprocess(&self.name, &text, &flags, &defines)
    }
}

/// A compute pipeline plus the layout its bind groups use; compiled when first asked for, or
/// with its batch ([`GpuContext::compile_deferred`]).
#[derive(Debug)]
pub struct Kernel {
    spec: KernelSpec,
    compiled: OnceLock<Compiled>,
}

#[derive(Debug)]
struct Compiled {
    pipeline: wgpu::ComputePipeline,
    layout: wgpu::BindGroupLayout,
}

impl Kernel {
    /// The pipeline. Ops only record after their model's batch has compiled, so a kernel that
    /// reaches a pass is always compiled.
    pub fn pipeline(&self) -> &wgpu::ComputePipeline {
        &self.compiled().pipeline
    }

    fn compiled(&self) -> &Compiled {
        self.compiled
            .get()
            .unwrap_or_else(|| panic!("kernel {} used before its batch compiled", self.spec.name))
    }
}

/// A bind group, made at once or (inside a batch) once its kernel has compiled. Recording uses
/// it like a `wgpu::BindGroup`: `pass.set_bind_group(0, group.get(), &[])`.
#[derive(Clone, Debug)]
pub struct BindGroup(Arc<OnceLock<wgpu::BindGroup>>);

impl BindGroup {
    pub fn get(&self) -> &wgpu::BindGroup {
        self.0
            .get()
            .expect("bind group used before its batch compiled")
    }
}

/// A bind group waiting for its kernel: the buffers it binds, held until then.
struct PendingBind {
    kernel: Arc<Kernel>,
    /// `(binding, buffer, offset, size)`.
    entries: Vec<(u32, wgpu::Buffer, u64, Option<NonZeroU64>)>,
    group: Arc<OnceLock<wgpu::BindGroup>>,
}

/// What an open batch has collected.
#[derive(Default)]
pub(super) struct Batch {
    kernels: Vec<Arc<Kernel>>,
    binds: Vec<PendingBind>,
}

/// The kernel cache of a context.
#[derive(Default)]
pub(super) struct KernelCache {
    kernels: HashMap<KernelSpec, Arc<Kernel>>,
    /// `Some` while a batch is open.
    batch: Option<Batch>,
    /// Pipelines compiled so far, and the wall-clock seconds spent compiling them.
    compiled: u32,
    seconds: f64,
}

impl GpuContext {
    fn cache(&self) -> std::sync::MutexGuard<'_, KernelCache> {
        self.kernel_cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Pipelines compiled by this context and the wall-clock seconds their creation took.
    pub fn compile_stats(&self) -> (u32, f64) {
        let c = self.cache();
        (c.compiled, c.seconds)
    }

    /// The kernel for `spec`, from the cache or made now. Inside a batch it is compiled with
    /// the batch; otherwise at once, and shader errors become `Error::Shader` instead of
    /// wgpu's default panic.
    pub fn kernel(&self, spec: &KernelSpec) -> Result<Arc<Kernel>> {
        spec.check_runs_on(&self.caps)?;
        let kernel = {
            let mut cache = self.cache();
            let kernel = cache
                .kernels
                .entry(spec.clone())
                .or_insert_with(|| {
                    Arc::new(Kernel {
                        spec: spec.clone(),
                        compiled: OnceLock::new(),
                    })
                })
                .clone();
            if kernel.compiled.get().is_some() {
                return Ok(kernel);
            }
            if let Some(batch) = &mut cache.batch {
                if !batch.kernels.iter().any(|k| Arc::ptr_eq(k, &kernel)) {
                    batch.kernels.push(kernel.clone());
                }
                return Ok(kernel);
            }
            kernel
        };
        self.compile_now(&kernel)?;
        Ok(kernel)
    }

    /// Compiles `kernel` on this thread, if nothing has yet, and counts it.
    fn compile_now(&self, kernel: &Kernel) -> Result<()> {
        let started = web_time::Instant::now();
        if self.compile_one(kernel)? {
            self.count_compiled(1, started);
        }
        Ok(())
    }

    /// Compiles `kernel` on this thread unless it already is; `true` when this call compiled it.
    fn compile_one(&self, kernel: &Kernel) -> Result<bool> {
        if kernel.compiled.get().is_some() {
            return Ok(false);
        }
        let _ = kernel.compiled.set(self.compile(&kernel.spec)?);
        Ok(true)
    }

    /// Adds `n` pipelines compiled since `started` to [`compile_stats`](Self::compile_stats).
    fn count_compiled(&self, n: usize, started: web_time::Instant) {
        let mut cache = self.cache();
        cache.compiled += n as u32;
        cache.seconds += started.elapsed().as_secs_f64();
    }

    /// The shader module for `spec`.
    fn shader_module(&self, spec: &KernelSpec) -> Result<wgpu::ShaderModule> {
        let text = spec.expand(&self.caps)?;
        let descriptor = wgpu::ShaderModuleDescriptor {
            label: Some(&spec.name),
            source: wgpu::ShaderSource::Wgsl(text.into()),
        };
        let checks = wgpu::ShaderRuntimeChecks {
            force_loop_bounding: self.loop_bounding,
            ..wgpu::ShaderRuntimeChecks::checked()
        };
        // SAFETY: only the loop bounding may be off, and every loop in the crate's shaders ends
        // (constant positive steps, bounds from validated shapes: see
        // `GpuOptions::shader_loop_bounding`); buffer bounds checks and the guards on integer
        // division stay on.
        Ok(unsafe { self.device.create_shader_module_trusted(descriptor, checks) })
    }

    /// The pipeline of `spec` from its `module`: the entry point, the bind group layout derived
    /// from the shader, and the driver's pipeline cache where there is one (native Vulkan).
    fn pipeline_descriptor<'a>(
        &'a self,
        spec: &'a KernelSpec,
        module: &'a wgpu::ShaderModule,
    ) -> wgpu::ComputePipelineDescriptor<'a> {
        wgpu::ComputePipelineDescriptor {
            label: Some(&spec.name),
            layout: None,
            module,
            entry_point: Some(spec.entry),
            compilation_options: Default::default(),
            cache: self.pipeline_cache.as_ref().map(|(c, _)| c),
        }
    }

    /// Compiles `spec` into a pipeline (blocking).
    fn compile(&self, spec: &KernelSpec) -> Result<Compiled> {
        // Natively the scope (thread-local) resolves at once. In a browser it resolves later,
        // so there errors go to the uncaptured-error sink instead and surface at the first
        // wait or readback.
        #[cfg(not(target_arch = "wasm32"))]
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = self.shader_module(spec)?;
        let pipeline = self
            .device
            .create_compute_pipeline(&self.pipeline_descriptor(spec, &module));
        #[cfg(not(target_arch = "wasm32"))]
        if let Some(error) = super::poll_ready(scope.pop()).flatten() {
            return Err(Error::Shader {
                name: spec.name.clone(),
                message: error.to_string(),
            });
        }
        let layout = pipeline.get_bind_group_layout(0);
        Ok(Compiled { pipeline, layout })
    }

    /// Opens a batch: until [`compile_deferred`](Self::compile_deferred), kernels are only
    /// named and bind groups only described, so that their pipelines compile together.
    pub fn defer_compilation(&self) {
        let mut cache = self.cache();
        if cache.batch.is_none() {
            cache.batch = Some(Batch::default());
        }
    }

    /// Closes the batch without compiling it (the ops it was for are gone); its kernels
    /// compile when next asked for.
    pub fn discard_deferred(&self) {
        self.cache().batch = None;
    }

    /// Closes the batch: compiles its kernels (in parallel where the platform can), then makes
    /// its bind groups. On `Err` the batch is gone; its kernels compile when next asked for.
    pub async fn compile_deferred(&self) -> Result<()> {
        let Some(batch) = self.cache().batch.take() else {
            return Ok(());
        };
        // A kernel of the batch may have compiled since it joined (bound with a resource that
        // is not a buffer, which is made at once).
        let pending: Vec<&Kernel> = batch
            .kernels
            .iter()
            .map(|k| k.as_ref())
            .filter(|k| k.compiled.get().is_none())
            .collect();
        let started = web_time::Instant::now();
        let compiled = self.compile_batch(&pending).await;
        self.count_compiled(pending.len(), started);
        compiled?;
        for bind in batch.binds {
            let entries: Vec<(u32, wgpu::BindingResource<'_>)> = bind
                .entries
                .iter()
                .map(|(binding, buffer, offset, size)| {
                    let resource = wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer,
                        offset: *offset,
                        size: *size,
                    });
                    (*binding, resource)
                })
                .collect();
            let _ = bind.group.set(self.make_bind_group(&bind.kernel, &entries));
        }
        Ok(())
    }

    /// Natively: the batch's pipelines on as many threads as there are cores (drivers and
    /// wgpu compile independent pipelines concurrently).
    #[cfg(not(target_arch = "wasm32"))]
    async fn compile_batch(&self, kernels: &[&Kernel]) -> Result<()> {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(kernels.len());
        if threads <= 1 {
            return kernels
                .iter()
                .try_for_each(|k| self.compile_one(k).map(drop));
        }
        let next = AtomicUsize::new(0);
        let first_error: std::sync::Mutex<Option<Error>> = std::sync::Mutex::new(None);
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&kernel) = kernels.get(i) else { break };
                    if let Err(e) = self.compile_one(kernel) {
                        first_error
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .get_or_insert(e);
                    }
                });
            }
        });
        match first_error.into_inner().unwrap_or_else(|e| e.into_inner()) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// In a browser: every pipeline of the batch is requested through
    /// `createComputePipelineAsync` before the first is awaited, so the browser compiles them
    /// off the page's thread and in parallel; a pipeline the browser refuses is an
    /// `Error::Shader` with its message.
    #[cfg(target_arch = "wasm32")]
    async fn compile_batch(&self, kernels: &[&Kernel]) -> Result<()> {
        let mut pending = Vec::with_capacity(kernels.len());
        for &kernel in kernels {
            let module = self.shader_module(&kernel.spec)?;
            let request = self
                .device
                .create_compute_pipeline_async(&self.pipeline_descriptor(&kernel.spec, &module));
            match request {
                Some(request) => pending.push((kernel, request)),
                // Not the WebGPU backend (WebGL is not built): compile as outside a batch.
                None => {
                    self.compile_one(kernel)?;
                }
            }
        }
        for (kernel, request) in pending {
            let pipeline = request.await.map_err(|message| Error::Shader {
                name: kernel.spec.name.clone(),
                message,
            })?;
            let layout = pipeline.get_bind_group_layout(0);
            let _ = kernel.compiled.set(Compiled { pipeline, layout });
        }
        Ok(())
    }

    /// A bind group for `kernel` with `resources[i]` at binding `i`.
    pub fn bind(&self, kernel: &Arc<Kernel>, resources: &[wgpu::BindingResource<'_>]) -> BindGroup {
        let entries: Vec<(u32, wgpu::BindingResource<'_>)> = resources
            .iter()
            .enumerate()
            .map(|(i, r)| (i as u32, r.clone()))
            .collect();
        self.bind_at(kernel, &entries)
    }

    /// A bind group for `kernel` with each `(binding, resource)` of `entries` (for kernels
    /// whose bindings depend on the variant, so their numbers are not contiguous). Inside a
    /// batch, made when the batch has compiled.
    pub fn bind_at(
        &self,
        kernel: &Arc<Kernel>,
        entries: &[(u32, wgpu::BindingResource<'_>)],
    ) -> BindGroup {
        if kernel.compiled.get().is_none() {
            let mut cache = self.cache();
            if let Some(batch) = &mut cache.batch {
                let buffers: Option<Vec<_>> = entries
                    .iter()
                    .map(|(binding, resource)| match resource {
                        wgpu::BindingResource::Buffer(b) => {
                            Some((*binding, b.buffer.clone(), b.offset, b.size))
                        }
                        _ => None,
                    })
                    .collect();
                // Only buffers are held for later; anything else is bound at once below.
                if let Some(entries) = buffers {
                    let group = Arc::new(OnceLock::new());
                    batch.binds.push(PendingBind {
                        kernel: kernel.clone(),
                        entries,
                        group: group.clone(),
                    });
                    return BindGroup(group);
                }
            }
        }
        let group = OnceLock::new();
        // Outside a batch the kernel compiled when it was asked for. One that fails here came
        // from a batch that failed: `compile_deferred` returned that error, and the ops it was
        // for are dropped with the failed load, so the empty group is never recorded.
        if self.compile_now(kernel).is_ok() {
            let _ = group.set(self.make_bind_group(kernel, entries));
        }
        BindGroup(Arc::new(group))
    }

    fn make_bind_group(
        &self,
        kernel: &Kernel,
        entries: &[(u32, wgpu::BindingResource<'_>)],
    ) -> wgpu::BindGroup {
        let entries: Vec<wgpu::BindGroupEntry<'_>> = entries
            .iter()
            .map(|(binding, r)| wgpu::BindGroupEntry {
                binding: *binding,
                resource: r.clone(),
            })
            .collect();
        self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(&kernel.spec.name),
            layout: &kernel.compiled().layout,
            entries: &entries,
        })
    }
}
