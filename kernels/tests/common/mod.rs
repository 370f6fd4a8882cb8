//! Shared by the packed-weight kernel tests: a seeded RNG, the f64 linear reference and the
//! error check against γ-style bounds.
#![allow(dead_code)] // each test file uses its own subset

/// xorshift64*, as in kernels.rs.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let u = (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 / (1u64 << 24) as f32;
        lo + (hi - lo) * u
    }
    pub fn vec(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform(lo, hi)).collect()
    }
}

/// γ_n = n·u/(1 − n·u) for f32: the bound on an n-term dot product's rounding error in any
/// summation order, relative to Σ|x_i·y_i|.
pub fn gamma(n: usize) -> f64 {
    let nu = n as f64 * f32::EPSILON as f64 / 2.0;
    nu / (1.0 - nu)
}

/// C = A·Wᵀ + bias in f64, and Σ|a||w| + |bias| per element.
pub fn reference(
    a: &[f32],
    w: &[f32],
    bias: &[f32],
    m: usize,
    k: usize,
    n: usize,
) -> (Vec<f64>, Vec<f64>) {
    let (mut c, mut abs) = (vec![0.0; m * n], vec![0.0; m * n]);
    for i in 0..m {
        for j in 0..n {
            let (mut s, mut t) = (bias[j] as f64, bias[j].abs() as f64);
            for p in 0..k {
                let x = a[i * k + p] as f64 * w[j * k + p] as f64;
                s += x;
                t += x.abs();
            }
            c[i * n + j] = s;
            abs[i * n + j] = t;
        }
    }
    (c, abs)
}

pub fn check(what: &str, c: &[f32], r: &[f64], abs: &[f64], rel: f64) {
    for (idx, ((&g, &e), &t)) in c.iter().zip(r).zip(abs).enumerate() {
        let err = (g as f64 - e).abs();
        assert!(
            err <= rel * t + 1e-30,
            "{what}: element {idx}: got {g}, want {e}, err {err:e} > {rel:e}·{t:e}"
        );
    }
}
