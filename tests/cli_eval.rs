//! `blip2 eval caption` / `blip2 eval vqa` on the committed fixtures (tests/fixtures/eval,
//! from tools/eval/make_reference.py), in every accepted input format, against the scores
//! pycocoevalcap and the official VQA algorithm reported.
//!
//! Tolerance: 1e-6 absolute on BLEU/CIDEr (same double arithmetic as the reference, only
//! some summation orders differ); VQA percentages are rounded to 2 decimals by both sides
//! and compared exactly.

mod common;

use serde_json::Value;

fn fixture(name: &str) -> String {
    common::fixtures()
        .join("eval")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

fn expected(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(name)).unwrap()).unwrap()
}

fn run_json(args: &[&str]) -> Value {
    let out = common::blip2_ok(args);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1, "--json prints one line:\n{out}");
    serde_json::from_str(lines[0]).unwrap()
}

#[test]
fn caption_json_matches_pycocoevalcap_in_every_format() {
    let want = expected("captions_expected.json");
    for (pred, refs) in [
        ("captions_predictions.json", "captions_references.json"),
        ("captions_predictions.jsonl", "captions_references.json"),
        ("captions_predictions.json", "captions_references_list.json"),
    ] {
        let got = run_json(&[
            "eval",
            "caption",
            "--predictions",
            &fixture(pred),
            "--references",
            &fixture(refs),
            "--json",
        ]);
        for name in ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "CIDEr"] {
            let (g, w) = (
                got[name].as_f64().unwrap(),
                want["corpus"][name].as_f64().unwrap(),
            );
            assert!((g - w).abs() <= 1e-6, "{pred} {refs} {name}: {g} vs {w}");
        }
        assert_eq!(got["images"], 240);
        let skipped = if pred.ends_with(".jsonl") { 2 } else { 0 };
        assert_eq!(got["skipped_errors"], skipped);
    }
}

#[test]
fn caption_human_output_is_one_metric_per_line() {
    let out = common::blip2_ok(&[
        "eval",
        "caption",
        "--predictions",
        &fixture("captions_predictions.json"),
        "--references",
        &fixture("captions_references.json"),
    ]);
    let names: Vec<&str> = out.lines().map(|l| l.split(':').next().unwrap()).collect();
    assert_eq!(
        names,
        ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "CIDEr", "images"]
    );
}

#[test]
fn vqa_json_matches_the_official_algorithm_in_every_format() {
    let want = expected("vqa_expected.json");
    for (pred, ann) in [
        ("vqa_predictions.json", "vqa_annotations.json"),
        ("vqa_predictions.jsonl", "vqa_annotations.jsonl"),
    ] {
        let got = run_json(&[
            "eval",
            "vqa",
            "--predictions",
            &fixture(pred),
            "--annotations",
            &fixture(ann),
            "--questions",
            &fixture("vqa_questions.json"),
            "--json",
        ]);
        assert_eq!(got["accuracy"], want["overall"], "{pred}");
        assert_eq!(got["perAnswerType"], want["perAnswerType"], "{pred}");
        assert_eq!(got["perQuestionType"], want["perQuestionType"], "{pred}");
        assert_eq!(got["questions"], 240);
    }
}

#[test]
fn mismatched_ids_are_an_error_naming_them() {
    let dir = std::env::temp_dir().join(format!("blip2-cli-eval-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let preds = dir.join("preds.json");
    std::fs::write(
        &preds,
        r#"[{"image_id": 1000, "caption": "a dog"}, {"image_id": 424242, "caption": "a cat"}]"#,
    )
    .unwrap();
    let err = common::blip2_err(&[
        "eval",
        "caption",
        "--predictions",
        preds.to_str().unwrap(),
        "--references",
        &fixture("captions_references.json"),
    ]);
    assert!(err.contains("image ids do not match"), "{err}");
    assert!(
        err.contains("239 without a prediction (first: 1007,"),
        "{err}"
    );
    assert!(
        err.contains("1 predicted but not in the references (first: 424242)"),
        "{err}"
    );

    std::fs::write(&preds, r#"[{"image_id": 1000, "caption": null}]"#).unwrap();
    let err = common::blip2_err(&[
        "eval",
        "caption",
        "--predictions",
        preds.to_str().unwrap(),
        "--references",
        &fixture("captions_references.json"),
    ]);
    assert!(
        err.contains("row 0: field `caption`: expected a string, found null"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}
