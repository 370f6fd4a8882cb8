//! What the decoding loops talk to: a model being decoded ([`DecodeModel`]), the tokens
//! they report as they go ([`TokenEvent`]) and what they return ([`DecodeOutput`]).

use crate::Result;

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

    /// [`Self::step`] followed by the greedy choice made where the logits are (on a GPU:
    /// no logits read back), with the `exclude` ids impossible (min_new_tokens' eos ban):
    /// the first index of each row's maximum, as the host's argmax. The search calls it only
    /// when no other processor needs the scores. `Ok(None)`: this model does not choose, and
    /// nothing was fed (the caller uses `step`).
    fn step_greedy(&mut self, _tokens: &[u32], _exclude: &[u32]) -> Result<Option<GreedyStep>> {
        Ok(None)
    }
}

/// The tokens a model chose in [`DecodeModel::step_greedy`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GreedyStep {
    /// One token per row.
    pub ids: Vec<u32>,
    /// Non-finite logits of each row (before exclusion): generation fails on any, as it
    /// does on host logits.
    pub non_finite: Vec<u32>,
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
