//! The BLIP-2 pipeline: image -> ViT -> Q-Former -> language_projection -> language model
//! -> tokens, with the inputs built exactly as `Blip2Processor` + `generate` build them.

use std::path::Path;
use std::time::{Duration, Instant};

use blip2_engine::{DType, Device, Tensor, ops};
use image::DynamicImage;

use crate::chat::Chat;
use crate::config::{Blip2Config, ImageProcessorConfig, ProcessorConfig, TextConfig};
use crate::generate::{
    DecodeModel, GenerationConfig, GenerationDefaults, ResolvedGeneration, TokenEvent, decode,
};
use crate::inputs::{PaddedBatch, image_scatter};
use crate::nn::Linear;
use crate::opt::KvCache;
use crate::opt::Opt;
use crate::qformer::QFormer;
use crate::t5::T5;
use crate::t5::T5DecoderCache;
use crate::tokenizer::{Blip2Tokenizer, PaddingSide};
use crate::vision::VisionModel;
use crate::weights::{Checkpoint, WeightLoader};
use crate::{ModelError, Result, preprocess};

/// How to load a checkpoint.
pub struct LoadOptions {
    pub device: Device,
    /// Storage dtype of weight matrices (activations stay f32).
    pub dtype: DType,
    /// Called with (bytes loaded, bytes total) while weights are read.
    pub progress: Option<Box<dyn Fn(u64, u64) + Send + Sync>>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            device: Device::Cpu,
            dtype: DType::F32,
            progress: None,
        }
    }
}

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

pub enum LanguageModel {
    Opt(Opt),
    T5(T5),
}

/// A loaded BLIP-2 checkpoint on a device.
pub struct Blip2 {
    pub config: Blip2Config,
    pub image_config: ImageProcessorConfig,
    pub tokenizer: Blip2Tokenizer,
    device: Device,
    vision: VisionModel,
    qformer: QFormer,
    projection: Linear,
    lm: LanguageModel,
    pub load_time: Duration,
}

/// Query features of a batch of images, computed once and reusable across prompts.
pub struct ImageFeatures {
    /// language_projection output `[B, Q, D_lm]`.
    pub projected: Tensor,
    pub preprocess: Duration,
    pub vision: Duration,
    pub qformer: Duration,
}

impl Blip2 {
    /// Loads a Hugging Face BLIP-2 checkpoint directory (config.json, safetensors, tokenizer,
    /// processor config).
    pub fn load(dir: impl AsRef<Path>, opts: LoadOptions) -> Result<Blip2> {
        let t0 = Instant::now();
        let dir = dir.as_ref();
        let config = Blip2Config::from_dir(dir)?;
        let image_config = ProcessorConfig::from_dir(dir)?.image;
        let tokenizer = Blip2Tokenizer::from_dir(dir)?;
        let ckpt = Checkpoint::open(dir)?;
        let mut vb = WeightLoader::new(&ckpt, &opts.device, opts.dtype);
        if let Some(p) = opts.progress {
            vb = vb.with_progress(p);
        }
        let mut model = Self::from_loader(config, image_config, tokenizer, &vb)?;
        model.load_time = t0.elapsed();
        Ok(model)
    }

