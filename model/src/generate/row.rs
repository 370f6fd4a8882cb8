//! One sequence's greedy search or sampling, a token at a time: the choice
//! [`super::decode`]'s loop makes for a row, with the row's own settings and random stream,
//! for callers that batch rows of different requests step by step (continuous batching).
//! A row's tokens equal what `decode` gives it alone: the same processors in the same
//! order, and the sampler stream of a batch's first row.

use blip2_engine::{Device, Tensor, ops};

use super::decode_model::{check_logits, non_finite_error};
use super::processors::{apply_processors, argmax};
use super::sampling::{self, Rng};
use super::settings::ResolvedGeneration;
use crate::{ModelError, Result};

/// The decoding state of one sequence.
#[derive(Clone, Debug)]
pub struct RowDecoder {
    cfg: ResolvedGeneration,
    /// The ids the processors count (HF's `input_ids`), new tokens appended.
    seen: Vec<u32>,
    tokens: Vec<u32>,
    rng: Rng,
    done: bool,
}

/// One chosen token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowToken {
    pub token_id: u32,
    /// Position among the new tokens (0 = first).
    pub index: usize,
    pub is_eos: bool,
    /// The sequence ended here (eos or `max_new_tokens`).
    pub finished: bool,
}

impl RowDecoder {
    /// A sequence decoded with `cfg`, whose processors count `seen`. Beam search keeps
    /// several hypotheses per sequence and is refused here.
    pub fn new(cfg: ResolvedGeneration, seen: Vec<u32>) -> Result<RowDecoder> {
        RowDecoder::with_stream(cfg, seen, 0)
    }

    /// [`RowDecoder::new`] drawing from the seed's random stream `stream` (a static batch
    /// gives row r stream r, so that a row's draws do not depend on the others).
    pub fn with_stream(cfg: ResolvedGeneration, seen: Vec<u32>, stream: u64) -> Result<RowDecoder> {
        if cfg.num_beams() > 1 {
            return Err(ModelError::Invalid(
                "beam search does not decode row by row".into(),
            ));
        }
        let rng = Rng::stream(cfg.rng_seed(), stream);
        Ok(RowDecoder {
            cfg,
            seen,
            tokens: Vec::new(),
            rng,
            done: false,
        })
    }

    pub fn settings(&self) -> &ResolvedGeneration {
        &self.cfg
    }

    /// The new tokens so far (eos included when produced).
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    pub fn is_finished(&self) -> bool {
        self.done
    }

    /// Where the next choice is the plain maximum of the raw logits (greedy, no processor
    /// that reads the scores), the ids it must not pick (min_new_tokens' eos ban), so that
    /// the model's device can choose it ([`blip2_engine::ops::argmax_rows`]) and feed it
    /// to [`RowDecoder::accept`]; None where the row needs its logits ([`Self::choose`]).
    pub fn device_greedy(&self) -> Option<&[u32]> {
        (!self.cfg.do_sample() && !self.reads_scores()).then(|| self.banned())
    }

    /// Where the row samples with top-k and no processor that reads every score: the
    /// candidates to ask the device for ([`sampling::candidate_request`]: k, the most to
    /// return) and the ids it must not return (min_new_tokens' eos ban); the draw is then
    /// [`Self::accept_candidates`]. None where the row needs its logits.
    pub fn device_sampling(&self, vocab: usize) -> Option<(usize, usize, &[u32])> {
        let cfg = &self.cfg;
        if !cfg.do_sample() || cfg.repetition_penalty() != 1.0 || cfg.no_repeat_ngram_size() != 0 {
            return None;
        }
        let (k, max_out) =
            sampling::candidate_request(cfg.top_k(), cfg.min_tokens_to_keep(), vocab)?;
        Some((k, max_out, self.banned()))
    }

    /// The sampled token from the row's top candidates (`ids` ascending, `values`, and the
    /// row's `non_finite` count, an error as in [`Self::choose`]), as [`Self::choose`]
    /// draws it from the whole row; `Ok(None)` when the candidates cannot stand for the
    /// row ([`sampling::draw_from_candidates`]): nothing was drawn, the caller reads the
    /// row and calls [`Self::choose`].
    pub fn accept_candidates(
        &mut self,
        ids: &[u32],
        values: &[f32],
        non_finite: u32,
        vocab: usize,
    ) -> Result<Option<RowToken>> {
        self.check_next(non_finite, vocab)?;
        let cfg = &self.cfg;
        let drawn = sampling::draw_from_candidates(
            ids,
            values,
            vocab,
            cfg.temperature(),
            cfg.top_k(),
            cfg.top_p(),
            cfg.min_tokens_to_keep(),
            &mut self.rng,
        )?;
        Ok(drawn.map(|t| self.push(t as u32)))
    }

