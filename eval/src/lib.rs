//! Caption and VQA evaluation that reproduces the reference implementations:
//! BLEU-1..4 and CIDEr-D as pycocoevalcap 1.2 computes them (after its PTB tokenization),
//! and VQAv2 accuracy as the official `vqaEval.py` does. See docs/eval.md.
//!
//! std + serde_json only; no dependency on the model or the engine.

pub mod bleu;
pub mod cider;
pub mod error;
pub mod formats;
pub mod ptb;
pub mod text;
pub mod vqa;

use std::collections::{HashMap, HashSet};
use std::path::Path;

pub use error::EvalError;
use formats::CaptionFile;
use vqa::Question;

/// How many ids an id-mismatch error lists.
const IDS_SHOWN: usize = 5;

/// Scores of one image.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageScores {
    pub image_id: String,
    /// `Bleu_1`..`Bleu_4` of this image alone.
    pub bleu: [f64; 4],
    pub cider: f64,
}

/// The result of `blip2 eval caption`.
#[derive(Clone, Debug, PartialEq)]
pub struct CaptionReport {
    /// Corpus `Bleu_1`..`Bleu_4`.
    pub bleu: [f64; 4],
    /// Corpus `CIDEr` (CIDEr-D).
    pub cider: f64,
    /// Per image, in the references' image order.
    pub per_image: Vec<ImageScores>,
    /// Prediction rows skipped because they carried an error (dataset JSONL).
    pub skipped_prediction_errors: usize,
    /// Reference rows skipped because they carried an error (dataset JSONL).
    pub skipped_reference_errors: usize,
}

/// Tokenized captions in pycocoevalcap's order.
#[derive(Clone, Debug, PartialEq)]
pub struct Tokenized {
    /// Image ids in evaluation order (the references' order).
    pub image_ids: Vec<String>,
    /// One tokenized prediction per image.
    pub predictions: Vec<String>,
    /// The tokenized references of each image.
    pub references: Vec<Vec<String>>,
}

