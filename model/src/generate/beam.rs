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

use blip2_engine::{Device, Tensor, ops};

use super::decode_model::{DecodeModel, DecodeOutput, check_logits, non_finite_error};
use super::processors::{apply_processors, banned_ids};
use super::row::{group_row, rows_of};
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

/// The `k` highest entries of `row` as (value, index), best first.
fn top_k(row: &[f32], k: usize) -> Vec<(f32, u32)> {
    best_first(
        row.iter()
            .enumerate()
            .map(|(i, &s)| (s, i as u32))
            .collect(),
        k,
    )
}

/// The `k` best of `v` by value (ties: lower index first), best first.
fn best_first(mut v: Vec<(f32, u32)>, k: usize) -> Vec<(f32, u32)> {
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

/// One step's logits `[rows, vocab]`: read back, or left on the model's device.
enum Logits {
    Host(Vec<f32>),
    Device(Tensor),
}

/// Where beam search chooses its candidates from logits left on a device.
#[derive(Clone, Copy, PartialEq, Eq)]
enum CandidatesOn {
    /// On a GPU only (on the CPU the candidates would cost more than the rows).
    Gpu,
    /// On whatever device the logits are (tests: the CPU path is bit-equal to the host's).
    #[cfg(test)]
    Any,
}

/// The processed scores of one step's state rows: the rows read back (log-softmax and the
/// processors applied on the host), and each row's best `keep` entries, where known.
struct StepScores {
    vocab: usize,
    host: Vec<f32>,
    /// State row → its row of `host`.
    at: Vec<Option<usize>>,
    /// State row → its best entries (value, id), best first.
    tops: Vec<Option<Vec<(f32, u32)>>>,
}

impl StepScores {
    fn row(&self, r: usize) -> Result<&[f32]> {
        let i = self.at[r].ok_or_else(|| {
            ModelError::Invalid(format!("beam search: state row {r} was not read back"))
        })?;
        Ok(&self.host[i * self.vocab..(i + 1) * self.vocab])
    }

    fn top(&mut self, r: usize, keep: usize) -> Result<&[(f32, u32)]> {
        if self.tops[r].is_none() {
            self.tops[r] = Some(top_k(self.row(r)?, keep));
        }
        Ok(self.tops[r].as_deref().unwrap_or_default())
    }
}

/// Beam search over a batch whose prefill logits are `logits` (see
/// [`super::search::decode`], which dispatches here when `num_beams > 1`).
pub(super) fn beam_search(
    logits: Vec<f32>,
    seen: Vec<Vec<u32>>,
    cfg: &ResolvedGeneration,
    model: &mut dyn DecodeModel,
) -> Result<DecodeOutput> {
    beam_search_on(logits, seen, cfg, model, CandidatesOn::Gpu)
}

fn beam_search_on(
    logits: Vec<f32>,
    seen: Vec<Vec<u32>>,
    cfg: &ResolvedGeneration,
    model: &mut dyn DecodeModel,
    device_candidates: CandidatesOn,
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
    let mut logits = Logits::Host(logits);
    let mut steps = 0;
    for t in 0..cfg.max_new_tokens() {
        let n_rows = match &logits {
            Logits::Host(v) => v.len() / vocab,
            Logits::Device(x) => x.dim(0),
        };
        if let Logits::Host(v) = &logits
            && v.len() != n_rows * vocab
        {
            return Err(ModelError::Invalid(format!(
                "model step returned {} logits for vocabulary {vocab}",
                v.len()
            )));
        }
        // The beam whose ids process each state row. Beams sharing a row (only before the
        // first step) share their ids too.
        let mut owner = vec![None; n_rows];
        for (b, it) in items.iter().enumerate().filter(|(_, it)| !it.done) {
            for (j, &r) in it.rows.iter().enumerate() {
                owner[r].get_or_insert((b, j));
            }
        }
        let mut scores = match logits {
            Logits::Host(v) => StepScores {
                vocab,
                host: v,
                at: (0..n_rows).map(Some).collect(),
                tops: vec![None; n_rows],
            },
            Logits::Device(x) => device_scores(&x, &owner, &items, t, cfg, keep)?,
        };
        for (r, o) in owner.iter().enumerate() {
            let (Some((b, j)), Some(i)) = (*o, scores.at[r]) else {
                continue;
            };
            let row = &mut scores.host[i * vocab..(i + 1) * vocab];
            ops::log_softmax_row(row);
            apply_processors(row, &items[b].seen[j], t, cfg);
            if cfg.do_sample() {
                sampling::warp(row, cfg.temperature(), cfg.top_k(), cfg.top_p(), min_keep);
            }
        }
        let mut src = Vec::new();
        let mut next_tokens = Vec::new();
        for it in items.iter_mut().filter(|it| !it.done) {
            let cands = candidates(&mut scores, it, keep, cfg.do_sample())?;
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
        // Logits left on a GPU stay there when the search is not sampling (sampling draws
        // over every beam's whole row) and no repetition penalty reads the scores; their
        // non-finite check is made there.
        let device = |x: &Tensor| {
            !cfg.do_sample()
                && cfg.repetition_penalty() == 1.0
                && match device_candidates {
                    CandidatesOn::Gpu => !matches!(x.device(), Device::Cpu),
                    #[cfg(test)]
                    CandidatesOn::Any => true,
                }
        };
        logits = match model.step_logits(&next_tokens)? {
            Some(x) if device(&x) => Logits::Device(x),
            Some(x) => Logits::Host(x.to_vec_f32()?),
            None => Logits::Host(model.step(&next_tokens)?),
        };
        if let Logits::Host(v) = &logits {
            check_logits(v, t + 1)?;
        }
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

/// The scores of a step whose logits `x` stayed on the model's device (not sampling): each
/// row's log-softmax there (one dispatch), then, for rows whose processors only ban ids,
/// the best `keep` entries with those ids excluded ([`ops::top_candidates`], one dispatch
/// per distinct set of banned ids), so that a row reads back 2 + 2·(keep + margin) words
/// instead of its vocabulary. The candidates hold every entry tied with the keep-th, so
/// the best `keep` of them (ties: lower id first) are the whole row's. Rows with a
/// repetition penalty, with ties past the margin, or with fewer than `keep` finite entries
/// are read back (their raw logits: the host path's arithmetic). The non-finite check of
/// the step's logits is made from the device's counts.
fn device_scores(
    x: &Tensor,
    owner: &[Option<(usize, usize)>],
    items: &[Item],
    t: usize,
    cfg: &ResolvedGeneration,
    keep: usize,
) -> Result<StepScores> {
    let (n_rows, vocab) = (x.dim(0), x.dim(1));
    let mut groups: Vec<(Vec<u32>, Vec<usize>)> = Vec::new();
    let mut host = Vec::new();
    for (r, o) in owner.iter().enumerate() {
        let Some((b, j)) = *o else { continue };
        match banned_ids(&items[b].seen[j], t, cfg, vocab) {
            Some(ex) => group_row(&mut groups, ex, r),
            None => host.push(r),
        }
    }
    let mut tops = vec![None; n_rows];
    let mut non_finite = 0;
    // One log-softmax for every row, taken only when some row is chosen on the device.
    if !groups.is_empty() {
        let lp = ops::log_softmax(x)?;
        for (ex, rs) in &groups {
            let cands = ops::top_candidates(&rows_of(&lp, rs)?, keep, keep + BEAM_MARGIN, ex)?;
            for (c, &r) in cands.into_iter().zip(rs) {
                match c {
                    Some(c) if c.non_finite > 0 => non_finite += c.non_finite as usize,
                    Some(c) if c.ids.len() >= keep => {
                        let best = best_first(c.values.into_iter().zip(c.ids).collect(), keep);
                        tops[r] = Some(best);
                    }
                    _ => host.push(r),
                }
            }
        }
    }
    host.sort_unstable();
    let host_v = if host.is_empty() {
        Vec::new()
    } else {
        rows_of(x, &host)?.to_vec_f32()?
    };
    non_finite += host_v.iter().filter(|v| !v.is_finite()).count();
    non_finite_error(non_finite, n_rows * vocab, t)?;
    let mut at = vec![None; n_rows];
    for (i, &r) in host.iter().enumerate() {
        at[r] = Some(i);
    }
    Ok(StepScores {
        vocab,
        host: host_v,
        at,
        tops,
    })
}

/// Candidates read back per row beyond the `keep` beam search needs, for ties.
const BEAM_MARGIN: usize = 16;

/// The K best (beam, token, accumulated score) continuations of one item, best first.
fn candidates(
    scores: &mut StepScores,
    it: &mut Item,
    keep: usize,
    sample: bool,
) -> Result<Vec<(usize, u32, f32)>> {
    let nb = it.scores.len();
    let vocab = scores.vocab;
    let mut out: Vec<(usize, u32, f32)> = Vec::with_capacity(keep);
    if sample {
        // softmax over all beams × vocab of the accumulated scores, K draws without
        // replacement, then sorted by score as HF sorts them.
        let mut acc: Vec<f32> = Vec::with_capacity(nb * vocab);
        for j in 0..nb {
            let s = it.scores[j];
            acc.extend(scores.row(it.rows[j])?.iter().map(|&v| v + s));
        }
        let probs = sampling::softmax(&acc);
        for i in sampling::draw_distinct(&probs, keep, &mut it.rng) {
            out.push((i / vocab, (i % vocab) as u32, acc[i]));
        }
    } else {
        for j in 0..nb {
            let s = it.scores[j];
            let top = scores.top(it.rows[j], keep)?;
            out.extend(top.iter().map(|&(v, tok)| (j, tok, v + s)));
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
    use crate::generate::test_util::{DeviceTable, TableModel, resolved, spread_table};
    use blip2_engine::testing::devices;

    fn lp(p: &[f32]) -> Vec<f32> {
        p.iter().map(|&v| v.ln()).collect()
    }

    #[test]
    fn log_softmax_normalises() {
        let mut r = vec![1.0, 2.0, 3.0];
        ops::log_softmax_row(&mut r);
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
                ops::log_softmax_row(&mut r);
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

    /// Logits left on a device: the candidates chosen there give the host path's search.
    /// On the CPU (forced) bit for bit, over a tie-rich table, with n-gram and eos bans as
    /// the device's exclusions, and a repetition penalty (rows read back). On a GPU the
    /// log-softmax's ln Σ is the device's (a few ulps from the host's, the same for a whole
    /// row): over a tie-free table the tokens are equal and the scores within 1e-5.
    #[test]
    fn device_candidates_give_the_host_search() {
        let v = 37;
        let mut x = 0x9e3779b9u32;
        let tie_free: Vec<Vec<f32>> = (0..v)
            .map(|_| {
                (0..v)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 17;
                        x ^= x << 5;
                        (x % 100_000) as f32 * 8e-5 - 4.0
                    })
                    .collect()
            })
            .collect();
        let configs = [
            GenerationConfig {
                num_beams: 3,
                max_new_tokens: 9,
                ..Default::default()
            },
            GenerationConfig {
                num_beams: 4,
                max_new_tokens: 12,
                min_new_tokens: 4,
                no_repeat_ngram_size: 2,
                length_penalty: 0.6,
                ..Default::default()
            },
            GenerationConfig {
                num_beams: 2,
                max_new_tokens: 7,
                repetition_penalty: 1.3,
                early_stopping: EarlyStopping::True,
                ..Default::default()
            },
        ];
        for dev in devices() {
            let cpu = matches!(dev, Device::Cpu);
            let table = if cpu {
                spread_table(v)
            } else {
                tie_free.clone()
            };
            for (c, cfg) in configs.iter().enumerate() {
                let cfg = resolved(cfg.clone(), &[5]);
                let first = [table[1].clone(), table[2].clone()].concat();
                let seen = vec![vec![1], vec![2]];
                let model = |rows| TableModel {
                    vocab: v,
                    table: table.clone(),
                    rows,
                    selects: vec![],
                };
                let want = beam_search(first.clone(), seen.clone(), &cfg, &mut model(2)).unwrap();
                let mut m = DeviceTable {
                    table: model(2),
                    device: dev.clone(),
                };
                let got = beam_search_on(first, seen, &cfg, &mut m, CandidatesOn::Any).unwrap();
                assert_eq!(got.tokens, want.tokens, "{dev:?} config {c}");
                assert_eq!(got.steps, want.steps, "{dev:?} config {c}");
                for (g, w) in got.scores.iter().zip(&want.scores) {
                    let (g, w) = (g.unwrap(), w.unwrap());
                    if cpu {
                        assert_eq!(g.to_bits(), w.to_bits(), "config {c}");
                    } else {
                        assert!((g - w).abs() <= 1e-5, "{dev:?} config {c}: {g} vs {w}");
                    }
                }
            }
        }
    }

    /// Non-finite logits left on a device are the host path's typed error.
    #[test]
    fn device_logits_with_nan_are_an_error() {
        let v = 9;
        let mut table = spread_table(v);
        table[3][4] = f32::NAN;
        let cfg = resolved(
            GenerationConfig {
                num_beams: 2,
                max_new_tokens: 6,
                ..Default::default()
            },
            &[8],
        );
        // Token 3 is the best first choice, so the next step's logits hold the NaN.
        let mut first = vec![0.0; v];
        first[3] = 5.0;
        for dev in devices() {
            let mut m = DeviceTable {
                table: TableModel {
                    vocab: v,
                    table: table.clone(),
                    rows: 1,
                    selects: vec![],
                },
                device: dev.clone(),
            };
            let r = beam_search_on(
                first.clone(),
                vec![vec![0]],
                &cfg,
                &mut m,
                CandidatesOn::Any,
            );
            assert!(
                matches!(r, Err(ModelError::NonFinite { count: 1, .. })),
                "{dev:?}: {:?}",
                r.map(|o| o.tokens)
            );
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
