use blip2_kernels::*;
use std::time::Instant;
fn main() {
    let p = AttnParams {
        batch: 1,
        heads: 16,
        lq: 257,
        lk: 257,
        lk_cap: 257,
        head_dim: 88,
        scale: 0.1,
        causal_offset: None,
    };
    let n = 16 * 257 * 88;
    let q: Vec<f32> = (0..n)
        .map(|i| ((i * 7919) % 2000) as f32 * 0.001 - 1.0)
        .collect();
    let mut out = vec![0f32; n];
    for threads in [1, 2] {
        let mut best = f64::MAX;
        for _ in 0..20 {
            let t = Instant::now();
            attention_with(isa(), threads, &q, &q, &q, None, None, &mut out, &p);
            best = best.min(t.elapsed().as_secs_f64());
        }
        println!(
            "threads {threads}: {:.2} ms {:.1} GF/s",
            best * 1e3,
            4.0 * 16.0 * 257.0 * 257.0 * 88.0 / best / 1e9
        );
    }
    // components
    let (m, k, nn) = (257usize, 88usize, 257usize);
    let mut s = vec![0f32; m * nn];
    let mut best = f64::MAX;
    for _ in 0..50 {
        let t = Instant::now();
        matmul_with(
            isa(),
            1,
            &q[..m * k],
            BSlice::F32(&q[..nn * k]),
            None,
            &mut s,
            m,
            k,
            nn,
            true,
        );
        best = best.min(t.elapsed().as_secs_f64());
    }
    println!(
        "qk^T one head {:.1} us {:.1} GF/s",
        best * 1e6,
        2.0 * (m * k * nn) as f64 / best / 1e9
    );
    let mut o = vec![0f32; m * k];
    let mut best = f64::MAX;
    for _ in 0..50 {
        let t = Instant::now();
        matmul_with(
            isa(),
            1,
            &s,
            BSlice::F32(&q[..nn * k]),
            None,
            &mut o,
            m,
            nn,
            k,
            false,
        );
        best = best.min(t.elapsed().as_secs_f64());
    }
    println!(
        "pv one head {:.1} us {:.1} GF/s",
        best * 1e6,
        2.0 * (m * k * nn) as f64 / best / 1e9
    );
}
