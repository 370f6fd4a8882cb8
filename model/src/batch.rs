//! Continuous batching: a [`DecodeBatch`] runs sequences of different requests through one
//! forward pass per decode step, each with its own image, prompt and settings. Sequences
//! join between steps (those joining at the same step are prefilled together, left-padded,
//! in one forward pass) and leave when they end or when the caller removes them, freeing
//! their rows at once. Each sequence's greedy tokens equal what
//! [`Blip2::generate_from_features_with`] gives it alone, and a sampled one draws from its
//! own random stream, so a seed gives the same text alone or batched.
//!
//! Every language model: decoder-only ones keep each row's prompt and tokens in one KV
//! cache; T5 encodes each joining prompt once and keeps its cross-attention K/V beside the
//! decoder's cache. Greedy search and sampling only (beam search keeps several rows per
//! sequence: run it alone).

use std::time::{Duration, Instant};

use blip2_engine::ops;

use crate::blip2::{Blip2, Generation, ImageFeatures, Timings};
use crate::generate::{ResolvedGeneration, RowDecoder, TokenEvent, choose_rows};
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

/// A sequence to add with [`DecodeBatch::add_many`]: row `row` of the features, its
/// `prompt` (None = caption) and settings (greedy or sampling).
pub struct Join<'s> {
    pub id: SeqId,
    pub row: usize,
    pub prompt: Option<&'s str>,
    pub settings: &'s ResolvedGeneration,
}

/// A sequence that ended: its id and its answer (or the error that ended it alone, such as
/// non-finite logits in its row).
pub type Ended = (SeqId, Result<Generation>);

impl Blip2 {
    /// An empty step-level batch.
    pub fn decode_batch(&self) -> DecodeBatch<'_> {
        DecodeBatch {
            model: self,
            lm: self.lm().row_batch(self.device()),
            seqs: Vec::new(),
            steps: 0,
        }
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
    /// with `settings` (greedy or sampling); [`DecodeBatch::add_many`] for one sequence.
    pub fn add(
        &mut self,
        id: SeqId,
        feats: &ImageFeatures,
        row: usize,
        prompt: Option<&str>,
        settings: &ResolvedGeneration,
        on_token: &mut dyn FnMut(&TokenEvent),
    ) -> Result<Option<Generation>> {
        let join = Join {
            id,
            row,
            prompt,
            settings,
        };
        match self.add_many(feats, &[join], on_token)?.pop() {
            Some((_, r)) => r,
            None => Err(ModelError::Invalid("no sequence was added".into())),
        }
    }

