//! `--input` arguments -> one deterministic, ordered list of work items with stable ids.
//!
//! An argument is brace-expanded first (`data-{000..099}.tar`, `{a,b}`), then each path is:
//! - a directory: every image file under it, recursively, sorted by path;
//! - a manifest (`.jsonl`, `.csv`, `.parquet`): one item per row, its path column relative
//!   to the manifest's directory, optional id and prompt columns;
//! - a WebDataset shard (`.tar`): one item per sample (members sharing a key), the image
//!   being the member with an image extension;
//! - any other file: one item.
//!
//! The order is the order of the arguments, then of the rows / sorted files / tar members,
//! so the same command lists the same items in the same order on every machine.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufRead;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail, ensure};

/// Extensions taken from directories and recognised as a WebDataset sample's image.
pub const IMAGE_EXTS: [&str; 8] = ["png", "jpg", "jpeg", "webp", "bmp", "gif", "tif", "tiff"];

/// Most items one argument may expand to through braces (a typo like `{0..99999999}`
/// should fail, not allocate).
const MAX_BRACE_EXPANSION: usize = 1_000_000;

/// Where an item's bytes are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    File(PathBuf),
    /// `len` bytes at `offset` in a tar file (the member's data, found when listing).
    TarMember {
        tar: PathBuf,
        offset: u64,
        len: u64,
    },
    /// Nothing to read: the item is an error row with this reason (e.g. a WebDataset
    /// sample without an image member).
    Invalid(String),
}

/// One image to caption.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkItem {
    pub id: String,
    /// What the output row's `path` says: the file path, or `TARFILE::MEMBER`.
    pub path: String,
    pub location: Location,
    /// Per-item prompt (manifest prompt column); None uses `--prompt`.
    pub prompt: Option<String>,
}

/// Manifest column names.
#[derive(Clone, Debug)]
pub struct Columns {
    pub path: String,
    /// Used when the manifest has it; else the id is `MANIFEST#ROW`.
    pub id: String,
    /// Used when the manifest has it.
    pub prompt: String,
}

impl Default for Columns {
    fn default() -> Self {
        Columns {
            path: "path".into(),
            id: "id".into(),
            prompt: "prompt".into(),
        }
    }
}

/// Every item of `args`, in order.
pub fn collect(args: &[String], cols: &Columns) -> anyhow::Result<Vec<WorkItem>> {
    let mut items = Vec::new();
    for arg in args {
        for p in expand_braces(arg)? {
            let path = PathBuf::from(&p);
            let meta = std::fs::metadata(&path).with_context(|| format!("input {p}"))?;
            if meta.is_dir() {
                walk_dir(&path, &mut items)?;
                continue;
            }
            match extension(&path).as_deref() {
                Some("jsonl") => read_jsonl(&path, cols, &mut items)?,
                Some("csv") => read_csv(&path, cols, &mut items)?,
                Some("parquet") => read_parquet(&path, cols, &mut items)?,
                Some("tar") => read_tar(&path, &mut items)?,
                _ => items.push(file_item(path)),
            }
        }
    }
    Ok(items)
}

fn extension(p: &Path) -> Option<String> {
    p.extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
}

fn file_item(path: PathBuf) -> WorkItem {
    let s = path.display().to_string();
    WorkItem {
        id: s.clone(),
        path: s,
        location: Location::File(path),
        prompt: None,
    }
}

/// Image files under `dir`, recursively, sorted by their full path.
fn walk_dir(dir: &Path, items: &mut Vec<WorkItem>) -> anyhow::Result<()> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))?;
        for e in entries {
            let e = e.with_context(|| format!("reading {}", d.display()))?;
            let ty = e.file_type()?;
            let p = e.path();
            if ty.is_dir() {
                stack.push(p);
            } else if extension(&p).is_some_and(|x| IMAGE_EXTS.contains(&x.as_str())) {
                found.push(p);
            }
        }
    }
    found.sort();
    items.extend(found.into_iter().map(file_item));
    Ok(())
}

