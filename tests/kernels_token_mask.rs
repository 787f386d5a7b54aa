//! The constrained-decoding token mask (`kernels::token_mask`) against its CPU reference:
//! every logit whose bit is clear becomes −inf, every other one is left bit-identical (exact
//! comparison; no arithmetic is involved). Vocabularies that are and are not multiples of 32
//! and of the workgroup size, and masks with nothing, one token and everything allowed.

mod common;

use common::{block, variants, Rng};
use gemma_wgpu::gpu::{Op, StepParams};
use gemma_wgpu::kernels::token_mask::{TokenMask, TokenMaskIo};

fn reference(row: &[f32], words: &[u32]) -> Vec<f32> {
    row.iter()
        .enumerate()
        .map(|(i, &x)| {
            if words[i / 32] >> (i % 32) & 1 == 1 {
                x
            } else {
                f32::NEG_INFINITY
            }
        })
        .collect()
}

#[test]
fn masked_logits_become_minus_infinity() {
    let mut rng = Rng::new(21);
    for vocab in [1usize, 31, 32, 257, 1000, 262_144] {
        let row = rng.vec(vocab, 10.0);
        let n = vocab.div_ceil(32);
        let random: Vec<u32> = (0..n).map(|_| rng.next_u64() as u32).collect();
        let mut one = vec![0u32; n];
        one[(vocab - 1) / 32] = 1 << ((vocab - 1) % 32);
        for (what, words) in [
            ("random", random),
            ("last token only", one),
            ("all", vec![u32::MAX; n]),
            ("none", vec![0; n]),
        ] {
            for v in variants() {
                let ctx = &v.ctx;
                let logits = ctx.storage_init("logits", &row).unwrap();
                let allowed = ctx.storage_init("allowed", &words).unwrap();
                let op = TokenMask::new(
                    ctx,
                    TokenMaskIo {
                        logits: logits.as_entire_binding(),
                        allowed: allowed.as_entire_binding(),
                    },
                    vocab as u32,
                )
                .unwrap();
                block(ctx.run(|pass| op.encode(pass, &StepParams::new(1, 0)))).unwrap();
                let got: Vec<f32> = block(ctx.read(&logits, 0, vocab)).unwrap();
                let want = reference(&row, &words);
                let got_bits: Vec<u32> = got.iter().map(|x| x.to_bits()).collect();
                let want_bits: Vec<u32> = want.iter().map(|x| x.to_bits()).collect();
                assert_eq!(got_bits, want_bits, "V {vocab}, {what} [{}]", v.name);
            }
        }
    }
}
