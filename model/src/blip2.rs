//! The BLIP-2 pipeline: image -> ViT -> Q-Former -> language_projection -> language model
//! -> tokens, with the inputs built exactly as `Blip2Processor` + `generate` build them.
//! The language model is any family behind [`LanguageModel`]; nothing here knows which.
//!
//! InstructBLIP checkpoints (`model_type: instructblip`) take the same path, except that the
//! Q-Former also reads the prompt (tokenized by `qformer_tokenizer/`), so the projected
//! queries depend on the prompt: [`ImageFeatures`] then keeps the ViT output, and the
//! Q-Former runs again for each prompt batch.

use std::path::Path;
use std::time::{Duration, Instant};

use blip2_engine::{DType, Device, Tensor};
use image::DynamicImage;

use crate::chat::Chat;
use crate::config::{Blip2Config, ImageProcessorConfig};
use crate::embedded::EmbeddedCheckpoint;
use crate::generate::{
    DecodeModel, GenerationConfig, GenerationDefaults, ResolvedGeneration, TokenEvent, decode,
};
use crate::image_encoder::ImageEncoder;
use crate::inputs::{PaddedBatch, image_scatter};
use crate::lm::{LanguageModel, LmInput};
pub use crate::loading::LoadOptions;
use crate::loading::{self, ModelFiles, Source};
use crate::nn::Linear;
use crate::prompt::vqa_prompt;
use crate::tokenizer::Blip2Tokenizer;
use crate::weights::{WeightLoader, WeightStats};
use crate::{ModelError, Result};

/// Wall-clock time of each stage of one request.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Timings {
    pub preprocess: Duration,
    pub vision: Duration,
    pub qformer: Duration,
    pub prefill: Duration,
    pub decode: Duration,
    /// Tokens produced by the decode loop (after the prefill's first token).
    pub decode_tokens: usize,
}

/// One generated answer.
#[derive(Clone, Debug, PartialEq)]
pub struct Generation {
    pub text: String,
    /// New tokens only (eos included when it was produced).
    pub token_ids: Vec<u32>,
    /// Beam search: the hypothesis' length-normalised log-probability (HF's
    /// `sequences_scores`); None for greedy search and sampling.
    pub score: Option<f32>,
    pub timings: Timings,
}

/// A decode model whose steps fail with [`ModelError::Cancelled`] once `cancelled` says so.
struct Cancellable<'a> {
    inner: &'a mut dyn DecodeModel,
    cancelled: &'a dyn Fn() -> bool,
}

impl DecodeModel for Cancellable<'_> {
    fn vocab(&self) -> usize {
        self.inner.vocab()
    }
    fn select_rows(&mut self, src: &[usize]) -> Result<()> {
        self.inner.select_rows(src)
    }
    fn step(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        if (self.cancelled)() {
            return Err(ModelError::Cancelled);
        }
        self.inner.step(tokens)
    }
    fn step_logits(&mut self, tokens: &[u32]) -> Result<Option<blip2_engine::Tensor>> {
        if (self.cancelled)() {
            return Err(ModelError::Cancelled);
        }
        self.inner.step_logits(tokens)
    }
}

/// Prompt length cap (image tokens included) for a language model without a position table
/// whose tokenizer states no `model_max_length`: T5's relative position bias alone is
/// heads x L x L floats per layer (4 GiB at L = 4096 with 64 heads).
pub const MAX_PROMPT_TOKENS: usize = 2048;

/// A loaded BLIP-2 checkpoint on a device.
pub struct Blip2 {
    pub config: Blip2Config,
    pub tokenizer: Blip2Tokenizer,
    /// InstructBLIP's Q-Former tokenizer (BERT WordPiece); None for BLIP-2.
    pub qformer_tokenizer: Option<Blip2Tokenizer>,
    image: ImageEncoder,
    projection: Linear,
    lm: Box<dyn LanguageModel>,
    pub load_time: Duration,
    weight_stats: WeightStats,
    /// Things the user should know about the checkpoint that are not errors (see
    /// [`Blip2::notes`]).
    notes: Vec<String>,
}

/// Q-Former token ids and attention masks, one row per prompt (InstructBLIP).
pub type QFormerInstructions = (Vec<Vec<u32>>, Vec<Vec<u8>>);

