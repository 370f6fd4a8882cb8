//! Portable, branch-free f32 math written so the compiler vectorises it: reductions use an
//! array of `LANES` independent accumulators (no reassociation needed), transcendental
//! functions use selects instead of branches. Everything is `#[inline(always)]` so it is
//! compiled inside each instruction set's `#[target_feature]` wrapper.

// Coefficients keep the digits of their f64 fits; rounding them to f32 is intended.
#![allow(clippy::excessive_precision)]

/// Independent accumulators per reduction: one AVX-512 register, two AVX2, four NEON.
pub(crate) const LANES: usize = 16;

#[inline(always)]
fn reduce_add(mut acc: [f32; LANES]) -> f32 {
    let mut w = LANES / 2;
    while w > 0 {
        for i in 0..w {
            acc[i] += acc[i + w];
        }
        w /= 2;
    }
    acc[0]
}

/// Σ x.
#[inline(always)]
pub(crate) fn sum(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let rem = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            acc[i] += c[i];
        }
    }
    for (i, v) in rem.iter().enumerate() {
        acc[i] += v;
    }
    reduce_add(acc)
}

/// Σ (x - c)².
#[inline(always)]
pub(crate) fn sum_sq_dev(x: &[f32], c: f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let rem = chunks.remainder();
    for ch in chunks {
        for i in 0..LANES {
            let d = ch[i] - c;
            acc[i] += d * d;
        }
    }
    for (i, v) in rem.iter().enumerate() {
        let d = v - c;
        acc[i] += d * d;
    }
    reduce_add(acc)
}

/// max x (−∞ for an empty slice).
#[inline(always)]
pub(crate) fn max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = x.chunks_exact(LANES);
    let rem = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            acc[i] = acc[i].max(c[i]);
        }
    }
    for (i, v) in rem.iter().enumerate() {
        acc[i] = acc[i].max(*v);
    }
    let mut w = LANES / 2;
    while w > 0 {
        for i in 0..w {
            acc[i] = acc[i].max(acc[i + w]);
        }
        w /= 2;
    }
    acc[0]
}

/// eˣ, about 1 ulp (Cephes expf polynomial). Inputs below −87.3 give 0, inputs above 88.37
/// saturate at e^88.37 ≈ 2.5e38 (finite), −∞ gives 0.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LO: f32 = -87.336_54;
    // 127.5·ln 2: keeps n ≤ 127 so that 2ⁿ is a normal f32.
    const HI: f32 = 88.376_26;
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so that n·LN2_HI is exact for |n| < 2⁹.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5·2²³ rounds to the nearest integer n (ties to even) and leaves n in the low
    // mantissa bits: no float→int conversion, which would not vectorise (Rust's `as` saturates).
    const MAGIC: f32 = 12_582_912.0;
    let xc = x.clamp(LO, HI);
    let t = xc * LOG2E + MAGIC;
    let n = t - MAGIC;
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_2e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 5.000_000_1e-1;
    let e = p * r * r + r + 1.0;
    // 2ⁿ from the exponent bits; n ∈ [−126, 127] after the clamp.
    let ni = t.to_bits().wrapping_sub(MAGIC.to_bits());
    let scale = f32::from_bits(ni.wrapping_add(127) << 23);
    let y = e * scale;
    if x < LO { 0.0 } else { y }
}

/// erf(a)/a on a ∈ [0, 1] as a polynomial in s = a² (a degree-6 Chebyshev fit made in f64,
/// converted to monomials; Horner in f32 gives erf with ≤ 1.7e-7 relative error).
const ERF_SMALL: [f32; 7] = [
    1.128_379_165_9e0,
    -3.761_262_690_4e-1,
    1.128_359_746_3e-1,
    -2.685_432_879_5e-2,
    5.189_311_941_7e-3,
    -8.018_854_984_8e-4,
    7.882_497_085_6e-5,
];

/// Q(z) = erfc(z)·exp(z²) on z ∈ [1, 6] as a polynomial in v = (1/z − 7/12)·12/5 ∈ [−1, 1]
/// (a degree-10 Chebyshev fit made in f64, converted to monomials; Estrin in f32 gives
/// ≤ 3.7e-7 relative error; erfc(6) ≈ 2e-17, so beyond 6 only the negligible tail is off).
const ERFC_LARGE: [f32; 11] = [
    2.897_221_162_9e-1,
    1.653_627_107_4e-1,
    -3.083_104_879_9e-2,
    2.820_707_540_1e-3,
    1.034_427_260_6e-3,
    -7.359_341_580_6e-4,
    2.655_340_923_3e-4,
    -6.115_053_169_2e-5,
    -3.626_868_016_1e-6,
    1.716_895_061_4e-5,
    -7.330_108_412_0e-6,
];

/// erf(a) for a ∈ [0, 1].
#[inline(always)]
fn erf_small(a: f32) -> f32 {
    let s = a * a;
    let mut p = ERF_SMALL[6];
    for c in ERF_SMALL[..6].iter().rev() {
        p = p * s + c;
    }
    a * p
}

