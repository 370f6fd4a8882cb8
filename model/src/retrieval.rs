//! Blip2ForImageTextRetrieval: the first-stage heads of BLIP-2 on the Q-Former.
//!
//! - ITM (image-text matching): the Q-Former runs on `[queries ; text]` with the additive mask
//!   `[ones(Q) ; text_mask]`; the query rows cross-attend the image, the text rows skip
//!   cross-attention and use the text FFN. `itm_head` on the Q query rows, averaged over the
//!   queries, gives two logits; softmax(..)[1] is the match probability.
//! - ITC (contrastive similarity): the image embedding is normalize(vision_projection(query
//!   output)) `[Q, d]`, the text embedding normalize(text_projection([CLS] of the text-only
//!   Q-Former)) `[d]`; the similarity is the largest of the Q cosines. No temperature.
//!
//! Text input is exactly what HF's model embeds: the WordPiece ids `[CLS] ... [SEP]`
//! (positions 0..L). When `image_token_index` is set, `Blip2Processor` also prepends Q
//! `<image>` ids and the model drops them again, so they never reach the Q-Former either way.
//!
//! Batches of texts are right-padded: padding is masked as keys and positions start at 0
//! for every row, so a text scores the same alone or in a batch, and [CLS] is row 0.
//! The small final steps (head mean, softmax, normalisation, dot products) run on the host.

use std::cmp::Ordering;
use std::path::Path;
use std::time::Duration;

use blip2_engine::{DType, Device, Tensor, ops};
use image::DynamicImage;
use serde::Serialize;

use crate::config::Blip2Config;
use crate::image_encoder::ImageEncoder;
use crate::loading::{self, LoadOptions, ModelFiles, Source};
use crate::nn::{Linear, repeat_batch};
use crate::tokenizer::{BatchEncoding, Blip2Tokenizer, PaddingSide};
use crate::weights::{WeightLoader, WeightStats};
use crate::{ModelError, Result};

/// Texts per Q-Former pass. ITM repeats the image's vision features once per text
/// (`[B, 257, 1408]` f32 is 1.4 MB per text on the hub model), so very long lists are cut
/// into passes of this many texts to bound memory.
pub const MAX_TEXTS_PER_PASS: usize = 64;

/// Weights only a retrieval checkpoint has; their absence identifies a captioning checkpoint.
const HEAD_WEIGHTS: [&str; 4] = [
    "itm_head.weight",
    "vision_projection.weight",
    "text_projection.weight",
    "embeddings.word_embeddings.weight",
];

/// Both scores of one (image, text) pair.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct MatchScore {
    /// ITM match probability, softmax(itm logits)[1], in [0, 1].
    pub itm: f32,
    /// ITC similarity: max over the queries of the cosine, in [-1, 1].
    pub itc: f32,
}

/// One text of [`Blip2Retrieval::rank`]: its index in the input and its scores.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct RankedText {
    pub index: usize,
    pub score: MatchScore,
}

/// One image of [`Blip2Retrieval::search`]: its index in the input and its ITC similarity.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct SearchHit {
    pub index: usize,
    pub similarity: f32,
}

/// Normalised ITC embedding of one image: one unit row per query, `[num_query, dim]`
/// row-major. Store these to search images by text without rerunning the vision model.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ImageEmbedding {
    data: Vec<f32>,
    num_query: usize,
}

impl ImageEmbedding {
    /// Wraps `data` `[num_query, dim]` row-major (e.g. embeddings saved earlier).
    pub fn new(data: Vec<f32>, num_query: usize) -> Result<ImageEmbedding> {
        if num_query == 0 || data.is_empty() || !data.len().is_multiple_of(num_query) {
            return Err(ModelError::Invalid(format!(
                "image embedding of {} values cannot be {num_query} equal non-empty rows",
                data.len()
            )));
        }
        Ok(ImageEmbedding { data, num_query })
    }
    pub fn num_query(&self) -> usize {
        self.num_query
    }
    pub fn dim(&self) -> usize {
        self.data.len() / self.num_query
    }
    /// All rows, `[num_query, dim]` row-major.
    pub fn as_slice(&self) -> &[f32] {
        &self.data
    }
    /// The embedding of query `q`.
    pub fn row(&self, q: usize) -> &[f32] {
        let d = self.dim();
        &self.data[q * d..(q + 1) * d]
    }
    pub fn into_vec(self) -> Vec<f32> {
        self.data
    }

