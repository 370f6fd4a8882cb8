//! The logits processors applied to each step's scores on the host, in the order
//! `transformers` applies them, and the greedy choice.

use super::settings::ResolvedGeneration;

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

/// HF NoRepeatNGramLogitsProcessor: a token that would complete an n-gram already present
/// in `seen` (prompt included) becomes impossible.
pub fn apply_no_repeat_ngram(logits: &mut [f32], seen: &[u32], n: usize) {
    for id in no_repeat_ngram_bans(seen, n) {
        if let Some(l) = logits.get_mut(id as usize) {
            *l = f32::NEG_INFINITY;
        }
    }
}

/// The ids [`apply_no_repeat_ngram`] bans (repeats possible).
fn no_repeat_ngram_bans(seen: &[u32], n: usize) -> impl Iterator<Item = u32> + '_ {
    let live = n > 0 && seen.len() >= n;
    let prefix = if live {
        &seen[seen.len() + 1 - n..]
    } else {
        &[]
    };
    seen.windows(n.max(1))
        .filter(move |w| live && &w[..n - 1] == prefix)
        .map(move |w| w[n - 1])
}

/// HF MinNewTokensLengthLogitsProcessor: eos is impossible before `min_new_tokens`.
pub fn apply_min_new_tokens(
    logits: &mut [f32],
    new_tokens: usize,
    min_new_tokens: usize,
    eos: &[u32],
) {
    if new_tokens < min_new_tokens {
        for &e in eos {
            if let Some(l) = logits.get_mut(e as usize) {
                *l = f32::NEG_INFINITY;
            }
        }
    }
}

/// The logits processors HF builds for these settings, in HF's order: repetition penalty,
/// n-gram ban, min_new_tokens. `seen` is the row's HF `input_ids` (for decoder-only
/// models the prompt, image and padding ids included); `new_tokens` how many it has made.
pub fn apply_processors(
    logits: &mut [f32],
    seen: &[u32],
    new_tokens: usize,
    cfg: &ResolvedGeneration,
) {
    apply_repetition_penalty(logits, seen, cfg.repetition_penalty());
    apply_no_repeat_ngram(logits, seen, cfg.no_repeat_ngram_size());
    apply_min_new_tokens(
        logits,
        new_tokens,
        cfg.min_new_tokens(),
        cfg.eos_token_ids(),
    );
}

/// What [`apply_processors`] does to a row of `vocab` scores when all it does is ban ids
/// (set them to −inf): those ids, ascending and distinct, so that the row's best entries can
/// be chosen where its scores are (`ops::top_candidates` excluding them). None when a
/// processor reads the scores (repetition penalty).
pub fn banned_ids(
    seen: &[u32],
    new_tokens: usize,
    cfg: &ResolvedGeneration,
    vocab: usize,
) -> Option<Vec<u32>> {
    if cfg.repetition_penalty() != 1.0 {
        return None;
    }
    let mut ids: Vec<u32> = no_repeat_ngram_bans(seen, cfg.no_repeat_ngram_size()).collect();
    if new_tokens < cfg.min_new_tokens() {
        ids.extend_from_slice(cfg.eos_token_ids());
    }
    ids.retain(|&i| (i as usize) < vocab);
    ids.sort_unstable();
    ids.dedup();
    Some(ids)
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
pub fn greedy_step(
    logits: &mut [f32],
    seen: &[u32],
    new_tokens: usize,
    cfg: &ResolvedGeneration,
) -> u32 {
    apply_processors(logits, seen, new_tokens, cfg);
    argmax(logits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::settings::GenerationConfig;
    use crate::generate::test_util::resolved;

    #[test]
    fn repetition_penalty_follows_hf_signs() {
        let mut l = vec![2.0, -2.0, 1.0];
        apply_repetition_penalty(&mut l, &[0, 1, 1], 2.0);
        assert_eq!(l, vec![1.0, -4.0, 1.0]);
    }

    #[test]
    fn min_new_tokens_blocks_eos() {
        let cfg = resolved(
            GenerationConfig {
                min_new_tokens: 1,
                ..Default::default()
            },
            &[1],
        );
        let mut l = vec![0.0, 5.0, 1.0];
        assert_eq!(greedy_step(&mut l, &[], 0, &cfg), 2);
        let mut l = vec![0.0, 5.0, 1.0];
        assert_eq!(greedy_step(&mut l, &[], 1, &cfg), 1);
    }

    /// banned_ids names exactly the ids apply_processors sets to −inf.
    #[test]
    fn banned_ids_are_what_the_processors_ban() {
        let seen = [1, 2, 3, 1, 2, 7, 2, 9];
        for ngram in 0..4 {
            for (new_tokens, min_new_tokens) in [(0, 0), (1, 3), (3, 3)] {
                let cfg = resolved(
                    GenerationConfig {
                        no_repeat_ngram_size: ngram,
                        min_new_tokens,
                        ..Default::default()
                    },
                    &[4, 2],
                );
                let mut row = vec![0.5; 8];
                apply_processors(&mut row, &seen, new_tokens, &cfg);
                let want: Vec<u32> = (0..8).filter(|&i| row[i as usize] < 0.0).collect();
                let got = banned_ids(&seen, new_tokens, &cfg, 8).unwrap();
                assert_eq!(
                    got, want,
                    "ngram {ngram} new {new_tokens} min {min_new_tokens}"
                );
            }
        }
        let cfg = resolved(
            GenerationConfig {
                repetition_penalty: 1.2,
                ..Default::default()
            },
            &[4],
        );
        assert_eq!(banned_ids(&seen, 0, &cfg, 8), None);
    }

    #[test]
    fn no_repeat_ngram_bans_completions() {
        // seen "1 2 3 1 2": the bigram ban (n=2) forbids what followed "2" before (3); the
        // trigram ban forbids what followed "1 2" (3); unigram bans every seen id.
        let seen = [1, 2, 3, 1, 2];
        let mut l = vec![0.0; 5];
        apply_no_repeat_ngram(&mut l, &seen, 2);
        assert_eq!(l, vec![0.0, 0.0, 0.0, f32::NEG_INFINITY, 0.0]);
        let mut l = vec![0.0; 5];
        apply_no_repeat_ngram(&mut l, &seen, 3);
        assert_eq!(l, vec![0.0, 0.0, 0.0, f32::NEG_INFINITY, 0.0]);
        let mut l = vec![0.0; 5];
        apply_no_repeat_ngram(&mut l, &seen, 1);
        assert_eq!(
            l,
            vec![
                0.0,
                f32::NEG_INFINITY,
                f32::NEG_INFINITY,
                f32::NEG_INFINITY,
                0.0
            ]
        );
        // Shorter than n: nothing to ban.
        let mut l = vec![0.0; 5];
        apply_no_repeat_ngram(&mut l, &[1, 2], 3);
        assert!(l.iter().all(|&v| v == 0.0));
        // "2 2": the last bigram "2 2" (window 1..3) ends in 2 and starts with the prefix 2.
        let mut l = vec![0.0; 5];
        apply_no_repeat_ngram(&mut l, &[2, 2], 2);
        assert_eq!(l[2], f32::NEG_INFINITY);
    }
}
