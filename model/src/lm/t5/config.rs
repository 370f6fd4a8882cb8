//! `T5Config` as Flan-T5 uses it, with transformers' defaults and derived values.

use std::path::Path;

use serde::Serialize;

use crate::config::json::Obj;
use crate::error::{ModelError, Result};
use crate::lm::{LanguageModel, LmConfig};
use crate::weights::WeightLoader;

/// `T5Config` (Flan-T5).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct T5Config {
    pub vocab_size: usize,
    pub d_model: usize,
    pub d_kv: usize,
    pub d_ff: usize,
    pub num_layers: usize,
    /// Defaults to `num_layers`.
    pub num_decoder_layers: usize,
    pub num_heads: usize,
    pub relative_attention_num_buckets: usize,
    pub relative_attention_max_distance: usize,
    pub layer_norm_epsilon: f64,
    pub feed_forward_proj: String,
    /// From `feed_forward_proj` ("gated-*"), unless `is_gated_act` is stored explicitly.
    pub is_gated_act: bool,
    /// From `feed_forward_proj` ("gated-gelu" -> "gelu_new"), unless `dense_act_fn` is
    /// stored explicitly (the BLIP-2 hub configs store "gelu": exact erf GELU).
    pub dense_act_fn: String,
    /// As stored (T5 default true). transformers 5 always writes true here and records the
    /// real meaning in `scale_decoder_outputs`; load `lm_head.weight` when it exists.
    pub tie_word_embeddings: bool,
    /// Multiply the decoder output by d_model^-0.5 before lm_head (original T5). The stored
    /// `scale_decoder_outputs` (v5) when present, else `tie_word_embeddings` (v4: Flan-T5
    /// configs store false), as `T5Config.__post_init__` of transformers 5.24 derives it.
    pub scale_decoder_outputs: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: u32,
    pub pad_token_id: u32,
    pub decoder_start_token_id: u32,
}

impl Default for T5Config {
    fn default() -> Self {
        T5Config {
            vocab_size: 32128,
            d_model: 512,
            d_kv: 64,
            d_ff: 2048,
            num_layers: 6,
            num_decoder_layers: 6,
            num_heads: 8,
            relative_attention_num_buckets: 32,
            relative_attention_max_distance: 128,
            layer_norm_epsilon: 1e-6,
            feed_forward_proj: "relu".into(),
            is_gated_act: false,
            dense_act_fn: "relu".into(),
            tie_word_embeddings: true,
            scale_decoder_outputs: true,
            bos_token_id: None,
            eos_token_id: 1,
            pad_token_id: 0,
            decoder_start_token_id: 0,
        }
    }
}

impl T5Config {
    /// Inner dimension of the attention projections.
    pub fn inner_dim(&self) -> usize {
        self.num_heads * self.d_kv
    }