    /// ITC similarity with a text: the largest dot product over the query rows.
    pub fn similarity(&self, text: &TextEmbedding) -> Result<f32> {
        if text.dim() != self.dim() {
            return Err(ModelError::Invalid(format!(
                "text embedding of dimension {} against image embedding of dimension {}",
                text.dim(),
                self.dim()
            )));
        }
        Ok(self
            .data
            .chunks_exact(self.dim())
            .map(|row| dot(row, text.as_slice()))
            .fold(f32::NEG_INFINITY, f32::max))
    }
}

/// Normalised ITC embedding of one text, `[dim]`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TextEmbedding {
    data: Vec<f32>,
}

impl TextEmbedding {
    /// Wraps a saved embedding (taken as given, not renormalised).
    pub fn new(data: Vec<f32>) -> Result<TextEmbedding> {
        if data.is_empty() {
            return Err(ModelError::Invalid("empty text embedding".into()));
        }
        Ok(TextEmbedding { data })
    }
    pub fn dim(&self) -> usize {
        self.data.len()
    }
    pub fn as_slice(&self) -> &[f32] {
        &self.data
    }
    pub fn into_vec(self) -> Vec<f32> {
        self.data
    }
}

/// softmax(logits)[1] of the two ITM logits [no match, match].
pub fn itm_probability(logits: [f32; 2]) -> f32 {
    // 1 / (1 + e^(l0 - l1)) is the two-class softmax without overflow for large gaps.
    1.0 / (1.0 + (logits[0] - logits[1]).exp())
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// torch.nn.functional.normalize: x / max(||x||, 1e-12).
fn normalize(v: &mut [f32]) {
    let n = v
        .iter()
        .map(|&x| (x as f64) * (x as f64))
        .sum::<f64>()
        .sqrt()
        .max(1e-12);
    for x in v {
        *x = (*x as f64 / n) as f32;
    }
}

/// Descending by `key`; NaN sorts last, equal keys keep input order.
fn sort_desc<T>(items: &mut [T], key: impl Fn(&T) -> (f32, f32)) {
    items.sort_by(|a, b| {
        let (a1, a2) = key(a);
        let (b1, b2) = key(b);
        let c = |x: f32, y: f32| match (x.is_nan(), y.is_nan()) {
            (true, true) => Ordering::Equal,
            (true, false) => Ordering::Greater,
            (false, true) => Ordering::Less,
            (false, false) => y.total_cmp(&x),
        };
        c(a1, b1).then_with(|| c(a2, b2))
    });
}

/// A loaded `Blip2ForImageTextRetrieval` checkpoint (e.g. Salesforce/blip2-itm-vit-g).
pub struct Blip2Retrieval {
    pub config: Blip2Config,
    pub tokenizer: Blip2Tokenizer,
    image: ImageEncoder,
    /// Blip2TextEmbeddings: `[V, D]` and `[P, D]`.
    word_embeddings: Tensor,
    position_embeddings: Tensor,
    vision_projection: Linear,
    text_projection: Linear,
    itm_head: Linear,
    pub load_time: Duration,
    weight_stats: WeightStats,
}

impl Blip2Retrieval {
    /// Loads a Hugging Face retrieval checkpoint directory (config.json, safetensors,
    /// tokenizer.json, processor config). A captioning checkpoint (no `itm_head`,
    /// projections or Q-Former word embeddings) is refused with
    /// [`ModelError::Unsupported`] saying that it has no retrieval heads.
    pub fn load(dir: impl AsRef<Path>, opts: LoadOptions) -> Result<Blip2Retrieval> {
        Self::load_from(Source::Dir(dir.as_ref()), opts)
    }

    /// Loads from any [`Source`] (see [`Blip2Retrieval::load`]).
    pub fn load_from(source: Source, opts: LoadOptions) -> Result<Blip2Retrieval> {
        let (mut model, took, stats) = loading::load(source, opts, Self::build)?;
        model.load_time = took;
        model.weight_stats = stats;
        Ok(model)
    }

    pub(crate) fn build(files: ModelFiles, vb: &WeightLoader) -> Result<Blip2Retrieval> {
        let ModelFiles {
            config,
            image_config,
            tokenizer,
            ..
        } = files;
        let ckpt = vb.checkpoint();
        let missing: Vec<&str> = HEAD_WEIGHTS
            .iter()
            .copied()
            .filter(|n| !ckpt.contains(n))
            .collect();
        if !missing.is_empty() {
            return Err(ModelError::Unsupported(format!(
                "{}: this checkpoint has no retrieval heads (missing {}; architectures {:?}): image-text \
                 matching needs a Blip2ForImageTextRetrieval checkpoint such as Salesforce/blip2-itm-vit-g",
                ckpt.path().display(),
                missing.join(", "),
                config.architectures
            )));
        }
        let qc = &config.qformer_config;
        let d = qc.hidden_size;
        let e = config.image_text_hidden_size;
        let emb = vb.pp("embeddings");
        Ok(Blip2Retrieval {
            image: ImageEncoder::load(vb, &config, image_config, true)?,
            word_embeddings: emb.get("word_embeddings.weight", &[qc.vocab_size, d]),
            position_embeddings: emb.get(
                "position_embeddings.weight",
                &[qc.max_position_embeddings, d],
            ),
            vision_projection: Linear::load(&vb.pp("vision_projection"), d, e, true),
            text_projection: Linear::load(&vb.pp("text_projection"), d, e, true),
            itm_head: Linear::load(&vb.pp("itm_head"), d, 2, true),
            tokenizer,
            load_time: Duration::ZERO,
            weight_stats: WeightStats::default(),
            config,
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
    pub fn num_query_tokens(&self) -> usize {
        self.config.num_query_tokens
    }
    /// Dimension of the ITC embeddings (`image_text_hidden_size`, 256 on the hub).
    pub fn embed_dim(&self) -> usize {
        self.config.image_text_hidden_size
    }

    // ---- high-level API -------------------------------------------------------------

    /// ITM probability and ITC similarity of one (image, text) pair.
    pub fn match_score(&self, image: &DynamicImage, text: &str) -> Result<MatchScore> {
        let mut v = self.match_scores(image, &[text])?;
        v.pop()
            .ok_or_else(|| ModelError::Invalid("no score computed".into()))
    }

    /// Scores of each text against one image, in input order. The vision model and the
    /// query-only Q-Former run once; ITM and text-only ITC each run one padded Q-Former
    /// pass per [`MAX_TEXTS_PER_PASS`] texts.
    pub fn match_scores<S: AsRef<str>>(
        &self,
        image: &DynamicImage,
        texts: &[S],
    ) -> Result<Vec<MatchScore>> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let vis = self.vision_features(&self.pixel_values(&[image])?)?;
        let img = self
            .image_embeddings_from_vision(&vis)?
            .pop()
            .ok_or_else(|| ModelError::Invalid("no image embedding".into()))?;
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(MAX_TEXTS_PER_PASS) {
            let enc = self.tokenize(chunk)?;
            let logits = self.itm_logits(&vis, &enc)?;
            let txt = self.text_embeddings_from_tokens(&enc)?;
            for (l, t) in logits.into_iter().zip(&txt) {
                out.push(MatchScore {
                    itm: itm_probability(l),
                    itc: img.similarity(t)?,
                });
            }
        }
        Ok(out)
    }

    /// `texts` against one image, best first: by ITM probability (the finer, cross-attending
    /// judgement), ties by ITC similarity.
    pub fn rank<S: AsRef<str>>(
        &self,
        image: &DynamicImage,
        texts: &[S],
    ) -> Result<Vec<RankedText>> {
        let mut ranked: Vec<RankedText> = self
            .match_scores(image, texts)?
            .into_iter()
            .enumerate()
            .map(|(index, score)| RankedText { index, score })
            .collect();
        sort_desc(&mut ranked, |r| (r.score.itm, r.score.itc));
        Ok(ranked)
    }

    /// Normalised ITC embeddings of images `[num_query, dim]` each, in one batched pass.
    pub fn image_embeddings(&self, images: &[&DynamicImage]) -> Result<Vec<ImageEmbedding>> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let vis = self.vision_features(&self.pixel_values(images)?)?;
        self.image_embeddings_from_vision(&vis)
    }

    /// Normalised ITC embeddings of texts `[dim]` each (padded text-only Q-Former passes).
    pub fn text_embeddings<S: AsRef<str>>(&self, texts: &[S]) -> Result<Vec<TextEmbedding>> {
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(MAX_TEXTS_PER_PASS) {
            out.extend(self.text_embeddings_from_tokens(&self.tokenize(chunk)?)?);
        }
        Ok(out)
    }

    /// Images (as precomputed embeddings) for a text query, most similar first (ITC).
    pub fn search(&self, text: &str, images: &[ImageEmbedding]) -> Result<Vec<SearchHit>> {
        let t = self
            .text_embeddings(&[text])?
            .pop()
            .ok_or_else(|| ModelError::Invalid("no text embedding".into()))?;
        let mut hits = images
            .iter()
            .enumerate()
            .map(|(index, img)| {
                Ok(SearchHit {
                    index,
                    similarity: img.similarity(&t)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        sort_desc(&mut hits, |h| (h.similarity, 0.0));
        Ok(hits)
    }

    // ---- stages (parity tests, custom pipelines) -------------------------------------

    /// Ids the Q-Former embeds for `texts`: WordPiece `[CLS] ... [SEP]`, right-padded with
    /// `[PAD]` (mask 0). Errors on an empty list or a text longer than the position table.
    pub fn tokenize<S: AsRef<str>>(&self, texts: &[S]) -> Result<BatchEncoding> {
        if texts.is_empty() {
            return Err(ModelError::Invalid("no texts given".into()));
        }
        let refs: Vec<&str> = texts.iter().map(AsRef::as_ref).collect();
        let enc = self
            .tokenizer
            .encode_text_batch(&refs, PaddingSide::Right)?;
        let max = self.config.qformer_config.max_position_embeddings;
        if enc.seq_len() > max {
            let (i, n) = enc
                .attention_mask
                .iter()
                .map(|m| m.iter().sum::<u32>() as usize)
                .enumerate()
                .max_by_key(|&(_, n)| n)
                .unwrap_or((0, 0));
            return Err(ModelError::Invalid(format!(
                "text {i} has {n} tokens; the Q-Former has {max} positions"
            )));
        }
        if enc.seq_len() == 0 {
            return Err(ModelError::Invalid(
                "the tokenizer produced no ids for the texts".into(),
            ));
        }
        Ok(enc)
    }

    /// `[B, 3, H, W]` pixel values as the processor computes them.
    pub fn pixel_values(&self, images: &[&DynamicImage]) -> Result<Tensor> {
        self.image.pixel_values(images)
    }

    /// Vision encoder output (after post_layernorm) `[B, N, Dv]`.
    pub fn vision_features(&self, pixels: &Tensor) -> Result<Tensor> {
        self.image.vision(pixels)
    }

    /// Q-Former output of the queries alone over the image `[B, Q, D]` (the ITC image path).
    pub fn query_output(&self, vision: &Tensor) -> Result<Tensor> {
        self.image.queries(vision)
    }

    /// Normalised ITC image embeddings from vision features `[B, N, Dv]`.
    pub fn image_embeddings_from_vision(&self, vision: &Tensor) -> Result<Vec<ImageEmbedding>> {
        let q = self.query_output(vision)?;
        let p = self.vision_projection.forward(&q)?;
        let (b, nq, e) = (p.dim(0), p.dim(1), p.dim(2));
        let mut data = p.to_vec_f32()?;
        data.chunks_exact_mut(e).for_each(normalize);
        data.chunks_exact(nq * e)
            .take(b)
            .map(|rows| ImageEmbedding::new(rows.to_vec(), nq))
            .collect()
    }

    /// Word + position embeddings of padded ids `[B, L, D]` (positions 0..L).
    fn embed_text(&self, enc: &BatchEncoding) -> Result<Tensor> {
        let (b, l) = (enc.batch_size(), enc.seq_len());
        let flat: Vec<u32> = enc.ids.concat();
        let d = self.image.qformer().hidden;
        let words =
            ops::embedding(&self.word_embeddings, &flat, DType::F32)?.reshape(&[b, l, d])?;
        let positions: Vec<u32> = (0..l as u32).collect();
        let pos = ops::embedding(&self.position_embeddings, &positions, DType::F32)?;
        Ok(ops::add(&words, &pos)?)
    }

    /// Additive self-attention mask `[B, 1, lead + L]`: `lead` always-visible rows (the
    /// queries) then the text mask; None when nothing is padded.
    fn text_mask(&self, enc: &BatchEncoding, lead: usize) -> Result<Option<Tensor>> {
        if enc.attention_mask.iter().all(|m| m.iter().all(|&v| v == 1)) {
            return Ok(None);
        }
        let data: Vec<f32> = enc
            .attention_mask
            .iter()
            .flat_map(|m| {
                std::iter::repeat_n(0.0, lead)
                    .chain(m.iter().map(|&v| if v == 1 { 0.0 } else { f32::MIN }))
            })
            .collect();
        Ok(Some(Tensor::from_f32(
            data,
            &[enc.batch_size(), 1, lead + enc.seq_len()],
            self.device(),
        )?))
    }

    /// ITM logits [no match, match] for each text row of `enc` against `vision`
    /// (`[1, N, Dv]`, shared by every text, or `[B, N, Dv]`, one image per text).
    pub fn itm_logits(&self, vision: &Tensor, enc: &BatchEncoding) -> Result<Vec<[f32; 2]>> {
        let b = enc.batch_size();
        let vis = match vision.dim(0) {
            n if n == b => vision.clone(),
            1 => repeat_batch(vision, b)?,
            n => {
                return Err(ModelError::Invalid(format!(
                    "{n} images for {b} texts (give 1 or {b})"
                )));
            }
        };
        let nq = self.num_query_tokens();
        let queries = repeat_batch(&self.image.qformer().query_tokens, b)?;
        let embeds = ops::concat(&[&queries, &self.embed_text(enc)?], 1)?;
        let mask = self.text_mask(enc, nq)?;
        let out = self
            .image
            .qformer()
            .encode(&embeds, nq, Some(&vis), mask.as_ref())?;
        let logits = self
            .itm_head
            .forward(&ops::narrow(&out, 1, 0, nq)?)?
            .to_vec_f32()?;
        Ok(logits
            .chunks_exact(2 * nq)
            .map(|rows| {
                // Mean over the query rows, accumulated in f64.
                let (mut s0, mut s1) = (0f64, 0f64);
                for r in rows.chunks_exact(2) {
                    s0 += r[0] as f64;
                    s1 += r[1] as f64;
                }
                [(s0 / nq as f64) as f32, (s1 / nq as f64) as f32]
            })
            .collect())
    }

    /// Normalised ITC text embeddings of the rows of `enc` (text-only Q-Former, [CLS] row).
    pub fn text_embeddings_from_tokens(&self, enc: &BatchEncoding) -> Result<Vec<TextEmbedding>> {
        let mask = self.text_mask(enc, 0)?;
        let out = self
            .image
            .qformer()
            .encode(&self.embed_text(enc)?, 0, None, mask.as_ref())?;
        let cls = ops::narrow(&out, 1, 0, 1)?;
        let p = self.text_projection.forward(&cls)?;
        let e = p.dim(2);
        let mut data = p.to_vec_f32()?;
        data.chunks_exact_mut(e).for_each(normalize);
        data.chunks_exact(e)
            .map(|r| TextEmbedding::new(r.to_vec()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn itm_probability_is_two_class_softmax() {
        // Exact formula vs softmax through exp: equal to f32 rounding (1e-6).
        for l in [[0.0f32, 0.0], [1.5, -2.0], [-3.0, 4.0], [80.0, -80.0]] {
            let m = l[0].max(l[1]);
            let (a, b) = ((l[0] - m).exp(), (l[1] - m).exp());
            assert!((itm_probability(l) - b / (a + b)).abs() < 1e-6, "{l:?}");
        }
        assert_eq!(itm_probability([-200.0, 200.0]), 1.0);
    }

    #[test]
    fn similarity_is_max_over_queries() {
        let img = ImageEmbedding::new(vec![1.0, 0.0, 0.0, 1.0, -1.0, 0.0], 3).unwrap();
        let t = TextEmbedding::new(vec![0.6, 0.8]).unwrap();
        assert_eq!(img.dim(), 2);
        assert_eq!(img.row(1), &[0.0, 1.0]);
        assert_eq!(img.similarity(&t).unwrap(), 0.8);
        assert!(
            img.similarity(&TextEmbedding::new(vec![1.0]).unwrap())
                .is_err()
        );
        assert!(ImageEmbedding::new(vec![1.0; 5], 2).is_err());
    }

    #[test]
    fn normalize_matches_torch() {
        let mut v = [3.0f32, 4.0];
        normalize(&mut v);
        assert_eq!(v, [0.6, 0.8]);
        let mut z = [0.0f32; 3];
        normalize(&mut z);
        assert_eq!(z, [0.0; 3]);
    }

    #[test]
    fn sorting_is_descending_and_stable_with_nan_last() {
        let mut v = vec![
            (0, 0.5f32, 0.0f32),
            (1, f32::NAN, 0.0),
            (2, 0.9, 0.1),
            (3, 0.5, 0.2),
            (4, 0.5, 0.2),
        ];
        sort_desc(&mut v, |x| (x.1, x.2));
        let order: Vec<usize> = v.iter().map(|x| x.0).collect();
        assert_eq!(order, [2, 3, 4, 0, 1]);
    }
}