/// Pair predictions with references as pycocoevalcap does and tokenize both.
///
/// pycocoevalcap evaluates the images of the reference file and asserts that the
/// predictions name exactly those images, one caption each; here a mismatch is an error
/// naming the first few ids, and a repeated prediction names its rows.
pub fn tokenize_pair(
    predictions: &CaptionFile,
    predictions_path: &Path,
    references: &CaptionFile,
    references_path: &Path,
) -> Result<Tokenized, EvalError> {
    let mut refs_by_image: HashMap<&str, Vec<&str>> = HashMap::new();
    for r in &references.records {
        refs_by_image
            .entry(r.image_id.as_str())
            .or_default()
            .push(r.caption.as_str());
    }
    let image_ids: Vec<String> = references.image_order.clone();
    if image_ids.is_empty() {
        return Err(EvalError::Empty {
            path: references_path.to_path_buf(),
            what: "images",
        });
    }
    for id in &image_ids {
        if !refs_by_image.contains_key(id.as_str()) {
            return Err(EvalError::NoReferences {
                path: references_path.to_path_buf(),
                id: id.clone(),
            });
        }
    }
    // Predicted images in first-seen order, each with its rows.
    let mut pred_order: Vec<&str> = Vec::new();
    let mut pred_by_image: HashMap<&str, Vec<&formats::CaptionRecord>> = HashMap::new();
    for p in &predictions.records {
        let rows = pred_by_image.entry(p.image_id.as_str()).or_default();
        if rows.is_empty() {
            pred_order.push(p.image_id.as_str());
        }
        rows.push(p);
    }
    for id in &pred_order {
        let rows = &pred_by_image[id];
        if rows.len() > 1 {
            return Err(EvalError::DuplicatePrediction {
                path: predictions_path.to_path_buf(),
                id: id.to_string(),
                count: rows.len(),
                rows: rows
                    .iter()
                    .take(IDS_SHOWN)
                    .map(|r| r.row.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
    }
    let known: HashSet<&str> = image_ids.iter().map(String::as_str).collect();
    let missing: Vec<&String> = image_ids
        .iter()
        .filter(|id| !pred_by_image.contains_key(id.as_str()))
        .collect();
    let unknown: Vec<&str> = pred_order
        .iter()
        .copied()
        .filter(|id| !known.contains(id))
        .collect();
    if !missing.is_empty() || !unknown.is_empty() {
        return Err(EvalError::IdMismatch {
            what: "image ids",
            missing: missing
                .iter()
                .take(IDS_SHOWN)
                .map(|s| s.to_string())
                .collect(),
            missing_count: missing.len(),
            unknown: unknown
                .iter()
                .take(IDS_SHOWN)
                .map(|s| s.to_string())
                .collect(),
            unknown_count: unknown.len(),
        });
    }
    // pycocoevalcap tokenizes all references in one tokenizer run and all predictions in
    // another, images in evaluation order.
    let flat_refs: Vec<&str> = image_ids
        .iter()
        .flat_map(|id| refs_by_image[id.as_str()].iter().copied())
        .collect();
    let tokenized_refs = ptb::tokenize_captions(&flat_refs);
    let mut it = tokenized_refs.into_iter();
    let references_tok: Vec<Vec<String>> = image_ids
        .iter()
        .map(|id| it.by_ref().take(refs_by_image[id.as_str()].len()).collect())
        .collect();
    let flat_preds: Vec<&str> = image_ids
        .iter()
        .map(|id| pred_by_image[id.as_str()][0].caption.as_str())
        .collect();
    let predictions_tok = ptb::tokenize_captions(&flat_preds);
    Ok(Tokenized {
        image_ids,
        predictions: predictions_tok,
        references: references_tok,
    })
}

/// BLEU-1..4 and CIDEr-D of already tokenized captions.
pub fn score_tokenized(t: &Tokenized) -> CaptionReport {
    let b = bleu::bleu(&t.predictions, &t.references);
    let c = cider::cider(&t.predictions, &t.references);
    let per_image = t
        .image_ids
        .iter()
        .enumerate()
        .map(|(i, id)| ImageScores {
            image_id: id.clone(),
            bleu: b.per_image[i],
            cider: c.per_image[i],
        })
        .collect();
    CaptionReport {
        bleu: b.corpus,
        cider: c.corpus,
        per_image,
        skipped_prediction_errors: 0,
        skipped_reference_errors: 0,
    }
}

/// `blip2 eval caption`: read both files, tokenize, score.
pub fn evaluate_caption_files(
    predictions: &Path,
    references: &Path,
) -> Result<CaptionReport, EvalError> {
    let preds = formats::read_captions(predictions)?;
    let refs = formats::read_captions(references)?;
    let t = tokenize_pair(&preds, predictions, &refs, references)?;
    let mut report = score_tokenized(&t);
    report.skipped_prediction_errors = preds.skipped_errors;
    report.skipped_reference_errors = refs.skipped_errors;
    Ok(report)
}

/// The result of `blip2 eval vqa`.
#[derive(Clone, Debug, PartialEq)]
pub struct VqaReport {
    pub scores: vqa::VqaScores,
    /// Question ids in evaluation order (the annotations' order).
    pub question_ids: Vec<String>,
}

/// `blip2 eval vqa`: the official VQAv2 accuracy. Like the official `loadRes`, the
/// predictions must answer exactly the annotated questions, once each.
pub fn evaluate_vqa_files(
    predictions: &Path,
    annotations: &Path,
    questions: Option<&Path>,
) -> Result<VqaReport, EvalError> {
    let qs = formats::read_vqa_annotations(annotations)?;
    if qs.is_empty() {
        return Err(EvalError::Empty {
            path: annotations.to_path_buf(),
            what: "questions",
        });
    }
    if let Some(qpath) = questions {
        let listed = formats::read_vqa_questions(qpath)?;
        let absent: Vec<&Question> = qs
            .iter()
            .filter(|q| !listed.contains_key(&q.question_id))
            .collect();
        if let Some(first) = absent.first() {
            return Err(EvalError::Format {
                path: qpath.to_path_buf(),
                problem: format!(
                    "{} annotated questions are not in the questions file (first: {})",
                    absent.len(),
                    first.question_id
                ),
            });
        }
    }
    let preds = formats::read_vqa_predictions(predictions)?;
    let mut by_id: HashMap<&str, (&str, &str)> = HashMap::new();
    for (id, answer, row) in &preds {
        if let Some((_, first_row)) = by_id.insert(id.as_str(), (answer.as_str(), row.as_str())) {
            return Err(EvalError::DuplicateQuestion {
                path: predictions.to_path_buf(),
                id: id.clone(),
                rows: format!("{first_row} and {row}"),
            });
        }
    }
    let known: HashSet<&str> = qs.iter().map(|q| q.question_id.as_str()).collect();
    let missing: Vec<String> = qs
        .iter()
        .filter(|q| !by_id.contains_key(q.question_id.as_str()))
        .map(|q| q.question_id.clone())
        .collect();
    let unknown: Vec<String> = preds
        .iter()
        .filter(|(id, _, _)| !known.contains(id.as_str()))
        .map(|(id, _, _)| id.clone())
        .collect();
    if !missing.is_empty() || !unknown.is_empty() {
        return Err(EvalError::IdMismatch {
            what: "question ids",
            missing_count: missing.len(),
            missing: missing.into_iter().take(IDS_SHOWN).collect(),
            unknown_count: unknown.len(),
            unknown: unknown.into_iter().take(IDS_SHOWN).collect(),
        });
    }
    let answers: Vec<String> = qs
        .iter()
        .map(|q| by_id[q.question_id.as_str()].0.to_string())
        .collect();
    Ok(VqaReport {
        scores: vqa::evaluate(&qs, &answers),
        question_ids: qs.iter().map(|q| q.question_id.clone()).collect(),
    })
}