    /// Parses `text_config` (HF `T5Config` defaults for absent keys, derived values as
    /// `T5Config.__post_init__` derives them).
    pub(crate) fn parse(o: &Obj) -> Result<T5Config> {
        let d = T5Config::default();
        let num_layers = o.usize("num_layers", d.num_layers)?;
        let feed_forward_proj = o.string("feed_forward_proj", &d.feed_forward_proj)?;
        let (gated, act) = parse_feed_forward_proj(&feed_forward_proj)
            .map_err(|m| o.err("feed_forward_proj", m))?;
        let tie_word_embeddings = o.bool("tie_word_embeddings", d.tie_word_embeddings)?;
        Ok(T5Config {
            vocab_size: o.usize("vocab_size", d.vocab_size)?,
            d_model: o.usize("d_model", d.d_model)?,
            d_kv: o.usize("d_kv", d.d_kv)?,
            d_ff: o.usize("d_ff", d.d_ff)?,
            num_layers,
            num_decoder_layers: o.opt_usize("num_decoder_layers")?.unwrap_or(num_layers),
            num_heads: o.usize("num_heads", d.num_heads)?,
            relative_attention_num_buckets: o.usize(
                "relative_attention_num_buckets",
                d.relative_attention_num_buckets,
            )?,
            relative_attention_max_distance: o.usize(
                "relative_attention_max_distance",
                d.relative_attention_max_distance,
            )?,
            layer_norm_epsilon: o.f64("layer_norm_epsilon", d.layer_norm_epsilon)?,
            feed_forward_proj,
            // Explicit keys win, as PreTrainedConfig sets leftover kwargs after __post_init__.
            is_gated_act: o.bool("is_gated_act", gated)?,
            dense_act_fn: o.string("dense_act_fn", &act)?,
            tie_word_embeddings,
            scale_decoder_outputs: o.bool("scale_decoder_outputs", tie_word_embeddings)?,
            bos_token_id: o.opt_u32("bos_token_id")?,
            eos_token_id: o.first_u32("eos_token_id")?.unwrap_or(d.eos_token_id),
            pad_token_id: o.opt_u32("pad_token_id")?.unwrap_or(d.pad_token_id),
            decoder_start_token_id: o
                .opt_u32("decoder_start_token_id")?
                .unwrap_or(d.decoder_start_token_id),
        })
    }
}

/// `(is_gated, activation)` from T5's `feed_forward_proj`, as `T5Config.__post_init__` does.
pub fn parse_feed_forward_proj(s: &str) -> std::result::Result<(bool, String), String> {
    let parts: Vec<&str> = s.split('-').collect();
    let gated = parts[0] == "gated";
    if (parts.len() > 1 && !gated) || parts.len() > 2 || parts.last().is_none_or(|p| p.is_empty()) {
        return Err(format!(
            "'{s}' is not a valid feed_forward_proj (expected 'gated-ACT' or 'ACT')"
        ));
    }
    let act = if s == "gated-gelu" {
        // transformers keeps this for backwards compatibility: gated-gelu means tanh GELU.
        "gelu_new".to_string()
    } else {
        parts[parts.len() - 1].to_string()
    };
    Ok((gated, act))
}

impl LmConfig for T5Config {
    fn model_type(&self) -> &'static str {
        "t5"
    }
    fn hidden_size(&self) -> usize {
        self.d_model
    }
    fn decoder_layers(&self) -> usize {
        self.num_decoder_layers
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
    /// `bos_token_id` (1 = `</s>` in the Flan-T5 BLIP-2 configs); a config without one
    /// falls back to eos (HF would fail there).
    fn bos_token_id(&self) -> u32 {
        self.bos_token_id.unwrap_or(self.eos_token_id)
    }
    fn is_encoder_decoder(&self) -> bool {
        true
    }

    fn validate(&self, path: &Path) -> Result<()> {
        let err = |key: &str, msg: String| {
            Err(ModelError::config(path, format!("text_config.{key}"), msg))
        };
        if self.num_heads == 0 || self.d_kv == 0 {
            return err("num_heads", "num_heads and d_kv must be at least 1".into());
        }
        if self.relative_attention_num_buckets < 2 {
            return err(
                "relative_attention_num_buckets",
                "must be at least 2".into(),
            );
        }
        // The log-spaced buckets run from num_buckets/2 (causal) up to max_distance.
        if self.relative_attention_max_distance <= self.relative_attention_num_buckets / 2 {
            return err(
                "relative_attention_max_distance",
                format!(
                    "{} must exceed relative_attention_num_buckets / 2 = {}",
                    self.relative_attention_max_distance,
                    self.relative_attention_num_buckets / 2
                ),
            );
        }
        Ok(())
    }

    fn summary(&self) -> String {
        format!(
            "t5: d_model {}, {}+{} layers, {} heads, vocab {}",
            self.d_model, self.num_layers, self.num_decoder_layers, self.num_heads, self.vocab_size
        )
    }

    fn load(&self, vb: &WeightLoader) -> Result<Box<dyn LanguageModel>> {
        Ok(Box::new(super::T5::load(vb, self)?))
    }
}