/// erfc(z) for z ≥ 1 given z and z² (callers that can form z² with one rounding pass it),
/// with good *relative* accuracy (no 1 − erf cancellation): ≲ 6e-7 plus z²·u from exp(−z²).
#[inline(always)]
fn erfc_large(z: f32, z2: f32) -> f32 {
    const T_MID: f32 = 7.0 / 12.0; // t ∈ [1/6, 1]
    const T_INV_HALF: f32 = 12.0 / 5.0;
    let t = (1.0 / z).max(1.0 / 6.0);
    let v = (t - T_MID) * T_INV_HALF;
    // Estrin's scheme: depth ~log₂(11) instead of Horner's 10 dependent steps.
    let c = &ERFC_LARGE;
    let v2 = v * v;
    let v4 = v2 * v2;
    let v8 = v4 * v4;
    let q0 = (c[0] + c[1] * v) + (c[2] + c[3] * v) * v2;
    let q1 = (c[4] + c[5] * v) + (c[6] + c[7] * v) * v2;
    let q2 = (c[8] + c[9] * v) + c[10] * v2;
    exp(-z2) * ((q0 + q1 * v4) + q2 * v8)
}

/// erf(x), absolute error ≲ 1.5e-7.
#[inline(always)]
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) fn erf(x: f32) -> f32 {
    let a = x.abs();
    let small = erf_small(a.min(1.0));
    let al = a.max(1.0);
    let large = 1.0 - erfc_large(al, al * al);
    (if a <= 1.0 { small } else { large }).copysign(x)
}

/// GELU with the exact erf: x·Φ(x), Φ(x) = ½(1 + erf(x/√2)). For x < 0 Φ is computed as
/// ½·erfc(|x|/√2), which keeps relative accuracy where 1 + erf would cancel.
#[inline(always)]
pub(crate) fn gelu_erf(x: f32) -> f32 {
    let z = x * std::f32::consts::FRAC_1_SQRT_2;
    let a = z.abs();
    let small = 1.0 - erf_small(a.min(1.0));
    // z² = x²/2 with a single rounding (halving is exact), not (x/√2)² with three.
    let large = erfc_large(a.max(1.0), (0.5 * x * x).max(1.0));
    let half_erfc = 0.5 * if a <= 1.0 { small } else { large };
    let phi = if z >= 0.0 { 1.0 - half_erfc } else { half_erfc };
    x * phi
}

/// GELU, tanh approximation: ½x(1 + tanh(√(2/π)(x + 0.044715x³))), evaluated as the identical
/// x·σ(2u) = x / (1 + e^(−2u)), which has no cancellation and needs a single exp.
#[inline(always)]
pub(crate) fn gelu_tanh(x: f32) -> f32 {
    const C: f32 = 0.797_884_6; // √(2/π)
    let u = C * (x + 0.044_715 * x * x * x);
    x / (1.0 + exp(-2.0 * u))
}

/// SiLU: x·σ(x) = x / (1 + e^(−x)). `exp` saturates near 2¹²⁷ for x ≪ 0, so the quotient
/// stays finite (and within 1e-36 of torch's value there).
#[inline(always)]
pub(crate) fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// erf in f64: Taylor series below 3 (terms ≤ e⁹, so ~1e-12 absolute), continued fraction
    /// for erfc above.
    fn erf_ref(x: f64) -> f64 {
        let a = x.abs();
        let r = if a < 3.0 {
            let (mut term, mut s, x2) = (a, a, a * a);
            for n in 1..200 {
                term *= -x2 / n as f64;
                let t = term / (2 * n + 1) as f64;
                s += t;
                if t.abs() < 1e-18 {
                    break;
                }
            }
            s * std::f64::consts::FRAC_2_SQRT_PI
        } else {
            let mut f = 0.0;
            for n in (1..200).rev() {
                f = (n as f64 / 2.0) / (a + f);
            }
            1.0 - (-a * a).exp() / std::f64::consts::PI.sqrt() / (a + f)
        };
        r.copysign(x)
    }

    #[test]
    fn erf_accuracy() {
        // Tolerance 2e-7 absolute: the fits reach 1.7e-7 relative below 1 and 3.7e-7 relative
        // on erfc (≤ 0.157) above, plus one rounding of 1 − erfc (6e-8).
        let mut worst = 0.0f64;
        for i in -80_000..=80_000 {
            let x = i as f32 * 1e-4;
            worst = worst.max((erf(x) as f64 - erf_ref(x as f64)).abs());
        }
        assert!(worst < 2e-7, "erf max abs error {worst:e}");
    }

    #[test]
    fn exp_accuracy() {
        // Tolerance 3e-7 relative (≈ 2.5 ulp): Cephes' polynomial is ~1 ulp, plus the rounding
        // of the reduced argument.
        let (mut worst, mut at) = (0.0f64, 0.0f32);
        for i in -87_000..=88_300 {
            let x = i as f32 * 1e-3;
            let r = (x as f64).exp();
            let e = (exp(x) as f64 - r).abs() / r;
            if e > worst {
                worst = e;
                at = x;
            }
        }
        assert!(worst < 3e-7, "exp max rel error {worst:e} at {at}");
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-1000.0), 0.0);
        assert!(exp(1000.0).is_finite());
    }
}
