//! Shared helpers for engine tests: seeded RNG, the devices to test, error metrics.
#![allow(dead_code)]

use blip2_engine::{DType, Device, Tensor};

/// xorshift64*: deterministic, dependency-free.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        let u = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        lo + (hi - lo) * u
    }
    pub fn vec(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform(lo, hi)).collect()
    }
}

#[allow(unused_imports)] // not every test file uses `gpu`
pub use blip2_engine::testing::{devices, gpu};

/// Values as stored in `dtype` (f16 rounding applied), so references see what the op sees.
pub fn quantize(v: &[f32], dtype: DType) -> Vec<f32> {
    match dtype {
        DType::F32 => v.to_vec(),
        DType::F16 => v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect(),
        DType::Q8 | DType::Q4 | DType::BF16 => {
            panic!("packed dtypes: use Tensor::from_slice + to_vec_f32")
        }
    }
}

/// A tensor of `dtype` on `dev`, and the f64 values it really holds.
pub fn tensor(
    rng: &mut Rng,
    shape: &[usize],
    dtype: DType,
    dev: &Device,
    lo: f32,
    hi: f32,
) -> (Tensor, Vec<f64>) {
    let n: usize = shape.iter().product();
    let v = quantize(&rng.vec(n, lo, hi), dtype);
    let t = Tensor::from_slice(&v, shape, dtype, dev).unwrap();
    (t, v.iter().map(|&x| x as f64).collect())
}

/// NMSE = Σ(a−b)² / Σb² (ggml's metric), with an absolute floor for all-zero references.
pub fn nmse(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "length mismatch");
    let num: f64 = got
        .iter()
        .zip(want)
        .map(|(&a, &b)| (a as f64 - b).powi(2))
        .sum();
    let den: f64 = want.iter().map(|b| b * b).sum();
    if den == 0.0 { num } else { num / den }
}

/// Asserts NMSE(got, want) <= tol and that nothing is NaN/inf.
pub fn assert_close(what: &str, dev: &Device, dtype: DType, got: &[f32], want: &[f64], tol: f64) {
    assert!(
        got.iter().all(|x| x.is_finite()),
        "{what} on {dev:?} {dtype}: non-finite output"
    );
    let e = nmse(got, want);
    assert!(e <= tol, "{what} on {dev:?} {dtype}: NMSE {e:e} > {tol:e}");
}

/// NMSE budget by storage dtype. f32: relative RMS error 1e-5 (f32 rounding, ε≈6e-8, grown
/// by accumulation order over K≤1408 terms and GPU exp/erf approximations) -> 1e-10.
/// f16 storage: the output itself is rounded to f16 (ε=4.9e-4, NMSE of rounding alone
/// ≈ ε²/3 ≈ 8e-8) and intermediate results are rounded when an op chain stores f16 -> 1e-6.
pub fn tol(dtype: DType) -> f64 {
    match dtype {
        DType::F32 => 1e-10,
        DType::F16 => 1e-6,
        DType::Q8 | DType::Q4 | DType::BF16 => {
            panic!("packed-dtype tolerances are stated per test")
        }
    }
}

pub const DTYPES: [DType; 2] = [DType::F32, DType::F16];

/// Reference x·Wᵀ + b in f64 (on the values W really holds), and Σ|x·w| + |b| per element.
#[allow(dead_code)] // not every test file uses it
pub fn linear_ref(
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    m: usize,
    k: usize,
    n: usize,
) -> (Vec<f64>, Vec<f64>) {
    let mut r = vec![0.0; m * n];
    let mut a = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            let (mut s, mut sa) = (0.0f64, 0.0f64);
            for p in 0..k {
                let t = x[i * k + p] as f64 * w[j * k + p] as f64;
                s += t;
                sa += t.abs();
            }
            if let Some(b) = b {
                s += b[j] as f64;
                sa += (b[j] as f64).abs();
            }
            r[i * n + j] = s;
            a[i * n + j] = sa;
        }
    }
    (r, a)
}

/// The kernel the CPU backend's quantized linear layer runs for `m` rows (what
/// `kernels::matmul_q` chooses: its tolerances follow from it).
pub fn cpu_quant_kernel(m: usize) -> blip2_kernels::QuantKernel {
    blip2_kernels::quant_kernel(blip2_kernels::isa(), blip2_kernels::QuantPath::Auto, m)
}
