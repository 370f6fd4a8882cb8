//! Packed bf16 weights (`DType::BF16`) through the engine: `ops::linear` against f64 on the
//! bf16-rounded weights at decode and prefill sizes (the AMX path where the CPU has it), the
//! dtype guard of the other ops, casts, read-back, and the GPU's typed refusal.

mod common;

use blip2_engine::{DType, Device, Error, Tensor, ops};
use common::{Rng, devices, linear_ref};

fn bf16_round(v: &[f32]) -> Vec<f32> {
    v.iter()
        .map(|&x| half::bf16::from_f32(x).to_f32())
        .collect()
}

/// The weights are exact bf16 values; the activations are f32 (m ≤ 8 and machines without
/// AMX) or rounded to bf16 (AMX, m ≥ 5): each product is then off by at most 2^-8 of its
/// magnitude (bf16's unit roundoff), and the f32 sums add n·u. Bound: (2^-8 + 2·k·2^-24)·Σ|x·w|.
#[test]
fn linear_with_bf16_weights_matches_f64() {
    let mut rng = Rng::new(11);
    let (k, n) = (77, 45);
    for m in [1, 3, 8, 20, 70] {
        let x = rng.vec(m * k, -1.0, 1.0);
        let w = rng.vec(n * k, -1.0, 1.0);
        let b = rng.vec(n, -1.0, 1.0);
        let (r, a) = linear_ref(&x, &bf16_round(&w), Some(&b), m, k, n);
        let xt = Tensor::from_slice(&x, &[m, k], DType::F32, &Device::Cpu).unwrap();
        let wt = Tensor::from_slice(&w, &[n, k], DType::BF16, &Device::Cpu).unwrap();
        assert_eq!(wt.dtype(), DType::BF16);
        let bt = Tensor::from_slice(&b, &[n], DType::F32, &Device::Cpu).unwrap();
        let y = ops::linear(&xt, &wt, Some(&bt)).unwrap();
        assert_eq!(y.shape(), &[m, n]);
        let got = y.to_vec_f32().unwrap();
        let tol = 2f64.powi(-8) + 2.0 * k as f64 * 2f64.powi(-24);
        for (idx, ((&g, &e), &s)) in got.iter().zip(&r).zip(&a).enumerate() {
            assert!(
                (g as f64 - e).abs() <= tol * s,
                "m {m} element {idx}: {g} vs {e} (bound {})",
                tol * s
            );
        }
    }
}

#[test]
fn read_back_casts_and_sizes() {
    let mut rng = Rng::new(12);
    let (rows, cols) = (33, 50);
    let v = rng.vec(rows * cols, -4.0, 4.0);
    let t = Tensor::from_slice(&v, &[rows, cols], DType::BF16, &Device::Cpu).unwrap();
    let want = bf16_round(&v);
    assert_eq!(t.to_vec_f32().unwrap(), want);
    // Padding included: 64 rows × 64 K.
    assert_eq!(t.size_in_bytes(), 64 * 64 * 2);
    let f = ops::cast(&t, DType::F32).unwrap();
    assert_eq!(f.dtype(), DType::F32);
    assert_eq!(f.to_vec_f32().unwrap(), want);
    let back = ops::cast(&f, DType::BF16).unwrap();
    assert_eq!(back.to_vec_f32().unwrap(), want);
    let z = Tensor::zeros(&[3, 5], DType::BF16, &Device::Cpu).unwrap();
    assert_eq!(z.to_vec_f32().unwrap(), vec![0.0; 15]);
}

#[test]
fn other_ops_refuse_bf16_operands() {
    let w = Tensor::from_slice(&[1.0; 12], &[3, 4], DType::BF16, &Device::Cpu).unwrap();
    let x = Tensor::from_slice(&[1.0; 12], &[3, 4], DType::F32, &Device::Cpu).unwrap();
    match ops::add(&x, &w) {
        Err(Error::DType { op, found, .. }) => {
            assert!(op.contains("add"), "{op}");
            assert_eq!(found, DType::BF16);
        }
        other => panic!("add with a bf16 operand: {other:?}"),
    }
    assert!(matches!(
        ops::matmul(&x, &w, true),
        Err(Error::DType { .. })
    ));
    // The bias of a linear layer must be float too.
    let wf = Tensor::from_slice(&[1.0; 12], &[3, 4], DType::F32, &Device::Cpu).unwrap();
    let bb = Tensor::from_slice(&[1.0; 3], &[1, 3], DType::BF16, &Device::Cpu).unwrap();
    let bb = bb.reshape(&[3]).unwrap();
    assert!(matches!(
        ops::linear(&x, &wf, Some(&bb)),
        Err(Error::DType { .. })
    ));
}

/// bf16 is a CPU format: every GPU device refuses it with a typed error naming the fix.
#[test]
fn gpu_refuses_bf16_with_a_typed_error() {
    for dev in devices().into_iter().filter(|d| !matches!(d, Device::Cpu)) {
        match Tensor::from_slice(&[1.0; 8], &[2, 4], DType::BF16, &dev) {
            Err(Error::DType {
                found, expected, ..
            }) => {
                assert_eq!(found, DType::BF16);
                assert!(expected.contains("CPU"), "{expected}");
            }
            other => panic!("bf16 on {dev:?}: {other:?}"),
        }
        let cpu = Tensor::from_slice(&[1.0; 8], &[2, 4], DType::BF16, &Device::Cpu).unwrap();
        assert!(matches!(cpu.to_device(&dev), Err(Error::DType { .. })));
    }
}

#[test]
fn packed_tensors_keep_their_last_dim_on_reshape() {
    for dtype in [DType::BF16, DType::Q8] {
        let t = Tensor::from_slice(&[0.5; 64], &[2, 32], dtype, &Device::Cpu).unwrap();
        assert!(t.reshape(&[1, 2, 32]).is_ok());
        assert!(
            matches!(t.reshape(&[64]), Err(Error::Shape { .. })),
            "{dtype}"
        );
        assert!(
            matches!(t.reshape(&[4, 16]), Err(Error::Shape { .. })),
            "{dtype}"
        );
    }
}
