//! Language models behind one interface. A family (OPT, T5, ...) is one module here that
//! provides two things:
//! - its `text_config` as an [`LmConfig`]: the HF keys with their defaults, parsing and
//!   validation, and a `load` that builds the model from checkpoint weights;
//! - the built model as a [`LanguageModel`]: token embeddings, the processor's padding
//!   side, a prefill that returns the [`DecodeModel`] the decoding loop drives, and
//!   teacher-forced logits for parity tests.
//!
//! The BLIP-2 pipeline (`crate::blip2`) sees only these two traits; `model_type` is read in
//! one place, [`parse_text_config`], which is the one arm a new family adds.

pub mod batch;
pub mod kv;
pub mod llama;
pub mod opt;
pub mod t5;

use std::any::Any;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use blip2_engine::Tensor;
use serde::Serialize;

use crate::config::json::Obj;
use crate::error::Result;
use crate::generate::DecodeModel;
use crate::inputs::PaddedBatch;
use crate::tokenizer::PaddingSide;
use crate::weights::WeightLoader;

/// The `text_config` of one language-model family.
pub trait LmConfig: ConfigObject + fmt::Debug + Send + Sync {
    /// HF `model_type` ("opt", "t5").
    fn model_type(&self) -> &'static str;
    /// Width of the token embeddings: what `language_projection` outputs.
    fn hidden_size(&self) -> usize;
    fn vocab_size(&self) -> usize;
    /// Layers one decode step runs through (T5: the decoder's).
    fn decoder_layers(&self) -> usize;
    /// The eos id `generate()` stops at (the first one when the config stores a list).
    fn eos_token_id(&self) -> u32;
    /// The id prompts of a batch are padded with.
    fn pad_token_id(&self) -> u32;
    /// The token `generate()` puts after the image tokens when no text is given
    /// (`text_config.bos_token_id`).
    fn bos_token_id(&self) -> u32;
    fn is_encoder_decoder(&self) -> bool;
    /// Positions the model can embed (OPT's learned table), `None` when it has no such
    /// limit (T5's relative buckets).
    fn max_positions(&self) -> Option<usize> {
        None
    }
    /// Checks the values the model divides by or indexes with; errors name
    /// `text_config.KEY` in `path`.
    fn validate(&self, path: &Path) -> Result<()>;
    /// One line for `blip2 info`: "opt: hidden 2560, 32 layers, 32 heads, vocab 50272".
    fn summary(&self) -> String;
    /// Builds the model from weights under `language_model.` (`vb` is rooted there).
    fn load(&self, vb: &WeightLoader) -> Result<Box<dyn LanguageModel>>;
}

/// Object plumbing every config gets for free from `PartialEq + Serialize`, so that
/// [`TextConfig`] can be compared, serialised and downcast without knowing the family.
pub trait ConfigObject: 'static {
    fn as_any(&self) -> &dyn Any;
    fn eq_config(&self, other: &dyn Any) -> bool;
    fn to_json(&self) -> serde_json::Value;
}

impl<T: PartialEq + Serialize + 'static> ConfigObject for T {
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn eq_config(&self, other: &dyn Any) -> bool {
        other.downcast_ref::<T>() == Some(self)
    }
    fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

/// The language model's config of a checkpoint, of whichever family `model_type` names.
/// Derefs to [`LmConfig`]; [`TextConfig::downcast`] gives the family's own struct.
#[derive(Clone)]
pub struct TextConfig(Arc<dyn LmConfig>);

impl TextConfig {
    pub fn new(config: impl LmConfig) -> TextConfig {
        TextConfig(Arc::new(config))
    }

    /// The family's config struct, when it is `T` (`downcast::<OptConfig>()`).
    pub fn downcast<T: LmConfig>(&self) -> Option<&T> {
        self.0.as_any().downcast_ref::<T>()
    }
}

impl std::ops::Deref for TextConfig {
    type Target = dyn LmConfig;
    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}

impl fmt::Debug for TextConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl PartialEq for TextConfig {
    fn eq(&self, other: &TextConfig) -> bool {
        self.0.eq_config(other.0.as_any())
    }
}

