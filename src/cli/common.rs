//! Options shared by the subcommands that load a model.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use blip2::{Blip2, DType, Device, LoadOptions};
use clap::{Args, ValueEnum};

#[derive(Args, Clone, Debug)]
pub struct ModelOpts {
    /// Hugging Face BLIP-2 checkpoint directory (config.json, *.safetensors, tokenizer.json).
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    pub device: DeviceArg,
    /// Storage dtype of the weights (activations are f32).
    #[arg(long, value_enum, default_value_t = DTypeArg::F32)]
    pub dtype: DTypeArg,
    /// One JSON object per result on its own line.
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum DeviceArg {
    Auto,
    Cpu,
    Gpu,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum DTypeArg {
    F32,
    F16,
}

impl DTypeArg {
    pub fn dtype(self) -> DType {
        match self {
            DTypeArg::F32 => DType::F32,
            DTypeArg::F16 => DType::F16,
        }
    }
}

pub fn pick_device(arg: DeviceArg) -> anyhow::Result<Device> {
    Ok(match arg {
        DeviceArg::Cpu => Device::cpu(),
        DeviceArg::Gpu => Device::gpu()?,
        DeviceArg::Auto => Device::auto()?,
    })
}

/// Loads the checkpoint of `o` and returns it with the load time (device setup included).
pub fn load_model(o: &ModelOpts) -> anyhow::Result<(Blip2, Duration)> {
    let t = Instant::now();
    let device = pick_device(o.device)?;
    let model = Blip2::load(
        &o.model,
        LoadOptions {
            device,
            dtype: o.dtype.dtype(),
            progress: None,
        },
    )
    .with_context(|| format!("loading {}", o.model.display()))?;
    Ok((model, t.elapsed()))
}

/// Milliseconds with microsecond resolution, for JSON output.
pub fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}
