//! Quantized tensors (Q8/Q4) through the engine on every device: `ops::linear` against f64 on
//! the dequantized weights, embedding lookups in quantized tables, the dtype guard of the
//! other ops, casts and device moves.

mod common;

use blip2_engine::{DType, Device, Error, QFormat, QuantBytes, Tensor, ops};
use blip2_kernels::QuantKernel;
use common::{Rng, devices, linear_ref};

const QDTYPES: [DType; 2] = [DType::Q8, DType::Q4];

/// Where the CPU kernel quantizes each activation row to 8 bits per block of 32 (integer
/// dot products: m ≤ 4, and up to 16 rows with AMX-INT8), element (i, j) may move by
/// Σ_p |w[j,p]|·d_b/2 with d_b = max|x| of p's block / 127 (round to nearest). Returns that
/// per-element bound (zeros where activations are not quantized).
fn activation_rounding(x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f64> {
    let mut out = vec![0.0; m * n];
    if !common::cpu_quant_kernel(m).int8_activations() {
        return out;
    }
    for i in 0..m {
        let xr = &x[i * k..(i + 1) * k];
        let half_step: Vec<f64> = xr
            .chunks(32)
            .map(|b| b.iter().fold(0f32, |a, v| a.max(v.abs())) as f64 / 127.0 / 2.0)
            .collect();
        for j in 0..n {
            out[i * n + j] = (0..k)
                .map(|p| (w[j * k + p] as f64).abs() * half_step[p / 32])
                .sum::<f64>()
                * 1.001;
        }
    }
    out
}

#[test]
fn linear_with_quantized_weights_matches_dequantized_math() {
    // Tolerance: against f64 on the dequantized W, per element |y − ref| ≤ γ·Σ|x·w| with
    // γ = (k + 2 + blocks)·u·1.01 (f32 accumulation of k products, the bias, one scale multiply
    // per block; u = 2⁻²⁴), plus, for m ≤ 4, the 8-bit activation rounding of the integer
    // path (`activation_rounding`: m ≤ 4, up to 16 rows with AMX-INT8), plus for f16
    // activations the output's f16 rounding 2⁻¹¹·|ref|, plus where a CPU with AMX takes its
    // bf16 tiles the rounding of both operands (2·2⁻⁸ + 2⁻¹⁶)·Σ|x·w|.
    let shapes = [
        (1, 1, 1),
        (1, 33, 5),
        (2, 100, 9),
        (4, 257, 66),
        (7, 31, 7),
        (19, 64, 130),
    ];
    let mut rng = Rng::new(3);
    for dev in devices() {
        for &(m, k, n) in &shapes {
            let x = rng.vec(m * k, -1.0, 1.0);
            let w = rng.vec(n * k, -0.5, 0.5);
            let b = rng.vec(n, -1.0, 1.0);
            for qd in QDTYPES {
                let wt = Tensor::quantize(&w, &[n, k], qd, &dev).unwrap();
                assert_eq!(wt.dtype(), qd);
                let wd = wt.to_vec_f32().unwrap();
                for xdt in [DType::F32, DType::F16] {
                    let xs: Vec<f32> = common::quantize(&x, xdt);
                    let xt = Tensor::from_slice(&xs, &[m, k], xdt, &dev).unwrap();
                    let bt = Tensor::from_slice(&b, &[n], DType::F32, &dev).unwrap();
                    let y = ops::linear(&xt, &wt, Some(&bt))
                        .unwrap_or_else(|e| panic!("{qd} on {dev:?}: {e}"));
                    assert_eq!(y.shape(), &[m, n]);
                    assert_eq!(y.dtype(), xdt);
                    let got = y.to_vec_f32().unwrap();
                    let (r, abs) = linear_ref(&xs, &wd, Some(&b), m, k, n);
                    // The activation rounding applies where the backend quantizes
                    // activations; its bound is an upper limit, so it is used on every device.
                    let act = activation_rounding(&xs, &wd, m, k, n);
                    let g =
                        (k + 2 + QFormat::row_blocks(k)) as f64 * f32::EPSILON as f64 / 2.0 * 1.01;
                    let h = if xdt == DType::F16 { 1.0 / 2048.0 } else { 0.0 };
                    // The CPU's AMX and AVX512-BF16 paths round both operands to bf16.
                    let bf16 = common::cpu_quant_kernel(m).bf16_operands();
                    let bf = if !dev.is_gpu() && bf16 {
                        2.0 * 2f64.powi(-8) + 2f64.powi(-16)
                    } else {
                        0.0
                    };
                    for (e, (((&v, &rf), &sa), &ae)) in
                        got.iter().zip(&r).zip(&abs).zip(&act).enumerate()
                    {
                        let bound = (g + bf) * sa + ae + h * (rf.abs() + ae) + 1e-30;
                        assert!(
                            (v as f64 - rf).abs() <= bound,
                            "{qd} x {xdt} on {dev:?} ({m},{k},{n}) elem {e}: {v} vs {rf} (bound {bound:e})"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn embedding_from_a_quantized_table_is_its_dequantized_rows() {
    // Dequantization is d·q in f32 on every backend, so the rows are bit-identical to the
    // CPU's dequantized table (no tolerance); f16 outputs are those values rounded to f16.
    // Sizes: one padded block, a padded last block, whole blocks; ids repeat and include the
    // last row.
    let mut rng = Rng::new(31);
    for dev in devices() {
        for qd in QDTYPES {
            for (vocab, d) in [(3usize, 1usize), (37, 70), (9, 64)] {
                let w = rng.vec(vocab * d, -2.0, 2.0);
                let table = Tensor::quantize(&w, &[vocab, d], qd, &Device::Cpu).unwrap();
                let deq = table.to_vec_f32().unwrap();
                let ids = [vocab as u32 - 1, 0, 1 % vocab as u32, vocab as u32 - 1];
                let want: Vec<f32> = ids
                    .iter()
                    .flat_map(|&i| deq[i as usize * d..(i as usize + 1) * d].to_vec())
                    .collect();
                let t = table.to_device(&dev).unwrap();
                let got = ops::embedding(&t, &ids, DType::F32).unwrap();
                assert_eq!(got.shape(), &[ids.len(), d]);
                assert_eq!(
                    got.to_vec_f32().unwrap(),
                    want,
                    "{qd} {vocab}x{d} on {dev:?}"
                );
                let h = ops::embedding(&t, &ids, DType::F16).unwrap();
                assert_eq!(h.dtype(), DType::F16);
                let want16: Vec<f32> = want
                    .iter()
                    .map(|&v| half::f16::from_f32(v).to_f32())
                    .collect();
                assert_eq!(h.to_vec_f32().unwrap(), want16, "{qd} f16 on {dev:?}");
            }
        }
    }
}

#[test]
fn quantized_tensors_are_rejected_outside_linear() {
    let dev = Device::Cpu;
    let q = Tensor::quantize(&[0.5; 64], &[2, 32], DType::Q4, &dev).unwrap();
    let f = Tensor::from_slice(&[0.5; 64], &[2, 32], DType::F32, &dev).unwrap();
    let expect_dtype = |r: blip2_engine::Result<Tensor>, what: &str| match r {
        Err(Error::DType {
            found: DType::Q4, ..
        }) => {}
        other => panic!("{what}: expected a dtype error, got {other:?}"),
    };
    expect_dtype(ops::add(&q, &f), "add");
    expect_dtype(ops::add(&f, &q), "add operand b");
    expect_dtype(ops::gelu(&q), "gelu");
    expect_dtype(ops::matmul(&f, &q, true), "matmul");
    expect_dtype(ops::softmax(&q, None), "softmax");
    expect_dtype(ops::narrow(&q, 0, 0, 1), "narrow");
    expect_dtype(ops::concat(&[&q, &q], 0), "concat");
    // A quantized table is gathered (see below), but never into a quantized output.
    assert!(matches!(
        ops::embedding(&q, &[0], DType::Q8),
        Err(Error::DType {
            found: DType::Q8,
            ..
        })
    ));
    // As the activation of linear, too.
    expect_dtype(ops::linear(&q, &f, None), "linear x");
    // Quantizing needs a rank ≥ 1 shape whose size matches the data.
    assert!(matches!(
        Tensor::quantize(&[1.0; 5], &[2, 3], DType::Q8, &dev),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(
        Tensor::quantize(&[1.0; 6], &[2, 3], DType::F16, &dev),
        Err(Error::DType { .. })
    ));
}

#[test]
fn from_quantized_checks_sizes_and_uses_shared_bytes_in_place() {
    let dev = Device::Cpu;
    let w: Vec<f32> = (0..3 * 40).map(|i| (i as f32 * 0.37).sin()).collect();
    let t = Tensor::quantize(&w, &[3, 40], DType::Q8, &dev).unwrap();
    let (f, qs, sc) = t.quantized_parts().unwrap();
    assert_eq!(f, QFormat::Q8);
    assert_eq!(qs.len(), 3 * 64); // 40 values pad to 2 blocks of 32 bytes
    assert_eq!(sc.len(), 3 * 2);
    assert_eq!(t.size_in_bytes(), 3 * 64 + 3 * 2 * 2);
    let scale_bytes: Vec<u8> = sc.iter().flat_map(|s| s.to_bits().to_le_bytes()).collect();
    // A shared buffer with the quants in its middle.
    let mut buf = vec![0xAAu8; 7];
    buf.extend_from_slice(qs);
    buf.extend_from_slice(&[0xAA; 5]);
    let owner: std::sync::Arc<dyn AsRef<[u8]> + Send + Sync> = std::sync::Arc::new(buf);
    let shared = QuantBytes::Shared {
        owner: owner.clone(),
        start: 7,
        len: qs.len(),
    };
    let u = Tensor::from_quantized(DType::Q8, &[3, 40], shared, &scale_bytes, &dev).unwrap();
    let (_, uqs, _) = u.quantized_parts().unwrap();
    assert_eq!(
        uqs.as_ptr(),
        (*owner).as_ref()[7..].as_ptr(),
        "bytes used in place"
    );
    assert_eq!(u.to_vec_f32().unwrap(), t.to_vec_f32().unwrap());
    // Wrong sizes and out-of-range views are shape errors naming the expected sizes.
    let short = QuantBytes::Owned(qs[..qs.len() - 1].to_vec());
    let e = Tensor::from_quantized(DType::Q8, &[3, 40], short, &scale_bytes, &dev).unwrap_err();
    assert!(e.to_string().contains("192 quant bytes"), "{e}");
    let e = Tensor::from_quantized(
        DType::Q4,
        &[3, 40],
        QuantBytes::Owned(qs.to_vec()),
        &scale_bytes,
        &dev,
    )
    .unwrap_err();
    assert!(e.to_string().contains("96 quant bytes"), "{e}");
    let oob = QuantBytes::Shared {
        owner,
        start: 100,
        len: qs.len(),
    };
    assert!(Tensor::from_quantized(DType::Q8, &[3, 40], oob, &scale_bytes, &dev).is_err());
}

#[test]
fn casts_and_device_moves_keep_quantized_values() {
    let mut rng = Rng::new(9);
    let w = rng.vec(5 * 70, -1.0, 1.0);
    for dev in devices() {
        for qd in QDTYPES {
            let f = Tensor::from_slice(&w, &[5, 70], DType::F32, &dev).unwrap();
            let q = ops::cast(&f, qd).unwrap();
            assert_eq!(q.dtype(), qd);
            let direct = Tensor::quantize(&w, &[5, 70], qd, &Device::Cpu).unwrap();
            let dq = q.to_vec_f32().unwrap();
            assert_eq!(dq, direct.to_vec_f32().unwrap(), "{qd} on {dev:?}");
            // Back to f32 is the dequantized values; CPU -> device -> CPU keeps the bytes.
            assert_eq!(ops::cast(&q, DType::F32).unwrap().to_vec_f32().unwrap(), dq);
            let back = direct
                .to_device(&dev)
                .unwrap()
                .to_device(&Device::Cpu)
                .unwrap();
            assert_eq!(
                back.quantized_parts().map(|p| p.1.to_vec()),
                direct.quantized_parts().map(|p| p.1.to_vec())
            );
            assert_eq!(
                back.quantized_parts().map(|p| p.2.to_vec()),
                direct.quantized_parts().map(|p| p.2.to_vec())
            );
        }
    }
}
