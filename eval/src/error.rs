//! The crate's error type: every variant names the file and, where there is one, the row.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is {size} bytes, over the {limit}-byte limit for an evaluation file", path.display())]
    TooLarge {
        path: PathBuf,
        size: u64,
        limit: u64,
    },
    #[error("{}: line {line}: invalid JSON: {source}", path.display())]
    Json {
        path: PathBuf,
        line: usize,
        #[source]
        source: serde_json::Error,
    },
    #[error("{}: {row}: field `{field}`: {problem}", path.display())]
    Field {
        path: PathBuf,
        /// "row 3", "annotations[7]", "line 12" ...
        row: String,
        field: &'static str,
        problem: String,
    },
    #[error("{}: {problem}", path.display())]
    Format { path: PathBuf, problem: String },
    #[error("{}: image {id} has {count} predictions ({rows}); pycocoevalcap needs exactly one", path.display())]
    DuplicatePrediction {
        path: PathBuf,
        id: String,
        count: usize,
        rows: String,
    },
    #[error("{}: question {id} appears twice ({rows})", path.display())]
    DuplicateQuestion {
        path: PathBuf,
        id: String,
        rows: String,
    },
    #[error("{what} do not match: {}", describe_mismatch(missing, *missing_count, unknown, *unknown_count))]
    IdMismatch {
        /// "image ids" or "question ids".
        what: &'static str,
        /// The first few ids with references but no prediction.
        missing: Vec<String>,
        missing_count: usize,
        /// The first few ids predicted but absent from the references.
        unknown: Vec<String>,
        unknown_count: usize,
    },
    #[error("{}: image {id} has no reference caption", path.display())]
    NoReferences { path: PathBuf, id: String },
    #[error("{}: no {what} to evaluate", path.display())]
    Empty { path: PathBuf, what: &'static str },
}

fn describe_mismatch(
    missing: &[String],
    missing_count: usize,
    unknown: &[String],
    unknown_count: usize,
) -> String {
    let mut parts = Vec::new();
    if missing_count > 0 {
        parts.push(format!(
            "{missing_count} without a prediction (first: {})",
            missing.join(", ")
        ));
    }
    if unknown_count > 0 {
        parts.push(format!(
            "{unknown_count} predicted but not in the references (first: {})",
            unknown.join(", ")
        ));
    }
    parts.join("; ")
}
