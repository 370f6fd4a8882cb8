//! Continuous batching: a [`DecodeBatch`] runs sequences of different requests through one
//! forward pass per decode step, each with its own image, prompt and settings. A sequence
//! joins between steps (its prompt prefilled alone) and leaves when it ends or when the
//! caller removes it, freeing its row at once. Each sequence's greedy tokens equal what
//! [`Blip2::generate_from_features_with`] gives it alone, and a sampled one draws from its
//! own random stream, so a seed gives the same text alone or batched.
//!
//! Decoder-only language models only ([`Blip2::decode_batch`] is None for T5), greedy
//! search and sampling only (beam search keeps several rows per sequence: run it alone).

use std::time::{Duration, Instant};

use blip2_engine::ops;

use crate::blip2::{Blip2, Generation, ImageFeatures, Timings};
use crate::generate::{ResolvedGeneration, RowDecoder, TokenEvent};
use crate::lm::batch::RowBatch;
use crate::{ModelError, Result};

/// Caller-chosen handle of a sequence in a [`DecodeBatch`].
pub type SeqId = usize;

struct Seq {
    id: SeqId,
    decoder: RowDecoder,
    /// The token to feed at the next step.
    next: u32,
    joined: Instant,
    prefill: Duration,
    steps: usize,
}

/// Sequences decoding together, step by step (see the module docs).
pub struct DecodeBatch<'a> {
    model: &'a Blip2,
    lm: Box<dyn RowBatch + 'a>,
    /// One per row of `lm`, in row order.
    seqs: Vec<Seq>,
    steps: usize,
}

/// A sequence that ended: its id and its answer (or the error that ended it alone, such as
/// non-finite logits in its row).
pub type Ended = (SeqId, Result<Generation>);

impl Blip2 {
    /// An empty step-level batch; None when the language model has none (T5, whose rows
    /// would differ in encoder length too: batch it per wave with
    /// [`Blip2::generate_from_features_with`]).
    pub fn decode_batch(&self) -> Option<DecodeBatch<'_>> {
        let lm = self.lm().row_batch(self.device())?;
        Some(DecodeBatch {
            model: self,
            lm,
            seqs: Vec::new(),
            steps: 0,
        })
    }
}

impl<'a> DecodeBatch<'a> {
    /// Sequences running (each holds a row until it ends or is removed).
    pub fn len(&self) -> usize {
        self.seqs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }

    /// The running sequences' ids, in row order.
    pub fn ids(&self) -> Vec<SeqId> {
        self.seqs.iter().map(|s| s.id).collect()
    }

    /// Decode steps run so far (one forward pass each, over every running row).
    pub fn steps(&self) -> usize {
        self.steps
    }

    /// Prompt tokens prefilled so far.
    pub fn prefilled_tokens(&self) -> usize {
        self.lm.prefilled_tokens()
    }

    /// Adds sequence `id`: row `row` of `feats` with `prompt` (None = caption), decoded
    /// with `settings` (greedy or sampling). The prompt is prefilled alone and the first
    /// token chosen here (`on_token` sees it, `TokenEvent::row` = `id`). A sequence that
    /// ends at its first token never takes a row and is returned at once.
    pub fn add(
        &mut self,
        id: SeqId,
        feats: &ImageFeatures,
        row: usize,
        prompt: Option<&str>,
        settings: &ResolvedGeneration,
        on_token: &mut dyn FnMut(&TokenEvent),
    ) -> Result<Option<Generation>> {
        if self.seqs.iter().any(|s| s.id == id) {
            return Err(ModelError::Invalid(format!(
                "sequence {id} is already running"
            )));
        }
        let t = Instant::now();
        let one = row_features(feats, row)?;
        let input = self
            .model
            .lm_input(&one, &[prompt], settings.pad_token_id())?;
        let seen = input.batch.rows[0].clone();
        let mut decoder = RowDecoder::new(settings.clone(), seen)?;
        let rows = self.lm.rows();
        let mut logits = self.lm.join(input, settings.max_new_tokens())?;
        let prefill = t.elapsed();
        let tok = match decoder.choose(&mut logits) {
            Ok(tok) => tok,
            Err(e) => {
                self.lm.select_rows(&(0..rows).collect::<Vec<_>>())?;
                return Err(e);
            }
        };
        let seq = Seq {
            id,
            decoder,
            next: tok.token_id,
            joined: t,
            prefill,
            steps: 0,
        };
        on_token(&event(id, &tok));
        if tok.finished {
            self.lm.select_rows(&(0..rows).collect::<Vec<_>>())?;
            return Ok(Some(self.generation(&seq)?));
        }
        self.seqs.push(seq);
        Ok(None)
    }

