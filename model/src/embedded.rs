//! Checkpoints compiled into a binary (`include_bytes!`), such as the bundled demo model.

use std::path::Path;
use std::time::Instant;

use crate::blip2::{Blip2, LoadOptions};
use crate::config::{Blip2Config, ImageProcessorConfig, ProcessorConfig};
use crate::tokenizer::Blip2Tokenizer;
use crate::weights::{Checkpoint, WeightLoader};
use crate::{ModelError, Result};

/// The files of a Hugging Face checkpoint directory, as static data.
pub struct EmbeddedCheckpoint {
    /// Shown in messages in place of a directory.
    pub name: &'static str,
    pub config_json: &'static str,
    pub processor_config_json: &'static str,
    pub tokenizer_json: &'static [u8],
    pub tokenizer_config_json: Option<&'static str>,
    /// A single `model.safetensors`.
    pub weights: &'static [u8],
}

impl EmbeddedCheckpoint {
    pub fn config(&self) -> Result<Blip2Config> {
        Blip2Config::from_json_str(self.config_json, Path::new(self.name).join("config.json"))
    }
}

impl Blip2 {
    /// Loads a checkpoint compiled into the binary, exactly as [`Blip2::load`] loads a
    /// directory holding the same files.
    pub fn load_embedded(files: &EmbeddedCheckpoint, opts: LoadOptions) -> Result<Blip2> {
        let t0 = Instant::now();
        let dir = Path::new(files.name);
        let config = files.config()?;
        let proc_path = dir.join("processor_config.json");
        let image_config =
            ProcessorConfig::from_processor_json(files.processor_config_json, &proc_path)?
                .0
                .unwrap_or_else(ImageProcessorConfig::default);
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
        let ckpt = Checkpoint::from_static(
            &dir.join("model.safetensors").to_string_lossy(),
            files.weights,
        )?;
        let mut vb = WeightLoader::new(&ckpt, &opts.device, opts.dtype);
        if let Some(p) = opts.progress {
            vb = vb.with_progress(p);
        }
        let mut model = Blip2::from_loader(config, image_config, tokenizer, &vb)?;
        model.load_time = t0.elapsed();
        Ok(model)
    }
}