    /// Whether a processor reads other scores than the eos ban sets (repetition penalty,
    /// n-gram ban): the row then needs its whole logits row.
    fn reads_scores(&self) -> bool {
        self.cfg.repetition_penalty() != 1.0 || self.cfg.no_repeat_ngram_size() != 0
    }

    /// min_new_tokens' eos ban for the next token.
    fn banned(&self) -> &[u32] {
        if self.tokens.len() < self.cfg.min_new_tokens() {
            self.cfg.eos_token_ids()
        } else {
            &[]
        }
    }

    /// The row can take another token: it has not ended.
    fn check_open(&self) -> Result<()> {
        if self.done {
            return Err(ModelError::Invalid("the sequence has ended".into()));
        }
        Ok(())
    }

    /// [`Self::check_open`], and the device counted no NaN or ±inf (`non_finite` of
    /// `vocab`) in the row's logits.
    fn check_next(&self, non_finite: u32, vocab: usize) -> Result<()> {
        self.check_open()?;
        non_finite_error(non_finite as usize, vocab, self.tokens.len())
    }

    /// Takes `token`, chosen elsewhere as [`Self::device_greedy`] allows, from logits of
    /// `vocab` entries with `non_finite` NaN or infinite ones (an error, as in
    /// [`Self::choose`]).
    pub fn accept(&mut self, token: u32, non_finite: u32, vocab: usize) -> Result<RowToken> {
        self.check_next(non_finite, vocab)?;
        Ok(self.push(token))
    }

    /// Chooses the next token from the model's raw `logits` `[vocab]` for this row.
    pub fn choose(&mut self, logits: &mut [f32]) -> Result<RowToken> {
        self.check_open()?;
        let n = self.tokens.len();
        check_logits(logits, n)?;
        apply_processors(logits, &self.seen, n, &self.cfg);
        let tok = if self.cfg.do_sample() {
            sampling::warp(
                logits,
                self.cfg.temperature(),
                self.cfg.top_k(),
                self.cfg.top_p(),
                self.cfg.min_tokens_to_keep(),
            );
            sampling::draw(&sampling::softmax(logits), &mut self.rng)? as u32
        } else {
            argmax(logits)
        };
        Ok(self.push(tok))
    }

    fn push(&mut self, tok: u32) -> RowToken {
        let n = self.tokens.len();
        self.seen.push(tok);
        self.tokens.push(tok);
        let is_eos = self.cfg.eos_token_ids().contains(&tok);
        self.done = is_eos || self.tokens.len() >= self.cfg.max_new_tokens();
        RowToken {
            token_id: tok,
            index: n,
            is_eos,
            finished: self.done,
        }
    }
}

