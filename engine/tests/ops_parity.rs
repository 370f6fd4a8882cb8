//! Every op × backend (CPU, GPU adapter) × storage dtype (f32, f16) against an f64
//! reference on seeded random inputs with awkward sizes. Tolerances: see `common::tol`.

mod common;

use blip2_engine::ops::{self, AttnOpts};
use blip2_engine::{DType, Device, Error, Tensor};
use common::*;

fn erf64(x: f64) -> f64 {
    // Abramowitz–Stegun 7.1.26 is only 1.5e-7 accurate; use a series / continued fraction
    // pair good to ~1e-15 so the reference is not the weak link.
    if x.abs() < 3.0 {
        let mut sum = x;
        let mut term = x;
        let x2 = x * x;
        for n in 1..200 {
            term *= -x2 / n as f64;
            let add = term / (2 * n + 1) as f64;
            sum += add;
            if add.abs() < 1e-17 {
                break;
            }
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    } else {
        // erfc continued fraction (Lentz) for |x| >= 3.
        let ax = x.abs();
        let mut f = 0.0;
        for n in (1..80).rev() {
            f = (n as f64 / 2.0) / (ax + f);
        }
        let erfc = (-ax * ax).exp() / std::f64::consts::PI.sqrt() / (ax + f);
        (1.0 - erfc) * x.signum()
    }
}

fn ref_linear(x: &[f64], w: &[f64], b: Option<&[f64]>, m: usize, k: usize, n: usize) -> Vec<f64> {
    let mut out = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s = b.map_or(0.0, |b| b[j]);
            for t in 0..k {
                s += x[i * k + t] * w[j * k + t];
            }
            out[i * n + j] = s;
        }
    }
    out
}

#[test]
fn linear_matches_reference() {
    // (m, k, n): GEMV rows, K not a multiple of any tile, 88-wide, 257 rows, k = 1. Every
    // matmul tile on the GPU: M16 (7), M32 (20), M64 (33, 64, 65), M128 (257: a second
    // tile of one row; 300).
    let cases = [
        (1, 257, 1000),
        (20, 45, 70),
        (300, 19, 130),
        (1, 7, 3),
        (7, 33, 13),
        (257, 88, 33),
        (33, 1, 5),
        (3, 1408, 17),
        (64, 64, 64),
        (65, 129, 67),
    ];
    for dev in devices() {
        for xd in DTYPES {
            for wd in DTYPES {
                let mut rng = Rng::new(11);
                for &(m, k, n) in &cases {
                    let (x, xv) = tensor(&mut rng, &[m, k], xd, &dev, -1.0, 1.0);
                    let (w, wv) = tensor(&mut rng, &[n, k], wd, &dev, -1.0, 1.0);
                    let (b, bv) = tensor(&mut rng, &[n], DType::F32, &dev, -1.0, 1.0);
                    let got = ops::linear(&x, &w, Some(&b)).unwrap();
                    assert_eq!(got.shape(), &[m, n]);
                    assert_eq!(got.dtype(), xd);
                    let want = ref_linear(&xv, &wv, Some(&bv), m, k, n);
                    assert_close(
                        &format!("linear {m}x{k}x{n} w={wd}"),
                        &dev,
                        xd,
                        &got.to_vec_f32().unwrap(),
                        &want,
                        tol(xd),
                    );
                    let nob = ops::linear(&x, &w, None).unwrap().to_vec_f32().unwrap();
                    assert_close(
                        "linear no bias",
                        &dev,
                        xd,
                        &nob,
                        &ref_linear(&xv, &wv, None, m, k, n),
                        tol(xd),
                    );
                }
                // Rank-3 input keeps its leading dims.
                let (x, xv) = tensor(&mut rng, &[2, 7, 33], xd, &dev, -1.0, 1.0);
                let (w, wv) = tensor(&mut rng, &[9, 33], wd, &dev, -1.0, 1.0);
                let got = ops::linear(&x, &w, None).unwrap();
                assert_eq!(got.shape(), &[2, 7, 9]);
                assert_close(
                    "linear rank 3",
                    &dev,
                    xd,
                    &got.to_vec_f32().unwrap(),
                    &ref_linear(&xv, &wv, None, 14, 33, 9),
                    tol(xd),
                );
            }
        }
    }
}

/// K = 0: x @ W^T is an empty sum, so every output row is the bias (exact).
#[test]
fn linear_with_empty_inner_dimension_is_the_bias() {
    for dev in devices() {
        let x = Tensor::zeros(&[3, 0], DType::F32, &dev).unwrap();
        let w = Tensor::zeros(&[4, 0], DType::F32, &dev).unwrap();
        let b = Tensor::from_f32(vec![1.0, -2.0, 0.5, 3.0], &[4], &dev).unwrap();
        let y = ops::linear(&x, &w, Some(&b)).unwrap();
        assert_eq!(y.shape(), &[3, 4]);
        assert_eq!(
            y.to_vec_f32().unwrap(),
            [1.0, -2.0, 0.5, 3.0].repeat(3),
            "{dev:?}"
        );
    }
}

/// Shapes whose element count overflows usize are shape errors, not wrapped products.
#[test]
fn overflowing_shapes_are_rejected() {
    let huge = [usize::MAX / 2 + 1, 2, 1];
    let err = Tensor::zeros(&huge, DType::F32, &Device::cpu()).unwrap_err();
    assert!(
        err.to_string().contains("more elements than usize"),
        "{err}"
    );
    let err = Tensor::from_bytes(
        &[0u8; 8],
        blip2_engine::StoredDType::F32,
        &huge,
        DType::F32,
        &Device::cpu(),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("more elements than usize"),
        "{err}"
    );
}

#[test]
fn linear_rejects_bad_shapes() {
    for dev in devices() {
        let x = Tensor::zeros(&[3, 8], DType::F32, &dev).unwrap();
        let w = Tensor::zeros(&[4, 7], DType::F32, &dev).unwrap();
        let err = ops::linear(&x, &w, None).unwrap_err().to_string();
        assert!(err.contains("linear") && err.contains("[4, 7]"), "{err}");
        let w = Tensor::zeros(&[4, 8], DType::F32, &dev).unwrap();
        let b = Tensor::zeros(&[5], DType::F32, &dev).unwrap();
        assert!(ops::linear(&x, &w, Some(&b)).is_err());
    }
}

#[test]
fn matmul_batched_matches_reference() {
    for dev in devices() {
        for dt in DTYPES {
            let mut rng = Rng::new(12);
            for &(batch, m, k, n) in &[
                (6, 7, 33, 9),
                (1, 1, 88, 257),
                (2, 257, 17, 3),
                (3, 5, 1, 4),
                (2, 30, 21, 65),
                (1, 385, 12, 70),
            ] {
                for b_trans in [false, true] {
                    let (a, av) = tensor(&mut rng, &[batch, m, k], dt, &dev, -1.0, 1.0);
                    let bshape = if b_trans {
                        [batch, n, k]
                    } else {
                        [batch, k, n]
                    };
                    let (b, bv) = tensor(&mut rng, &bshape, dt, &dev, -1.0, 1.0);
                    let got = ops::matmul(&a, &b, b_trans).unwrap();
                    assert_eq!(got.shape(), &[batch, m, n]);
                    let mut want = Vec::new();
                    for i in 0..batch {
                        let ai = &av[i * m * k..(i + 1) * m * k];
                        let bi = &bv[i * k * n..(i + 1) * k * n];
                        // Reference always in [n, k] (transposed) layout.
                        let bt: Vec<f64> = if b_trans {
                            bi.to_vec()
                        } else {
                            (0..n)
                                .flat_map(|j| (0..k).map(move |t| bi[t * n + j]))
                                .collect()
                        };
                        want.extend(ref_linear(ai, &bt, None, m, k, n));
                    }
                    assert_close(
                        &format!("matmul b{batch} {m}x{k}x{n} t={b_trans}"),
                        &dev,
                        dt,
                        &got.to_vec_f32().unwrap(),
                        &want,
                        tol(dt),
                    );
                }
            }
            // A shared rank-2 b applies to every batch.
            let (a, av) = tensor(&mut rng, &[2, 3, 5, 7], dt, &dev, -1.0, 1.0);
            let (b, bv) = tensor(&mut rng, &[4, 7], dt, &dev, -1.0, 1.0);
            let got = ops::matmul(&a, &b, true).unwrap();
            assert_eq!(got.shape(), &[2, 3, 5, 4]);
            assert_close(
                "matmul shared b",
                &dev,
                dt,
                &got.to_vec_f32().unwrap(),
                &ref_linear(&av, &bv, None, 30, 7, 4),
                tol(dt),
            );
        }
    }
}

fn ref_norm(x: &[f64], w: &[f64], b: Option<&[f64]>, cols: usize, eps: f64, rms: bool) -> Vec<f64> {
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks(cols) {
        let mean = if rms {
            0.0
        } else {
            row.iter().sum::<f64>() / cols as f64
        };
        let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / cols as f64;
        let inv = 1.0 / (var + eps).sqrt();
        for (j, v) in row.iter().enumerate() {
            out.push((v - mean) * inv * w[j] + b.map_or(0.0, |b| b[j]));
        }
    }
    out
}

