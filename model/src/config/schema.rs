//! The Hugging Face schema of `config.json` (`Blip2Config` with its vision and Q-Former
//! halves) and transformers' defaults for every absent key.
//!
//! transformers (v5) saves configs as a diff against the class defaults, so a key that is
//! absent means "the default": the defaults here are those of `Blip2VisionConfig` and
//! `Blip2QFormerConfig`. The language model's half (`text_config`) belongs to its family
//! (`crate::lm`), which reads `model_type` and parses the rest.

use std::path::Path;

use serde::Serialize;

use super::json::{Obj, parse_json};
use crate::error::Result;
use crate::lm::TextConfig;

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

/// Which model family config.json describes (`model_type`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub enum ModelFamily {
    /// `blip-2`: the Q-Former reads the image alone.
    #[default]
    #[serde(rename = "blip-2")]
    Blip2,
    /// `instructblip`: the Q-Former also reads the instruction (its own BERT tokens).
    #[serde(rename = "instructblip")]
    InstructBlip,
}

/// `Blip2Config` (and `InstructBlipConfig`, which has the same keys).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Blip2Config {
    /// `model_type`: "blip-2" or "instructblip".
    pub model_type: ModelFamily,
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
            model_type: ModelFamily::Blip2,
            vision_config: VisionConfig::default(),
            qformer_config: QFormerConfig::default(),
            text_config: Some(TextConfig::new(crate::lm::opt::OptConfig::default())),
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
        let text = crate::limits::read_text_bounded(path, crate::limits::MAX_JSON_BYTES, "config")?;
        Self::from_json_str(&text, path)
    }

    /// Parses config.json text; `path` is only used in error messages.
    pub fn from_json_str(text: &str, path: impl AsRef<Path>) -> Result<Blip2Config> {
        let path = path.as_ref();
        let root = parse_json(text, path)?;
        let r = Obj::root(path, &root)?;
        let d = Blip2Config::default();
        let model_type = match r.string("model_type", "blip-2")?.as_str() {
            "blip-2" | "blip_2" => ModelFamily::Blip2,
            "instructblip" => ModelFamily::InstructBlip,
            other => {
                return Err(r.err(
                    "model_type",
                    format!("'{other}' is not supported (expected \"blip-2\" or \"instructblip\")"),
                ));
            }
        };

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
            Some(t) => Some(crate::lm::parse_text_config(&t)?),
            None => None,
        };
        let use_decoder_only_language_model = text_config
            .as_ref()
            .is_some_and(|t| !t.is_encoder_decoder());

        let image_token_index = match r.opt_u32("image_token_index")? {
            Some(v) => Some(v),
            None => r.opt_u32("image_token_id")?,
        };
        let torch_dtype = match r.opt_string("dtype")? {
            Some(s) => Some(s),
            None => r.opt_string("torch_dtype")?,
        };
        let cfg = Blip2Config {
            model_type,
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

    /// True for InstructBLIP checkpoints (instruction-aware Q-Former).
    pub fn is_instructblip(&self) -> bool {
        self.model_type == ModelFamily::InstructBlip
    }

    /// The family for `blip2 info`: "blip-2 (opt)", "instructblip (vicuna/llama)".
    pub fn family(&self) -> String {
        let base = match self.model_type {
            ModelFamily::Blip2 => "blip-2",
            ModelFamily::InstructBlip => "instructblip",
        };
        match self.text_config.as_ref().map(|t| t.model_type()) {
            None => base.to_string(),
            Some("llama") => format!("{base} (vicuna/llama)"),
            Some("t5") => format!("{base} (flan-t5)"),
            Some(lm) => format!("{base} ({lm})"),
        }
    }

    /// True when `architectures` names the retrieval model (ITM/ITC heads).
    pub fn is_retrieval(&self) -> bool {
        self.architectures
            .iter()
            .any(|a| a == "Blip2ForImageTextRetrieval")
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
