//! Beam search (and beam sampling) with the semantics of `transformers` 5.24's
//! `GenerationMixin._beam_search`:
//! - per step: logits → log_softmax (f32) → logits processors (and the sampling warpers
//!   when sampling) → + running beam score; beam 0 starts at 0, the others at −1e9;
//! - K = max(2, 1 + #eos) · num_beams candidates over beams × vocab (top-K, or K draws
//!   without replacement when sampling, sorted by score);
//! - the best `num_beams` candidates that did not stop keep running; among the first
//!   `num_beams` candidates, those that stopped (eos or the length limit) are finished
//!   hypotheses scored sum_logprob / new_len^length_penalty, and the best `num_beams`
//!   finished hypotheses are kept;
//! - an item is done when its best running beam cannot beat its worst finished hypothesis
//!   (HF's heuristic, which `early_stopping` selects), when `early_stopping` is true and
//!   `num_beams` hypotheses are finished, or when every candidate stopped.
//!
//! Each batch row is searched independently (HF's batched search gives each row the same
//! result it gives alone), and a row that is done leaves the model state.

use super::decode_model::{DecodeModel, DecodeOutput};
use super::processors::apply_processors;
use super::sampling::{self, Rng};
use super::settings::{EarlyStopping, ResolvedGeneration};
use crate::{ModelError, Result};

/// HF's "impossible" score offset (`-1.0e9`).
const NEG: f32 = -1.0e9;

/// Finished hypothesis slot (HF `sequences` / `beam_scores` / `is_sent_finished`).
#[derive(Clone)]
struct Slot {
    score: f32,
    finished: bool,
    tokens: Vec<u32>,
}

struct Item {
    /// Per beam: the ids the processors see (prompt + new tokens), the new tokens, the
    /// running score and the model state row holding the beam's cache.
    seen: Vec<Vec<u32>>,
    new: Vec<Vec<u32>>,
    scores: Vec<f32>,
    rows: Vec<usize>,
    slots: Vec<Slot>,
    /// HF `is_early_stop_heuristic_unsatisfied`.
    improvable: bool,
    done: bool,
    rng: Rng,
}

/// Orders scores high to low with NaN lowest; ties keep the lower index first.
fn desc(a: f32, b: f32) -> std::cmp::Ordering {
    let k = |v: f32| if v.is_nan() { f32::NEG_INFINITY } else { v };
    k(b).total_cmp(&k(a))
}

/// torch.log_softmax over one row, in f32.
pub fn log_softmax(row: &mut [f32]) {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    if !max.is_finite() {
        return;
    }
    let sum: f32 = row.iter().map(|&v| (v - max).exp()).sum();
    let lse = sum.ln();
    for v in row {
        *v = *v - max - lse;
    }
}

/// The `k` highest entries of `row` as (value, index), best first.
fn top_k(row: &[f32], k: usize) -> Vec<(f32, u32)> {
    let mut v: Vec<(f32, u32)> = row
        .iter()
        .enumerate()
        .map(|(i, &s)| (s, i as u32))
        .collect();
    let k = k.min(v.len());
    if k < v.len() && k > 0 {
        v.select_nth_unstable_by(k - 1, |a, b| desc(a.0, b.0).then(a.1.cmp(&b.1)));
        v.truncate(k);
    }
    v.sort_by(|a, b| desc(a.0, b.0).then(a.1.cmp(&b.1)));
    v
}

fn length_norm(len: usize, length_penalty: f32) -> f32 {
    (len as f64).powf(length_penalty as f64) as f32
}

