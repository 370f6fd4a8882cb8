use blip2_kernels::*;
use half::f16;
use std::time::Instant;
fn main() {
    let (k, n) = (2560usize, 10240usize);
    let w: Vec<f32> = (0..k * n).map(|i| ((i * 7919) % 1000) as f32 * 0.001).collect();
    let wh: Vec<f16> = w.iter().map(|&x| f16::from_f32(x)).collect();
    for m in [1usize, 2, 3, 4, 5, 6, 8, 12, 16] {
        let a: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 * 0.1).collect();
        let mut out = vec![0f32; m * n];
        let mut b32 = f64::MAX; let mut b16 = f64::MAX;
        for _ in 0..10 { let t = Instant::now(); matmul_with(isa(), 1, &a, BSlice::F32(&w), None, &mut out, m, k, n, true); b32 = b32.min(t.elapsed().as_secs_f64()); }
        for _ in 0..10 { let t = Instant::now(); matmul_with(isa(), 1, &a, BSlice::F16(&wh), None, &mut out, m, k, n, true); b16 = b16.min(t.elapsed().as_secs_f64()); }
        println!("m={m}: f32 {:.2} ms  f16 {:.2} ms", b32 * 1e3, b16 * 1e3);
    }
}
