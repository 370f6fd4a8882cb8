//! GPU runtime behaviour on a real adapter (llvmpipe in CI): adapter discovery, lazy
//! submission and buffer reuse, tensors larger than one storage binding, kill switches,
//! errors returned as values, and use from several threads.
//!
//! Without an adapter these tests print why and pass, unless `BLIP2_REQUIRE_GPU=1`, where
//! they fail.

use std::sync::{Arc, OnceLock};

use blip2_engine::gpu::{GpuContext, GpuOptions};
use blip2_engine::ops::{self, AttnOpts};
use blip2_engine::{DType, Device, Error, Tensor};

/// xorshift64*: deterministic test data without dependencies.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn uniform(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let u = (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 / (1u64 << 24) as f32;
        2.0 * u - 1.0
    }
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.uniform()).collect()
    }
}

fn required() -> bool {
    std::env::var("BLIP2_REQUIRE_GPU").as_deref() == Ok("1")
}

/// A context with the given options, or None (printing why) when no adapter exists.
fn open(opts: GpuOptions) -> Option<Device> {
    match GpuContext::with_options(opts) {
        Ok(g) => Some(Device::Gpu(Arc::new(g))),
        Err(e) => {
            assert!(!required(), "BLIP2_REQUIRE_GPU=1 but no GPU adapter: {e}");
            eprintln!("no GPU adapter ({e}); GPU runtime test not run");
            None
        }
    }
}

/// The shared default-options device of this test binary.
fn gpu() -> Option<Device> {
    static DEV: OnceLock<Option<Device>> = OnceLock::new();
    DEV.get_or_init(|| open(GpuOptions::default())).clone()
}

fn ctx(dev: &Device) -> &GpuContext {
    match dev {
        Device::Gpu(g) => g,
        Device::Cpu => unreachable!("GPU device expected"),
    }
}

