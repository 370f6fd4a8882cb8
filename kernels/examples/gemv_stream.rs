//! Decode-step GEMV throughput with weights streamed from DRAM: f16 vs q8 vs q4 vs packed
//! bf16, one row of
//! activations, `MATRICES` distinct weight matrices per timing (more than the last-level
//! cache holds, as in a real decode step), the dtypes interleaved round by round;
//! prints medians, bytes per second and the ratio to f16.
//!
//!     cargo run --release -p blip2-kernels --example gemv_stream -- [threads] [k] [n] [rounds] [m]
//!
//! Defaults: all threads, OPT-2.7B's fc1 (k = 2560, n = 10240), 15 rounds, m = 1 row (m = 8:
//! a batch-8 decode step).

use std::time::Instant;

use blip2_kernels::{
    BSlice, Bf16Activations, Bf16Matrix, QFormat, QMatrix, bf16_packed_len, isa, matmul_bf16_with,
    matmul_q_with, matmul_with, pack_bf16, quantize_rows,
};
use half::{bf16, f16};

const MATRICES: usize = 6;

fn arg(i: usize, default: usize) -> usize {
    std::env::args()
        .nth(i)
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let (threads, k, n, rounds) = (arg(1, 0), arg(2, 2560), arg(3, 10240), arg(4, 15).max(1));
    let m = arg(5, 1).max(1);
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut uniform = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    };
    let mut w16 = Vec::new();
    let mut wb = Vec::new();
    let mut quant: [Vec<(Vec<u8>, Vec<f16>)>; 2] = [Vec::new(), Vec::new()];
    let formats = [QFormat::Q8, QFormat::Q4];
    for _ in 0..MATRICES {
        let w: Vec<f32> = (0..k * n).map(|_| uniform()).collect();
        w16.push(w.iter().map(|&v| f16::from_f32(v)).collect::<Vec<f16>>());
        let mut p = vec![bf16::ZERO; bf16_packed_len(n, k)];
        pack_bf16(&w, n, k, &mut p);
        wb.push(p);
        for (f, out) in formats.iter().zip(quant.iter_mut()) {
            let mut qs = vec![0u8; n * f.row_bytes(k)];
            let mut sc = vec![f16::ZERO; n * QFormat::row_blocks(k)];
            quantize_rows(*f, &w, n, k, &mut qs, &mut sc);
            out.push((qs, sc));
        }
    }
    let a: Vec<f32> = (0..m * k).map(|_| uniform()).collect();
    let mut c = vec![0f32; m * n];
    let isa = isa();
    let mut times = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
    for _ in 0..rounds {
        let t = Instant::now();
        for w in &w16 {
            matmul_with(
                isa,
                threads,
                &a,
                BSlice::F16(w),
                None,
                &mut c,
                m,
                k,
                n,
                true,
            );
        }
        times[0].push(t.elapsed().as_secs_f64() / MATRICES as f64);
        for (fi, f) in formats.iter().enumerate() {
            let t = Instant::now();
            for (qs, scales) in &quant[fi] {
                let w = QMatrix {
                    format: *f,
                    rows: n,
                    cols: k,
                    qs,
                    scales,
                };
                matmul_q_with(isa, threads, &a, &w, None, &mut c, m);
            }
            times[fi + 1].push(t.elapsed().as_secs_f64() / MATRICES as f64);
        }
        let t = Instant::now();
        for data in &wb {
            let w = Bf16Matrix {
                rows: n,
                cols: k,
                data,
            };
            matmul_bf16_with(isa, threads, Bf16Activations::Auto, &a, &w, None, &mut c, m);
        }
        times[3].push(t.elapsed().as_secs_f64() / MATRICES as f64);
    }
    let weights = (k * n) as f64;
    let bytes = [
        2.0 * weights,
        34.0 / 32.0 * weights,
        18.0 / 32.0 * weights,
        2.0 * weights,
    ];
    let meds: Vec<f64> = times.iter_mut().map(|t| median(t)).collect();
    println!(
        "{isa:?}, threads {threads} (0 = all), {m} x {k} . {n} x {k}, {rounds} rounds, medians:"
    );
    for (i, name) in ["f16", "q8", "q4", "bf16"].iter().enumerate() {
        println!(
            "{name}: {:8.3} ms  {:5.1} GB/s  ratio to f16 {:.3}",
            meds[i] * 1e3,
            bytes[i] / meds[i] / 1e9,
            meds[i] / meds[0]
        );
    }
}
