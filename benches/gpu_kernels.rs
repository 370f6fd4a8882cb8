//! GPU kernel benchmarks (criterion) at BLIP-2 shapes: `cargo bench --bench gpu_kernels`.
//!
//! Every iteration runs the op and `Device::synchronize` (submit + wait), so times include
//! one submission. Matmul and attention groups report `Throughput::Elements(FLOPs)`:
//! criterion's "elem/s" there means FLOP/s. GEMV (f32, f16, q8, q4 weights) reports weight
//! bytes streamed per second,
//! layer_norm/softmax bytes read + written per second, `gpu_decode_choice` (greedy argmax
//! and top-k candidates over vocabulary-sized rows; their readback is the wait) logits bytes
//! read per second. `gpu_f16_math` times the f16-arithmetic GEMV and matmul next to their
//! packed-pair (f32 arithmetic) twins.
//!
//! On a software adapter (llvmpipe, ~1 GFLOP/s) only one shape per group runs, with the
//! fewest samples criterion allows, so the whole bench takes a few minutes; set
//! `BLIP2_BENCH_FULL=1` for every shape. Without any adapter the bench prints why and exits.

use blip2_engine::gpu::{GpuContext, GpuOptions};
use blip2_engine::ops::{self, AttnOpts};
use blip2_engine::{DType, Device, Tensor};
use criterion::{
    BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use std::time::Duration;

/// Deterministic values in [−0.5, 0.5) (content does not affect speed).
fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

fn rand_tensor(shape: &[usize], dtype: DType, dev: &Device, seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    Tensor::from_slice(&rand_vec(n, seed), shape, dtype, dev).expect("upload")
}

struct Setup {
    dev: Device,
    /// Software adapter: run the reduced set.
    slow: bool,
}

fn setup() -> Option<Setup> {
    match Device::gpu() {
        Ok(dev) => {
            let info = dev.info();
            eprintln!(
                "GPU: '{}' ({}, {}, driver '{}', subgroups {}, f16 {})",
                info.name,
                info.backend,
                info.device_type,
                info.driver,
                info.subgroups,
                info.shader_f16
            );
            let full = std::env::var("BLIP2_BENCH_FULL").as_deref() == Ok("1");
            let slow = info.device_type == "Cpu" && !full;
            Some(Setup { dev, slow })
        }
        Err(e) => {
            eprintln!("no GPU adapter ({e}); GPU benchmarks skipped");
            None
        }
    }
}

fn configure(g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>, slow: bool) {
    g.sample_size(10).sampling_mode(SamplingMode::Flat);
    if slow {
        g.warm_up_time(Duration::from_millis(100))
            .measurement_time(Duration::from_secs(1));
    } else {
        g.warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(3));
    }
}

fn matmul(c: &mut Criterion) {
    let Some(s) = setup() else { return };
    let dev = &s.dev;
    // (m, k, n): ViT-g QKV / MLP up / MLP down, Q-Former MLP / cross-attn K,V, OPT prefill,
    // a batch-8 OPT-2.7B decode step's MLP up.
    let all: &[(usize, usize, usize)] = &[
        (257, 1408, 4224),
        (257, 1408, 6144),
        (257, 6144, 1408),
        (32, 768, 3072),
        (32, 1408, 768),
        (40, 2560, 10240),
        (8, 2560, 10240),
    ];
    let shapes = if s.slow { &all[..1] } else { all };
    let mut g = c.benchmark_group("gpu_linear");
    configure(&mut g, s.slow);
    for &(m, k, n) in shapes {
        for wdt in [DType::F32, DType::F16] {
            let x = rand_tensor(&[m, k], DType::F32, dev, 1);
            let w = rand_tensor(&[n, k], wdt, dev, 2);
            let b = rand_tensor(&[n], DType::F32, dev, 3);
            g.throughput(Throughput::Elements((2 * m * n * k) as u64));
            g.bench_function(
                BenchmarkId::new(format!("w_{wdt}"), format!("{m}x{k}x{n}")),
                |it| {
                    it.iter(|| {
                        let y = ops::linear(&x, &w, Some(&b)).expect("linear");
                        dev.synchronize().expect("sync");
                        y
                    })
                },
            );
        }
    }
    g.finish();
}