/// Query features of a batch of images, computed once and reusable across prompts.
pub struct ImageFeatures {
    /// language_projection output `[B, Q, D_lm]` (InstructBLIP: for the empty instruction,
    /// which is what a prompt-less caption uses).
    pub projected: Tensor,
    /// InstructBLIP: the vision encoder's output `[B, N, Dv]`, which the Q-Former reads again
    /// with each prompt. None for BLIP-2.
    pub vision_output: Option<Tensor>,
    pub preprocess: Duration,
    pub vision: Duration,
    pub qformer: Duration,
}

impl Blip2 {
    /// Loads a Hugging Face BLIP-2 checkpoint directory (config.json, safetensors, tokenizer,
    /// processor config).
    pub fn load(dir: impl AsRef<Path>, opts: LoadOptions) -> Result<Blip2> {
        let dir = dir.as_ref();
        let mut model = Self::load_from(Source::Dir(dir), opts)?;
        model.notes = crate::config::generation_file::ignored_settings(
            dir,
            model.config.text_config.as_ref(),
        );
        Ok(model)
    }

    /// Notes about the checkpoint that are not errors but change what a user may expect,
    /// e.g. the settings of a `generation_config.json`, which generation ignores as
    /// transformers does. The CLI prints them on stderr.
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// Loads a checkpoint compiled into the binary, exactly as [`Blip2::load`] loads a
    /// directory holding the same files.
    pub fn load_embedded(files: &EmbeddedCheckpoint, opts: LoadOptions) -> Result<Blip2> {
        Self::load_from(Source::Embedded(files), opts)
    }

    /// A model of `config`'s sizes with seeded random weights (see
    /// [`crate::weights::Checkpoint::random`]) and a word-level tokenizer covering the
    /// whole vocabulary, for benchmarks.
    pub fn random(config: Blip2Config, device: &Device, dtype: DType, seed: u64) -> Result<Blip2> {
        let opts = LoadOptions {
            device: device.clone(),
            dtype,
            progress: None,
            adapters: Vec::new(),
        };
        Self::load_from(Source::Random { config, seed }, opts)
    }

    /// Loads from any [`Source`]; fails with one error listing every missing or
    /// mismatched tensor.
    pub fn load_from(source: Source, opts: LoadOptions) -> Result<Blip2> {
        let (mut model, took, stats) = loading::load(source, opts, Self::build)?;
        model.load_time = took;
        model.weight_stats = stats;
        Ok(model)
    }

    /// The pipeline's components from the checkpoint's files and weights.
    pub(crate) fn build(files: ModelFiles, vb: &WeightLoader) -> Result<Blip2> {
        let ModelFiles {
            config,
            image_config,
            tokenizer,
            qformer_tokenizer,
        } = files;
        if config.is_instructblip() && qformer_tokenizer.is_none() {
            return Err(ModelError::Unsupported(format!(
                "{}: an InstructBLIP checkpoint needs its Q-Former tokenizer (qformer_tokenizer/tokenizer.json)",
                vb.checkpoint().path().display()
            )));
        }
        if config.is_retrieval() {
            return Err(ModelError::Unsupported(format!(
                "{} is an image-text retrieval checkpoint (Blip2ForImageTextRetrieval): it scores and embeds, it does not generate text; use Blip2Retrieval or `blip2 match`",
                vb.checkpoint().path().display()
            )));
        }
        let text = config.text_config.as_ref().ok_or_else(|| {
            ModelError::Unsupported(format!(
                "{}: config.json has no text_config (a retrieval-only checkpoint cannot generate text)",
                vb.checkpoint().path().display()
            ))
        })?;
        let image = ImageEncoder::load(vb, &config, image_config, false)?;
        let lm = text.load(&vb.pp("language_model"))?;
        let projection = Linear::load(
            &vb.pp("language_projection"),
            config.qformer_config.hidden_size,
            lm.hidden_size(),
            true,
        );
        Ok(Blip2 {
            config,
            tokenizer,
            qformer_tokenizer,
            image,
            projection,
            lm,
            load_time: Duration::ZERO,
            weight_stats: WeightStats::default(),
            notes: Vec::new(),
        })
    }

    /// What the loaded weights occupy: bytes per storage dtype, the linear weights' dtype,
    /// and how many tensors were quantized at load or used pre-quantized from the files.
    pub fn weight_stats(&self) -> &WeightStats {
        &self.weight_stats
    }

    pub fn device(&self) -> &Device {
        self.image.device()
    }

