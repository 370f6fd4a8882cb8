//! One loading path for every model: a [`Source`] (a checkpoint directory, files compiled
//! into the binary, or seeded random weights) is opened into its [`CheckpointFiles`]
//! (config, processor config, tokenizer, weights), and [`load`] hands them with a
//! [`WeightLoader`] (device, dtype, progress) to the model's builder, then reports every
//! missing or mismatched tensor at once.

use std::path::Path;
use std::time::{Duration, Instant};

use blip2_engine::{DType, Device};

use crate::adapters::{AdapterSpec, Adapters};
use crate::config::{Blip2Config, ImageProcessorConfig, ProcessorConfig};
use crate::embedded::EmbeddedCheckpoint;
use crate::error::{ModelError, Result};
use crate::tokenizer::Blip2Tokenizer;
use crate::weights::{Checkpoint, WeightLoader, WeightStats};

/// How to load a checkpoint.
pub struct LoadOptions {
    pub device: Device,
    /// Storage dtype of weight matrices (activations stay f32).
    pub dtype: DType,
    /// Called with (bytes loaded, bytes total) while weights are read.
    pub progress: Option<Box<dyn Fn(u64, u64) + Send + Sync>>,
    /// PEFT LoRA adapters merged into the float weights in this order, before `dtype`
    /// converts or quantizes them (see [`crate::adapters`]). A `blip2 quantize` checkpoint
    /// takes none.
    pub adapters: Vec<AdapterSpec>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            device: Device::Cpu,
            dtype: DType::F32,
            progress: None,
            adapters: Vec::new(),
        }
    }
}

/// Where a checkpoint's files come from.
// Built once per load and consumed by it: the config's size in `Random` costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum Source<'a> {
    /// A Hugging Face checkpoint directory (config.json, safetensors, tokenizer.json,
    /// processor config).
    Dir(&'a Path),
    /// The same files compiled into the binary (the bundled demo model).
    Embedded(&'a EmbeddedCheckpoint),
    /// Seeded random weights at `config`'s sizes with a word-level tokenizer over the whole
    /// vocabulary, for benchmarks at real sizes (see [`Checkpoint::random`]).
    Random { config: Blip2Config, seed: u64 },
}

/// A checkpoint's files, opened and parsed: what a model keeps, and its weights
/// (memory-mapped, not yet read).
pub struct CheckpointFiles {
    pub files: ModelFiles,
    pub checkpoint: Checkpoint,
}

/// The parsed files a model keeps (what [`load`] passes to a builder beside the weights).
pub struct ModelFiles {
    pub config: Blip2Config,
    pub image_config: ImageProcessorConfig,
    pub tokenizer: Blip2Tokenizer,
    /// InstructBLIP: the Q-Former's BERT tokenizer (`qformer_tokenizer/`); None otherwise.
    pub qformer_tokenizer: Option<Blip2Tokenizer>,
}

impl Source<'_> {
    /// Reads and validates the source's files.
    pub fn open(self) -> Result<CheckpointFiles> {
        match self {
            Source::Dir(dir) => {
                let config = Blip2Config::from_dir(dir)?;
                let processor = ProcessorConfig::from_dir(dir)?;
                check_image_size(&config, &processor)?;
                // InstructBlipProcessor.save_pretrained puts the Q-Former's tokenizer in a
                // subfolder beside the language model's.
                let qformer_tokenizer = if config.is_instructblip() {
                    Some(Blip2Tokenizer::from_dir(dir.join("qformer_tokenizer"))?)
                } else {
                    None
                };
                let files = ModelFiles {
                    config,
                    image_config: processor.image,
                    tokenizer: Blip2Tokenizer::from_dir(dir)?,
                    qformer_tokenizer,
                };
                let checkpoint = Checkpoint::open(dir)?;
                check_quantization_config(dir, &checkpoint)?;
                Ok(CheckpointFiles { files, checkpoint })
            }
            Source::Embedded(files) => open_embedded(files),
            Source::Random { config, seed } => {
                let size = config.vision_config.image_size;
                Ok(CheckpointFiles {
                    files: ModelFiles {
                        image_config: ImageProcessorConfig {
                            size: (size, size),
                            ..Default::default()
                        },
                        tokenizer: crate::random::synthetic_tokenizer(&config)?,
                        qformer_tokenizer: if config.is_instructblip() {
                            Some(crate::random::synthetic_qformer_tokenizer(
                                config.qformer_config.vocab_size,
                            )?)
                        } else {
                            None
                        },
                        config,
                    },
                    checkpoint: Checkpoint::random(seed),
                })
            }
        }
    }
}

/// The processor must resize to the vision tower's `image_size`: its position embeddings
/// fix the number of patches (transformers fails on any other size unless asked to
/// interpolate), and a size of 100000x100000 would otherwise be allocated by the resize.
fn check_image_size(config: &Blip2Config, processor: &ProcessorConfig) -> Result<()> {
    let n = config.vision_config.image_size;
    let (h, w) = processor.image.size;
    if (h, w) == (n, n) || processor.source.is_none() || !processor.image.do_resize {
        return Ok(());
    }
    Err(ModelError::config(
        processor.source.clone().unwrap_or_default(),
        "size",
        format!(
            "resizes to {h}x{w}, but the vision encoder takes {n}x{n} (vision_config.image_size in config.json)"
        ),
    ))
}

