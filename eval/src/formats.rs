//! Readers for the evaluation inputs.
//!
//! Captions (predictions or references), detected from the content:
//! - COCO results: a JSON list `[{"image_id": 1, "caption": "..."}, ...]`;
//! - COCO annotations: `{"images": [{"id": 1}, ...], "annotations": [{"image_id": 1,
//!   "caption": "..."}, ...]}` (image order from `images`, as pycocotools' `getImgIds`);
//! - JSONL rows of `blip2 dataset caption`: `{"id": "...", "path": "...", "text": "..." |
//!   null, "error": "..." | null, ...}`; rows with an error are skipped and counted.
//!
//! VQA: official VQAv2 annotation (`{"annotations": [...]}`) and question
//! (`{"questions": [...]}`) files, official results (`[{"question_id", "answer"}]`), and
//! JSONL (`{"question_id", "answers": [...], "answer_type"}` annotations; `{"question_id",
//! "answer"}` or dataset rows `{"id", "text", "error"}` predictions).
//!
//! Ids compare by their text: the number 42 and the string "42" are the same image.

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value;

use crate::error::EvalError;
use crate::vqa::{HumanAnswer, Question};

/// Largest input file read (evaluation files are at most a few hundred MB).
pub const MAX_FILE_BYTES: u64 = 4 << 30;

/// One caption with its image id and where it came from (for error messages).
#[derive(Clone, Debug, PartialEq)]
pub struct CaptionRecord {
    pub image_id: String,
    pub caption: String,
    /// "row 3", "annotations[7]", "line 12".
    pub row: String,
}

/// The captions of a file, with the image order it defines.
#[derive(Clone, Debug, Default)]
pub struct CaptionFile {
    /// Image ids in file order (COCO annotations: the `images` list, then any image only
    /// named by an annotation).
    pub image_order: Vec<String>,
    pub records: Vec<CaptionRecord>,
    /// JSONL rows skipped because they carry an error.
    pub skipped_errors: usize,
}

/// Read a file whole, refusing sizes over [`MAX_FILE_BYTES`].
pub fn read_text(path: &Path) -> Result<String, EvalError> {
    let io = |source| EvalError::Io {
        path: path.to_path_buf(),
        source,
    };
    let size = std::fs::metadata(path).map_err(io)?.len();
    if size > MAX_FILE_BYTES {
        return Err(EvalError::TooLarge {
            path: path.to_path_buf(),
            size,
            limit: MAX_FILE_BYTES,
        });
    }
    std::fs::read_to_string(path).map_err(io)
}

/// Either one JSON document or JSON lines.
enum Document {
    Whole(Value),
    Lines(Vec<(usize, Value)>),
}

fn parse_document(path: &Path, text: &str) -> Result<Document, EvalError> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('[') {
        let v = serde_json::from_str(text).map_err(|source| EvalError::Json {
            path: path.to_path_buf(),
            line: source.line(),
            source,
        })?;
        return Ok(Document::Whole(v));
    }
    if let Ok(v) = serde_json::from_str::<Value>(text)
        && v.as_object().is_some_and(|o| {
            o.contains_key("annotations") || o.contains_key("questions") || o.contains_key("images")
        })
    {
        return Ok(Document::Whole(v));
    }
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v = serde_json::from_str(line).map_err(|source| EvalError::Json {
            path: path.to_path_buf(),
            line: i + 1,
            source,
        })?;
        rows.push((i + 1, v));
    }
    Ok(Document::Lines(rows))
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

struct Row<'a> {
    path: &'a Path,
    row: String,
    obj: &'a serde_json::Map<String, Value>,
}

impl<'a> Row<'a> {
    fn new(path: &'a Path, row: String, v: &'a Value) -> Result<Row<'a>, EvalError> {
        match v.as_object() {
            Some(obj) => Ok(Row { path, row, obj }),
            None => Err(EvalError::Format {
                path: path.to_path_buf(),
                problem: format!("{row}: expected an object, found {}", kind(v)),
            }),
        }
    }

    fn err(&self, field: &'static str, problem: String) -> EvalError {
        EvalError::Field {
            path: self.path.to_path_buf(),
            row: self.row.clone(),
            field,
            problem,
        }
    }

    fn get(&self, field: &'static str) -> Result<&'a Value, EvalError> {
        self.obj
            .get(field)
            .ok_or_else(|| self.err(field, "missing".to_string()))
    }

    /// An id: a string, or an integer written as its decimal text.
    fn id(&self, field: &'static str) -> Result<String, EvalError> {
        match self.get(field)? {
            Value::String(s) => Ok(s.clone()),
            Value::Number(n) if n.is_i64() || n.is_u64() => Ok(n.to_string()),
            other => Err(self.err(
                field,
                format!("expected an integer or a string, found {}", kind(other)),
            )),
        }
    }

    fn string(&self, field: &'static str) -> Result<String, EvalError> {
        match self.get(field)? {
            Value::String(s) => Ok(s.clone()),
            other => Err(self.err(field, format!("expected a string, found {}", kind(other)))),
        }
    }

    fn optional_string(&self, field: &'static str) -> Result<Option<String>, EvalError> {
        match self.obj.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(self.err(
                field,
                format!("expected a string or null, found {}", kind(other)),
            )),
        }
    }
}

