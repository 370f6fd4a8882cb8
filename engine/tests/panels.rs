//! f32/f16 linear weights in the CPU GEMM's panel layout (`Tensor::to_panels`): `ops::linear`
//! against f64 at decode and prefill sizes, and every other way a weight tensor can be used
//! (read-back, reshape, narrow, embedding rows, matmul, casts, a GPU upload) giving the same
//! values as the row-major tensor.

mod common;

use blip2_engine::{DType, Device, Tensor, ops};
use common::{Rng, devices, linear_ref, quantize};

/// The weights are used exactly (f16 widens exactly) and sums are f32: the bound is
/// γ_{k+1} ≤ 2·(k+1)·2^-24 of Σ|x·w| + |b|, on every path (m ≤ 8 and the blocked GEMM).
#[test]
fn linear_with_panel_weights_matches_f64() {
    let mut rng = Rng::new(21);
    let (k, n) = (300, 45);
    for dtype in [DType::F32, DType::F16] {
        for m in [1, 2, 5, 8, 9, 20, 70] {
            let x = rng.vec(m * k, -1.0, 1.0);
            let w = quantize(&rng.vec(n * k, -1.0, 1.0), dtype);
            let b = rng.vec(n, -1.0, 1.0);
            let (r, a) = linear_ref(&x, &w, Some(&b), m, k, n);
            let xt = Tensor::from_slice(&x, &[m, k], DType::F32, &Device::Cpu).unwrap();
            let plain = Tensor::from_slice(&w, &[n, k], dtype, &Device::Cpu).unwrap();
            let wt = plain.to_panels().unwrap();
            assert!(wt.is_panels() && !plain.is_panels());
            assert_eq!((wt.dtype(), wt.shape()), (dtype, &[n, k][..]));
            let bt = Tensor::from_slice(&b, &[n], DType::F32, &Device::Cpu).unwrap();
            let got = ops::linear(&xt, &wt, Some(&bt))
                .unwrap()
                .to_vec_f32()
                .unwrap();
            let tol = 2.0 * (k + 1) as f64 * 2f64.powi(-24);
            for (i, ((&g, &e), &s)) in got.iter().zip(&r).zip(&a).enumerate() {
                assert!(
                    (g as f64 - e).abs() <= tol * s,
                    "{dtype} m={m}: element {i}: {g} vs {e}"
                );
            }
        }
    }
}

/// Outside `linear` a panel tensor behaves as its row-major self, bit for bit.
#[test]
fn panel_tensors_read_back_as_rows_everywhere() {
    let mut rng = Rng::new(22);
    let (n, k) = (37, 19);
    for dtype in [DType::F32, DType::F16] {
        let w = quantize(&rng.vec(n * k, -2.0, 2.0), dtype);
        let plain = Tensor::from_slice(&w, &[n, k], dtype, &Device::Cpu).unwrap();
        let p = plain.to_panels().unwrap();
        assert_eq!(p.to_vec_f32().unwrap(), w, "{dtype} read-back");
        assert!(p.size_in_bytes() >= plain.size_in_bytes());
        // A reshape that moves the last dim goes back to rows; one that keeps it stays.
        let flat = p.reshape(&[n * k]).unwrap();
        assert!(!flat.is_panels());
        assert_eq!(flat.to_vec_f32().unwrap(), w);
        assert!(p.reshape(&[1, n, k]).unwrap().is_panels());
        let rows = ops::narrow(&p, 0, 3, 5).unwrap().to_vec_f32().unwrap();
        assert_eq!(rows, w[3 * k..8 * k], "{dtype} narrow");
        let e = ops::embedding(&p, &[36, 0, 31, 32], DType::F32)
            .unwrap()
            .to_vec_f32()
            .unwrap();
        for (i, &id) in [36usize, 0, 31, 32].iter().enumerate() {
            assert_eq!(
                e[i * k..(i + 1) * k],
                w[id * k..(id + 1) * k],
                "{dtype} row {id}"
            );
        }
        let x = Tensor::from_slice(
            &rng.vec(3 * k, -1.0, 1.0),
            &[3, k],
            DType::F32,
            &Device::Cpu,
        )
        .unwrap();
        let via_matmul = ops::matmul(&x, &p, true).unwrap().to_vec_f32().unwrap();
        let via_plain = ops::matmul(&x, &plain, true).unwrap().to_vec_f32().unwrap();
        assert_eq!(via_matmul, via_plain, "{dtype} matmul unpacks");
        let cast = ops::cast(&p, DType::F32).unwrap();
        assert_eq!(cast.to_vec_f32().unwrap(), w);
        for dev in devices() {
            let moved = p.to_device(&dev).unwrap();
            assert!(!moved.is_panels() || matches!(dev, Device::Cpu));
            assert_eq!(moved.to_vec_f32().unwrap(), w, "{dtype} on {dev:?}");
        }
    }
}