#[test]
fn norms_match_reference() {
    for dev in devices() {
        for dt in DTYPES {
            let mut rng = Rng::new(13);
            for &(rows, cols, eps) in &[
                (257, 88, 1e-6f32),
                (7, 1408, 1e-12),
                (1, 1, 1e-5),
                (3, 33, 1e-6),
            ] {
                // An offset mean checks that the variance is computed around the mean.
                let (x, xv) = tensor(&mut rng, &[rows, cols], dt, &dev, 2.0, 5.0);
                let (w, wv) = tensor(&mut rng, &[cols], dt, &dev, 0.5, 1.5);
                let (b, bv) = tensor(&mut rng, &[cols], DType::F32, &dev, -1.0, 1.0);
                let got = ops::layer_norm(&x, &w, &b, eps)
                    .unwrap()
                    .to_vec_f32()
                    .unwrap();
                let want = ref_norm(&xv, &wv, Some(&bv), cols, eps as f64, false);
                // cols = 1: the normalised value is 0/sqrt(eps) = 0 exactly, out = bias.
                assert_close(
                    &format!("layer_norm {rows}x{cols}"),
                    &dev,
                    dt,
                    &got,
                    &want,
                    tol(dt),
                );
                let got = ops::rms_norm(&x, &w, eps).unwrap().to_vec_f32().unwrap();
                let want = ref_norm(&xv, &wv, None, cols, eps as f64, true);
                assert_close(
                    &format!("rms_norm {rows}x{cols}"),
                    &dev,
                    dt,
                    &got,
                    &want,
                    tol(dt),
                );
            }
        }
    }
}

fn ref_softmax(x: &mut [f64], cols: usize) {
    for row in x.chunks_mut(cols) {
        let mx = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let s: f64 = row.iter().map(|v| (v - mx).exp()).sum();
        row.iter_mut().for_each(|v| *v = (*v - mx).exp() / s);
    }
}

#[test]
fn softmax_with_masks_matches_reference() {
    for dev in devices() {
        for dt in DTYPES {
            let mut rng = Rng::new(14);
            // Plain rows of awkward widths.
            for &(rows, cols) in &[(1, 1), (7, 33), (257, 257), (2, 1000)] {
                let (x, xv) = tensor(&mut rng, &[rows, cols], dt, &dev, -8.0, 8.0);
                let mut want = xv.clone();
                ref_softmax(&mut want, cols);
                let got = ops::softmax(&x, None).unwrap().to_vec_f32().unwrap();
                assert_close(
                    &format!("softmax {rows}x{cols}"),
                    &dev,
                    dt,
                    &got,
                    &want,
                    tol(dt),
                );
            }
            // Padding mask [B,1,1,L] over scores [B,H,Lq,L], with one batch fully masked, and
            // a causal [Lq, L] mask.
            let (b, h, lq, l) = (2, 3, 7, 33);
            let (x, xv) = tensor(&mut rng, &[b, h, lq, l], dt, &dev, -4.0, 4.0);
            let mut pad = vec![0f32; b * l];
            // Batch 0: keys 20.. padded; batch 1: every key padded.
            pad[20..].fill(f32::MIN);
            let mask = Tensor::from_f32(pad.clone(), &[b, 1, 1, l], &dev).unwrap();
            let got = ops::softmax(&x, Some(&mask)).unwrap().to_vec_f32().unwrap();
            let mut want = xv.clone();
            for (r, row) in want.chunks_mut(l).enumerate() {
                let bi = r / (h * lq);
                for j in 0..l {
                    row[j] += pad[bi * l + j] as f64;
                }
            }
            ref_softmax(&mut want, l);
            assert_close("softmax padding mask", &dev, dt, &got, &want, tol(dt));
            // The fully masked batch: finite, uniform weights (what HF's finfo.min masks give).
            assert!(
                got[h * lq * l..]
                    .iter()
                    .all(|&p| (p - 1.0 / l as f32).abs() < 1e-3)
            );
            let causal: Vec<f32> = (0..lq * l)
                .map(|i| {
                    if i % l > i / l + (l - lq) {
                        f32::MIN
                    } else {
                        0.0
                    }
                })
                .collect();
            let cm = Tensor::from_f32(causal.clone(), &[lq, l], &dev).unwrap();
            let got = ops::softmax(&x, Some(&cm)).unwrap().to_vec_f32().unwrap();
            let mut want = xv.clone();
            for (r, row) in want.chunks_mut(l).enumerate() {
                let qi = r % lq;
                for j in 0..l {
                    row[j] += causal[qi * l + j] as f64;
                }
            }
            ref_softmax(&mut want, l);
            assert_close("softmax causal mask", &dev, dt, &got, &want, tol(dt));
            let bad = Tensor::zeros(&[3, 1, 1, l], DType::F32, &dev).unwrap();
            assert!(ops::softmax(&x, Some(&bad)).is_err());
        }
    }
}

/// log_softmax into f32 from f32 and f16 rows (widths 1 to OPT's 50,272): the CPU is
/// bit-equal to `ops::log_softmax_row` on the stored values, both backends are within
/// 2e-5 of the f64 value. That bound: the GPU's exp is good to 3 + 2|x| ulps in Vulkan
/// (|x| <= 24 here: ~5e-6 relative on each term, so on ln Σ), plus the ulp of an output
/// of magnitude up to ~35 (4e-6). Rows with NaN or ±inf come back unchanged.
#[test]
fn log_softmax_matches_reference() {
    for dev in devices() {
        for dt in DTYPES {
            let mut rng = Rng::new(15);
            for &(rows, cols) in &[(1, 1), (3, 7), (2, 257), (3, 50272)] {
                let (x, xv) = tensor(&mut rng, &[rows, cols], dt, &dev, -12.0, 12.0);
                let got = ops::log_softmax(&x).unwrap();
                assert_eq!(got.dtype(), DType::F32);
                assert_eq!(got.shape(), &[rows, cols]);
                let got = got.to_vec_f32().unwrap();
                let mut host: Vec<f32> = xv.iter().map(|&v| v as f32).collect();
                host.chunks_mut(cols).for_each(ops::log_softmax_row);
                if matches!(dev, Device::Cpu) {
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&got), bits(&host), "{dt} {rows}x{cols}");
                }
                for (r, row) in xv.chunks(cols).enumerate() {
                    let mx = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let lse = row.iter().map(|v| (v - mx).exp()).sum::<f64>().ln() + mx;
                    for (j, v) in row.iter().enumerate() {
                        let (g, w) = (got[r * cols + j] as f64, v - lse);
                        assert!(
                            (g - w).abs() <= 2e-5,
                            "{dev:?} {dt} {rows}x{cols} [{r}, {j}]: {g} vs {w}"
                        );
                    }
                }
            }
            // Non-finite rows are copied; the finite row between them is not disturbed.
            let n = 9;
            let mut v: Vec<f32> = (0..4 * n).map(|i| (i % 5) as f32 - 2.0).collect();
            v[3] = f32::NAN;
            v[2 * n + 4] = f32::INFINITY;
            v[3 * n..].fill(f32::NEG_INFINITY);
            let x = Tensor::from_slice(&v, &[4, n], dt, &dev).unwrap();
            let got = ops::log_softmax(&x).unwrap().to_vec_f32().unwrap();
            for r in [0, 2, 3] {
                for j in 0..n {
                    let (g, w) = (got[r * n + j], v[r * n + j]);
                    assert!(g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()));
                }
            }
            let s: f64 = got[n..2 * n].iter().map(|&p| (p as f64).exp()).sum();
            assert!((s - 1.0).abs() < 1e-5, "{dev:?} {dt}: {s}");
            let q = Tensor::quantize(&[0.5; 64], &[2, 32], DType::Q8, &dev).unwrap();
            assert!(matches!(ops::log_softmax(&q), Err(Error::DType { .. })));
        }
    }
}

#[test]
fn activations_match_reference() {
    for dev in devices() {
        for dt in DTYPES {
            let mut rng = Rng::new(15);
            let (x, xv) = tensor(&mut rng, &[3, 7, 1001], dt, &dev, -7.0, 7.0);
            let c = (2.0f64 / std::f64::consts::PI).sqrt();
            type Case = (
                &'static str,
                fn(&Tensor) -> blip2_engine::Result<Tensor>,
                Box<dyn Fn(f64) -> f64>,
            );
            let cases: [Case; 4] = [
                (
                    "gelu",
                    ops::gelu,
                    Box::new(|v: f64| 0.5 * v * (1.0 + erf64(v / 2f64.sqrt()))),
                ),
                (
                    "gelu_tanh",
                    ops::gelu_tanh,
                    Box::new(move |v: f64| {
                        0.5 * v * (1.0 + (c * (v + 0.044715 * v * v * v)).tanh())
                    }),
                ),
                ("relu", ops::relu, Box::new(|v: f64| v.max(0.0))),
                ("silu", ops::silu, Box::new(|v: f64| v / (1.0 + (-v).exp()))),
            ];
            for (name, f, r) in cases {
                let got = f(&x).unwrap().to_vec_f32().unwrap();
                let want: Vec<f64> = xv.iter().map(|&v| r(v)).collect();
                assert_close(name, &dev, dt, &got, &want, tol(dt));
            }
        }
    }
}