    /// Builds the model from the weights `vb` provides (a checkpoint, or random weights for
    /// benchmarks); fails with one error listing every missing or mismatched tensor.
    pub fn from_loader(
        config: Blip2Config,
        image_config: ImageProcessorConfig,
        tokenizer: Blip2Tokenizer,
        vb: &WeightLoader,
    ) -> Result<Blip2> {
        let t0 = Instant::now();
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
        let vision = VisionModel::load(&vb.pp("vision_model"), &config.vision_config)?;
        let qformer = QFormer::load(vb, &config.qformer_config, config.num_query_tokens, false)?;
        let (lm, lm_dim) = match text {
            TextConfig::Opt(c) => (
                LanguageModel::Opt(Opt::load(&vb.pp("language_model"), c)?),
                c.hidden_size,
            ),
            TextConfig::T5(c) => (
                LanguageModel::T5(T5::load(&vb.pp("language_model"), c)?),
                c.d_model,
            ),
        };
        let projection = Linear::load(
            &vb.pp("language_projection"),
            config.qformer_config.hidden_size,
            lm_dim,
            true,
        );
        vb.finish()?;
        Ok(Blip2 {
            config,
            image_config,
            tokenizer,
            device: vb.device().clone(),
            vision,
            qformer,
            projection,
            lm,
            load_time: t0.elapsed(),
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Preprocesses the images and runs ViT, Q-Former and the projection.
    pub fn image_features(&self, images: &[&DynamicImage]) -> Result<ImageFeatures> {
        let t = Instant::now();
        let pixels = preprocess::pixel_values(images, &self.image_config, &self.device)?;
        let preprocess = t.elapsed();
        let t = Instant::now();
        let vis = self.vision.forward(&pixels)?;
        self.device.synchronize()?;
        let vision = t.elapsed();
        let t = Instant::now();
        let q = self.qformer.forward(&vis)?;
        let projected = self.projection.forward(&q)?;
        self.device.synchronize()?;
        Ok(ImageFeatures {
            projected,
            preprocess,
            vision,
            qformer: t.elapsed(),
        })
    }

    /// The stages up to the language model on given pixel values, for parity checks:
    /// [vision last_hidden_state, Q-Former last_hidden_state, projection output].
    pub fn stages(&self, pixels: &Tensor) -> Result<[Tensor; 3]> {
        let vis = self.vision.forward(pixels)?;
        let q = self.qformer.forward(&vis)?;
        let p = self.projection.forward(&q)?;
        Ok([vis, q, p])
    }

    /// Features from an already computed projection output `[B, Q, D_lm]` (no timings).
    pub fn features_from_projected(&self, projected: Tensor) -> ImageFeatures {
        ImageFeatures {
            projected,
            preprocess: Duration::ZERO,
            vision: Duration::ZERO,
            qformer: Duration::ZERO,
        }
    }

    /// Prompt ids as `Blip2Processor` builds them: `<image>` × Q, then the tokenized text
    /// (BOS first for OPT); without text, `<image>` × Q + BOS as HF `generate` does.
    pub fn prompt_ids(&self, prompt: Option<&str>) -> Result<Vec<u32>> {
        let image_id = self.image_token_id()?;
        let start = match &self.config.text_config {
            Some(t) => t.bos_token_id(),
            None => self.tokenizer.start_token_id()?,
        };
        self.tokenizer.encode_prompt_with_start(
            prompt,
            self.config.num_query_tokens,
            image_id,
            start,
        )
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
        let prompt = format!("Question: {} Answer:", question.trim());
        self.generate(image, Some(&prompt), &GenerationConfig::default())
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
    /// OPT, right for T5). Each row gets the tokens it would get alone.
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
        let run = match &self.lm {
            LanguageModel::Opt(opt) => {
                self.decode_opt(opt, &feats.projected, &ids, settings, on_token)?
            }
            LanguageModel::T5(t5) => {
                self.decode_t5(t5, &feats.projected, &ids, settings, on_token)?
            }
        };
        run.tokens
            .into_iter()
            .zip(run.scores)
            .map(|(toks, score)| {
                Ok(Generation {
                    text: self.tokenizer.decode(&toks, true)?.trim().to_string(),
                    token_ids: toks,
                    score,
                    timings: Timings {
                        preprocess: feats.preprocess,
                        vision: feats.vision,
                        qformer: feats.qformer,
                        prefill: run.prefill,
                        decode: run.decode,
                        decode_tokens: run.steps,
                    },
                })
            })
            .collect()
    }

    /// Language-model logits for parity tests. OPT: over the whole padded prompt `[B, L, V]`.
    /// T5: decoder logits `[B, L_dec, V]` for `decoder_ids` (teacher forcing), returned with
    /// the encoder output `[B, L, D]`.
    pub fn prompt_logits(
        &self,
        feats: &ImageFeatures,
        prompts: &[Option<&str>],
        decoder_ids: Option<&[Vec<u32>]>,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let ids: Vec<Vec<u32>> = prompts
            .iter()
            .map(|p| self.prompt_ids(*p))
            .collect::<Result<_>>()?;
        let batch = PaddedBatch::new(
            &ids,
            self.pad_id(),
            self.image_token_id()?,
            self.padding_side(),
        );
        let mask = batch.mask_tensor(&self.device)?;
        match &self.lm {
            LanguageModel::Opt(opt) => {
                let embeds =
                    image_scatter(&batch.rows, self.image_token_id()?, &feats.projected, |t| {
                        opt.embed(t)
                    })?;
                let mut cache = opt.new_cache(ids.len(), batch.len, &self.device)?;
                let h = opt.forward(&embeds, &batch.positions(), mask.as_ref(), &mut cache)?;
                Ok((opt.logits(&h)?, None))
            }
            LanguageModel::T5(t5) => {
                let embeds =
                    image_scatter(&batch.rows, self.image_token_id()?, &feats.projected, |t| {
                        t5.embed(t)
                    })?;
                let enc = t5.encode(&embeds, mask.as_ref())?;
                let dec = decoder_ids
                    .ok_or_else(|| ModelError::Invalid("T5 logits need decoder ids".into()))?;
                let l = dec.first().map_or(0, Vec::len);
                if dec.len() != ids.len() || dec.iter().any(|r| r.len() != l) || l == 0 {
                    return Err(ModelError::Invalid(
                        "decoder ids must be one non-empty row of equal length per prompt".into(),
                    ));
                }
                let mut cache = t5.new_decoder_cache(&enc, mask.as_ref(), l)?;
                let flat: Vec<u32> = dec.concat();
                let emb = t5.embed(&flat)?.reshape(&[dec.len(), l, t5.d_model])?;
                Ok((t5.decode(&emb, &mut cache)?, Some(enc)))
            }
        }
    }

    /// Padding side of the processor for this language model: left for decoder-only
    /// generation, right (the tokenizer default) for encoder-decoder models.
    fn padding_side(&self) -> PaddingSide {
        match self.lm {
            LanguageModel::Opt(_) => PaddingSide::Left,
            LanguageModel::T5(_) => PaddingSide::Right,
        }
    }

    fn decode_opt(
        &self,
        opt: &Opt,
        projected: &Tensor,
        ids: &[Vec<u32>],
        settings: &ResolvedGeneration,
        on_token: &mut dyn FnMut(&TokenEvent),
    ) -> Result<DecodeRun> {
        let b = ids.len();
        let batch = PaddedBatch::new(
            ids,
            settings.pad_token_id(),
            self.image_token_id()?,
            PaddingSide::Left,
        );
        let capacity = batch.len.saturating_add(settings.max_new_tokens());
        if capacity > opt.max_positions {
            return Err(ModelError::Invalid(format!(
                "prompt of {} tokens + {} new tokens exceeds the model's {} positions",
                batch.len,
                settings.max_new_tokens(),
                opt.max_positions
            )));
        }
        let t = Instant::now();
        let embeds = image_scatter(&batch.rows, self.image_token_id()?, projected, |t| {
            opt.embed(t)
        })?;
        let mut cache = opt.new_cache(b, capacity, &self.device)?;
        let mask = batch.mask_tensor(&self.device)?;
        let h = opt.forward(&embeds, &batch.positions(), mask.as_ref(), &mut cache)?;
        let last = ops::narrow(&h, 1, batch.len - 1, 1)?;
        let logits = opt.logits(&last)?.to_vec_f32()?;
        let prefill = t.elapsed();
        let t = Instant::now();
        // Penalties see every input id, image and padding ids included, as HF's do.
        let seen = batch.rows.clone();
        let mut state = OptDecoder {
            opt,
            cache,
            batch,
            device: &self.device,
        };
        run_decode(logits, seen, settings, &mut state, on_token, prefill, t)
    }

    fn decode_t5(
        &self,
        t5: &T5,
        projected: &Tensor,
        ids: &[Vec<u32>],
        settings: &ResolvedGeneration,
        on_token: &mut dyn FnMut(&TokenEvent),
    ) -> Result<DecodeRun> {
        let b = ids.len();
        let batch = PaddedBatch::new(
            ids,
            settings.pad_token_id(),
            self.image_token_id()?,
            PaddingSide::Right,
        );
        let start = match &self.config.text_config {
            Some(TextConfig::T5(c)) => c.decoder_start_token_id,
            _ => 0,
        };
        let t = Instant::now();
        let embeds = image_scatter(&batch.rows, self.image_token_id()?, projected, |t| {
            t5.embed(t)
        })?;
        let mask = batch.mask_tensor(&self.device)?;
        let enc = t5.encode(&embeds, mask.as_ref())?;
        // The decoder cache holds the start token and every new token.
        let cache = t5.new_decoder_cache(
            &enc,
            mask.as_ref(),
            settings.max_new_tokens().saturating_add(1),
        )?;
        let mut state = T5Decoder { t5, cache };
        let first = vec![start; b];
        let logits = state.step(&first)?;
        let prefill = t.elapsed();
        let t = Instant::now();
        // For encoder-decoder models HF's penalties see the decoder ids only.
        let seen = vec![vec![start]; b];
        run_decode(logits, seen, settings, &mut state, on_token, prefill, t)
    }
}

/// The decoding loop after the prefill, timed from `t`.
fn run_decode(
    logits: Vec<f32>,
    seen: Vec<Vec<u32>>,
    settings: &ResolvedGeneration,
    state: &mut dyn DecodeModel,
    on_token: &mut dyn FnMut(&TokenEvent),
    prefill: Duration,
    t: Instant,
) -> Result<DecodeRun> {
    let out = decode(logits, seen, settings, state, on_token)?;
    Ok(DecodeRun {
        tokens: out.tokens,
        scores: out.scores,
        prefill,
        decode: t.elapsed(),
        steps: out.steps,
    })
}

struct DecodeRun {
    tokens: Vec<Vec<u32>>,
    scores: Vec<Option<f32>>,
    prefill: Duration,
    decode: Duration,
    steps: usize,
}

/// OPT decoding state: the KV cache and the growing padded id rows (mask and positions).
struct OptDecoder<'a> {
    opt: &'a Opt,
    cache: KvCache,
    batch: PaddedBatch,
    device: &'a Device,
}

impl DecodeModel for OptDecoder<'_> {
    fn vocab(&self) -> usize {
        self.opt.vocab
    }

    fn select_rows(&mut self, src: &[usize]) -> Result<()> {
        self.cache.select_rows(src)?;
        self.batch.select_rows(src);
        Ok(())
    }

    fn step(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        // HF appends the token and a 1 to the attention mask.
        self.batch.push(tokens);
        let embeds = self
            .opt
            .embed(tokens)?
            .reshape(&[tokens.len(), 1, self.opt.hidden])?;
        let mask = self.batch.mask_tensor(self.device)?;
        let h = self.opt.forward(
            &embeds,
            &self.batch.last_positions(),
            mask.as_ref(),
            &mut self.cache,
        )?;
        Ok(self.opt.logits(&h)?.to_vec_f32()?)
    }
}

/// T5 decoding state: self-attention cache and cross-attention K/V.
struct T5Decoder<'a> {
    t5: &'a T5,
    cache: T5DecoderCache,
}

impl DecodeModel for T5Decoder<'_> {
    fn vocab(&self) -> usize {
        self.t5.vocab
    }

    fn select_rows(&mut self, src: &[usize]) -> Result<()> {
        Ok(self.cache.select_rows(src)?)
    }

    fn step(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        let embeds = self
            .t5
            .embed(tokens)?
            .reshape(&[tokens.len(), 1, self.t5.d_model])?;
        Ok(self.t5.decode(&embeds, &mut self.cache)?.to_vec_f32()?)
    }
}
