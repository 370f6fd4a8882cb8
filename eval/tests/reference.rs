//! Our tokenizer and scores against pycocoevalcap 1.2 and the official VQA algorithm, from
//! the fixtures of tools/eval/make_reference.py (no Python or Java needed here).
//!
//! Tolerance for every score: 1e-6 absolute (the bar). The arithmetic is the same
//! as the reference's, in double precision; what differs is only the order of some sums
//! (dict iteration, numpy's pairwise mean), which moves results by ~1e-15.

use std::path::{Path, PathBuf};

use blip2_eval::{formats, ptb, score_tokenized, tokenize_pair};
use serde_json::Value;

const TOL: f64 = 1e-6;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/eval")
        .join(name)
}

fn load(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(name)).unwrap()).unwrap()
}

fn close(a: f64, b: f64, what: &str) {
    assert!((a - b).abs() <= TOL, "{what}: ours {a}, reference {b}");
}

#[test]
fn tokenizer_matches_corenlp_line_by_line() {
    let cases = load("ptb_expected.json");
    let cases = cases.as_array().unwrap();
    let inputs: Vec<&str> = cases.iter().map(|c| c["input"].as_str().unwrap()).collect();
    // One tokenizer run over all lines, as pycocoevalcap does (a line break inside a line
    // shifts the later ones, in both).
    let ours = ptb::tokenize_captions(&inputs);
    let mut bad = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let want = c["tokenized"].as_str().unwrap();
        if ours[i] != want {
            bad.push(format!(
                "{:?}\n   ours: {:?}\n   java: {:?}",
                inputs[i], ours[i], want
            ));
        }
    }
    assert!(
        bad.is_empty(),
        "{} of {} lines differ:\n{}",
        bad.len(),
        cases.len(),
        bad.join("\n")
    );
}

#[test]
fn tokenizer_matches_corenlp_on_random_lines() {
    let all = load("ptb_fuzz_expected.json");
    for batch in ["plain", "with_breaks"] {
        let cases = all[batch].as_array().unwrap();
        let inputs: Vec<&str> = cases.iter().map(|c| c["input"].as_str().unwrap()).collect();
        let ours = ptb::tokenize_captions(&inputs);
        let bad: Vec<String> = cases
            .iter()
            .enumerate()
            .filter(|(i, c)| ours[*i] != c["tokenized"].as_str().unwrap())
            .map(|(i, c)| {
                format!(
                    "{:?}\n   ours: {:?}\n   java: {}",
                    inputs[i], ours[i], c["tokenized"]
                )
            })
            .collect();
        assert!(
            bad.is_empty(),
            "{batch}: {} of {} lines differ:\n{}",
            bad.len(),
            cases.len(),
            bad.join("\n")
        );
    }
}

fn caption_run(pred: &str, refs: &str) -> blip2_eval::Tokenized {
    let p = formats::read_captions(&fixture(pred)).unwrap();
    let r = formats::read_captions(&fixture(refs)).unwrap();
    tokenize_pair(&p, &fixture(pred), &r, &fixture(refs)).unwrap()
}

#[test]
fn caption_tokens_match_pycocoevalcap() {
    let want = load("captions_expected.json");
    let t = caption_run("captions_predictions.json", "captions_references.json");
    let ids: Vec<&str> = want["image_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(t.image_ids, ids);
    let mut bad = Vec::new();
    for (i, w) in want["tokenized_predictions"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        if t.predictions[i] != w.as_str().unwrap() {
            bad.push(format!(
                "prediction of {}: ours {:?}, java {:?}",
                ids[i], t.predictions[i], w
            ));
        }
    }
    for (i, refs) in want["tokenized_references"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        for (j, w) in refs.as_array().unwrap().iter().enumerate() {
            if t.references[i][j] != w.as_str().unwrap() {
                bad.push(format!(
                    "reference {j} of {}: ours {:?}, java {:?}",
                    ids[i], t.references[i][j], w
                ));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "{} captions differ:\n{}",
        bad.len(),
        bad.join("\n")
    );
}

#[test]
fn per_image_and_corpus_scores_match_pycocoevalcap() {
    let want = load("captions_expected.json");
    let t = caption_run("captions_predictions.json", "captions_references.json");
    let report = score_tokenized(&t);
    for (i, w) in want["per_image"].as_array().unwrap().iter().enumerate() {
        let id = w["image_id"].as_str().unwrap();
        assert_eq!(report.per_image[i].image_id, id);
        for k in 0..4 {
            close(
                report.per_image[i].bleu[k],
                w["Bleu"][k].as_f64().unwrap(),
                &format!("{id} Bleu_{}", k + 1),
            );
        }
        close(
            report.per_image[i].cider,
            w["CIDEr"].as_f64().unwrap(),
            &format!("{id} CIDEr"),
        );
    }
    let c = &want["corpus"];
    for k in 0..4 {
        close(
            report.bleu[k],
            c[format!("Bleu_{}", k + 1)].as_f64().unwrap(),
            "corpus BLEU",
        );
    }
    close(report.cider, c["CIDEr"].as_f64().unwrap(), "corpus CIDEr");
}

#[test]
fn every_caption_format_gives_the_same_scores() {
    let base = score_tokenized(&caption_run(
        "captions_predictions.json",
        "captions_references.json",
    ));
    // The JSONL rows of `blip2 dataset caption` (two failed rows skipped) and the references
    // as a results-style list: same images, same order of captions, same numbers.
    let report = blip2_eval::evaluate_caption_files(
        &fixture("captions_predictions.jsonl"),
        &fixture("captions_references_list.json"),
    )
    .unwrap();
    assert_eq!(report.skipped_prediction_errors, 2);
    assert_eq!(report.bleu, base.bleu);
    assert_eq!(report.cider, base.cider);
}

#[test]
fn vqa_matches_the_official_algorithm() {
    let want = load("vqa_expected.json");
    for (pred, ann) in [
        ("vqa_predictions.json", "vqa_annotations.json"),
        ("vqa_predictions.jsonl", "vqa_annotations.jsonl"),
    ] {
        let r = blip2_eval::evaluate_vqa_files(
            &fixture(pred),
            &fixture(ann),
            Some(&fixture("vqa_questions.json")),
        )
        .unwrap();
        let s = &r.scores;
        // Rounded percentages are compared exactly: same doubles, same rounding rule.
        assert_eq!(s.overall, want["overall"].as_f64().unwrap(), "{pred}");
        close(
            s.overall_unrounded,
            want["overall_unrounded"].as_f64().unwrap(),
            "unrounded",
        );
        for (t, v) in &s.per_answer_type {
            assert_eq!(*v, want["perAnswerType"][t].as_f64().unwrap(), "{t}");
        }
        assert_eq!(
            s.per_answer_type.len(),
            want["perAnswerType"].as_object().unwrap().len()
        );
        for (t, v) in &s.per_question_type {
            assert_eq!(*v, want["perQuestionType"][t].as_f64().unwrap(), "{t}");
        }
        for (i, w) in want["per_question_unrounded"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
        {
            close(
                s.per_question[i],
                w.as_f64().unwrap(),
                &format!("question {}", r.question_ids[i]),
            );
        }
    }
}