impl Serialize for TextConfig {
    /// The family's fields with `model_type`, as config.json has them.
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut v = self.0.to_json();
        if let Some(m) = v.as_object_mut() {
            m.insert("model_type".into(), self.0.model_type().into());
        }
        v.serialize(s)
    }
}

/// Parses `text_config` by its `model_type` (absent means OPT, as in HF).
pub(crate) fn parse_text_config(o: &Obj) -> Result<TextConfig> {
    let model_type = o.string("model_type", "opt")?;
    match model_type.as_str() {
        "opt" => Ok(TextConfig::new(opt::OptConfig::parse(o)?)),
        "t5" => Ok(TextConfig::new(t5::T5Config::parse(o)?)),
        "llama" => Ok(TextConfig::new(llama::LlamaConfig::parse(o)?)),
        other => Err(o.err(
            "model_type",
            format!(
                "language model '{other}' is not supported (expected \"opt\", \"t5\" or \"llama\")"
            ),
        )),
    }
}

/// A prompt batch as the language model receives it: input embeddings `[B, L, D]` (the
/// image's query outputs already scattered in) and the padded ids they came from.
pub struct LmInput {
    pub embeds: Tensor,
    pub batch: PaddedBatch,
}

/// The state after the prompt: the first logits `[B · vocab]`, the ids each row's logits
/// processors count (HF's `input_ids`, which differ by family), and the decoder.
pub struct Prefill<'a> {
    pub logits: Vec<f32>,
    pub seen: Vec<Vec<u32>>,
    pub decoder: Box<dyn DecodeModel + 'a>,
}

/// A language model of any family, as the BLIP-2 pipeline uses it.
pub trait LanguageModel: Send + Sync {
    /// Width of the token embeddings (the projection's output).
    fn hidden_size(&self) -> usize;
    fn vocab_size(&self) -> usize;
    /// How the processor pads the prompts of a batch: left for decoder-only generation,
    /// right (the tokenizer default) for encoder-decoder models.
    fn padding_side(&self) -> PaddingSide;
    /// Token embeddings `[n, D]` in f32.
    fn embed(&self, ids: &[u32]) -> blip2_engine::Result<Tensor>;
    /// Runs the prompt; the returned decoder can take `max_new_tokens` more tokens.
    fn prefill(&self, input: LmInput, max_new_tokens: usize) -> Result<Prefill<'_>>;
    /// Teacher-forced logits for parity tests. Decoder-only: over the whole padded prompt
    /// `[B, L, V]`. Encoder-decoder: decoder logits `[B, L_dec, V]` for `decoder_ids`,
    /// returned with the encoder output `[B, L, D]`.
    fn prompt_logits(
        &self,
        input: LmInput,
        decoder_ids: Option<&[Vec<u32>]>,
    ) -> Result<(Tensor, Option<Tensor>)>;
    /// A step-level batch of independent rows (continuous batching, chat cache reuse).
    fn row_batch(&self, device: &blip2_engine::Device) -> Box<dyn batch::RowBatch + '_>;
}

#[cfg(test)]
mod tests {
    use super::opt::OptConfig;
    use super::t5::T5Config;
    use super::*;

    #[test]
    fn text_configs_compare_serialise_and_downcast_by_family() {
        let opt = TextConfig::new(OptConfig::default());
        let t5 = TextConfig::new(T5Config::default());
        assert_eq!(opt, TextConfig::new(OptConfig::default()));
        assert_ne!(opt, t5);
        let wider = TextConfig::new(OptConfig {
            hidden_size: 1024,
            ..OptConfig::default()
        });
        assert_ne!(opt, wider);
        assert!(opt.downcast::<OptConfig>().is_some());
        assert!(opt.downcast::<T5Config>().is_none());
        let j = serde_json::to_value(&t5).unwrap();
        assert_eq!(j["model_type"], "t5");
        assert_eq!(j["d_model"], 512);
        assert!(t5.is_encoder_decoder() && !opt.is_encoder_decoder());
        assert_eq!(
            opt.summary(),
            "opt: hidden 768, 12 layers, 12 heads, vocab 50272"
        );
    }
}
