//! CIDEr-D as pycocoevalcap's `Cider` computes it (`cider_scorer.py`): TF-IDF vectors of
//! 1..4-grams with document frequencies counted over the references of all images (an n-gram
//! counts once per image), idf = log(#images) - log(max(1, df)), the candidate's weights
//! clipped by the reference's (`min(hyp, ref) * ref`), cosine per n, a Gaussian length
//! penalty with sigma = 6, mean over n, mean over the references, times 10.
//!
//! Quirk kept on purpose: the "length" in the penalty is the number of bigrams (the code adds
//! term frequencies where `n == 1`, i.e. for 2-grams), so it is the word count minus one and
//! 0 for both an empty and a one-word caption.

use std::collections::HashMap;

use crate::text::py_split;

const N: usize = 4;
const SIGMA: f64 = 6.0;

/// Corpus CIDEr-D (the mean) and the per-image scores in input order.
#[derive(Clone, Debug, PartialEq)]
pub struct CiderScores {
    pub corpus: f64,
    pub per_image: Vec<f64>,
}

/// N-gram counts in first-seen order (1-grams, then 2-grams, ...), as the Python dict
/// iterates them; the order only affects the last bits of the sums.
struct Counts<'a> {
    grams: Vec<(Vec<&'a str>, usize)>,
}

fn precook(s: &str) -> Counts<'_> {
    let words: Vec<&str> = py_split(s).collect();
    let mut index: HashMap<Vec<&str>, usize> = HashMap::new();
    let mut grams: Vec<(Vec<&str>, usize)> = Vec::new();
    for k in 1..=N {
        for gram in words.windows(k) {
            match index.get(gram) {
                Some(&i) => grams[i].1 += 1,
                None => {
                    index.insert(gram.to_vec(), grams.len());
                    grams.push((gram.to_vec(), 1));
                }
            }
        }
    }
    Counts { grams }
}

/// A TF-IDF vector per n, its norms and the bigram count.
struct Vector<'a> {
    weights: [Vec<(Vec<&'a str>, f64)>; N],
    lookup: [HashMap<Vec<&'a str>, f64>; N],
    norm: [f64; N],
    length: usize,
}

fn vectorize<'a>(counts: &Counts<'a>, df: &HashMap<Vec<&str>, f64>, ref_len: f64) -> Vector<'a> {
    let mut weights: [Vec<(Vec<&str>, f64)>; N] = Default::default();
    let mut lookup: [HashMap<Vec<&str>, f64>; N] = Default::default();
    let mut norm = [0.0f64; N];
    let mut length = 0;
    for (gram, tf) in &counts.grams {
        let d = df.get(gram).copied().unwrap_or(0.0).max(1.0).ln();
        let n = gram.len() - 1;
        let w = *tf as f64 * (ref_len - d);
        norm[n] += w.powi(2);
        weights[n].push((gram.clone(), w));
        lookup[n].insert(gram.clone(), w);
        if n == 1 {
            length += tf;
        }
    }
    for v in &mut norm {
        *v = v.sqrt();
    }
    Vector {
        weights,
        lookup,
        norm,
        length,
    }
}

fn sim(hyp: &Vector, reference: &Vector) -> [f64; N] {
    let delta = hyp.length as f64 - reference.length as f64;
    let mut val = [0.0f64; N];
    for (n, v) in val.iter_mut().enumerate() {
        for (gram, w) in &hyp.weights[n] {
            let r = reference.lookup[n].get(gram).copied().unwrap_or(0.0);
            *v += w.min(r) * r;
        }
        if hyp.norm[n] != 0.0 && reference.norm[n] != 0.0 {
            *v /= hyp.norm[n] * reference.norm[n];
        }
        // np.e ** (-(delta**2) / (2 * sigma**2))
        *v *= std::f64::consts::E.powf(-(delta * delta) / (2.0 * SIGMA * SIGMA));
    }
    val
}

/// CIDEr-D for tokenized hypotheses (one per image) against tokenized references.
pub fn cider(hypotheses: &[String], references: &[Vec<String>]) -> CiderScores {
    let refs: Vec<Vec<Counts>> = references
        .iter()
        .map(|rs| rs.iter().map(|r| precook(r)).collect())
        .collect();
    // Document frequency: in how many images' reference sets an n-gram occurs.
    let mut df: HashMap<Vec<&str>, f64> = HashMap::new();
    for image in &refs {
        let mut seen: std::collections::HashSet<&Vec<&str>> = std::collections::HashSet::new();
        for r in image {
            for (gram, _) in &r.grams {
                if seen.insert(gram) {
                    *df.entry(gram.clone()).or_insert(0.0) += 1.0;
                }
            }
        }
    }
    let ref_len = (refs.len() as f64).ln();
    let mut per_image = Vec::with_capacity(hypotheses.len());
    for (h, image_refs) in hypotheses.iter().zip(&refs) {
        let hyp = vectorize(&precook(h), &df, ref_len);
        let mut score = [0.0f64; N];
        for r in image_refs {
            let rv = vectorize(r, &df, ref_len);
            let s = sim(&hyp, &rv);
            for n in 0..N {
                score[n] += s[n];
            }
        }
        let mut avg = score.iter().sum::<f64>() / N as f64;
        avg /= image_refs.len() as f64;
        avg *= 10.0;
        per_image.push(avg);
    }
    let corpus = if per_image.is_empty() {
        f64::NAN
    } else {
        per_image.iter().sum::<f64>() / per_image.len() as f64
    };
    CiderScores { corpus, per_image }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching_caption_beats_unrelated() {
        let refs = vec![
            vec![
                "a dog on the grass".to_string(),
                "a brown dog on grass".to_string(),
            ],
            vec![
                "a red car on a street".to_string(),
                "a car parked outside".to_string(),
            ],
        ];
        let s = cider(
            &[
                "a dog on the grass".to_string(),
                "a dog on the grass".to_string(),
            ],
            &refs,
        );
        assert!(s.per_image[0] > s.per_image[1]);
        assert_eq!(s.per_image[1], 0.0, "no shared n-gram with weight: score 0");
    }
}
