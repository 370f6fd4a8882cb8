//! Every kernel × every instruction set this CPU supports (scalar always) against an f64
//! reference on seeded random inputs with awkward sizes. Each check states its tolerance.

mod common;

use blip2_kernels::*;
use common::matmul_q_int_ref;
use half::{bf16, f16};

/// xorshift64*: tiny deterministic RNG, no dependencies.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [lo, hi).
    fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        let u = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        lo + (hi - lo) * u
    }
    fn vec(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform(lo, hi)).collect()
    }
}

/// Unit roundoff of f32.
const U: f64 = f32::EPSILON as f64 / 2.0;

/// γ_n = n·u/(1 − n·u): the classic bound on the relative error of an n-term f32 dot product
/// in any summation order, relative to Σ|x_i·y_i|.
fn gamma(n: usize) -> f64 {
    let nu = n as f64 * U;
    nu / (1.0 - nu)
}

fn isas() -> Vec<Isa> {
    let v = supported_isas();
    assert!(v.contains(&Isa::Scalar));
    v
}

/// Reference C = A·op(B) + bias in f64, plus Σ|a||b| + |bias| per element for the error bound.
#[allow(clippy::too_many_arguments)]
fn matmul_ref(
    a: &[f32],
    b: &[f32],
    bias: Option<&[f32]>,
    m: usize,
    k: usize,
    n: usize,
    bt: bool,
) -> (Vec<f64>, Vec<f64>) {
    let mut c = vec![0.0; m * n];
    let mut abs = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            let (mut s, mut sa) = (0.0f64, 0.0f64);
            for p in 0..k {
                let bv = if bt { b[j * k + p] } else { b[p * n + j] } as f64;
                let t = a[i * k + p] as f64 * bv;
                s += t;
                sa += t.abs();
            }
            if let Some(bias) = bias {
                s += bias[j] as f64;
                sa += (bias[j] as f64).abs();
            }
            c[i * n + j] = s;
            abs[i * n + j] = sa;
        }
    }
    (c, abs)
}

/// Per element |c − ref| ≤ γ_{k+2}·(Σ|a·b| + |bias|) (k products, the bias, and one final
/// addition into C) — a rigorous bound for any order of f32 accumulation — and, as a
/// statistical check a dropped or duplicated term would fail, NMSE = Σ(c−ref)²/Σref² ≤ 1e-9
/// (rounding errors grow like √k·u, so NMSE ≈ k·u² ≲ 1e-11 here).
fn check_matmul(what: &str, c: &[f32], r: &[f64], abs: &[f64], k: usize) {
    let g = gamma(k + 2);
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (i, ((&x, &y), &sa)) in c.iter().zip(r).zip(abs).enumerate() {
        let e = (x as f64 - y).abs();
        assert!(
            e <= g * sa + 1e-30,
            "{what}: element {i}: got {x}, want {y} (err {e:e} > bound {:e})",
            g * sa
        );
        num += e * e;
        den += y * y;
    }
    if den > 0.0 {
        assert!(num / den <= 1e-9, "{what}: NMSE {:e}", num / den);
    }
}

#[test]
fn matmul_all_isas_shapes_dtypes() {
    // Awkward sizes: 1, 7, 33, 88; K not a multiple of any tile/vector width (1, 3, 17, 257,
    // 300 > kc so K is split into blocks, 1408); M = 1 (GEMV) and M ≤ 4 (small-M path); N past
    // nc (2100 > 2048) so the column blocking runs too.
    let shapes = [
        (1, 1, 1),
        (1, 7, 33),
        (1, 1408, 257),
        (2, 17, 33),
        (4, 257, 7),
        (7, 3, 33),
        (33, 1, 17),
        (257, 88, 257),
        (5, 1408, 40),
        (64, 300, 100),
        (257, 17, 1),
        (20, 300, 2100),
        (8, 33, 5),
        (3, 16, 2),
    ];
    let mut rng = Rng::new(1);
    for (si, &(m, k, n)) in shapes.iter().enumerate() {
        let a = rng.vec(m * k, -1.0, 1.0);
        let b32 = rng.vec(k * n, -1.0, 1.0);
        let b16: Vec<f16> = b32.iter().map(|&x| f16::from_f32(x)).collect();
        let b16w: Vec<f32> = b16.iter().map(|x| x.to_f32()).collect();
        let bias = rng.vec(n, -1.0, 1.0);
        for bt in [true, false] {
            for half_b in [false, true] {
                let with_bias = (si + bt as usize + half_b as usize).is_multiple_of(2);
                let bias_opt = with_bias.then_some(&bias[..]);
                // The reference uses the exact widened f16 values, so the same bound applies.
                let bref = if half_b { &b16w } else { &b32 };
                let (r, abs) = matmul_ref(&a, bref, bias_opt, m, k, n, bt);
                for isa in isas() {
                    for threads in [1, 2] {
                        let mut c = vec![f32::NAN; m * n];
                        let bs = if half_b {
                            BSlice::F16(&b16)
                        } else {
                            BSlice::F32(&b32)
                        };
                        matmul_with(isa, threads, &a, bs, bias_opt, &mut c, m, k, n, bt);
                        let what = format!(
                            "{isa} t{threads} {m}x{k}x{n} bt={bt} f16={half_b} bias={with_bias}"
                        );
                        check_matmul(&what, &c, &r, &abs, k);
                    }
                }
            }
        }
    }
}

