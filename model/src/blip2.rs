//! The BLIP-2 pipeline: image -> ViT -> Q-Former -> language_projection -> language model
//! -> tokens, with the inputs built exactly as `Blip2Processor` + `generate` build them.

use std::path::Path;
use std::time::{Duration, Instant};

use blip2_engine::{DType, Device, Tensor, ops};
use image::DynamicImage;

use crate::config::{Blip2Config, ImageProcessorConfig, TextConfig};
use crate::generate::{GenerationConfig, greedy_step};
use crate::nn::Linear;
use crate::opt::Opt;
use crate::qformer::QFormer;
use crate::tokenizer::Blip2Tokenizer;
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
    pub timings: Timings,
}

pub enum LanguageModel {
    Opt(Opt),
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
        let image_config = ImageProcessorConfig::from_dir(dir)?;
        let tokenizer = Blip2Tokenizer::from_dir(dir)?;
        let mut ckpt = Checkpoint::open(dir)?;
        if let Some(p) = opts.progress {
            ckpt.set_progress(p);
        }
        let vb = WeightLoader::new(&ckpt, opts.device.clone(), opts.dtype);
        let text = config.text_config.as_ref().ok_or_else(|| {
            ModelError::Unsupported(format!("{}: config.json has no text_config (a retrieval-only checkpoint cannot generate text)", dir.display()))
        })?;
        let vision = VisionModel::load(&vb.pp("vision_model"), &config.vision_config);
        let qformer = QFormer::load(&vb, &config.qformer_config, config.num_query_tokens, false);
        let (lm, lm_dim) = match text {
            TextConfig::Opt(c) => (LanguageModel::Opt(Opt::load(&vb.pp("language_model"), c)?), c.hidden_size),
            TextConfig::T5(_) => {
                return Err(ModelError::Unsupported(
                    "Flan-T5 language models are not implemented yet (OPT checkpoints are)".into(),
                ));
            }
        };
        let projection = Linear::load(&vb.pp("language_projection"), config.qformer_config.hidden_size, lm_dim, true);
        vb.finish()?;
        Ok(Blip2 {
            config,
            image_config,
            tokenizer,
            device: opts.device,
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

    /// The stages up to the language model, for parity checks: (pixel_values, vision
    /// last_hidden_state, Q-Former last_hidden_state, projection output).
    pub fn stages(&self, images: &[&DynamicImage]) -> Result<[Tensor; 4]> {
        let pixels = preprocess::pixel_values(images, &self.image_config, &self.device)?;
        let vis = self.vision.forward(&pixels)?;
        let q = self.qformer.forward(&vis)?;
        let p = self.projection.forward(&q)?;
        Ok([pixels, vis, q, p])
    }

    /// Prompt ids as `Blip2Processor` builds them: `<image>` × Q, then the tokenized text
    /// (BOS first for OPT); without text, `<image>` × Q + BOS as HF `generate` does.
    pub fn prompt_ids(&self, prompt: Option<&str>) -> Result<Vec<u32>> {
        let image_id = self.image_token_id()?;
        self.tokenizer.encode_prompt(prompt, self.config.num_query_tokens, image_id)
    }

    fn image_token_id(&self) -> Result<u32> {
        match self.config.image_token_index {
            Some(i) => Ok(i),
            None => self.tokenizer.token_id("<image>").ok_or_else(|| {
                ModelError::Unsupported("config has no image_token_index and the tokenizer has no <image> token".into())
            }),
        }
    }

    fn eos_ids(&self, cfg: &GenerationConfig) -> Vec<u32> {
        if let Some(e) = &cfg.eos_token_ids {
            return e.clone();
        }
        match &self.config.text_config {
            Some(TextConfig::Opt(c)) => vec![c.eos_token_id],
            Some(TextConfig::T5(c)) => vec![c.eos_token_id],
            None => vec![],
        }
    }

    fn pad_id(&self) -> u32 {
        match &self.config.text_config {
            Some(TextConfig::Opt(c)) => c.pad_token_id,
            Some(TextConfig::T5(c)) => c.pad_token_id,
            None => 0,
        }
    }

    /// Language-model input embeddings `[B, L, D]` for left-padded `ids` rows: token
    /// embeddings, with each row's `<image>` positions replaced (in order) by that row's
    /// projected query outputs, as HF's masked_scatter does.
    fn input_embeds(&self, opt: &Opt, rows: &[Vec<u32>], projected: &Tensor) -> Result<Tensor> {
        let image_id = self.image_token_id()?;
        let q = projected.dim(1);
        let mut per_row = Vec::with_capacity(rows.len());
        for (b, ids) in rows.iter().enumerate() {
            let img = ops::narrow(projected, 0, b, 1)?.reshape(&[q, projected.dim(2)])?;
            let mut parts = Vec::new();
            let (mut i, mut used) = (0, 0);
            while i < ids.len() {
                let is_img = ids[i] == image_id;
                let mut j = i;
                while j < ids.len() && (ids[j] == image_id) == is_img {
                    j += 1;
                }
                if is_img {
                    if used + (j - i) > q {
                        return Err(ModelError::Prompt(format!("row {b} has more than {q} <image> tokens")));
                    }
                    parts.push(ops::narrow(&img, 0, used, j - i)?);
                    used += j - i;
                } else {
                    parts.push(opt.embed(&ids[i..j])?);
                }
                i = j;
            }
            if used != q {
                return Err(ModelError::Prompt(format!("row {b} has {used} <image> tokens, the model has {q} queries")));
            }
            let refs: Vec<&Tensor> = parts.iter().collect();
            let row = ops::concat(&refs, 0)?;
            per_row.push(row.reshape(&[1, ids.len(), row.dim(1)])?);
        }
        let refs: Vec<&Tensor> = per_row.iter().collect();
        Ok(ops::concat(&refs, 0)?)
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

    /// Generates text for one image; `prompt` is passed verbatim as the processor's text.
    pub fn generate(&self, image: &DynamicImage, prompt: Option<&str>, cfg: &GenerationConfig) -> Result<Generation> {
        let mut out = self.generate_batch(&[image], &[prompt], cfg)?;
        out.pop().ok_or_else(|| ModelError::Invalid("empty generation batch".into()))
    }

    /// Generation for a batch of images with one prompt each (None = no text), in one
    /// forward per step; prompts of different lengths are left-padded as HF pads them.
    pub fn generate_batch(&self, images: &[&DynamicImage], prompts: &[Option<&str>], cfg: &GenerationConfig) -> Result<Vec<Generation>> {
        if images.len() != prompts.len() || images.is_empty() {
            return Err(ModelError::Prompt(format!("{} images but {} prompts", images.len(), prompts.len())));
        }
        let feats = self.image_features(images)?;
        self.generate_from_features(&feats, prompts, cfg)
    }

    /// Like [`Blip2::generate`] on precomputed image features (one prompt per image row).
    pub fn generate_from_features(&self, feats: &ImageFeatures, prompts: &[Option<&str>], cfg: &GenerationConfig) -> Result<Vec<Generation>> {
        cfg.validate()?;
        if prompts.len() != feats.projected.dim(0) {
            return Err(ModelError::Prompt(format!("{} prompts for {} images", prompts.len(), feats.projected.dim(0))));
        }
        let ids: Vec<Vec<u32>> = prompts.iter().map(|p| self.prompt_ids(*p)).collect::<Result<_>>()?;
        let LanguageModel::Opt(opt) = &self.lm;
        let run = self.decode_opt(opt, &feats.projected, &ids, cfg)?;
        run.new_tokens
            .into_iter()
            .map(|toks| {
                Ok(Generation {
                    text: self.tokenizer.decode(&toks, true)?.trim().to_string(),
                    token_ids: toks,
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

    /// Prompt logits `[B, L, V]` for parity tests: the whole (left-padded) prompt in one pass.
    pub fn prompt_logits(&self, feats: &ImageFeatures, prompts: &[Option<&str>]) -> Result<Tensor> {
        let ids: Vec<Vec<u32>> = prompts.iter().map(|p| self.prompt_ids(*p)).collect::<Result<_>>()?;
        let LanguageModel::Opt(opt) = &self.lm;
        let batch = PaddedBatch::new(&ids, self.pad_id());
        let embeds = self.input_embeds(opt, &batch.rows, &feats.projected)?;
        let mut cache = opt.new_cache(ids.len(), batch.len, &self.device)?;
        let mask = batch.mask_tensor(&self.device)?;
        let h = opt.forward(&embeds, &batch.positions(), mask.as_ref(), &mut cache)?;
        Ok(opt.logits(&h)?)
    }

    fn decode_opt(&self, opt: &Opt, projected: &Tensor, ids: &[Vec<u32>], cfg: &GenerationConfig) -> Result<DecodeRun> {
        let eos = self.eos_ids(cfg);
        let pad = self.pad_id();
        let b = ids.len();
        let mut batch = PaddedBatch::new(ids, pad);
        let capacity = batch.len + cfg.max_new_tokens;
        if capacity > opt.max_positions {
            return Err(ModelError::Prompt(format!(
                "prompt of {} tokens + {} new tokens exceeds the model's {} positions",
                batch.len, cfg.max_new_tokens, opt.max_positions
            )));
        }
        let t = Instant::now();
        let embeds = self.input_embeds(opt, &batch.rows, projected)?;
        let mut cache = opt.new_cache(b, capacity, &self.device)?;
        let mask = batch.mask_tensor(&self.device)?;
        let h = opt.forward(&embeds, &batch.positions(), mask.as_ref(), &mut cache)?;
        let last = ops::narrow(&h, 1, batch.len - 1, 1)?;
        let mut logits = opt.logits(&last)?.to_vec_f32()?;
        let prefill = t.elapsed();
        let t = Instant::now();
        let vocab = opt.vocab;
        let mut new_tokens = vec![Vec::new(); b];
        let mut done = vec![false; b];
        let mut steps = 0;
        for step in 0..cfg.max_new_tokens {
            let mut next = Vec::with_capacity(b);
            for r in 0..b {
                let tok = if done[r] {
                    pad
                } else {
                    let row = &mut logits[r * vocab..(r + 1) * vocab];
                    let tok = greedy_step(row, &batch.rows[r], step, cfg, &eos);
                    new_tokens[r].push(tok);
                    done[r] = eos.contains(&tok);
                    tok
                };
                next.push(tok);
            }
            // HF appends the token (pad for finished rows) and a 1 to the attention mask.
            batch.push(&next);
            if done.iter().all(|&d| d) || step + 1 == cfg.max_new_tokens {
                break;
            }
            let embeds = opt.embed(&next)?.reshape(&[b, 1, opt.hidden])?;
            let mask = batch.mask_tensor(&self.device)?;
            let h = opt.forward(&embeds, &batch.last_positions(), mask.as_ref(), &mut cache)?;
            logits = opt.logits(&h)?.to_vec_f32()?;
            steps += 1;
        }
        Ok(DecodeRun {
            new_tokens,
            prefill,
            decode: t.elapsed(),
            steps,
        })
    }
}

struct DecodeRun {
    new_tokens: Vec<Vec<u32>>,
    prefill: Duration,
    decode: Duration,
    steps: usize,
}

/// Left-padded id rows and their attention mask (1 = real token), as the processor pads
/// for decoder-only generation.
struct PaddedBatch {
    rows: Vec<Vec<u32>>,
    mask: Vec<Vec<u8>>,
    len: usize,
}

impl PaddedBatch {
    fn new(ids: &[Vec<u32>], pad: u32) -> PaddedBatch {
        let len = ids.iter().map(Vec::len).max().unwrap_or(0);
        let rows = ids
            .iter()
            .map(|r| std::iter::repeat_n(pad, len - r.len()).chain(r.iter().copied()).collect())
            .collect();
        let mask = ids
            .iter()
            .map(|r| std::iter::repeat_n(0u8, len - r.len()).chain(std::iter::repeat_n(1u8, r.len())).collect())
            .collect();
        PaddedBatch { rows, mask, len }
    }

    fn push(&mut self, next: &[u32]) {
        for (r, &t) in next.iter().enumerate() {
            self.rows[r].push(t);
            self.mask[r].push(1);
        }
        self.len += 1;
    }

    /// HF's position ids: cumsum(mask)·mask − 1 (padding gets −1).
    fn positions(&self) -> Vec<i64> {
        self.mask
            .iter()
            .flat_map(|m| {
                let mut c = 0i64;
                m.iter()
                    .map(move |&v| {
                        c += v as i64;
                        if v == 1 { c - 1 } else { -1 }
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Position ids of the last column only (one decode step).
    fn last_positions(&self) -> Vec<i64> {
        self.mask
            .iter()
            .map(|m| m.iter().map(|&v| v as i64).sum::<i64>() - 1)
            .collect()
    }

    /// Additive `[B, 1, len]` mask, or None when nothing is padded.
    fn mask_tensor(&self, device: &Device) -> Result<Option<Tensor>> {
        if self.mask.iter().all(|m| m.iter().all(|&v| v == 1)) {
            return Ok(None);
        }
        let data: Vec<f32> = self
            .mask
            .iter()
            .flat_map(|m| m.iter().map(|&v| if v == 1 { 0.0 } else { f32::MIN }))
            .collect();
        Ok(Some(Tensor::from_f32(data, &[self.mask.len(), 1, self.len], device)?))
    }
}
