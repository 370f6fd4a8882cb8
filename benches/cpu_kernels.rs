//! CPU kernel benchmarks (criterion) at BLIP-2 shapes: `cargo bench --bench cpu_kernels`.
//!
//! Matmul groups report `Throughput::Elements(2·m·n·k)`: criterion's "elem/s" there means
//! FLOP/s. GEMV groups report weight bytes streamed per second; attention reports FLOP/s
//! (4·b·h·lq·lk·d); layer_norm/softmax/gelu report bytes read + written per second.
//! `ours/<isa>` is single-threaded on that instruction set, `ours_mt/<isa>` uses every thread of
//! the rayon pool, `gemm_crate` is `gemm::gemm` with `Parallelism::None` (the single-threaded
//! reference the ≥ 50% requirement is measured against).

use blip2_kernels::*;
use criterion::{
    BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use half::f16;
use std::hint::black_box;
use std::time::Duration;

/// Deterministic values in [−0.5, 0.5) (xorshift; content does not affect speed).
fn rand_iter(seed: u64) -> impl Iterator<Item = f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    std::iter::repeat_with(move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    })
}

fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
    rand_iter(seed).take(n).collect()
}

fn short(g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_millis(1500))
        .sampling_mode(SamplingMode::Flat);
}

/// ViT-g linear layers (257 tokens × 1408 hidden, MLP 6144, fused QKV 4224).
const VIT: [(usize, usize, usize); 3] = [(257, 1408, 4224), (257, 1408, 6144), (257, 6144, 1408)];

fn matmul_vit(c: &mut Criterion) {
    for &(m, k, n) in &VIT {
        let a = rand_vec(m * k, 1);
        let b = rand_vec(k * n, 2);
        let mut out = vec![0.0f32; m * n];
        for bt in [true, false] {
            let layout = if bt { "xWt" } else { "xW" };
            let mut g = c.benchmark_group(format!("matmul_flops/{m}x{k}x{n}/{layout}"));
            short(&mut g);
            g.throughput(Throughput::Elements((2 * m * n * k) as u64));
            for isa in supported_isas() {
                g.bench_function(BenchmarkId::new("ours", isa.name()), |bch| {
                    bch.iter(|| {
                        matmul_with(
                            isa,
                            1,
                            black_box(&a),
                            BSlice::F32(&b),
                            None,
                            &mut out,
                            m,
                            k,
                            n,
                            bt,
                        )
                    })
                });
            }
            // op(B) as gemm's rhs (k×n): element (p, j) at p·rs + j·cs.
            let (rhs_cs, rhs_rs) = if bt { (k as isize, 1) } else { (1, n as isize) };
            g.bench_function("gemm_crate", |bch| {
                bch.iter(|| {
                    // SAFETY: the strides describe the a (m×k), b and out (m×n) buffers above.
                    unsafe {
                        gemm::gemm(
                            m,
                            n,
                            k,
                            out.as_mut_ptr(),
                            1,
                            n as isize,
                            false,
                            black_box(a.as_ptr()),
                            1,
                            k as isize,
                            b.as_ptr(),
                            rhs_cs,
                            rhs_rs,
                            0.0,
                            1.0,
                            false,
                            false,
                            false,
                            gemm::Parallelism::None,
                        )
                    }
                })
            });
            let best = isa();
            g.bench_function(BenchmarkId::new("ours_mt", best.name()), |bch| {
                bch.iter(|| {
                    matmul_with(
                        best,
                        0,
                        black_box(&a),
                        BSlice::F32(&b),
                        None,
                        &mut out,
                        m,
                        k,
                        n,
                        bt,
                    )
                })
            });
            g.finish();
        }
    }
}

/// Q-Former (32 queries × 768, cross-attention K/V from 1408) and OPT-2.7B prefill, x·Wᵀ.
fn matmul_blip2(c: &mut Criterion) {
    let mut g = c.benchmark_group("matmul_flops/blip2");
    short(&mut g);
    for &(m, k, n) in &[
        (32usize, 768usize, 3072usize),
        (32, 1408, 768),
        (40, 2560, 10240),
    ] {
        let a = rand_vec(m * k, 3);
        let b = rand_vec(k * n, 4);
        let mut out = vec![0.0f32; m * n];
        g.throughput(Throughput::Elements((2 * m * n * k) as u64));
        let best = isa();
        for (name, threads) in [("ours", 1), ("ours_mt", 0)] {
            g.bench_function(BenchmarkId::new(name, format!("{m}x{k}x{n}")), |bch| {
                bch.iter(|| {
                    matmul_with(
                        best,
                        threads,
                        black_box(&a),
                        BSlice::F32(&b),
                        None,
                        &mut out,
                        m,
                        k,
                        n,
                        true,
                    )
                })
            });
        }
    }
    g.finish();
}