/// Read captions in any of the three formats.
pub fn read_captions(path: &Path) -> Result<CaptionFile, EvalError> {
    let text = read_text(path)?;
    let mut file = CaptionFile::default();
    match parse_document(path, &text)? {
        Document::Whole(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                let row = Row::new(path, format!("row {i}"), item)?;
                file.records.push(CaptionRecord {
                    image_id: row.id("image_id")?,
                    caption: row.string("caption")?,
                    row: row.row.clone(),
                });
            }
        }
        Document::Whole(Value::Object(obj)) => {
            let items = match obj.get("annotations") {
                Some(Value::Array(a)) => a,
                Some(other) => {
                    return Err(EvalError::Format {
                        path: path.to_path_buf(),
                        problem: format!("`annotations` must be a list, found {}", kind(other)),
                    });
                }
                None => {
                    return Err(EvalError::Format {
                        path: path.to_path_buf(),
                        problem: "an object without `annotations` is not a caption file"
                            .to_string(),
                    });
                }
            };
            if let Some(images) = obj.get("images") {
                let Value::Array(images) = images else {
                    return Err(EvalError::Format {
                        path: path.to_path_buf(),
                        problem: format!("`images` must be a list, found {}", kind(images)),
                    });
                };
                for (i, image) in images.iter().enumerate() {
                    let row = Row::new(path, format!("images[{i}]"), image)?;
                    file.image_order.push(row.id("id")?);
                }
            }
            for (i, item) in items.iter().enumerate() {
                let row = Row::new(path, format!("annotations[{i}]"), item)?;
                file.records.push(CaptionRecord {
                    image_id: row.id("image_id")?,
                    caption: row.string("caption")?,
                    row: row.row.clone(),
                });
            }
        }
        Document::Whole(other) => {
            return Err(EvalError::Format {
                path: path.to_path_buf(),
                problem: format!("expected a list or an object, found {}", kind(&other)),
            });
        }
        Document::Lines(rows) => {
            for (line, v) in &rows {
                let row = Row::new(path, format!("line {line}"), v)?;
                if row.optional_string("error")?.is_some() {
                    file.skipped_errors += 1;
                    continue;
                }
                let (id, caption) = if row.obj.contains_key("image_id") {
                    (row.id("image_id")?, row.string("caption")?)
                } else {
                    (row.id("id")?, row.string("text")?)
                };
                file.records.push(CaptionRecord {
                    image_id: id,
                    caption,
                    row: row.row.clone(),
                });
            }
        }
    }
    // Images only named by a caption come after those listed, in first-seen order.
    let mut known: std::collections::HashSet<String> = file.image_order.iter().cloned().collect();
    for r in &file.records {
        if known.insert(r.image_id.clone()) {
            file.image_order.push(r.image_id.clone());
        }
    }
    Ok(file)
}

/// The VQA predictions: question id -> answer, in file order.
pub fn read_vqa_predictions(path: &Path) -> Result<Vec<(String, String, String)>, EvalError> {
    let text = read_text(path)?;
    let mut out = Vec::new();
    let mut push = |row: &Row| -> Result<(), EvalError> {
        if row.obj.contains_key("question_id") {
            out.push((
                row.id("question_id")?,
                row.string("answer")?,
                row.row.clone(),
            ));
        } else {
            if row.optional_string("error")?.is_some() {
                return Ok(());
            }
            out.push((row.id("id")?, row.string("text")?, row.row.clone()));
        }
        Ok(())
    };
    match parse_document(path, &text)? {
        Document::Whole(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                push(&Row::new(path, format!("row {i}"), item)?)?;
            }
        }
        Document::Whole(other) => {
            return Err(EvalError::Format {
                path: path.to_path_buf(),
                problem: format!(
                    "expected a results list [{{\"question_id\", \"answer\"}}] or JSON lines, found {}",
                    kind(&other)
                ),
            });
        }
        Document::Lines(rows) => {
            for (line, v) in &rows {
                push(&Row::new(path, format!("line {line}"), v)?)?;
            }
        }
    }
    Ok(out)
}

