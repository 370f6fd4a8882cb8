//! Invariants of a parsed `config.json` that the model code divides by or indexes with,
//! checked once at parse time so that a bad value is an error naming its key.

use std::path::Path;

use super::Blip2Config;
use crate::error::{ModelError, Result};

impl Blip2Config {
    /// Checks the invariants the model code divides by or indexes with.
    pub(crate) fn validate(&self, path: &Path) -> Result<()> {
        let err = |key: &str, msg: String| Err(ModelError::config(path, key, msg));
        let v = &self.vision_config;
        for (k, x) in [
            ("vision_config.hidden_size", v.hidden_size),
            ("vision_config.num_attention_heads", v.num_attention_heads),
            ("vision_config.patch_size", v.patch_size),
            ("vision_config.image_size", v.image_size),
            (
                "qformer_config.hidden_size",
                self.qformer_config.hidden_size,
            ),
            (
                "qformer_config.num_attention_heads",
                self.qformer_config.num_attention_heads,
            ),
            (
                "qformer_config.cross_attention_frequency",
                self.qformer_config.cross_attention_frequency,
            ),
            ("num_query_tokens", self.num_query_tokens),
            ("image_text_hidden_size", self.image_text_hidden_size),
            (
                "text_config.vocab_size",
                self.text_config.as_ref().map_or(1, |t| t.vocab_size()),
            ),
        ] {
            if x == 0 {
                return err(k, "must be at least 1".into());
            }
        }
        if !v.hidden_size.is_multiple_of(v.num_attention_heads) {
            return err(
                "vision_config.num_attention_heads",
                format!(
                    "{} does not divide hidden_size {}",
                    v.num_attention_heads, v.hidden_size
                ),
            );
        }
        let q = &self.qformer_config;
        if !q.hidden_size.is_multiple_of(q.num_attention_heads) {
            return err(
                "qformer_config.num_attention_heads",
                format!(
                    "{} does not divide hidden_size {}",
                    q.num_attention_heads, q.hidden_size
                ),
            );
        }
        if !v.image_size.is_multiple_of(v.patch_size) {
            return err(
                "vision_config.patch_size",
                format!(
                    "{} does not divide image_size {}",
                    v.patch_size, v.image_size
                ),
            );
        }
        // The language model's own invariants (keys under text_config).
        if let Some(t) = &self.text_config {
            t.validate(path)?;
        }
        Ok(())
    }
}
