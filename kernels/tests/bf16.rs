//! The packed bf16 linear layer (`matmul_bf16`) on every instruction set this CPU supports,
//! on its AMX path where the CPU has AMX, against f64 references on seeded random inputs
//! with awkward sizes. Each check states its tolerance.

mod common;

use blip2_kernels::*;
use common::{Rng, check, gamma, reference};
use half::bf16;

fn round(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| bf16::from_f32(x).to_f32()).collect()
}

fn packed(w: &[f32], n: usize, k: usize) -> Vec<bf16> {
    let mut p = vec![bf16::ZERO; bf16_packed_len(n, k)];
    pack_bf16(w, n, k, &mut p);
    p
}

const SHAPES: [(usize, usize, usize); 13] = [
    (1, 1, 1),
    (1, 33, 70),
    (3, 7, 17),
    // One K step of the AMX 16-row block, then several.
    (6, 30, 40),
    (8, 100, 33),
    (9, 64, 31),
    (17, 45, 50),
    (33, 96, 64),
    (40, 129, 97),
    (70, 300, 130),
    // Past the fallback's 256-row scratch blocks (and their 16-row unpacking) and its
    // per-thread parts.
    (20, 45, 600),
    // K past the AVX512-BF16 walk's 1024-value chunks (C reloaded between chunks), with odd
    // row and column tails.
    (26, 2100, 45),
    // K in two chunks of the AMX walk (A past its 1 MiB budget: C accumulated in place
    // between chunks, the last rows and columns in scratch tiles kept across them).
    (300, 1900, 70),
];

#[test]
fn pack_round_trip_is_round_to_nearest_even() {
    let mut rng = Rng::new(1);
    for &(n, k) in &[(1, 1), (5, 3), (17, 33), (33, 64), (40, 129)] {
        let mut w = rng.vec(n * k, -3.0, 3.0);
        w[0] = f32::NAN;
        if w.len() > 2 {
            w[1] = f32::INFINITY;
            w[2] = 1.0 + 1.0 / 256.0; // a tie: rounds to the even 1.0
        }
        let p = packed(&w, n, k);
        let m = Bf16Matrix {
            rows: n,
            cols: k,
            data: &p,
        };
        assert!(m.is_consistent());
        let mut back = vec![0f32; n * k];
        unpack_bf16(&m, &mut back);
        assert!(back[0].is_nan(), "NaN survives packing");
        for (i, (&b, &x)) in back.iter().zip(&w).enumerate().skip(1) {
            assert_eq!(
                b.to_bits(),
                bf16::from_f32(x).to_f32().to_bits(),
                "{n}x{k} element {i}"
            );
        }
        if w.len() > 2 {
            assert_eq!(back[2], 1.0);
        }
        // Padding is zero, so the kernels may sum over it.
        let live = n * k;
        let nonzero = p.iter().filter(|v| v.to_f32() != 0.0 || v.is_nan()).count();
        assert!(nonzero <= live);
    }
}

/// The f32-activation paths (GEMV widening in registers for m ≤ 8, widened blocks + f32 GEMM
/// above) compute with the bf16-rounded weights exactly, so only f32 summation error
/// remains: γ_k·Σ|a||w| (bias added once more: γ_{k+1}).
#[test]
fn matmul_bf16_f32_paths_all_isas() {
    let mut rng = Rng::new(2);
    for &(m, k, n) in &SHAPES {
        let a = rng.vec(m * k, -1.0, 1.0);
        let w = rng.vec(n * k, -1.0, 1.0);
        let bias = rng.vec(n, -1.0, 1.0);
        let p = packed(&w, n, k);
        let wm = Bf16Matrix {
            rows: n,
            cols: k,
            data: &p,
        };
        let (r, abs) = reference(&a, &round(&w), &bias, m, k, n);
        for isa in supported_isas() {
            for threads in [1, 0] {
                let mut c = vec![f32::NAN; m * n];
                matmul_bf16_with(
                    isa,
                    threads,
                    Bf16Activations::Off,
                    &a,
                    &wm,
                    Some(&bias),
                    &mut c,
                    m,
                );
                check(
                    &format!("{isa} t{threads} {m}x{k}x{n}"),
                    &c,
                    &r,
                    &abs,
                    gamma(k + 1),
                );
            }
        }
    }
}