/// Beam search over a batch whose prefill logits are `logits` (see
/// [`super::search::decode`], which dispatches here when `num_beams > 1`).
pub(super) fn beam_search(
    mut logits: Vec<f32>,
    seen: Vec<Vec<u32>>,
    cfg: &ResolvedGeneration,
    model: &mut dyn DecodeModel,
) -> Result<DecodeOutput> {
    let vocab = model.vocab();
    let eos = cfg.eos_token_ids();
    let nb = cfg.num_beams();
    let keep = 2usize.max(1 + eos.len()) * nb;
    let min_keep = eos.len() + 1;
    let mut items: Vec<Item> = seen
        .into_iter()
        .enumerate()
        .map(|(b, s)| Item {
            seen: vec![s; nb],
            new: vec![Vec::new(); nb],
            scores: (0..nb).map(|j| if j == 0 { 0.0 } else { NEG }).collect(),
            // Before the first step every beam of row b shares prefill row b.
            rows: vec![b; nb],
            slots: vec![
                Slot {
                    score: NEG,
                    finished: false,
                    tokens: Vec::new()
                };
                nb
            ],
            improvable: true,
            done: false,
            rng: Rng::stream(cfg.rng_seed(), b as u64),
        })
        .collect();
    let mut steps = 0;
    for t in 0..cfg.max_new_tokens() {
        let n_rows = logits.len() / vocab;
        if logits.len() != n_rows * vocab {
            return Err(ModelError::Invalid(format!(
                "model step returned {} logits for vocabulary {vocab}",
                logits.len()
            )));
        }
        // Processed log-probs per state row. Beams sharing a row (only before the first
        // step) share their ids too.
        let mut owner = vec![None; n_rows];
        for (b, it) in items.iter().enumerate().filter(|(_, it)| !it.done) {
            for (j, &r) in it.rows.iter().enumerate() {
                owner[r].get_or_insert((b, j));
            }
        }
        for (r, o) in owner.iter().enumerate() {
            let Some((b, j)) = *o else { continue };
            let row = &mut logits[r * vocab..(r + 1) * vocab];
            log_softmax(row);
            apply_processors(row, &items[b].seen[j], t, cfg);
            if cfg.do_sample() {
                sampling::warp(row, cfg.temperature(), cfg.top_k(), cfg.top_p(), min_keep);
            }
        }
        let mut src = Vec::new();
        let mut next_tokens = Vec::new();
        for it in items.iter_mut().filter(|it| !it.done) {
            let cands = candidates(&logits, vocab, it, keep, cfg.do_sample())?;
            advance(it, &cands, t, cfg);
            if !it.done {
                for j in 0..nb {
                    src.push(it.rows[j]);
                    it.rows[j] = src.len() - 1;
                    let Some(&token) = it.new[j].last() else {
                        return Err(ModelError::Invalid(format!(
                            "beam search: running beam {j} has no token at step {t}"
                        )));
                    };
                    next_tokens.push(token);
                }
            }
        }
        if src.is_empty() {
            break;
        }
        if src.len() != n_rows || src.iter().enumerate().any(|(i, &s)| i != s) {
            model.select_rows(&src)?;
        }
        logits = model.step(&next_tokens)?;
        super::search::check_logits(&logits, t + 1)?;
        steps += 1;
    }
    let mut tokens = Vec::with_capacity(items.len());
    let mut scores = Vec::with_capacity(items.len());
    for it in items {
        let best = it.slots.into_iter().find(|s| s.finished);
        match best {
            Some(s) => {
                tokens.push(s.tokens);
                scores.push(Some(s.score));
            }
            // Unreachable in practice (the length limit finishes every beam); the best
            // running beam is the natural answer.
            None => {
                tokens.push(it.new[0].clone());
                scores.push(Some(
                    it.scores[0] / length_norm(it.new[0].len().max(1), cfg.length_penalty()),
                ));
            }
        }
    }
    Ok(DecodeOutput {
        tokens,
        scores,
        steps,
    })
}

/// The K best (beam, token, accumulated score) continuations of one item, best first.
fn candidates(
    logits: &[f32],
    vocab: usize,
    it: &mut Item,
    keep: usize,
    sample: bool,
) -> Result<Vec<(usize, u32, f32)>> {
    let nb = it.scores.len();
    let row = |j: usize| &logits[it.rows[j] * vocab..(it.rows[j] + 1) * vocab];
    let mut out: Vec<(usize, u32, f32)> = Vec::with_capacity(keep);
    if sample {
        // softmax over all beams × vocab of the accumulated scores, K draws without
        // replacement, then sorted by score as HF sorts them.
        let scores = &it.scores;
        let acc: Vec<f32> = (0..nb)
            .flat_map(|j| row(j).iter().map(move |&v| v + scores[j]))
            .collect();
        let probs = sampling::softmax(&acc);
        for i in sampling::draw_distinct(&probs, keep, &mut it.rng) {
            out.push((i / vocab, (i % vocab) as u32, acc[i]));
        }
    } else {
        let mut tops: Vec<Option<Vec<(f32, u32)>>> = vec![None; logits.len() / vocab];
        for j in 0..nb {
            let r = it.rows[j];
            let top = tops[r].get_or_insert_with(|| top_k(row(j), keep));
            out.extend(top.iter().map(|&(v, tok)| (j, tok, v + it.scores[j])));
        }
    }
    out.sort_by(|a, b| desc(a.2, b.2).then((a.0, a.1).cmp(&(b.0, b.1))));
    out.truncate(keep);
    Ok(out)
}