/// VQA annotations: the official `{"annotations": [...]}` file or JSON lines.
pub fn read_vqa_annotations(path: &Path) -> Result<Vec<Question>, EvalError> {
    let text = read_text(path)?;
    let mut out = Vec::new();
    let mut seen: HashMap<String, String> = HashMap::new();
    let mut push = |row: &Row| -> Result<(), EvalError> {
        let q = question(row)?;
        if let Some(first) = seen.get(&q.question_id) {
            return Err(EvalError::DuplicateQuestion {
                path: path.to_path_buf(),
                id: q.question_id.clone(),
                rows: format!("{first} and {}", row.row),
            });
        }
        seen.insert(q.question_id.clone(), row.row.clone());
        out.push(q);
        Ok(())
    };
    match parse_document(path, &text)? {
        Document::Whole(Value::Object(obj)) => {
            let Some(Value::Array(items)) = obj.get("annotations") else {
                return Err(EvalError::Format {
                    path: path.to_path_buf(),
                    problem: "expected `annotations`: a list of questions with their answers"
                        .to_string(),
                });
            };
            for (i, item) in items.iter().enumerate() {
                push(&Row::new(path, format!("annotations[{i}]"), item)?)?;
            }
        }
        Document::Whole(other) => {
            return Err(EvalError::Format {
                path: path.to_path_buf(),
                problem: format!(
                    "expected an object with `annotations` or JSON lines, found {}",
                    kind(&other)
                ),
            });
        }
        Document::Lines(rows) => {
            for (line, v) in &rows {
                push(&Row::new(path, format!("line {line}"), v)?)?;
            }
        }
    }
    Ok(out)
}

fn question(row: &Row) -> Result<Question, EvalError> {
    let question_id = row.id("question_id")?;
    let answer_type = row.string("answer_type")?;
    let question_type = row.optional_string("question_type")?.unwrap_or_default();
    let Value::Array(items) = row.get("answers")? else {
        return Err(row.err("answers", "expected a list".to_string()));
    };
    if items.is_empty() {
        return Err(row.err("answers", "no human answers".to_string()));
    }
    let mut answers = Vec::with_capacity(items.len());
    for (i, a) in items.iter().enumerate() {
        match a {
            // Plain strings: the index tells equal answers apart, as answer_id does.
            Value::String(s) => answers.push(HumanAnswer {
                answer: s.clone(),
                identity: i.to_string(),
            }),
            Value::Object(o) => {
                let answer = match o.get("answer") {
                    Some(Value::String(s)) => s.clone(),
                    other => {
                        return Err(row.err(
                            "answers",
                            format!(
                                "answers[{i}].answer: expected a string, found {}",
                                other.map_or("nothing", kind)
                            ),
                        ));
                    }
                };
                let mut rest = o.clone();
                rest.remove("answer");
                answers.push(HumanAnswer {
                    answer,
                    identity: Value::Object(rest).to_string(),
                });
            }
            other => {
                return Err(row.err(
                    "answers",
                    format!(
                        "answers[{i}]: expected a string or an object, found {}",
                        kind(other)
                    ),
                ));
            }
        }
    }
    Ok(Question {
        question_id,
        answer_type,
        question_type,
        answers,
    })
}

/// The official questions file: question id -> image id.
pub fn read_vqa_questions(path: &Path) -> Result<HashMap<String, String>, EvalError> {
    let text = read_text(path)?;
    let v: Value = serde_json::from_str(&text).map_err(|source| EvalError::Json {
        path: path.to_path_buf(),
        line: source.line(),
        source,
    })?;
    let Some(Value::Array(items)) = v.get("questions") else {
        return Err(EvalError::Format {
            path: path.to_path_buf(),
            problem: "expected an object with `questions`: a list".to_string(),
        });
    };
    let mut out = HashMap::new();
    for (i, item) in items.iter().enumerate() {
        let row = Row::new(path, format!("questions[{i}]"), item)?;
        out.insert(row.id("question_id")?, row.id("image_id")?);
    }
    Ok(out)
}