    /// Preprocesses the images and runs ViT, Q-Former and the projection (InstructBLIP:
    /// with the empty instruction, keeping the ViT output for prompts).
    pub fn image_features(&self, images: &[&DynamicImage]) -> Result<ImageFeatures> {
        let t = Instant::now();
        let pixels = self.image.pixel_values(images)?;
        let preprocess = t.elapsed();
        Ok(ImageFeatures {
            preprocess,
            ..self.features_from_pixels(&pixels)?
        })
    }

    /// Q-Former (InstructBLIP: with the empty instruction, keeping the ViT output in `keep`
    /// for prompts) and the projection over a ViT output.
    fn project_image(&self, vis: &Tensor, keep: &mut Option<Tensor>) -> Result<Tensor> {
        let q = if self.config.is_instructblip() {
            *keep = Some(vis.clone());
            let (ids, mask) = self.qformer_instructions(&vec![None; vis.dim(0)])?;
            self.image.queries_with_text(vis, &ids, &mask)?
        } else {
            self.image.queries(vis)?
        };
        Ok(self.projection.forward(&q)?)
    }

    /// The image processor's settings, for callers that preprocess images themselves
    /// (`preprocess::preprocess` on worker threads, ahead of the model) and then call
    /// [`Blip2::features_from_pixels`].
    pub fn image_processor(&self) -> &ImageProcessorConfig {
        &self.image.image_config
    }

    /// [`Blip2::image_features`] on pixel values `[B, 3, H, W]` computed elsewhere
    /// (`preprocess::pixel_values` or rows of `preprocess::preprocess`); preprocess time zero.
    pub fn features_from_pixels(&self, pixels: &Tensor) -> Result<ImageFeatures> {
        let mut vis_out = None;
        let (projected, t) = self
            .image
            .encode_pixels(pixels, |vis| self.project_image(vis, &mut vis_out))?;
        Ok(ImageFeatures {
            projected,
            vision_output: vis_out,
            preprocess: t.preprocess,
            vision: t.vision,
            qformer: t.qformer,
        })
    }

    /// The stages up to the language model on given pixel values, for parity checks:
    /// [vision last_hidden_state, Q-Former query outputs, projection output].
    /// InstructBLIP's Q-Former reads the empty instruction; see [`Blip2::stages_for`].
    pub fn stages(&self, pixels: &Tensor) -> Result<[Tensor; 3]> {
        let none = vec![None; pixels.dim(0)];
        self.stages_for(pixels, &none)
    }

    /// [`Blip2::stages`] with one prompt per image: InstructBLIP's Q-Former reads each
    /// prompt as its instruction (BLIP-2 ignores them).
    pub fn stages_for(&self, pixels: &Tensor, prompts: &[Option<&str>]) -> Result<[Tensor; 3]> {
        let vis = self.image.vision(pixels)?;
        let q = self.query_outputs(&vis, prompts)?;
        let p = self.projection.forward(&q)?;
        Ok([vis, q, p])
    }

    /// Q-Former query outputs `[B, Q, D]` for vision features and one prompt per row.
    fn query_outputs(&self, vis: &Tensor, prompts: &[Option<&str>]) -> Result<Tensor> {
        if !self.config.is_instructblip() {
            return self.image.queries(vis);
        }
        if prompts.len() != vis.dim(0) {
            return Err(ModelError::Invalid(format!(
                "{} prompts for {} images",
                prompts.len(),
                vis.dim(0)
            )));
        }
        let (ids, mask) = self.qformer_instructions(prompts)?;
        self.image.queries_with_text(vis, &ids, &mask)
    }

    /// InstructBlipProcessor's `qformer_input_ids` / `qformer_attention_mask`: each prompt
    /// through the Q-Former tokenizer (`[CLS] text [SEP]`), right-padded. No prompt is the
    /// empty text (`[CLS] [SEP]`): HF needs qformer_input_ids, and `text=""` gives these.
    pub fn qformer_instructions(&self, prompts: &[Option<&str>]) -> Result<QFormerInstructions> {
        let tok = self.qformer_tokenizer.as_ref().ok_or_else(|| {
            ModelError::Invalid(
                "this checkpoint has no Q-Former tokenizer (not InstructBLIP)".into(),
            )
        })?;
        let texts: Vec<&str> = prompts.iter().map(|p| p.unwrap_or("")).collect();
        let enc = tok.encode_text_batch(&texts, crate::tokenizer::PaddingSide::Right)?;
        let mask = enc
            .attention_mask
            .iter()
            .map(|m| m.iter().map(|&v| v as u8).collect())
            .collect();
        Ok((enc.ids, mask))
    }