#[test]
fn matmul_k_zero_gives_bias() {
    for isa in isas() {
        let bias = [1.0f32, -2.0, 3.0];
        let mut c = vec![f32::NAN; 6];
        matmul_with(
            isa,
            1,
            &[],
            BSlice::F32(&[]),
            Some(&bias),
            &mut c,
            2,
            0,
            3,
            true,
        );
        assert_eq!(c, [1.0, -2.0, 3.0, 1.0, -2.0, 3.0], "{isa}");
    }
}

#[test]
fn batched_matmul_all_isas() {
    let mut rng = Rng::new(2);
    for &(batch, m, k, n) in &[
        (3, 7, 33, 17),
        (2, 1, 88, 33),
        (5, 33, 257, 40),
        (1, 100, 17, 300),
    ] {
        let a = rng.vec(batch * m * k, -1.0, 1.0);
        let b = rng.vec(batch * k * n, -1.0, 1.0);
        for bt in [true, false] {
            let mut r = Vec::new();
            let mut abs = Vec::new();
            for i in 0..batch {
                let (ri, ai) = matmul_ref(
                    &a[i * m * k..][..m * k],
                    &b[i * k * n..][..k * n],
                    None,
                    m,
                    k,
                    n,
                    bt,
                );
                r.extend(ri);
                abs.extend(ai);
            }
            for isa in isas() {
                for threads in [1, 0] {
                    let mut c = vec![f32::NAN; batch * m * n];
                    batched_matmul_with(
                        isa,
                        threads,
                        &a,
                        BSlice::F32(&b),
                        &mut c,
                        batch,
                        m,
                        k,
                        n,
                        bt,
                    );
                    check_matmul(
                        &format!("{isa} batched {batch}x{m}x{k}x{n} bt={bt}"),
                        &c,
                        &r,
                        &abs,
                        k,
                    );
                }
            }
        }
    }
}

fn ln_ref(x: &[f32], w: &[f32], b: &[f32], cols: usize, eps: f32, rms: bool) -> Vec<f64> {
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks(cols) {
        let n = cols as f64;
        let mean = if rms {
            0.0
        } else {
            row.iter().map(|&v| v as f64).sum::<f64>() / n
        };
        let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
        let r = 1.0 / (var + eps as f64).sqrt();
        for (j, &v) in row.iter().enumerate() {
            let bb = if b.is_empty() { 0.0 } else { b[j] as f64 };
            out.push((v as f64 - mean) * r * w[j] as f64 + bb);
        }
    }
    out
}

#[test]
fn layer_norm_and_rms_norm_all_isas() {
    // Inputs with mean 3 and spread ±2 (an offset exercises the two-pass variance).
    // Tolerance: |out − ref| ≤ 1e-5·(1 + |ref|). f32 statistics over n ≤ 1408 terms summed in
    // 16 lanes carry ≲ (n/16 + 4)·u ≈ 5e-6 relative error; the normalised values are O(1).
    let mut rng = Rng::new(3);
    for &cols in &[1usize, 7, 33, 88, 1408] {
        let rows = 257;
        let x = rng.vec(rows * cols, 1.0, 5.0);
        let w = rng.vec(cols, -2.0, 2.0);
        let b = rng.vec(cols, -1.0, 1.0);
        for isa in isas() {
            for (bias, rms) in [(&b[..], false), (&[][..], false), (&[][..], true)] {
                let eps = if rms { 1e-6 } else { 1e-5 };
                let mut out = vec![f32::NAN; rows * cols];
                if rms {
                    rms_norm_with(isa, &x, &w, &mut out, cols, eps);
                } else {
                    layer_norm_with(isa, &x, &w, bias, &mut out, cols, eps);
                }
                let r = ln_ref(&x, &w, bias, cols, eps, rms);
                for (i, (&o, &e)) in out.iter().zip(&r).enumerate() {
                    let err = (o as f64 - e).abs();
                    assert!(
                        err <= 1e-5 * (1.0 + e.abs()),
                        "{isa} cols={cols} rms={rms} bias={} [{i}]: {o} vs {e}",
                        !bias.is_empty()
                    );
                }
            }
        }
    }
}

