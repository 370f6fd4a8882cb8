//! Quantized weights on AMX (`matmul_q_amx_with` on bf16 tiles, `matmul_q_amx_int8_with` on
//! int8 tiles, and `matmul_q`, which takes them above the decode rows where the CPU has AMX)
//! against f64 references on seeded random inputs with awkward sizes. Each check states its
//! tolerance.

mod common;

use blip2_kernels::*;
use common::{
    Rng, check, check_bf16_quant_path, gamma, matmul_q_int_ref, quantized, reference,
    round_bf16 as round, view,
};
use half::f16;

/// An empty q8 matrix (for the calls that must decline without the hardware).
fn empty() -> QMatrix<'static> {
    view(QFormat::Q8, &[], &[], 1, 0)
}

/// A and the dequantized W are both rounded to bf16 (d·q is exact in f32, then rounded to
/// nearest even); each product of two bf16 values is exact in f32 and the sums are f32, so
/// against the rounded operands the bound is γ_{k+1}·Σ|a||w| (k products and the bias).
/// Against the f32 activations and the exact dequantized weights each product moves by at
/// most (1 + 2^-8)² − 1 = 2·2^-8 + 2^-16 of |a·w| (bf16 keeps 8 significant bits).
#[test]
fn quantized_matmul_amx_path() {
    if !quant_amx_available() {
        eprintln!("no AMX on this CPU: the quantized AMX path is not exercised here");
        let mut c = vec![f32::NAN; 5];
        let qm = empty();
        assert!(!matmul_q_amx_with(1, &[], &qm, None, &mut c, 5));
        assert!(c.iter().all(|v| v.is_nan()), "nothing written without AMX");
        return;
    }
    check_bf16_quant_path(
        31,
        &|t, a, w, b, c, m| matmul_q_amx_with(t, a, w, b, c, m),
        QuantPath::Auto,
        QuantKernel::Bf16Tiles,
    );
}

/// Scales of every magnitude an f16 holds (subnormal to 65504) and zero blocks: d·q is
/// exact in f32, so the tiles hold bf16(d·q) exactly as the portable dequantization rounds
/// it; a product below bf16's normal range counts as zero on AMX.
#[test]
fn quantized_amx_scales_of_every_size() {
    if !quant_amx_available() {
        return;
    }
    let (m, k, n) = (6, 96, 40);
    let mut rng = Rng::new(32);
    let a = rng.vec(m * k, -1.0, 1.0);
    let nb = QFormat::row_blocks(k);
    let format = QFormat::Q8;
    let qs: Vec<u8> = (0..n * format.row_bytes(k))
        .map(|i| ((i * 37 + 11) % 255) as u8)
        .map(|b| if b == 0x80 { 0 } else { b })
        .collect();
    let sc: Vec<f16> = (0..n * nb)
        .map(|i| match i % 5 {
            0 => f16::from_f32(6.0e-8),
            1 => f16::from_f32(0.0),
            2 => f16::from_f32(1.5e-3),
            3 => f16::from_f32(3.25),
            _ => f16::from_f32(60000.0),
        })
        .collect();
    let qm = QMatrix {
        format,
        rows: n,
        cols: k,
        qs: &qs,
        scales: &sc,
    };
    let mut wd = vec![0f32; n * k];
    dequantize(&qm, &mut wd);
    // bf16 values below 2^-126 are flushed by the tile unit.
    let rw: Vec<f32> = round(&wd)
        .into_iter()
        .map(|v| if v.abs() < f32::MIN_POSITIVE { 0.0 } else { v })
        .collect();
    let (r, abs) = reference(&round(&a), &rw, &vec![0.0; n], m, k, n);
    let mut c = vec![f32::NAN; m * n];
    assert!(matmul_q_amx_with(0, &a, &qm, None, &mut c, m));
    check("scales", &c, &r, &abs, gamma(k + 1));
}

