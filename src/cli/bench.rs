//! `blip2 bench`: stage timings of the whole pipeline with random weights at real model
//! sizes (no checkpoint needed).

use std::time::{Duration, Instant};

use blip2::engine::Device;
use blip2::engine::gpu::GpuStats;
use blip2::model::Blip2Config;
use blip2::{Blip2, GenerationConfig};
use clap::Args;

use super::common::{DTypeArg, DeviceArg, ms, pick_device, weight_summary};

#[derive(Args, Clone, Debug)]
pub struct BenchOpts {
    /// Model sizes: tiny, opt-2.7b, opt-6.7b, flan-t5-xl, flan-t5-xxl, instructblip-vicuna-7b
    /// or instructblip-flan-t5-xl.
    #[arg(long, default_value = "tiny")]
    pub preset: String,
    #[arg(long, default_value_t = 1)]
    pub batch_size: usize,
    /// New tokens to generate (eos is suppressed so every run decodes this many).
    #[arg(long, default_value_t = 16)]
    pub new_tokens: usize,
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    pub device: DeviceArg,
    /// Weight storage dtype; f16 halves memory (needed for opt-6.7b within 24 GiB); q8/q4
    /// quantize the linear weights and token embeddings.
    #[arg(long, value_enum, default_value_t = DTypeArg::F16)]
    pub dtype: DTypeArg,
    /// Timed repetitions after one warm-up run; the best is reported.
    #[arg(long, default_value_t = 2)]
    pub runs: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long)]
    pub json: bool,
    /// After the timed runs, also build the f32 model from the same seed and report the
    /// cosine similarity of the prompt logits (same images) to it: the accuracy cost of
    /// `--dtype` at this size. Needs the f32 model's memory (peak RSS is read before it).
    #[arg(long)]
    pub compare_f32: bool,
}

/// Cosine similarity of two equally long vectors (f64 sums).
fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0.0f64, 0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (x as f64, y as f64);
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    ab / (aa.sqrt() * bb.sqrt()).max(1e-300)
}

struct Run {
    preprocess: Duration,
    vision: Duration,
    qformer: Duration,
    prefill: Duration,
    decode: Duration,
    decode_tokens: usize,
}

/// Peak resident memory of this process (Linux VmHWM), in bytes.
fn peak_rss() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Runtime counters per decode step, averaged over the steps between the first and the last
/// token (`None` on the CPU or with a single token).
fn step_counters(marks: &[GpuStats]) -> Option<StepCounters> {
    let (first, last) = (marks.first()?, marks.last()?);
    let steps = (marks.len() as u64).checked_sub(1).filter(|&n| n > 0)?;
    Some(StepCounters {
        dispatches: (last.dispatches - first.dispatches).div_ceil(steps),
        submits: (last.submits - first.submits).div_ceil(steps),
        readback_bytes: (last.readback_bytes - first.readback_bytes).div_ceil(steps),
    })
}

#[derive(Clone, Copy)]
struct StepCounters {
    dispatches: u64,
    submits: u64,
    readback_bytes: u64,
}

fn gpu_bytes(dev: &Device) -> Option<u64> {
    match dev {
        Device::Gpu(g) => {
            let s = g.stats();
            Some(s.live_bytes + s.pooled_bytes)
        }
        Device::Cpu => None,
    }
}