fn softmax_ref(x: &[f32]) -> Vec<f64> {
    let m = x.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
    if m == f64::NEG_INFINITY {
        return vec![1.0 / x.len() as f64; x.len()];
    }
    let e: Vec<f64> = x.iter().map(|&v| (v as f64 - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

/// |p − ref| ≤ 1e-5·ref + 1e-12: exp is ~1 ulp, the argument x − max (spread ≤ 20) adds
/// ≤ 20·u ≈ 1.2e-6 relative, the 16-lane sum of n ≤ 1408 terms ≤ (n/16 + 4)·u ≈ 5.5e-6.
fn check_probs(what: &str, p: &[f32], r: &[f64]) {
    for (i, (&x, &y)) in p.iter().zip(r).enumerate() {
        assert!(!x.is_nan(), "{what}[{i}] is NaN");
        assert!(
            (x as f64 - y).abs() <= 1e-5 * y + 1e-12,
            "{what}[{i}]: {x} vs {y}"
        );
    }
}

#[test]
fn softmax_all_isas_with_masks() {
    let mut rng = Rng::new(4);
    for &n in &[1usize, 7, 33, 257, 1408] {
        let base = rng.vec(n, -10.0, 10.0);
        let mut cases: Vec<(&str, Vec<f32>)> = vec![("plain", base.clone())];
        // HF-style additive masks: finfo.min added to some or all positions.
        let partial: Vec<f32> = base
            .iter()
            .enumerate()
            .map(|(i, &v)| if i % 3 == 1 { v + f32::MIN } else { v })
            .collect();
        cases.push(("partial f32::MIN", partial));
        cases.push(("all f32::MIN", vec![f32::MIN; n]));
        cases.push(("all -inf", vec![f32::NEG_INFINITY; n]));
        let some_inf: Vec<f32> = base
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                if i % 2 == 0 && i > 0 {
                    f32::NEG_INFINITY
                } else {
                    v
                }
            })
            .collect();
        cases.push(("some -inf", some_inf));
        for (name, x) in &cases {
            let r = softmax_ref(x);
            for isa in isas() {
                let mut p = x.clone();
                softmax_inplace_with(isa, &mut p);
                check_probs(&format!("{isa} n={n} {name}"), &p, &r);
            }
        }
    }
}

/// erf in f64: Taylor series below 3 (terms ≤ e⁹, ~1e-12 absolute), erfc continued fraction above.
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
        1.0 - erfc_cf(a)
    };
    r.copysign(x)
}

fn erfc_cf(a: f64) -> f64 {
    let mut f = 0.0;
    for n in (1..300).rev() {
        f = (n as f64 / 2.0) / (a + f);
    }
    (-a * a).exp() / std::f64::consts::PI.sqrt() / (a + f)
}

/// GELU(erf) reference; for x ≪ 0 uses erfc directly so the reference itself does not cancel.
fn gelu_erf_ref(x: f64) -> f64 {
    let z = x / std::f64::consts::SQRT_2;
    if z < -3.0 {
        0.5 * x * erfc_cf(-z)
    } else {
        0.5 * x * (1.0 + erf_ref(z))
    }
}

/// ½x(1 + tanh u) written as x/(1 + e^(−2u)) (identical, but no cancellation in f64 either).
fn gelu_tanh_ref(x: f64) -> f64 {
    let u = (2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x);
    x / (1.0 + (-2.0 * u).exp())
}

fn activation_inputs() -> Vec<f32> {
    let mut rng = Rng::new(5);
    let mut x = rng.vec(4099, -10.0, 10.0);
    x.extend([
        0.0, -0.0, 1e-8, -1e-8, 1.0, -1.0, 5.66, -5.66, 8.4, -8.4, 30.0, -30.0, 100.0, -100.0,
    ]);
    x.extend((-2000..=2000).map(|i| i as f32 * 3e-3));
    x
}

#[test]
fn gelu_erf_all_isas() {
    // |y − ref| ≤ (1e-6 + 2·z²·u)·|ref| + 1e-15, z = x/√2: the erf/erfc fits are ≤ 6e-7
    // relative and exp(−z²) inherits the rounding of z² (≤ z²·u, about 2e-6 at z = 6, where the
    // value is 1e-16). Below x ≈ −8.5 the result (< 1e-16) may be anything that small.
    let x = activation_inputs();
    for isa in isas() {
        let mut y = x.clone();
        gelu_erf_inplace_with(isa, &mut y);
        for (&xi, &yi) in x.iter().zip(&y) {
            let r = gelu_erf_ref(xi as f64);
            let z2 = (xi as f64).powi(2) / 2.0;
            let tol = (1e-6 + 2.0 * z2 * f32::EPSILON as f64 / 2.0) * r.abs() + 1e-15;
            assert!(
                (yi as f64 - r).abs() <= tol,
                "{isa} gelu_erf({xi}) = {yi}, want {r}"
            );
        }
    }
}

#[test]
fn gelu_tanh_all_isas() {
    // |y − ref| ≤ 1e-5·|ref| + 1e-30: x/(1 + e^(−2u)) has no cancellation; exp is ~1 ulp but
    // its argument 2u (up to 88) carries |2u|·u ≤ 5e-6 relative rounding. Below the exp clamp
    // the true value is < 1e-36.
    let x = activation_inputs();
    for isa in isas() {
        let mut y = x.clone();
        gelu_tanh_inplace_with(isa, &mut y);
        for (&xi, &yi) in x.iter().zip(&y) {
            let r = gelu_tanh_ref(xi as f64);
            assert!(
                (yi as f64 - r).abs() <= 1e-5 * r.abs() + 1e-30,
                "{isa} gelu_tanh({xi}) = {yi}, want {r}"
            );
        }
    }
}

#[test]
fn silu_all_isas() {
    // |y − ref| ≤ 4e-6·|ref| + 1e-30: x/(1 + e^(−x)) has no cancellation; exp is ~1 ulp but
    // its argument −x is exact, so only exp's own error (≤ 2 ulp) and the add/divide
    // roundings (2 ulp) remain: 4 ulp ≈ 5e-7, with margin. Below the exp clamp (−88)
    // the true value is < 1e-36.
    let x = activation_inputs();
    for isa in isas() {
        let mut y = x.clone();
        silu_inplace_with(isa, &mut y);
        for (&xi, &yi) in x.iter().zip(&y) {
            let r = xi as f64 / (1.0 + (-(xi as f64)).exp());
            assert!(
                (yi as f64 - r).abs() <= 4e-6 * r.abs() + 1e-30,
                "{isa} silu({xi}) = {yi}, want {r}"
            );
        }
    }
}