/// The int8 tiles compute what the integer decode path does: activations quantized per
/// block of 32 (`QActivations`), exact integer block sums (at most 32·127·127 in magnitude,
/// exact in i32 and in the f32 they are converted to), then per block one rounding of
/// d_w·d_x and one FMA: against the f64 reference on the same integers the bound is
/// γ_{blocks+8}·Σ_b|d_w·d_x·I_b|; checked against the shared reference's
/// γ_{blocks+8}·Σ_b|d_w·d_x|·Σ_i|q_w·q_x| (as in `kernels.rs` for the decode path, whose lanes
/// hold partial block sums), which contains it. Sizes: 1 to 16
/// rows, K off the 32 grid (a zero-padded block), N with a half-empty last pair and with a
/// last pair of fewer than 16 rows; 1, 2 and 3 tasks; bit-identical across them and to
/// `matmul_q` from 2 rows.
#[test]
fn quantized_matmul_amx_int8_path() {
    if !quant_amx_int8_available() {
        eprintln!("no AMX-INT8 on this CPU: the int8 tile path is not exercised here");
        let mut c = vec![f32::NAN; 5];
        let qm = empty();
        assert!(!matmul_q_amx_int8_with(1, &[], &qm, None, &mut c, 5));
        assert!(
            c.iter().all(|v| v.is_nan()),
            "nothing written without AMX-INT8"
        );
        return;
    }
    let shapes = [
        (1, 32, 16),
        (2, 95, 20),
        (4, 257, 130),
        (5, 100, 33),
        (8, 64, 70),
        (9, 1408, 40),
        (13, 45, 7),
        (16, 2560, 100),
        (16, 31, 32),
    ];
    let mut rng = Rng::new(33);
    for &(m, k, n) in &shapes {
        let a = rng.vec(m * k, -1.0, 1.0);
        let w = rng.vec(n * k, -1.0, 1.0);
        for format in [QFormat::Q8, QFormat::Q4] {
            let (qs, sc) = quantized(format, &w, n, k);
            let qm = view(format, &qs, &sc, n, k);
            for bias in [Some(rng.vec(n, -1.0, 1.0)), None] {
                let (r, abs) = matmul_q_int_ref(&a, format, &qs, &sc, bias.as_deref(), m, k, n);
                let mut first: Option<Vec<f32>> = None;
                for threads in [1, 0, 3] {
                    let mut c = vec![f32::NAN; m * n];
                    assert!(matmul_q_amx_int8_with(
                        threads,
                        &a,
                        &qm,
                        bias.as_deref(),
                        &mut c,
                        m
                    ));
                    let what = format!("int8 {format:?} t{threads} {m}x{k}x{n}");
                    check(&what, &c, &r, &abs, gamma(QFormat::row_blocks(k) + 8));
                    match &first {
                        None => first = Some(c),
                        Some(f) => assert!(
                            f.iter().zip(&c).all(|(x, y)| x.to_bits() == y.to_bits()),
                            "{what}"
                        ),
                    }
                }
                if quant_kernel(isa(), QuantPath::Auto, m) == QuantKernel::Int8Tiles {
                    let mut c = vec![f32::NAN; m * n];
                    matmul_q(&a, &qm, bias.as_deref(), &mut c, m);
                    let f = first.as_ref().unwrap();
                    assert!(
                        f.iter().zip(&c).all(|(x, y)| x.to_bits() == y.to_bits()),
                        "matmul_q {format:?} {m}x{k}x{n}"
                    );
                }
            }
        }
        // Out of its row range it declines.
        let mut c = vec![f32::NAN; 17 * n];
        let a17 = rng.vec(17 * k, -1.0, 1.0);
        let (qs, sc) = quantized(QFormat::Q8, &w, n, k);
        let qm = view(QFormat::Q8, &qs, &sc, n, k);
        assert!(!matmul_q_amx_int8_with(1, &a17, &qm, None, &mut c, 17));
    }
}
