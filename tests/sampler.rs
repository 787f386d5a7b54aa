//! Sampler: greedy, each filter on a hand-built distribution, determinism, empirical
//! frequencies, the repetition-penalty reference, parameter validation, and speculative
//! sampling's accept/replace rule (the tokens it lets through follow the target's
//! distribution, whatever the drafter's).

use gemma_wgpu::sampler::{
    apply_repeat_penalty, apply_repeat_penalty_candidates, Sampler, SamplingParams, Verdict,
};

/// Candidates whose softmax (at temperature 1) is exactly `probs`.
fn cands(probs: &[f64]) -> Vec<(u32, f32)> {
    probs
        .iter()
        .enumerate()
        .map(|(i, p)| (i as u32, p.ln() as f32))
        .collect()
}

fn params(f: impl FnOnce(&mut SamplingParams)) -> SamplingParams {
    let mut p = SamplingParams {
        temperature: 1.0,
        top_k: 0,
        top_p: 1.0,
        min_p: 0.0,
        repeat_penalty: 1.0,
        repeat_last_n: 64,
        seed: 42,
    };
    f(&mut p);
    p
}

/// Draws `n` samples and returns the count per id.
fn histogram(p: SamplingParams, c: &[(u32, f32)], n: usize) -> Vec<usize> {
    let mut s = Sampler::new(p).unwrap();
    let mut h = vec![0; c.len()];
    for _ in 0..n {
        h[s.sample(c).unwrap() as usize] += 1;
    }
    h
}

#[test]
fn defaults_are_gemmas_and_valid() {
    let d = SamplingParams::default();
    assert_eq!((d.temperature, d.top_k, d.top_p), (1.0, 64, 0.95));
    assert_eq!((d.min_p, d.repeat_penalty), (0.0, 1.0));
    d.validate().unwrap();
    SamplingParams::greedy().validate().unwrap();
}

#[test]
fn greedy_picks_argmax_with_lowest_id_on_ties() {
    let mut s = Sampler::new(SamplingParams::greedy()).unwrap();
    assert_eq!(s.sample(&[(7, 1.0), (3, 5.0), (9, 2.0)]).unwrap(), 3);
    // Ties: lowest id wins whatever the order the GPU sent them in.
    assert_eq!(
        s.sample(&[(9, 5.0), (4, 5.0), (6, 5.0), (1, 0.0)]).unwrap(),
        4
    );
    assert_eq!(s.sample(&[(2, f32::NAN), (5, -1.0)]).unwrap(), 5);
    assert_eq!(s.sample_logits(&[0.1, 3.0, 3.0, -2.0]).unwrap(), 1);
}

#[test]
fn top_k_limits_to_k_best() {
    let c = cands(&[0.1, 0.4, 0.2, 0.3]);
    let h = histogram(params(|p| p.top_k = 2), &c, 4000);
    assert_eq!((h[0], h[2]), (0, 0), "{h:?}");
    assert!(h[1] > 0 && h[3] > 0);
    let h = histogram(params(|p| p.top_k = 1), &c, 200);
    assert_eq!(h[1], 200);
}

#[test]
fn top_p_keeps_smallest_prefix_reaching_p() {
    // Sorted: 0.5 (id 0), 0.3 (id 1), 0.15 (id 2), 0.05 (id 3).
    let c = cands(&[0.5, 0.3, 0.15, 0.05]);
    let h = histogram(params(|p| p.top_p = 0.79), &c, 4000);
    assert_eq!((h[2], h[3]), (0, 0), "{h:?}"); // 0.5 + 0.3 reaches 0.79
    let h = histogram(params(|p| p.top_p = 0.81), &c, 4000);
    assert!(h[2] > 0 && h[3] == 0, "{h:?}");
    let h = histogram(params(|p| p.top_p = 0.01), &c, 500);
    assert_eq!(h[0], 500); // at least one token is always kept
}

#[test]
fn min_p_drops_tokens_below_fraction_of_best() {
    let c = cands(&[0.5, 0.3, 0.15, 0.05]);
    // floor = 0.4 * 0.5 = 0.2: keeps 0.5 and 0.3.
    let h = histogram(params(|p| p.min_p = 0.4), &c, 4000);
    assert_eq!((h[2], h[3]), (0, 0), "{h:?}");
    assert!(h[1] > 0);
    let h = histogram(params(|p| p.min_p = 1.0), &c, 300);
    assert_eq!(h[0], 300);
}