#[test]
fn add_mul_scale_broadcast_rows() {
    for dev in devices() {
        for dt in DTYPES {
            let mut rng = Rng::new(16);
            let (a, av) = tensor(&mut rng, &[2, 7, 33], dt, &dev, -2.0, 2.0);
            for bshape in [vec![33], vec![7, 33], vec![2, 7, 33]] {
                for bd in DTYPES {
                    let (b, bv) = tensor(&mut rng, &bshape, bd, &dev, -2.0, 2.0);
                    let got = ops::add(&a, &b).unwrap().to_vec_f32().unwrap();
                    let want: Vec<f64> = av
                        .iter()
                        .enumerate()
                        .map(|(i, x)| x + bv[i % bv.len()])
                        .collect();
                    assert_close(&format!("add {bshape:?}"), &dev, dt, &got, &want, tol(dt));
                    let got = ops::mul(&a, &b).unwrap().to_vec_f32().unwrap();
                    let want: Vec<f64> = av
                        .iter()
                        .enumerate()
                        .map(|(i, x)| x * bv[i % bv.len()])
                        .collect();
                    assert_close(&format!("mul {bshape:?}"), &dev, dt, &got, &want, tol(dt));
                }
            }
            let got = ops::scale(&a, -0.37).unwrap().to_vec_f32().unwrap();
            let want: Vec<f64> = av.iter().map(|x| x * (-0.37f32) as f64).collect();
            assert_close("scale", &dev, dt, &got, &want, tol(dt));
            let bad = Tensor::zeros(&[7], dt, &dev).unwrap();
            assert!(ops::add(&a, &bad).is_err());
        }
    }
}

#[test]
fn embedding_gathers_rows() {
    for dev in devices() {
        for td in DTYPES {
            for od in DTYPES {
                let mut rng = Rng::new(17);
                let (t, tv) = tensor(&mut rng, &[1000, 88], td, &dev, -1.0, 1.0);
                let ids = [0u32, 999, 5, 5, 123, 1];
                let got = ops::embedding(&t, &ids, od).unwrap();
                assert_eq!((got.shape(), got.dtype()), (&[6usize, 88][..], od));
                let want: Vec<f64> = ids
                    .iter()
                    .flat_map(|&i| tv[i as usize * 88..(i as usize + 1) * 88].to_vec())
                    .collect();
                assert_close(
                    "embedding",
                    &dev,
                    od,
                    &got.to_vec_f32().unwrap(),
                    &want,
                    tol(od),
                );
                let err = ops::embedding(&t, &[1000], od).unwrap_err().to_string();
                assert!(err.contains("1000"), "{err}");
            }
        }
    }
}

#[test]
fn gather_rows_picks_rows_in_order() {
    // Row orders: beam-search expansion of one row, reorders with repeats, strided and
    // contiguous runs, a reversal, a single row, the empty selection.
    let selections: [&[usize]; 9] = [
        &[0, 0, 0, 0],
        &[2, 0, 1, 1],
        &[4, 3, 2, 1, 0],
        &[1, 2, 3],
        &[0, 2, 4],
        &[3],
        &[],
        &[1, 1, 2, 3, 4, 0, 0],
        &[4, 4, 4, 2, 2, 0, 1, 2],
    ];
    for dev in devices() {
        for dt in DTYPES {
            let mut rng = Rng::new(21);
            // Odd row widths put f16 rows mid-word; rank 1 gathers scalars.
            for shape in [&[5usize, 7][..], &[6, 3, 3], &[5, 2, 4], &[7]] {
                let (x, xv) = tensor(&mut rng, shape, dt, &dev, -1.0, 1.0);
                let inner: usize = shape[1..].iter().product();
                for rows in selections {
                    let got = ops::gather_rows(&x, rows).unwrap();
                    let mut want_shape = shape.to_vec();
                    want_shape[0] = rows.len();
                    assert_eq!((got.shape(), got.dtype()), (&want_shape[..], dt));
                    let want: Vec<f64> = rows
                        .iter()
                        .flat_map(|&r| xv[r * inner..(r + 1) * inner].to_vec())
                        .collect();
                    assert_close(
                        &format!("gather_rows {shape:?} {rows:?}"),
                        &dev,
                        dt,
                        &got.to_vec_f32().unwrap(),
                        &want,
                        0.0,
                    );
                }
                let all: Vec<usize> = (0..shape[0]).collect();
                let same = ops::gather_rows(&x, &all).unwrap();
                assert_eq!(same.shape(), x.shape());
                assert_close(
                    "gather_rows identity",
                    &dev,
                    dt,
                    &same.to_vec_f32().unwrap(),
                    &xv,
                    0.0,
                );
                let err = ops::gather_rows(&x, &[0, shape[0]]).unwrap_err();
                assert!(
                    matches!(&err, Error::Shape { .. })
                        && err.to_string().contains(&format!("index {}", shape[0])),
                    "{err}"
                );
            }
            let scalar = Tensor::from_slice(&[1.0], &[], dt, &dev).unwrap();
            assert!(matches!(
                ops::gather_rows(&scalar, &[0]),
                Err(Error::Shape { .. })
            ));
        }
    }
}

/// f16 copies whose destination rows meet inside a word (odd widths) write every row: each
/// invocation rewrites a whole word, so the rows sharing it must not be copied concurrently.
#[test]
fn f16_copies_of_odd_rows_keep_every_element() {
    for dev in devices() {
        let mut rng = Rng::new(22);
        let (x, xv) = tensor(&mut rng, &[300, 3], DType::F16, &dev, -1.0, 1.0);
        let col: Vec<f64> = (0..300).map(|r| xv[r * 3 + 1]).collect();
        let got = ops::narrow(&x, 1, 1, 1).unwrap().to_vec_f32().unwrap();
        assert_close("narrow odd rows", &dev, DType::F16, &got, &col, 0.0);
        let got = ops::gather_rows(&x, &[7; 301])
            .unwrap()
            .to_vec_f32()
            .unwrap();
        assert_close(
            "gather_rows repeats",
            &dev,
            DType::F16,
            &got,
            &xv[21..24].repeat(301),
            0.0,
        );
    }
}

