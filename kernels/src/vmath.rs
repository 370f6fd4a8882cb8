//! Portable, branch-free f32 math written so the compiler vectorises it: reductions use an
//! array of `LANES` independent accumulators (no reassociation needed), transcendental
//! functions use selects instead of branches. Everything is `#[inline(always)]` so it is
//! compiled inside each instruction set's `#[target_feature]` wrapper.

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

/// Round to nearest integer (ties to even) for |x| < 2²²: adding 1.5·2²³ pushes the fraction
/// out of the mantissa. Avoids `round()`, which is a libm call on baseline x86-64.
#[inline(always)]
fn round_nearest(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (x + MAGIC) - MAGIC
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
    let xc = x.max(LO).min(HI);
    let n = round_nearest(xc * LOG2E);
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_2e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 5.000_000_1e-1;
    let e = p * r * r + r + 1.0;
    // 2ⁿ from the exponent bits; n ∈ [−126, 127] after the clamp.
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    let y = e * scale;
    if x < LO { 0.0 } else { y }
}

/// Clenshaw evaluation of Σ c_j T_j(u), u ∈ [−1, 1]; stable in f32, unlike the same polynomial
/// converted to monomials.
#[inline(always)]
fn chebyshev<const N: usize>(c: &[f32; N], u: f32) -> f32 {
    let (mut b1, mut b2) = (0.0f32, 0.0f32);
    let u2 = u + u;
    for j in (1..N).rev() {
        let t = u2 * b1 - b2 + c[j];
        b2 = b1;
        b1 = t;
    }
    u * b1 - b2 + c[0]
}

/// erf(a)/a on a ∈ [0, 1] as a Chebyshev series in u = 2a² − 1 (fitted in f64 at Chebyshev
/// nodes; max relative error of erf 1.4e-7 when evaluated in f32).
const ERF_SMALL: [f32; 7] = [
    9.754_769_394e-1,
    -1.422_612_051e-1,
    1.003_558_219e-2,
    -5.768_764_700e-4,
    2.741_993_125e-5,
    -1.104_317_551e-6,
    3.848_875_530e-8,
];

/// Q(z) = erfc(z)·exp(z²) on z ∈ [1, 6] as a Chebyshev series in t = 1/z mapped to [−1, 1]
/// (max relative error 5.6e-7 in f32; erfc(6) ≈ 2e-17, so beyond 6 only the tiny tail is off).
const ERFC_LARGE: [f32; 11] = [
    2.747_746_859e-1,
    1.669_932_912e-1,
    -1.477_843_491e-2,
    4.607_660_043e-4,
    1.765_796_784e-4,
    -5.026_984_060e-5,
    7.427_013_325e-6,
    -3.518_811_376e-7,
    -1.715_010_863e-7,
    6.706_621_334e-8,
    -1.431_661_799e-8,
];

/// erf(a) for a ∈ [0, 1].
#[inline(always)]
fn erf_small(a: f32) -> f32 {
    a * chebyshev(&ERF_SMALL, 2.0 * a * a - 1.0)
}

/// erfc(z) for z ≥ 1 given z and z² (callers that can form z² with one rounding pass it),
/// with good *relative* accuracy (no 1 − erf cancellation): ≲ 6e-7 plus z²·u from exp(−z²).
#[inline(always)]
fn erfc_large(z: f32, z2: f32) -> f32 {
    const T_MID: f32 = 7.0 / 12.0; // t ∈ [1/6, 1]
    const T_INV_HALF: f32 = 12.0 / 5.0;
    let t = (1.0 / z).max(1.0 / 6.0);
    exp(-z2) * chebyshev(&ERFC_LARGE, (t - T_MID) * T_INV_HALF)
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
        // Tolerance 2e-7 absolute: the fits reach 1.4e-7 relative below 1 and 5.6e-7 relative
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