fn gemv(c: &mut Criterion) {
    let Some(s) = setup() else { return };
    let dev = &s.dev;
    // OPT-2.7B decode: MLP up (2560 -> 10240) and the LM head (2560 -> 50304).
    let mut g = c.benchmark_group("gpu_gemv");
    configure(&mut g, s.slow);
    // q8 / q4: qgemv.wgsl, the weight dequantized in registers (throughput counts the
    // quant and scale bytes streamed).
    let mut cases = vec![
        (2560usize, 10240usize, DType::F32),
        (2560, 10240, DType::F16),
        (2560, 10240, DType::Q8),
        (2560, 10240, DType::Q4),
    ];
    if !s.slow {
        cases.push((2560, 50304, DType::F16));
        cases.push((2560, 50304, DType::Q8));
        cases.push((2560, 50304, DType::Q4));
    }
    for (k, n, wdt) in cases {
        let x = rand_tensor(&[1, k], DType::F32, dev, 4);
        let w = if wdt.is_quantized() {
            Tensor::quantize(&rand_vec(n * k, 5), &[n, k], wdt, dev).expect("quantize")
        } else {
            rand_tensor(&[n, k], wdt, dev, 5)
        };
        g.throughput(Throughput::Bytes(w.size_in_bytes() as u64));
        g.bench_function(
            BenchmarkId::new(format!("w_{wdt}"), format!("1x{k}x{n}")),
            |it| {
                it.iter(|| {
                    let y = ops::linear(&x, &w, None).expect("gemv");
                    dev.synchronize().expect("sync");
                    y
                })
            },
        );
    }
    g.finish();
}

fn attention(c: &mut Criterion) {
    let Some(s) = setup() else { return };
    let dev = &s.dev;
    let mut g = c.benchmark_group("gpu_attention");
    configure(&mut g, s.slow);
    // (name, b, h, lq, lk, d): ViT-g self-attention and a 64-token OPT-2.7B prefill (the flash
    // kernel; `BLIP2_GPU_NO_FLASH_ATTN=1` times matmul + softmax + matmul instead), OPT-2.7B
    // decode over a 256-key cache (one workgroup per query).
    let cases = [
        ("vit", 1usize, 16usize, 257usize, 257usize, 88usize),
        ("prefill", 1, 32, 64, 64, 80),
        ("decode", 1, 32, 1, 256, 80),
    ];
    for (name, b, h, lq, lk, d) in cases {
        for dt in [DType::F32, DType::F16] {
            if s.slow && dt == DType::F32 && name == "vit" {
                continue;
            }
            let q = rand_tensor(&[b, h, lq, d], dt, dev, 6);
            let k = rand_tensor(&[b, h, lk, d], dt, dev, 7);
            let v = rand_tensor(&[b, h, lk, d], dt, dev, 8);
            let opts = AttnOpts {
                scale: (d as f32).powf(-0.5),
                causal: name != "vit",
                ..AttnOpts::default()
            };
            g.throughput(Throughput::Elements((4 * b * h * lq * lk * d) as u64));
            g.bench_function(
                BenchmarkId::new(format!("{name}_{dt}"), format!("{b}x{h}x{lq}x{lk}x{d}")),
                |it| {
                    it.iter(|| {
                        let y = ops::attention(&q, &k, &v, &opts).expect("attention");
                        dev.synchronize().expect("sync");
                        y
                    })
                },
            );
        }
    }
    g.finish();
}

