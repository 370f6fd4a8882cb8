//! Quantization error of a checkpoint's weight matrices in each block format, for
//! docs/quantization.md (the choice of Q4_0-like `q4` over a Q4_1-like format with a min):
//!
//! ```sh
//! cargo run --release --example quant_error -- assets/demo-model/model.safetensors
//! ```
//!
//! For every matrix with at least 32 columns it prints the NMSE Σ(w − deq(w))²/Σw² of `q8`,
//! `q4` and, for comparison only, "q4_1" (scale and minimum per block of 32, 5 bits per
//! weight), then the NMSE over all of them weighted by size.

use blip2_kernels::{QBLOCK, QFormat, dequantize, quantize_rows};
use half::{bf16, f16};
use safetensors::{Dtype, SafeTensors};

/// NMSE of `w` after the library's quantization into `format`.
fn nmse_library(format: QFormat, w: &[f32], rows: usize, cols: usize) -> (f64, f64) {
    let mut qs = vec![0u8; rows * format.row_bytes(cols)];
    let mut sc = vec![f16::ZERO; rows * QFormat::row_blocks(cols)];
    quantize_rows(format, w, rows, cols, &mut qs, &mut sc);
    let m = blip2_kernels::QMatrix {
        format,
        rows,
        cols,
        qs: &qs,
        scales: &sc,
    };
    let mut out = vec![0f32; w.len()];
    dequantize(&m, &mut out);
    err(w, &out)
}

/// Q4_1-style reference: per block d = (max − min)/15, m = min (both f16), q = round((x − m)/d).
fn nmse_q4_1(w: &[f32], cols: usize) -> (f64, f64) {
    let mut out = vec![0f32; w.len()];
    for (row, orow) in w.chunks(cols).zip(out.chunks_mut(cols)) {
        for (blk, oblk) in row.chunks(QBLOCK).zip(orow.chunks_mut(QBLOCK)) {
            let lo = blk.iter().copied().fold(f32::INFINITY, f32::min);
            let hi = blk.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let d = f16::from_f32((hi - lo) / 15.0).to_f32();
            let m = f16::from_f32(lo).to_f32();
            let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
            for (x, o) in blk.iter().zip(oblk.iter_mut()) {
                let q = ((x - m) * inv).round().clamp(0.0, 15.0);
                *o = m + d * q;
            }
        }
    }
    err(w, &out)
}

/// (Σ(a−b)², Σa²).
fn err(a: &[f32], b: &[f32]) -> (f64, f64) {
    a.iter().zip(b).fold((0.0, 0.0), |(n, d), (&x, &y)| {
        (n + (x as f64 - y as f64).powi(2), d + (x as f64).powi(2))
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .ok_or("usage: quant_error <model.safetensors>")?;
    let bytes = std::fs::read(&path)?;
    let st = SafeTensors::deserialize(&bytes)?;
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    let mut tot = [(0.0f64, 0.0f64); 3];
    println!("{:<70} {:>10} {:>10} {:>10}", "tensor", "q8", "q4", "q4_1");
    for name in names {
        let t = st.tensor(&name)?;
        if t.shape().len() != 2 || t.shape()[1] < QBLOCK {
            continue;
        }
        let (rows, cols) = (t.shape()[0], t.shape()[1]);
        let d = t.data();
        let w: Vec<f32> = match t.dtype() {
            Dtype::F32 => d
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::F16 => d
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::BF16 => d
                .chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            _ => continue,
        };
        let e = [
            nmse_library(QFormat::Q8, &w, rows, cols),
            nmse_library(QFormat::Q4, &w, rows, cols),
            nmse_q4_1(&w, cols),
        ];
        let r: Vec<String> = e
            .iter()
            .map(|(n, d)| format!("{:.2e}", n / d.max(1e-30)))
            .collect();
        println!("{name:<70} {:>10} {:>10} {:>10}", r[0], r[1], r[2]);
        for (t, (n, d)) in tot.iter_mut().zip(e) {
            t.0 += n;
            t.1 += d;
        }
    }
    let r: Vec<String> = tot
        .iter()
        .map(|(n, d)| format!("{:.2e}", n / d.max(1e-30)))
        .collect();
    println!(
        "{:<70} {:>10} {:>10} {:>10}",
        "ALL (size-weighted)", r[0], r[1], r[2]
    );
    Ok(())
}