    /// Features from an already computed projection output `[B, Q, D_lm]` (no timings).
    /// InstructBLIP needs the vision output too: use [`Blip2::features_from_reusable`].
    pub fn features_from_projected(&self, projected: Tensor) -> ImageFeatures {
        ImageFeatures {
            projected,
            vision_output: None,
            preprocess: Duration::ZERO,
            vision: Duration::ZERO,
            qformer: Duration::ZERO,
        }
    }

    /// The prompt-independent part of `feats`, one row per image, for caching by image:
    /// the projected queries (BLIP-2) or the ViT output (InstructBLIP).
    pub fn reusable_features(&self, feats: ImageFeatures) -> Tensor {
        match feats.vision_output {
            Some(v) if self.config.is_instructblip() => v,
            _ => feats.projected,
        }
    }

    /// Features from rows of [`Blip2::reusable_features`] (InstructBLIP: runs the
    /// Q-Former with the empty instruction to fill `projected`).
    pub fn features_from_reusable(&self, t: Tensor) -> Result<ImageFeatures> {
        if !self.config.is_instructblip() {
            return Ok(self.features_from_projected(t));
        }
        let none = vec![None; t.dim(0)];
        let projected = self.projection.forward(&self.query_outputs(&t, &none)?)?;
        Ok(ImageFeatures {
            vision_output: Some(t),
            ..self.features_from_projected(projected)
        })
    }

    /// Prompt ids as `Blip2Processor` builds them: `<image>` × Q, then the tokenized text
    /// (BOS first for OPT); without text, `<image>` × Q + BOS as HF `generate` does.
    pub fn prompt_ids(&self, prompt: Option<&str>) -> Result<Vec<u32>> {
        let image_id = self.image_token_id()?;
        let start = match &self.config.text_config {
            Some(t) => t.bos_token_id(),
            None => self.tokenizer.start_token_id()?,
        };
        let ids = self.tokenizer.encode_prompt_with_start(
            prompt,
            self.config.num_query_tokens,
            image_id,
            start,
        )?;
        // A tokenizer with more tokens than the language model's table (a config or
        // tokenizer.json from another checkpoint): the key at fault, not an internal
        // "id out of range" from the embedding.
        if let Some(vocab) = self.config.text_config.as_ref().map(|t| t.vocab_size())
            && let Some(&bad) = ids.iter().find(|&&i| i != image_id && i as usize >= vocab)
        {
            return Err(ModelError::Invalid(format!(
                "the prompt's token id {bad} ({:?} in tokenizer.json) is past config.json text_config.vocab_size {vocab}: the tokenizer and the config disagree",
                self.tokenizer.id_to_token(bad).unwrap_or_default()
            )));
        }
        let (limit, source) = self.prompt_limit();
        if ids.len() > limit {
            return Err(ModelError::PromptTooLong {
                tokens: ids.len(),
                limit,
                limit_from: source,
            });
        }
        Ok(ids)
    }

    /// Whether a prompt of `prompt_len` tokens and `max_new_tokens` more fit the model: the
    /// prompt limit, and the positions of a language model with a position table.
    pub fn fits(&self, prompt_len: usize, max_new_tokens: usize) -> bool {
        let positions = self
            .config
            .text_config
            .as_ref()
            .and_then(|t| t.max_positions());
        prompt_len <= self.prompt_limit().0
            && positions.is_none_or(|p| prompt_len.saturating_add(max_new_tokens) <= p)
    }

    /// The most prompt tokens (image tokens included) this model takes, and where the
    /// number comes from: the smaller of the tokenizer's `model_max_length` and the
    /// language model's positions, else [`MAX_PROMPT_TOKENS`]. Checked before the prompt is
    /// embedded, so a 100k-character prompt costs a tokenizer pass, not gigabytes of
    /// attention scores or position bias.
    pub fn prompt_limit(&self) -> (usize, &'static str) {
        let lm = self
            .config
            .text_config
            .as_ref()
            .and_then(|t| t.max_positions());
        [
            self.tokenizer
                .model_max_length()
                .map(|m| (m, "tokenizer_config.json model_max_length")),
            lm.map(|m| (m, "config.json text_config.max_position_embeddings")),
        ]
        .into_iter()
        .flatten()
        .min_by_key(|l| l.0)
        .unwrap_or((
            MAX_PROMPT_TOKENS,
            "the library's limit for models without position embeddings",
        ))
    }