#[test]
fn relu_and_elementwise_exact() {
    // Exact: each output is one correctly rounded f32 operation, identical on every ISA.
    let mut rng = Rng::new(6);
    for &n in &[1usize, 7, 33, 257, 1408] {
        let a = rng.vec(n, -3.0, 3.0);
        let b = rng.vec(n, -3.0, 3.0);
        for isa in isas() {
            let mut r = a.clone();
            relu_inplace_with(isa, &mut r);
            assert!(
                r.iter().zip(&a).all(|(y, x)| *y == x.max(0.0)),
                "{isa} relu"
            );
            let mut o = vec![0.0; n];
            add_with(isa, &a, &b, &mut o);
            assert!(
                o.iter()
                    .zip(a.iter().zip(&b))
                    .all(|(o, (x, y))| *o == x + y),
                "{isa} add"
            );
            mul_with(isa, &a, &b, &mut o);
            assert!(
                o.iter()
                    .zip(a.iter().zip(&b))
                    .all(|(o, (x, y))| *o == x * y),
                "{isa} mul"
            );
            let mut d = a.clone();
            add_inplace_with(isa, &mut d, &b);
            assert!(
                d.iter()
                    .zip(a.iter().zip(&b))
                    .all(|(o, (x, y))| *o == x + y),
                "{isa} add_inplace"
            );
            let mut d = a.clone();
            mul_inplace_with(isa, &mut d, &b);
            assert!(
                d.iter()
                    .zip(a.iter().zip(&b))
                    .all(|(o, (x, y))| *o == x * y),
                "{isa} mul_inplace"
            );
            let mut d = a.clone();
            scale_inplace_with(isa, &mut d, 0.125);
            assert!(
                d.iter().zip(&a).all(|(o, x)| *o == x * 0.125),
                "{isa} scale"
            );
            // Row broadcast: [3, n] += [n].
            let mut d: Vec<f32> = a.iter().chain(&a).chain(&a).copied().collect();
            add_inplace_with(isa, &mut d, &b);
            assert!(
                d.chunks(n).all(|row| row
                    .iter()
                    .zip(a.iter().zip(&b))
                    .all(|(o, (x, y))| *o == x + y)),
                "{isa} bcast"
            );
        }
    }
    let mut nan = [f32::NAN, -1.0];
    relu_inplace(&mut nan);
    assert!(nan[0].is_nan() && nan[1] == 0.0);
}

#[test]
fn half_conversions_exact() {
    // Exact: widening is exact and narrowing is round-to-nearest-even, both defined bit for
    // bit; compared with the `half` crate's software conversions.
    let all: Vec<f16> = (0..=u16::MAX).map(f16::from_bits).collect();
    let mut rng = Rng::new(7);
    let mut xs: Vec<f32> = (0..10_001)
        .map(|_| f32::from_bits(rng.next_u64() as u32))
        .collect();
    xs.extend([
        0.0,
        -0.0,
        65504.0,
        65520.0,
        1e-8,
        5.96e-8,
        6.1e-5,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
    ]);
    let bfs: Vec<bf16> = (0..=u16::MAX).map(bf16::from_bits).collect();
    for isa in isas() {
        let mut w = vec![0.0f32; all.len()];
        f16_to_f32_with(isa, &all, &mut w);
        for (h, &f) in all.iter().zip(&w) {
            let r = h.to_f32_const();
            assert!(
                f.to_bits() == r.to_bits() || (f.is_nan() && r.is_nan()),
                "{isa} f16 {:#06x}",
                h.to_bits()
            );
        }
        let mut h = vec![f16::ZERO; xs.len()];
        f32_to_f16_with(isa, &xs, &mut h);
        for (&x, &hv) in xs.iter().zip(&h) {
            let r = f16::from_f32_const(x);
            assert!(
                hv.to_bits() == r.to_bits() || (hv.is_nan() && r.is_nan()),
                "{isa} f32 {x:e} -> {:#06x}",
                hv.to_bits()
            );
        }
        let mut w = vec![0.0f32; bfs.len()];
        bf16_to_f32_with(isa, &bfs, &mut w);
        for (b, &f) in bfs.iter().zip(&w) {
            let r = b.to_f32();
            assert!(
                f.to_bits() == r.to_bits() || (f.is_nan() && r.is_nan()),
                "{isa} bf16"
            );
        }
    }
}

