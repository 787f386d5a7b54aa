//! Per-op GPU times from timestamp queries written between the ops of a step's compute pass
//! (`TIMESTAMP_QUERY_INSIDE_PASSES`). Benchmarks use it to show where a token's time goes; the
//! normal step loop records no timestamps. The difference between two consecutive marks is the
//! op's time including the barrier before it, which is what the op costs the step.

use super::{GpuContext, Op, StepParams};
use crate::{Error, Result};

/// GPU time of one kind of op, summed over every call it made.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct OpTime {
    /// The op's label (e.g. `ffn_gate`), shared by the op in every layer.
    pub op: &'static str,
    pub calls: u64,
    /// Microseconds over all calls.
    pub total_us: f64,
}

/// What a profiler collected since it was last taken.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Profile {
    /// Steps (submits) profiled.
    pub steps: u64,
    /// GPU microseconds from the first to the last mark of each step, summed.
    pub total_us: f64,
    /// Per op, in the order first seen.
    pub ops: Vec<OpTime>,
    /// Marks dropped because a step had more ops than the query set holds.
    pub dropped: u64,
}

/// Timestamp query set and readback for one step at a time.
pub struct Profiler {
    set: wgpu::QuerySet,
    resolve: wgpu::Buffer,  // [capacity] u64 ticks, QUERY_RESOLVE
    readback: wgpu::Buffer, // [capacity] u64 ticks, MAP_READ
    capacity: u32,
    /// Label of the op ending at mark `i + 1` of the current step.
    labels: Vec<&'static str>,
    dropped: u64,
    period_ns: f64,
    collected: Profile,
}

impl Profiler {
    /// A profiler for steps of up to `capacity - 1` ops. Fails when the device was created
    /// without timestamp queries inside passes (`GpuOptions::timestamps`, adapter support).
    pub fn new(ctx: &GpuContext, capacity: u32) -> Result<Self> {
        if !ctx.caps.timestamps {
            return Err(Error::InvalidArgument(format!(
                "{} offers no timestamp queries inside compute passes: no per-kernel times",
                ctx.info.name
            )));
        }
        let capacity = capacity.clamp(2, wgpu::QUERY_SET_MAX_QUERIES);
        let set = ctx.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("profile"),
            ty: wgpu::QueryType::Timestamp,
            count: capacity,
        });
        let bytes = capacity as u64 * 8;
        let resolve = ctx.create_buffer(&wgpu::BufferDescriptor {
            label: Some("profile.resolve"),
            size: bytes,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        })?;
        let readback = ctx.create_buffer(&wgpu::BufferDescriptor {
            label: Some("profile.readback"),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })?;
        Ok(Self {
            set,
            resolve,
            readback,
            capacity,
            labels: Vec::new(),
            dropped: 0,
            period_ns: ctx.queue.get_timestamp_period() as f64,
            collected: Profile::default(),
        })
    }

    /// Starts a step: the first mark.
    fn begin(&mut self, pass: &mut wgpu::ComputePass<'_>) {
        self.labels.clear();
        pass.write_timestamp(&self.set, 0);
    }

    /// Ends the op `label` (the time since the previous mark is its).
    fn mark(&mut self, pass: &mut wgpu::ComputePass<'_>, label: &'static str) {
        let index = self.labels.len() as u32 + 1;
        if index >= self.capacity {
            self.dropped += 1;
            return;
        }
        pass.write_timestamp(&self.set, index);
        self.labels.push(label);
    }

    /// Copies the step's timestamps towards the CPU; call after the pass, before `submit`.
    pub fn resolve(&self, encoder: &mut wgpu::CommandEncoder) {
        let n = self.labels.len() as u32 + 1;
        encoder.resolve_query_set(&self.set, 0..n, &self.resolve, 0);
        encoder.copy_buffer_to_buffer(&self.resolve, 0, &self.readback, 0, n as u64 * 8);
    }

    /// Waits for the submitted step and adds its op times to the collection.
    pub async fn collect(&mut self, ctx: &GpuContext) -> Result<()> {
        let n = self.labels.len() + 1;
        let bytes = n as u64 * 8;
        super::map_read(ctx, &self.readback, 0, bytes).await?;
        let ticks: Vec<u64> = {
            let view = self
                .readback
                .slice(..bytes)
                .get_mapped_range()
                .map_err(|e| Error::Readback(e.to_string()))?;
            bytemuck::cast_slice(&view).to_vec()
        };
        self.readback.unmap();
        let p = &mut self.collected;
        p.steps += 1;
        p.dropped = self.dropped;
        let us = |a: u64, b: u64| b.saturating_sub(a) as f64 * self.period_ns / 1000.0;
        p.total_us += us(ticks[0], ticks[n - 1]);
        for (i, &label) in self.labels.iter().enumerate() {
            let t = us(ticks[i], ticks[i + 1]);
            match p.ops.iter_mut().find(|o| o.op == label) {
                Some(o) => {
                    o.calls += 1;
                    o.total_us += t;
                }
                None => p.ops.push(OpTime {
                    op: label,
                    calls: 1,
                    total_us: t,
                }),
            }
        }
        Ok(())
    }

    /// What was collected so far; starts a new collection.
    pub fn take(&mut self) -> Profile {
        self.dropped = 0;
        std::mem::take(&mut self.collected)
    }
}