/// `config.json`'s `quantization_config` (written by `blip2 quantize`) must agree with what
/// the safetensors files declare; a config naming another quantizer (GPTQ, bitsandbytes...)
/// is refused by name rather than failing later on tensor dtypes. A quantized checkpoint
/// without the object is fine: the files' metadata decides.
fn check_quantization_config(dir: &Path, ckpt: &Checkpoint) -> Result<()> {
    let path = dir.join("config.json");
    let Ok(text) = crate::limits::read_text_bounded(&path, crate::limits::MAX_JSON_BYTES, "config")
    else {
        return Ok(()); // Blip2Config::from_dir already read it; nothing new to report.
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
        return Ok(());
    };
    let Some(q) = v.get("quantization_config") else {
        return Ok(());
    };
    let key = |k: &str| format!("quantization_config.{k}");
    let method = q.get("quant_method").and_then(|m| m.as_str()).unwrap_or("");
    if method != crate::save::QUANT_METHOD {
        return Err(ModelError::Unsupported(format!(
            "{}: quantization_config.quant_method '{method}' (only '{}' checkpoints written by `blip2 quantize` are read)",
            path.display(),
            crate::save::QUANT_METHOD
        )));
    }
    let dtype = q.get("dtype").and_then(|d| d.as_str()).unwrap_or("");
    let declared = ckpt.quant_dtype();
    if declared.map(|d| d.to_string()).as_deref() != Some(dtype) {
        return Err(ModelError::config(
            &path,
            key("dtype"),
            format!(
                "says '{dtype}' but the safetensors files declare {}",
                declared.map_or("no quantization".into(), |d| d.to_string())
            ),
        ));
    }
    let block = q.get("block_size").and_then(|b| b.as_u64());
    if block != Some(crate::save::BLOCK_SIZE) {
        return Err(ModelError::config(
            &path,
            key("block_size"),
            format!("is {block:?}, only 32 is supported"),
        ));
    }
    Ok(())
}

/// An embedded checkpoint, read exactly as a directory holding the same files.
fn open_embedded(files: &EmbeddedCheckpoint) -> Result<CheckpointFiles> {
    let dir = Path::new(files.name);
    let proc_path = dir.join("processor_config.json");
    let image_config =
        ProcessorConfig::from_processor_json(files.processor_config_json, &proc_path)?
            .0
            .unwrap_or_default();
    let tok_cfg = match files.tokenizer_config_json {
        Some(t) => Some(serde_json::from_str::<serde_json::Value>(t).map_err(|e| {
            ModelError::tokenizer(dir.join("tokenizer_config.json"), e.to_string())
        })?),
        None => None,
    };
    let tokenizer = Blip2Tokenizer::from_parts(
        files.tokenizer_json,
        dir.join("tokenizer.json"),
        tok_cfg.as_ref().and_then(|v| v.as_object()),
        None,
    )?;
    Ok(CheckpointFiles {
        files: ModelFiles {
            config: files.config()?,
            image_config,
            tokenizer,
            qformer_tokenizer: None,
        },
        checkpoint: Checkpoint::from_static(
            &dir.join("model.safetensors").to_string_lossy(),
            files.weights,
        )?,
    })
}

/// Opens `source` and builds a model with `build` from its files and a [`WeightLoader`] set
/// up from `opts`; fails with one error listing every missing, mismatched or unreadable
/// tensor. Returns the model, the time the whole load took and what the weights occupy.
pub fn load<T>(
    source: Source,
    opts: LoadOptions,
    build: impl FnOnce(ModelFiles, &WeightLoader) -> Result<T>,
) -> Result<(T, Duration, WeightStats)> {
    let t0 = Instant::now();
    if opts.dtype == DType::BF16 && !matches!(opts.device, Device::Cpu) {
        return Err(ModelError::Unsupported(format!(
            "--dtype bf16 packs weights for the CPU's matrix engine; the GPU ({}) takes f32, f16, q8 or q4",
            opts.device.info().name
        )));
    }
    let CheckpointFiles { files, checkpoint } = source.open()?;
    let mut vb = WeightLoader::new(&checkpoint, &opts.device, opts.dtype);
    if !opts.adapters.is_empty() {
        if let Some(q) = checkpoint.quant_dtype() {
            return Err(ModelError::Unsupported(format!(
                "{} is a {q} checkpoint written by `blip2 quantize`: a LoRA adapter merges into float weights, and its quantized weights cannot take one without loss; load the float checkpoint with the adapter (and --dtype {q} to quantize the merged weights)",
                checkpoint.path().display()
            )));
        }
        let adapters = Adapters::open(&opts.adapters, &checkpoint)?;
        vb = vb.with_adapters(std::sync::Arc::new(adapters));
    }
    if let Some(p) = opts.progress {
        vb = vb.with_progress(p);
    }
    let model = build(files, &vb)?;
    vb.finish()?;
    Ok((model, t0.elapsed(), vb.stats()))
}
