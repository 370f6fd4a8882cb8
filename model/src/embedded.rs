//! Checkpoints compiled into a binary (`include_bytes!`), such as the bundled demo model.
//! They load through [`crate::loading::Source::Embedded`] exactly as a directory holding
//! the same files does.

use std::path::Path;

use crate::Result;
use crate::config::Blip2Config;

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