#[test]
fn temperature_sharpens_and_flattens() {
    let c = cands(&[0.6, 0.4]);
    let cold = histogram(params(|p| p.temperature = 0.25), &c, 4000);
    let hot = histogram(params(|p| p.temperature = 4.0), &c, 4000);
    // At T = 0.25: p0 = 0.6^4 / (0.6^4 + 0.4^4) ≈ 0.835; at T = 4: ≈ 0.525.
    assert!((cold[0] as f64 / 4000.0 - 0.835).abs() < 0.03, "{cold:?}");
    assert!((hot[0] as f64 / 4000.0 - 0.525).abs() < 0.03, "{hot:?}");
}

#[test]
fn same_seed_same_sequence_other_seed_differs() {
    let c = cands(&[0.2, 0.2, 0.2, 0.2, 0.2]);
    let run = |seed| {
        let mut s = Sampler::new(params(|p| p.seed = seed)).unwrap();
        (0..64).map(|_| s.sample(&c).unwrap()).collect::<Vec<_>>()
    };
    assert_eq!(run(7), run(7));
    assert_ne!(run(7), run(8));
}

#[test]
fn empirical_frequencies_match_probabilities() {
    // Unsorted input on purpose: the sampler must not depend on the order it is given.
    let probs = [0.05, 0.35, 0.1, 0.25, 0.15, 0.1];
    let c = cands(&probs);
    let n = 200_000;
    let h = histogram(params(|p| p.seed = 12345), &c, n);
    let chi2: f64 = h
        .iter()
        .zip(probs)
        .map(|(&o, p)| {
            let e = p * n as f64;
            (o as f64 - e).powi(2) / e
        })
        .sum();
    // 5 degrees of freedom: P(chi2 > 20.5) ≈ 0.001. Fixed seed, so this is deterministic.
    assert!(chi2 < 20.5, "chi2 = {chi2}, counts {h:?}");
}

#[test]
fn filters_renormalize_the_kept_mass() {
    // After top-k = 2 on [0.4, 0.4, 0.2] the two survivors are 50/50.
    let c = cands(&[0.4, 0.4, 0.2]);
    let h = histogram(params(|p| p.top_k = 2), &c, 20_000);
    assert_eq!(h[2], 0);
    assert!((h[0] as f64 / 20_000.0 - 0.5).abs() < 0.02, "{h:?}");
}

#[test]
fn repeat_penalty_follows_llama_cpp() {
    let mut l = vec![2.0, -2.0, 1.0, 0.0];
    // Id 0 twice: penalized once. Id 7 is outside the row: ignored.
    apply_repeat_penalty(&mut l, &[0, 1, 0, 7], 2.0);
    assert_eq!(l, vec![1.0, -4.0, 1.0, 0.0]);
    let mut c = vec![(0u32, 2.0f32), (5, 1.5), (1, -2.0)];
    apply_repeat_penalty_candidates(&mut c, &[0], 4.0);
    assert_eq!(c, vec![(5, 1.5), (0, 0.5), (1, -2.0)]);
    let mut same = vec![1.0, -1.0];
    apply_repeat_penalty(&mut same, &[0, 1], 1.0);
    assert_eq!(same, vec![1.0, -1.0]);
}

#[test]
fn recent_window_keeps_last_n() {
    let mut s = Sampler::new(params(|p| p.repeat_last_n = 3)).unwrap();
    for id in [1, 2, 3, 4, 5] {
        s.accept(id);
    }
    assert_eq!(s.recent(), vec![3, 4, 5]);
}

#[test]
fn invalid_params_and_inputs_are_errors() {
    for bad in [
        params(|p| p.temperature = -0.1),
        params(|p| p.temperature = f32::NAN),
        params(|p| p.temperature = f32::INFINITY),
        params(|p| p.top_p = 0.0),
        params(|p| p.top_p = 1.5),
        params(|p| p.top_p = f32::NAN),
        params(|p| p.min_p = -0.1),
        params(|p| p.min_p = 1.1),
        params(|p| p.repeat_penalty = 0.0),
        params(|p| p.repeat_penalty = -1.0),
        params(|p| p.repeat_penalty = f32::NAN),
    ] {
        assert!(Sampler::new(bad).is_err(), "{bad:?} accepted");
        assert!(bad.validate().is_err());
    }
    let mut s = Sampler::new(params(|_| {})).unwrap();
    assert!(s.sample(&[]).is_err());
    assert!(s.sample(&[(0, f32::NAN), (1, f32::NAN)]).is_err());
    let mut g = Sampler::new(SamplingParams::greedy()).unwrap();
    assert!(g.sample(&[]).is_err());
}