/// `a{1..3}b` -> a1b a2b a3b (zero padding kept: `{000..099}`), `{x,y}` -> x y; several
/// groups multiply out left to right. Text without braces is returned as is.
pub fn expand_braces(s: &str) -> anyhow::Result<Vec<String>> {
    let Some(open) = s.find('{') else {
        return Ok(vec![s.to_string()]);
    };
    let close = open
        + s[open..]
            .find('}')
            .with_context(|| format!("{s}: '{{' without a closing '}}'"))?;
    let (head, body, tail) = (&s[..open], &s[open + 1..close], &s[close + 1..]);
    let alternatives: Vec<String> = if let Some((a, b)) = body.split_once("..") {
        let (lo, hi): (u64, u64) = (
            a.parse()
                .with_context(|| format!("{s}: range start {a:?} is not a number"))?,
            b.parse()
                .with_context(|| format!("{s}: range end {b:?} is not a number"))?,
        );
        ensure!(lo <= hi, "{s}: range {lo}..{hi} is empty");
        ensure!(
            hi - lo < MAX_BRACE_EXPANSION as u64,
            "{s}: range {lo}..{hi} has more than {MAX_BRACE_EXPANSION} values"
        );
        // Zero-padded when either end is written with a leading zero.
        let width = if (a.len() > 1 && a.starts_with('0')) || (b.len() > 1 && b.starts_with('0')) {
            a.len().max(b.len())
        } else {
            0
        };
        (lo..=hi).map(|i| format!("{i:0width$}")).collect()
    } else if body.contains(',') {
        body.split(',').map(str::to_string).collect()
    } else {
        // `{x}` is not a pattern in shells either: keep it literally.
        vec![format!("{{{body}}}")]
    };
    let rest = expand_braces(tail)?;
    let mut out = Vec::with_capacity(alternatives.len() * rest.len());
    for a in &alternatives {
        for r in &rest {
            ensure!(
                out.len() < MAX_BRACE_EXPANSION,
                "{s}: expands to more than {MAX_BRACE_EXPANSION} paths"
            );
            out.push(format!("{head}{a}{r}"));
        }
    }
    Ok(out)
}

/// A manifest row's fields, already read as strings.
struct Row {
    path: Option<String>,
    id: Option<String>,
    prompt: Option<String>,
}

fn manifest_item(manifest: &Path, row_no: usize, r: Row) -> WorkItem {
    let id =
        r.id.unwrap_or_else(|| format!("{}#{row_no}", manifest.display()));
    let Some(rel) = r.path.filter(|p| !p.is_empty()) else {
        return WorkItem {
            id,
            path: String::new(),
            location: Location::Invalid(format!(
                "{} row {row_no}: no path value",
                manifest.display()
            )),
            prompt: r.prompt,
        };
    };
    let base = manifest.parent().unwrap_or(Path::new(""));
    let full = base.join(&rel);
    WorkItem {
        id,
        path: full.display().to_string(),
        location: Location::File(full),
        prompt: r.prompt,
    }
}

/// One JSON object per line; blank lines are skipped. Rows are numbered from 0 among the
/// non-blank lines.
fn read_jsonl(path: &Path, cols: &Columns, items: &mut Vec<WorkItem>) -> anyhow::Result<()> {
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut row_no = 0;
    for (n, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&line)
            .with_context(|| format!("{} line {}: not JSON", path.display(), n + 1))?;
        let obj = v
            .as_object()
            .with_context(|| format!("{} line {}: not a JSON object", path.display(), n + 1))?;
        let field = |name: &str| -> anyhow::Result<Option<String>> {
            Ok(match obj.get(name) {
                None | Some(serde_json::Value::Null) => None,
                Some(serde_json::Value::String(s)) => Some(s.clone()),
                Some(serde_json::Value::Number(x)) => Some(x.to_string()),
                Some(other) => bail!(
                    "{} line {}: {name:?} is {other}, expected a string or number",
                    path.display(),
                    n + 1
                ),
            })
        };
        let row = Row {
            path: field(&cols.path)?,
            id: field(&cols.id)?,
            prompt: field(&cols.prompt)?,
        };
        ensure!(
            row.path.is_some() || obj.contains_key(&cols.path),
            "{} line {}: no {:?} field (--path-column)",
            path.display(),
            n + 1,
            cols.path
        );
        items.push(manifest_item(path, row_no, row));
        row_no += 1;
    }
    Ok(())
}