    /// Removes sequence `id` (its client left); false when it is not running.
    pub fn remove(&mut self, id: SeqId) -> Result<bool> {
        let Some(i) = self.seqs.iter().position(|s| s.id == id) else {
            return Ok(false);
        };
        self.keep(|r| r != i)?;
        Ok(true)
    }

    /// One decode step: feeds every running sequence its last token in one forward pass and
    /// chooses the next. Sequences that end (eos, `max_new_tokens`, or an error of their
    /// own row) leave the batch and are returned. An error of the step itself is returned
    /// as such; the batch is then empty (every sequence failed).
    pub fn step(&mut self, on_token: &mut dyn FnMut(&TokenEvent)) -> Result<Vec<Ended>> {
        if self.seqs.is_empty() {
            return Ok(Vec::new());
        }
        let tokens: Vec<u32> = self.seqs.iter().map(|s| s.next).collect();
        let logits = match self.lm.step(&tokens) {
            Ok(l) => l,
            Err(e) => {
                self.seqs.clear();
                let _ = self.lm.select_rows(&[]);
                return Err(e);
            }
        };
        self.steps += 1;
        let vocab = self.lm.vocab();
        if logits.len() != tokens.len() * vocab {
            self.seqs.clear();
            let _ = self.lm.select_rows(&[]);
            return Err(ModelError::Invalid(format!(
                "model step returned {} logits, expected {}",
                logits.len(),
                tokens.len() * vocab
            )));
        }
        let mut ended = Vec::new();
        let mut keep = Vec::with_capacity(self.seqs.len());
        let mut logits = logits;
        for (r, seq) in self.seqs.iter_mut().enumerate() {
            seq.steps += 1;
            let scores = &mut logits[r * vocab..(r + 1) * vocab];
            match seq.decoder.choose(scores) {
                Ok(tok) => {
                    on_token(&event(seq.id, &tok));
                    seq.next = tok.token_id;
                    if tok.finished {
                        ended.push((r, None));
                    } else {
                        keep.push(r);
                    }
                }
                Err(e) => ended.push((r, Some(e))),
            }
        }
        let mut out = Vec::with_capacity(ended.len());
        for (r, err) in ended {
            let seq = &self.seqs[r];
            out.push((
                seq.id,
                match err {
                    Some(e) => Err(e),
                    None => self.generation(seq),
                },
            ));
        }
        if keep.len() != self.seqs.len() {
            self.keep(|r| keep.contains(&r))?;
        }
        Ok(out)
    }

    /// Keeps the rows `f` accepts.
    fn keep(&mut self, f: impl Fn(usize) -> bool) -> Result<()> {
        let rows: Vec<usize> = (0..self.seqs.len()).filter(|&r| f(r)).collect();
        if let Err(e) = self.lm.select_rows(&rows) {
            self.seqs.clear();
            let _ = self.lm.select_rows(&[]);
            return Err(e);
        }
        let mut r = 0;
        self.seqs.retain(|_| {
            r += 1;
            f(r - 1)
        });
        Ok(())
    }

    fn generation(&self, seq: &Seq) -> Result<Generation> {
        let toks = seq.decoder.tokens().to_vec();
        Ok(Generation {
            text: self.model.tokenizer.decode(&toks, true)?.trim().to_string(),
            token_ids: toks,
            score: None,
            timings: Timings {
                prefill: seq.prefill,
                decode: seq.joined.elapsed().saturating_sub(seq.prefill),
                decode_tokens: seq.steps,
                ..Timings::default()
            },
        })
    }
}

fn event(id: SeqId, tok: &crate::generate::RowToken) -> TokenEvent {
    TokenEvent {
        row: id,
        token_id: tok.token_id,
        index: tok.index,
        is_eos: tok.is_eos,
    }
}

/// Row `r` of `feats` as features of one image.
fn row_features(feats: &ImageFeatures, r: usize) -> Result<ImageFeatures> {
    let n = feats.projected.dim(0);
    if r >= n {
        return Err(ModelError::Invalid(format!(
            "row {r} of features of {n} images"
        )));
    }
    let narrow = |t: &blip2_engine::Tensor| {
        if t.dim(0) == 1 {
            Ok(t.clone())
        } else {
            ops::narrow(t, 0, r, 1)
        }
    };
    Ok(ImageFeatures {
        projected: narrow(&feats.projected)?,
        vision_output: feats.vision_output.as_ref().map(narrow).transpose()?,
        preprocess: Duration::ZERO,
        vision: Duration::ZERO,
        qformer: Duration::ZERO,
    })
}
