// FRAGMENT, not a kernel: kernels include it with the line `// #include "act.wgsl"`. The
// activations of the elementwise kernel and of the GEMV epilogues, so both compute exactly
// the same function. Codes: the discriminants of `blip2_shaders::Activation` (a test checks
// them in every kernel that names them). Needs nothing from the including kernel.

const ACT_GELU: u32 = 0u;
const ACT_GELU_TANH: u32 = 1u;
const ACT_RELU: u32 = 2u;
const ACT_SILU: u32 = 3u;

// erfc-based erf (Numerical Recipes erfcc): fractional error < 1.2e-7 everywhere.
fn erf_approx(v: f32) -> f32 {
    let z = abs(v);
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418
        + t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587
        + t * (-0.82215223 + t * 0.17087277))))))));
    let r = 1.0 - t * exp(poly);
    return select(-r, r, v >= 0.0);
}

fn activate(op: u32, v: f32) -> f32 {
    switch (op) {
        case ACT_GELU: {
            return 0.5 * v * (1.0 + erf_approx(v * 0.70710678118654752));
        }
        case ACT_GELU_TANH: {
            // tanh(u) for |u| > 15 is ±1 in f32; clamping keeps exp-based tanh finite.
            let u = clamp(0.7978845608028654 * (v + 0.044715 * v * v * v), -15.0, 15.0);
            return 0.5 * v * (1.0 + tanh(u));
        }
        case ACT_RELU: {
            return max(v, 0.0);
        }
        default: {
            // ACT_SILU: x / (1 + e^(−x)); the clamp keeps exp finite (σ is 0 in f32 below −88).
            return v / (1.0 + exp(min(-v, 88.0)));
        }
    }
}
