//! q8/q4 weights on CPUs without the matrix engine (what `QuantPath::NoTiles` runs, here
//! whatever the CPU): 2 to 16 activation rows on AVX-512 VNNI (`QuantKernel::Int8Rows`: the
//! decode GEMV's arithmetic, 8 rows per pass over W) against the integer f64 reference and
//! bit for bit against the GEMV run on each row alone; more rows on AVX512-BF16
//! (`QuantKernel::Bf16Dot`) against f64 on the bf16-rounded and on the exact operands.

mod common;

use blip2_kernels::*;
use common::{Rng, check, check_bf16_quant_path, gamma, matmul_q_int_ref, quantized, view};

/// Bound: γ_{blocks+8}·Σ_b|d_w·d_x|·Σ_i|q_w·q_x|, the decode path's (`kernels.rs`): each of
/// the 16 lanes holds an exact integer part of a block's sum, adds it times the block's
/// rounded d_w·d_x with one FMA, and the lanes are reduced in a tree (4 roundings); the
/// parts of one block may cancel across lanes, hence the products' magnitudes. Sizes: 2 to 16 rows (9–16 take two passes over W), K
/// with a half-empty last 64-byte group (q8) and a zero-padded last block, N odd (a last
/// pair of W rows with one row); 1, 2 and 3 tasks.
#[test]
fn quantized_matmul_vnni_rows() {
    if !(isa() == Isa::Avx512 && vnni_available()) {
        eprintln!("no AVX-512 VNNI on this CPU: the multi-row integer path is not exercised");
        assert_ne!(
            quant_kernel(isa(), QuantPath::NoTiles, 8),
            QuantKernel::Int8Rows
        );
        return;
    }
    let shapes = [
        (2, 95, 21),
        (3, 257, 130),
        (4, 64, 7),
        (5, 100, 33),
        (8, 1408, 70),
        (9, 45, 64),
        (13, 160, 5),
        (16, 2560, 37),
    ];
    let mut rng = Rng::new(51);
    for &(m, k, n) in &shapes {
        assert_eq!(
            quant_kernel(isa(), QuantPath::NoTiles, m),
            QuantKernel::Int8Rows
        );
        let a = rng.vec(m * k, -1.0, 1.0);
        let w = rng.vec(n * k, -1.0, 1.0);
        for format in [QFormat::Q8, QFormat::Q4] {
            let (qs, sc) = quantized(format, &w, n, k);
            let qm = view(format, &qs, &sc, n, k);
            for bias in [Some(rng.vec(n, -1.0, 1.0)), None] {
                let (r, abs) = matmul_q_int_ref(&a, format, &qs, &sc, bias.as_deref(), m, k, n);
                // Each row alone through the GEMV (one row never takes another kernel).
                let mut single = vec![0f32; m * n];
                for i in 0..m {
                    assert_eq!(
                        quant_kernel(isa(), QuantPath::NoTiles, 1),
                        QuantKernel::Gemv
                    );
                    matmul_q_path(
                        isa(),
                        1,
                        QuantPath::NoTiles,
                        &a[i * k..(i + 1) * k],
                        &qm,
                        bias.as_deref(),
                        &mut single[i * n..(i + 1) * n],
                        1,
                    );
                }
                for threads in [1, 0, 3] {
                    let mut c = vec![f32::NAN; m * n];
                    matmul_q_path(
                        isa(),
                        threads,
                        QuantPath::NoTiles,
                        &a,
                        &qm,
                        bias.as_deref(),
                        &mut c,
                        m,
                    );
                    let what = format!("vnni rows {format:?} t{threads} {m}x{k}x{n}");
                    check(&what, &c, &r, &abs, gamma(QFormat::row_blocks(k) + 8));
                    let same = single
                        .iter()
                        .zip(&c)
                        .all(|(x, y)| x.to_bits() == y.to_bits());
                    assert!(same, "{what}: not bit-identical to the GEMV row by row");
                }
            }
        }
    }
}

/// As the AMX bf16 tiles (`quant_amx.rs`): A and the dequantized W rounded to bf16, products
/// exact in f32, f32 sums (`vdpbf16ps` adds a pair's two products to its lane, then the
/// lane's running sum: still k products and the bias), so γ_{k+1}·Σ|a||w| against the
/// rounded operands and + 2·2^-8 + 2^-16 against the unrounded ones. Bit-identical across
/// 1–3 tasks (each output is one walk over K) and to `matmul_q_path` with `NoTiles`.
#[test]
fn quantized_matmul_dpbf16_path() {
    if !quant_dpbf16_available() {
        eprintln!(
            "no AVX512-BF16 with VBMI on this CPU: the quantized AVX512-BF16 path is not exercised"
        );
        let mut c = vec![f32::NAN; 5];
        let qm = view(QFormat::Q8, &[], &[], 1, 0);
        assert!(!matmul_q_dpbf16_with(1, &[], &qm, None, &mut c, 5));
        assert!(
            c.iter().all(|v| v.is_nan()),
            "nothing written without AVX512-BF16"
        );
        return;
    }
    check_bf16_quant_path(
        37,
        &|t, a, w, b, c, m| matmul_q_dpbf16_with(t, a, w, b, c, m),
        QuantPath::NoTiles,
        QuantKernel::Bf16Dot,
    );
}
