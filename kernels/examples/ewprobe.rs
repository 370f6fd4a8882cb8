use blip2_kernels::*;
use std::time::Instant;
fn main() {
    let n = 257 * 6144;
    let x: Vec<f32> = (0..n)
        .map(|i| ((i * 7919) % 2000) as f32 * 0.01 - 10.0)
        .collect();
    for isa in supported_isas() {
        let mut y = x.clone();
        let mut best = f64::MAX;
        for _ in 0..20 {
            y.copy_from_slice(&x);
            let t = Instant::now();
            gelu_erf_inplace_with(isa, &mut y);
            best = best.min(t.elapsed().as_secs_f64());
        }
        let mut bs = f64::MAX;
        for _ in 0..20 {
            y.copy_from_slice(&x);
            let t = Instant::now();
            for r in y.chunks_exact_mut(257) {
                softmax_inplace_with(isa, r);
            }
            bs = bs.min(t.elapsed().as_secs_f64());
        }
        let mut bt = f64::MAX;
        for _ in 0..20 {
            y.copy_from_slice(&x);
            let t = Instant::now();
            gelu_tanh_inplace_with(isa, &mut y);
            bt = bt.min(t.elapsed().as_secs_f64());
        }
        println!(
            "{isa}: gelu_erf {:.3} ns/elem  softmax(257) {:.3} ns/elem gelu_tanh {:.3}",
            best / n as f64 * 1e9,
            bs / n as f64 * 1e9,
            bt / n as f64 * 1e9
        );
    }
}