/// Large conversions (a checkpoint's matrices, converted at load) run in pieces on the
/// rayon pool: the same bits as the one-call conversion, at an odd length (pieces of
/// 65,536 with a ragged last one) above the 1,048,576-element threshold.
#[test]
fn large_half_conversions_split_exactly() {
    let n = 3 * (1 << 20) + 12_345;
    let mut rng = Rng::new(9);
    let hs: Vec<f16> = (0..n)
        .map(|_| f16::from_bits(rng.next_u64() as u16))
        .collect();
    let xs: Vec<f32> = (0..n)
        .map(|_| f32::from_bits(rng.next_u64() as u32))
        .collect();
    let bfs: Vec<bf16> = (0..n)
        .map(|_| bf16::from_bits(rng.next_u64() as u16))
        .collect();
    let same = |a: f32, b: f32| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan());
    let mut w = vec![0f32; n];
    f16_to_f32(&hs, &mut w);
    assert!(hs.iter().zip(&w).all(|(h, &f)| same(f, h.to_f32_const())));
    let mut h = vec![f16::ZERO; n];
    f32_to_f16(&xs, &mut h);
    assert!(
        xs.iter()
            .zip(&h)
            .all(|(&x, hv)| same(hv.to_f32_const(), f16::from_f32_const(x).to_f32_const()))
    );
    bf16_to_f32(&bfs, &mut w);
    assert!(bfs.iter().zip(&w).all(|(b, &f)| same(f, b.to_f32())));
}

struct AttnCase {
    p: AttnParams,
    mask_rows: Option<usize>,
    bias: bool,
    /// Batch items whose mask is f32::MIN everywhere (fully masked rows).
    fully_masked_batch: Option<usize>,
}

#[allow(clippy::too_many_arguments)]
fn attention_ref(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    mask: Option<(&[f32], usize)>,
    bias: Option<&[f32]>,
    p: &AttnParams,
) -> Vec<f64> {
    let AttnParams {
        batch,
        heads,
        lq,
        lk,
        lk_cap,
        head_dim: d,
        scale,
        causal_offset,
    } = *p;
    let mut out = vec![0.0; batch * heads * lq * d];
    for bi in 0..batch {
        for h in 0..heads {
            let bh = bi * heads + h;
            for i in 0..lq {
                let vis = causal_offset.map_or(lk, |o| (i + o + 1).min(lk));
                let mut s: Vec<f64> = (0..vis)
                    .map(|j| {
                        let mut t = 0.0;
                        for x in 0..d {
                            t += q[(bh * lq + i) * d + x] as f64
                                * k[(bh * lk_cap + j) * d + x] as f64;
                        }
                        t *= scale as f64;
                        if let Some(b) = bias {
                            t += b[(h * lq + i) * lk + j] as f64;
                        }
                        if let Some((m, rows)) = mask {
                            let mi = if rows == lq { i } else { 0 };
                            // The kernel adds the mask in f32; an f32::MIN mask absorbs the score.
                            t = (t as f32 + m[(bi * rows + mi) * lk + j]) as f64;
                        }
                        t
                    })
                    .collect();
                let mx = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let mut sum = 0.0;
                for x in s.iter_mut() {
                    *x = (*x - mx).exp();
                    sum += *x;
                }
                for (j, pj) in s.iter().enumerate() {
                    for x in 0..d {
                        out[(bh * lq + i) * d + x] +=
                            pj / sum * v[(bh * lk_cap + j) * d + x] as f64;
                    }
                }
            }
        }
    }
    out
}