/// The AMX and AVX512-BF16 paths round A to bf16 too. Products of two bf16 values are exact
/// in f32 and the sums are f32 (tile sums; `vdpbf16ps` adds the pair's two products to the
/// lane one after the other), so against A and W both rounded the bound is γ_k·Σ|a||w| (plus
/// flushing of results below 2^-126, far below these magnitudes); against the f32
/// activations the rounding of A adds at most 2^-8 relative per product (bf16's unit
/// roundoff: 8 significant bits).
fn check_rounded_path(reduced: Bf16Activations, min_m: usize, name: &str) {
    let mut rng = Rng::new(3);
    for &(m, k, n) in SHAPES.iter().filter(|s| s.0 >= min_m) {
        let a = rng.vec(m * k, -1.0, 1.0);
        let w = rng.vec(n * k, -1.0, 1.0);
        let p = packed(&w, n, k);
        let wm = Bf16Matrix {
            rows: n,
            cols: k,
            data: &p,
        };
        // With a bias (added to the first chunk's accumulators) and without one.
        for bias in [rng.vec(n, -1.0, 1.0), vec![0.0; n]] {
            let (rb, absb) = reference(&round(&a), &round(&w), &bias, m, k, n);
            let (rf, absf) = reference(&a, &round(&w), &bias, m, k, n);
            let given = bias.iter().any(|&b| b != 0.0).then_some(&bias[..]);
            let mut first: Option<Vec<f32>> = None;
            for threads in [1, 0, 3] {
                let mut c = vec![f32::NAN; m * n];
                matmul_bf16_with(isa(), threads, reduced, &a, &wm, given, &mut c, m);
                let what = format!("{name} t{threads} {m}x{k}x{n} bias {}", given.is_some());
                check(&what, &c, &rb, &absb, gamma(k + 1));
                check(&what, &c, &rf, &absf, gamma(k + 1) + 2f64.powi(-8));
                // Every output is one walk over K whatever the split: bit-identical.
                match &first {
                    None => first = Some(c),
                    Some(f) => assert!(
                        f.iter().zip(&c).all(|(x, y)| x.to_bits() == y.to_bits()),
                        "{what}"
                    ),
                }
            }
        }
    }
}

#[test]
fn matmul_bf16_amx_path() {
    if !amx_available() {
        eprintln!("no AMX on this CPU: the AMX path is not exercised here");
        return;
    }
    check_rounded_path(Bf16Activations::Auto, AMX_MIN_M, "amx");
}

/// `vdpbf16ps` register tiles (taken from AMX_MIN_M rows, as AMX); run even where AMX is
/// available.
#[test]
fn matmul_bf16_dpbf16_path() {
    if !dpbf16_available() {
        eprintln!("no AVX512-BF16 on this CPU: the vdpbf16ps path is not exercised here");
        return;
    }
    check_rounded_path(Bf16Activations::Dpbf16, AMX_MIN_M, "dpbf16");
}

#[test]
fn matmul_bf16_k_zero_and_no_bias() {
    let p = packed(&[], 5, 0);
    let wm = Bf16Matrix {
        rows: 5,
        cols: 0,
        data: &p,
    };
    let bias = [1.0, 2.0, 3.0, 4.0, 5.0];
    let mut c = vec![f32::NAN; 2 * 5];
    matmul_bf16(&[], &wm, Some(&bias), &mut c, 2);
    assert_eq!(&c[5..], &bias);
    let mut rng = Rng::new(4);
    let (m, k, n) = (20, 40, 9);
    let a = rng.vec(m * k, -1.0, 1.0);
    let w = rng.vec(n * k, -1.0, 1.0);
    let p = packed(&w, n, k);
    let wm = Bf16Matrix {
        rows: n,
        cols: k,
        data: &p,
    };
    let zero = vec![0f32; n];
    let (r, abs) = reference(&a, &round(&w), &zero, m, k, n);
    let mut c = vec![f32::NAN; m * n];
    matmul_bf16(&a, &wm, None, &mut c, m);
    check("no bias", &c, &r, &abs, gamma(k) + 2f64.powi(-8));
}
