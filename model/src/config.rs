//! Hugging Face `config.json` (Blip2ForConditionalGeneration / Blip2ForImageTextRetrieval)
//! and image-processor settings, with transformers' defaults for every absent key.
//!
//! transformers (v5) saves configs as a diff against the class defaults, so a key that is
//! absent means "the default": the defaults here are the ones of `Blip2VisionConfig`,
//! `Blip2QFormerConfig`, `OPTConfig` and `T5Config`.
//!
//! Parsing is done on a `serde_json::Value` with a small typed reader rather than serde
//! derive so that every error names the file and the dotted key at fault
//! (`config.json: key 'text_config.d_model': expected an unsigned integer, found "abc"`).

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::{Map, Value};

use crate::error::{ModelError, Result};

/// `Blip2VisionConfig` (EVA ViT-g/14).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct VisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub image_size: usize,
    pub patch_size: usize,
    /// Input channels of the patch embedding (HF hard-codes 3).
    pub num_channels: usize,
    pub hidden_act: String,
    /// 1e-6 by default; hub configs do not store it (v4.31 used 1e-5).
    pub layer_norm_eps: f64,
    pub qkv_bias: bool,
}

impl Default for VisionConfig {
    fn default() -> Self {
        VisionConfig {
            hidden_size: 1408,
            intermediate_size: 6144,
            num_hidden_layers: 39,
            num_attention_heads: 16,
            image_size: 224,
            patch_size: 14,
            num_channels: 3,
            hidden_act: "gelu".into(),
            layer_norm_eps: 1e-6,
            qkv_bias: true,
        }
    }
}

impl VisionConfig {
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
    /// Patches per side of the image grid.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }
    /// Sequence length of the vision encoder: patches + class token.
    pub fn num_positions(&self) -> usize {
        self.grid() * self.grid() + 1
    }
}

/// `Blip2QFormerConfig` (post-LN BERT with cross-attention).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct QFormerConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub hidden_act: String,
    pub max_position_embeddings: usize,
    pub layer_norm_eps: f64,
    pub pad_token_id: u32,
    pub position_embedding_type: String,
    pub cross_attention_frequency: usize,
    /// Overwritten with the vision hidden size, as `Blip2Config.__init__` does.
    pub encoder_hidden_size: usize,
    /// True for the retrieval checkpoints (text FFN `intermediate`/`output` present).
    pub use_qformer_text_input: bool,
}

impl Default for QFormerConfig {
    fn default() -> Self {
        QFormerConfig {
            vocab_size: 30522,
            hidden_size: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            intermediate_size: 3072,
            hidden_act: "gelu".into(),
            max_position_embeddings: 512,
            layer_norm_eps: 1e-12,
            pad_token_id: 0,
            position_embedding_type: "absolute".into(),
            cross_attention_frequency: 2,
            encoder_hidden_size: 1408,
            use_qformer_text_input: false,
        }
    }
}

impl QFormerConfig {
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

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
}

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

/// The language model half, chosen by `text_config.model_type`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "model_type", rename_all = "lowercase")]
pub enum TextConfig {
    Opt(OptConfig),
    T5(T5Config),
}

impl TextConfig {
    /// Width of the language model's embeddings (the output of `language_projection`).
    pub fn hidden_size(&self) -> usize {
        match self {
            TextConfig::Opt(c) => c.hidden_size,
            TextConfig::T5(c) => c.d_model,
        }
    }
    pub fn vocab_size(&self) -> usize {
        match self {
            TextConfig::Opt(c) => c.vocab_size,
            TextConfig::T5(c) => c.vocab_size,
        }
    }
    pub fn eos_token_id(&self) -> u32 {
        match self {
            TextConfig::Opt(c) => c.eos_token_id,
            TextConfig::T5(c) => c.eos_token_id,
        }
    }
    pub fn pad_token_id(&self) -> u32 {
        match self {
            TextConfig::Opt(c) => c.pad_token_id,
            TextConfig::T5(c) => c.pad_token_id,
        }
    }
    /// The token `generate()` puts after the image tokens when no text is given:
    /// `text_config.bos_token_id` (2 for OPT, 1 = `</s>` in the Flan-T5 BLIP-2 configs).
    /// A T5 config without bos falls back to eos (HF would fail there).
    pub fn bos_token_id(&self) -> u32 {
        match self {
            TextConfig::Opt(c) => c.bos_token_id,
            TextConfig::T5(c) => c.bos_token_id.unwrap_or(c.eos_token_id),
        }
    }
    pub fn is_encoder_decoder(&self) -> bool {
        matches!(self, TextConfig::T5(_))
    }
    pub fn model_type(&self) -> &'static str {
        match self {
            TextConfig::Opt(_) => "opt",
            TextConfig::T5(_) => "t5",
        }
    }
}

