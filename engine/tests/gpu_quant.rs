//! Quantized (q8 / q4) linear layers on the GPU (llvmpipe in CI): qgemv.wgsl for 1..=4 rows
//! of x, qmatmul.wgsl above, checked against an f64 reference on the dequantized weights and
//! against the CPU backend; the quantized upload/download round trip; weights bound in row
//! chunks under a lowered binding limit (embedding lookups too), and the typed error when even
//! one chunk cannot fit.
//!
//! Without an adapter these tests print why and pass, unless `BLIP2_REQUIRE_GPU=1`, where
//! they fail.

use std::sync::{Arc, OnceLock};

use blip2_engine::gpu::{GpuContext, GpuOptions};
use blip2_engine::{DType, Device, Error, Tensor, ops};

/// xorshift64*: deterministic test data without dependencies.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn uniform(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let u = (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 / (1u64 << 24) as f32;
        2.0 * u - 1.0
    }
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.uniform()).collect()
    }
}

fn open(opts: GpuOptions) -> Option<Device> {
    match GpuContext::with_options(opts) {
        Ok(g) => Some(Device::Gpu(Arc::new(g))),
        Err(e) => {
            assert!(
                std::env::var("BLIP2_REQUIRE_GPU").as_deref() != Ok("1"),
                "BLIP2_REQUIRE_GPU=1 but no GPU adapter: {e}"
            );
            eprintln!("no GPU adapter ({e}); quantized GPU test not run");
            None
        }
    }
}

/// The shared default-options device of this test binary.
fn gpu() -> Option<Device> {
    static DEV: OnceLock<Option<Device>> = OnceLock::new();
    DEV.get_or_init(|| open(GpuOptions::default())).clone()
}

fn ctx(dev: &Device) -> &GpuContext {
    match dev {
        Device::Gpu(g) => g,
        Device::Cpu => unreachable!("GPU device expected"),
    }
}