pub fn bench(o: &BenchOpts) -> anyhow::Result<()> {
    anyhow::ensure!(
        o.batch_size >= 1 && o.new_tokens >= 1 && o.runs >= 1,
        "batch size, new tokens and runs must be at least 1"
    );
    let device = pick_device(o.device)?;
    let config = Blip2Config::preset(&o.preset)?;
    let t = Instant::now();
    let model = Blip2::random(config, &device, o.dtype.dtype(), o.seed)?;
    let load = t.elapsed();
    // Random images with structure-free noise: timing does not depend on content.
    let mut x = 0x2545_F491_4F6C_DD1Du64 ^ o.seed;
    let images: Vec<blip2::image::DynamicImage> = (0..o.batch_size)
        .map(|_| {
            let img = blip2::image::RgbImage::from_fn(640, 480, |_, _| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                blip2::image::Rgb([x as u8, (x >> 8) as u8, (x >> 16) as u8])
            });
            blip2::image::DynamicImage::ImageRgb8(img)
        })
        .collect();
    let refs: Vec<&blip2::image::DynamicImage> = images.iter().collect();
    let settings = model.resolve_generation(&GenerationConfig {
        max_new_tokens: o.new_tokens,
        min_new_tokens: o.new_tokens,
        ..Default::default()
    })?;
    let prompts = vec![None; o.batch_size];
    let mut best: Option<Run> = None;
    let mut last_feats = None;
    // GPU runtime counters at each of row 0's tokens: the difference between two tokens is
    // one decode step (forward, logits read back, token chosen).
    let mut marks: Vec<GpuStats> = Vec::new();
    for i in 0..=o.runs {
        let feats = model.image_features(&refs)?;
        marks.clear();
        let out = model.generate_from_features_with(&feats, &prompts, &settings, &mut |e| {
            if let (0, Device::Gpu(g)) = (e.row, &device) {
                marks.push(g.stats());
            }
        })?;
        let t = &out[0].timings;
        let run = Run {
            preprocess: feats.preprocess,
            vision: feats.vision,
            qformer: feats.qformer,
            prefill: t.prefill,
            decode: t.decode,
            decode_tokens: t.decode_tokens,
        };
        let total = |r: &Run| r.vision + r.qformer + r.prefill + r.decode;
        // Run 0 warms pipelines and pools up and is not reported.
        if i > 0 && best.as_ref().is_none_or(|b| total(&run) < total(b)) {
            best = Some(run);
        }
        last_feats = Some(feats);
    }
    let r = best.ok_or_else(|| anyhow::anyhow!("no timed run"))?;
    // Numerics at this size: the prompt's logits (T5: of the decoder's first step) must be
    // finite with random weights in the chosen storage dtype (on the last run's features).
    let feats = last_feats.ok_or_else(|| anyhow::anyhow!("no timed run"))?;
    let encdec = model
        .config
        .text_config
        .as_ref()
        .is_some_and(|t| t.is_encoder_decoder());
    let dec = vec![vec![0u32]; o.batch_size];
    let (logits, _) = model.prompt_logits(&feats, &prompts, encdec.then_some(&dec[..]))?;
    let logits = logits.to_vec_f32()?;
    let finite = logits.iter().all(|v| v.is_finite());
    let rss = peak_rss();
    let layers = model
        .config
        .text_config
        .as_ref()
        .map(|t| t.decoder_layers());
    let weights = model.weight_stats().clone();
    let cosine_f32 = if o.compare_f32 {
        drop((model, feats));
        let reference = Blip2::random(
            Blip2Config::preset(&o.preset)?,
            &device,
            blip2::DType::F32,
            o.seed,
        )?;
        let f = reference.image_features(&refs)?;
        let (l, _) = reference.prompt_logits(&f, &prompts, encdec.then_some(&dec[..]))?;
        Some(cosine(&logits, &l.to_vec_f32()?))
    } else {
        None
    };
    let per_token = r
        .decode
        .checked_div(r.decode_tokens.max(1) as u32)
        .unwrap_or_default();
    let tok_s = if r.decode.is_zero() {
        0.0
    } else {
        (r.decode_tokens * o.batch_size) as f64 / r.decode.as_secs_f64()
    };
    let per_step = step_counters(&marks);

    let info = device.info();
    if o.json {
        let v = serde_json::json!({
            "preset": o.preset, "batch_size": o.batch_size, "new_tokens": o.new_tokens,
            "device": info.name, "backend": info.backend, "dtype": format!("{:?}", o.dtype).to_lowercase(),
            "timings_ms": {
                "load_random_weights": ms(load), "preprocess": ms(r.preprocess), "vision": ms(r.vision),
                "qformer": ms(r.qformer), "prefill": ms(r.prefill), "decode": ms(r.decode),
                "per_token_decode": ms(per_token),
            },
            "decode_tokens_per_s": tok_s,
            "logits_finite": finite, "logits_cosine_vs_f32": cosine_f32,
            "peak_rss_bytes": rss, "gpu_buffer_bytes": gpu_bytes(&device),
            "weights": weights.to_json(),
            "layers": layers,
            "gpu_dispatches_per_token": per_step.map(|s| s.dispatches),
            "gpu_submits_per_token": per_step.map(|s| s.submits),
            "readback_bytes_per_token": per_step.map(|s| s.readback_bytes),
        });
        println!("{v}");
    } else {
        println!(
            "blip2 bench: preset {} | batch {} | {} new tokens | {} ({}) | {:?} weights",
            o.preset, o.batch_size, o.new_tokens, info.name, info.backend, o.dtype
        );
        println!("{:<24}{:>12}", "stage", "ms");
        for (name, d) in [
            ("random weights (load)", load),
            ("preprocess", r.preprocess),
            ("vision", r.vision),
            ("qformer", r.qformer),
            ("prefill", r.prefill),
            ("decode (all tokens)", r.decode),
            ("decode per token", per_token),
        ] {
            println!("{name:<24}{:>12.2}", d.as_secs_f64() * 1e3);
        }
        println!("{}", weight_summary(&weights));
        println!("decode throughput: {tok_s:.2} tokens/s");
        println!("prompt logits finite: {finite}");
        if let Some(c) = cosine_f32 {
            println!("prompt logits cosine vs f32: {c:.6}");
        }
        if let Some(b) = rss {
            println!("peak RSS: {:.2} GiB", b as f64 / (1u64 << 30) as f64);
        }
        if let Some(b) = gpu_bytes(&device) {
            println!(
                "GPU buffers held: {:.2} GiB",
                b as f64 / (1u64 << 30) as f64
            );
        }
        if let Some(s) = per_step {
            println!(
                "per decode step: {} dispatches ({} language-model layers), {} submits, {} bytes read back",
                s.dispatches,
                layers.unwrap_or(0),
                s.submits,
                s.readback_bytes
            );
        }
    }
    Ok(())
}
