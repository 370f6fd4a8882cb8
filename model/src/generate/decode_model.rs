//! What the decoding loops talk to: a model being decoded ([`DecodeModel`]), the tokens
//! they report as they go ([`TokenEvent`]) and what they return ([`DecodeOutput`]).

use blip2_engine::Tensor;

use crate::{ModelError, Result};

/// One token as it is produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenEvent {
    /// Index of the prompt/image in the batch.
    pub row: usize,
    pub token_id: u32,
    /// Position among the row's new tokens (0 = first).
    pub index: usize,
    /// The token is an eos (the row's last token).
    pub is_eos: bool,
}

/// A language model being decoded: one state row per running sequence.
pub trait DecodeModel {
    /// Width of the logits rows.
    fn vocab(&self) -> usize;
    /// Keeps state row `src[i]` as new row `i` (beam reordering and expansion, dropping
    /// finished rows). Rows may repeat.
    fn select_rows(&mut self, src: &[usize]) -> Result<()>;
    /// Feeds one token per current row; returns the next `[rows · vocab]` logits.
    fn step(&mut self, tokens: &[u32]) -> Result<Vec<f32>>;

    /// [`Self::step`] with the logits `[rows, vocab]` left where they were computed, so
    /// that the choices are made there ([`crate::generate::choose_rows`]: greedy maxima
    /// and sampling candidates on a GPU, without reading the logits back). `Ok(None)`: this
    /// model has no such tensor, and nothing was fed (the caller uses `step`).
    fn step_logits(&mut self, _tokens: &[u32]) -> Result<Option<Tensor>> {
        Ok(None)
    }
}

/// What a decoding run produced for each batch row.
#[derive(Clone, Debug, PartialEq)]
pub struct DecodeOutput {
    /// New tokens of each row (eos included when it was produced).
    pub tokens: Vec<Vec<u32>>,
    /// Beam search: the length-normalised log-probability of each returned hypothesis
    /// (HF's `sequences_scores`).
    pub scores: Vec<Option<f32>>,
    /// Number of `DecodeModel::step` calls.
    pub steps: usize,
}

/// The model's raw logits for new token `step` must all be numbers: NaN or ±inf there
/// (broken weights or inputs, an overflow in reduced precision) would make every choice
/// meaningless, so generation stops with a typed error instead of returning garbage. The
/// processors' own −inf masks come later and are not checked.
pub(super) fn check_logits(logits: &[f32], step: usize) -> Result<()> {
    let count = logits.iter().filter(|v| !v.is_finite()).count();
    non_finite_error(count, logits.len(), step)
}

/// [`check_logits`] from a count made elsewhere (on the device): `count` of `total` logits
/// for new token `step` are NaN or ±inf.
pub(super) fn non_finite_error(count: usize, total: usize, step: usize) -> Result<()> {
    if count == 0 {
        return Ok(());
    }
    Err(ModelError::NonFinite {
        what: format!("logits for generated token {step}"),
        count,
        total,
    })
}