    /// The language model (step-level batches, chat cache reuse).
    pub(crate) fn lm(&self) -> &dyn LanguageModel {
        &*self.lm
    }

    fn image_token_id(&self) -> Result<u32> {
        match self.config.image_token_index {
            Some(i) => Ok(i),
            None => self.tokenizer.token_to_id("<image>").ok_or_else(|| {
                ModelError::Unsupported(
                    "config has no image_token_index and the tokenizer has no <image> token".into(),
                )
            }),
        }
    }

    /// `cfg` validated and completed for this checkpoint: eos and pad ids from the language
    /// model's config where `cfg` sets none, and a fresh seed when sampling without one.
    /// This is what a generation call with `cfg` uses.
    pub fn resolve_generation(&self, cfg: &GenerationConfig) -> Result<ResolvedGeneration> {
        let defaults = self
            .config
            .text_config
            .as_ref()
            .map(|t| GenerationDefaults {
                eos_token_ids: vec![t.eos_token_id()],
                pad_token_id: t.pad_token_id(),
            })
            .unwrap_or_default();
        cfg.resolve(&defaults)
    }

    fn pad_id(&self) -> u32 {
        self.config
            .text_config
            .as_ref()
            .map_or(0, |t| t.pad_token_id())
    }

    /// A caption for the image (no text prompt, greedy, 20 new tokens at most).
    pub fn caption(&self, image: &DynamicImage) -> Result<Generation> {
        self.generate(image, None, &GenerationConfig::default())
    }

    /// Answers a question about the image with the prompt "Question: {q} Answer:".
    pub fn ask(&self, image: &DynamicImage, question: &str) -> Result<Generation> {
        self.generate(
            image,
            Some(&vqa_prompt(question)),
            &GenerationConfig::default(),
        )
    }