/// A CSV file with a header row.
fn read_csv(path: &Path, cols: &Columns, items: &mut Vec<WorkItem>) -> anyhow::Result<()> {
    let mut rdr =
        csv::Reader::from_path(path).with_context(|| format!("opening {}", path.display()))?;
    let header = rdr
        .headers()
        .with_context(|| format!("{}: reading the header row", path.display()))?
        .clone();
    let find = |name: &str| header.iter().position(|h| h == name);
    let path_col = find(&cols.path).with_context(|| {
        format!(
            "{}: no {:?} column (--path-column); columns: {}",
            path.display(),
            cols.path,
            header.iter().collect::<Vec<_>>().join(", ")
        )
    })?;
    let (id_col, prompt_col) = (find(&cols.id), find(&cols.prompt));
    for (row_no, rec) in rdr.records().enumerate() {
        let rec = rec.with_context(|| format!("{} row {row_no}", path.display()))?;
        let get = |c: Option<usize>| c.and_then(|c| rec.get(c)).map(str::to_string);
        let row = Row {
            path: get(Some(path_col)),
            id: get(id_col).filter(|s| !s.is_empty()),
            prompt: get(prompt_col).filter(|s| !s.is_empty()),
        };
        items.push(manifest_item(path, row_no, row));
    }
    Ok(())
}

/// A Parquet file whose path column is a string column (id: string or integer).
fn read_parquet(path: &Path, cols: &Columns, items: &mut Vec<WorkItem>) -> anyhow::Result<()> {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(f)
        .with_context(|| format!("{}: not a Parquet file", path.display()))?
        .build()
        .with_context(|| format!("reading {}", path.display()))?;
    let mut row_no = 0;
    for batch in reader {
        let batch = batch.with_context(|| format!("reading {}", path.display()))?;
        let column = |name: &str| -> anyhow::Result<Option<Vec<Option<String>>>> {
            match batch.column_by_name(name) {
                None => Ok(None),
                Some(c) => strings(c.as_ref())
                    .map(Some)
                    .with_context(|| format!("{}: column {name:?}", path.display())),
            }
        };
        let paths = column(&cols.path)?.with_context(|| {
            format!(
                "{}: no {:?} column (--path-column)",
                path.display(),
                cols.path
            )
        })?;
        let ids = column(&cols.id)?;
        let prompts = column(&cols.prompt)?;
        for (i, p) in paths.into_iter().enumerate() {
            let pick = |c: &Option<Vec<Option<String>>>| c.as_ref().and_then(|v| v[i].clone());
            let row = Row {
                path: p,
                id: pick(&ids),
                prompt: pick(&prompts),
            };
            items.push(manifest_item(path, row_no, row));
            row_no += 1;
        }
    }
    Ok(())
}

/// A column's values as strings (string and integer columns; null stays None).
fn strings(c: &dyn arrow_array::Array) -> anyhow::Result<Vec<Option<String>>> {
    use arrow_array::Array;
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Int32Type, Int64Type, UInt32Type, UInt64Type};
    use arrow_schema::DataType as D;
    let n = c.len();
    let opt = |valid: bool, s: String| valid.then_some(s);
    Ok(match c.data_type() {
        D::Utf8 => {
            let a = c.as_string::<i32>();
            (0..n)
                .map(|i| opt(a.is_valid(i), a.value(i).into()))
                .collect()
        }
        D::LargeUtf8 => {
            let a = c.as_string::<i64>();
            (0..n)
                .map(|i| opt(a.is_valid(i), a.value(i).into()))
                .collect()
        }
        D::Utf8View => {
            let a = c.as_string_view();
            (0..n)
                .map(|i| opt(a.is_valid(i), a.value(i).into()))
                .collect()
        }
        D::Int32 => {
            let a = c.as_primitive::<Int32Type>();
            (0..n)
                .map(|i| opt(a.is_valid(i), a.value(i).to_string()))
                .collect()
        }
        D::Int64 => {
            let a = c.as_primitive::<Int64Type>();
            (0..n)
                .map(|i| opt(a.is_valid(i), a.value(i).to_string()))
                .collect()
        }
        D::UInt32 => {
            let a = c.as_primitive::<UInt32Type>();
            (0..n)
                .map(|i| opt(a.is_valid(i), a.value(i).to_string()))
                .collect()
        }
        D::UInt64 => {
            let a = c.as_primitive::<UInt64Type>();
            (0..n)
                .map(|i| opt(a.is_valid(i), a.value(i).to_string()))
                .collect()
        }
        other => bail!("type {other} (expected a string or integer column)"),
    })
}

