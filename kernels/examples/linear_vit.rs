//! The ViT-g linear layers (257 rows) with f32, f16 and packed bf16 weights, then f16
//! weights packed at load (as the engine holds them) on the f32 path and on the split bf16
//! path (AMX), interleaved, medians of `rounds`:
//! `cargo run --release -p blip2-kernels --example linear_vit -- [rounds] [rows]`.
use std::time::Instant;

use blip2_kernels::*;
use half::{bf16, f16};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(7);
    let m: usize = std::env::args()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(257);
    println!(
        "isa {} | AMX {} | {} threads",
        isa(),
        amx_available(),
        rayon::current_num_threads()
    );
    for (k, n) in [(1408, 4224), (1408, 1408), (1408, 6144), (6144, 1408)] {
        let a: Vec<f32> = (0..m * k)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
            .collect();
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 53 % 97) as f32 - 48.0) / 480.0)
            .collect();
        let wh: Vec<f16> = w.iter().map(|&x| f16::from_f32(x)).collect();
        let mut wb = AlignedVec::<bf16>::zeroed(bf16_packed_len(n, k));
        pack_bf16(&w, n, k, &mut wb);
        let wbm = Bf16Matrix {
            rows: n,
            cols: k,
            data: &wb,
        };
        let bias = vec![0.1f32; n];
        let mut c = vec![0f32; m * n];
        let mut wp = AlignedVec::<f16>::zeroed(checked_packed_len(n, k).unwrap());
        pack_linear(&wh, n, k, &mut wp);
        let wpm = PackedMatrix {
            rows: n,
            cols: k,
            data: PackedData::F16(&wp),
        };
        let (mut t32, mut t16, mut tb) = (vec![], vec![], vec![]);
        let mut wp32 = AlignedVec::<f32>::zeroed(checked_packed_len(n, k).unwrap());
        pack_linear(&w, n, k, &mut wp32);
        let wpm32 = PackedMatrix {
            rows: n,
            cols: k,
            data: PackedData::F32(&wp32),
        };
        let (mut tp, mut ts, mut tp32) = (vec![], vec![], vec![]);
        for _ in 0..rounds {
            let t = Instant::now();
            matmul(&a, BSlice::F32(&w), Some(&bias), &mut c, m, k, n, true);
            t32.push(t.elapsed().as_secs_f64());
            let t = Instant::now();
            matmul(&a, BSlice::F16(&wh), Some(&bias), &mut c, m, k, n, true);
            t16.push(t.elapsed().as_secs_f64());
            let t = Instant::now();
            matmul_bf16(&a, &wbm, Some(&bias), &mut c, m);
            tb.push(t.elapsed().as_secs_f64());
            let t = Instant::now();
            matmul_packed_with(isa(), 0, &a, &wpm, Some(&bias), &mut c, m);
            tp.push(t.elapsed().as_secs_f64());
            let t = Instant::now();
            matmul_packed_with(isa(), 0, &a, &wpm32, Some(&bias), &mut c, m);
            tp32.push(t.elapsed().as_secs_f64());
            let t = Instant::now();
            if !matmul_packed_split_with(0, &a, &wpm, Some(&bias), &mut c, m) {
                break;
            }
            ts.push(t.elapsed().as_secs_f64());
        }
        let fl = 2.0 * (m * n * k) as f64 / 1e9;
        let (a32, a16, ab) = (median(t32), median(t16), median(tb));
        println!(
            "{m}x{k}x{n}: f32 {:.2} ms ({:.0} GFLOP/s) | f16 {:.2} ms ({:.0}) | bf16 {:.2} ms ({:.0}) | bf16/f32 {:.2}",
            a32 * 1e3,
            fl / a32,
            a16 * 1e3,
            fl / a16,
            ab * 1e3,
            fl / ab,
            ab / a32
        );
        let ap = median(tp);
        let ap32 = median(tp32);
        println!(
            "  f32 packed {:.2} ms ({:.0}) | packed/row-major {:.2}",
            ap32 * 1e3,
            fl / ap32,
            ap32 / a32
        );
        if ts.is_empty() {
            println!(
                "  f16 packed {:.2} ms ({:.0}) | no split path here",
                ap * 1e3,
                fl / ap
            );
        } else {
            let asp = median(ts);
            println!(
                "  f16 packed {:.2} ms ({:.0}) | f16 split {:.2} ms ({:.0}) | split/packed {:.2}",
                ap * 1e3,
                fl / ap,
                asp * 1e3,
                fl / asp,
                asp / ap
            );
        }
    }
}