/// `distribution` is what `sample` draws from: the same cuts, renormalised.
#[test]
fn distribution_matches_what_sample_draws() {
    let c = cands(&[0.4, 0.3, 0.15, 0.1, 0.05]);
    let p = params(|p| p.top_p = 0.8);
    let d = Sampler::new(p).unwrap().distribution(&c).unwrap();
    let ids: Vec<u32> = d.iter().map(|x| x.0).collect();
    assert_eq!(ids, [0, 1, 2]);
    for (x, want) in d.iter().zip([0.4 / 0.85, 0.3 / 0.85, 0.15 / 0.85]) {
        assert!((x.1 - want).abs() < 1e-6, "{d:?}");
    }
    let g = Sampler::new(SamplingParams::greedy())
        .unwrap()
        .distribution(&c)
        .unwrap();
    assert_eq!(g, [(0, 1.0)]);
    assert!(Sampler::new(p).unwrap().distribution(&[]).is_err());
}

/// χ² critical values at significance 1e-4 for 1..=10 degrees of freedom.
const CHI2_1E4: [f64; 10] = [
    15.14, 18.42, 21.11, 23.51, 25.74, 27.86, 29.88, 31.83, 33.72, 35.56,
];

/// Draws from the drafter's distribution, lets the target verify, and checks that what comes
/// out — the draft where kept, the replacement where not — follows the target's distribution
/// (χ² test at significance 1e-4 over 200,000 rounds), that nothing outside the target's
/// support ever comes out, and that the share of kept drafts is Σ min(p, q), as the theory
/// says. The drafter is deliberately unlike the target: other logits, another temperature.
#[test]
fn speculative_sampling_keeps_the_targets_distribution() {
    let target = cands(&[0.30, 0.22, 0.15, 0.10, 0.08, 0.06, 0.04, 0.03, 0.015, 0.005]);
    let drafter = cands(&[0.05, 0.35, 0.05, 0.25, 0.02, 0.08, 0.10, 0.05, 0.03, 0.02]);
    let settings = [
        params(|_| {}),
        params(|p| {
            p.temperature = 0.7;
            p.top_p = 0.9;
        }),
        params(|p| {
            p.top_k = 6;
            p.min_p = 0.1;
        }),
    ];
    const N: usize = 200_000;
    for (case, target_params) in settings.into_iter().enumerate() {
        let mut t = Sampler::new(SamplingParams {
            seed: 7 + case as u64,
            ..target_params
        })
        .unwrap();
        let mut d = Sampler::new(SamplingParams {
            temperature: target_params.temperature * 1.3,
            seed: 1000 + case as u64,
            ..target_params
        })
        .unwrap();
        let p = t.distribution(&target).unwrap();
        let q = d.distribution(&drafter).unwrap();
        let mut counts = vec![0usize; target.len()];
        let mut kept = 0usize;
        for _ in 0..N {
            let x = d.draw(&q).unwrap();
            let out = match t.verify_draft(&target, &q, x).unwrap() {
                Verdict::Accept => {
                    kept += 1;
                    x
                }
                Verdict::Replace(y) => y,
            };
            counts[out as usize] += 1;
        }
        let prob = |d: &[(u32, f64)], id: u32| d.iter().find(|x| x.0 == id).map_or(0.0, |x| x.1);
        let mut chi2 = 0.0;
        for (id, &n) in counts.iter().enumerate() {
            let pi = prob(&p, id as u32);
            if pi == 0.0 {
                assert_eq!(
                    n, 0,
                    "case {case}: token {id} is outside the target's support"
                );
                continue;
            }
            let e = pi * N as f64;
            chi2 += (n as f64 - e).powi(2) / e;
        }
        let df = p.len() - 1;
        assert!(
            chi2 < CHI2_1E4[df - 1],
            "case {case}: χ² = {chi2:.1} over {df} degrees of freedom; counts {counts:?}, p {p:?}"
        );
        let overlap: f64 = (0..target.len() as u32)
            .map(|id| prob(&p, id).min(prob(&q, id)))
            .sum();
        let rate = kept as f64 / N as f64;
        let sigma = (overlap * (1.0 - overlap) / N as f64).sqrt();
        assert!(
            (rate - overlap).abs() < 5.0 * sigma,
            "case {case}: kept {rate:.4} of drafts, theory Σ min(p, q) = {overlap:.4}"
        );
    }
}

/// Greedy: a draft stands exactly when it is the target's argmax (lowest id on ties), else the
/// argmax replaces it.
#[test]
fn greedy_verification_keeps_only_the_argmax() {
    let mut s = Sampler::new(SamplingParams::greedy()).unwrap();
    let target = [(4, 1.0), (9, 3.0), (2, 3.0), (7, -1.0)];
    let q = [(2, 1.0)];
    assert_eq!(s.verify_draft(&target, &q, 2).unwrap(), Verdict::Accept);
    assert_eq!(s.verify_draft(&target, &q, 9).unwrap(), Verdict::Replace(2));
    assert_eq!(s.verify_draft(&target, &q, 5).unwrap(), Verdict::Replace(2));
    assert!(s.verify_draft(&[], &q, 2).is_err());
}
