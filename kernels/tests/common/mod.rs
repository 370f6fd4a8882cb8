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

/// Reference of the small-M (m ≤ 4) path: the activations quantized as the kernel does
/// (`QActivations`), exact integer block sums, then Σ_b d_w·d_x·I_b in f64; plus the bound's
/// Σ_b |d_w·d_x·I_b| (+ |bias|).
#[allow(clippy::too_many_arguments)]
pub fn matmul_q_int_ref(
    a: &[f32],
    fmt: blip2_kernels::QFormat,
    qs: &[u8],
    sc: &[half::f16],
    bias: Option<&[f32]>,
    m: usize,
    k: usize,
    n: usize,
) -> (Vec<f64>, Vec<f64>) {
    let (rb, nb) = (fmt.row_bytes(k), blip2_kernels::QFormat::row_blocks(k));
    let mut r = vec![0.0; m * n];
    let mut abs = vec![0.0; m * n];
    for i in 0..m {
        let x = blip2_kernels::QActivations::new(&a[i * k..(i + 1) * k]);
        for j in 0..n {
            let mut wrow = vec![0f32; nb * blip2_kernels::QBLOCK];
            // Integer weight values: dequantize with unit scales.
            let ones = vec![half::f16::ONE; nb];
            blip2_kernels::dequantize_row(fmt, &qs[j * rb..(j + 1) * rb], &ones, &mut wrow);
            let (mut s, mut sa) = (0.0f64, 0.0f64);
            for b in 0..nb {
                let isum: f64 = (0..blip2_kernels::QBLOCK)
                    .map(|t| {
                        wrow[b * blip2_kernels::QBLOCK + t] as f64
                            * x.qs[b * blip2_kernels::QBLOCK + t] as f64
                    })
                    .sum();
                let t = sc[j * nb + b].to_f32() as f64 * x.scales[b] as f64 * isum;
                s += t;
                sa += t.abs();
            }
            if let Some(bias) = bias {
                s += bias[j] as f64;
                sa += (bias[j] as f64).abs();
            }
            r[i * n + j] = s;
            abs[i * n + j] = sa;
        }
    }
    (r, abs)
}
