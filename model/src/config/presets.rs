//! Configs of random-weight models at the published sizes, for benchmarks (`blip2 bench
//! --preset ...`) and tests.

use super::{Blip2Config, ModelFamily, QFormerConfig, VisionConfig};
use crate::error::{ModelError, Result};
use crate::lm::TextConfig;
use crate::lm::llama::LlamaConfig;
use crate::lm::opt::OptConfig;
use crate::lm::t5::T5Config;

impl Blip2Config {
    /// Configs of random-weight models at the published sizes, for benchmarks.
    /// Names: "tiny", "opt-2.7b", "opt-6.7b", "flan-t5-xl", "flan-t5-xxl",
    /// "instructblip-vicuna-7b", "instructblip-flan-t5-xl".
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
            let decoder_only = !text.is_encoder_decoder();
            Blip2Config {
                text_config: Some(text),
                image_token_index: Some(image_token),
                use_decoder_only_language_model: decoder_only,
                architectures: vec!["Blip2ForConditionalGeneration".into()],
                ..Blip2Config::default()
            }
        };
        // Salesforce/instructblip-*: the BLIP-2 image half, a Q-Former that also reads the
        // instruction (BERT vocabulary + 1 added token), 32 queries.
        let instruct = |text: TextConfig, image_token: u32| Blip2Config {
            model_type: ModelFamily::InstructBlip,
            qformer_config: QFormerConfig {
                vocab_size: 30523,
                ..QFormerConfig::default()
            },
            architectures: vec!["InstructBlipForConditionalGeneration".into()],
            ..generation(text, image_token)
        };
        // Vicuna-7B v1.1 (LLaMA-7B): 32000 tokens + <image> at 32000.
        let vicuna7b = LlamaConfig {
            vocab_size: 32001,
            pad_token_id: Some(0),
            ..LlamaConfig::default()
        };
        Ok(match name {
            "instructblip-vicuna-7b" => instruct(TextConfig::new(vicuna7b), 32000),
            "instructblip-flan-t5-xl" => instruct(TextConfig::new(t5(2048, 5120, 32)), 32100),
            "opt-2.7b" => generation(TextConfig::new(opt(2560, 10240, 32, 32)), 50265),
            "opt-6.7b" => generation(TextConfig::new(opt(4096, 16384, 32, 32)), 50265),
            "flan-t5-xl" => generation(TextConfig::new(t5(2048, 5120, 32)), 32100),
            "flan-t5-xxl" => generation(TextConfig::new(t5(4096, 10240, 64)), 32100),
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
                    ..generation(TextConfig::new(text), 99)
                }
            }
            _ => {
                return Err(ModelError::Invalid(format!(
                    "unknown preset '{name}' (expected tiny, opt-2.7b, opt-6.7b, flan-t5-xl, flan-t5-xxl, instructblip-vicuna-7b or instructblip-flan-t5-xl)"
                )));
            }
        })
    }
}