/// `Blip2Config`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Blip2Config {
    pub vision_config: VisionConfig,
    pub qformer_config: QFormerConfig,
    /// None only when config.json has no `text_config` (HF would then build a default OPT;
    /// retrieval checkpoints do not use it).
    pub text_config: Option<TextConfig>,
    pub num_query_tokens: usize,
    /// `image_token_index` (alias `image_token_id`); None in pre-4.47 configs.
    pub image_token_index: Option<u32>,
    pub image_text_hidden_size: usize,
    /// True for OPT (causal LM), false for T5 and when there is no text config.
    pub use_decoder_only_language_model: bool,
    pub architectures: Vec<String>,
    /// `dtype` (v5) or `torch_dtype` (v4) as stored: "float32", "float16", "bfloat16".
    pub torch_dtype: Option<String>,
}

impl Default for Blip2Config {
    fn default() -> Self {
        Blip2Config {
            vision_config: VisionConfig::default(),
            qformer_config: QFormerConfig::default(),
            text_config: Some(TextConfig::Opt(OptConfig::default())),
            num_query_tokens: 32,
            image_token_index: None,
            image_text_hidden_size: 256,
            use_decoder_only_language_model: true,
            architectures: Vec::new(),
            torch_dtype: None,
        }
    }
}

impl Blip2Config {
    /// Reads `dir/config.json`.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Blip2Config> {
        Self::from_file(dir.as_ref().join("config.json"))
    }

    pub fn from_file(path: impl AsRef<Path>) -> Result<Blip2Config> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        Self::from_json_str(&text, path)
    }

    /// Parses config.json text; `path` is only used in error messages.
    pub fn from_json_str(text: &str, path: impl AsRef<Path>) -> Result<Blip2Config> {
        let path = path.as_ref();
        let root = parse_json(text, path)?;
        let r = Obj::root(path, &root)?;
        let d = Blip2Config::default();

        let vision_config = match r.obj("vision_config")? {
            Some(v) => parse_vision(&v)?,
            None => VisionConfig::default(),
        };
        let mut qformer_config = match r.obj("qformer_config")? {
            Some(q) => parse_qformer(&q)?,
            None => QFormerConfig::default(),
        };
        // Blip2Config.__init__ overwrites it with the vision width.
        qformer_config.encoder_hidden_size = vision_config.hidden_size;

        let text_config = match r.obj("text_config")? {
            Some(t) => Some(parse_text(&t)?),
            None => None,
        };
        let use_decoder_only_language_model = matches!(text_config, Some(TextConfig::Opt(_)));

        let image_token_index = match r.opt_u32("image_token_index")? {
            Some(v) => Some(v),
            None => r.opt_u32("image_token_id")?,
        };
        let torch_dtype = match r.opt_string("dtype")? {
            Some(s) => Some(s),
            None => r.opt_string("torch_dtype")?,
        };
        let cfg = Blip2Config {
            vision_config,
            qformer_config,
            text_config,
            num_query_tokens: r.usize("num_query_tokens", d.num_query_tokens)?,
            image_token_index,
            image_text_hidden_size: r.usize("image_text_hidden_size", d.image_text_hidden_size)?,
            use_decoder_only_language_model,
            architectures: r.string_list("architectures")?,
            torch_dtype,
        };
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Checks the invariants the model code divides by or indexes with.
    fn validate(&self, path: &Path) -> Result<()> {
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
                self.text_config.as_ref().map_or(1, TextConfig::vocab_size),
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
        match &self.text_config {
            Some(TextConfig::Opt(o))
                if o.num_attention_heads == 0
                    || !o.hidden_size.is_multiple_of(o.num_attention_heads) =>
            {
                return err(
                    "text_config.num_attention_heads",
                    format!(
                        "{} does not divide hidden_size {}",
                        o.num_attention_heads, o.hidden_size
                    ),
                );
            }
            Some(TextConfig::T5(t)) => {
                if t.num_heads == 0 || t.d_kv == 0 {
                    return err(
                        "text_config.num_heads",
                        "num_heads and d_kv must be at least 1".into(),
                    );
                }
                if t.relative_attention_num_buckets < 2 {
                    return err(
                        "text_config.relative_attention_num_buckets",
                        "must be at least 2".into(),
                    );
                }
                // The log-spaced buckets run from num_buckets/2 (causal) up to max_distance.
                if t.relative_attention_max_distance <= t.relative_attention_num_buckets / 2 {
                    return err(
                        "text_config.relative_attention_max_distance",
                        format!(
                            "{} must exceed relative_attention_num_buckets / 2 = {}",
                            t.relative_attention_max_distance,
                            t.relative_attention_num_buckets / 2
                        ),
                    );
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// True when `architectures` names the retrieval model (ITM/ITC heads).
    pub fn is_retrieval(&self) -> bool {
        self.architectures
            .iter()
            .any(|a| a == "Blip2ForImageTextRetrieval")
    }

    /// Configs of random-weight models at the published sizes, for benchmarks.
    /// Names: "tiny", "opt-2.7b", "opt-6.7b", "flan-t5-xl", "flan-t5-xxl".
    pub fn preset(name: &str) -> Result<Blip2Config> {
        let opt = |hidden: usize, ffn: usize, layers: usize, heads: usize| OptConfig {
            vocab_size: 50304,
            hidden_size: hidden,
            num_hidden_layers: layers,
            ffn_dim: ffn,
            num_attention_heads: heads,
            word_embed_proj_dim: hidden,
            eos_token_id: 50118,
            ..OptConfig::default()
        };
        let t5 = |d_model: usize, d_ff: usize, heads: usize| T5Config {
            vocab_size: 32128,
            d_model,
            d_kv: 64,
            d_ff,
            num_layers: 24,
            num_decoder_layers: 24,
            num_heads: heads,
            feed_forward_proj: "gated-gelu".into(),
            is_gated_act: true,
            dense_act_fn: "gelu".into(),
            tie_word_embeddings: false,
            scale_decoder_outputs: false,
            bos_token_id: Some(1),
            eos_token_id: 1,
            pad_token_id: 0,
            decoder_start_token_id: 0,
            ..T5Config::default()
        };
        let generation = |text: TextConfig, image_token: u32| {
            let decoder_only = matches!(text, TextConfig::Opt(_));
            Blip2Config {
                text_config: Some(text),
                image_token_index: Some(image_token),
                use_decoder_only_language_model: decoder_only,
                architectures: vec!["Blip2ForConditionalGeneration".into()],
                ..Blip2Config::default()
            }
        };
        Ok(match name {
            "opt-2.7b" => generation(TextConfig::Opt(opt(2560, 10240, 32, 32)), 50265),
            "opt-6.7b" => generation(TextConfig::Opt(opt(4096, 16384, 32, 32)), 50265),
            "flan-t5-xl" => generation(TextConfig::T5(t5(2048, 5120, 32)), 32100),
            "flan-t5-xxl" => generation(TextConfig::T5(t5(4096, 10240, 64)), 32100),
            "tiny" => {
                // Small enough for unit tests and smoke benchmarks; same structure as the
                // real models (cross-attention every 2nd Q-Former layer, OPT with BOS 2).
                let vision_config = VisionConfig {
                    hidden_size: 32,
                    intermediate_size: 64,
                    num_hidden_layers: 2,
                    num_attention_heads: 4,
                    image_size: 30,
                    patch_size: 6,
                    ..VisionConfig::default()
                };
                let qformer_config = QFormerConfig {
                    vocab_size: 100,
                    hidden_size: 32,
                    num_hidden_layers: 2,
                    num_attention_heads: 4,
                    intermediate_size: 64,
                    encoder_hidden_size: 32,
                    ..QFormerConfig::default()
                };
                let text = OptConfig {
                    vocab_size: 100,
                    hidden_size: 32,
                    num_hidden_layers: 2,
                    ffn_dim: 64,
                    num_attention_heads: 4,
                    max_position_embeddings: 64,
                    word_embed_proj_dim: 32,
                    ..OptConfig::default()
                };
                Blip2Config {
                    vision_config,
                    qformer_config,
                    num_query_tokens: 4,
                    ..generation(TextConfig::Opt(text), 99)
                }
            }
            _ => {
                return Err(ModelError::Invalid(format!(
                    "unknown preset '{name}' (expected tiny, opt-2.7b, opt-6.7b, flan-t5-xl or flan-t5-xxl)"
                )));
            }
        })
    }
}

fn parse_vision(o: &Obj) -> Result<VisionConfig> {
    let d = VisionConfig::default();
    Ok(VisionConfig {
        hidden_size: o.usize("hidden_size", d.hidden_size)?,
        intermediate_size: o.usize("intermediate_size", d.intermediate_size)?,
        num_hidden_layers: o.usize("num_hidden_layers", d.num_hidden_layers)?,
        num_attention_heads: o.usize("num_attention_heads", d.num_attention_heads)?,
        image_size: o.usize("image_size", d.image_size)?,
        patch_size: o.usize("patch_size", d.patch_size)?,
        num_channels: o.usize("num_channels", d.num_channels)?,
        hidden_act: o.string("hidden_act", &d.hidden_act)?,
        layer_norm_eps: o.f64("layer_norm_eps", d.layer_norm_eps)?,
        qkv_bias: o.bool("qkv_bias", d.qkv_bias)?,
    })
}

fn parse_qformer(o: &Obj) -> Result<QFormerConfig> {
    let d = QFormerConfig::default();
    Ok(QFormerConfig {
        vocab_size: o.usize("vocab_size", d.vocab_size)?,
        hidden_size: o.usize("hidden_size", d.hidden_size)?,
        num_hidden_layers: o.usize("num_hidden_layers", d.num_hidden_layers)?,
        num_attention_heads: o.usize("num_attention_heads", d.num_attention_heads)?,
        intermediate_size: o.usize("intermediate_size", d.intermediate_size)?,
        hidden_act: o.string("hidden_act", &d.hidden_act)?,
        max_position_embeddings: o.usize("max_position_embeddings", d.max_position_embeddings)?,
        layer_norm_eps: o.f64("layer_norm_eps", d.layer_norm_eps)?,
        pad_token_id: o.opt_u32("pad_token_id")?.unwrap_or(d.pad_token_id),
        position_embedding_type: o.string("position_embedding_type", &d.position_embedding_type)?,
        cross_attention_frequency: o
            .usize("cross_attention_frequency", d.cross_attention_frequency)?,
        encoder_hidden_size: o.usize("encoder_hidden_size", d.encoder_hidden_size)?,
        use_qformer_text_input: o.bool("use_qformer_text_input", d.use_qformer_text_input)?,
    })
}

fn parse_text(o: &Obj) -> Result<TextConfig> {
    let model_type = o.string("model_type", "opt")?;
    match model_type.as_str() {
        "opt" => Ok(TextConfig::Opt(parse_opt(o)?)),
        "t5" => Ok(TextConfig::T5(parse_t5(o)?)),
        other => Err(o.err(
            "model_type",
            format!("language model '{other}' is not supported (expected \"opt\" or \"t5\")"),
        )),
    }
}

fn parse_opt(o: &Obj) -> Result<OptConfig> {
    let d = OptConfig::default();
    let hidden_size = o.usize("hidden_size", d.hidden_size)?;
    Ok(OptConfig {
        vocab_size: o.usize("vocab_size", d.vocab_size)?,
        hidden_size,
        num_hidden_layers: o.usize("num_hidden_layers", d.num_hidden_layers)?,
        ffn_dim: o.usize("ffn_dim", d.ffn_dim)?,
        num_attention_heads: o.usize("num_attention_heads", d.num_attention_heads)?,
        max_position_embeddings: o.usize("max_position_embeddings", d.max_position_embeddings)?,
        do_layer_norm_before: o.bool("do_layer_norm_before", d.do_layer_norm_before)?,
        // OPTConfig: word_embed_proj_dim = hidden_size when None/absent.
        word_embed_proj_dim: o.opt_usize("word_embed_proj_dim")?.unwrap_or(hidden_size),
        activation_function: o.string("activation_function", &d.activation_function)?,
        enable_bias: o.bool("enable_bias", d.enable_bias)?,
        layer_norm_elementwise_affine: o.bool(
            "layer_norm_elementwise_affine",
            d.layer_norm_elementwise_affine,
        )?,
        remove_final_layer_norm: o.bool("_remove_final_layer_norm", d.remove_final_layer_norm)?,
        layer_norm_eps: d.layer_norm_eps,
        bos_token_id: o.opt_u32("bos_token_id")?.unwrap_or(d.bos_token_id),
        eos_token_id: o.first_u32("eos_token_id")?.unwrap_or(d.eos_token_id),
        pad_token_id: o.opt_u32("pad_token_id")?.unwrap_or(d.pad_token_id),
        tie_word_embeddings: o.bool("tie_word_embeddings", d.tie_word_embeddings)?,
    })
}

fn parse_t5(o: &Obj) -> Result<T5Config> {
    let d = T5Config::default();
    let num_layers = o.usize("num_layers", d.num_layers)?;
    let feed_forward_proj = o.string("feed_forward_proj", &d.feed_forward_proj)?;
    let (gated, act) =
        parse_feed_forward_proj(&feed_forward_proj).map_err(|m| o.err("feed_forward_proj", m))?;
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

/// Settings of `BlipImageProcessor`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ImageProcessorConfig {
    /// Output (height, width).
    pub size: (usize, usize),
    /// PIL resampling code: 0 nearest, 1 lanczos, 2 bilinear, 3 bicubic, 4 box, 5 hamming.
    pub resample: u32,
    pub do_resize: bool,
    pub do_rescale: bool,
    pub rescale_factor: f64,
    pub do_normalize: bool,
    pub image_mean: [f64; 3],
    pub image_std: [f64; 3],
    pub do_convert_rgb: bool,
}

/// OPENAI_CLIP_MEAN / OPENAI_CLIP_STD of transformers.
pub const CLIP_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
pub const CLIP_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];

impl Default for ImageProcessorConfig {
    /// BLIP-2 hub values (224x224, bicubic, CLIP mean/std).
    fn default() -> Self {
        ImageProcessorConfig {
            size: (224, 224),
            resample: 3,
            do_resize: true,
            do_rescale: true,
            rescale_factor: 1.0 / 255.0,
            do_normalize: true,
            image_mean: CLIP_MEAN,
            image_std: CLIP_STD,
            do_convert_rgb: true,
        }
    }
}

/// What the processor files of a checkpoint directory say.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProcessorConfig {
    pub image: ImageProcessorConfig,
    /// `num_query_tokens` from processor_config.json, when it has one.
    pub num_query_tokens: Option<usize>,
    /// The file the image settings came from (None: defaults, no file found).
    pub source: Option<PathBuf>,
}

impl ImageProcessorConfig {
    /// Parses one image-processor JSON object (`path` and `prefix` for error messages).
    fn parse(o: &Obj) -> Result<ImageProcessorConfig> {
        let d = ImageProcessorConfig::default();
        let size = match o.get("size") {
            None | Some(Value::Null) => d.size,
            Some(Value::Number(_)) => {
                let s = o.usize("size", 0)?;
                (s, s)
            }
            Some(Value::Object(_)) => {
                let Some(s) = o.obj("size")? else {
                    return Err(o.err("size", "expected an object".to_string()));
                };
                match (s.opt_usize("height")?, s.opt_usize("width")?) {
                    (Some(h), Some(w)) => (h, w),
                    _ => match s.opt_usize("shortest_edge")? {
                        // BLIP resizes to a square; a lone edge means size x size.
                        Some(e) => (e, e),
                        None => {
                            return Err(o.err(
                                "size",
                                "expected {\"height\": H, \"width\": W}".to_string(),
                            ));
                        }
                    },
                }
            }
            Some(other) => {
                return Err(o.err(
                    "size",
                    format!("expected an object or an integer, found {other}"),
                ));
            }
        };
        if size.0 == 0 || size.1 == 0 {
            return Err(o.err("size", "height and width must be at least 1".to_string()));
        }
        let image_mean = o.triple("image_mean", d.image_mean)?;
        let image_std = o.triple("image_std", d.image_std)?;
        if image_std.contains(&0.0) {
            return Err(o.err("image_std", "a standard deviation of 0".to_string()));
        }
        let resample = o.opt_u32("resample")?.unwrap_or(d.resample);
        // Checked here so a bad filter is a config error at load, not a failure on the
        // first image that needs resizing.
        crate::preprocess::Filter::from_pil_code(resample)
            .map_err(|e| o.err("resample", e.to_string()))?;
        Ok(ImageProcessorConfig {
            size,
            resample,
            do_resize: o.bool("do_resize", d.do_resize)?,
            do_rescale: o.bool("do_rescale", d.do_rescale)?,
            rescale_factor: o.f64("rescale_factor", d.rescale_factor)?,
            do_normalize: o.bool("do_normalize", d.do_normalize)?,
            image_mean,
            image_std,
            do_convert_rgb: o.bool("do_convert_rgb", d.do_convert_rgb)?,
        })
    }

    /// Parses a `preprocessor_config.json` (older layout: the settings at top level).
    pub fn from_preprocessor_json(
        text: &str,
        path: impl AsRef<Path>,
    ) -> Result<ImageProcessorConfig> {
        let path = path.as_ref();
        let v = parse_json(text, path)?;
        Self::parse(&Obj::root(path, &v)?)
    }
}

impl ProcessorConfig {
    /// Reads the processor settings of a checkpoint directory: `processor_config.json`
    /// (v5 layout: key `image_processor`, plus `num_query_tokens`) when it holds image
    /// settings, else `preprocessor_config.json` (older layout), else the BLIP-2 defaults.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<ProcessorConfig> {
        let dir = dir.as_ref();
        let mut num_query_tokens = None;
        let proc_path = dir.join("processor_config.json");
        if proc_path.is_file() {
            let text =
                std::fs::read_to_string(&proc_path).map_err(|e| ModelError::io(&proc_path, e))?;
            let (image, n) = Self::from_processor_json(&text, &proc_path)?;
            num_query_tokens = n;
            if let Some(image) = image {
                return Ok(ProcessorConfig {
                    image,
                    num_query_tokens,
                    source: Some(proc_path),
                });
            }
        }
        let pre_path = dir.join("preprocessor_config.json");
        if pre_path.is_file() {
            let text =
                std::fs::read_to_string(&pre_path).map_err(|e| ModelError::io(&pre_path, e))?;
            let v = parse_json(&text, &pre_path)?;
            let o = Obj::root(&pre_path, &v)?;
            if num_query_tokens.is_none() {
                num_query_tokens = o.opt_usize("num_query_tokens")?;
            }
            return Ok(ProcessorConfig {
                image: ImageProcessorConfig::parse(&o)?,
                num_query_tokens,
                source: Some(pre_path),
            });
        }
        Ok(ProcessorConfig {
            image: ImageProcessorConfig::default(),
            num_query_tokens,
            source: None,
        })
    }

    /// Parses `processor_config.json`: `(image settings if key image_processor exists, num_query_tokens)`.
    pub fn from_processor_json(
        text: &str,
        path: impl AsRef<Path>,
    ) -> Result<(Option<ImageProcessorConfig>, Option<usize>)> {
        let path = path.as_ref();
        let v = parse_json(text, path)?;
        let o = Obj::root(path, &v)?;
        let n = o.opt_usize("num_query_tokens")?;
        let image = match o.obj("image_processor")? {
            Some(ip) => Some(ImageProcessorConfig::parse(&ip)?),
            None => None,
        };
        Ok((image, n))
    }
}

fn parse_json(text: &str, path: &Path) -> Result<Value> {
    serde_json::from_str(text)
        .map_err(|e| ModelError::config(path, "", format!("invalid JSON: {e}")))
}

/// A JSON object with its file and dotted key path, for typed reads with precise errors.
struct Obj<'a> {
    file: &'a Path,
    prefix: String,
    map: &'a Map<String, Value>,
}