/// OPT-2.7B decode: 1×2560 times the 10240×2560 MLP weight (and the 50304-row LM head).
fn gemv(c: &mut Criterion) {
    let mut g = c.benchmark_group("gemv_bytes");
    short(&mut g);
    let best = isa();
    // The 50304-row LM head only in f16 (515 MB as f32; f16 is how it is stored).
    for &(k, n, with_f32) in &[(2560usize, 10240usize, true), (2560, 50304, false)] {
        let a = rand_vec(k, 5);
        let w16: Vec<f16> = rand_iter(6).take(k * n).map(f16::from_f32).collect();
        let w32 = if with_f32 {
            rand_vec(k * n, 6)
        } else {
            Vec::new()
        };
        let mut out = vec![0.0f32; n];
        for (dt, bs, bytes) in [("f32", BSlice::F32(&w32), 4), ("f16", BSlice::F16(&w16), 2)] {
            if bs.is_empty() {
                continue;
            }
            g.throughput(Throughput::Bytes((k * n * bytes) as u64));
            for (name, threads) in [("ours", 1), ("ours_mt", 0)] {
                g.bench_function(
                    BenchmarkId::new(name, format!("1x{k}x{n}/{dt}/{}", best.name())),
                    |bch| {
                        bch.iter(|| {
                            matmul_with(
                                best,
                                threads,
                                black_box(&a),
                                bs,
                                None,
                                &mut out,
                                1,
                                k,
                                n,
                                true,
                            )
                        })
                    },
                );
            }
        }
    }
    g.finish();
}

/// Quantized weights against f16 at OPT-2.7B decode (1×2560·10240×2560), a batch-8 decode
/// step, a 33-token prefill and ViT size (257 rows): "elem/s" here is weights per second
/// (the GEMV is bound by their bytes).
fn quantized(c: &mut Criterion) {
    let mut g = c.benchmark_group("quantized_weights");
    short(&mut g);
    let best = isa();
    let (k, n) = (2560usize, 10240usize);
    let w = rand_vec(k * n, 6);
    let w16: Vec<f16> = w.iter().copied().map(f16::from_f32).collect();
    let packed: Vec<(QFormat, Vec<u8>, Vec<f16>)> = [QFormat::Q8, QFormat::Q4]
        .into_iter()
        .map(|f| {
            let mut qs = vec![0u8; n * f.row_bytes(k)];
            let mut sc = vec![f16::ZERO; n * QFormat::row_blocks(k)];
            quantize_rows(f, &w, n, k, &mut qs, &mut sc);
            (f, qs, sc)
        })
        .collect();
    for m in [1usize, 8, 33, 257] {
        let a = rand_vec(m * k, 5);
        let mut out = vec![0.0f32; m * n];
        g.throughput(Throughput::Elements((k * n) as u64));
        g.bench_function(BenchmarkId::new("f16", format!("{m}x{k}x{n}")), |bch| {
            bch.iter(|| {
                matmul_with(
                    best,
                    0,
                    black_box(&a),
                    BSlice::F16(&w16),
                    None,
                    &mut out,
                    m,
                    k,
                    n,
                    true,
                )
            })
        });
        for (f, qs, sc) in &packed {
            let qm = QMatrix {
                format: *f,
                rows: n,
                cols: k,
                qs,
                scales: sc,
            };
            g.bench_function(BenchmarkId::new(f.name(), format!("{m}x{k}x{n}")), |bch| {
                bch.iter(|| matmul_q_with(best, 0, black_box(&a), &qm, None, &mut out, m))
            });
            // Above the decode rows: the f32 path (dequantized blocks and the f32 GEMM), what
            // the integer rows and the AMX paths replaced, and where the CPU has AMX what
            // runs without it (`-notiles`: the VNNI rows at 8).
            let mut variants = vec![];
            if m > 4 {
                variants.push(("f32", QuantPath::F32));
            }
            if quant_kernel(best, QuantPath::NoTiles, m) != quant_kernel(best, QuantPath::Auto, m) {
                variants.push(("notiles", QuantPath::NoTiles));
            }
            for (name, path) in variants {
                let id = BenchmarkId::new(format!("{}-{name}", f.name()), format!("{m}x{k}x{n}"));
                g.bench_function(id, |bch| {
                    bch.iter(|| matmul_q_path(best, 0, path, black_box(&a), &qm, None, &mut out, m))
                });
            }
        }
    }
    g.finish();
}

