//! Sampling: a seeded random number generator, HF's warpers (temperature, top-k, top-p)
//! and drawing a token from processed scores.
//!
//! `transformers` draws with torch's generator, which cannot be reproduced outside torch;
//! what is reproduced is the distribution (the same warpers in the same order), and a
//! given seed gives the same tokens on the same device.

use crate::{ModelError, Result};

/// xoshiro256** seeded through SplitMix64: small, fast, and the same stream on every
/// platform for a given seed.
#[derive(Clone, Debug)]
pub struct Rng {
    s: [u64; 4],
}

fn splitmix64(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut x = seed;
        Rng {
            s: [
                splitmix64(&mut x),
                splitmix64(&mut x),
                splitmix64(&mut x),
                splitmix64(&mut x),
            ],
        }
    }

    /// An independent stream per batch row, so a row's draws do not depend on the other
    /// rows of its batch.
    pub fn stream(seed: u64, stream: u64) -> Rng {
        let mut x = stream;
        Rng::new(seed ^ splitmix64(&mut x))
    }

    pub fn next_u64(&mut self) -> u64 {
        let r = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        r
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// A seed from the OS-seeded hasher state, for sampling without a given seed.
pub fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// HF TemperatureLogitsWarper: scores / temperature.
pub fn apply_temperature(scores: &mut [f32], temperature: f32) {
    if temperature != 1.0 {
        for s in scores {
            *s /= temperature;
        }
    }
}

/// NaN sorts below everything (it can never be kept in place of a number).
fn key(v: f32) -> f32 {
    if v.is_nan() { f32::NEG_INFINITY } else { v }
}

/// HF TopKLogitsWarper: keeps the `max(k, min_keep)` highest scores (and every score tied
/// with the last of them); the rest become -inf. `k == 0` disables it.
pub fn apply_top_k(scores: &mut [f32], k: usize, min_keep: usize) {
    if k == 0 {
        return;
    }
    let k = k.max(min_keep).min(scores.len());
    if k == 0 || k == scores.len() {
        return;
    }
    let mut v: Vec<f32> = scores.iter().map(|&s| key(s)).collect();
    let (_, kth, _) = v.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
    let kth = *kth;
    for s in scores {
        if key(*s) < kth {
            *s = f32::NEG_INFINITY;
        }
    }
}

/// HF TopPLogitsWarper: sorted ascending, the tokens whose cumulative probability stays
/// ≤ 1 − p are removed; the `min_keep` most likely always stay. `p == 1` disables it.
pub fn apply_top_p(scores: &mut [f32], p: f32, min_keep: usize) {
    if p >= 1.0 || scores.is_empty() {
        return;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| key(scores[a]).total_cmp(&key(scores[b])));
    let max = key(scores[order[scores.len() - 1]]);
    if max == f32::NEG_INFINITY {
        return;
    }
    // softmax in f32, cumulative sum accumulated in f64 as torch's CPU cumsum does.
    let exps: Vec<f32> = order
        .iter()
        .map(|&i| (key(scores[i]) - max).exp())
        .collect();
    let total: f32 = exps.iter().sum();
    let threshold = 1.0 - p;
    let keep_from = scores.len().saturating_sub(min_keep);
    let mut cum = 0f64;
    for (j, (&i, &e)) in order.iter().zip(&exps).enumerate() {
        cum += (e / total) as f64;
        if j < keep_from && (cum as f32) <= threshold {
            scores[i] = f32::NEG_INFINITY;
        }
    }
}

/// The warpers HF applies when sampling, in HF's order (after the logits processors).
pub fn warp(scores: &mut [f32], temperature: f32, top_k: usize, top_p: f32, min_keep: usize) {
    apply_temperature(scores, temperature);
    apply_top_k(scores, top_k, min_keep);
    apply_top_p(scores, top_p, min_keep);
}

/// Candidates beyond top-k that a device returns for a sampled row: one more than k is
/// enough to prove the set complete when the k-th and the next value differ after the
/// temperature; a few more make that the rule when they do not.
pub const CANDIDATE_MARGIN: usize = 8;
/// Most candidates read back per row (ties included) before the whole row is read instead.
pub const MAX_CANDIDATES: usize = 1024;

/// For a row sampled with top-k `top_k` (and `min_keep`) over `vocab` entries: how many
/// of its largest logits a device should return (`k`, counting ties with the k-th in, up
/// to `max_out`) so that [`draw_from_candidates`] can stand in for the whole row; None
/// when top-k is off or keeps too much (the row is read back whole).
pub fn candidate_request(top_k: usize, min_keep: usize, vocab: usize) -> Option<(usize, usize)> {
    if top_k == 0 {
        return None;
    }
    let k = top_k.max(min_keep) + CANDIDATE_MARGIN;
    (k < vocab && 2 * k <= MAX_CANDIDATES).then_some((k, 2 * k))
}

/// The draw [`warp`] + [`softmax`] + [`draw`] make on a whole row of `vocab` logits,
/// made from its top candidates alone (`ids` ascending, their `values`; every other entry
/// below them or excluded): the row is rebuilt with −inf elsewhere and warped. That
/// equals warping the whole row exactly when top-k removes at least one candidate: every
/// entry that is not a candidate is below all candidates, so it would have been removed
/// too, and what top-k keeps, top-p and the softmax see, are then the same numbers.
/// `Ok(None)` when no candidate was removed (the caller reads the row), before any draw.
#[allow(clippy::too_many_arguments)]
pub fn draw_from_candidates(
    ids: &[u32],
    values: &[f32],
    vocab: usize,
    temperature: f32,
    top_k: usize,
    top_p: f32,
    min_keep: usize,
    rng: &mut Rng,
) -> Result<Option<usize>> {
    let mut row = vec![f32::NEG_INFINITY; vocab];
    for (&i, &v) in ids.iter().zip(values) {
        match row.get_mut(i as usize) {
            Some(slot) => *slot = v,
            None => {
                return Err(ModelError::Invalid(format!(
                    "candidate id {i} outside the vocabulary of {vocab}"
                )));
            }
        }
    }
    apply_temperature(&mut row, temperature);
    apply_top_k(&mut row, top_k, min_keep);
    if ids.iter().all(|&i| row[i as usize] != f32::NEG_INFINITY) {
        return Ok(None);
    }
    apply_top_p(&mut row, top_p, min_keep);
    Ok(Some(draw(&softmax(&row), rng)?))
}

/// Probabilities softmax(scores) in f32 (zero for -inf and NaN scores).
pub fn softmax(scores: &[f32]) -> Vec<f32> {
    let max = scores.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(key(s)));
    if max == f32::NEG_INFINITY {
        return vec![0.0; scores.len()];
    }
    let mut p: Vec<f32> = scores.iter().map(|&s| (key(s) - max).exp()).collect();
    let total: f32 = p.iter().sum();
    for v in &mut p {
        *v /= total;
    }
    p
}

