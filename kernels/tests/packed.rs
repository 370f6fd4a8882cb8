//! The packed f32/f16 linear layer (`matmul_packed`) on every instruction set this CPU
//! supports, against f64 references on seeded random inputs with awkward sizes: every m from
//! 1 to 9 (the small-M panel kernels with 4, 2 and 1 panels per pass, K read as 1, 2 or 4
//! interleaved ranges, then the blocked path with each of its tile heights), partial last
//! panels, K past the 256-value cache block, and rows past one 336-row block of A. Each check states its tolerance.

mod common;

use blip2_kernels::*;
use common::{Rng, check, gamma, reference};
use half::f16;

const SHAPES: [(usize, usize, usize); 19] = [
    (1, 1, 1),
    (1, 33, 200),
    (2, 7, 129),
    (3, 300, 70),
    // K odd: the small-M kernels read K as 2 or 4 interleaved ranges plus a tail.
    (4, 65, 161),
    (5, 17, 33),
    (6, 96, 64),
    (7, 45, 31),
    (8, 100, 97),
    (9, 64, 31),
    // Tile heights 14, 8 (15 and 16 rows: two tiles of 8), 12 (23 rows), 10 (29 rows).
    (14, 257, 32),
    (15, 45, 50),
    (16, 128, 70),
    (23, 100, 40),
    (29, 513, 65),
    (40, 129, 97),
    // A past one 336-row block of packed A, a partial last panel.
    (350, 40, 45),
    // Enough work for several tasks: panel ranges split over threads.
    (1, 1100, 300),
    (70, 300, 130),
];

fn pack<T: Copy + Default + Send + Sync>(w: &[T], n: usize, k: usize) -> Vec<T> {
    let mut p = vec![T::default(); checked_packed_len(n, k).unwrap()];
    pack_linear(w, n, k, &mut p);
    p
}

#[test]
fn pack_and_unpack_are_inverse_and_pad_with_zeros() {
    let mut rng = Rng::new(1);
    for &(n, k) in &[(1, 1), (5, 3), (31, 33), (32, 64), (33, 129), (70, 2)] {
        let w = rng.vec(n * k, -3.0, 3.0);
        let p = pack(&w, n, k);
        let pm = PackedMatrix {
            rows: n,
            cols: k,
            data: PackedData::F32(&p),
        };
        assert!(pm.is_consistent());
        let mut back = vec![0f32; n * k];
        unpack_packed(&pm, &mut back);
        assert_eq!(back, w, "{n}x{k}");
        let mut row = vec![0f32; k];
        unpack_packed_row(&pm, n - 1, &mut row);
        assert_eq!(row, w[(n - 1) * k..], "{n}x{k} last row");
        // Padding rows are zero, so the kernels may sum over them.
        let zeros = p.iter().filter(|&&v| v == 0.0).count();
        assert!(zeros >= p.len() - n * k, "{n}x{k} padding");
        // A wrong length is inconsistent, not an out-of-bounds read.
        let short = PackedMatrix {
            rows: n + PANEL,
            cols: k,
            data: PackedData::F32(&p),
        };
        assert!(!short.is_consistent());
    }
    assert_eq!(checked_packed_len(usize::MAX, 2), None);
}

/// f32 weights: the product is A·Wᵀ summed in f32 (each output one running sum over K, in
/// an order that depends on the path, the bias added once), so the bound is
/// γ_{k+1}·(Σ|a||w| + |bias|), which holds for any order. Results must
/// also be bit-identical across thread counts (tasks split columns only).
#[test]
fn matmul_packed_f32_all_isas() {
    let mut rng = Rng::new(2);
    for &(m, k, n) in &SHAPES {
        let a = rng.vec(m * k, -1.0, 1.0);
        let w = rng.vec(n * k, -1.0, 1.0);
        let p = pack(&w, n, k);
        let wm = PackedMatrix {
            rows: n,
            cols: k,
            data: PackedData::F32(&p),
        };
        for bias in [Some(rng.vec(n, -1.0, 1.0)), None] {
            let zeros = vec![0.0; n];
            let (r, abs) = reference(&a, &w, bias.as_deref().unwrap_or(&zeros), m, k, n);
            for isa in supported_isas() {
                let mut first: Option<Vec<f32>> = None;
                for threads in [1, 0, 3] {
                    let mut c = vec![f32::NAN; m * n];
                    matmul_packed_with(isa, threads, &a, &wm, bias.as_deref(), &mut c, m);
                    let what = format!("{isa} t{threads} {m}x{k}x{n} bias {}", bias.is_some());
                    check(&what, &c, &r, &abs, gamma(k + 1));
                    match &first {
                        None => first = Some(c),
                        Some(f) => assert!(
                            f.iter().zip(&c).all(|(x, y)| x.to_bits() == y.to_bits()),
                            "{what}: differs from the 1-thread result"
                        ),
                    }
                }
            }
        }
    }
}