fn describe(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 60 {
        format!("{}...", &s[..s.floor_char_boundary(60)])
    } else {
        s
    }
}

impl<'a> Obj<'a> {
    fn root(file: &'a Path, v: &'a Value) -> Result<Obj<'a>> {
        match v {
            Value::Object(map) => Ok(Obj {
                file,
                prefix: String::new(),
                map,
            }),
            other => Err(ModelError::config(
                file,
                "",
                format!(
                    "expected a JSON object at the top level, found {}",
                    describe(other)
                ),
            )),
        }
    }

    fn key(&self, k: &str) -> String {
        if self.prefix.is_empty() {
            k.to_string()
        } else {
            format!("{}.{k}", self.prefix)
        }
    }

    fn err(&self, k: &str, msg: String) -> ModelError {
        ModelError::config(self.file, self.key(k), msg)
    }

    /// The value, treating JSON null as absent (HF writes null for "use the default").
    fn get(&self, k: &str) -> Option<&'a Value> {
        self.map.get(k).filter(|v| !v.is_null())
    }

    fn obj(&self, k: &str) -> Result<Option<Obj<'a>>> {
        match self.get(k) {
            None => Ok(None),
            Some(Value::Object(map)) => Ok(Some(Obj {
                file: self.file,
                prefix: self.key(k),
                map,
            })),
            Some(other) => {
                Err(self.err(k, format!("expected an object, found {}", describe(other))))
            }
        }
    }

    fn opt_u64(&self, k: &str) -> Result<Option<u64>> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(x) => Ok(Some(x)),
                // 2.0 is accepted as 2 (some tools write integral floats).
                None => match v.as_f64() {
                    Some(f) if f >= 0.0 && f.fract() == 0.0 && f < 9.0e15 => Ok(Some(f as u64)),
                    _ => Err(self.err(
                        k,
                        format!("expected an unsigned integer, found {}", describe(v)),
                    )),
                },
            },
        }
    }

    fn opt_usize(&self, k: &str) -> Result<Option<usize>> {
        self.opt_u64(k)?
            .map(|x| usize::try_from(x).map_err(|_| self.err(k, format!("{x} is too large"))))
            .transpose()
    }

    fn usize(&self, k: &str, default: usize) -> Result<usize> {
        Ok(self.opt_usize(k)?.unwrap_or(default))
    }

    fn opt_u32(&self, k: &str) -> Result<Option<u32>> {
        self.opt_u64(k)?
            .map(|x| {
                u32::try_from(x)
                    .map_err(|_| self.err(k, format!("{x} does not fit a token id (u32)")))
            })
            .transpose()
    }

    /// A token id that may be stored as a list (eos_token_id: [1, 2]): the first one.
    fn first_u32(&self, k: &str) -> Result<Option<u32>> {
        match self.get(k) {
            Some(Value::Array(items)) => match items.first() {
                None => Ok(None),
                Some(v) => match v.as_u64().and_then(|x| u32::try_from(x).ok()) {
                    Some(x) => Ok(Some(x)),
                    None => Err(self.err(k, format!("expected token ids, found {}", describe(v)))),
                },
            },
            _ => self.opt_u32(k),
        }
    }

    fn f64(&self, k: &str, default: f64) -> Result<f64> {
        match self.get(k) {
            None => Ok(default),
            Some(v) => v
                .as_f64()
                .ok_or_else(|| self.err(k, format!("expected a number, found {}", describe(v)))),
        }
    }

    fn bool(&self, k: &str, default: bool) -> Result<bool> {
        match self.get(k) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(self.err(k, format!("expected true or false, found {}", describe(v)))),
        }
    }

    fn opt_string(&self, k: &str) -> Result<Option<String>> {
        match self.get(k) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(self.err(k, format!("expected a string, found {}", describe(v)))),
        }
    }

    fn string(&self, k: &str, default: &str) -> Result<String> {
        Ok(self.opt_string(k)?.unwrap_or_else(|| default.to_string()))
    }

    fn string_list(&self, k: &str) -> Result<Vec<String>> {
        match self.get(k) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    other => {
                        Err(self.err(k, format!("expected strings, found {}", describe(other))))
                    }
                })
                .collect(),
            Some(v) => Err(self.err(
                k,
                format!("expected a list of strings, found {}", describe(v)),
            )),
        }
    }

    /// Per-channel values: a list of 3 numbers or one number for all channels.
    fn triple(&self, k: &str, default: [f64; 3]) -> Result<[f64; 3]> {
        match self.get(k) {
            None => Ok(default),
            Some(Value::Number(n)) => {
                let x = n.as_f64().unwrap_or(f64::NAN);
                Ok([x, x, x])
            }
            Some(Value::Array(items)) if items.len() == 3 => {
                let mut out = [0.0; 3];
                for (o, v) in out.iter_mut().zip(items) {
                    *o = v.as_f64().ok_or_else(|| {
                        self.err(k, format!("expected numbers, found {}", describe(v)))
                    })?;
                }
                Ok(out)
            }
            Some(v) => Err(self.err(
                k,
                format!(
                    "expected 3 numbers (one per RGB channel), found {}",
                    describe(v)
                ),
            )),
        }
    }
}