/// `attention_in` over a fused projection `[b, l, 3·h·d]` read in place, writing merged heads
/// `[b, l, h·d]`: the same products and sums as splitting the heads out and merging them
/// back, so the same bits, on every ISA and thread count (ViT-g's shape; odd sizes with a
/// per-query mask and bias; causal).
#[test]
fn attention_fused_qkv_layout_all_isas() {
    let s88 = 1.0 / 88f32.sqrt();
    let mut rng = Rng::new(9);
    // (batch, heads, l, d, scale, causal, mask, bias)
    for &(batch, heads, l, d, scale, causal, with_mask, with_bias) in &[
        (1, 16, 257, 88, s88, false, false, false),
        (2, 3, 37, 9, 0.3, false, true, true),
        (2, 2, 33, 16, 0.25, true, false, true),
        (1, 1, 1, 1, 1.0, false, false, false),
    ] {
        let hd = heads * d;
        let qkv = rng.vec(batch * l * 3 * hd, -1.0, 1.0);
        // The split-heads copies of each third: [b, h, l, d].
        let split = |part: usize| {
            let mut t = vec![0f32; batch * heads * l * d];
            for bi in 0..batch {
                for h in 0..heads {
                    for i in 0..l {
                        let src = (bi * l + i) * 3 * hd + part * hd + h * d;
                        let dst = ((bi * heads + h) * l + i) * d;
                        t[dst..dst + d].copy_from_slice(&qkv[src..src + d]);
                    }
                }
            }
            t
        };
        let (q, k, v) = (split(0), split(1), split(2));
        let mask = with_mask.then(|| rng.vec(batch * l * l, -3.0, 0.0));
        let bias = with_bias.then(|| rng.vec(heads * l * l, -1.0, 1.0));
        let p = AttnParams {
            batch,
            heads,
            lq: l,
            lk: l,
            lk_cap: l,
            head_dim: d,
            scale,
            causal_offset: causal.then_some(0),
        };
        let mask = mask.as_deref().map(|m| (m, l));
        for isa in isas() {
            for threads in [1, 0] {
                let mut want = vec![0f32; q.len()];
                attention_with(
                    isa,
                    threads,
                    &q,
                    &k,
                    &v,
                    mask,
                    bias.as_deref(),
                    &mut want,
                    &p,
                );
                let mut got = vec![f32::NAN; batch * l * hd];
                let lay = AttnLayout::fused_qkv(&p);
                attention_in(
                    isa,
                    threads,
                    &qkv,
                    &qkv,
                    &qkv,
                    mask,
                    bias.as_deref(),
                    &mut got,
                    &p,
                    &lay,
                );
                for bi in 0..batch {
                    for h in 0..heads {
                        for i in 0..l {
                            let w = ((bi * heads + h) * l + i) * d;
                            let g = (bi * l + i) * hd + h * d;
                            assert_eq!(
                                got[g..g + d],
                                want[w..w + d],
                                "{isa} t{threads} {p:?} b{bi} h{h} row {i}"
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn attention_all_isas() {
    let p = |batch, heads, lq, lk, lk_cap, head_dim, scale, causal_offset| AttnParams {
        batch,
        heads,
        lq,
        lk,
        lk_cap,
        head_dim,
        scale,
        causal_offset,
    };
    let s88 = 1.0 / 88f32.sqrt();
    let cases = [
        // ViT-g: 16 heads × 257 × 88, no mask.
        AttnCase {
            p: p(1, 16, 257, 257, 257, 88, s88, None),
            mask_rows: None,
            bias: false,
            fully_masked_batch: None,
        },
        // Cross attention with a padding mask broadcast over queries; batch 1 fully masked.
        AttnCase {
            p: p(2, 3, 7, 33, 40, 88, s88, None),
            mask_rows: Some(1),
            bias: false,
            fully_masked_batch: Some(1),
        },
        // Per-query mask + T5-style bias, scale 1.
        AttnCase {
            p: p(2, 2, 33, 33, 33, 7, 1.0, None),
            mask_rows: Some(33),
            bias: true,
            fully_masked_batch: None,
        },
        // Causal self-attention (offset 0) with bias.
        AttnCase {
            p: p(1, 2, 33, 33, 33, 64, 0.125, Some(0)),
            mask_rows: None,
            bias: true,
            fully_masked_batch: None,
        },
        // KV cache: 5 new queries over 12 cached keys (offset 7), capacity 20, padding mask.
        AttnCase {
            p: p(2, 4, 5, 12, 20, 80, 0.11, Some(7)),
            mask_rows: Some(1),
            bias: false,
            fully_masked_batch: None,
        },
        // Decode: one query, 17 keys of a 32-row cache.
        AttnCase {
            p: p(2, 4, 1, 17, 32, 80, 0.11, Some(16)),
            mask_rows: Some(1),
            bias: false,
            fully_masked_batch: Some(0),
        },
        // Single key, head dim 1.
        AttnCase {
            p: p(1, 1, 3, 1, 1, 1, 1.0, None),
            mask_rows: None,
            bias: false,
            fully_masked_batch: None,
        },
    ];
    let mut rng = Rng::new(8);
    for c in &cases {
        let ap = &c.p;
        let bh = ap.batch * ap.heads;
        let q = rng.vec(bh * ap.lq * ap.head_dim, -1.0, 1.0);
        let k = rng.vec(bh * ap.lk_cap * ap.head_dim, -1.0, 1.0);
        let v = rng.vec(bh * ap.lk_cap * ap.head_dim, -1.0, 1.0);
        let mask_data = c.mask_rows.map(|rows| {
            let mut m = vec![0.0f32; ap.batch * rows * ap.lk];
            for (idx, x) in m.iter_mut().enumerate() {
                let bi = idx / (rows * ap.lk);
                let j = idx % ap.lk;
                // Mask the last key of every row (padding), or everything for the chosen batch.
                if j == ap.lk - 1 && ap.lk > 1 || c.fully_masked_batch == Some(bi) {
                    *x = f32::MIN;
                }
            }
            m
        });
        let bias_data = c.bias.then(|| rng.vec(ap.heads * ap.lq * ap.lk, -2.0, 2.0));
        let mask = mask_data.as_deref().zip(c.mask_rows);
        let r = attention_ref(&q, &k, &v, mask, bias_data.as_deref(), ap);
        let rmax = r.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        for isa in isas() {
            for threads in [1, 0] {
                let mut out = vec![f32::NAN; q.len()];
                attention_with(
                    isa,
                    threads,
                    &q,
                    &k,
                    &v,
                    mask,
                    bias_data.as_deref(),
                    &mut out,
                    ap,
                );
                // max|out − ref| ≤ 3e-5·max|ref|: the scores carry ≈ d·u·|q||k| ≲ 5e-6 error,
                // which perturbs the probabilities by as much relatively; softmax adds ≲ 1e-5
                // (see check_probs); P·V accumulates lk ≤ 257 terms, γ_lk ≈ 1.5e-5.
                let err = out
                    .iter()
                    .zip(&r)
                    .fold(0.0f64, |m, (&o, &e)| m.max((o as f64 - e).abs()));
                assert!(
                    out.iter().all(|x| x.is_finite()),
                    "{isa} {ap:?}: non-finite output"
                );
                assert!(
                    err <= 3e-5 * rmax,
                    "{isa} t{threads} {ap:?}: max err {err:e} vs max|ref| {rmax:e}"
                );
            }
        }
    }
}

#[test]
fn im2col_matches_naive() {
    // Exact: pure copies. 15×14 image with p = 7 leaves a remainder row, as a strided conv does.
    let mut rng = Rng::new(9);
    for &(c, h, w, p) in &[
        (3usize, 14usize, 14usize, 7usize),
        (3, 15, 14, 7),
        (2, 5, 5, 1),
        (1, 4, 8, 4),
    ] {
        let img = rng.vec(c * h * w, -1.0, 1.0);
        let (ph, pw) = (h / p, w / p);
        let mut out = vec![f32::NAN; ph * pw * c * p * p];
        im2col_patches(&img, c, h, w, p, &mut out);
        for py in 0..ph {
            for px in 0..pw {
                for ci in 0..c {
                    for ky in 0..p {
                        for kx in 0..p {
                            let o = out[(py * pw + px) * c * p * p + (ci * p + ky) * p + kx];
                            assert_eq!(o, img[(ci * h + py * p + ky) * w + px * p + kx]);
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn isa_selection() {
    for s in ["scalar", "avx2", "avx512", "neon", "AVX512"] {
        assert!(Isa::parse(s).is_some(), "{s}");
    }
    assert_eq!(Isa::parse("sse9"), None);
    // Resolving never yields something the CPU lacks, and never raises a supported choice.
    for i in Isa::ALL {
        assert!(i.resolve().is_supported());
        if i.is_supported() {
            assert_eq!(i.resolve(), i);
        }
    }
    assert!(isa().is_supported());
    assert_eq!(supported_isas().first().copied(), Some(best_isa()));
    eprintln!("supported: {:?}, default: {}", supported_isas(), isa());
}

/// Dequantized weights `[n, k]` of a quantized matrix, read back through the portable path.
fn dequant_all(fmt: QFormat, qs: &[u8], sc: &[f16], n: usize, k: usize) -> Vec<f32> {
    let w = QMatrix {
        format: fmt,
        rows: n,
        cols: k,
        qs,
        scales: sc,
    };
    let mut out = vec![0f32; n * k];
    dequantize(&w, &mut out);
    // The SIMD dequantizer (used by `dequantize`) must equal the portable one exactly.
    let (rb, nb) = (fmt.row_bytes(k), QFormat::row_blocks(k));
    for j in 0..n {
        let mut r = vec![0f32; k];
        dequantize_row(
            fmt,
            &qs[j * rb..(j + 1) * rb],
            &sc[j * nb..(j + 1) * nb],
            &mut r,
        );
        assert_eq!(
            r,
            out[j * k..(j + 1) * k],
            "{fmt:?} row {j}: SIMD dequantize differs"
        );
    }
    out
}

#[test]
fn quantize_round_trip_error_bounds() {
    // Per element |x − deq(x)| ≤ d/2 (round to nearest) plus the f16 rounding of d itself,
    // which moves every value by ≤ |q|·|d − d16| ≤ amax·2⁻¹¹: bound (0.5 + 2⁻¹¹·qmax)·d.
    // q4's largest-magnitude value maps exactly to q = 0 (−8·d = m) up to that d rounding.
    let mut rng = Rng::new(7);
    for &k in &[1usize, 31, 32, 33, 100, 257] {
        let n = 5;
        let mut x = rng.vec(n * k, -2.0, 2.0);
        x[0] = 0.0; // a zero block stays zero
        if k > 40 {
            x[k..k + 32].iter_mut().for_each(|v| *v = 0.0);
        }
        for fmt in [QFormat::Q8, QFormat::Q4] {
            let mut qs = vec![0u8; n * fmt.row_bytes(k)];
            let mut sc = vec![f16::ZERO; n * QFormat::row_blocks(k)];
            quantize_rows(fmt, &x, n, k, &mut qs, &mut sc);
            let y = dequant_all(fmt, &qs, &sc, n, k);
            let qmax = if fmt == QFormat::Q8 { 127.0 } else { 8.0 };
            // q4 stores q − 8 in [−8, 7]: values of the opposite sign to the largest one
            // clamp at 7·d, so its rounding error reaches a whole step d (Q4_0 behaviour).
            let step = if fmt == QFormat::Q8 { 0.5 } else { 1.0 };
            for j in 0..n {
                for (b, blk) in x[j * k..(j + 1) * k].chunks(QBLOCK).enumerate() {
                    let amax = blk.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
                    let d = amax / qmax;
                    for (i, &v) in blk.iter().enumerate() {
                        let got = y[j * k + b * QBLOCK + i] as f64;
                        let e = (got - v as f64).abs();
                        let bound = (step + qmax / 2048.0) * d * 1.0001 + 1e-12;
                        assert!(
                            e <= bound,
                            "{fmt:?} k={k} row {j} block {b} elem {i}: {v} -> {got} (err {e:e} > {bound:e})"
                        );
                    }
                }
            }
            // The zero block (and the zero element) dequantize to exactly zero.
            assert_eq!(y[0], 0.0);
            if k > 40 {
                assert!(y[k..k + 32].iter().all(|&v| v == 0.0));
            }
        }
    }
}

#[test]
fn quantized_matmul_all_isas_odd_sizes() {
    // m ≤ 4 (decode): activations quantized to 8 bits per block, exact integer block sums;
    // reference `matmul_q_int_ref`, bound γ_{blocks+8}·Σ_b|d_w·d_x|·Σ_i|q_w·q_x| (one
    // rounding of the scale product and one fma per block and lane, 4 for the lane sum, the
    // bias, slack; per product, since lanes hold partial block sums that may cancel).
    // m > 4 (prefill): C = A·deq(W)ᵀ + bias against f64 on the dequantized weights; the
    // f32-GEMM bound γ_{k+2}·Σ|a·w| applies. Sizes: K not a multiple of 32 (padded tail
    // block), N not a multiple of the 4-row blocking, M = 1, M ≤ 4, M > 4, N past one 64-row
    // dequantization block; 1..4 blocks past the last whole 64-byte group of the VNNI kernel
    // (2 q8 / 4 q4 blocks per group).
    let shapes = [
        (1, 1, 1),
        (1, 33, 5),
        (1, 1408, 67),
        (3, 100, 9),
        (2, 95, 13),
        (4, 257, 130),
        (1, 2577, 6),
        (5, 31, 7),
        (17, 64, 65),
        (40, 300, 129),
    ];
    let mut rng = Rng::new(11);
    for (si, &(m, k, n)) in shapes.iter().enumerate() {
        let a = rng.vec(m * k, -1.0, 1.0);
        let w = rng.vec(n * k, -1.0, 1.0);
        let bias = rng.vec(n, -1.0, 1.0);
        for fmt in [QFormat::Q8, QFormat::Q4] {
            let mut qs = vec![0u8; n * fmt.row_bytes(k)];
            let mut sc = vec![f16::ZERO; n * QFormat::row_blocks(k)];
            quantize_rows(fmt, &w, n, k, &mut qs, &mut sc);
            let wd = dequant_all(fmt, &qs, &sc, n, k);
            let qm = QMatrix {
                format: fmt,
                rows: n,
                cols: k,
                qs: &qs,
                scales: &sc,
            };
            let bias_opt = si.is_multiple_of(2).then_some(&bias[..]);
            let (r, abs, terms) = if m <= 4 {
                let (r, abs) = matmul_q_int_ref(&a, fmt, &qs, &sc, bias_opt, m, k, n);
                (r, abs, QFormat::row_blocks(k) + 8)
            } else {
                let (r, abs) = matmul_ref(&a, &wd, bias_opt, m, k, n, true);
                (r, abs, k + 2)
            };
            for isa in isas() {
                for threads in [1, 0] {
                    let mut c = vec![f32::NAN; m * n];
                    // The f32 path; `quant_amx.rs` tests the AMX one (bf16 roundings).
                    matmul_q_path(isa, threads, QuantPath::F32, &a, &qm, bias_opt, &mut c, m);
                    let what = format!("{fmt:?} {isa} t={threads} m={m} k={k} n={n}");
                    check_matmul(&what, &c, &r, &abs, terms);
                }
            }
        }
    }
}

#[test]
fn nonfinite_counts_match_the_float_types() {
    // Random bit patterns (about 1/32 of f16, 1/256 of bf16 and f32 draws are NaN or inf,
    // plus planted ones), odd lengths, an unaligned start, and one input past the parallel
    // chunk size; every ISA against `half`/`f32::is_finite` value by value.
    let mut rng = Rng::new(21);
    for &(n, offset) in &[(0, 0), (1, 1), (37, 0), (1001, 3), (5_000_003, 1)] {
        let mut bytes: Vec<u8> = (0..n * 4 + offset + 3)
            .map(|_| rng.next_u64() as u8)
            .collect();
        // Planted values at the ends: +inf as f16/bf16/f32 bit patterns.
        if n > 2 {
            bytes[offset..offset + 2].copy_from_slice(&0x7c00u16.to_le_bytes());
            let e = offset + 2 * (n - 1);
            bytes[e..e + 2].copy_from_slice(&0x7f80u16.to_le_bytes());
        }
        let data = &bytes[offset..offset + n * 4];
        let refs = [
            (
                FloatBits::F16,
                data.chunks_exact(2)
                    .filter(|c| !f16::from_le_bytes([c[0], c[1]]).is_finite())
                    .count(),
            ),
            (
                FloatBits::Bf16,
                data.chunks_exact(2)
                    .filter(|c| !half::bf16::from_le_bytes([c[0], c[1]]).is_finite())
                    .count(),
            ),
            (
                FloatBits::F32,
                data.chunks_exact(4)
                    .filter(|c| !f32::from_le_bytes([c[0], c[1], c[2], c[3]]).is_finite())
                    .count(),
            ),
        ];
        for (fmt, want) in refs {
            for isa in isas() {
                assert_eq!(
                    count_nonfinite_with(isa, fmt, data),
                    want,
                    "{fmt:?} {isa} n={n}"
                );
            }
            let first = first_nonfinite(fmt, data);
            assert_eq!(first.is_some(), want > 0, "{fmt:?} n={n}");
            if let Some(i) = first {
                let w = fmt.width();
                let mut b = [0u8; 4];
                b[..w].copy_from_slice(&data[i * w..(i + 1) * w]);
                assert!(fmt.is_nonfinite(u32::from_le_bytes(b)));
                assert_eq!(
                    count_nonfinite(fmt, &data[..i * w]),
                    0,
                    "{fmt:?}: an earlier one"
                );
            }
        }
    }
}
