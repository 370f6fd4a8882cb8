use blip2_kernels::*;
use half::f16;
use std::time::Instant;
fn main() {
    for &(k, n) in &[(2560usize, 10240usize), (2560, 512)] {
        let a: Vec<f32> = (0..k).map(|i| (i % 13) as f32 * 0.1).collect();
        let w: Vec<f32> = (0..k * n)
            .map(|i| ((i * 7919) % 1000) as f32 * 0.001)
            .collect();
        let wh: Vec<f16> = w.iter().map(|&x| f16::from_f32(x)).collect();
        let mut out = vec![0f32; n];
        for isa in supported_isas() {
            for threads in [1, 2] {
                let mut b32 = f64::MAX;
                let mut b16 = f64::MAX;
                for _ in 0..30 {
                    let t = Instant::now();
                    matmul_with(
                        isa,
                        threads,
                        &a,
                        BSlice::F32(&w),
                        None,
                        &mut out,
                        1,
                        k,
                        n,
                        true,
                    );
                    b32 = b32.min(t.elapsed().as_secs_f64());
                }
                for _ in 0..30 {
                    let t = Instant::now();
                    matmul_with(
                        isa,
                        threads,
                        &a,
                        BSlice::F16(&wh),
                        None,
                        &mut out,
                        1,
                        k,
                        n,
                        true,
                    );
                    b16 = b16.min(t.elapsed().as_secs_f64());
                }
                let e = (k * n) as f64;
                println!(
                    "{k}x{n} {isa} t{threads}: f32 {:.1} GB/s ({:.2} Gelem/s)  f16 {:.1} GB/s ({:.2} Gelem/s)",
                    e * 4.0 / b32 / 1e9,
                    e / b32 / 1e9,
                    e * 2.0 / b16 / 1e9,
                    e / b16 / 1e9
                );
            }
        }
    }
}
