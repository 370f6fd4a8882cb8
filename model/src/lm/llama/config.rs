//! `LlamaConfig`: the keys of LLaMA-family decoders (Vicuna in InstructBLIP), with
//! transformers' defaults, and the rotary-embedding settings (`rope_parameters` in v5
//! configs, `rope_scaling` + `rope_theta` in v4 ones).

use std::path::Path;

use serde::Serialize;

use crate::config::json::Obj;
use crate::error::{ModelError, Result};
use crate::lm::{LanguageModel, LmConfig};
use crate::weights::WeightLoader;

/// How the rotary inverse frequencies are derived (`rope_type`).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "rope_type", rename_all = "lowercase")]
pub enum RopeScaling {
    /// θ^(−2i/d).
    Default,
    /// Every frequency divided by `factor` (position interpolation).
    Linear { factor: f64 },
    /// Llama 3.1: low frequencies divided by `factor`, high ones kept, smooth in between.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
}

/// `LlamaConfig`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// Grouped-query attention when smaller than `num_attention_heads`.
    pub num_key_value_heads: usize,
    /// `head_dim` (defaults to hidden_size / heads).
    pub head_dim: usize,
    pub hidden_act: String,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    pub attention_bias: bool,
    pub mlp_bias: bool,
    pub tie_word_embeddings: bool,
    pub bos_token_id: u32,
    pub eos_token_id: u32,
    /// None in LlamaConfig; `generate` then pads with eos.
    pub pad_token_id: Option<u32>,
}

impl Default for LlamaConfig {
    fn default() -> Self {
        LlamaConfig {
            vocab_size: 32000,
            hidden_size: 4096,
            intermediate_size: 11008,
            num_hidden_layers: 32,
            num_attention_heads: 32,
            num_key_value_heads: 32,
            head_dim: 128,
            hidden_act: "silu".into(),
            max_position_embeddings: 2048,
            rms_norm_eps: 1e-6,
            rope_theta: 10000.0,
            rope_scaling: RopeScaling::Default,
            attention_bias: false,
            mlp_bias: false,
            tie_word_embeddings: false,
            bos_token_id: 1,
            eos_token_id: 2,
            pad_token_id: None,
        }
    }
}

impl LlamaConfig {
    /// Reads a standalone `LlamaForCausalLM` config.json (the decoder alone, for tests and
    /// tools), validated.
    pub fn from_file(path: impl AsRef<Path>) -> Result<LlamaConfig> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        let root = crate::config::json::parse_json(&text, path)?;
        let cfg = LlamaConfig::parse(&Obj::root(path, &root)?)?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Parses `text_config` (HF `LlamaConfig` defaults for absent keys).
    pub(crate) fn parse(o: &Obj) -> Result<LlamaConfig> {
        let d = LlamaConfig::default();
        let hidden_size = o.usize("hidden_size", d.hidden_size)?;
        let heads = o.usize("num_attention_heads", d.num_attention_heads)?;
        if heads == 0 {
            return Err(o.err("num_attention_heads", "must be at least 1".into()));
        }
        // v5 writes `rope_parameters` (with rope_theta inside); v4 `rope_scaling` beside a
        // top-level `rope_theta`. Either may be absent.
        let rope = match o.obj("rope_parameters")? {
            Some(r) => Some(r),
            None => o.obj("rope_scaling")?,
        };
        let top_theta = o.f64("rope_theta", d.rope_theta)?;
        let (rope_theta, rope_scaling) = match rope {
            None => (top_theta, RopeScaling::Default),
            Some(r) => {
                let kind = match r.opt_string("rope_type")? {
                    Some(k) => k,
                    None => r.string("type", "default")?,
                };
                let factor = || -> Result<f64> {
                    r.get("factor").ok_or_else(|| {
                        r.err("factor", format!("rope_type {kind} needs a factor"))
                    })?;
                    r.f64("factor", 1.0)
                };
                let scaling = match kind.as_str() {
                    "default" => RopeScaling::Default,
                    "linear" => RopeScaling::Linear { factor: factor()? },
                    "llama3" => RopeScaling::Llama3 {
                        factor: factor()?,
                        low_freq_factor: r.f64("low_freq_factor", 1.0)?,
                        high_freq_factor: r.f64("high_freq_factor", 4.0)?,
                        original_max_position_embeddings: r
                            .f64("original_max_position_embeddings", 8192.0)?,
                    },
                    other => {
                        return Err(r.err(
                            "rope_type",
                            format!(
                                "rotary scaling '{other}' is not supported (default, linear, llama3)"
                            ),
                        ));
                    }
                };
                (r.f64("rope_theta", top_theta)?, scaling)
            }
        };
        Ok(LlamaConfig {
            vocab_size: o.usize("vocab_size", d.vocab_size)?,
            hidden_size,
            intermediate_size: o.usize("intermediate_size", d.intermediate_size)?,
            num_hidden_layers: o.usize("num_hidden_layers", d.num_hidden_layers)?,
            num_attention_heads: heads,
            num_key_value_heads: o.opt_usize("num_key_value_heads")?.unwrap_or(heads),
            head_dim: o.opt_usize("head_dim")?.unwrap_or(hidden_size / heads),
            hidden_act: o.string("hidden_act", &d.hidden_act)?,
            max_position_embeddings: o
                .usize("max_position_embeddings", d.max_position_embeddings)?,
            rms_norm_eps: o.f64("rms_norm_eps", d.rms_norm_eps)?,
            rope_theta,
            rope_scaling,
            attention_bias: o.bool("attention_bias", d.attention_bias)?,
            mlp_bias: o.bool("mlp_bias", d.mlp_bias)?,
            tie_word_embeddings: o.bool("tie_word_embeddings", d.tie_word_embeddings)?,
            bos_token_id: o.opt_u32("bos_token_id")?.unwrap_or(d.bos_token_id),
            eos_token_id: o.first_u32("eos_token_id")?.unwrap_or(d.eos_token_id),
            pad_token_id: o.opt_u32("pad_token_id")?,
        })
    }

