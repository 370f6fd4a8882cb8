use blip2_kernels::*;
use std::time::Instant;
fn rnd(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}
fn main() {
    let shapes = [
        (257usize, 1408usize, 4224usize),
        (257, 1408, 6144),
        (257, 6144, 1408),
    ];
    let args: Vec<String> = std::env::args().collect();
    let reps: usize = args.get(1).map(|s| s.parse().unwrap()).unwrap_or(3);
    for &(m, k, n) in &shapes {
        let a = rnd(m * k, 1);
        let b = rnd(k * n, 2);
        let mut c = vec![0f32; m * n];
        let mut c2 = vec![0f32; m * n];
        let fl = 2.0 * (m * n * k) as f64;
        for &bt in &[true, false] {
            let mut best = f64::MAX;
            for _ in 0..reps {
                let t = Instant::now();
                matmul_with(
                    Isa::Avx512,
                    1,
                    &a,
                    BSlice::F32(&b),
                    None,
                    &mut c,
                    m,
                    k,
                    n,
                    bt,
                );
                best = best.min(t.elapsed().as_secs_f64());
            }
            let mut bestg = f64::MAX;
            for _ in 0..reps {
                let t = Instant::now();
                unsafe {
                    let (rcs, rrs) = if bt { (k as isize, 1) } else { (1, n as isize) };
                    gemm::gemm(
                        m,
                        n,
                        k,
                        c2.as_mut_ptr(),
                        1,
                        n as isize,
                        false,
                        a.as_ptr(),
                        1,
                        k as isize,
                        b.as_ptr(),
                        rcs,
                        rrs,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
                bestg = bestg.min(t.elapsed().as_secs_f64());
            }
            let err = c
                .iter()
                .zip(&c2)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            println!(
                "{m}x{k}x{n} bt={bt}: ours {:.1} GF/s  gemm {:.1} GF/s  ratio {:.2} maxdiff {err:e}",
                fl / best / 1e9,
                fl / bestg / 1e9,
                bestg / best
            );
        }
    }
}