fn attention_bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("attention_flops");
    short(&mut g);
    let best = isa();
    // ViT-g self-attention; OPT decode step (32 heads × 1 query over 64 cached keys, d = 80).
    let cases = [
        (
            "vit_16x257x88",
            AttnParams {
                batch: 1,
                heads: 16,
                lq: 257,
                lk: 257,
                lk_cap: 257,
                head_dim: 88,
                scale: 88f32.powf(-0.5),
                causal_offset: None,
            },
        ),
        (
            "decode_32x1x64x80",
            AttnParams {
                batch: 1,
                heads: 32,
                lq: 1,
                lk: 64,
                lk_cap: 128,
                head_dim: 80,
                scale: 80f32.powf(-0.5),
                causal_offset: Some(63),
            },
        ),
    ];
    for (label, p) in cases {
        let bh = p.batch * p.heads;
        let q = rand_vec(bh * p.lq * p.head_dim, 7);
        let k = rand_vec(bh * p.lk_cap * p.head_dim, 8);
        let v = rand_vec(bh * p.lk_cap * p.head_dim, 9);
        let mut out = vec![0.0f32; q.len()];
        g.throughput(Throughput::Elements(
            (4 * bh * p.lq * p.lk * p.head_dim) as u64,
        ));
        for (name, threads) in [("ours", 1), ("ours_mt", 0)] {
            g.bench_function(
                BenchmarkId::new(name, format!("{label}/{}", best.name())),
                |bch| {
                    bch.iter(|| {
                        attention_with(
                            best,
                            threads,
                            black_box(&q),
                            &k,
                            &v,
                            None,
                            None,
                            &mut out,
                            &p,
                        )
                    })
                },
            );
        }
        if p.lq == p.lk_cap {
            // Self-attention from a fused qkv projection [l, 3·h·d]: heads split out of it,
            // attention and merged back (the copies of the split path), against q/k/v read in
            // place and the merged rows written directly (`AttnLayout::fused_qkv`).
            let (l, d, hd) = (p.lq, p.head_dim, p.heads * p.head_dim);
            let qkv = rand_vec(p.batch * l * 3 * hd, 10);
            let mut merged = vec![0.0f32; p.batch * l * hd];
            let split = |part: usize, t: &mut [f32]| {
                for h in 0..p.heads {
                    for i in 0..l {
                        let src = i * 3 * hd + part * hd + h * d;
                        t[(h * l + i) * d..][..d].copy_from_slice(&qkv[src..src + d]);
                    }
                }
            };
            let (mut qs, mut ks, mut vs) = (q.clone(), k.clone(), v.clone());
            g.bench_function(
                BenchmarkId::new("split_copies_mt", format!("{label}/{}", best.name())),
                |bch| {
                    bch.iter(|| {
                        split(0, &mut qs);
                        split(1, &mut ks);
                        split(2, &mut vs);
                        attention_with(best, 0, &qs, &ks, &vs, None, None, &mut out, &p);
                        for h in 0..p.heads {
                            for i in 0..l {
                                merged[i * hd + h * d..][..d]
                                    .copy_from_slice(&out[(h * l + i) * d..][..d]);
                            }
                        }
                        black_box(&merged);
                    })
                },
            );
            let lay = AttnLayout::fused_qkv(&p);
            g.bench_function(
                BenchmarkId::new("fused_qkv_mt", format!("{label}/{}", best.name())),
                |bch| {
                    bch.iter(|| {
                        attention_in(
                            best,
                            0,
                            black_box(&qkv),
                            &qkv,
                            &qkv,
                            None,
                            None,
                            &mut merged,
                            &p,
                            &lay,
                        )
                    })
                },
            );
        }
    }
    g.finish();
}

