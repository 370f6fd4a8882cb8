//! The `blip2` command: captions, answers and device information from the terminal.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use blip2::{Blip2, DType, Device, Generation, GenerationConfig, LoadOptions};
use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(name = "blip2", version, about = "BLIP-2 image captioning and visual question answering on CPU or any wgpu GPU")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Caption one or more images.
    #[command(after_help = "Examples:\n  blip2 caption photo.jpg --model ./blip2-opt-2.7b\n  blip2 caption a.png b.png --model DIR --prompt \"a photo of\" --json")]
    Caption {
        /// Image files.
        #[arg(required = true)]
        images: Vec<PathBuf>,
        #[command(flatten)]
        opts: RunOpts,
        /// Text given to the processor verbatim after the image tokens (default: none).
        #[arg(long)]
        prompt: Option<String>,
    },
    /// Answer a question about an image (prompt "Question: {q} Answer:").
    #[command(after_help = "Example:\n  blip2 ask photo.jpg \"what is the dog doing?\" --model ./blip2-opt-2.7b")]
    Ask {
        image: PathBuf,
        question: String,
        #[command(flatten)]
        opts: RunOpts,
    },
    /// List the compute devices (CPU and GPU adapters) and what they support.
    Info,
}

#[derive(Args, Clone)]
struct RunOpts {
    /// Hugging Face BLIP-2 checkpoint directory (config.json, *.safetensors, tokenizer.json).
    #[arg(long)]
    model: PathBuf,
    #[arg(long, default_value_t = 20)]
    max_new_tokens: usize,
    #[arg(long, default_value_t = 0)]
    min_new_tokens: usize,
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    device: DeviceArg,
    /// Storage dtype of the weights (activations are f32).
    #[arg(long, value_enum, default_value_t = DTypeArg::F32)]
    dtype: DTypeArg,
    /// One JSON object per result on its own line.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum DeviceArg {
    Auto,
    Cpu,
    Gpu,
}

#[derive(Clone, Copy, ValueEnum)]
enum DTypeArg {
    F32,
    F16,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Caption { images, opts, prompt } => {
            let (model, load) = load_model(&opts)?;
            for path in &images {
                let image = blip2::load_image(path)?;
                let g = model.generate(&image, prompt.as_deref(), &generation_config(&opts))?;
                print_result(path, &g, load, &opts)?;
            }
            Ok(())
        }
        Command::Ask { image, question, opts } => {
            let (model, load) = load_model(&opts)?;
            let img = blip2::load_image(&image)?;
            let prompt = format!("Question: {} Answer:", question.trim());
            let g = model.generate(&img, Some(&prompt), &generation_config(&opts))?;
            print_result(&image, &g, load, &opts)
        }
        Command::Info => info(),
    }
}

fn generation_config(o: &RunOpts) -> GenerationConfig {
    GenerationConfig {
        max_new_tokens: o.max_new_tokens,
        min_new_tokens: o.min_new_tokens,
        ..Default::default()
    }
}

fn pick_device(arg: DeviceArg) -> anyhow::Result<Device> {
    Ok(match arg {
        DeviceArg::Cpu => Device::cpu(),
        DeviceArg::Gpu => Device::gpu()?,
        DeviceArg::Auto => Device::auto()?,
    })
}

fn load_model(o: &RunOpts) -> anyhow::Result<(Blip2, Duration)> {
    let t = Instant::now();
    let device = pick_device(o.device)?;
    let dtype = match o.dtype {
        DTypeArg::F32 => DType::F32,
        DTypeArg::F16 => DType::F16,
    };
    let model = Blip2::load(&o.model, LoadOptions { device, dtype, progress: None })?;
    Ok((model, t.elapsed()))
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn print_result(path: &Path, g: &Generation, load: Duration, o: &RunOpts) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if o.json {
        let t = &g.timings;
        let v = serde_json::json!({
            "image": path.display().to_string(),
            "text": g.text,
            "token_ids": g.token_ids,
            "timings_ms": {
                "load": ms(load),
                "preprocess": ms(t.preprocess),
                "vision": ms(t.vision),
                "qformer": ms(t.qformer),
                "prefill": ms(t.prefill),
                "decode": ms(t.decode),
            },
        });
        writeln!(out, "{v}")?;
    } else {
        writeln!(out, "{}", g.text)?;
    }
    Ok(())
}

fn info() -> anyhow::Result<()> {
    let mut devices = vec![Device::cpu()];
    match Device::gpu() {
        Ok(g) => devices.push(g),
        Err(e) => println!("gpu: none ({e})"),
    }
    for d in devices {
        let i = d.info();
        println!("{}: {}", if d.is_gpu() { "gpu" } else { "cpu" }, i.name);
        println!("  backend: {}  driver: {}  type: {}", i.backend, i.driver, i.device_type);
        if d.is_gpu() {
            println!(
                "  shader_f16: {}  subgroups: {} ({}..{})  timestamps: {}  cooperative_matrix: {}",
                i.shader_f16, i.subgroups, i.subgroup_min_size, i.subgroup_max_size, i.timestamp_query, i.cooperative_matrix
            );
            println!(
                "  max_storage_buffer_binding_size: {}  max_buffer_size: {}  workgroup storage: {}  invocations/workgroup: {}",
                i.max_storage_buffer_binding_size, i.max_buffer_size, i.max_compute_workgroup_storage_size, i.max_compute_invocations_per_workgroup
            );
        } else {
            println!("  threads: {}", i.threads);
        }
    }
    Ok(())
}
