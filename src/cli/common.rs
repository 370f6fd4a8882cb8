//! Options shared by the subcommands that load a model.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use blip2::{Blip2, DType, Device, LoadOptions};
use clap::{Args, ValueEnum};

#[derive(Args, Clone, Debug)]
pub struct ModelOpts {
    /// Hugging Face BLIP-2 checkpoint directory (config.json, *.safetensors, tokenizer.json).
    /// Without it, the small demo model built into the binary is used (it knows the scenes
    /// of `blip2 demo-scene`).
    #[arg(long)]
    pub model: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    pub device: DeviceArg,
    /// Storage dtype of the weights (activations are f32). q8/q4 quantize the linear-layer
    /// weights and token embeddings at load (other matrices f16); a `blip2 quantize` directory keeps its saved
    /// quantization whatever this says.
    #[arg(long, value_enum, default_value_t = DTypeArg::F32)]
    pub dtype: DTypeArg,
    /// One JSON object per result on its own line.
    #[arg(long)]
    pub json: bool,
    /// No progress bar, device explanation or timing summary on stderr.
    #[arg(long, short)]
    pub quiet: bool,
    /// Rotate/flip JPEG images by their EXIF orientation tag, as Pillow's
    /// `ImageOps.exif_transpose` does. Off by default, as in transformers, whose processors
    /// see the stored (unrotated) pixels.
    #[arg(long)]
    pub exif_orientation: bool,
    /// Over many images (caption, rank): stop at the first image that fails instead of
    /// reporting it and going on.
    #[arg(long)]
    pub fail_fast: bool,
    #[command(flatten)]
    pub adapters: AdapterArgs,
}

/// The failed inputs of a command over many images. Each is reported as it happens (one
/// `error: PATH: reason` line on stderr, and with `--json` a `{"image", "error"}` record
/// among the results) and the run goes on; [`Failures::finish`] makes the exit status
/// non-zero if any failed. With `--fail-fast` the first failure ends the command.
pub struct Failures {
    failed: usize,
    total: usize,
    json: bool,
    fail_fast: bool,
}

impl Failures {
    pub fn new(o: &ModelOpts, total: usize) -> Failures {
        Failures {
            failed: 0,
            total,
            json: o.json,
            fail_fast: o.fail_fast,
        }
    }

    pub fn report(&mut self, input: &Path, e: anyhow::Error) -> anyhow::Result<()> {
        let e =
            if input.as_os_str() == "-" || error_chain(&e).contains(&input.display().to_string()) {
                e
            } else {
                e.context(input.display().to_string())
            };
        if self.fail_fast {
            return Err(e);
        }
        self.failed += 1;
        let msg = error_chain(&e);
        eprintln!("error: {msg}");
        if self.json {
            use std::io::Write;
            let v = serde_json::json!({
                "image": input.display().to_string(),
                "error": msg,
            });
            writeln!(std::io::stdout().lock(), "{v}")?;
        }
        Ok(())
    }

    pub fn finish(self) -> anyhow::Result<()> {
        if self.failed > 0 {
            anyhow::bail!(
                "{} of {} images failed (each is reported above)",
                self.failed,
                self.total
            );
        }
        Ok(())
    }
}

/// PEFT LoRA adapters merged into the weights at load (docs/adapters.md).
#[derive(Args, Clone, Debug, Default)]
pub struct AdapterArgs {
    /// PEFT LoRA adapter directory (adapter_config.json + adapter_model.safetensors, as
    /// peft's save_pretrained writes it) merged into the float weights at load, before
    /// --dtype converts or quantizes them. Repeat to merge several, in order.
    #[arg(long = "adapter", value_name = "DIR")]
    pub dirs: Vec<PathBuf>,
    /// Multiplier of an adapter's LoRA deltas (W += S·scaling·B·A). The i-th --adapter-scale
    /// goes with the i-th --adapter, in command-line order; adapters without one use 1.
    #[arg(
        long = "adapter-scale",
        value_name = "S",
        allow_negative_numbers = true
    )]
    pub scales: Vec<f32>,
}

