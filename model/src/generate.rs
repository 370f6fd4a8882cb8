//! Generation settings and the token-choice rules (logits processors) applied to each
//! step's logits on the host, in the order `transformers` applies them.

use crate::{ModelError, Result};

/// How to generate. Defaults follow `transformers` (greedy, 20 new tokens).
#[derive(Clone, Debug, PartialEq)]
pub struct GenerationConfig {
    pub max_new_tokens: usize,
    pub min_new_tokens: usize,
    pub repetition_penalty: f32,
    /// Overrides the checkpoint's eos id(s) when set.
    pub eos_token_ids: Option<Vec<u32>>,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        GenerationConfig {
            max_new_tokens: 20,
            min_new_tokens: 0,
            repetition_penalty: 1.0,
            eos_token_ids: None,
        }
    }
}

impl GenerationConfig {
    /// Rejects settings `transformers` would reject.
    pub fn validate(&self) -> Result<()> {
        if self.max_new_tokens == 0 {
            return Err(ModelError::Invalid("max_new_tokens must be at least 1".into()));
        }
        if self.min_new_tokens > self.max_new_tokens {
            return Err(ModelError::Invalid(format!(
                "min_new_tokens ({}) exceeds max_new_tokens ({})",
                self.min_new_tokens, self.max_new_tokens
            )));
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return Err(ModelError::Invalid(format!(
                "repetition_penalty must be a positive number, got {}",
                self.repetition_penalty
            )));
        }
        Ok(())
    }
}

/// HF RepetitionPenaltyLogitsProcessor: every id already in `seen` (prompt included)
/// gets score/p when positive, score·p when negative (each distinct id once).
pub fn apply_repetition_penalty(logits: &mut [f32], seen: &[u32], penalty: f32) {
    if penalty == 1.0 {
        return;
    }
    let mut done = std::collections::HashSet::with_capacity(seen.len());
    for &id in seen {
        let i = id as usize;
        if i < logits.len() && done.insert(i) {
            let s = logits[i];
            logits[i] = if s < 0.0 { s * penalty } else { s / penalty };
        }
    }
}

/// HF MinNewTokensLengthLogitsProcessor: eos is impossible before `min_new_tokens`.
pub fn apply_min_new_tokens(logits: &mut [f32], new_tokens: usize, min_new_tokens: usize, eos: &[u32]) {
    if new_tokens < min_new_tokens {
        for &e in eos {
            if let Some(l) = logits.get_mut(e as usize) {
                *l = f32::NEG_INFINITY;
            }
        }
    }
}

/// First index of the maximum (torch.argmax's tie rule); NaN never wins.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    let mut bv = f32::NEG_INFINITY;
    for (i, &v) in logits.iter().enumerate() {
        if v > bv {
            bv = v;
            best = i;
        }
    }
    best as u32
}

/// One greedy choice after the processors.
pub fn greedy_step(logits: &mut [f32], seen: &[u32], new_tokens: usize, cfg: &GenerationConfig, eos: &[u32]) -> u32 {
    apply_repetition_penalty(logits, seen, cfg.repetition_penalty);
    apply_min_new_tokens(logits, new_tokens, cfg.min_new_tokens, eos);
    argmax(logits)
}

/// Greedy decoding of a batch. `logits` holds the first step's `[B·vocab]` scores; `seen`
/// the ids each row's penalties count (HF's `input_ids`); `step(tokens)` runs the model on
/// one new token per row and returns the next `[B·vocab]` scores. Finished rows are fed
/// `pad` as HF feeds them. Returns the new tokens of each row (eos included) and the
/// number of `step` calls.
pub fn greedy(
    logits: &[f32],
    vocab: usize,
    mut seen: Vec<Vec<u32>>,
    cfg: &GenerationConfig,
    eos: &[u32],
    pad: u32,
    mut step: impl FnMut(&[u32]) -> Result<Vec<f32>>,
) -> Result<(Vec<Vec<u32>>, usize)> {
    let b = seen.len();
    if logits.len() != b * vocab {
        return Err(ModelError::Invalid(format!(
            "{} logits for {b} rows of vocabulary {vocab}",
            logits.len()
        )));
    }
    let mut logits = logits.to_vec();
    let mut new_tokens = vec![Vec::new(); b];
    let mut done = vec![false; b];
    let mut steps = 0;
    for n in 0..cfg.max_new_tokens {
        let mut next = Vec::with_capacity(b);
        for r in 0..b {
            let tok = if done[r] {
                pad
            } else {
                let tok = greedy_step(&mut logits[r * vocab..(r + 1) * vocab], &seen[r], n, cfg, eos);
                new_tokens[r].push(tok);
                done[r] = eos.contains(&tok);
                tok
            };
            seen[r].push(tok);
            next.push(tok);
        }
        if done.iter().all(|&d| d) || n + 1 == cfg.max_new_tokens {
            break;
        }
        logits = step(&next)?;
        steps += 1;
        if logits.len() != b * vocab {
            return Err(ModelError::Invalid(format!("model step returned {} logits, expected {}", logits.len(), b * vocab)));
        }
    }
    Ok((new_tokens, steps))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repetition_penalty_follows_hf_signs() {
        let mut l = vec![2.0, -2.0, 1.0];
        apply_repetition_penalty(&mut l, &[0, 1, 1], 2.0);
        assert_eq!(l, vec![1.0, -4.0, 1.0]);
    }

    #[test]
    fn min_new_tokens_blocks_eos() {
        let mut l = vec![0.0, 5.0, 1.0];
        assert_eq!(greedy_step(&mut l, &[], 0, &GenerationConfig { min_new_tokens: 1, ..Default::default() }, &[1]), 2);
        let mut l = vec![0.0, 5.0, 1.0];
        assert_eq!(greedy_step(&mut l, &[], 1, &GenerationConfig { min_new_tokens: 1, ..Default::default() }, &[1]), 1);
    }

    #[test]
    fn invalid_settings_are_rejected() {
        assert!(GenerationConfig { max_new_tokens: 0, ..Default::default() }.validate().is_err());
        assert!(GenerationConfig { min_new_tokens: 30, ..Default::default() }.validate().is_err());
        assert!(GenerationConfig { repetition_penalty: 0.0, ..Default::default() }.validate().is_err());
    }
}