/// WebDataset: the samples of a tar file. A member `dir/abc.seg.jpg` belongs to the sample
/// keyed `dir/abc` (the path up to the first dot of its file name); the sample's image is
/// its member with an image extension (the first one, in archive order). Other members
/// (`.txt`, `.json`, `.cls`, ...) are not read. A sample without an image is an error row.
/// Only the headers are read (data is skipped by seeking).
fn read_tar(path: &Path, items: &mut Vec<WorkItem>) -> anyhow::Result<()> {
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut ar = tar::Archive::new(f);
    let tar_name = path.display().to_string();
    // Samples in order of their first member; key -> index in `samples`.
    // (key, image member: (name, offset, size)).
    type Sample = (String, Option<(String, u64, u64)>);
    let mut samples: Vec<Sample> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let entries = ar
        .entries_with_seek()
        .with_context(|| format!("{tar_name}: not a tar file"))?;
    for e in entries {
        let e = e.with_context(|| format!("{tar_name}: reading the member list"))?;
        if !e.header().entry_type().is_file() {
            continue;
        }
        let member = String::from_utf8_lossy(&e.path_bytes()).into_owned();
        let (dir, file) = match member.rfind('/') {
            Some(i) => (&member[..=i], &member[i + 1..]),
            None => ("", member.as_str()),
        };
        // Hidden files (`._x` from macOS tar, `.DS_Store`) are not samples.
        if file.starts_with('.') {
            continue;
        }
        let (stem, ext) = match file.find('.') {
            Some(i) => (&file[..i], file[i + 1..].to_ascii_lowercase()),
            None => (file, String::new()),
        };
        let key = format!("{dir}{stem}");
        let last_ext = ext.rsplit('.').next().unwrap_or("");
        let i = *index.entry(key.clone()).or_insert_with(|| {
            samples.push((key, None));
            samples.len() - 1
        });
        if samples[i].1.is_none() && IMAGE_EXTS.contains(&last_ext) {
            samples[i].1 = Some((member.clone(), e.raw_file_position(), e.size()));
        }
    }
    for (key, image) in samples {
        let id = format!("{tar_name}::{key}");
        items.push(match image {
            Some((member, offset, len)) => WorkItem {
                id,
                path: format!("{tar_name}::{member}"),
                location: Location::TarMember {
                    tar: path.to_path_buf(),
                    offset,
                    len,
                },
                prompt: None,
            },
            None => WorkItem {
                path: id.clone(),
                location: Location::Invalid(format!(
                    "WebDataset sample {key:?} has no image member ({})",
                    IMAGE_EXTS.join(", ")
                )),
                id,
                prompt: None,
            },
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brace_ranges_lists_and_padding() {
        assert_eq!(
            expand_braces("data-{000..002}.tar").unwrap(),
            ["data-000.tar", "data-001.tar", "data-002.tar"]
        );
        assert_eq!(expand_braces("{8..10}").unwrap(), ["8", "9", "10"]);
        assert_eq!(
            expand_braces("{a,b}/{0..1}.tar").unwrap(),
            ["a/0.tar", "a/1.tar", "b/0.tar", "b/1.tar"]
        );
        assert_eq!(expand_braces("plain.tar").unwrap(), ["plain.tar"]);
        assert_eq!(expand_braces("x{y}z").unwrap(), ["x{y}z"]);
        assert!(expand_braces("{3..1}").is_err());
        assert!(expand_braces("{0..99999999}").is_err());
        assert!(expand_braces("data-{0..3.tar").is_err());
    }
}