fn rowwise(c: &mut Criterion) {
    let mut g = c.benchmark_group("rowwise_bytes");
    short(&mut g);
    let (rows, cols) = (257usize, 1408usize);
    let x = rand_vec(rows * cols, 10);
    let w = rand_vec(cols, 11);
    let b = rand_vec(cols, 12);
    let mut out = vec![0.0f32; rows * cols];
    g.throughput(Throughput::Bytes((2 * rows * cols * 4) as u64));
    for isa in supported_isas() {
        g.bench_function(BenchmarkId::new("layer_norm_257x1408", isa.name()), |bch| {
            bch.iter(|| layer_norm_with(isa, black_box(&x), &w, &b, &mut out, cols, 1e-6))
        });
    }
    // Attention-probability rows: 16 heads × 257 queries × 257 keys.
    let s = rand_vec(16 * 257 * 257, 13);
    let mut t = s.clone();
    g.throughput(Throughput::Bytes((2 * s.len() * 4) as u64));
    for isa in supported_isas() {
        g.bench_function(BenchmarkId::new("softmax_16x257x257", isa.name()), |bch| {
            bch.iter(|| {
                t.copy_from_slice(&s);
                for row in t.chunks_exact_mut(257) {
                    softmax_inplace_with(isa, row);
                }
            })
        });
    }
    // ViT MLP activation: 257 × 6144.
    let h = rand_vec(257 * 6144, 14);
    let mut hh = h.clone();
    g.throughput(Throughput::Bytes((2 * h.len() * 4) as u64));
    for isa in supported_isas() {
        g.bench_function(BenchmarkId::new("gelu_erf_257x6144", isa.name()), |bch| {
            bch.iter(|| {
                hh.copy_from_slice(&h);
                gelu_erf_inplace_with(isa, &mut hh);
            })
        });
    }
    g.finish();
}

/// Packed bf16 linear weights against f32 and f16 at the ViT shapes (AMX where present, the
/// widened f32 GEMM otherwise: `amx_off`) and at decode (m = 1, memory-bound): all threads.
fn bf16_weights(c: &mut Criterion) {
    let best = isa();
    for &(m, k, n) in VIT.iter().chain(&[(1, 2560, 10240)]) {
        let mut g = c.benchmark_group(format!("bf16_weights/{m}x{k}x{n}"));
        short(&mut g);
        g.throughput(Throughput::Elements((2 * m * n * k) as u64));
        let a = rand_vec(m * k, 7);
        let w = rand_vec(n * k, 8);
        let w16: Vec<f16> = w.iter().copied().map(f16::from_f32).collect();
        let mut wb = AlignedVec::<half::bf16>::zeroed(bf16_packed_len(n, k));
        pack_bf16(&w, n, k, &mut wb);
        let wm = Bf16Matrix {
            rows: n,
            cols: k,
            data: &wb,
        };
        let mut out = vec![0.0f32; m * n];
        for (name, b) in [("f32", BSlice::F32(&w)), ("f16", BSlice::F16(&w16))] {
            g.bench_function(name, |bch| {
                bch.iter(|| matmul_with(best, 0, black_box(&a), b, None, &mut out, m, k, n, true))
            });
        }
        // "bf16": AMX or vdpbf16ps (rounded activations) where the CPU has them;
        // "bf16_dpbf16": vdpbf16ps even with AMX; "bf16_f32_act": weights widened to f32.
        for (name, reduced) in [
            ("bf16", Bf16Activations::Auto),
            ("bf16_dpbf16", Bf16Activations::Dpbf16),
            ("bf16_f32_act", Bf16Activations::Off),
        ] {
            g.bench_function(name, |bch| {
                bch.iter(|| {
                    matmul_bf16_with(best, 0, reduced, black_box(&a), &wm, None, &mut out, m)
                })
            });
        }
        g.finish();
    }
}

