//! Bad inputs give typed errors that name the file, the row and the field.

use std::path::PathBuf;

use blip2_eval::{EvalError, evaluate_caption_files, evaluate_vqa_files};

struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("blip2-eval-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

const REFS: &str = r#"{"images": [{"id": 1}, {"id": 2}],
  "annotations": [{"image_id": 1, "caption": "a dog"}, {"image_id": 2, "caption": "a cat"}]}"#;

#[test]
fn caption_input_errors() {
    let d = Dir::new("captions");
    let refs = d.file("refs.json", REFS);

    let dup = d.file(
        "dup.json",
        r#"[{"image_id": 1, "caption": "a"}, {"image_id": 2, "caption": "b"}, {"image_id": 1, "caption": "c"}]"#,
    );
    let e = evaluate_caption_files(&dup, &refs).unwrap_err();
    assert!(matches!(e, EvalError::DuplicatePrediction { ref id, count: 2, .. } if id == "1"));
    assert!(e.to_string().contains("(row 0, row 2)"), "{e}");

    let missing = d.file("missing.json", r#"[{"image_id": 1, "caption": "a"}]"#);
    let e = evaluate_caption_files(&missing, &refs).unwrap_err();
    assert_eq!(
        e.to_string(),
        "image ids do not match: 1 without a prediction (first: 2)"
    );

    let bad_line = d.file(
        "rows.jsonl",
        "{\"id\": \"1\", \"path\": \"a.jpg\", \"text\": \"a\", \"error\": null}\n{\"id\": \"2\", \"text\": \n",
    );
    let e = evaluate_caption_files(&bad_line, &refs).unwrap_err();
    assert!(matches!(e, EvalError::Json { line: 2, .. }), "{e}");

    let wrong_type = d.file("wrong.json", r#"[{"image_id": 1.5, "caption": "a"}]"#);
    let e = evaluate_caption_files(&wrong_type, &refs).unwrap_err();
    assert!(
        e.to_string()
            .ends_with("row 0: field `image_id`: expected an integer or a string, found a number"),
        "{e}"
    );

    let no_text = d.file(
        "notext.jsonl",
        "{\"id\": \"1\", \"text\": null, \"error\": null}\n",
    );
    let e = evaluate_caption_files(&no_text, &refs).unwrap_err();
    assert!(
        e.to_string()
            .ends_with("line 1: field `text`: expected a string, found null"),
        "{e}"
    );

    let lonely = d.file(
        "lonely.json",
        r#"{"images": [{"id": 1}, {"id": 3}], "annotations": [{"image_id": 1, "caption": "x"}]}"#,
    );
    let preds = d.file(
        "p.json",
        r#"[{"image_id": 1, "caption": "a"}, {"image_id": 3, "caption": "b"}]"#,
    );
    let e = evaluate_caption_files(&preds, &lonely).unwrap_err();
    assert!(
        matches!(e, EvalError::NoReferences { ref id, .. } if id == "3"),
        "{e}"
    );

    let e = evaluate_caption_files(&d.0.join("absent.json"), &refs).unwrap_err();
    assert!(matches!(e, EvalError::Io { .. }), "{e}");
}

#[test]
fn vqa_input_errors() {
    let d = Dir::new("vqa");
    let ann = d.file(
        "ann.jsonl",
        "{\"question_id\": 1, \"answer_type\": \"other\", \"answers\": [\"red\", \"red\"]}\n\
         {\"question_id\": 2, \"answer_type\": \"yes/no\", \"answers\": []}\n",
    );
    let preds = d.file("p.json", r#"[{"question_id": 1, "answer": "red"}]"#);
    let e = evaluate_vqa_files(&preds, &ann, None).unwrap_err();
    assert!(
        e.to_string()
            .ends_with("line 2: field `answers`: no human answers"),
        "{e}"
    );

    let ann = d.file(
        "ann2.jsonl",
        "{\"question_id\": 1, \"answer_type\": \"other\", \"answers\": [\"red\", \"red\"]}\n",
    );
    let twice = d.file(
        "twice.json",
        r#"[{"question_id": 1, "answer": "red"}, {"question_id": 1, "answer": "blue"}]"#,
    );
    let e = evaluate_vqa_files(&twice, &ann, None).unwrap_err();
    assert!(
        matches!(e, EvalError::DuplicateQuestion { ref rows, .. } if rows == "row 0 and row 1"),
        "{e}"
    );

    let other = d.file("other.json", r#"[{"question_id": 7, "answer": "red"}]"#);
    let e = evaluate_vqa_files(&other, &ann, None).unwrap_err();
    assert_eq!(
        e.to_string(),
        "question ids do not match: 1 without a prediction (first: 1); \
         1 predicted but not in the references (first: 7)"
    );

    let questions = d.file(
        "q.json",
        r#"{"questions": [{"question_id": 5, "image_id": 1}]}"#,
    );
    let ok = d.file("ok.json", r#"[{"question_id": 1, "answer": "red"}]"#);
    let e = evaluate_vqa_files(&ok, &ann, Some(&questions)).unwrap_err();
    assert!(
        e.to_string()
            .contains("1 annotated questions are not in the questions file"),
        "{e}"
    );
    // Two identical answers, prediction equal: each left-out subset has 1 match -> 1/3.
    let r = evaluate_vqa_files(&ok, &ann, None).unwrap();
    assert!((r.scores.per_question[0] - 1.0 / 3.0).abs() < 1e-12);
    assert_eq!(r.scores.overall, 33.33);
}