    /// A conversation about `image`: its features are computed once here and reused by
    /// every turn.
    pub fn chat(&self, image: &DynamicImage) -> Result<Chat<'_>> {
        Ok(Chat::new(self, self.image_features(&[image])?))
    }

    /// Generates text for one image; `prompt` is passed verbatim as the processor's text.
    pub fn generate(
        &self,
        image: &DynamicImage,
        prompt: Option<&str>,
        cfg: &GenerationConfig,
    ) -> Result<Generation> {
        self.generate_stream(image, prompt, cfg, |_| {})
    }

    /// [`Blip2::generate`] that calls `on_token` with each new token as it is chosen
    /// (beam search: the returned hypothesis' tokens once the search ends). Decode the
    /// text incrementally with [`crate::stream::TextStream`].
    pub fn generate_stream(
        &self,
        image: &DynamicImage,
        prompt: Option<&str>,
        cfg: &GenerationConfig,
        mut on_token: impl FnMut(&TokenEvent),
    ) -> Result<Generation> {
        let feats = self.image_features(&[image])?;
        let settings = self.resolve_generation(cfg)?;
        let mut out =
            self.generate_from_features_with(&feats, &[prompt], &settings, &mut on_token)?;
        out.pop()
            .ok_or_else(|| ModelError::Invalid("empty generation batch".into()))
    }

    /// Generation for a batch of images with one prompt each (None = no text), in one
    /// forward per step; prompts of different lengths are padded as HF pads them (left for
    /// decoder-only models, right for encoder-decoder ones). Each row gets the tokens it
    /// would get alone.
    pub fn generate_batch(
        &self,
        images: &[&DynamicImage],
        prompts: &[Option<&str>],
        cfg: &GenerationConfig,
    ) -> Result<Vec<Generation>> {
        if images.len() != prompts.len() || images.is_empty() {
            return Err(ModelError::Invalid(format!(
                "{} images but {} prompts",
                images.len(),
                prompts.len()
            )));
        }
        let feats = self.image_features(images)?;
        self.generate_from_features(&feats, prompts, cfg)
    }

    /// Like [`Blip2::generate`] on precomputed image features (one prompt per image row).
    pub fn generate_from_features(
        &self,
        feats: &ImageFeatures,
        prompts: &[Option<&str>],
        cfg: &GenerationConfig,
    ) -> Result<Vec<Generation>> {
        let settings = self.resolve_generation(cfg)?;
        self.generate_from_features_with(feats, prompts, &settings, &mut |_| {})
    }

    /// The general entry point: precomputed features, one prompt per image row, settings
    /// resolved by [`Blip2::resolve_generation`], and a callback that sees every new token
    /// (`TokenEvent::row` is the prompt's index).
    pub fn generate_from_features_with(
        &self,
        feats: &ImageFeatures,
        prompts: &[Option<&str>],
        settings: &ResolvedGeneration,
        on_token: &mut dyn FnMut(&TokenEvent),
    ) -> Result<Vec<Generation>> {
        self.generate_from_features_cancellable(feats, prompts, settings, on_token, &|| false)
    }

    /// [`Blip2::generate_from_features_with`] that `cancelled` can stop: it is asked before
    /// every decode step, and when it says true the generation ends with
    /// [`ModelError::Cancelled`] (a server stops a batch whose clients have all gone).
    pub fn generate_from_features_cancellable(
        &self,
        feats: &ImageFeatures,
        prompts: &[Option<&str>],
        settings: &ResolvedGeneration,
        on_token: &mut dyn FnMut(&TokenEvent),
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Vec<Generation>> {
        let t = Instant::now();
        let input = self.lm_input(feats, prompts, settings.pad_token_id())?;
        let prefill = self.lm.prefill(input, settings.max_new_tokens())?;
        let prefill_time = t.elapsed();
        let t = Instant::now();
        let mut decoder = prefill.decoder;
        let mut model = Cancellable {
            inner: &mut *decoder,
            cancelled,
        };
        let out = decode(prefill.logits, prefill.seen, settings, &mut model, on_token)?;
        let timings = Timings {
            preprocess: feats.preprocess,
            vision: feats.vision,
            qformer: feats.qformer,
            prefill: prefill_time,
            decode: t.elapsed(),
            decode_tokens: out.steps,
        };
        out.tokens
            .into_iter()
            .zip(out.scores)
            .map(|(toks, score)| {
                Ok(Generation {
                    text: self.tokenizer.decode(&toks, true)?.trim().to_string(),
                    token_ids: toks,
                    score,
                    timings,
                })
            })
            .collect()
    }

    /// Language-model logits for parity tests. Decoder-only: over the whole padded prompt
    /// `[B, L, V]`. Encoder-decoder: decoder logits `[B, L_dec, V]` for `decoder_ids`
    /// (teacher forcing), returned with the encoder output `[B, L, D]`.
    pub fn prompt_logits(
        &self,
        feats: &ImageFeatures,
        prompts: &[Option<&str>],
        decoder_ids: Option<&[Vec<u32>]>,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let input = self.lm_input(feats, prompts, self.pad_id())?;
        self.lm.prompt_logits(input, decoder_ids)
    }

    /// The language model's input for one prompt per image row: ids padded on the model's
    /// side with `pad`, and token embeddings with the `<image>` positions replaced by the
    /// projected query outputs (InstructBLIP: computed here for these prompts, unless none
    /// has text, when `feats.projected` already is that).
    pub(crate) fn lm_input(
        &self,
        feats: &ImageFeatures,
        prompts: &[Option<&str>],
        pad: u32,
    ) -> Result<LmInput> {
        if prompts.len() != feats.projected.dim(0) || prompts.is_empty() {
            return Err(ModelError::Invalid(format!(
                "{} prompts for {} images",
                prompts.len(),
                feats.projected.dim(0)
            )));
        }
        let ids: Vec<Vec<u32>> = prompts
            .iter()
            .map(|p| self.prompt_ids(*p))
            .collect::<Result<_>>()?;
        let image_id = self.image_token_id()?;
        let batch = PaddedBatch::new(&ids, pad, image_id, self.lm.padding_side());
        let instructed;
        let projected = if self.config.is_instructblip() && prompts.iter().any(Option::is_some) {
            let vis = feats.vision_output.as_ref().ok_or_else(|| {
                ModelError::Invalid(
                    "InstructBLIP reads the prompt in its Q-Former and needs the vision output: \
                     build the features with image_features or features_from_reusable"
                        .into(),
                )
            })?;
            instructed = self
                .projection
                .forward(&self.query_outputs(vis, prompts)?)?;
            &instructed
        } else {
            &feats.projected
        };
        let embeds = image_scatter(&batch.rows, image_id, projected, |t| self.lm.embed(t))?;
        Ok(LmInput { embeds, batch })
    }
}
