//! Kernels compiled as a batch (`GpuContext::defer_compilation` / `compile_deferred`, what a
//! model load does): ops built inside a batch compile nothing until the batch closes, then
//! compute exactly what ops built outside one do; a shader the driver refuses fails the batch
//! with its kernel's name; a discarded batch leaves its kernels to compile when next asked for.
//! Each test makes its own context (the batch and the counters are per context).

mod common;

use common::{assert_close, block, make_with, Rng};
use gemma_wgpu::gpu::{GpuContext, KernelSpec, Op, StepParams};
use gemma_wgpu::kernels::gelu::{GeluMul, GeluMulIo};
use gemma_wgpu::{reference, Error};

/// A context of its own (not the shared `variants()`): the adapter's fast variant.
fn context() -> GpuContext {
    make_with("batch", false, None).ctx
}

/// `gelu(gate) ⊙ up` through a GeluMul op built on `ctx` (inside a batch if one is open; the
/// batch is then compiled before the op runs).
fn gelu_mul(ctx: &GpuContext, gate: &[f32], up: &[f32]) -> Vec<f32> {
    let n = gate.len();
    let gb = ctx.storage_init("gate", gate).unwrap();
    let ub = ctx.storage_init("up", up).unwrap();
    let ab = ctx.storage("a", n as u64 * 4).unwrap();
    let step = StepParams::new(1, 0);
    let sb = ctx.params_init("step", &step);
    let io = GeluMulIo {
        gate: gb.as_entire_binding(),
        up: ub.as_entire_binding(),
        out: ab.as_entire_binding(),
        step: sb.as_entire_binding(),
    };
    let op = GeluMul::new(ctx, io, n as u32, None).unwrap();
    block(ctx.compile_deferred()).unwrap();
    block(ctx.run(|pass| op.encode(pass, &step))).unwrap();
    block(ctx.read(&ab, 0, n)).unwrap()
}

#[test]
fn batched_ops_compile_when_the_batch_closes_and_compute_the_same() {
    let mut rng = Rng::new(7);
    let (gate, up) = (rng.vec(3000, 4.0), rng.vec(3000, 2.0));
    let want = reference::gelu::gelu_mul(&gate, &up);

    let ctx = context();
    ctx.defer_compilation();
    let before = ctx.compile_stats().0;
    let pending = ctx.kernel(&KernelSpec::new("batch_probe", PROBE)).unwrap();
    assert_eq!(
        ctx.compile_stats().0,
        before,
        "a kernel asked for inside a batch compiled at once"
    );
    let got = gelu_mul(&ctx, &gate, &up);
    assert_eq!(
        ctx.compile_stats().0,
        before + 2,
        "the batch's two kernels (the probe and gelu_mul) were not counted once each"
    );
    // The probe was compiled with the batch although no op bound it.
    let _ = pending.pipeline();
    assert_close("gelu_mul built in a batch", &got, &want, 1e-6, 2e-5);

    // Outside a batch the same op compiles nothing new (the cache) and agrees bit for bit.
    let unbatched = gelu_mul(&ctx, &gate, &up);
    assert_eq!(
        ctx.compile_stats().0,
        before + 2,
        "the cached kernel compiled again"
    );
    assert_eq!(got, unbatched);
}

#[test]
fn a_refused_shader_fails_the_batch_with_its_name() {
    let ctx = context();
    ctx.defer_compilation();
    // Inside the batch, asking for it succeeds: nothing is compiled yet.
    ctx.kernel(&KernelSpec::new("batch_broken", BROKEN))
        .expect("a batch defers compilation");
    match block(ctx.compile_deferred()) {
        Err(Error::Shader { name, message }) => {
            assert_eq!(name, "batch_broken", "{message}");
        }
        other => panic!("expected a shader error naming the kernel, got {other:?}"),
    }
    // The batch is gone: the next request compiles at once, and fails at once.
    assert!(matches!(
        ctx.kernel(&KernelSpec::new("batch_broken", BROKEN)),
        Err(Error::Shader { .. })
    ));
}

#[test]
fn a_discarded_batch_compiles_on_demand() {
    let ctx = context();
    ctx.defer_compilation();
    let kernel = ctx.kernel(&KernelSpec::new("batch_probe", PROBE)).unwrap();
    let before = ctx.compile_stats().0;
    ctx.discard_deferred();
    // Closing a batch that is no longer open compiles nothing.
    block(ctx.compile_deferred()).unwrap();
    assert_eq!(ctx.compile_stats().0, before);
    let again = ctx.kernel(&KernelSpec::new("batch_probe", PROBE)).unwrap();
    assert!(
        std::sync::Arc::ptr_eq(&kernel, &again),
        "the cache lost the kernel"
    );
    assert_eq!(ctx.compile_stats().0, before + 1);
    let _ = again.pipeline();
}

/// A kernel with one binding, to bind and compile.
const PROBE: &str = "
@group(0) @binding(0) var<storage, read_write> out: array<u32>;
@compute @workgroup_size(1)
fn main() { out[0] = 7u; }
";

/// WGSL that does not type-check.
const BROKEN: &str = "
@compute @workgroup_size(1)
fn main() { let x: u32 = 1.5; }
";