/// f32 and f16 weights packed at load (`matmul_packed`) against the same weights row-major
/// (packed per call by the GEMM, or read row by row by the GEMV paths): the ViT shapes,
/// decode (m = 1, 4, 8, memory-bound) and the demo model's batched decode (m = 16, tiny
/// matrices, where per-call packing weighs most). Where the CPU has AMX, the packed weights
/// also on the split bf16 path (`f16_split`, `f32_split`: three bf16 terms). All threads.
fn packed_weights(c: &mut Criterion) {
    let best = isa();
    let shapes = VIT.iter().chain(&[
        (1, 2560, 10240),
        (4, 2560, 10240),
        (8, 2560, 10240),
        (16, 128, 512),
    ]);
    for &(m, k, n) in shapes {
        let mut g = c.benchmark_group(format!("packed_weights/{m}x{k}x{n}"));
        short(&mut g);
        g.throughput(Throughput::Elements((2 * m * n * k) as u64));
        let a = rand_vec(m * k, 9);
        let w = rand_vec(n * k, 10);
        let w16: Vec<f16> = w.iter().copied().map(f16::from_f32).collect();
        let len = checked_packed_len(n, k).unwrap();
        let mut p32 = AlignedVec::<f32>::zeroed(len);
        pack_linear(&w, n, k, &mut p32);
        let mut p16 = AlignedVec::<f16>::zeroed(len);
        pack_linear(&w16, n, k, &mut p16);
        let mut out = vec![0.0f32; m * n];
        for (name, b) in [("f32", BSlice::F32(&w)), ("f16", BSlice::F16(&w16))] {
            g.bench_function(name, |bch| {
                bch.iter(|| matmul_with(best, 0, black_box(&a), b, None, &mut out, m, k, n, true))
            });
        }
        for (name, data) in [
            ("f32_packed", PackedData::F32(&p32)),
            ("f16_packed", PackedData::F16(&p16)),
        ] {
            let wm = PackedMatrix {
                rows: n,
                cols: k,
                data,
            };
            g.bench_function(name, |bch| {
                bch.iter(|| matmul_packed_with(best, 0, black_box(&a), &wm, None, &mut out, m))
            });
            if split_available() {
                let split = name.replace("packed", "split");
                g.bench_function(split, |bch| {
                    bch.iter(|| matmul_packed_split_with(0, black_box(&a), &wm, None, &mut out, m))
                });
            }
        }
        g.finish();
    }
}

/// Decode and batched decode at memory speed: `packed_weights` reuses one 52 MB matrix, which
/// a large last-level cache holds (480 MiB on the Xeon VMs here), while a 2.7B model's 5.4 GB
/// of f16 weights come from DRAM every step. Here each call takes the next of enough packed
/// f16 2560×10240 matrices (m = 1, 4, 8) or 2560×2560 ones (m = 1) to exceed
/// `BLIP2_BENCH_COLD_MB` (default 1024 MiB), so the weights are cold, as in the model; all
/// threads.
fn packed_cold(c: &mut Criterion) {
    let best = isa();
    let total_mb: usize = std::env::var("BLIP2_BENCH_COLD_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    // fc1's shape, and out_proj's: a 13 MB call, where the threads' hand-offs (kernels'
    // team.rs) are a larger share than in fc1's 52 MB.
    for (k, n, rows) in [
        (2560usize, 10240usize, &[1usize, 4, 8][..]),
        (2560, 2560, &[1]),
    ] {
        let len = checked_packed_len(n, k).unwrap();
        let count = (total_mb << 20).div_ceil(len * 2).max(2);
        let w = rand_vec(n * k, 10);
        let w16: Vec<f16> = w.iter().copied().map(f16::from_f32).collect();
        let mut p16 = AlignedVec::<f16>::zeroed(len);
        pack_linear(&w16, n, k, &mut p16);
        let mats: Vec<AlignedVec<f16>> = (0..count).map(|_| p16.clone()).collect();
        drop(p16);
        let mut g = c.benchmark_group(format!("packed_cold/{k}x{n}x{count}"));
        short(&mut g);
        for &m in rows {
            let a = rand_vec(m * k, 9);
            let mut out = vec![0.0f32; m * n];
            g.throughput(Throughput::Bytes((len * 2) as u64));
            let mut next = 0;
            g.bench_function(format!("f16_packed/m{m}"), |bch| {
                bch.iter(|| {
                    let wm = PackedMatrix {
                        rows: n,
                        cols: k,
                        data: PackedData::F16(&mats[next % count]),
                    };
                    next += 1;
                    matmul_packed_with(best, 0, black_box(&a), &wm, None, &mut out, m)
                })
            });
        }
        g.finish();
    }
}

criterion_group!(
    benches,
    matmul_vit,
    matmul_blip2,
    gemv,
    quantized,
    bf16_weights,
    packed_weights,
    packed_cold,
    attention_bench,
    rowwise
);
criterion_main!(benches);