impl AdapterArgs {
    /// The adapters to merge: each directory with its scale (the pairing rule above).
    pub fn specs(&self) -> anyhow::Result<Vec<blip2::AdapterSpec>> {
        anyhow::ensure!(
            self.scales.len() <= self.dirs.len(),
            "{} --adapter-scale values for {} --adapter directories: the i-th scale goes with the i-th adapter",
            self.scales.len(),
            self.dirs.len()
        );
        if let Some(s) = self.scales.iter().find(|s| !s.is_finite()) {
            anyhow::bail!("--adapter-scale {s} is not a finite number");
        }
        Ok(self
            .dirs
            .iter()
            .enumerate()
            .map(|(i, dir)| blip2::AdapterSpec {
                dir: dir.clone(),
                scale: self.scales.get(i).copied().unwrap_or(1.0),
            })
            .collect())
    }
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
    /// bf16 linear weights packed for the CPU's matrix engine (AMX or AVX512-BF16 where
    /// present: bf16 products with f32 sums); CPU only.
    Bf16,
    /// 8-bit block-quantized linear weights and embeddings (8.5 bits per weight).
    Q8,
    /// 4-bit block-quantized linear weights and embeddings (4.5 bits per weight).
    Q4,
}

impl DTypeArg {
    pub fn dtype(self) -> DType {
        match self {
            DTypeArg::F32 => DType::F32,
            DTypeArg::F16 => DType::F16,
            DTypeArg::Bf16 => DType::BF16,
            DTypeArg::Q8 => DType::Q8,
            DTypeArg::Q4 => DType::Q4,
        }
    }
}

/// One line of weight sizes: "q4 weights: 1.23 MB (q4 0.50 MB, f16 0.70 MB, f32 0.03 MB)".
pub fn weight_summary(s: &blip2::model::WeightStats) -> String {
    let mb = |b: u64| b as f64 / 1e6;
    let parts: Vec<String> = s
        .bytes_by_dtype
        .iter()
        .map(|(d, b)| format!("{d} {:.2} MB", mb(*b)))
        .collect();
    format!(
        "{} weights: {:.2} MB in {} tensors ({}); linear weights and embeddings {:.2} MB",
        if s.linear_dtype.is_empty() {
            "-"
        } else {
            &s.linear_dtype
        },
        mb(s.bytes),
        s.tensors,
        parts.join(", "),
        mb(s.linear_bytes)
    )
}

pub fn pick_device(arg: DeviceArg) -> anyhow::Result<Device> {
    Ok(pick_device_explained(arg)?.0)
}

/// The device for `arg` and a sentence saying why it was picked.
pub fn pick_device_explained(arg: DeviceArg) -> anyhow::Result<(Device, String)> {
    Ok(match arg {
        DeviceArg::Cpu => (Device::cpu(), "--device cpu".to_string()),
        DeviceArg::Gpu => (Device::gpu()?, "--device gpu".to_string()),
        DeviceArg::Auto => Device::auto_with_reason()?,
    })
}

/// A byte progress bar on stderr while weights load; hidden when stderr is not a
/// terminal or with `--quiet`.
fn progress_bar(quiet: bool) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    if quiet || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(0);
    let style = indicatif::ProgressStyle::with_template(
        "loading weights {bar:40} {bytes}/{total_bytes} ({eta})",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    Some(bar)
}

/// Load options for `o`: the device (explained on stderr unless quiet) and a progress bar.
pub fn load_options(
    o: &ModelOpts,
) -> anyhow::Result<(LoadOptions, Option<indicatif::ProgressBar>)> {
    let (device, why) = pick_device_explained(o.device)?;
    if !o.quiet {
        let info = device.info();
        eprintln!("device: {} [{}] ({why})", info.name, info.backend);
    }
    let bar = progress_bar(o.quiet);
    let progress: Option<Box<dyn Fn(u64, u64) + Send + Sync>> = bar.clone().map(|b| {
        Box::new(move |done: u64, total: u64| {
            b.set_length(total);
            b.set_position(done);
        }) as Box<dyn Fn(u64, u64) + Send + Sync>
    });
    Ok((
        LoadOptions {
            device,
            dtype: o.dtype.dtype(),
            progress,
            adapters: o.adapters.specs()?,
        },
        bar,
    ))
}

