//! BLEU-1..4 as pycocoevalcap's `Bleu(4)` computes it (`bleu_scorer.py`, David Chiang's
//! scorer): per image, n-gram matches clipped by the largest count in any one reference and
//! the "closest" reference length (ties to the shorter); the corpus score from the summed
//! matches, guesses and lengths; `tiny` = 1e-15 and `small` = 1e-9 guard the divisions
//! exactly as there.

use std::collections::HashMap;

use crate::text::py_split;

const N: usize = 4;
const SMALL: f64 = 1e-9;
const TINY: f64 = 1e-15;

/// Corpus and per-image BLEU-1..4.
#[derive(Clone, Debug, PartialEq)]
pub struct BleuScores {
    /// `Bleu_1`..`Bleu_4` over the corpus.
    pub corpus: [f64; N],
    /// Per image (in input order), `Bleu_1`..`Bleu_4`.
    pub per_image: Vec<[f64; N]>,
}

/// The n-grams (1..=4) of a tokenized sentence with their counts; words are `str.split()`.
fn precook(s: &str) -> (usize, HashMap<Vec<&str>, usize>) {
    let words: Vec<&str> = py_split(s).collect();
    let mut counts = HashMap::new();
    for k in 1..=N {
        for gram in words.windows(k) {
            *counts.entry(gram.to_vec()).or_insert(0) += 1;
        }
    }
    (words.len(), counts)
}

/// One image's cooked test: (testlen, reflen chosen by "closest", guesses, correct).
struct Cooked {
    testlen: usize,
    reflen: usize,
    guess: [usize; N],
    correct: [usize; N],
}

fn cook(hypothesis: &str, references: &[String]) -> Cooked {
    let mut reflens = Vec::with_capacity(references.len());
    let mut maxcounts: HashMap<Vec<&str>, usize> = HashMap::new();
    for r in references {
        let (len, counts) = precook(r);
        reflens.push(len);
        for (gram, c) in counts {
            let m = maxcounts.entry(gram).or_insert(0);
            *m = (*m).max(c);
        }
    }
    let (testlen, counts) = precook(hypothesis);
    // min((abs(l - testlen), l) for l in reflen)[1]: closest, ties to the shorter.
    let reflen = reflens
        .iter()
        .map(|&l| (l.abs_diff(testlen), l))
        .min()
        .map(|(_, l)| l)
        .unwrap_or(0);
    let mut guess = [0; N];
    for (k, g) in guess.iter_mut().enumerate() {
        *g = (testlen + 1).saturating_sub(k + 1);
    }
    let mut correct = [0; N];
    for (gram, c) in counts {
        correct[gram.len() - 1] += c.min(maxcounts.get(&gram).copied().unwrap_or(0));
    }
    Cooked {
        testlen,
        reflen,
        guess,
        correct,
    }
}

/// BLEU for tokenized hypotheses (one per image) against tokenized references, images in
/// the same order in both.
pub fn bleu(hypotheses: &[String], references: &[Vec<String>]) -> BleuScores {
    let mut per_image = Vec::with_capacity(hypotheses.len());
    let mut total_test = 0usize;
    let mut total_ref = 0usize;
    let mut guess = [0usize; N];
    let mut correct = [0usize; N];
    for (h, refs) in hypotheses.iter().zip(references) {
        let c = cook(h, refs);
        total_test += c.testlen;
        total_ref += c.reflen;
        for k in 0..N {
            guess[k] += c.guess[k];
            correct[k] += c.correct[k];
        }
        per_image.push(scores(&c.correct, &c.guess, c.testlen, c.reflen));
    }
    BleuScores {
        corpus: scores(&correct, &guess, total_test, total_ref),
        per_image,
    }
}

/// The geometric means of the clipped precisions, with the brevity penalty.
fn scores(correct: &[usize; N], guess: &[usize; N], testlen: usize, reflen: usize) -> [f64; N] {
    let mut out = [0.0; N];
    let mut product = 1.0f64;
    for k in 0..N {
        product *= (correct[k] as f64 + TINY) / (guess[k] as f64 + SMALL);
        out[k] = product.powf(1.0 / (k as f64 + 1.0));
    }
    let ratio = (testlen as f64 + TINY) / (reflen as f64 + SMALL);
    if ratio < 1.0 {
        let penalty = (1.0 - 1.0 / ratio).exp();
        for v in &mut out {
            *v *= penalty;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_sentence_scores_one() {
        let s = bleu(
            &["a dog runs on the grass".to_string()],
            &[vec!["a dog runs on the grass".to_string()]],
        );
        // (6 + 1e-15) / (6 + 1e-9) and friends: 1 within 1e-9.
        for v in s.corpus {
            assert!((v - 1.0).abs() < 1e-9, "{v}");
        }
    }

    #[test]
    fn closest_length_ties_to_shorter() {
        let c = cook("a b c", &["a b".to_string(), "a b c d".to_string()]);
        assert_eq!(c.reflen, 2);
    }
}