/// f16 weights are widened exactly, so the bound against the f16 values is the f32 one,
/// γ_{k+1}·(Σ|a||w| + |bias|); and the result equals the row-major f16 matmul's to within
/// the same bound (the same products, possibly summed in another order).
#[test]
fn matmul_packed_f16_all_isas() {
    let mut rng = Rng::new(3);
    for &(m, k, n) in &SHAPES {
        let a = rng.vec(m * k, -1.0, 1.0);
        let w16: Vec<f16> = rng
            .vec(n * k, -1.0, 1.0)
            .into_iter()
            .map(f16::from_f32)
            .collect();
        let w: Vec<f32> = w16.iter().map(|v| v.to_f32()).collect();
        let p = pack(&w16, n, k);
        let wm = PackedMatrix {
            rows: n,
            cols: k,
            data: PackedData::F16(&p),
        };
        let bias = rng.vec(n, -1.0, 1.0);
        let (r, abs) = reference(&a, &w, &bias, m, k, n);
        for isa in supported_isas() {
            for threads in [1, 0] {
                let mut c = vec![f32::NAN; m * n];
                matmul_packed_with(isa, threads, &a, &wm, Some(&bias), &mut c, m);
                check(
                    &format!("{isa} t{threads} {m}x{k}x{n}"),
                    &c,
                    &r,
                    &abs,
                    gamma(k + 1),
                );
                let mut plain = vec![0f32; m * n];
                matmul_with(
                    isa,
                    threads,
                    &a,
                    BSlice::F16(&w16),
                    Some(&bias),
                    &mut plain,
                    m,
                    k,
                    n,
                    true,
                );
                check(
                    &format!("{isa} t{threads} {m}x{k}x{n} vs row-major"),
                    &plain,
                    &r,
                    &abs,
                    gamma(k + 1),
                );
            }
        }
    }
}

/// Non-finite inputs propagate as in the row-major GEMM (no lane of padding or masking
/// hides them): a NaN in row i of A makes row i of C NaN, an inf weight makes its column
/// inf. On the split path (where the CPU has it) the column is non-finite: NaN where the
/// weight's zero lo half meets an inf.
#[test]
fn non_finite_values_propagate() {
    for m in [1, 3, 9, 20, 40] {
        let (k, n) = (40, 70);
        let mut a = vec![0.5f32; m * k];
        let mut w = vec![0.25f32; n * k];
        a[(m - 1) * k + 3] = f32::NAN;
        w[65 * k + 7] = f32::INFINITY;
        let p = pack(&w, n, k);
        let wm = PackedMatrix {
            rows: n,
            cols: k,
            data: PackedData::F32(&p),
        };
        let runs = supported_isas()
            .into_iter()
            .map(|isa| (isa.to_string(), Some(isa)));
        for (name, isa) in runs.chain([("split".to_string(), None)]) {
            let mut c = vec![0f32; m * n];
            match isa {
                Some(isa) => matmul_packed_with(isa, 1, &a, &wm, None, &mut c, m),
                None if matmul_packed_split_with(1, &a, &wm, None, &mut c, m) => {}
                None => continue,
            }
            for i in 0..m {
                for j in 0..n {
                    let v = c[i * n + j];
                    if i == m - 1 {
                        assert!(v.is_nan(), "{name} m{m}: ({i},{j}) = {v}");
                    } else if j == 65 {
                        let ok = if isa.is_some() {
                            v.is_infinite()
                        } else {
                            !v.is_finite()
                        };
                        assert!(ok, "{name} m{m}: ({i},{j}) = {v}");
                    } else {
                        assert_eq!(v, 0.5 * 0.25 * k as f32, "{name} m{m}: ({i},{j})");
                    }
                }
            }
        }
    }
}