fn norms(c: &mut Criterion) {
    let Some(s) = setup() else { return };
    let dev = &s.dev;
    let mut g = c.benchmark_group("gpu_rows");
    configure(&mut g, s.slow);
    for dt in [DType::F32, DType::F16] {
        // ViT-g hidden states [257, 1408]; ViT attention scores [16 * 257, 257].
        let x = rand_tensor(&[257, 1408], dt, dev, 9);
        let w = rand_tensor(&[1408], DType::F32, dev, 10);
        let b = rand_tensor(&[1408], DType::F32, dev, 11);
        g.throughput(Throughput::Bytes((2 * x.size_in_bytes()) as u64));
        g.bench_function(
            BenchmarkId::new(format!("layer_norm_{dt}"), "257x1408"),
            |it| {
                it.iter(|| {
                    let y = ops::layer_norm(&x, &w, &b, 1e-6).expect("layer_norm");
                    dev.synchronize().expect("sync");
                    y
                })
            },
        );
        let sc = rand_tensor(&[16 * 257, 257], dt, dev, 12);
        g.throughput(Throughput::Bytes((2 * sc.size_in_bytes()) as u64));
        g.bench_function(
            BenchmarkId::new(format!("softmax_{dt}"), "4112x257"),
            |it| {
                it.iter(|| {
                    let y = ops::softmax(&sc, None).expect("softmax");
                    dev.synchronize().expect("sync");
                    y
                })
            },
        );
    }
    g.finish();
}

/// The decode fusions (issue 14): OPT-2.7B's LayerNorm + fused q/k/v GEMV (2560 -> 7680),
/// LayerNorm + fc1 + ReLU (2560 -> 10240) and fc2 + residual (10240 -> 2560), f16 weights,
/// and the attention that appends the token's K/V over a 256-column cache.
fn fused_decode(c: &mut Criterion) {
    let Some(s) = setup() else { return };
    let dev = &s.dev;
    let mut g = c.benchmark_group("gpu_fused_decode");
    configure(&mut g, s.slow);
    let d = 2560usize;
    let x = rand_tensor(&[1, d], DType::F32, dev, 13);
    let nw = rand_tensor(&[d], DType::F32, dev, 14);
    let nb = rand_tensor(&[d], DType::F32, dev, 15);
    let ln = ops::NormIn::Layer {
        w: &nw,
        b: &nb,
        eps: 1e-5,
    };
    let up = rand_tensor(&[4 * d], DType::F32, dev, 16)
        .reshape(&[1, 4 * d])
        .expect("reshape");
    let cases: [(&str, usize, usize, ops::LinearFusion); 3] = [
        (
            "ln_qkv",
            d,
            3 * d,
            ops::LinearFusion {
                norm: Some(ln),
                ..Default::default()
            },
        ),
        (
            "ln_fc1_relu",
            d,
            4 * d,
            ops::LinearFusion {
                norm: Some(ln),
                act: Some(ops::Unary::Relu),
                ..Default::default()
            },
        ),
        (
            "fc2_residual",
            4 * d,
            d,
            ops::LinearFusion {
                residual: Some(&x),
                ..Default::default()
            },
        ),
    ];
    for (name, k, n, f) in cases {
        let w = rand_tensor(&[n, k], DType::F16, dev, 17);
        let input = if k == d { &x } else { &up };
        g.throughput(Throughput::Bytes(w.size_in_bytes() as u64));
        g.bench_function(BenchmarkId::new(name, format!("1x{k}x{n}")), |it| {
            it.iter(|| {
                let y = ops::linear_fused(input, &w, None, &f).expect("linear_fused");
                dev.synchronize().expect("sync");
                y
            })
        });
    }
    let (h, hd, cap) = (32usize, 80usize, 257usize);
    let qkv = rand_tensor(&[1, 1, 3 * h * hd], DType::F32, dev, 18);
    let mut kc = rand_tensor(&[1, h, cap, hd], DType::F32, dev, 19);
    let mut vc = rand_tensor(&[1, h, cap, hd], DType::F32, dev, 20);
    let opts = AttnOpts {
        scale: (hd as f32).powf(-0.5),
        causal: true,
        ..AttnOpts::default()
    };
    g.throughput(Throughput::Elements((4 * h * 256 * hd) as u64));
    g.bench_function(
        BenchmarkId::new("attention_append", format!("1x{h}x1x256x{hd}")),
        |it| {
            it.iter(|| {
                let y = ops::attention_append(&qkv, &mut kc, &mut vc, 255, &opts)
                    .expect("attention_append");
                dev.synchronize().expect("sync");
                y
            })
        },
    );
    g.finish();
}