/// Relative RMS error sqrt(Σ(a−b)² / Σb²).
fn rel_err(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    let num: f64 = got
        .iter()
        .zip(want)
        .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
        .sum();
    let den: f64 = want.iter().map(|&b| (b as f64).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}

#[test]
fn adapter_is_found_and_described() {
    let Some(dev) = gpu() else { return };
    let info = dev.info();
    eprintln!(
        "GPU adapter: '{}' backend {} driver '{}' type {} | shader_f16 {} subgroups {} ({}..{}) \
         timestamp_query {} coop_matrix {} | max binding {} max buffer {} wg storage {} wg invocations {}",
        info.name,
        info.backend,
        info.driver,
        info.device_type,
        info.shader_f16,
        info.subgroups,
        info.subgroup_min_size,
        info.subgroup_max_size,
        info.timestamp_query,
        info.cooperative_matrix,
        info.max_storage_buffer_binding_size,
        info.max_buffer_size,
        info.max_compute_workgroup_storage_size,
        info.max_compute_invocations_per_workgroup,
    );
    assert!(!info.name.is_empty());
    assert!(info.max_storage_buffer_binding_size >= 1 << 20);
    assert!(info.max_buffer_size >= info.max_storage_buffer_binding_size.min(1 << 28));
    // The kernels need 256 invocations and 8 KiB of workgroup memory (WebGPU's minimums).
    assert!(info.max_compute_invocations_per_workgroup >= 256);
    assert!(info.max_compute_workgroup_storage_size >= 16384);
    // `blip2 info`'s listing includes the adapter the device opened.
    let listed = blip2_engine::gpu::list_adapters();
    assert!(
        listed.iter().any(|a| a.name == info.name),
        "{} not in {listed:?}",
        info.name
    );
}

#[test]
fn ops_record_lazily_and_reuse_buffers() {
    // A context of its own: the counters must not see other tests' work.
    let Some(dev) = open(GpuOptions::default()) else {
        return;
    };
    let g = ctx(&dev);
    let mut rng = Rng::new(1);
    let (k, n) = (96, 96);
    let x = Tensor::from_f32(rng.vec(k), &[1, k], &dev).unwrap();
    let w = Tensor::from_slice(&rng.vec(n * k), &[n, k], DType::F16, &dev).unwrap();
    let b = Tensor::from_f32(rng.vec(n), &[n], &dev).unwrap();
    let lw = Tensor::from_f32(vec![1.0; n], &[n], &dev).unwrap();
    let lb = Tensor::from_f32(vec![0.0; n], &[n], &dev).unwrap();
    // One "layer": linear (GEMV) -> gelu -> residual add -> layer norm.
    let step = |h: &Tensor| -> Tensor {
        let y = ops::gelu(&ops::linear(h, &w, Some(&b)).unwrap()).unwrap();
        ops::layer_norm(&ops::add(&y, h).unwrap(), &lw, &lb, 1e-5).unwrap()
    };
    // Warm-up: compiles pipelines and fills the pool.
    let mut h = step(&x);
    h = step(&h);
    h.to_vec_f32().unwrap();
    let before = g.stats();
    let layers = 40;
    for _ in 0..layers {
        h = step(&h);
    }
    let mid = g.stats();
    assert_eq!(
        mid.submits, before.submits,
        "ops must not submit before a readback"
    );
    assert_eq!(
        mid.dispatches - before.dispatches,
        4 * layers as u64,
        "one dispatch per op"
    );
    let got = h.to_vec_f32().unwrap();
    let after = g.stats();
    eprintln!("{layers} layers: {before:?} -> {after:?}");
    assert_eq!(
        after.submits - before.submits,
        1,
        "one readback = one submit"
    );
    assert_eq!(
        after.buffers_created, before.buffers_created,
        "intermediates must come from the pool"
    );
    assert!(after.buffers_reused - before.buffers_reused >= 4 * layers as u64);
    assert_eq!(
        after.pipelines_compiled, before.pipelines_compiled,
        "pipelines are cached"
    );
    assert!(
        after.bind_group_cache_hits > before.bind_group_cache_hits,
        "bind groups repeat across layers"
    );

    // The same chain on the CPU agrees (f16 weights on both sides; f32 activations; relative
    // RMS error 1e-4 allows f32 summation-order differences amplified over 42 normalised layers).
    let cpu = Device::cpu();
    let (xc, wc, bc) = (
        x.to_device(&cpu).unwrap(),
        w.to_device(&cpu).unwrap(),
        b.to_device(&cpu).unwrap(),
    );
    let (lwc, lbc) = (lw.to_device(&cpu).unwrap(), lb.to_device(&cpu).unwrap());
    let mut hc = xc;
    for _ in 0..layers + 2 {
        let y = ops::gelu(&ops::linear(&hc, &wc, Some(&bc)).unwrap()).unwrap();
        hc = ops::layer_norm(&ops::add(&y, &hc).unwrap(), &lwc, &lbc, 1e-5).unwrap();
    }
    let e = rel_err(&got, &hc.to_vec_f32().unwrap());
    assert!(
        e < 1e-4,
        "GPU chain differs from CPU: relative RMS error {e:e}"
    );
}

#[test]
fn tensors_larger_than_one_binding() {
    let Some(dev) = gpu() else { return };
    let g = ctx(&dev);
    // [8200, 4100] f32 = 134.48 MB, over llvmpipe's 128 MiB binding limit (and WebGPU's
    // default). On adapters with larger limits this still runs, without chunking.
    let (n, k) = (8200usize, 4100usize);
    let bytes = (n * k * 4) as u64;
    eprintln!(
        "weight of {bytes} bytes, max binding {} ({})",
        g.max_binding_size(),
        if bytes > g.max_binding_size() {
            "sub-range bindings"
        } else {
            "one binding"
        }
    );
    let mut rng = Rng::new(7);
    let wv = rng.vec(n * k);
    let w = Tensor::from_f32(wv.clone(), &[n, k], &dev).unwrap();
    let xv = rng.vec(3 * k);
    let x = Tensor::from_f32(xv.clone(), &[3, k], &dev).unwrap();
    let reference = |rows: usize| -> Vec<f32> {
        let mut out = vec![0f32; rows * n];
        for r in 0..rows {
            for j in 0..n {
                let s: f64 = (0..k)
                    .map(|t| xv[r * k + t] as f64 * wv[j * k + t] as f64)
                    .sum();
                out[r * n + j] = s as f32;
            }
        }
        out
    };
    // GEMV with M = 1 and 3 over row chunks of the weight. f32 sums of 4100 products of
    // uniform(-1,1) values: relative RMS error 1e-5 covers the summation order.
    for rows in [1, 3] {
        let xr = ops::narrow(&x, 0, 0, rows).unwrap();
        let got = ops::linear(&xr, &w, None).unwrap().to_vec_f32().unwrap();
        let e = rel_err(&got, &reference(rows));
        assert!(
            e < 1e-5,
            "linear M={rows} over a {bytes}-byte weight: relative error {e:e}"
        );
    }
    // Embedding gather from the same table, ids in every chunk: exact.
    let ids = [0u32, 8199, 4000, 1, 6000, 8199];
    let emb = ops::embedding(&w, &ids, DType::F32)
        .unwrap()
        .to_vec_f32()
        .unwrap();
    for (r, &id) in ids.iter().enumerate() {
        assert_eq!(
            &emb[r * k..(r + 1) * k],
            &wv[id as usize * k..(id as usize + 1) * k],
            "row {id}"
        );
    }
    // Element-wise ops over the whole tensor in chunks: exact (x * 2 and f16 rounding are
    // the same on both sides).
    let doubled = ops::scale(&w, 2.0).unwrap().to_vec_f32().unwrap();
    assert!(doubled.iter().zip(&wv).all(|(a, b)| *a == 2.0 * b));
    drop(doubled);
    let half = w.to_dtype(DType::F16).unwrap().to_vec_f32().unwrap();
    let step = 997;
    assert!(
        (0..n * k)
            .step_by(step)
            .all(|i| half[i] == half::f16::from_f32(wv[i]).to_f32())
    );
}

#[test]
fn chunked_paths_under_a_small_binding_limit() {
    // A 4 KiB binding limit sends every linear/embedding/element-wise op below through the
    // sub-range paths, on any adapter, with small tensors.
    let Some(dev) = open(GpuOptions {
        max_binding: Some(4096),
        ..GpuOptions::default()
    }) else {
        return;
    };
    let cpu = Device::cpu();
    let mut rng = Rng::new(3);
    for wdt in [DType::F32, DType::F16] {
        for xdt in [DType::F32, DType::F16] {
            // (m, k, n): GEMV rows 1 and 2, tiled 5 and 33; odd k and odd n.
            for (m, k, n) in [(1, 33, 301), (2, 40, 130), (5, 33, 97), (9, 24, 100)] {
                let (xv, wv, bv) = (rng.vec(m * k), rng.vec(n * k), rng.vec(n));
                let run = |d: &Device| {
                    let x = Tensor::from_slice(&xv, &[m, k], xdt, d).unwrap();
                    let w = Tensor::from_slice(&wv, &[n, k], wdt, d).unwrap();
                    let b = Tensor::from_slice(&bv, &[n], wdt, d).unwrap();
                    ops::linear(&x, &w, Some(&b)).unwrap().to_vec_f32().unwrap()
                };
                // f32: summation order only (1e-5); f16 output: rounding to f16 (2^-11
                // relative) dominates (1e-3).
                let tol = if xdt == DType::F16 { 1e-3 } else { 1e-5 };
                let e = rel_err(&run(&dev), &run(&cpu));
                assert!(e < tol, "chunked linear {m}x{k}x{n} x={xdt} w={wdt}: {e:e}");
            }
        }
        let table_v = rng.vec(300 * 7);
        let ids = [299u32, 0, 150, 3, 299, 77, 200];
        let gather = |d: &Device, out: DType| {
            let t = Tensor::from_slice(&table_v, &[300, 7], wdt, d).unwrap();
            ops::embedding(&t, &ids, out).unwrap().to_vec_f32().unwrap()
        };
        for out in [DType::F32, DType::F16] {
            assert_eq!(
                gather(&dev, out),
                gather(&cpu, out),
                "chunked embedding {wdt} -> {out}"
            );
        }
        let av = rng.vec(3000);
        let bv = rng.vec(3000);
        let add = |d: &Device, bshape: &[usize]| {
            let a = Tensor::from_slice(&av, &[3, 1000], wdt, d).unwrap();
            let nb: usize = bshape.iter().product();
            let b = Tensor::from_slice(&bv[..nb], bshape, DType::F32, d).unwrap();
            ops::add(&a, &b).unwrap().to_vec_f32().unwrap()
        };
        for bshape in [&[3usize, 1000][..], &[1000][..]] {
            // The same f32 (or f16-rounded) additions on both sides: exact.
            assert_eq!(
                add(&dev, bshape),
                add(&cpu, bshape),
                "chunked add {wdt} b={bshape:?}"
            );
        }
    }
    // An op that cannot be split returns a Limit error naming the binding, not a panic.
    let a = Tensor::zeros(&[64, 64], DType::F32, &dev).unwrap();
    match ops::matmul(&a, &a, false) {
        Err(Error::Limit {
            what,
            needed,
            limit,
        }) => {
            assert!(what.contains("matmul"), "{what}");
            assert!(needed > limit);
        }
        other => panic!("expected a Limit error, got {other:?}"),
    }
}

/// Row gathers are box copies: past one storage binding they are refused with the same
/// typed Limit error as the other copies.
#[test]
fn gather_rows_past_one_binding_is_a_limit_error() {
    let Some(dev) = open(GpuOptions {
        max_binding: Some(4096),
        ..GpuOptions::default()
    }) else {
        return;
    };
    let small: Vec<f32> = (0..32).map(|v| v as f32).collect();
    let x = Tensor::from_f32(small, &[8, 4], &dev).unwrap();
    let got = ops::gather_rows(&x, &[7, 0, 0])
        .unwrap()
        .to_vec_f32()
        .unwrap();
    assert_eq!(
        got,
        [
            28.0, 29.0, 30.0, 31.0, 0.0, 1.0, 2.0, 3.0, 0.0, 1.0, 2.0, 3.0
        ]
    );
    let big = Tensor::zeros(&[64, 64], DType::F32, &dev).unwrap();
    match ops::gather_rows(&big, &[1, 0]) {
        Err(Error::Limit {
            what,
            needed,
            limit,
        }) => {
            assert!(what.contains("copy"), "{what}");
            assert!(needed > limit);
        }
        other => panic!("expected a Limit error, got {other:?}"),
    }
}

/// `dump_wgsl` writes each compiled variant with its fragments pasted in and its constants
/// set, named after the kernel and constants.
#[test]
fn specialised_sources_are_dumped() {
    let dir = std::env::temp_dir().join(format!("blip2-wgsl-dump-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let Some(dev) = open(GpuOptions {
        dump_wgsl: Some(dir.clone()),
        ..GpuOptions::default()
    }) else {
        return;
    };
    let x = Tensor::from_f32(vec![-1.0, 2.0, 0.5, 4.0], &[2, 2], &dev).unwrap();
    let w = Tensor::from_f32(vec![1.0, 1.0], &[2], &dev).unwrap();
    let y = ops::layer_norm(&ops::relu(&x).unwrap(), &w, &w, 1e-5).unwrap();
    y.to_vec_f32().unwrap();
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(
        names[0].starts_with("elementwise_OP=2u_X_F16=false"),
        "{names:?}"
    );
    assert!(names[1].starts_with("norm_WG=64u_RMS=false"), "{names:?}");
    for n in &names {
        let text = std::fs::read_to_string(dir.join(n)).unwrap();
        let unresolved = text
            .lines()
            .any(|l| l.trim_start().starts_with("// #include"));
        assert!(text.contains("fn st_pair(") && !unresolved, "{n}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn fallbacks_match_fast_paths() {
    // Every kill switch off at once: tiled matmul for M=1, scalar loads, no subgroups,
    // attention as matmul + softmax + matmul, no bind-group cache, a submit every 3 dispatches.
    let Some(fast) = gpu() else { return };
    let Some(slow) = open(GpuOptions {
        subgroups: false,
        gemv: false,
        vec4: false,
        fused_attention: false,
        flash_attention: false,
        bind_group_cache: false,
        max_batch: 3,
        ..GpuOptions::default()
    }) else {
        return;
    };
    let mut rng = Rng::new(5);
    let (xv, wv) = (rng.vec(2 * 264), rng.vec(200 * 264));
    let (qv, kv) = (rng.vec(2 * 4 * 88), rng.vec(2 * 4 * 40 * 88));
    let vv = rng.vec(2 * 4 * 40 * 88);
    let run = |d: &Device| -> Vec<Vec<f32>> {
        let x = Tensor::from_slice(&xv, &[2, 264], DType::F16, d).unwrap();
        let w = Tensor::from_slice(&wv, &[200, 264], DType::F16, d).unwrap();
        let y = ops::linear(&x, &w, None).unwrap();
        let n = ops::rms_norm(
            &y,
            &Tensor::from_f32(vec![0.5; 200], &[200], d).unwrap(),
            1e-6,
        )
        .unwrap();
        let s = ops::softmax(&n, None).unwrap();
        let q = Tensor::from_slice(&qv, &[2, 4, 1, 88], DType::F32, d).unwrap();
        let k = Tensor::from_slice(&kv, &[2, 4, 40, 88], DType::F32, d).unwrap();
        let v = Tensor::from_slice(&vv, &[2, 4, 40, 88], DType::F32, d).unwrap();
        let opts = AttnOpts {
            scale: 0.1,
            causal: true,
            kv_len: Some(29),
            ..AttnOpts::default()
        };
        let a = ops::attention(&q, &k, &v, &opts).unwrap();
        // 40 queries: the flash kernel on the fast side.
        let q40 = Tensor::from_slice(&kv, &[2, 4, 40, 88], DType::F32, d).unwrap();
        let opts40 = AttnOpts {
            scale: 0.1,
            ..AttnOpts::default()
        };
        let a40 = ops::attention(&q40, &k, &v, &opts40).unwrap();
        [y, n, s, a, a40]
            .iter()
            .map(|t| t.to_vec_f32().unwrap())
            .collect()
    };
    let (f, s, c) = (run(&fast), run(&slow), run(&Device::cpu()));
    for (i, name) in [
        "linear",
        "rms_norm",
        "softmax",
        "attention",
        "attention (40 queries)",
    ]
    .iter()
    .enumerate()
    {
        // f16 outputs round to 2^-11 relative; the paths differ only in summation order.
        let tol = if i < 3 { 1e-3 } else { 1e-5 };
        let e_fs = rel_err(&f[i], &s[i]);
        let e_fc = rel_err(&f[i], &c[i]);
        assert!(
            e_fs < tol && e_fc < tol,
            "{name}: fast vs fallback {e_fs:e}, fast vs cpu {e_fc:e}"
        );
    }
    let st = ctx(&slow).stats();
    assert_eq!(st.bind_group_cache_hits, 0);
    assert!(
        st.submits >= st.dispatches / 3,
        "max_batch=3 bounds dispatches per submit: {st:?}"
    );
}

/// The tensor-core linear layer (on unless `BLIP2_GPU_NO_COOP=1`) is chosen exactly when the
/// adapter offers 16×16×16 f16 cooperative matrices at one subgroup size (and the kernel
/// passes its self-check); where it is, it matches the
/// CPU at ViT-like shapes (rows that are not a multiple of the 32-row block, f16 and f32
/// activations (these with `f16_math_f32_act`, the opt-in that lets the kernel round them),
/// bias). llvmpipe has no cooperative matrices: there the check is that the
/// switch does not select the kernel and linear layers still run the tiled matmul.
#[test]
fn tensor_cores_only_where_the_adapter_has_them() {
    let Some(dev) = open(GpuOptions {
        coop_matrix: true,
        f16_math_f32_act: true,
        ..GpuOptions::default()
    }) else {
        return;
    };
    let info = dev.info();
    let offered = info.cooperative_matrix
        && info.shader_f16
        && info.subgroup_min_size == info.subgroup_max_size;
    if !offered {
        assert!(!ctx(&dev).tensor_cores(), "{info:?}");
    }
    let mut rng = Rng::new(9);
    let (m, k, n) = (37, 272, 96);
    let (xv, wv, bv) = (rng.vec(m * k), rng.vec(n * k), rng.vec(n));
    for xdt in [DType::F32, DType::F16] {
        let run = |d: &Device| {
            let x = Tensor::from_slice(&xv, &[m, k], xdt, d).unwrap();
            let w = Tensor::from_slice(&wv, &[n, k], DType::F16, d).unwrap();
            let b = Tensor::from_slice(&bv, &[n], DType::F32, d).unwrap();
            ops::linear(&x, &w, Some(&b)).unwrap().to_vec_f32().unwrap()
        };
        let before = ctx(&dev).stats().dispatches;
        let (got, want) = (run(&dev), run(&Device::cpu()));
        assert!(ctx(&dev).stats().dispatches > before);
        // Tensor cores round x to f16 (2^-11 relative per product) and sum in f32; f16
        // outputs round to 2^-11 too.
        let e = rel_err(&got, &want);
        assert!(
            e < 2e-3,
            "{xdt:?}: {e:e} (tensor cores: {})",
            ctx(&dev).tensor_cores()
        );
    }
}

/// The tensor-core self-check's problem is exact: its stated product is what the CPU and the
/// tiled GPU matmul give, to the value, for f32 x and f16 weights (as the check runs it), so
/// a kernel that fails the check is wrong, not merely rounded differently. The problem's
/// weights survive f16 storage unchanged.
#[test]
fn tensor_core_self_check_problem_is_exact() {
    use blip2_engine::gpu::ops::coop_check_problem;
    let (x, w, want) = coop_check_problem();
    let (k, n) = (768, 64);
    let m = x.len() / k;
    assert_eq!((x.len(), w.len(), want.len()), (m * k, n * k, m * n));
    for dev in blip2_engine::testing::devices() {
        let xt = Tensor::from_slice(&x, &[m, k], DType::F32, &dev).unwrap();
        let wt = Tensor::from_slice(&w, &[n, k], DType::F16, &dev).unwrap();
        assert_eq!(wt.to_vec_f32().unwrap(), w, "{dev:?}");
        let got = ops::linear(&xt, &wt, None).unwrap().to_vec_f32().unwrap();
        assert_eq!(got, want, "{dev:?}");
    }
    // Not all zeros, not all equal: a constant or empty output fails the check.
    assert!(want.iter().any(|&v| v != want[0]));
}

#[test]
fn errors_are_values() {
    let Some(dev) = gpu() else { return };
    let g = ctx(&dev);
    let max = dev.info().max_buffer_size;
    // A tensor over max_buffer_size: a Limit error naming the size, before any allocation.
    let n = (max / 4 + 1024) as usize;
    match Tensor::zeros(&[n], DType::F32, &dev) {
        Err(Error::Limit {
            what,
            needed,
            limit,
        }) => {
            eprintln!("over max_buffer_size: {what}: {needed} > {limit}");
            assert!(needed > limit && limit == max);
        }
        other => panic!("expected a Limit error, got {other:?}"),
    }
    // The device still works afterwards.
    let t = Tensor::from_f32(vec![1.0, -2.0, 3.0], &[3], &dev).unwrap();
    assert_eq!(
        ops::relu(&t).unwrap().to_vec_f32().unwrap(),
        vec![1.0, 0.0, 3.0]
    );
    g.synchronize().unwrap();
}

#[test]
fn ops_from_several_threads() {
    let Some(dev) = gpu() else { return };
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let dev = dev.clone();
            std::thread::spawn(move || {
                let mut rng = Rng::new(100 + t);
                for _ in 0..5 {
                    let av = rng.vec(257 * 33);
                    let bv = rng.vec(33 * 19);
                    let a = Tensor::from_f32(av.clone(), &[257, 33], &dev).unwrap();
                    let b = Tensor::from_f32(bv.clone(), &[33, 19], &dev).unwrap();
                    let got = ops::matmul(&a, &b, false).unwrap().to_vec_f32().unwrap();
                    let cpu = Device::cpu();
                    let want = ops::matmul(
                        &a.to_device(&cpu).unwrap(),
                        &b.to_device(&cpu).unwrap(),
                        false,
                    )
                    .unwrap()
                    .to_vec_f32()
                    .unwrap();
                    // f32 sums of 33 products: summation order only.
                    assert!(rel_err(&got, &want) < 1e-5);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

#[test]
fn write_at_is_in_place_and_copy_on_write() {
    // A context of its own: the counters must not see other tests' work.
    let Some(dev) = open(GpuOptions::default()) else {
        return;
    };
    let g = ctx(&dev);
    for dt in [DType::F32, DType::F16] {
        // A KV cache [1, 2, 6, 3] (odd rows: f16 words straddle rows) filled one step at a time.
        let mut cache = Tensor::zeros(&[1, 2, 6, 3], dt, &dev).unwrap();
        let srcs: Vec<Tensor> = (0..6)
            .map(|step| {
                let v: Vec<f32> = (0..6).map(|i| (step * 10 + i) as f32).collect();
                Tensor::from_slice(&v, &[1, 2, 1, 3], dt, &dev).unwrap()
            })
            .collect();
        let before = g.stats();
        for (step, src) in srcs.iter().enumerate() {
            ops::write_at(&mut cache, src, 2, step).unwrap();
        }
        let after = g.stats();
        // In place: no buffer is taken, from the pool or new.
        assert_eq!(after.buffers_created, before.buffers_created, "{dt}");
        assert_eq!(after.buffers_reused, before.buffers_reused, "{dt}");
        let got = cache.to_vec_f32().unwrap();
        let want: Vec<f32> = (0..2)
            .flat_map(|h| {
                (0..6).flat_map(move |s| (0..3).map(move |j| (s * 10 + h * 3 + j) as f32))
            })
            .collect();
        assert_eq!(got, want, "{dt}: cache filled step by step");
        // A clone keeps the old contents (copy-on-write, as on the CPU).
        let snapshot = cache.clone();
        let src = Tensor::from_slice(&[-1.0; 6], &[1, 2, 1, 3], dt, &dev).unwrap();
        ops::write_at(&mut cache, &src, 2, 0).unwrap();
        assert_eq!(snapshot.to_vec_f32().unwrap(), want);
        assert_eq!(cache.to_vec_f32().unwrap()[..3], [-1.0; 3]);
    }
}

/// f16 values as stored (round to nearest even), in f64.
fn as_f16(v: &[f32]) -> Vec<f64> {
    v.iter()
        .map(|&x| half::f16::from_f32(x).to_f32() as f64)
        .collect()
}

/// The f16-arithmetic variants (GEMV and tiled matmul with f16 weights: by default where
/// both operands are stored f16, with `f16_math_f32_act` also for f32 activations; off with
/// `f16_math: false`) against an f64 reference on the stored inputs, at odd sizes: GEMV rows
/// 1..=4 with K a multiple of 8 (its 16-byte loads), the tiled matmul at M 5 and 33 with odd
/// N and K (partial tiles and runs), and a batched matmul with B [K, N]; f16 and f32 x.
///
/// Tolerances, per output y = Σ p_i (p_i = x_i w_i, u = 2^-11 the f16 unit roundoff):
/// - f16 variants: each product is rounded to f16 (u |p_i|), each run of R products is
///   summed in f16 (R = 8 in both kernels: at most u Σ_run |p_i|), the f32 sum of the
///   runs adds ~K 2^-24 Σ|p_i|, and an f16 output is stored rounded (u |y|). So
///   |y_gpu − y| <= 9u Σ|p_i| + u|y| (+ K 2^-24 Σ|p_i| + 1e-6 for the f32 part), checked
///   per element, plus u Σ|p_i| when an f32 x is rounded to f16. The RMS error is far below
///   that bound (errors of random sign): NMSE <= 2e-6 (rounding the products alone gives
///   u²/3 ≈ 8e-8, the runs' sums several times that; measured 2e-7..4e-7).
/// - packed-pair path (f32 products and sums): the f16 output rounding and the f32 sums
///   only, with the ops suite's budgets, NMSE 1e-6 (f16 output) and 1e-10 (f32 output).
#[test]
fn f16_math_matches_reference() {
    let dir = std::env::temp_dir().join(format!("blip2-f16-dump-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let Some(on) = open(GpuOptions {
        dump_wgsl: Some(dir.clone()),
        ..GpuOptions::default()
    }) else {
        return;
    };
    let Some(off) = open(GpuOptions {
        f16_math: false,
        ..GpuOptions::default()
    }) else {
        return;
    };
    let Some(act) = open(GpuOptions {
        f16_math_f32_act: true,
        ..GpuOptions::default()
    }) else {
        return;
    };
    let has_f16 = ctx(&on).info().shader_f16;
    assert_eq!(ctx(&on).f16_math(), has_f16);
    assert!(!ctx(&off).f16_math());
    let u = 2f64.powi(-11);
    let mut rng = Rng::new(23);
    // (batch, m, k, n, b_trans): linear layers (GEMV for m <= 4) and a batched matmul.
    let cases = [
        (1, 1, 8, 3, true),
        (1, 1, 1408, 37, true),
        (1, 2, 264, 101, true),
        (1, 3, 88, 9, true),
        (1, 4, 2056, 13, true),
        (1, 5, 129, 37, true),
        (1, 33, 264, 67, true),
        (3, 17, 41, 23, false),
    ];
    for (bt, m, k, n, b_trans) in cases {
        let (xv, wv) = (rng.vec(bt * m * k), rng.vec(bt * n * k));
        let wq = as_f16(&wv);
        for xdt in [DType::F16, DType::F32] {
            let xq = match xdt {
                DType::F16 => as_f16(&xv),
                _ => xv.iter().map(|&x| x as f64).collect(),
            };
            // want[z, i, j] and Σ|p| of it.
            let mut want = Vec::new();
            let mut mag = Vec::new();
            for z in 0..bt {
                for i in 0..m {
                    for j in 0..n {
                        let (mut s, mut a) = (0.0, 0.0);
                        for t in 0..k {
                            let wi = if b_trans { j * k + t } else { t * n + j };
                            let p = xq[(z * m + i) * k + t] * wq[z * n * k + wi];
                            s += p;
                            a += p.abs();
                        }
                        want.push(s);
                        mag.push(a);
                    }
                }
            }
            let x16 = xdt == DType::F16;
            let runs = [(&on, has_f16 && x16), (&off, false), (&act, has_f16)];
            for (dev, f16) in runs {
                let x = Tensor::from_slice(&xv, &[bt, m, k], xdt, dev).unwrap();
                let y = if bt == 1 {
                    let w = Tensor::from_slice(&wv, &[n, k], DType::F16, dev).unwrap();
                    ops::linear(&x, &w, None).unwrap()
                } else {
                    let shape = if b_trans { [bt, n, k] } else { [bt, k, n] };
                    let w = Tensor::from_slice(&wv, &shape, DType::F16, dev).unwrap();
                    ops::matmul(&x, &w, b_trans).unwrap()
                };
                let got = y.to_vec_f32().unwrap();
                let what = format!("{bt}x{m}x{k}x{n} b_trans={b_trans} x {xdt} f16 math {f16}");
                let terms = match (f16, x16) {
                    (false, _) => 0.0,
                    (true, true) => 9.0,
                    (true, false) => 10.0,
                };
                for (e, ((&g, &w), &a)) in got.iter().zip(&want).zip(&mag).enumerate() {
                    let f32_part = k as f64 * 2f64.powi(-24) * a + 1e-6;
                    let bound = terms * u * a + u * w.abs() + f32_part;
                    assert!(
                        (g as f64 - w).abs() <= bound,
                        "{what}: element {e}: {g} vs {w} (bound {bound:e})"
                    );
                }
                let num: f64 = got
                    .iter()
                    .zip(&want)
                    .map(|(&g, &w)| (g as f64 - w).powi(2))
                    .sum();
                let den: f64 = want.iter().map(|w| w * w).sum();
                let tol = match (f16, x16) {
                    (true, _) => 2e-6,
                    (false, true) => 1e-6,
                    (false, false) => 1e-10,
                };
                eprintln!("{what}: NMSE {:e}", num / den);
                assert!(num / den <= tol, "{what}: NMSE {:e} > {tol:e}", num / den);
            }
        }
    }
    // The f16 variants were built (their labels end in "+f16"), and dumped.
    let dumped: Vec<String> = std::fs::read_dir(&dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    for family in ["gemv", "matmul"] {
        let f16 = dumped
            .iter()
            .filter(|n| n.starts_with(&format!("{family}_")) && n.ends_with("__f16.wgsl"));
        assert_eq!(f16.count() > 0, has_f16, "{family}: {dumped:?}");
    }
    for n in dumped.iter().filter(|n| n.ends_with("__f16.wgsl")) {
        let text = std::fs::read_to_string(dir.join(n)).unwrap();
        assert!(text.starts_with("enable f16;\n"), "{n}");
        // The default context builds f16 variants for f16 activations only.
        assert!(n.contains("X_F16=true") || n.contains("A_F16=true"), "{n}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