/// Stacking panel weights by rows (fused q/k/v at load) keeps them in panels, with the rows
/// of the parts in order: by concatenating the buffers when every part but the last fills
/// whole panels of 32 rows, else (a padded panel in the middle, interleaved gate/up rows) by
/// stacking the rows and packing again. A linear over the stack gives each part's linear
/// within the f32 bound of `linear_with_panel_weights_matches_f64`, the sums' order being
/// the only difference.
#[test]
fn stacked_panel_weights_stay_panels_with_the_parts_rows() {
    let mut rng = Rng::new(23);
    let k = 41;
    for dtype in [DType::F32, DType::F16] {
        for rows in [&[32usize, 64, 7][..], &[33, 7], &[5, 5, 5], &[32, 32]] {
            let ws: Vec<Vec<f32>> = rows
                .iter()
                .map(|&r| quantize(&rng.vec(r * k, -1.0, 1.0), dtype))
                .collect();
            let parts: Vec<Tensor> = ws
                .iter()
                .zip(rows)
                .map(|(w, &r)| {
                    Tensor::from_slice(w, &[r, k], dtype, &Device::Cpu)
                        .unwrap()
                        .to_panels()
                        .unwrap()
                })
                .collect();
            let refs: Vec<&Tensor> = parts.iter().collect();
            let s = ops::stack_rows(&refs, false).unwrap();
            let total: usize = rows.iter().sum();
            assert!(s.is_panels(), "{dtype} {rows:?}");
            assert_eq!((s.dtype(), s.shape()), (dtype, &[total, k][..]));
            assert_eq!(s.to_vec_f32().unwrap(), ws.concat(), "{dtype} {rows:?}");
            let x = rng.vec(k, -1.0, 1.0);
            let xt = Tensor::from_slice(&x, &[1, k], DType::F32, &Device::Cpu).unwrap();
            let got = ops::linear(&xt, &s, None).unwrap().to_vec_f32().unwrap();
            let (r, a) = linear_ref(&x, &ws.concat(), None, 1, k, total);
            let tol = 2.0 * (k + 1) as f64 * 2f64.powi(-24);
            for (i, ((&g, &e), &sum)) in got.iter().zip(&r).zip(&a).enumerate() {
                assert!(
                    (g as f64 - e).abs() <= tol * sum,
                    "{dtype} {rows:?} column {i}"
                );
            }
            if rows.iter().all(|&r| r == rows[0]) {
                let inter = ops::stack_rows(&refs, true).unwrap();
                assert!(inter.is_panels());
                let want: Vec<f32> = (0..rows[0])
                    .flat_map(|i| ws.iter().flat_map(move |w| w[i * k..(i + 1) * k].to_vec()))
                    .collect();
                assert_eq!(inter.to_vec_f32().unwrap(), want, "interleaved {dtype}");
            }
        }
    }
}