/// Ops left out of every step, or recorded twice (ablations for benchmarks: see
/// `Model::ablate`), and the names of the ops recorded while any are named, so a name that
/// matches no op can be refused.
#[derive(Debug, Default)]
pub struct Ablation {
    pub skip: Vec<String>,
    pub double: Vec<String>,
    pub seen: std::collections::BTreeSet<&'static str>,
}

impl Ablation {
    /// How many times the op labelled `label` is recorded (0, 1 or 2), by its name: the
    /// label's first word, without what a fused op folds in. Notes the name as seen.
    fn times(&mut self, label: &'static str) -> usize {
        if self.skip.is_empty() && self.double.is_empty() {
            return 1;
        }
        let name = label.split(' ').next().unwrap_or(label);
        self.seen.insert(name);
        if self.skip.iter().any(|s| s == name) {
            0
        } else if self.double.iter().any(|s| s == name) {
            2
        } else {
            1
        }
    }

    /// The names that matched no op recorded so far.
    pub fn unknown(&self) -> Vec<&str> {
        self.skip
            .iter()
            .chain(&self.double)
            .filter(|n| !self.seen.contains(n.as_str()))
            .map(String::as_str)
            .collect()
    }
}

/// Records ops into a step's compute pass, with a timestamp after each op when profiling.
pub struct Recorder<'r, 'p> {
    pub pass: &'r mut wgpu::ComputePass<'p>,
    profiler: Option<&'r mut Profiler>,
    ablation: &'r mut Ablation,
}

impl<'r, 'p> Recorder<'r, 'p> {
    pub fn new(
        pass: &'r mut wgpu::ComputePass<'p>,
        mut profiler: Option<&'r mut Profiler>,
        ablation: &'r mut Ablation,
    ) -> Self {
        if let Some(p) = profiler.as_deref_mut() {
            p.begin(pass);
        }
        Self {
            pass,
            profiler,
            ablation,
        }
    }

    /// Encodes `op` for `step`, labelled `label` in profiles (nothing if the ablation skips
    /// it; twice, back to back, if it doubles it).
    pub fn op(&mut self, label: &'static str, op: &dyn Op, step: &StepParams) {
        let times = self.ablation.times(label);
        if times == 0 {
            return;
        }
        for _ in 0..times {
            op.encode(self.pass, step);
        }
        if let Some(p) = self.profiler.as_deref_mut() {
            p.mark(self.pass, label);
        }
    }
}