/// The split bf16 path (AMX): each product within 2·2^-16 of |a·w| for f16 weights (split
/// exactly) and 3·2^-16 for f32 ones (the weight's own split leaves up to 2^-16 of it; see
/// amx_split.rs), each of the 3k bf16 products exact in f32, then f32 sums over them and the
/// bias: bound (2^-14 + 1.01·γ_{3k+2})·(Σ|a||w| + |bias|) (1.01: the terms' magnitudes
/// exceed |a||w| by at most 2^-7). Shapes: below and at one 32-row block, partial last
/// blocks of rows and columns, K not a multiple of 32, K in several chunks (A past the chunk
/// budget at 1100 rows), and thread splits (bit-equal to one thread: tasks own whole
/// columns). A CPU without AMX has no such path: the call must say so and write nothing.
#[test]
fn matmul_packed_split_matches_reference() {
    const SPLIT_SHAPES: [(usize, usize, usize); 8] = [
        (1, 33, 200),
        (5, 17, 33),
        (16, 64, 32),
        (32, 100, 97),
        (33, 257, 64),
        (70, 300, 130),
        (257, 45, 250),
        (1100, 333, 40),
    ];
    let mut rng = Rng::new(9);
    for &(m, k, n) in &SPLIT_SHAPES {
        let a = rng.vec(m * k, -1.0, 1.0);
        let w32 = rng.vec(n * k, -1.0, 1.0);
        let w16: Vec<f16> = w32.iter().map(|&v| f16::from_f32(v)).collect();
        let w16_wide: Vec<f32> = w16.iter().map(|v| v.to_f32()).collect();
        let (p32, p16) = (pack(&w32, n, k), pack(&w16, n, k));
        let bias = rng.vec(n, -1.0, 1.0);
        for (name, data, wref) in [
            ("f32", PackedData::F32(&p32), &w32),
            ("f16", PackedData::F16(&p16), &w16_wide),
        ] {
            let wm = PackedMatrix {
                rows: n,
                cols: k,
                data,
            };
            let (r, abs) = reference(&a, wref, &bias, m, k, n);
            let mut first: Option<Vec<f32>> = None;
            for threads in [1, 0, 3] {
                let mut c = vec![f32::NAN; m * n];
                let ran = matmul_packed_split_with(threads, &a, &wm, Some(&bias), &mut c, m);
                assert_eq!(ran, split_available());
                if !ran {
                    assert!(c.iter().all(|v| v.is_nan()), "nothing written without AMX");
                    continue;
                }
                let what = format!("split {name} t{threads} {m}x{k}x{n}");
                check(
                    &what,
                    &c,
                    &r,
                    &abs,
                    2f64.powi(-14) + 1.01 * gamma(3 * k + 2),
                );
                match &first {
                    None => first = Some(c),
                    Some(f) => assert!(
                        f.iter().zip(&c).all(|(x, y)| x.to_bits() == y.to_bits()),
                        "{what}: differs from the 1-thread result"
                    ),
                }
            }
        }
    }
    // The default entry point takes it for f16 weights from SPLIT_MIN_M rows (where the
    // CPU has it) and is then bit-equal to the explicit call.
    let (m, k, n) = (SPLIT_MIN_M, 96, 64);
    let a = rng.vec(m * k, -1.0, 1.0);
    let w16: Vec<f16> = rng
        .vec(n * k, -1.0, 1.0)
        .into_iter()
        .map(f16::from_f32)
        .collect();
    let p = pack(&w16, n, k);
    let wm = PackedMatrix {
        rows: n,
        cols: k,
        data: PackedData::F16(&p),
    };
    let (mut auto, mut split) = (vec![0f32; m * n], vec![0f32; m * n]);
    matmul_packed(&a, &wm, None, &mut auto, m);
    if split_applies(&wm, m) {
        assert!(matmul_packed_split_with(0, &a, &wm, None, &mut split, m));
        assert!(
            auto.iter()
                .zip(&split)
                .all(|(x, y)| x.to_bits() == y.to_bits())
        );
    }
}
