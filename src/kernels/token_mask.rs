//! Constrained decoding's token mask (`shaders/token_mask.wgsl`): every logit of a token the
//! allowed-token bitmask leaves out becomes −inf, in place, before the logits op.

use std::sync::Arc;

use crate::gpu::{BindGroup, GpuContext, Kernel, KernelSpec, Op, StepParams};
use crate::Result;

const SOURCE: &str = include_str!("../../shaders/token_mask.wgsl");
const WG: u32 = 256;

/// Kernel specs this module can build (for shader validation).
pub fn specs() -> Vec<KernelSpec> {
    vec![spec(262_144)]
}

fn spec(vocab: u32) -> KernelSpec {
    KernelSpec::new("token_mask", SOURCE).define("VOCAB", vocab)
}

/// Buffers a `TokenMask` reads and writes.
pub struct TokenMaskIo<'a> {
    /// `[V]` f32: one row of logits, masked in place.
    pub logits: wgpu::BindingResource<'a>,
    /// `[⌈V/32⌉]` u32: bit `i % 32` of word `i / 32` allows token `i`.
    pub allowed: wgpu::BindingResource<'a>,
}

/// `logits[i] = −inf` where token `i` is not allowed.
pub struct TokenMask {
    kernel: Arc<Kernel>,
    bind_group: BindGroup,
    vocab: u32,
}

impl TokenMask {
    pub fn new(ctx: &GpuContext, io: TokenMaskIo<'_>, vocab: u32) -> Result<Self> {
        let kernel = ctx.kernel(&spec(vocab))?;
        let bind_group = ctx.bind(&kernel, &[io.logits, io.allowed]);
        Ok(TokenMask {
            kernel,
            bind_group,
            vocab,
        })
    }

    /// Words of the bitmask for a row of `vocab` logits.
    pub fn words(vocab: u32) -> u32 {
        vocab.div_ceil(32)
    }
}

impl Op for TokenMask {
    fn encode(&self, pass: &mut wgpu::ComputePass<'_>, _step: &StepParams) {
        pass.set_pipeline(self.kernel.pipeline());
        pass.set_bind_group(0, self.bind_group.get(), &[]);
        crate::gpu::dispatch(pass, [self.vocab.div_ceil(WG), 1, 1]);
    }
}