/// Only f32/f16 CPU matrices are packed; everything else comes back unchanged.
#[test]
fn to_panels_leaves_other_tensors_alone() {
    let v = Tensor::from_slice(&[1.0, 2.0, 3.0], &[3], DType::F32, &Device::Cpu).unwrap();
    assert!(!v.to_panels().unwrap().is_panels());
    let vals: Vec<f32> = (0..64).map(|i| i as f32 / 10.0).collect();
    let q = Tensor::from_slice(&vals, &[2, 32], DType::Q8, &Device::Cpu).unwrap();
    let qp = q.to_panels().unwrap();
    assert!(!qp.is_panels() && qp.dtype() == DType::Q8);
    for dev in devices() {
        let t = Tensor::from_slice(&vals, &[2, 32], DType::F16, &dev).unwrap();
        let tp = t.to_panels().unwrap();
        assert_eq!(tp.is_panels(), matches!(dev, Device::Cpu));
        // Packing twice is packing once.
        assert_eq!(tp.to_panels().unwrap().is_panels(), tp.is_panels());
    }
}

/// Loading straight into panels (`Tensor::panels_from_bytes`: converted as packed, one
/// allocation) gives the tensor `from_bytes` + `to_panels` gives: the same values read back
/// and the same `linear` outputs bit for bit, for every stored dtype into f32 and f16, at odd
/// shapes (a ragged last panel, K not a multiple of the 64-step runs), from aligned and
/// unaligned bytes; rank-1 tensors and other dtypes take the plain path; a wrong byte count
/// is a typed error.
#[test]
fn panels_from_bytes_equal_from_bytes_then_to_panels() {
    use blip2_engine::StoredDType;
    let mut rng = Rng::new(5);
    for (rows, cols) in [(1, 1), (33, 70), (45, 300), (64, 129)] {
        let vals = rng.vec(rows * cols, -3.0, 3.0);
        for stored in [StoredDType::F32, StoredDType::F16, StoredDType::BF16] {
            let raw: Vec<u8> = match stored {
                StoredDType::F32 => vals.iter().flat_map(|v| v.to_le_bytes()).collect(),
                StoredDType::F16 => vals
                    .iter()
                    .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                    .collect(),
                StoredDType::BF16 => vals
                    .iter()
                    .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
                    .collect(),
            };
            // Offset 0 (aligned) and 1 (unaligned: read through a copy).
            let mut buf = vec![0u8; raw.len() + 1];
            for off in [0, 1] {
                buf[off..off + raw.len()].copy_from_slice(&raw);
                let bytes = &buf[off..off + raw.len()];
                for dtype in [DType::F32, DType::F16] {
                    let shape = [rows, cols];
                    let want = Tensor::from_bytes(bytes, stored, &shape, dtype, &Device::Cpu)
                        .unwrap()
                        .to_panels()
                        .unwrap();
                    let got = Tensor::panels_from_bytes(bytes, stored, &shape, dtype).unwrap();
                    let case = format!("{rows}x{cols} {stored:?} -> {dtype} at offset {off}");
                    assert!(got.is_panels(), "{case}");
                    assert_eq!((got.dtype(), got.shape()), (dtype, &shape[..]), "{case}");
                    let bits = |t: &Tensor| -> Vec<u32> {
                        t.to_vec_f32()
                            .unwrap()
                            .iter()
                            .map(|v| v.to_bits())
                            .collect()
                    };
                    assert_eq!(bits(&got), bits(&want), "{case}");
                    let m = 5;
                    let x = Tensor::from_slice(
                        &rng.vec(m * cols, -1.0, 1.0),
                        &[m, cols],
                        DType::F32,
                        &Device::Cpu,
                    )
                    .unwrap();
                    let y = |w: &Tensor| bits(&ops::linear(&x, w, None).unwrap());
                    assert_eq!(y(&got), y(&want), "{case}: linear");
                }
            }
        }
    }
    // Rank 1: stays row-major, as to_panels leaves it.
    let b: Vec<u8> = [1.0f32, 2.0, 3.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let t = Tensor::panels_from_bytes(&b, StoredDType::F32, &[3], DType::F32).unwrap();
    assert!(!t.is_panels());
    assert_eq!(t.to_vec_f32().unwrap(), vec![1.0, 2.0, 3.0]);
    // Three f32 elements do not fill a 2 x 2 matrix.
    let e = Tensor::panels_from_bytes(&b, StoredDType::F32, &[2, 2], DType::F32).unwrap_err();
    assert!(e.to_string().contains("12 bytes given for 4"), "{e}");
}