    /// Adds the sequences `joins` at once: their prompts are prefilled together in one
    /// left-padded forward pass (as a static batch's), and each one's first token chosen
    /// here (`on_token` sees it, `TokenEvent::row` = its id). Returns one result per
    /// sequence, in order: `Ok(None)` running, `Ok(Some(_))` ended at its first token
    /// (it takes no row), `Err` refused or failed alone (a duplicate id, a row out of
    /// range, beam search, too long for the model's positions, non-finite logits). An
    /// error of the prefill itself fails them all and leaves the running rows as they were.
    pub fn add_many(
        &mut self,
        feats: &ImageFeatures,
        joins: &[Join<'_>],
        on_token: &mut dyn FnMut(&TokenEvent),
    ) -> Result<Vec<(SeqId, Result<Option<Generation>>)>> {
        let t = Instant::now();
        let n_feats = feats.projected.dim(0);
        let mut out: Vec<Option<Result<Option<Generation>>>> = Vec::with_capacity(joins.len());
        // (index in joins, its decoder) of the sequences that go on to the prefill.
        let mut ok: Vec<(usize, RowDecoder)> = Vec::new();
        for (i, j) in joins.iter().enumerate() {
            let checked = (|| {
                let taken = self.seqs.iter().any(|s| s.id == j.id)
                    || joins[..i].iter().any(|o| o.id == j.id);
                if taken {
                    return Err(ModelError::Invalid(format!(
                        "sequence {} is already running",
                        j.id
                    )));
                }
                if j.row >= n_feats {
                    return Err(ModelError::Invalid(format!(
                        "row {} of features of {n_feats} images",
                        j.row
                    )));
                }
                let ids = self.model.prompt_ids(j.prompt)?;
                let (max, new) = (self.lm.max_positions(), j.settings.max_new_tokens());
                if ids.len().saturating_add(new) > max {
                    return Err(ModelError::Invalid(format!(
                        "prompt of {} tokens + {new} new tokens exceeds the model's {max} positions",
                        ids.len()
                    )));
                }
                // The processors count the row's own ids, as alone (no padding).
                RowDecoder::new(j.settings.clone(), self.lm.processor_ids(ids))
            })();
            match checked {
                Ok(d) => {
                    ok.push((i, d));
                    out.push(None);
                }
                Err(e) => out.push(Some(Err(e))),
            }
        }
        if !ok.is_empty() {
            let rows: Vec<usize> = ok.iter().map(|(i, _)| joins[*i].row).collect();
            let prompts: Vec<Option<&str>> = ok.iter().map(|(i, _)| joins[*i].prompt).collect();
            let maxes: Vec<usize> = ok
                .iter()
                .map(|(i, _)| joins[*i].settings.max_new_tokens())
                .collect();
            let pad = joins[ok[0].0].settings.pad_token_id();
            let running = self.seqs.len();
            let input = self
                .model
                .lm_input(&gather_features(feats, &rows)?, &prompts, pad)?;
            let logits = match self.lm.join(input, &maxes) {
                Ok(l) => l,
                Err(e) => {
                    if self.lm.rows() != running {
                        self.lm.select_rows(&(0..running).collect::<Vec<_>>())?;
                    }
                    return Err(e);
                }
            };
            let prefill = t.elapsed();
            let (idx, mut decoders): (Vec<usize>, Vec<RowDecoder>) = ok.into_iter().unzip();
            let chosen = match choose_rows(&logits, &mut decoders) {
                Ok(c) => c,
                Err(e) => {
                    self.lm.select_rows(&(0..running).collect::<Vec<_>>())?;
                    return Err(e);
                }
            };
            let mut keep: Vec<usize> = (0..running).collect();
            for (r, ((i, decoder), tok)) in idx.into_iter().zip(decoders).zip(chosen).enumerate() {
                let id = joins[i].id;
                let res = match tok {
                    Ok(tok) => {
                        on_token(&event(id, &tok));
                        let seq = Seq {
                            id,
                            decoder,
                            next: tok.token_id,
                            joined: t,
                            prefill,
                            steps: 0,
                        };
                        if tok.finished {
                            self.generation(&seq).map(Some)
                        } else {
                            keep.push(running + r);
                            self.seqs.push(seq);
                            Ok(None)
                        }
                    }
                    Err(e) => Err(e),
                };
                out[i] = Some(res);
            }
            if keep.len() != self.lm.rows() {
                self.lm.select_rows(&keep)?;
            }
        }
        Ok(joins
            .iter()
            .zip(out)
            .map(|(j, r)| {
                (
                    j.id,
                    r.unwrap_or_else(|| Err(ModelError::Invalid("not added".into()))),
                )
            })
            .collect())
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
        let mut decoders: Vec<&mut RowDecoder> =
            self.seqs.iter_mut().map(|s| &mut s.decoder).collect();
        let chosen = match choose_rows(&logits, &mut decoders) {
            Ok(c) => c,
            Err(e) => {
                self.seqs.clear();
                let _ = self.lm.select_rows(&[]);
                return Err(e);
            }
        };
        let mut ended = Vec::new();
        let mut keep = Vec::with_capacity(self.seqs.len());
        for (r, (seq, tok)) in self.seqs.iter_mut().zip(chosen).enumerate() {
            seq.steps += 1;
            match tok {
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

/// Rows `rows` of `feats` (repeats allowed) as features of `rows.len()` images.
fn gather_features(feats: &ImageFeatures, rows: &[usize]) -> Result<ImageFeatures> {
    let pick = |t: &blip2_engine::Tensor| -> Result<blip2_engine::Tensor> {
        if t.dim(0) == 1 && rows.len() == 1 {
            Ok(t.clone())
        } else {
            Ok(ops::gather_rows(t, rows)?)
        }
    };
    Ok(ImageFeatures {
        projected: pick(&feats.projected)?,
        vision_output: feats.vision_output.as_ref().map(pick).transpose()?,
        preprocess: Duration::ZERO,
        vision: Duration::ZERO,
        qformer: Duration::ZERO,
    })
}