#[test]
fn concat_narrow_write_at_permute() {
    for dev in devices() {
        for dt in DTYPES {
            let mut rng = Rng::new(18);
            let (a, av) = tensor(&mut rng, &[2, 3, 5], dt, &dev, -1.0, 1.0);
            let (b, bv) = tensor(&mut rng, &[2, 4, 5], dt, &dev, -1.0, 1.0);
            let c = ops::concat(&[&a, &b], 1).unwrap();
            assert_eq!(c.shape(), &[2, 7, 5]);
            let mut want = Vec::new();
            for i in 0..2 {
                want.extend_from_slice(&av[i * 15..(i + 1) * 15]);
                want.extend_from_slice(&bv[i * 20..(i + 1) * 20]);
            }
            let cv = c.to_vec_f32().unwrap();
            assert_close("concat axis 1", &dev, dt, &cv, &want, 0.0);
            // narrow undoes it.
            let n = ops::narrow(&c, 1, 3, 4).unwrap();
            assert_close("narrow", &dev, dt, &n.to_vec_f32().unwrap(), &bv, 0.0);
            let c0 = ops::concat(&[&a, &a], 0).unwrap();
            assert_eq!(c0.shape(), &[4, 3, 5]);
            assert_close(
                "concat axis 0",
                &dev,
                dt,
                &c0.to_vec_f32().unwrap(),
                &[av.clone(), av.clone()].concat(),
                0.0,
            );
            let (x, xv) = tensor(&mut rng, &[2, 3, 1], dt, &dev, -1.0, 1.0);
            let c2 = ops::concat(&[&a, &x], 2).unwrap();
            let want: Vec<f64> = (0..6)
                .flat_map(|r| {
                    let mut v = av[r * 5..r * 5 + 5].to_vec();
                    v.push(xv[r]);
                    v
                })
                .collect();
            assert_close(
                "concat axis 2",
                &dev,
                dt,
                &c2.to_vec_f32().unwrap(),
                &want,
                0.0,
            );
            assert!(ops::concat(&[&a, &x], 1).is_err());
            assert!(ops::narrow(&c, 1, 5, 3).is_err());

            // KV-cache style in-place write along the sequence axis.
            let mut cache = Tensor::zeros(&[2, 3, 10, 8], dt, &dev).unwrap();
            let (s, sv) = tensor(&mut rng, &[2, 3, 2, 8], dt, &dev, -1.0, 1.0);
            ops::write_at(&mut cache, &s, 2, 4).unwrap();
            let got = cache.to_vec_f32().unwrap();
            let mut want = vec![0f64; 480];
            for bh in 0..6 {
                for r in 0..2 {
                    for d in 0..8 {
                        want[(bh * 10 + 4 + r) * 8 + d] = sv[(bh * 2 + r) * 8 + d];
                    }
                }
            }
            assert_close("write_at", &dev, dt, &got, &want, 0.0);
            assert!(ops::write_at(&mut cache, &s, 2, 9).is_err());

            // Heads: [B, L, H*d] -> [B, H, L, d] with 88-wide heads, and back.
            let (x, xv) = tensor(&mut rng, &[2, 7, 3 * 88], dt, &dev, -1.0, 1.0);
            let sh = ops::split_heads(&x, 3).unwrap();
            assert_eq!(sh.shape(), &[2, 3, 7, 88]);
            let shv = sh.to_vec_f32().unwrap();
            let mut want = Vec::new();
            for bi in 0..2 {
                for hi in 0..3 {
                    for li in 0..7 {
                        let base = (bi * 7 + li) * 264 + hi * 88;
                        want.extend_from_slice(&xv[base..base + 88]);
                    }
                }
            }
            assert_close("split_heads", &dev, dt, &shv, &want, 0.0);
            let mh = ops::merge_heads(&sh).unwrap();
            assert_eq!(mh.shape(), &[2, 7, 264]);
            assert_close("merge_heads", &dev, dt, &mh.to_vec_f32().unwrap(), &xv, 0.0);
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn ref_attention(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    mask: Option<(&[f64], usize)>,
    bias: Option<&[f64]>,
    (b, h, lq, lk, cap, d): (usize, usize, usize, usize, usize, usize),
    scale: f64,
    causal: bool,
) -> Vec<f64> {
    let mut out = vec![0.0; b * h * lq * d];
    for bi in 0..b {
        for hi in 0..h {
            let qb = &q[(bi * h + hi) * lq * d..];
            let kb = &k[(bi * h + hi) * cap * d..];
            let vb = &v[(bi * h + hi) * cap * d..];
            for i in 0..lq {
                let mut s: Vec<f64> = (0..lk)
                    .map(|j| {
                        let mut acc =
                            (0..d).map(|t| qb[i * d + t] * kb[j * d + t]).sum::<f64>() * scale;
                        if let Some(bias) = bias {
                            acc += bias[(hi * lq + i) * lk + j];
                        }
                        if let Some((m, rows)) = mask {
                            acc += m[(bi * rows + if rows == 1 { 0 } else { i }) * lk + j];
                        }
                        if causal && j > i + (lk - lq) {
                            acc = f64::NEG_INFINITY;
                        }
                        acc
                    })
                    .collect();
                ref_softmax(&mut s, lk);
                for t in 0..d {
                    out[((bi * h + hi) * lq + i) * d + t] =
                        (0..lk).map(|j| s[j] * vb[j * d + t]).sum();
                }
            }
        }
    }
    out
}

#[test]
fn attention_matches_reference() {
    for dev in devices() {
        for dt in DTYPES {
            let mut rng = Rng::new(19);
            // (b, h, lq, lk, cap, d, causal, mask rows, bias, scale)
            let cases = [
                (1, 2, 257, 257, 257, 88, false, 0, false, 88f32.powf(-0.5)), // ViT self-attention
                (2, 3, 7, 20, 33, 88, true, 1, false, 0.125), // OPT prefill into a cache
                (2, 3, 1, 20, 33, 16, true, 1, true, 1.0),    // T5 decode step, bias, scale 1
                (2, 1, 5, 33, 33, 12, false, 5, true, 1.0),   // per-query mask rows
                (1, 4, 8, 257, 257, 24, false, 0, false, 0.2), // Q-Former cross-attention
                // More than 32 queries: the flash kernel on the GPU (tiles of 64 queries).
                (2, 3, 40, 60, 64, 80, true, 1, false, 0.11), // OPT prefill into a cache
                (1, 2, 45, 45, 45, 64, false, 0, true, 1.0),  // T5 encoder, position bias
                (2, 2, 37, 37, 37, 13, false, 37, false, 0.3), // odd head dim, per-query mask
                (1, 1, 70, 70, 70, 128, true, 0, false, 0.09), // LLaMA head dim, two tiles
            ];
            for &(b, h, lq, lk, cap, d, causal, mrows, with_bias, scale) in &cases {
                let (q, qv) = tensor(&mut rng, &[b, h, lq, d], dt, &dev, -1.0, 1.0);
                let (k, kv) = tensor(&mut rng, &[b, h, cap, d], dt, &dev, -1.0, 1.0);
                let (v, vv) = tensor(&mut rng, &[b, h, cap, d], dt, &dev, -1.0, 1.0);
                let mask_v: Vec<f32> = (0..b * mrows.max(1) * lk)
                    .map(|i| if i % 7 == 3 { f32::MIN } else { 0.0 })
                    .collect();
                let mask = (mrows > 0)
                    .then(|| Tensor::from_f32(mask_v.clone(), &[b, mrows, lk], &dev).unwrap());
                let (bias, biasv) = tensor(&mut rng, &[h, lq, lk], DType::F32, &dev, -2.0, 2.0);
                let opts = AttnOpts {
                    scale,
                    causal,
                    kv_len: Some(lk),
                    mask: mask.as_ref(),
                    bias: with_bias.then_some(&bias),
                };
                let got = ops::attention(&q, &k, &v, &opts).unwrap();
                assert_eq!(got.shape(), &[b, h, lq, d]);
                let mv: Vec<f64> = mask_v.iter().map(|&x| x as f64).collect();
                let want = ref_attention(
                    &qv,
                    &kv,
                    &vv,
                    (mrows > 0).then_some((&mv[..], mrows)),
                    with_bias.then_some(&biasv[..]),
                    (b, h, lq, lk, cap, d),
                    scale as f64,
                    causal,
                );
                assert_close(
                    &format!("attention {b}x{h}x{lq}x{lk}/{cap}x{d}"),
                    &dev,
                    dt,
                    &got.to_vec_f32().unwrap(),
                    &want,
                    tol(dt),
                );
            }
            let q = Tensor::zeros(&[1, 2, 3, 8], dt, &dev).unwrap();
            let k = Tensor::zeros(&[1, 2, 5, 4], dt, &dev).unwrap();
            assert!(ops::attention(&q, &k, &k, &AttnOpts::default()).is_err());
        }
    }
}

#[test]
fn patch_embed_matches_conv() {
    for dev in devices() {
        for dt in DTYPES {
            let mut rng = Rng::new(20);
            let (bsz, c, hh, ww, p, dout) = (2, 3, 28, 42, 14, 5);
            let (px, pv) = tensor(&mut rng, &[bsz, c, hh, ww], dt, &dev, -2.0, 2.0);
            let (w, wv) = tensor(&mut rng, &[dout, c, p, p], dt, &dev, -0.1, 0.1);
            let (b, bv) = tensor(&mut rng, &[dout], DType::F32, &dev, -1.0, 1.0);
            let got = ops::patch_embed(&px, &w, &b).unwrap();
            let (gh, gw) = (hh / p, ww / p);
            assert_eq!(got.shape(), &[bsz, gh * gw, dout]);
            let mut want = Vec::new();
            for bi in 0..bsz {
                for py in 0..gh {
                    for pxi in 0..gw {
                        for o in 0..dout {
                            let mut s = bv[o];
                            for ci in 0..c {
                                for ky in 0..p {
                                    for kx in 0..p {
                                        s += pv[((bi * c + ci) * hh + py * p + ky) * ww
                                            + pxi * p
                                            + kx]
                                            * wv[((o * c + ci) * p + ky) * p + kx];
                                    }
                                }
                            }
                            want.push(s);
                        }
                    }
                }
            }
            assert_close(
                "patch_embed",
                &dev,
                dt,
                &got.to_vec_f32().unwrap(),
                &want,
                tol(dt),
            );
            let odd = Tensor::zeros(&[1, 3, 15, 14], dt, &dev).unwrap();
            assert!(ops::patch_embed(&odd, &w, &b).is_err());
        }
    }
}

#[test]
fn cast_and_transfer_roundtrip() {
    for dev in devices() {
        let mut rng = Rng::new(21);
        let v = rng.vec(1001, -100.0, 100.0);
        let t = Tensor::from_f32(v.clone(), &[7, 143], &dev).unwrap();
        let h = t.to_dtype(DType::F16).unwrap();
        assert_eq!(h.dtype(), DType::F16);
        let want: Vec<f64> = quantize(&v, DType::F16).iter().map(|&x| x as f64).collect();
        assert_close(
            "cast f32->f16",
            &dev,
            DType::F16,
            &h.to_vec_f32().unwrap(),
            &want,
            0.0,
        );
        let back = h
            .to_dtype(DType::F32)
            .unwrap()
            .to_device(&Device::cpu())
            .unwrap();
        assert_close(
            "cast f16->f32 + download",
            &dev,
            DType::F32,
            &back.to_vec_f32().unwrap(),
            &want,
            0.0,
        );
    }
}

#[test]
fn mixed_devices_are_rejected() {
    if let Some(g) = gpu() {
        let a = Tensor::zeros(&[2, 3], DType::F32, &Device::cpu()).unwrap();
        let b = Tensor::zeros(&[3], DType::F32, &g).unwrap();
        let err = ops::add(&a, &b).unwrap_err().to_string();
        assert!(err.contains("different devices"), "{err}");
    }
}

/// Operands longer than one CPU work item (16384 elements): b periods that straddle work
/// items, and a same-shape (residual) add split across items.
#[test]
fn add_mul_broadcast_across_work_items() {
    for dev in devices() {
        let mut rng = Rng::new(22);
        for (ashape, bshape) in [
            (vec![3, 20001], vec![20001]),
            (vec![3, 20001], vec![3, 20001]),
            (vec![1000, 33], vec![33]),
        ] {
            let (a, av) = tensor(&mut rng, &ashape, DType::F32, &dev, -2.0, 2.0);
            let (b, bv) = tensor(&mut rng, &bshape, DType::F32, &dev, -2.0, 2.0);
            let got = ops::add(&a, &b).unwrap().to_vec_f32().unwrap();
            let want: Vec<f64> = av
                .iter()
                .enumerate()
                .map(|(i, x)| x + bv[i % bv.len()])
                .collect();
            assert_close(
                &format!("add {bshape:?}"),
                &dev,
                DType::F32,
                &got,
                &want,
                tol(DType::F32),
            );
            let got = ops::mul(&a, &b).unwrap().to_vec_f32().unwrap();
            let want: Vec<f64> = av
                .iter()
                .enumerate()
                .map(|(i, x)| x * bv[i % bv.len()])
                .collect();
            assert_close(
                &format!("mul {bshape:?}"),
                &dev,
                DType::F32,
                &got,
                &want,
                tol(DType::F32),
            );
        }
    }
}

/// A reference norm: weight, bias (LayerNorm), eps, RMS.
type RefNorm<'a> = (&'a [f64], Option<&'a [f64]>, f64, bool);

/// The f64 reference of `ops::linear_fused`: norm, linear, act or gate, residual.
#[allow(clippy::too_many_arguments)]
fn ref_linear_fused(
    x: &[f64],
    norm: Option<RefNorm>,
    w: &[f64],
    b: Option<&[f64]>,
    act: Option<fn(f64) -> f64>,
    gated: bool,
    residual: Option<&[f64]>,
    (m, k, n): (usize, usize, usize),
) -> Vec<f64> {
    let xn = match norm {
        Some((nw, nb, eps, rms)) => ref_norm(x, nw, nb, k, eps, rms),
        None => x.to_vec(),
    };
    let y = ref_linear(&xn, w, b, m, k, n);
    let mut out: Vec<f64> = match (gated, act) {
        (true, Some(f)) => y.chunks(2).map(|p| f(p[0]) * p[1]).collect(),
        (false, Some(f)) => y.iter().map(|&v| f(v)).collect(),
        _ => y,
    };
    if let Some(r) = residual {
        out.iter_mut().zip(r).for_each(|(o, r)| *o += r);
    }
    out
}

fn gelu_tanh64(v: f64) -> f64 {
    let c = (2.0f64 / std::f64::consts::PI).sqrt();
    0.5 * v * (1.0 + (c * (v + 0.044715 * v * v * v)).tanh())
}

/// Every fusion the decoders use (and one the GEMV kernels do not have, which runs
/// composed), on GEMV row counts and one above (composed), odd K (no vector loads), f32/f16
/// x and weights. Tolerance: f32 x: `tol` (1e-10), as plain `linear`: f32 accumulation
/// everywhere, and the GPU's GELU/SiLU use the elementwise kernel's exp/erf approximations
/// (checked against f64 above). f16 x: 1e-5, ten times `tol`: the composed path (the CPU,
/// and the GPU for fusions without a kernel) stores up to four f16 intermediates (normed x,
/// y, act(gate), the product), each rounding adding NMSE ≈ 8e-8 of its own magnitude, and a
/// gate's product of two rounded factors doubles it; with a handful of outputs one unlucky
/// element dominates the ratio (seen: 4.4e-6 for 3 outputs).
#[test]
fn linear_fused_matches_reference() {
    type Act = (blip2_engine::ops::Unary, fn(f64) -> f64);
    let relu: Act = (ops::Unary::Relu, |v| v.max(0.0));
    let gelu_t: Act = (ops::Unary::GeluTanh, gelu_tanh64);
    let silu: Act = (ops::Unary::Silu, |v| v / (1.0 + (-v).exp()));
    // (norm: 0 none / 1 layer / 2 rms, act, gated, residual, bias)
    let fusions: [(u8, Option<Act>, bool, bool, bool); 6] = [
        (1, None, false, false, true),         // OPT q/k/v
        (1, Some(relu), false, false, true),   // OPT fc1
        (0, None, false, true, true),          // out / fc2 + residual
        (2, Some(gelu_t), true, false, false), // T5 gated FFN
        (2, Some(silu), false, false, false),  // RMS + activation
        (0, Some(relu), false, true, false),   // not a kernel fusion: composed on the GPU
    ];
    let cases = [
        (1, 88, 34),
        (3, 257, 18),
        (4, 1408, 40),
        (1, 7, 6),
        (7, 33, 14),
    ];
    for dev in devices() {
        for xd in DTYPES {
            for wd in DTYPES {
                let mut rng = Rng::new(23);
                for &(m, k, n) in &cases {
                    for &(norm, act, gated, with_res, with_bias) in &fusions {
                        let (x, xv) = tensor(&mut rng, &[m, k], xd, &dev, 1.0, 3.0);
                        let (w, wv) = tensor(&mut rng, &[n, k], wd, &dev, -1.0, 1.0);
                        let (b, bv) = tensor(&mut rng, &[n], DType::F32, &dev, -1.0, 1.0);
                        let (nw, nwv) = tensor(&mut rng, &[k], DType::F32, &dev, 0.5, 1.5);
                        let (nb, nbv) = tensor(&mut rng, &[k], DType::F32, &dev, -0.5, 0.5);
                        let n_out = if gated { n / 2 } else { n };
                        let (r, rv) = tensor(&mut rng, &[m, n_out], xd, &dev, -1.0, 1.0);
                        let f = ops::LinearFusion {
                            norm: match norm {
                                1 => Some(ops::NormIn::Layer {
                                    w: &nw,
                                    b: &nb,
                                    eps: 1e-5,
                                }),
                                2 => Some(ops::NormIn::Rms { w: &nw, eps: 1e-6 }),
                                _ => None,
                            },
                            act: act.map(|a| a.0),
                            gated,
                            residual: with_res.then_some(&r),
                        };
                        let bias = with_bias.then_some(&b);
                        let got = ops::linear_fused(&x, &w, bias, &f).unwrap();
                        assert_eq!(got.shape(), &[m, n_out]);
                        assert_eq!(got.dtype(), xd);
                        let nref = match norm {
                            1 => Some((&nwv[..], Some(&nbv[..]), 1e-5, false)),
                            2 => Some((&nwv[..], None, 1e-6, true)),
                            _ => None,
                        };
                        let want = ref_linear_fused(
                            &xv,
                            nref,
                            &wv,
                            with_bias.then_some(&bv[..]),
                            act.map(|a| a.1),
                            gated,
                            with_res.then_some(&rv[..]),
                            (m, k, n),
                        );
                        let budget = if xd == DType::F16 { 1e-5 } else { tol(xd) };
                        assert_close(
                            &format!("linear_fused {m}x{k}x{n} norm {norm} gated {gated} w={wd}"),
                            &dev,
                            xd,
                            &got.to_vec_f32().unwrap(),
                            &want,
                            budget,
                        );
                    }
                }
            }
        }
    }
}

/// Quantized weights: the fused GEMV (qgemv prologue/epilogues) against the f64 reference on
/// the dequantized weights, on GPUs: tolerance 1e-10 (f32 x), since dequantization is exact
/// and only f32 accumulation order differs, as for float weights. The CPU has no fused
/// kernel: its integer GEMV rounds activations to 8 bits per block, which `quantized.rs`
/// bounds element by element; here the CPU result must equal the plain ops composed by hand
/// (exactly: the same ops in the same order).
#[test]
fn linear_fused_with_quantized_weights() {
    for dev in devices() {
        for wd in [DType::Q8, DType::Q4] {
            let mut rng = Rng::new(29);
            for &(m, k, n) in &[(1, 96, 20), (2, 70, 12), (4, 256, 8)] {
                let (x, xv) = tensor(&mut rng, &[m, k], DType::F32, &dev, 1.0, 3.0);
                let w = Tensor::quantize(&rng.vec(n * k, -1.0, 1.0), &[n, k], wd, &dev).unwrap();
                let wv: Vec<f64> = w.to_vec_f32().unwrap().iter().map(|&v| v as f64).collect();
                let (nw, nwv) = tensor(&mut rng, &[k], DType::F32, &dev, 0.5, 1.5);
                let (r, rv) = tensor(&mut rng, &[m, n / 2], DType::F32, &dev, -1.0, 1.0);
                let f = ops::LinearFusion {
                    norm: Some(ops::NormIn::Rms { w: &nw, eps: 1e-6 }),
                    act: Some(ops::Unary::GeluTanh),
                    gated: true,
                    residual: None,
                };
                let got = ops::linear_fused(&x, &w, None, &f)
                    .unwrap()
                    .to_vec_f32()
                    .unwrap();
                let w2 = Tensor::quantize(&rng.vec(n / 2 * k, -1.0, 1.0), &[n / 2, k], wd, &dev)
                    .unwrap();
                let w2v: Vec<f64> = w2.to_vec_f32().unwrap().iter().map(|&v| v as f64).collect();
                let fr = ops::LinearFusion {
                    residual: Some(&r),
                    ..Default::default()
                };
                let got_r = ops::linear_fused(&x, &w2, None, &fr)
                    .unwrap()
                    .to_vec_f32()
                    .unwrap();
                if matches!(dev, Device::Cpu) {
                    let y = ops::linear(&ops::rms_norm(&x, &nw, 1e-6).unwrap(), &w, None).unwrap();
                    let pairs = y.reshape(&[m, n / 2, 2]).unwrap();
                    let gate = ops::narrow(&pairs, 2, 0, 1)
                        .unwrap()
                        .reshape(&[m, n / 2])
                        .unwrap();
                    let up = ops::narrow(&pairs, 2, 1, 1)
                        .unwrap()
                        .reshape(&[m, n / 2])
                        .unwrap();
                    let want = ops::mul(&ops::gelu_tanh(&gate).unwrap(), &up).unwrap();
                    assert_eq!(got, want.to_vec_f32().unwrap(), "gated {wd} on the CPU");
                    let want_r = ops::add(&r, &ops::linear(&x, &w2, None).unwrap()).unwrap();
                    assert_eq!(
                        got_r,
                        want_r.to_vec_f32().unwrap(),
                        "residual {wd} on the CPU"
                    );
                    continue;
                }
                let want = ref_linear_fused(
                    &xv,
                    Some((&nwv, None, 1e-6, true)),
                    &wv,
                    None,
                    Some(gelu_tanh64),
                    true,
                    None,
                    (m, k, n),
                );
                let what = format!("gated linear_fused {m}x{k}x{n} {wd}");
                assert_close(&what, &dev, wd, &got, &want, 1e-10);
                let want =
                    ref_linear_fused(&xv, None, &w2v, None, None, false, Some(&rv), (m, k, n / 2));
                let what = format!("residual linear_fused {m}x{k}x{} {wd}", n / 2);
                assert_close(&what, &dev, wd, &got_r, &want, 1e-10);
            }
        }
    }
}

/// The CPU applies `linear_fused`'s activation and residual in place on the product: it must
/// give the bits of the composed ops (linear, unary, add) exactly, over outputs of several
/// element-wise chunks (33 × 1100 > 2 × 16384) and every activation, and fall back to the
/// composed ops for an f16 residual (whose add rounds to f16).
#[test]
fn cpu_fused_epilogue_equals_the_composed_ops() {
    let dev = Device::Cpu;
    let mut rng = Rng::new(31);
    let (m, k, n) = (33, 70, 1100);
    let (x, _) = tensor(&mut rng, &[m, k], DType::F32, &dev, -2.0, 2.0);
    let (b, _) = tensor(&mut rng, &[n], DType::F32, &dev, -1.0, 1.0);
    let (nw, _) = tensor(&mut rng, &[k], DType::F32, &dev, 0.5, 1.5);
    let (nb, _) = tensor(&mut rng, &[k], DType::F32, &dev, -0.5, 0.5);
    for wd in [DType::F32, DType::F16, DType::BF16] {
        let w = Tensor::from_slice(&rng.vec(n * k, -0.3, 0.3), &[n, k], wd, &dev).unwrap();
        for rd in [DType::F32, DType::F16] {
            let (r, _) = tensor(&mut rng, &[m, n], rd, &dev, -1.0, 1.0);
            for act in [
                None,
                Some(ops::Unary::Gelu),
                Some(ops::Unary::GeluTanh),
                Some(ops::Unary::Relu),
                Some(ops::Unary::Silu),
            ] {
                for (norm, residual) in [(false, true), (true, false), (true, true)] {
                    let f = ops::LinearFusion {
                        norm: norm.then_some(ops::NormIn::Layer {
                            w: &nw,
                            b: &nb,
                            eps: 1e-6,
                        }),
                        act,
                        gated: false,
                        residual: residual.then_some(&r),
                    };
                    let got = ops::linear_fused(&x, &w, Some(&b), &f).unwrap();
                    let h = if norm {
                        ops::layer_norm(&x, &nw, &nb, 1e-6).unwrap()
                    } else {
                        x.clone()
                    };
                    let mut want = ops::linear(&h, &w, Some(&b)).unwrap();
                    if let Some(a) = act {
                        want = ops::unary(&want, a).unwrap();
                    }
                    if residual {
                        want = ops::add(&r, &want).unwrap();
                    }
                    assert_eq!(got.dtype(), want.dtype());
                    assert_eq!(
                        got.to_vec_f32().unwrap(),
                        want.to_vec_f32().unwrap(),
                        "w {wd}, residual {rd}, act {act:?}, norm {norm}, residual {residual}"
                    );
                }
            }
        }
    }
}

/// `self_attention` over a fused projection equals narrow + split_heads of each third,
/// `attention` and `merge_heads` exactly (the CPU reads the thirds in place with the same
/// products and sums; the GPU runs those very ops), with masks of one row and of one per
/// query, T5-style bias, causal cuts and f16 activations; malformed qkv are shape errors.
#[test]
fn self_attention_equals_split_attention_merge() {
    for dev in devices() {
        for dt in DTYPES {
            let mut rng = Rng::new(37);
            // (batch, heads, l, d)
            for &(b, h, l, d) in &[(1, 16, 257, 88), (2, 3, 19, 7)] {
                let hd = h * d;
                let (qkv, _) = tensor(&mut rng, &[b, l, 3 * hd], dt, &dev, -1.0, 1.0);
                let (m1, _) = tensor(&mut rng, &[b, 1, l], DType::F32, &dev, -2.0, 0.0);
                let (ml, _) = tensor(&mut rng, &[b, l, l], DType::F32, &dev, -2.0, 0.0);
                let (bias, _) = tensor(&mut rng, &[h, l, l], DType::F32, &dev, -1.0, 1.0);
                let scale = (d as f32).powf(-0.5);
                let variants = [
                    AttnOpts {
                        scale,
                        ..Default::default()
                    },
                    AttnOpts {
                        scale,
                        mask: Some(&m1),
                        ..Default::default()
                    },
                    AttnOpts {
                        scale: 1.0,
                        mask: Some(&ml),
                        bias: Some(&bias),
                        ..Default::default()
                    },
                    AttnOpts {
                        scale,
                        causal: true,
                        ..Default::default()
                    },
                ];
                for opts in &variants {
                    let got = ops::self_attention(&qkv, h, opts).unwrap();
                    let part = |i| ops::split_heads(&ops::narrow(&qkv, 2, i * hd, hd).unwrap(), h);
                    let (q, k, v) = (part(0).unwrap(), part(1).unwrap(), part(2).unwrap());
                    let want =
                        ops::merge_heads(&ops::attention(&q, &k, &v, opts).unwrap()).unwrap();
                    assert_eq!(got.shape(), &[b, l, hd]);
                    assert_eq!(got.dtype(), dt);
                    assert_eq!(
                        got.to_vec_f32().unwrap(),
                        want.to_vec_f32().unwrap(),
                        "{dev:?} {dt} b{b} h{h} l{l} d{d} causal {} mask {} bias {}",
                        opts.causal,
                        opts.mask.is_some(),
                        opts.bias.is_some()
                    );
                }
            }
            let (bad, _) = tensor(&mut Rng::new(1), &[2, 5, 20], dt, &dev, -1.0, 1.0);
            for (t, heads) in [(&bad, 3), (&bad, 0)] {
                let err = ops::self_attention(t, heads, &AttnOpts::default()).unwrap_err();
                assert!(matches!(err, Error::Shape { .. }), "{err}");
            }
            let flat = bad.reshape(&[10, 20]).unwrap();
            let err = ops::self_attention(&flat, 2, &AttnOpts::default()).unwrap_err();
            assert!(matches!(err, Error::Shape { .. }), "{err}");
        }
    }
}

/// `attention_append`: one token (the fused decode kernel on the GPU: OPT's first step,
/// T5's step with position bias, an odd head dim, 32 heads of 80) and several tokens
/// (composed, causal), against the f64 reference; the caches must hold exactly the old
/// columns plus the new K/V. Tolerance: `tol` of the dtype, as `attention`.
#[test]
fn attention_append_matches_reference() {
    // (b, h, l, pos, cap, d, mask, bias, causal, scale)
    let cases = [
        (1, 32, 1, 0, 8, 80, false, false, true, 0.11f32),
        (2, 3, 1, 19, 33, 16, true, true, true, 1.0),
        (2, 2, 1, 6, 9, 13, true, false, true, 0.3),
        (2, 3, 4, 5, 12, 8, true, false, true, 0.35),
    ];
    for dev in devices() {
        for dt in DTYPES {
            let mut rng = Rng::new(31);
            for &(b, h, l, pos, cap, d, with_mask, with_bias, causal, scale) in &cases {
                let hid = h * d;
                let (qkv, qkvv) = tensor(&mut rng, &[b, l, 3 * hid], dt, &dev, -1.0, 1.0);
                let (mut kc, kcv) = tensor(&mut rng, &[b, h, cap, d], dt, &dev, -1.0, 1.0);
                let (mut vc, vcv) = tensor(&mut rng, &[b, h, cap, d], dt, &dev, -1.0, 1.0);
                let lk = pos + l;
                let mask_v: Vec<f32> = (0..b * lk)
                    .map(|i| if i % 5 == 2 { f32::MIN } else { 0.0 })
                    .collect();
                let mask = Tensor::from_f32(mask_v.clone(), &[b, 1, lk], &dev).unwrap();
                let (bias, biasv) = tensor(&mut rng, &[h, l, lk], DType::F32, &dev, -2.0, 2.0);
                let opts = AttnOpts {
                    scale,
                    causal,
                    kv_len: None,
                    mask: with_mask.then_some(&mask),
                    bias: with_bias.then_some(&bias),
                };
                let kc_before = kc.clone();
                let got = ops::attention_append(&qkv, &mut kc, &mut vc, pos, &opts).unwrap();
                assert_eq!(got.shape(), &[b, l, hid]);
                // Expected caches: the new tokens' heads at columns pos..pos + l.
                let (mut ke, mut ve) = (kcv.clone(), vcv.clone());
                let mut qh = vec![0.0; b * h * l * d];
                for bi in 0..b {
                    for t in 0..l {
                        let row = &qkvv[(bi * l + t) * 3 * hid..];
                        for hi in 0..h {
                            for j in 0..d {
                                let c = ((bi * h + hi) * cap + pos + t) * d + j;
                                ke[c] = row[hid + hi * d + j];
                                ve[c] = row[2 * hid + hi * d + j];
                                qh[((bi * h + hi) * l + t) * d + j] = row[hi * d + j];
                            }
                        }
                    }
                }
                let to64 = |t: &Tensor| -> Vec<f64> {
                    t.to_vec_f32().unwrap().iter().map(|&v| v as f64).collect()
                };
                let what = format!("attention_append {b}x{h}x{l} at {pos}/{cap}x{d}");
                assert_eq!(to64(&kc), ke, "{what}: k cache on {dev:?} {dt}");
                assert_eq!(to64(&vc), ve, "{what}: v cache on {dev:?} {dt}");
                assert_eq!(
                    to64(&kc_before),
                    kcv,
                    "{what}: a clone of the cache changed"
                );
                let mv: Vec<f64> = mask_v.iter().map(|&x| x as f64).collect();
                let heads_out = ref_attention(
                    &qh,
                    &ke,
                    &ve,
                    with_mask.then_some((&mv[..], 1)),
                    with_bias.then_some(&biasv[..]),
                    (b, h, l, lk, cap, d),
                    scale as f64,
                    causal,
                );
                // [B, H, L, d] -> [B, L, H·d]
                let mut want = vec![0.0; b * l * hid];
                for bi in 0..b {
                    for hi in 0..h {
                        for t in 0..l {
                            for j in 0..d {
                                want[(bi * l + t) * hid + hi * d + j] =
                                    heads_out[((bi * h + hi) * l + t) * d + j];
                            }
                        }
                    }
                }
                assert_close(&what, &dev, dt, &got.to_vec_f32().unwrap(), &want, tol(dt));
            }
        }
    }
}

/// `stack_rows` moves rows exactly, in every dtype a linear weight can have here (quantized
/// rows as their bytes: the dequantized values equal the parts').
#[test]
fn stack_rows_is_exact() {
    for dev in devices() {
        for dt in [DType::F32, DType::F16, DType::Q8, DType::Q4] {
            let mut rng = Rng::new(37);
            let (r, k) = (5, 70);
            let parts: Vec<Tensor> = (0..3)
                .map(|_| Tensor::from_slice(&rng.vec(r * k, -1.0, 1.0), &[r, k], dt, &dev).unwrap())
                .collect();
            let vals: Vec<Vec<f32>> = parts.iter().map(|t| t.to_vec_f32().unwrap()).collect();
            let refs: Vec<&Tensor> = parts.iter().collect();
            let stacked = ops::stack_rows(&refs, false).unwrap();
            assert_eq!(stacked.shape(), &[3 * r, k]);
            assert_eq!(stacked.dtype(), dt);
            assert_eq!(
                stacked.to_vec_f32().unwrap(),
                vals.concat(),
                "{dt} on {dev:?}"
            );
            let inter = ops::stack_rows(&refs, true).unwrap();
            let want: Vec<f32> = (0..r)
                .flat_map(|i| {
                    vals.iter()
                        .flat_map(move |v| v[i * k..(i + 1) * k].to_vec())
                })
                .collect();
            assert_eq!(
                inter.to_vec_f32().unwrap(),
                want,
                "interleaved {dt} on {dev:?}"
            );
        }
    }
}

/// The host rule `argmax_rows` must reproduce (the generation loop's argmax after the
/// min_new_tokens processor set the excluded ids to −inf): first strict maximum from −inf.
fn ref_argmax(row: &[f32], exclude: &[u32]) -> (u32, u32) {
    let mut best = 0;
    let mut bv = f32::NEG_INFINITY;
    for (i, &v) in row.iter().enumerate() {
        let v = if exclude.contains(&(i as u32)) {
            f32::NEG_INFINITY
        } else {
            v
        };
        if v > bv {
            bv = v;
            best = i;
        }
    }
    let bad = row.iter().filter(|v| !v.is_finite()).count() as u32;
    (best as u32, bad)
}

/// `argmax_rows` (argmax.wgsl on the GPU) picks exactly what the host picks: ties across
/// workgroup lanes go to the first index, NaN and −inf never win, a row without a candidate
/// gives 0, excluded ids are skipped (also when they hold the maximum), and each row's
/// non-finite entries are counted. Exact: it compares stored values, no arithmetic.
#[test]
fn argmax_rows_matches_the_host_rule() {
    let (rows, n) = (6, 1001);
    for dev in devices() {
        for dt in DTYPES {
            let mut rng = Rng::new(41);
            let mut v = rng.vec(rows * n, -3.0, 3.0);
            // Row 1: the maximum three times, the first at 5.
            for &i in &[700, 5, 300] {
                v[n + i] = 7.0;
            }
            // Row 2: NaN and -inf around a finite maximum.
            v[2 * n] = f32::NAN;
            v[2 * n + 1] = f32::NEG_INFINITY;
            v[2 * n + 999] = 9.0;
            // Row 3: nothing but -inf.
            v[3 * n..4 * n].fill(f32::NEG_INFINITY);
            // Row 4: the maximum at an excluded id.
            v[4 * n + 17] = 11.0;
            v[4 * n + 640] = 10.0;
            let exclude = [17u32, 3];
            let t = Tensor::from_slice(&v, &[rows, n], dt, &dev).unwrap();
            let stored = t.to_vec_f32().unwrap();
            for ex in [&exclude[..], &[]] {
                let (ids, bad) = ops::argmax_rows(&t, ex).unwrap();
                let (want_ids, want_bad): (Vec<u32>, Vec<u32>) =
                    stored.chunks(n).map(|r| ref_argmax(r, ex)).unzip();
                assert_eq!(ids, want_ids, "argmax ids on {dev:?} {dt} excluding {ex:?}");
                assert_eq!(bad, want_bad, "non-finite counts on {dev:?} {dt}");
            }
        }
    }
}

/// The rule `top_candidates` must follow, by sorting (independent of the op's select): the
/// finite non-excluded entries of one row, and their values in descending order.
struct TopRef {
    open: Vec<(u32, f32)>,
    sorted: Vec<f32>,
    non_finite: u32,
}

impl TopRef {
    fn new(row: &[f32], exclude: &[u32]) -> TopRef {
        let open: Vec<(u32, f32)> = (0..row.len() as u32)
            .zip(row.iter().copied())
            .filter(|&(i, v)| v.is_finite() && !exclude.contains(&i))
            .collect();
        let mut sorted: Vec<f32> = open.iter().map(|p| p.1).collect();
        // partial_cmp: -0.0 and +0.0 are equal, as the op must treat them.
        sorted.sort_by(|a, b| b.partial_cmp(a).unwrap());
        let non_finite = row.iter().filter(|v| !v.is_finite()).count() as u32;
        TopRef {
            open,
            sorted,
            non_finite,
        }
    }

    /// (ids, value bits, non-finite count), or None past max_out.
    fn top(&self, k: usize, max_out: usize) -> Option<(Vec<u32>, Vec<u32>, u32)> {
        let keep: Vec<(u32, f32)> = match self.sorted.get(k - 1) {
            Some(&t) => self.open.iter().copied().filter(|p| p.1 >= t).collect(),
            None => self.open.clone(),
        };
        (keep.len() <= max_out).then(|| {
            let ids = keep.iter().map(|p| p.0).collect();
            let bits = keep.iter().map(|p| p.1.to_bits()).collect();
            (ids, bits, self.non_finite)
        })
    }
}

/// One row of `top_candidates`' test data: `pattern` 0 random, 1 quantised to a few levels
/// (ties at the threshold), 2 negatives below signed zeros and tiny values (f16 subnormals
/// among them), 3 almost nothing finite, 4 ±1 plus up to 511 ulps (f32 values that differ
/// only in the last radix digit; in f16 all ties); NaN (both signs) and ±inf sprinkled
/// everywhere.
fn top_row(rng: &mut Rng, n: usize, pattern: usize) -> Vec<f32> {
    let neg_nan = f32::from_bits(f32::NAN.to_bits() | 0x8000_0000);
    let mut v: Vec<f32> = (0..n)
        .map(|i| match pattern {
            0 => rng.uniform(-3.0, 3.0),
            1 => (rng.uniform(-3.0, 3.0) * 4.0).round() / 4.0,
            2 => match i % 9 {
                0 => 0.0,
                1 => -0.0,
                2 => 3e-6,
                3 => -3e-6,
                4 => 1e-40,
                _ => rng.uniform(-3.0, -0.5),
            },
            3 if i % 97 == 1 => rng.uniform(-1.0, 1.0),
            3 => f32::NEG_INFINITY,
            _ => {
                let ulps = (rng.next_u64() % 512) as u32;
                let sign = (rng.next_u64() % 2) as u32;
                f32::from_bits((1.0f32.to_bits() + ulps) | (sign << 31))
            }
        })
        .collect();
    for x in v.iter_mut() {
        let u = rng.uniform(0.0, 1.0);
        if u < 0.01 {
            *x = f32::NAN;
        } else if u < 0.015 {
            *x = neg_nan;
        } else if u < 0.025 {
            *x = f32::INFINITY;
        } else if u < 0.035 {
            *x = f32::NEG_INFINITY;
        }
    }
    if n > 3 {
        // +inf is never a candidate, though it is larger than every one.
        v[3] = f32::INFINITY;
    }
    v
}

/// `top_candidates` (topk.wgsl on the GPU) returns exactly the sort-based rule's ids and
/// value bits: EXACT, as the op only compares stored values (the kernel compares their bits
/// as order-preserving keys, so no arithmetic and no subnormal flushing can move a value).
/// Odd and vocabulary-sized rows, k below, at and past the finite count, ties at the
/// threshold within and beyond max_out, signed zeros, NaN/±inf, 0..=4 excluded ids (the
/// would-be maximum first) and 5 (past the kernel's limit: the host fallback).
#[test]
fn top_candidates_match_the_host_rule() {
    for dev in devices() {
        for dt in DTYPES {
            let mut rng = Rng::new(43);
            // Rows where ties took more than k entries / went past max_out: both must occur.
            let (mut tied_in, mut tied_out) = (0, 0);
            for &n in &[1usize, 7, 257, 50272] {
                for &rows in &[1usize, 3] {
                    for pattern in 0..5 {
                        let mut v: Vec<f32> = (0..rows)
                            .flat_map(|_| top_row(&mut rng, n, pattern))
                            .collect();
                        if rows == 3 {
                            // A row without any candidate.
                            v[2 * n..].fill(f32::NAN);
                        }
                        let t = Tensor::from_slice(&v, &[rows, n], dt, &dev).unwrap();
                        // What the tensor stores, read from a host copy (not through the GPU).
                        let stored = Tensor::from_slice(&v, &[rows, n], dt, &Device::cpu())
                            .unwrap()
                            .to_vec_f32()
                            .unwrap();
                        let best = (0..n)
                            .filter(|&i| stored[i].is_finite())
                            .max_by(|&a, &b| stored[a].total_cmp(&stored[b]).then(b.cmp(&a)))
                            .unwrap_or(0) as u32;
                        let pool = [best, 0, n as u32 / 2, n as u32 + 5, 1];
                        for (j, &k) in [1usize, 5, 50, n + 1].iter().enumerate() {
                            let ex = &pool[..(pattern + j + n) % 6];
                            let refs: Vec<TopRef> =
                                stored.chunks(n).map(|r| TopRef::new(r, ex)).collect();
                            for max_out in [k, k + 16] {
                                let got = ops::top_candidates(&t, k, max_out, ex).unwrap();
                                assert_eq!(got.len(), rows);
                                for (r, (g, want)) in got.iter().zip(&refs).enumerate() {
                                    let what = format!(
                                        "{dev:?} {dt} [{rows}, {n}] pattern {pattern} row {r} \
                                         k {k} max_out {max_out} excluding {ex:?}"
                                    );
                                    let want = want.top(k, max_out);
                                    let g = g.as_ref().map(|c| {
                                        let bits = c.values.iter().map(|v| v.to_bits()).collect();
                                        (c.ids.clone(), bits, c.non_finite)
                                    });
                                    assert_eq!(g, want, "{what}");
                                    match &want {
                                        Some(w) if w.0.len() > k => tied_in += 1,
                                        None => tied_out += 1,
                                        _ => {}
                                    }
                                }
                            }
                        }
                    }
                }
            }
            assert!(tied_in > 0 && tied_out > 0, "{tied_in} {tied_out}");
            // Signed zeros tie: with the k-th a zero, every zero is in, each with its sign.
            let z = [-1.0, -0.0, 2.0, 0.0, -0.0, f32::NAN, -2.0, 0.0];
            let t = Tensor::from_slice(&z, &[1, 8], dt, &dev).unwrap();
            let got = ops::top_candidates(&t, 2, 8, &[2]).unwrap();
            let c = got[0].as_ref().unwrap();
            assert_eq!(c.ids, [1, 3, 4, 7], "{dev:?} {dt}");
            let bits: Vec<u32> = c.values.iter().map(|v| v.to_bits()).collect();
            let (p0, n0) = (0.0f32.to_bits(), (-0.0f32).to_bits());
            assert_eq!(bits, [n0, p0, n0, p0], "{dev:?} {dt}");
            assert_eq!(c.non_finite, 1);
            assert_eq!(ops::top_candidates(&t, 2, 3, &[2]).unwrap(), [None]);
        }
    }
}

/// Typed errors, no panics: k = 0, max_out < k, rank != 2, empty rows, packed dtypes.
#[test]
fn top_candidates_rejects_bad_arguments() {
    for dev in devices() {
        let x = Tensor::from_slice(&[1.0, 2.0, 3.0, 4.0], &[2, 2], DType::F32, &dev).unwrap();
        assert!(matches!(
            ops::top_candidates(&x, 0, 4, &[]),
            Err(Error::Invalid(_))
        ));
        assert!(matches!(
            ops::top_candidates(&x, 3, 2, &[]),
            Err(Error::Invalid(_))
        ));
        let flat = x.reshape(&[4]).unwrap();
        assert!(matches!(
            ops::top_candidates(&flat, 1, 1, &[]),
            Err(Error::Shape { .. })
        ));
        let cube = x.reshape(&[1, 2, 2]).unwrap();
        assert!(matches!(
            ops::top_candidates(&cube, 1, 1, &[]),
            Err(Error::Shape { .. })
        ));
        let empty = Tensor::from_slice(&[], &[2, 0], DType::F32, &dev).unwrap();
        assert!(matches!(
            ops::top_candidates(&empty, 1, 1, &[]),
            Err(Error::Shape { .. })
        ));
        let q = Tensor::quantize(&[0.5; 64], &[2, 32], DType::Q8, &dev).unwrap();
        assert!(matches!(
            ops::top_candidates(&q, 1, 1, &[]),
            Err(Error::DType { .. })
        ));
    }
}

/// The point of the op: a [2, 50272] logits pair with k = 50, max_out = 64 reads back
/// exactly 2 · (2 + 2 · 64) words (1,040 bytes) in one dispatch, where the host fallback
/// (`device_topk: false`) reads the 402,176 bytes of the rows; both give the same rows.
/// Own contexts, so other tests' transfers do not enter the counters.
#[test]
fn top_candidates_read_back_only_their_slots() {
    use blip2_engine::gpu::{GpuContext, GpuOptions};
    use std::sync::Arc;
    if gpu().is_none() {
        return;
    }
    let (rows, n, k, max_out) = (2usize, 50272usize, 50usize, 64usize);
    let mut rng = Rng::new(47);
    let v = rng.vec(rows * n, -8.0, 8.0);
    let mut results = Vec::new();
    for (device_topk, want_bytes, want_dispatches) in [
        (true, rows * (2 + 2 * max_out) * 4, 1),
        (false, rows * n * 4, 0),
    ] {
        let g = Arc::new(
            GpuContext::with_options(GpuOptions {
                device_topk,
                ..GpuOptions::from_env()
            })
            .unwrap(),
        );
        let x = Tensor::from_slice(&v, &[rows, n], DType::F32, &Device::Gpu(g.clone())).unwrap();
        let before = g.stats();
        let got = ops::top_candidates(&x, k, max_out, &[7]).unwrap();
        let after = g.stats();
        let bytes = after.readback_bytes - before.readback_bytes;
        eprintln!("device_topk {device_topk}: {bytes} bytes read back");
        assert_eq!(bytes, want_bytes as u64, "device_topk {device_topk}");
        assert_eq!(after.dispatches - before.dispatches, want_dispatches);
        assert!(
            got.iter()
                .all(|c| c.as_ref().is_some_and(|c| c.ids.len() == k))
        );
        results.push(got);
    }
    assert_eq!(results[0], results[1]);
}