/// Relative RMS error sqrt(Σ(a−b)² / Σb²).
fn rel_err(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    let num: f64 = got
        .iter()
        .zip(want)
        .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
        .sum();
    let den: f64 = want.iter().map(|&b| (b as f64).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}

const QTYPES: [DType; 2] = [DType::Q8, DType::Q4];
const FLOATS: [DType; 2] = [DType::F32, DType::F16];

/// (m, k, n): GEMV rows 1..=4 and tiled rows 5, 17, 40, 300 (every tile: M16, M32, M64,
/// M128); K of 1 (one padded block), not a
/// multiple of 32 (padded last block, scalar x loads) and 1408 / 64 (whole blocks, vector
/// loads); odd N (f16 outputs through the f32 scratch).
const SIZES: [(usize, usize, usize); 10] = [
    (1, 1, 1),
    (1, 33, 5),
    (1, 1408, 67),
    (2, 64, 10),
    (3, 100, 9),
    (4, 257, 130),
    (5, 31, 7),
    (17, 64, 65),
    (40, 300, 129),
    (300, 96, 70),
];

/// One quantized linear on `dev` checked element by element against an f64 reference on the
/// values the op really sees: the dequantized weight (`to_vec_f32` of the quantized tensor),
/// x and the bias as stored in `xdt`.
///
/// Tolerance, per output: the GPU sums K products (each scaled once per block) in f32 in some
/// order; any order's rounding error is at most (K + 2)·u·S with u = 2^-24 and S = Σ|x·w| + |b|
/// (products, block scaling, sum). We allow twice that ((K + 2)·2^-23·S): a worst-case bound,
/// so it never fails by chance, yet a wrong dequantized value (an error of the order of one
/// |x·w|, i.e. S/K on average) exceeds it by orders of magnitude. f16 outputs are rounded
/// once more: + 2^-11·|y| (half an f16 ulp, relative) + 2^-24 (f16 subnormal spacing).
#[allow(clippy::too_many_arguments)]
fn check_linear(
    dev: &Device,
    rng: &mut Rng,
    wdt: DType,
    xdt: DType,
    with_bias: bool,
    m: usize,
    k: usize,
    n: usize,
) {
    let w = Tensor::quantize(&rng.vec(n * k), &[n, k], wdt, dev).unwrap();
    let wd = w.to_vec_f32().unwrap();
    let x = Tensor::from_slice(&rng.vec(m * k), &[m, k], xdt, dev).unwrap();
    let xs = x.to_vec_f32().unwrap();
    let b = with_bias.then(|| Tensor::from_slice(&rng.vec(n), &[n], xdt, dev).unwrap());
    let bs = b.as_ref().map(|b| b.to_vec_f32().unwrap());
    let got = ops::linear(&x, &w, b.as_ref()).unwrap();
    assert_eq!(got.shape(), &[m, n]);
    assert_eq!(got.dtype(), xdt);
    let got = got.to_vec_f32().unwrap();
    let what = format!("{wdt} linear x={xdt} bias={with_bias} (m, k, n)=({m}, {k}, {n})");
    for r in 0..m {
        for j in 0..n {
            let mut y = 0f64;
            let mut s = 0f64;
            for t in 0..k {
                let p = xs[r * k + t] as f64 * wd[j * k + t] as f64;
                y += p;
                s += p.abs();
            }
            if let Some(bs) = &bs {
                y += bs[j] as f64;
                s += (bs[j] as f64).abs();
            }
            let mut tol = (k + 2) as f64 * 2f64.powi(-23) * s;
            if xdt == DType::F16 {
                tol += 2f64.powi(-11) * y.abs() + 2f64.powi(-24);
            }
            let g = got[r * n + j] as f64;
            assert!(
                (g - y).abs() <= tol,
                "{what}: out[{r}, {j}] = {g}, reference {y} (tolerance {tol:e})"
            );
        }
    }
}

#[test]
fn quantized_linear_matches_the_dequantized_reference() {
    let Some(dev) = gpu() else { return };
    let mut rng = Rng::new(21);
    for wdt in QTYPES {
        for xdt in FLOATS {
            for with_bias in [false, true] {
                for (m, k, n) in SIZES {
                    check_linear(&dev, &mut rng, wdt, xdt, with_bias, m, k, n);
                }
            }
        }
    }
}

#[test]
fn quantized_linear_under_the_kill_switches() {
    // Plain workgroup reductions in qgemv (llvmpipe has subgroups, so the default device
    // runs the subgroup variant); then 1..=4 rows through the tiled kernel, every load scalar.
    let switches = [
        GpuOptions {
            subgroups: false,
            ..GpuOptions::default()
        },
        GpuOptions {
            gemv: false,
            vec4: false,
            ..GpuOptions::default()
        },
    ];
    let mut rng = Rng::new(22);
    for opts in switches {
        let Some(dev) = open(opts) else { return };
        for wdt in QTYPES {
            for xdt in FLOATS {
                for (m, k, n) in [(1, 33, 5), (2, 64, 9), (4, 257, 130), (17, 64, 65)] {
                    check_linear(&dev, &mut rng, wdt, xdt, true, m, k, n);
                }
            }
        }
    }
}

#[test]
fn quantized_tensor_round_trips_through_the_gpu() {
    let Some(dev) = gpu() else { return };
    let cpu = Device::cpu();
    let mut rng = Rng::new(23);
    for wdt in QTYPES {
        for (n, k) in [(1, 1), (5, 33), (7, 257), (130, 64), (3, 1408)] {
            let w = Tensor::quantize(&rng.vec(n * k), &[n, k], wdt, &cpu).unwrap();
            let back = w.to_device(&dev).unwrap().to_device(&cpu).unwrap();
            assert_eq!(back.dtype(), wdt);
            assert_eq!(back.shape(), &[n, k]);
            let (a, b) = (w.quantized_parts(), back.quantized_parts());
            assert!(a.is_some());
            assert_eq!(a, b, "{wdt} [{n}, {k}] changed on the way through the GPU");
        }
    }
}

/// GPU and CPU linear on the same quantized weight (quantized once on the CPU, copied over).
/// Both accumulate in f32 from the same dequantized values; only the summation order differs:
/// relative RMS error 1e-5 for f32 outputs, 1e-3 where both round their outputs to f16
/// (2^-11 relative, and the two roundings may land on neighbouring halves).
fn cpu_parity(dev: &Device, rng: &mut Rng, sizes: &[(usize, usize, usize)]) {
    let cpu = Device::cpu();
    for wdt in QTYPES {
        for xdt in FLOATS {
            for &(m, k, n) in sizes {
                let (xv, bv) = (rng.vec(m * k), rng.vec(n));
                let wc = Tensor::quantize(&rng.vec(n * k), &[n, k], wdt, &cpu).unwrap();
                let wg = wc.to_device(dev).unwrap();
                let run = |d: &Device, w: &Tensor| {
                    let x = Tensor::from_slice(&xv, &[m, k], xdt, d).unwrap();
                    let b = Tensor::from_slice(&bv, &[n], xdt, d).unwrap();
                    ops::linear(&x, w, Some(&b)).unwrap().to_vec_f32().unwrap()
                };
                // For m ≤ 4 (up to 16 with AMX-INT8) the CPU quantizes activations to 8
                // bits per block (integer dot products; the GPU keeps them f32): relative
                // error up to ~1/254 per value, measured 3.7e-3 here, so 2e-2 there. Above,
                // a CPU with AMX rounds activations and dequantized weights to bf16 (2^-8
                // each, relative RMS about 2^-8 over a sum of random-signed products), 2e-2
                // as well; otherwise f32/f16 rounding only.
                let kernel = blip2_kernels::quant_kernel(
                    blip2_kernels::isa(),
                    blip2_kernels::QuantPath::Auto,
                    m,
                );
                let tol = if kernel != blip2_kernels::QuantKernel::Dequantized {
                    2e-2
                } else if xdt == DType::F16 {
                    1e-3
                } else {
                    1e-5
                };
                let e = rel_err(&run(dev, &wg), &run(&cpu, &wc));
                assert!(
                    e < tol,
                    "{wdt} linear {m}x{k}x{n} x={xdt}: GPU vs CPU {e:e}"
                );
            }
        }
    }
}

#[test]
fn quantized_linear_matches_the_cpu_backend() {
    let Some(dev) = gpu() else { return };
    let mut rng = Rng::new(24);
    cpu_parity(&dev, &mut rng, &SIZES);
}

#[test]
fn quantized_weights_in_row_chunks_under_a_small_binding_limit() {
    // A 4 KiB binding limit splits every weight below into row chunks (quants and scales
    // alike), on any adapter, with small tensors. K = 1 and 33 make the scale rows (2 and 4
    // bytes) set the chunk step; K = 300 has 320-byte q8 rows.
    let Some(dev) = open(GpuOptions {
        max_binding: Some(4096),
        ..GpuOptions::default()
    }) else {
        return;
    };
    let g = ctx(&dev);
    // x and the output stay within one binding (those are never split).
    let sizes = [
        (1, 1, 300),
        (3, 1, 300),
        (2, 33, 301),
        (1, 300, 129),
        (5, 100, 200),
    ];
    let before = g.stats().dispatches;
    cpu_parity(&dev, &mut Rng::new(25), &sizes);
    // Each linear above is several dispatches, one per chunk.
    let linears = (QTYPES.len() * FLOATS.len() * sizes.len()) as u64;
    assert!(
        g.stats().dispatches - before >= 2 * linears,
        "weights were not split into chunks"
    );
    let mut rng = Rng::new(26);
    for (m, k, n) in sizes {
        check_linear(&dev, &mut rng, DType::Q4, DType::F16, true, m, k, n);
    }
    // Embedding lookups in a chunked table: each id read from its own chunk, bit-identical
    // to the CPU's dequantized rows.
    for qd in QTYPES {
        let (vocab, d) = (300, 33);
        let w = rng.vec(vocab * d);
        let cpu = Tensor::quantize(&w, &[vocab, d], qd, &Device::Cpu).unwrap();
        let ids = [299u32, 0, 150, 7, 299];
        let want = ops::embedding(&cpu, &ids, DType::F32).unwrap();
        let before = g.stats().dispatches;
        let got = ops::embedding(&cpu.to_device(&dev).unwrap(), &ids, DType::F32).unwrap();
        assert!(g.stats().dispatches - before >= 3, "table was not chunked");
        assert_eq!(
            got.to_vec_f32().unwrap(),
            want.to_vec_f32().unwrap(),
            "{qd}"
        );
    }

    // q8 rows of K = 2000 are 2016 bytes: 4 rows (the chunk multiple) exceed 4 KiB. (x in
    // f16 is 4000 bytes, within the limit.)
    let x = Tensor::from_slice(&rng.vec(2000), &[1, 2000], DType::F16, &dev).unwrap();
    let w = Tensor::quantize(&rng.vec(8 * 2000), &[8, 2000], DType::Q8, &dev).unwrap();
    match ops::linear(&x, &w, None) {
        Err(Error::Limit {
            what,
            needed,
            limit,
        }) => assert!(
            what.contains("quantized linear weight") && needed > limit,
            "{what}"
        ),
        other => panic!(
            "expected Error::Limit, got {:?}",
            other.map(|t| t.shape().to_vec())
        ),
    }
}
