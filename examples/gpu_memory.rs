//! Where the GPU backend's memory goes over a long batched captioning run (issue 20: on
//! llvmpipe, `blip2 caption DIR --batch-size 32 --device gpu` grew 17 MiB over its first
//! ~900 captions and then stayed flat). The embedded demo model captions procedural scenes
//! in batches, as `blip2 caption` does, and after every `--every` batches one line shows
//! the process's memory next to the runtime's own counters:
//!
//! ```sh
//! cargo run --release --example gpu_memory -- --count 1500 --batch-size 32 --every 4
//! ```
//!
//! Columns: captions done; VmRSS and VmHWM (MiB, `/proc/self/status`; on llvmpipe GPU
//! buffers are host memory, so they are part of it); tensor buffers in use and kept free in
//! the runtime's pool (MiB); wgpu buffers created so far; pipelines compiled; bind groups
//! created. "other" is RSS − (in use + pooled): the model's host copies, wgpu's and the
//! driver's own state (llvmpipe's compiled shaders), and the allocator's.
//! Linux only (it reads /proc); any adapter (`WGPU_ADAPTER_NAME` picks one).

use blip2::engine::gpu::GpuStats;
use blip2::{Device, GenerationConfig, LoadOptions};

/// `name`'s value, `default` when absent; an error naming it when its value is missing or
/// not a number.
fn arg(name: &str, default: usize) -> Result<usize, String> {
    let args: Vec<String> = std::env::args().collect();
    let Some(i) = args.iter().position(|a| a == name) else {
        return Ok(default);
    };
    let v = args.get(i + 1).map_or("", String::as_str);
    v.parse()
        .map_err(|_| format!("{name} takes a number, found `{v}`"))
}

/// (VmRSS, VmHWM) in MiB.
fn mem() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    (kib("VmRSS:") / 1024.0, kib("VmHWM:") / 1024.0)
}

fn line(done: usize, s: &GpuStats) {
    let (rss, hwm) = mem();
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!(
        "{done:>8} {rss:>8.1} {hwm:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8} {:>9} {:>11}",
        mib(s.live_bytes),
        mib(s.pooled_bytes),
        rss - mib(s.live_bytes) - mib(s.pooled_bytes),
        s.buffers_created,
        s.pipelines_compiled,
        s.bind_groups_created
    );
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let count = arg("--count", 1500)?;
    let batch = arg("--batch-size", 32)?.max(1);
    let every = arg("--every", 4)?.max(1);
    let device = Device::gpu()?;
    let Device::Gpu(g) = &device else {
        unreachable!("Device::gpu gives a GPU device")
    };
    let g = g.clone();
    eprintln!("adapter: {}", device.info().name);
    let model = blip2::demo::load_demo(LoadOptions {
        device: device.clone(),
        ..LoadOptions::default()
    })?;
    let cfg = model.resolve_generation(&GenerationConfig::default())?;
    println!(
        "{:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>11}",
        "captions",
        "rss",
        "hwm",
        "in use",
        "pooled",
        "other",
        "buffers",
        "pipelines",
        "bind groups"
    );
    line(0, &g.stats());
    let mut done = 0;
    for (b, first) in (0..count).step_by(batch).enumerate() {
        let n = batch.min(count - first);
        let scenes: Vec<_> = (first..first + n)
            .map(|i| blip2::scene::draw_scene(i as u64 + 1))
            .collect();
        let imgs: Vec<blip2::image::DynamicImage> = scenes
            .into_iter()
            .map(|s| blip2::image::DynamicImage::ImageRgb8(s.image))
            .collect();
        let refs: Vec<_> = imgs.iter().collect();
        let feats = model.image_features(&refs)?;
        let gens = model.generate_from_features_with(&feats, &vec![None; n], &cfg, &mut |_| {})?;
        done += gens.len();
        if (b + 1) % every == 0 || done == count {
            line(done, &g.stats());
        }
    }
    Ok(())
}