    /// The rotary inverse frequencies `[head_dim / 2]` as HF computes them in f32:
    /// 1 / θ^(2i/d), then the configured scaling.
    pub fn inv_freq(&self) -> Vec<f32> {
        let d = self.head_dim;
        (0..d / 2)
            .map(|i| {
                // torch: arange(0, d, 2).float() / d in f32, then base ** that in f32.
                let e = (2 * i) as f32 / d as f32;
                let f = 1.0f32 / (self.rope_theta.powf(e as f64) as f32);
                match self.rope_scaling {
                    RopeScaling::Default => f,
                    RopeScaling::Linear { factor } => f / factor as f32,
                    RopeScaling::Llama3 {
                        factor,
                        low_freq_factor,
                        high_freq_factor,
                        original_max_position_embeddings: old,
                    } => {
                        // In f32 like torch (the python scalars promote to the tensor's f32).
                        let wavelen = 2.0 * std::f32::consts::PI / f;
                        let low_wl = (old / low_freq_factor) as f32;
                        let high_wl = (old / high_freq_factor) as f32;
                        let scaled = if wavelen > low_wl {
                            f / factor as f32
                        } else {
                            f
                        };
                        if wavelen < high_wl || wavelen > low_wl {
                            scaled
                        } else {
                            let s = (old as f32 / wavelen - low_freq_factor as f32)
                                / (high_freq_factor - low_freq_factor) as f32;
                            (1.0 - s) * scaled / factor as f32 + s * scaled
                        }
                    }
                }
            })
            .collect()
    }
}

impl LmConfig for LlamaConfig {
    fn model_type(&self) -> &'static str {
        "llama"
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
        // generate(): "Setting pad_token_id to eos_token_id" when the config has none.
        self.pad_token_id.unwrap_or(self.eos_token_id)
    }
    fn bos_token_id(&self) -> u32 {
        self.bos_token_id
    }
    fn is_encoder_decoder(&self) -> bool {
        false
    }

    fn validate(&self, path: &Path) -> Result<()> {
        let bad = |key: &str, msg: String| {
            Err(ModelError::config(path, format!("text_config.{key}"), msg))
        };
        if self.num_key_value_heads == 0
            || !self
                .num_attention_heads
                .is_multiple_of(self.num_key_value_heads)
        {
            return bad(
                "num_key_value_heads",
                format!(
                    "{} does not divide num_attention_heads {}",
                    self.num_key_value_heads, self.num_attention_heads
                ),
            );
        }
        // rotate_half splits each head in two halves of equal size.
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) {
            return bad(
                "head_dim",
                format!(
                    "{} must be even and non-zero (rotary embeddings)",
                    self.head_dim
                ),
            );
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 1.0) {
            return bad(
                "rope_theta",
                format!("{} must be a number above 1", self.rope_theta),
            );
        }
        let factor = match self.rope_scaling {
            RopeScaling::Default => 1.0,
            RopeScaling::Linear { factor } | RopeScaling::Llama3 { factor, .. } => factor,
        };
        if !(factor.is_finite() && factor > 0.0) {
            return bad(
                "rope_parameters.factor",
                format!("{factor} must be positive"),
            );
        }
        if let RopeScaling::Llama3 {
            low_freq_factor,
            high_freq_factor,
            ..
        } = self.rope_scaling
            && !(high_freq_factor > low_freq_factor && low_freq_factor > 0.0)
        {
            return bad(
                "rope_parameters.high_freq_factor",
                format!("{high_freq_factor} must exceed low_freq_factor {low_freq_factor} > 0"),
            );
        }
        Ok(())
    }

    fn summary(&self) -> String {
        let kv = if self.num_key_value_heads != self.num_attention_heads {
            format!(" ({} kv)", self.num_key_value_heads)
        } else {
            String::new()
        };
        format!(
            "llama: hidden {}, {} layers, {} heads{kv}, vocab {}",
            self.hidden_size, self.num_hidden_layers, self.num_attention_heads, self.vocab_size
        )
    }

    fn load(&self, vb: &WeightLoader) -> Result<Box<dyn LanguageModel>> {
        Ok(Box::new(super::Llama::load(vb, self)?))
    }
}