/// Token choice on the device at OPT's vocabulary (50,272): greedy `argmax_rows` and the
/// top-k sampling candidates (`top_candidates`, k = 50, up to 64 read back a row), and beam
/// search's choice (`log_softmax` then `top_candidates` with K = 10, room for 26: 5 beams),
/// for 1 and 8 rows; logits bytes read per second. Each op downloads its result, which
/// submits and waits: no separate synchronize.
fn decode_choice(c: &mut Criterion) {
    let Some(s) = setup() else { return };
    let dev = &s.dev;
    let mut g = c.benchmark_group("gpu_decode_choice");
    configure(&mut g, s.slow);
    let v = 50272usize;
    let all = [1usize, 8];
    for &rows in if s.slow { &all[..1] } else { &all[..] } {
        let x = rand_tensor(&[rows, v], DType::F32, dev, 23);
        g.throughput(Throughput::Bytes((rows * v * 4) as u64));
        g.bench_function(
            BenchmarkId::new("argmax_rows", format!("{rows}x{v}")),
            |it| it.iter(|| ops::argmax_rows(&x, &[]).expect("argmax_rows")),
        );
        g.bench_function(
            BenchmarkId::new("top_candidates_k50", format!("{rows}x{v}")),
            |it| it.iter(|| ops::top_candidates(&x, 50, 64, &[]).expect("top_candidates")),
        );
        g.bench_function(
            BenchmarkId::new("beam_log_softmax_top10", format!("{rows}x{v}")),
            |it| {
                it.iter(|| {
                    let lp = ops::log_softmax(&x).expect("log_softmax");
                    ops::top_candidates(&lp, 10, 26, &[]).expect("top_candidates")
                })
            },
        );
    }
    g.finish();
}

/// f16 arithmetic (issue 14 item 4): f16 x and weights through the GEMV (OPT-2.7B fc1,
/// 2560 -> 10240) and the tiled matmul (Q-Former MLP, 32 x 768 -> 3072), each on a context
/// with the f16-arithmetic variants (`f16`, where the adapter has `SHADER_F16`) and one with
/// `f16_math: false` (`packed`: unpack2x16float and f32 arithmetic), bench ids side by side.
fn f16_math(c: &mut Criterion) {
    let Some(s) = setup() else { return };
    let open = |f16_math: bool| -> Option<Device> {
        let opts = GpuOptions {
            f16_math,
            ..GpuOptions::from_env()
        };
        GpuContext::with_options(opts)
            .ok()
            .map(|g| Device::Gpu(std::sync::Arc::new(g)))
    };
    let (Some(on), Some(off)) = (open(true), open(false)) else {
        return;
    };
    if !s.dev.info().shader_f16 {
        eprintln!("adapter without SHADER_F16: f16-arithmetic benchmarks skipped");
        return;
    }
    let mut g = c.benchmark_group("gpu_f16_math");
    configure(&mut g, s.slow);
    for (name, m, k, n) in [
        ("gemv", 1usize, 2560usize, 10240usize),
        ("linear", 32, 768, 3072),
    ] {
        for (variant, dev) in [("packed", &off), ("f16", &on)] {
            let x = rand_tensor(&[m, k], DType::F16, dev, 21);
            let w = rand_tensor(&[n, k], DType::F16, dev, 22);
            g.throughput(Throughput::Elements((2 * m * n * k) as u64));
            g.bench_function(
                BenchmarkId::new(format!("{name}_{variant}"), format!("{m}x{k}x{n}")),
                |it| {
                    it.iter(|| {
                        let y = ops::linear(&x, &w, None).expect("linear");
                        dev.synchronize().expect("sync");
                        y
                    })
                },
            );
        }
    }
    g.finish();
}

criterion_group!(
    benches,
    matmul,
    gemv,
    attention,
    norms,
    fused_decode,
    decode_choice,
    f16_math
);
criterion_main!(benches);