/// Each row's next token from `logits` `[rows, vocab]`, left on the model's device: rows
/// whose choice is the plain maximum ([`RowDecoder::device_greedy`]) take it from
/// [`ops::argmax_rows`] (on a GPU the logits stay there: 8 bytes a row come back), grouped
/// by the ids they exclude; rows sampled with top-k draw from their top candidates
/// ([`ops::top_candidates`], [`RowDecoder::accept_candidates`]); the other rows
/// (penalties, no top-k, candidates that cannot stand for the row) read their logits
/// rows back and choose on the host. A row's own error (non-finite logits) is its result; an
/// error of the ops fails the step.
pub fn choose_rows<D: std::borrow::BorrowMut<RowDecoder>>(
    logits: &Tensor,
    decoders: &mut [D],
) -> Result<Vec<Result<RowToken>>> {
    let rows = decoders.len();
    if logits.rank() != 2 || logits.dim(0) != rows {
        return Err(ModelError::Invalid(format!(
            "model step returned logits {:?} for {rows} rows",
            logits.shape()
        )));
    }
    let vocab = logits.dim(1);
    // On the CPU the candidates would cost more than the row they stand for.
    let on_gpu = !matches!(logits.device(), Device::Cpu);
    let mut out: Vec<Option<Result<RowToken>>> = (0..rows).map(|_| None).collect();
    // Rows grouped by what one dispatch serves: greedy rows by their excluded ids, sampled
    // rows by (k, max_out, excluded ids).
    let mut greedy: Vec<(Vec<u32>, Vec<usize>)> = Vec::new();
    type SampleKey = (usize, usize, Vec<u32>);
    let mut sampled: Vec<(SampleKey, Vec<usize>)> = Vec::new();
    let mut host = Vec::new();
    for (r, d) in decoders.iter().enumerate() {
        let d = d.borrow();
        if let Some(ex) = d.device_greedy() {
            group_row(&mut greedy, ex.to_vec(), r);
        } else if let Some((k, max_out, ex)) = d.device_sampling(vocab).filter(|_| on_gpu) {
            group_row(&mut sampled, (k, max_out, ex.to_vec()), r);
        } else {
            host.push(r);
        }
    }
    for (ex, rs) in &greedy {
        let (ids, bad) = ops::argmax_rows(&rows_of(logits, rs)?, ex)?;
        for (i, &r) in rs.iter().enumerate() {
            out[r] = Some(decoders[r].borrow_mut().accept(ids[i], bad[i], vocab));
        }
    }
    // Sampled rows: their top candidates; a row whose candidates cannot stand for it
    // (too many ties, or none removed by top-k) is read back whole below.
    for ((k, max_out, ex), rs) in &sampled {
        let cands = ops::top_candidates(&rows_of(logits, rs)?, *k, *max_out, ex)?;
        for (c, &r) in cands.iter().zip(rs) {
            let Some(c) = c else {
                host.push(r);
                continue;
            };
            match decoders[r]
                .borrow_mut()
                .accept_candidates(&c.ids, &c.values, c.non_finite, vocab)
            {
                Ok(Some(tok)) => out[r] = Some(Ok(tok)),
                Ok(None) => host.push(r),
                Err(e) => out[r] = Some(Err(e)),
            }
        }
    }
    host.sort_unstable();
    if !host.is_empty() {
        let mut v = rows_of(logits, &host)?.to_vec_f32()?;
        for (i, &r) in host.iter().enumerate() {
            let scores = &mut v[i * vocab..(i + 1) * vocab];
            out[r] = Some(decoders[r].borrow_mut().choose(scores));
        }
    }
    Ok(out
        .into_iter()
        .map(|o| o.unwrap_or_else(|| Err(ModelError::Invalid("row not chosen".into()))))
        .collect())
}

/// Rows `rs` of `logits` `[R, V]`, on its device (the tensor itself when they are all of
/// its rows, in order).
pub(super) fn rows_of(logits: &Tensor, rs: &[usize]) -> Result<Tensor> {
    Ok(
        if rs.len() == logits.dim(0) && rs.iter().enumerate().all(|(i, &r)| i == r) {
            logits.clone()
        } else {
            ops::gather_rows(logits, rs)?
        },
    )
}

/// Puts row `r` in the group of `key` (the rows one dispatch serves), a new group if none.
pub(super) fn group_row<K: PartialEq>(groups: &mut Vec<(K, Vec<usize>)>, key: K, r: usize) {
    match groups.iter_mut().find(|(k, _)| *k == key) {
        Some((_, rs)) => rs.push(r),
        None => groups.push((key, vec![r])),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::settings::GenerationConfig;
    use crate::generate::test_util::{TableModel, resolved, spread_table};
    use crate::generate::{DecodeModel, decode};

    /// Row by row over the same table model gives `decode`'s tokens, greedy and sampled.
    #[test]
    fn rows_equal_decode_alone() {
        let v = 16;
        let table = spread_table(v);
        for cfg in [
            GenerationConfig {
                max_new_tokens: 9,
                repetition_penalty: 1.3,
                ..Default::default()
            },
            GenerationConfig {
                do_sample: true,
                top_k: 5,
                max_new_tokens: 12,
                seed: Some(7),
                ..Default::default()
            },
        ] {
            let cfg = resolved(cfg, &[3]);
            let mut m = TableModel {
                vocab: v,
                table: table.clone(),
                rows: 1,
                selects: vec![],
            };
            let want = decode(table[0].clone(), vec![vec![0]], &cfg, &mut m, &mut |_| {})
                .unwrap()
                .tokens
                .remove(0);
            let mut m = TableModel {
                vocab: v,
                table: table.clone(),
                rows: 1,
                selects: vec![],
            };
            let mut row = RowDecoder::new(cfg.clone(), vec![0]).unwrap();
            let mut logits = table[0].clone();
            loop {
                let t = row.choose(&mut logits).unwrap();
                if t.finished {
                    break;
                }
                logits = m.step(&[t.token_id]).unwrap();
            }
            assert_eq!(row.tokens(), &want[..]);
            assert!(row.choose(&mut table[0].clone()).is_err());
        }
    }
}