/// Runs `load` with the load options of `o` (device, progress bar) and returns its model
/// with the load time, device setup included.
pub fn load_timed<T>(
    o: &ModelOpts,
    load: impl FnOnce(LoadOptions) -> anyhow::Result<T>,
) -> anyhow::Result<(T, Duration)> {
    let t = Instant::now();
    let (opts, bar) = load_options(o)?;
    let model = load(opts)?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok((model, t.elapsed()))
}

/// Loads the checkpoint of `o` (the embedded demo model without `--model`).
pub fn load_model(o: &ModelOpts) -> anyhow::Result<(Blip2, Duration)> {
    let (model, load) = load_timed(o, |opts| match &o.model {
        Some(dir) => Blip2::load(dir, opts).with_context(|| format!("loading {}", dir.display())),
        None => blip2::demo::load_demo(opts).context("loading the embedded demo model"),
    })?;
    if !o.quiet {
        for n in model.notes() {
            eprintln!("note: {n}");
        }
    }
    Ok((model, load))
}

/// One line of stage timings for a terminal reader.
pub fn timing_summary(load: Duration, t: &blip2::Timings) -> String {
    let f = |d: Duration| d.as_secs_f64() * 1e3;
    let tok_s = if t.decode.is_zero() {
        0.0
    } else {
        t.decode_tokens as f64 / t.decode.as_secs_f64()
    };
    format!(
        "load {:.0} ms | preprocess {:.1} ms | vision {:.1} ms | qformer {:.1} ms | prefill {:.1} ms | decode {:.1} tokens/s",
        f(load),
        f(t.preprocess),
        f(t.vision),
        f(t.qformer),
        f(t.prefill),
        tok_s
    )
}

impl ModelOpts {
    /// The checkpoint directory, for commands the embedded demo model cannot serve.
    pub fn model_dir(&self, what: &str) -> anyhow::Result<&std::path::Path> {
        self.model.as_deref().with_context(|| {
            format!("{what} needs --model DIR (the embedded demo model cannot do it)")
        })
    }
}

/// Milliseconds with microsecond resolution, for JSON output.
pub fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// Image arguments as files: a directory stands for the images directly inside it (sorted
/// by name), `-` for image bytes on stdin.
pub fn expand_images(args: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    const EXTS: [&str; 8] = ["png", "jpg", "jpeg", "webp", "bmp", "gif", "tif", "tiff"];
    let mut out = Vec::new();
    for a in args {
        if a.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(a)
                .with_context(|| format!("reading directory {}", a.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.is_file()
                        && p.extension()
                            .and_then(|e| e.to_str())
                            .is_some_and(|e| EXTS.contains(&e.to_ascii_lowercase().as_str()))
                })
                .collect();
            anyhow::ensure!(
                !found.is_empty(),
                "directory {} holds no images ({})",
                a.display(),
                EXTS.join(", ")
            );
            found.sort();
            out.extend(found);
        } else {
            out.push(a.clone());
        }
    }
    Ok(out)
}

/// Opens an image file, or reads image bytes from stdin for `-`.
pub fn open_image(
    path: &std::path::Path,
    o: &ModelOpts,
) -> anyhow::Result<blip2::image::DynamicImage> {
    let opts = blip2::ImageLoadOptions {
        apply_exif_orientation: o.exif_orientation,
    };
    if path.as_os_str() == "-" {
        use blip2::model::limits;
        let bytes = limits::read_stream_bounded(
            std::io::stdin(),
            limits::MAX_IMAGE_BYTES,
            "image",
            "<stdin>",
        )?;
        return Ok(blip2::load_image_from_bytes_with(&bytes, "<stdin>", &opts)?);
    }
    // The library's errors name the file already.
    Ok(blip2::load_image_with(path, &opts)?)
}

/// The error and its causes joined by ": ", leaving out a cause whose text the message
/// already ends with (the library's errors name their source in their own text, e.g. an
/// I/O error after the file name, and also expose it as `source()`).
pub fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.is_empty() {
            out = text;
        } else if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
    }
    out
}
