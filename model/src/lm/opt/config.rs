//! `OPTConfig`: the keys BLIP-2's OPT language models use, with transformers' defaults.

use std::path::Path;

use serde::Serialize;

use crate::config::json::Obj;
use crate::error::{ModelError, Result};
use crate::lm::{LanguageModel, LmConfig};
use crate::weights::WeightLoader;

/// `OPTConfig`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OptConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub ffn_dim: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    pub do_layer_norm_before: bool,
    /// `word_embed_proj_dim` (defaults to `hidden_size`; when different, project_in/out exist).
    pub word_embed_proj_dim: usize,
    pub activation_function: String,
    pub enable_bias: bool,
    pub layer_norm_elementwise_affine: bool,
    /// OPT-350m's `_remove_final_layer_norm`.
    pub remove_final_layer_norm: bool,
    pub layer_norm_eps: f64,
    pub bos_token_id: u32,
    pub eos_token_id: u32,
    pub pad_token_id: u32,
    pub tie_word_embeddings: bool,
}

impl Default for OptConfig {
    fn default() -> Self {
        OptConfig {
            vocab_size: 50272,
            hidden_size: 768,
            num_hidden_layers: 12,
            ffn_dim: 3072,
            num_attention_heads: 12,
            max_position_embeddings: 2048,
            do_layer_norm_before: true,
            word_embed_proj_dim: 768,
            activation_function: "relu".into(),
            enable_bias: true,
            layer_norm_elementwise_affine: true,
            remove_final_layer_norm: false,
            layer_norm_eps: 1e-5,
            bos_token_id: 2,
            eos_token_id: 2,
            pad_token_id: 1,
            tie_word_embeddings: true,
        }
    }
}

impl OptConfig {
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Parses `text_config` (HF `OPTConfig` defaults for absent keys).
    pub(crate) fn parse(o: &Obj) -> Result<OptConfig> {
        let d = OptConfig::default();
        let hidden_size = o.usize("hidden_size", d.hidden_size)?;
        Ok(OptConfig {
            vocab_size: o.usize("vocab_size", d.vocab_size)?,
            hidden_size,
            num_hidden_layers: o.usize("num_hidden_layers", d.num_hidden_layers)?,
            ffn_dim: o.usize("ffn_dim", d.ffn_dim)?,
            num_attention_heads: o.usize("num_attention_heads", d.num_attention_heads)?,
            max_position_embeddings: o
                .usize("max_position_embeddings", d.max_position_embeddings)?,
            do_layer_norm_before: o.bool("do_layer_norm_before", d.do_layer_norm_before)?,
            // OPTConfig: word_embed_proj_dim = hidden_size when None/absent.
            word_embed_proj_dim: o.opt_usize("word_embed_proj_dim")?.unwrap_or(hidden_size),
            activation_function: o.string("activation_function", &d.activation_function)?,
            enable_bias: o.bool("enable_bias", d.enable_bias)?,
            layer_norm_elementwise_affine: o.bool(
                "layer_norm_elementwise_affine",
                d.layer_norm_elementwise_affine,
            )?,
            remove_final_layer_norm: o
                .bool("_remove_final_layer_norm", d.remove_final_layer_norm)?,
            layer_norm_eps: d.layer_norm_eps,
            bos_token_id: o.opt_u32("bos_token_id")?.unwrap_or(d.bos_token_id),
            eos_token_id: o.first_u32("eos_token_id")?.unwrap_or(d.eos_token_id),
            pad_token_id: o.opt_u32("pad_token_id")?.unwrap_or(d.pad_token_id),
            tie_word_embeddings: o.bool("tie_word_embeddings", d.tie_word_embeddings)?,
        })
    }
}

impl LmConfig for OptConfig {
    fn model_type(&self) -> &'static str {
        "opt"
    }
    fn hidden_size(&self) -> usize {
        self.hidden_size
    }
    fn decoder_layers(&self) -> usize {
        self.num_hidden_layers
    }
    fn vocab_size(&self) -> usize {
        self.vocab_size
    }
    fn eos_token_id(&self) -> u32 {
        self.eos_token_id
    }
    fn pad_token_id(&self) -> u32 {
        self.pad_token_id
    }
    fn bos_token_id(&self) -> u32 {
        self.bos_token_id
    }
    fn max_positions(&self) -> Option<usize> {
        Some(self.max_position_embeddings)
    }
    fn is_encoder_decoder(&self) -> bool {
        false
    }

    fn validate(&self, path: &Path) -> Result<()> {
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return Err(ModelError::config(
                path,
                "text_config.num_attention_heads",
                format!(
                    "{} does not divide hidden_size {}",
                    self.num_attention_heads, self.hidden_size
                ),
            ));
        }
        Ok(())
    }

    fn summary(&self) -> String {
        format!(
            "opt: hidden {}, {} layers, {} heads, vocab {}",
            self.hidden_size, self.num_hidden_layers, self.num_attention_heads, self.vocab_size
        )
    }

    fn load(&self, vb: &WeightLoader) -> Result<Box<dyn LanguageModel>> {
        Ok(Box::new(super::Opt::load(vb, self)?))
    }
}