/// One draw from the distribution proportional to `weights` (non-negative). Errors when
/// every weight is zero (every token was excluded), as torch.multinomial does.
pub fn draw(weights: &[f32], rng: &mut Rng) -> Result<usize> {
    let total: f64 = weights.iter().map(|&w| w.max(0.0) as f64).sum();
    if !(total > 0.0 && total.is_finite()) {
        return Err(ModelError::Invalid(
            "sampling found no token with a non-zero probability (every token was excluded by the generation settings)".into(),
        ));
    }
    let u = rng.next_f64() * total;
    let mut acc = 0f64;
    let mut last = 0;
    for (i, &w) in weights.iter().enumerate() {
        if w > 0.0 {
            acc += w as f64;
            last = i;
            if u < acc {
                return Ok(i);
            }
        }
    }
    // Rounding can leave u ≥ acc by an ulp: the last candidate takes that sliver.
    Ok(last)
}

/// `n` distinct draws without replacement, in draw order (torch.multinomial with
/// replacement=False draws the same distribution). When fewer than `n` weights are
/// positive, the rest are filled with the remaining indices by decreasing weight.
pub fn draw_distinct(weights: &[f32], n: usize, rng: &mut Rng) -> Vec<usize> {
    let mut w: Vec<f32> = weights
        .iter()
        .map(|&v| if v > 0.0 && v.is_finite() { v } else { 0.0 })
        .collect();
    let mut out = Vec::with_capacity(n);
    while out.len() < n.min(w.len()) {
        match draw(&w, rng) {
            Ok(i) => {
                out.push(i);
                w[i] = 0.0;
            }
            Err(_) => break,
        }
    }
    if out.len() < n.min(weights.len()) {
        let mut rest: Vec<usize> = (0..weights.len()).filter(|i| !out.contains(i)).collect();
        rest.sort_by(|&a, &b| key(weights[b]).total_cmp(&key(weights[a])).then(a.cmp(&b)));
        out.extend(rest.into_iter().take(n - out.len()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_is_deterministic_and_streams_differ() {
        let a: Vec<u64> = {
            let mut r = Rng::new(7);
            (0..4).map(|_| r.next_u64()).collect()
        };
        let b: Vec<u64> = {
            let mut r = Rng::new(7);
            (0..4).map(|_| r.next_u64()).collect()
        };
        assert_eq!(a, b);
        assert_ne!(Rng::stream(7, 0).next_u64(), Rng::stream(7, 1).next_u64());
        let mut r = Rng::new(1);
        assert!(
            (0..1000)
                .map(|_| r.next_f64())
                .all(|u| (0.0..1.0).contains(&u))
        );
    }

    #[test]
    fn temperature_divides() {
        let mut s = vec![1.0, -2.0, 4.0];
        apply_temperature(&mut s, 0.5);
        assert_eq!(s, vec![2.0, -4.0, 8.0]);
    }

    #[test]
    fn top_k_keeps_ties_and_min_keep() {
        let mut s = vec![1.0, 3.0, 2.0, 3.0, 0.0];
        apply_top_k(&mut s, 1, 1);
        // Both 3.0 entries tie with the 1st largest: HF keeps every score ≥ the k-th.
        assert_eq!(
            s,
            vec![
                f32::NEG_INFINITY,
                3.0,
                f32::NEG_INFINITY,
                3.0,
                f32::NEG_INFINITY
            ]
        );
        let mut s = vec![1.0, 4.0, 2.0, 3.0];
        apply_top_k(&mut s, 1, 2);
        assert_eq!(s, vec![f32::NEG_INFINITY, 4.0, f32::NEG_INFINITY, 3.0]);
        let mut s = vec![1.0, 4.0];
        apply_top_k(&mut s, 0, 1);
        assert_eq!(s, vec![1.0, 4.0]);
    }

    #[test]
    fn top_p_keeps_the_nucleus() {
        // probabilities 0.5, 0.25, 0.125, 0.125 (exact in binary)
        let l = |p: f32| p.ln();
        let base = vec![l(0.5), l(0.25), l(0.125), l(0.125)];
        let mut s = base.clone();
        apply_top_p(&mut s, 0.7, 1);
        // ascending cumsum: 0.125, 0.25, 0.5, 1.0; removed where ≤ 0.3 → the two 0.125s.
        assert_eq!(&s[..2], &base[..2]);
        assert!(s[2] == f32::NEG_INFINITY && s[3] == f32::NEG_INFINITY);
        let mut s = base.clone();
        apply_top_p(&mut s, 0.01, 1);
        assert_eq!(s[0], base[0]);
        assert!(s[1..].iter().all(|&v| v == f32::NEG_INFINITY));
        let mut s = base.clone();
        apply_top_p(&mut s, 0.01, 2);
        assert_eq!(&s[..2], &base[..2]);
    }

    #[test]
    fn draw_errors_when_everything_is_excluded() {
        let mut r = Rng::new(0);
        assert!(draw(&[0.0, 0.0], &mut r).is_err());
        assert_eq!(draw(&[0.0, 1.0, 0.0], &mut r).unwrap(), 1);
        let d = draw_distinct(&[0.0, 0.5, 0.5, 0.0], 3, &mut r);
        assert_eq!(d.len(), 3);
        assert!(d[..2].contains(&1) && d[..2].contains(&2));
    }

    /// Drawing from the top candidates equals drawing from the whole row, with the same
    /// generator state after, whenever it answers; it answers for rows without ties at
    /// the cut. Rows: random, and quantised to a few levels (ties), several warper
    /// settings. Exact comparison: the same numbers go through the same code.
    #[test]
    fn candidates_draw_what_the_whole_row_draws() {
        let mut rng = Rng::new(11);
        let mut answered = 0;
        let mut asked = 0;
        for case in 0..400 {
            let vocab = [7usize, 60, 257, 1000][case % 4];
            let levels = if case % 3 == 0 { 5.0 } else { 0.0 };
            let row: Vec<f32> = (0..vocab)
                .map(|_| {
                    let v = (rng.next_f64() * 20.0 - 10.0) as f32;
                    if levels > 0.0 {
                        (v / levels).round() * levels
                    } else {
                        v
                    }
                })
                .collect();
            let temperature = [1.0, 0.7, 1.3, 0.05][case % 4 / 2 + case % 2 * 2];
            let top_k = [1usize, 5, 50][case % 3];
            let top_p = [1.0, 0.9, 0.5][(case / 3) % 3];
            let min_keep = 1 + case % 2;
            let Some((k, max_out)) = candidate_request(top_k, min_keep, vocab) else {
                continue;
            };
            // The device's rule: every entry >= the k-th largest.
            let mut sorted = row.clone();
            sorted.sort_by(|a, b| b.total_cmp(a));
            let kth = sorted[k - 1];
            let ids: Vec<u32> = (0..vocab as u32)
                .filter(|&i| row[i as usize] >= kth)
                .collect();
            if ids.len() > max_out {
                continue;
            }
            let values: Vec<f32> = ids.iter().map(|&i| row[i as usize]).collect();
            asked += 1;
            let seed = rng.next_u64();
            let (mut a, mut b) = (Rng::new(seed), Rng::new(seed));
            let mut whole = row.clone();
            warp(&mut whole, temperature, top_k, top_p, min_keep);
            let want = draw(&softmax(&whole), &mut a).unwrap();
            let got = draw_from_candidates(
                &ids,
                &values,
                vocab,
                temperature,
                top_k,
                top_p,
                min_keep,
                &mut b,
            )
            .unwrap();
            if let Some(got) = got {
                answered += 1;
                assert_eq!(got, want, "case {case}");
                assert_eq!(a.next_u64(), b.next_u64(), "case {case}: generator state");
            } else {
                assert_eq!(b.next_u64(), Rng::new(seed).next_u64(), "case {case}: drew");
            }
        }
        // Ties at the cut (the quantised rows) are the only reason to decline.
        assert!(answered * 3 >= asked * 2, "{answered} of {asked} answered");
    }
}