/// One HF beam step for one item given its sorted candidates.
fn advance(it: &mut Item, cands: &[(usize, u32, f32)], t: usize, cfg: &ResolvedGeneration) {
    let nb = it.scores.len();
    let eos = cfg.eos_token_ids();
    let hits: Vec<bool> = cands
        .iter()
        .map(|c| eos.contains(&c.1) || t + 1 >= cfg.max_new_tokens())
        .collect();

    // Finished hypotheses: only the first num_beams candidates qualify; none is added once
    // the item cannot improve or (early_stopping = true) all slots are finished.
    let all_finished = it.slots.iter().all(|s| s.finished);
    let frozen = !it.improvable || (cfg.early_stopping() == EarlyStopping::True && all_finished);
    if !frozen {
        let norm = length_norm(t + 1, cfg.length_penalty());
        let mut merged = it.slots.clone();
        for (i, &(j, tok, score)) in cands.iter().enumerate().take(nb) {
            if hits[i] {
                let mut tokens = it.new[j].clone();
                tokens.push(tok);
                merged.push(Slot {
                    score: score / norm,
                    finished: true,
                    tokens,
                });
            }
        }
        merged.sort_by(|a, b| desc(a.score, b.score));
        merged.truncate(nb);
        it.slots = merged;
    }

    // Running beams: the best num_beams candidates that did not stop.
    let mut order: Vec<usize> = (0..cands.len()).collect();
    let running = |i: usize| cands[i].2 + if hits[i] { NEG } else { 0.0 };
    order.sort_by(|&a, &b| desc(running(a), running(b)).then(a.cmp(&b)));
    let (mut seen, mut new, mut scores, mut rows) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for &i in order.iter().take(nb) {
        let (j, tok, _) = cands[i];
        let mut s = it.seen[j].clone();
        s.push(tok);
        let mut n = it.new[j].clone();
        n.push(tok);
        seen.push(s);
        new.push(n);
        scores.push(running(i));
        rows.push(it.rows[j]);
    }
    // Fewer candidates than beams only happens with a vocabulary smaller than K: repeat
    // the last one so every beam slot stays filled (its score keeps it from winning).
    while seen.len() < nb {
        let k = seen.len() - 1;
        seen.push(seen[k].clone());
        new.push(new[k].clone());
        scores.push(NEG + scores[k]);
        rows.push(rows[k]);
    }
    (it.seen, it.new, it.scores, it.rows) = (seen, new, scores, rows);

    // HF _check_early_stop_heuristic at the new length.
    let cur = t + 1;
    let hyp_len = if cfg.early_stopping() == EarlyStopping::Never && cfg.length_penalty() > 0.0 {
        cfg.max_new_tokens()
    } else {
        cur
    };
    let best_possible = it.scores[0] / length_norm(hyp_len, cfg.length_penalty());
    let worst = if it.slots.iter().all(|s| s.finished) {
        it.slots
            .iter()
            .map(|s| s.score)
            .fold(f32::INFINITY, f32::min)
    } else {
        NEG
    };
    it.improvable &= best_possible > worst;
    let full = it.slots.iter().all(|s| s.finished);
    it.done = !it.improvable
        || (cfg.early_stopping() == EarlyStopping::True && full)
        || hits.iter().all(|&h| h);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::settings::GenerationConfig;
    use crate::generate::test_util::{TableModel, resolved};

    fn lp(p: &[f32]) -> Vec<f32> {
        p.iter().map(|&v| v.ln()).collect()
    }

    #[test]
    fn log_softmax_normalises() {
        let mut r = vec![1.0, 2.0, 3.0];
        log_softmax(&mut r);
        let s: f32 = r.iter().map(|v| v.exp()).sum();
        // f32 exp/ln: a few ulps.
        assert!((s - 1.0).abs() < 1e-6, "{s}");
    }

    /// length_penalty and early_stopping change which finished hypothesis wins.
    #[test]
    fn length_penalty_and_early_stopping() {
        // From the start: eos (p .45) or 1 (p .55); after 1: eos (p .9) or 1 (.1).
        // Finished: [eos] score ln .45 = −0.799 (len 1), [1, eos] ln(.55·.9) = −0.703 (len 2).
        let table = vec![
            lp(&[0.5, 0.5, 1e-9]),
            lp(&[0.9, 0.1, 1e-9]),
            lp(&[0.5, 0.5, 1e-9]),
        ];
        let first = lp(&[0.45, 0.55, 1e-9]);
        let run = |length_penalty: f32, early_stopping: EarlyStopping, max_new_tokens: usize| {
            let cfg = GenerationConfig {
                num_beams: 1 + 1,
                max_new_tokens,
                length_penalty,
                early_stopping,
                ..Default::default()
            };
            let mut m = TableModel {
                vocab: 3,
                table: table.clone(),
                rows: 1,
                selects: vec![],
            };
            beam_search(first.clone(), vec![vec![2]], &resolved(cfg, &[0]), &mut m).unwrap()
        };
        // lp 1: −0.703/2 = −0.351 beats −0.799.
        assert_eq!(run(1.0, EarlyStopping::False, 6).tokens[0], vec![1, 0]);
        // lp 0 (no normalisation): −0.703 still beats −0.799.
        assert_eq!(run(0.0, EarlyStopping::False, 6).tokens[0], vec![1, 0]);
        // A strongly negative lp favours the short one: −0.799/1 vs −0.703·4 = −2.8.
        assert_eq!(run(-2.0, EarlyStopping::False, 6).tokens[0], vec![0]);
        // early_stopping = true stops once two hypotheses are finished; both modes agree
        // here, and the searches end before the length limit.
        let e = run(1.0, EarlyStopping::True, 6);
        assert_eq!(e.tokens[0], vec![1, 0]);
        assert!(e.steps < 5, "{} steps", e.steps);
        // "never" with lp > 0 estimates running beams at max length, so it searches longer.
        let n = run(1.0, EarlyStopping::Never, 6);
        assert_eq!(n.tokens[0], vec![1, 0]);
        assert!(n.steps >= e.steps);
    }

    /// Items of a batch are searched independently and done items leave the state.
    #[test]
    fn batch_rows_are_independent() {
        let v = 6;
        let table: Vec<Vec<f32>> = (0..v)
            .map(|p| {
                let mut r: Vec<f32> = (0..v).map(|i| ((i * 5 + p * 3) % 7) as f32 * 0.4).collect();
                log_softmax(&mut r);
                r
            })
            .collect();
        let cfg = resolved(
            GenerationConfig {
                num_beams: 3,
                max_new_tokens: 8,
                ..Default::default()
            },
            &[0],
        );
        let single = |p: usize| {
            let mut m = TableModel {
                vocab: v,
                table: table.clone(),
                rows: 1,
                selects: vec![],
            };
            beam_search(table[p].clone(), vec![vec![p as u32]], &cfg, &mut m).unwrap()
        };
        let mut m = TableModel {
            vocab: v,
            table: table.clone(),
            rows: 3,
            selects: vec![],
        };
        let first = [table[1].clone(), table[2].clone(), table[4].clone()].concat();
        let batch = beam_search(first, vec![vec![1], vec![2], vec![4]], &cfg, &mut m).unwrap();
        for (r, p) in [1, 2, 4].into_iter().enumerate() {
            let s = single(p);
            assert_eq!(batch.tokens[r], s.tokens[0], "row {r}");
            assert_eq!(batch.scores[r], s.scores[0], "row {r}");
        }
    }

    #[test]
    fn beam_sampling_is_seeded() {
        let v = 12;
        let table: Vec<Vec<f32>> = (0..v)
            .map(|p| {
                (0..v)
                    .map(|i| ((i * 7 + p * 5) % 11) as f32 * 0.25)
                    .collect()
            })
            .collect();
        let run = |seed| {
            let cfg = GenerationConfig {
                num_beams: 2,
                do_sample: true,
                top_k: 0,
                max_new_tokens: 10,
                seed: Some(seed),
                ..Default::default()
            };
            let mut m = TableModel {
                vocab: v,
                table: table.clone(),
                rows: 1,
                selects: vec![],
            };
            beam_search(
                table[3].clone(),
                vec![vec![3]],
                &resolved(cfg, &[0]),
                &mut m,
            )
            .unwrap()
            .tokens
        };
        assert_eq!(run(11), run(11));
    }
}
