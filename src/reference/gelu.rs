//! GELU (tanh approximation) and the gated-MLP product, in f64.

/// `gelu_tanh(x) = 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))` (HF `gelu_pytorch_tanh`).
pub fn gelu_tanh(x: f64) -> f64 {
    let u = (2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x);
    0.5 * x * (1.0 + u.tanh())
}

/// `a[i] = gelu_tanh(gate[i]) · up[i]`, rounded once to f32.
pub fn gelu_mul(gate: &[f32], up: &[f32]) -> Vec<f32> {
    assert_eq!(gate.len(), up.len());
    gate.iter()
        .zip(up)
        .map(|(&g, &u)| (gelu_tanh(g as f64) * u as f64) as f32)
        .collect()
}
