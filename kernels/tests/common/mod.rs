//! Shared by the packed-weight kernel tests: a seeded RNG, the f64 linear reference and the
//! error check against γ-style bounds.
#![allow(dead_code)] // each test file uses its own subset

use blip2_kernels::{
    QFormat, QMatrix, QuantKernel, QuantPath, dequantize, isa, matmul_q_path, quant_kernel,
    quantize_rows,
};
use half::f16;

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

/// Reference of the integer paths: the activations quantized as the kernels do
/// (`QActivations`), exact integer block sums, then Σ_b d_w·d_x·I_b in f64; plus the bound's
/// Σ_b |d_w·d_x|·Σ_i |q_w·q_x| (+ |bias|). The products' magnitudes, not |I_b|: the SIMD
/// kernels' lanes each hold part of a block's sum, scaled and accumulated on their own,
/// and those parts may cancel across lanes (a two-block K showed errors of 7.7e-7 of
/// Σ_b |d_w·d_x·I_b|).
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
                let (mut isum, mut iabs) = (0.0f64, 0.0f64);
                for t in 0..blip2_kernels::QBLOCK {
                    let p = wrow[b * blip2_kernels::QBLOCK + t] as f64
                        * x.qs[b * blip2_kernels::QBLOCK + t] as f64;
                    isum += p;
                    iabs += p.abs();
                }
                let d = sc[j * nb + b].to_f32() as f64 * x.scales[b] as f64;
                s += d * isum;
                sa += d.abs() * iabs;
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

/// W `[n, k]` quantized: its quants and scales.
pub fn quantized(format: QFormat, w: &[f32], n: usize, k: usize) -> (Vec<u8>, Vec<f16>) {
    let mut qs = vec![0u8; n * format.row_bytes(k)];
    let mut sc = vec![f16::ZERO; n * QFormat::row_blocks(k)];
    quantize_rows(format, w, n, k, &mut qs, &mut sc);
    (qs, sc)
}

/// The matrix view of [`quantized`]'s arrays.
pub fn view<'a>(
    format: QFormat,
    qs: &'a [u8],
    scales: &'a [f16],
    n: usize,
    k: usize,
) -> QMatrix<'a> {
    QMatrix {
        format,
        rows: n,
        cols: k,
        qs,
        scales,
    }
}

/// Each value rounded to bf16 (nearest even), back in f32.
pub fn round_bf16(v: &[f32]) -> Vec<f32> {
    v.iter()
        .map(|&x| half::bf16::from_f32(x).to_f32())
        .collect()
}

/// Sizes for the quantized paths that round to bf16 (AMX tiles, AVX512-BF16).
pub const QUANT_SHAPES: [(usize, usize, usize); 10] = [
    // The first rows past the integer decode path; one K step.
    (5, 32, 32),
    (8, 100, 33),
    (9, 64, 31),
    (17, 45, 50),
    // K not a multiple of 32 (a zero-padded last block), N not a multiple of 32 (a pair
    // with rows past W).
    (33, 95, 70),
    (40, 129, 97),
    (64, 300, 130),
    // A 16-row last block of A after whole 32-row ones.
    (50, 64, 64),
    // K in two chunks of the AMX walk (A past its 1 MiB budget): each pair dequantized per
    // chunk, C accumulated between chunks.
    (300, 1900, 70),
    (20, 1408, 600),
];

/// A quantized matmul under test: `run(threads, a, w, bias, c, m)`, false where the CPU
/// lacks it.
pub type QuantRun = dyn Fn(usize, &[f32], &QMatrix, Option<&[f32]>, &mut [f32], usize) -> bool;

/// A quantized path that rounds the activations and the dequantized weights to bf16
/// (`run(threads, a, w, bias, c, m)`, false where the CPU lacks it) on [`QUANT_SHAPES`], q8
/// and q4, with a bias and without: against f64 on the rounded operands within
/// γ_{k+1}·Σ|a||w| (products of two bf16 values are exact in f32, the sums f32: k products
/// and the bias) and on the unrounded ones within that + 2·2^-8 + 2^-16 (each operand keeps
/// 8 significant bits); bit-identical across 1, 2 and 3 tasks (each output is one walk over
/// K) and to `matmul_q_path(.., path, ..)` where [`quant_kernel`] says it runs `kernel`.
pub fn check_bf16_quant_path(seed: u64, run: &QuantRun, path: QuantPath, kernel: QuantKernel) {
    let same = |f: &[f32], c: &[f32]| f.iter().zip(c).all(|(x, y)| x.to_bits() == y.to_bits());
    let mut rng = Rng::new(seed);
    for &(m, k, n) in &QUANT_SHAPES {
        let a = rng.vec(m * k, -1.0, 1.0);
        let w = rng.vec(n * k, -1.0, 1.0);
        for format in [QFormat::Q8, QFormat::Q4] {
            let (qs, sc) = quantized(format, &w, n, k);
            let qm = view(format, &qs, &sc, n, k);
            let mut wd = vec![0f32; n * k];
            dequantize(&qm, &mut wd);
            for bias in [rng.vec(n, -1.0, 1.0), vec![0.0; n]] {
                let (rb, absb) = reference(&round_bf16(&a), &round_bf16(&wd), &bias, m, k, n);
                let (rf, absf) = reference(&a, &wd, &bias, m, k, n);
                let given = bias.iter().any(|&b| b != 0.0).then_some(&bias[..]);
                let mut first: Option<Vec<f32>> = None;
                for threads in [1, 0, 3] {
                    let mut c = vec![f32::NAN; m * n];
                    assert!(run(threads, &a, &qm, given, &mut c, m));
                    let what = format!(
                        "{kernel:?} {format:?} t{threads} {m}x{k}x{n} bias {}",
                        given.is_some()
                    );
                    check(&what, &c, &rb, &absb, gamma(k + 1));
                    let both = 2.0 * 2f64.powi(-8) + 2f64.powi(-16);
                    check(&what, &c, &rf, &absf, gamma(k + 1) + both);
                    match &first {
                        None => first = Some(c),
                        Some(f) => assert!(same(f, &c), "{what}"),
                    }
                }
                if quant_kernel(isa(), path, m) == kernel {
                    let mut c = vec![f32::NAN; m * n];
                    matmul_q_path(isa(), 0, path, &a, &qm, given, &mut c, m);
                    let f = first.as_ref().unwrap();
                    assert!(same(f, &c), "matmul_q_path {path:?} {format:?} {m}x{k}x{n}");
                }
            }
        }
    }
}
