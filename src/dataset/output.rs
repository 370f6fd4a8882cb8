//! A shard's files: the row log with its checkpoint while the shard runs, then the final
//! Parquet or JSONL file and the stats JSON.
//!
//! While a shard runs, its rows are appended as JSON lines to `NAME.rows.jsonl.partial`;
//! after each batch the log is flushed to disk (fsync) and `NAME.checkpoint.json` (rows and
//! bytes written, and the run's fingerprint) is replaced atomically. A restart truncates
//! the log to the checkpointed byte count and goes on with the next row, so a killed run
//! loses at most the batch it was working on. When the shard is done, the log is converted
//! to `NAME.parquet` / `NAME.jsonl` under a temporary name, fsynced and renamed, then
//! `NAME.stats.json` is written the same way and the log and checkpoint are removed. A
//! shard is complete when both the final file and the stats exist.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, ensure};
use arrow_array::builder::{ListBuilder, StringBuilder, UInt32Builder};
use arrow_array::{ArrayRef, RecordBatch};
use serde::{Deserialize, Serialize};

/// One output row (the JSONL form's field names; Parquet has the same columns).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Row {
    pub id: String,
    pub path: String,
    pub text: Option<String>,
    pub token_ids: Vec<u32>,
    pub prompt: Option<String>,
    /// The resolved generation settings as a JSON string, the same in every row of a run.
    pub generation: String,
    pub error: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Parquet,
    Jsonl,
}

impl Format {
    pub fn ext(self) -> &'static str {
        match self {
            Format::Parquet => "parquet",
            Format::Jsonl => "jsonl",
        }
    }
}

/// Rows per Parquet row group (and per record batch built from the log).
const ROW_GROUP: usize = 1024;

/// The paths of shard `index` of `num_shards` in `dir`.
#[derive(Clone, Debug)]
pub struct ShardFiles {
    dir: PathBuf,
    name: String,
}

impl ShardFiles {
    pub fn new(dir: &Path, index: usize, num_shards: usize) -> ShardFiles {
        ShardFiles {
            dir: dir.to_path_buf(),
            name: format!("shard-{index:05}-of-{num_shards:05}"),
        }
    }
    pub fn output(&self, f: Format) -> PathBuf {
        self.dir.join(format!("{}.{}", self.name, f.ext()))
    }
    pub fn stats(&self) -> PathBuf {
        self.dir.join(format!("{}.stats.json", self.name))
    }
    fn log(&self) -> PathBuf {
        self.dir.join(format!("{}.rows.jsonl.partial", self.name))
    }
    fn checkpoint(&self) -> PathBuf {
        self.dir.join(format!("{}.checkpoint.json", self.name))
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Checkpoint {
    rows: usize,
    bytes: u64,
    fingerprint: String,
}

/// Resident memory of this process (VmRSS) and its peak (VmHWM), in MB, from
/// /proc/self/status; None where that file does not exist.
pub fn rss_mb() -> Option<(f64, f64)> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| -> Option<f64> {
        let line = s.lines().find(|l| l.starts_with(name))?;
        let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb / 1024.0)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RssSample {
    /// Rows this process had written when the sample was taken.
    pub rows: usize,
    pub rss_mb: f64,
    pub peak_mb: f64,
}

/// The stats JSON written next to a completed shard.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Stats {
    pub shard_index: usize,
    pub num_shards: usize,
    /// Rows in the shard's file (= items of the shard).
    pub rows: usize,
    pub ok: usize,
    pub errors: usize,
    /// Rows found checkpointed when this process started the shard (0: a fresh start).
    pub resumed_at_row: usize,
    /// Seconds this process spent on the shard (model loading excluded).
    pub seconds: f64,
    /// Rows this process produced per second.
    pub images_per_s: f64,
    pub batch_size: usize,
    pub format: String,
    pub model: String,
    pub generation: serde_json::Value,
    /// Identifies the run's inputs and settings: a rerun with other ones is refused.
    pub fingerprint: String,
    /// Memory while the shard ran (every `--rss-every` rows and at the end).
    pub rss: Vec<RssSample>,
}

/// The stats of `files` if the shard is complete. A completed shard of another run
/// (another fingerprint) is an error: its rows would not be this run's.
pub fn completed(files: &ShardFiles, format: Format, fingerprint: &str) -> anyhow::Result<bool> {
    let (out, stats) = (files.output(format), files.stats());
    if !out.exists() || !stats.exists() {
        return Ok(false);
    }
    let s: Stats = serde_json::from_slice(
        &std::fs::read(&stats).with_context(|| format!("reading {}", stats.display()))?,
    )
    .with_context(|| format!("{}: not a shard stats file", stats.display()))?;
    ensure!(
        s.fingerprint == fingerprint,
        "{} is a completed shard of a different run (other inputs, settings or sharding); remove it or choose another --output",
        out.display()
    );
    // Leftovers of a run killed between writing the stats and removing them.
    let _ = std::fs::remove_file(files.log());
    let _ = std::fs::remove_file(files.checkpoint());
    Ok(true)
}

/// The append-only row log of a running shard.
pub struct RowLog {
    files: ShardFiles,
    file: File,
    rows: usize,
    bytes: u64,
    fingerprint: String,
}

impl RowLog {
    /// Opens the shard's log, resuming after its checkpoint when one of the same run
    /// exists (the log is cut back to the checkpointed bytes), else starting empty.
    pub fn open(files: &ShardFiles, fingerprint: &str) -> anyhow::Result<RowLog> {
        let ckpt_path = files.checkpoint();
        let ckpt = match std::fs::read(&ckpt_path) {
            Ok(b) => Some(
                serde_json::from_slice::<Checkpoint>(&b)
                    .with_context(|| format!("{}: not a checkpoint file", ckpt_path.display()))?,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e).with_context(|| format!("reading {}", ckpt_path.display())),
        };
        let (rows, bytes) = match ckpt {
            Some(c) => {
                ensure!(
                    c.fingerprint == fingerprint,
                    "{} belongs to a different run (other inputs, settings or sharding); remove it and {} or choose another --output",
                    ckpt_path.display(),
                    files.log().display()
                );
                (c.rows, c.bytes)
            }
            None => (0, 0),
        };
        let log = files.log();
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&log)
            .with_context(|| format!("opening {}", log.display()))?;
        let have = file.metadata()?.len();
        ensure!(
            have >= bytes,
            "{} holds {have} bytes but its checkpoint says {bytes} were written: the log was cut short; remove it and {}",
            log.display(),
            ckpt_path.display()
        );
        // Rows of a batch that was being written when the process died are dropped.
        file.set_len(bytes)
            .with_context(|| format!("truncating {}", log.display()))?;
        Ok(RowLog {
            files: files.clone(),
            file,
            rows,
            bytes,
            fingerprint: fingerprint.to_string(),
        })
    }

    /// Rows durably written so far.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Appends a batch's rows, makes them durable, then moves the checkpoint past them.
    pub fn append(&mut self, rows: &[Row]) -> anyhow::Result<()> {
        let mut buf = Vec::new();
        for r in rows {
            serde_json::to_writer(&mut buf, r)?;
            buf.push(b'\n');
        }
        use std::io::{Seek, SeekFrom};
        let log = self.files.log();
        self.file.seek(SeekFrom::Start(self.bytes))?;
        self.file
            .write_all(&buf)
            .and_then(|_| self.file.sync_data())
            .with_context(|| format!("writing {}", log.display()))?;
        self.rows += rows.len();
        self.bytes += buf.len() as u64;
        let c = Checkpoint {
            rows: self.rows,
            bytes: self.bytes,
            fingerprint: self.fingerprint.clone(),
        };
        write_atomic(&self.files.checkpoint(), &serde_json::to_vec(&c)?)
    }

    /// Writes the final file and the stats, then removes the log and the checkpoint.
    /// `stats.ok`/`errors`/`rows` are filled from the log.
    pub fn finish(self, format: Format, mut stats: Stats) -> anyhow::Result<Stats> {
        let RowLog { files, file, .. } = self;
        drop(file);
        let log = files.log();
        let out = files.output(format);
        let tmp = tmp_path(&out);
        let counts = match format {
            Format::Jsonl => copy_jsonl(&log, &tmp)?,
            Format::Parquet => write_parquet(&log, &tmp)?,
        };
        std::fs::rename(&tmp, &out).with_context(|| format!("renaming to {}", out.display()))?;
        (stats.rows, stats.errors) = counts;
        stats.ok = stats.rows - stats.errors;
        write_atomic(&files.stats(), &serde_json::to_vec_pretty(&stats)?)?;
        sync_dir(&files.dir);
        std::fs::remove_file(&log).with_context(|| format!("removing {}", log.display()))?;
        std::fs::remove_file(files.checkpoint())
            .with_context(|| format!("removing {}", files.checkpoint().display()))?;
        Ok(stats)
    }
}

fn tmp_path(p: &Path) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

/// Writes `bytes` to a temporary file, fsyncs it and renames it over `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = tmp_path(path);
    let mut f = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}

/// Makes renames in `dir` durable (best effort: not every platform can open a directory).
fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Each row of the log, parsed, with its line number.
fn log_rows(log: &Path) -> anyhow::Result<impl Iterator<Item = anyhow::Result<Row>>> {
    let f = File::open(log).with_context(|| format!("opening {}", log.display()))?;
    let name = log.display().to_string();
    Ok(BufReader::new(f).lines().enumerate().map(move |(n, l)| {
        let l = l.with_context(|| format!("reading {name}"))?;
        serde_json::from_str(&l).with_context(|| format!("{name} line {}: not a row", n + 1))
    }))
}

/// The log as the final JSONL file (each line re-checked); returns (rows, errors).
fn copy_jsonl(log: &Path, out: &Path) -> anyhow::Result<(usize, usize)> {
    let f = File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut w = BufWriter::new(f);
    let (mut rows, mut errors) = (0, 0);
    for r in log_rows(log)? {
        let r = r?;
        rows += 1;
        errors += r.error.is_some() as usize;
        serde_json::to_writer(&mut w, &r)?;
        w.write_all(b"\n")?;
    }
    let f = w.into_inner().map_err(|e| e.into_error())?;
    f.sync_all()
        .with_context(|| format!("writing {}", out.display()))?;
    Ok((rows, errors))
}

/// Rows as one Arrow record batch: id, path, text, token_ids (list<uint32>), prompt,
/// generation, error; text/prompt/error nullable.
pub fn record_batch(rows: &[Row]) -> anyhow::Result<RecordBatch> {
    let strings = |f: &dyn Fn(&Row) -> Option<&str>| -> ArrayRef {
        let mut b = StringBuilder::new();
        for r in rows {
            b.append_option(f(r));
        }
        Arc::new(b.finish())
    };
    let mut ids = ListBuilder::new(UInt32Builder::new());
    for r in rows {
        ids.values().append_slice(&r.token_ids);
        ids.append(true);
    }
    Ok(RecordBatch::try_from_iter_with_nullable([
        ("id", strings(&|r| Some(r.id.as_str())), false),
        ("path", strings(&|r| Some(r.path.as_str())), false),
        ("text", strings(&|r| r.text.as_deref()), true),
        ("token_ids", Arc::new(ids.finish()) as ArrayRef, false),
        ("prompt", strings(&|r| r.prompt.as_deref()), true),
        (
            "generation",
            strings(&|r| Some(r.generation.as_str())),
            false,
        ),
        ("error", strings(&|r| r.error.as_deref()), true),
    ])?)
}

/// The log as a Snappy-compressed Parquet file, `ROW_GROUP` rows per row group; returns
/// (rows, errors).
fn write_parquet(log: &Path, out: &Path) -> anyhow::Result<(usize, usize)> {
    use parquet::arrow::ArrowWriter;
    use parquet::basic::Compression;
    use parquet::file::properties::WriterProperties;
    let f = File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(ROW_GROUP))
        .build();
    let schema = record_batch(&[])?.schema();
    let mut w = ArrowWriter::try_new(f, schema, Some(props))?;
    let (mut rows, mut errors) = (0, 0);
    let mut chunk = Vec::with_capacity(ROW_GROUP);
    for r in log_rows(log)? {
        let r = r?;
        rows += 1;
        errors += r.error.is_some() as usize;
        chunk.push(r);
        if chunk.len() == ROW_GROUP {
            w.write(&record_batch(&chunk)?)?;
            chunk.clear();
        }
    }
    if !chunk.is_empty() {
        w.write(&record_batch(&chunk)?)?;
    }
    let f = w.into_inner()?;
    f.sync_all()
        .with_context(|| format!("writing {}", out.display()))?;
    Ok((rows, errors))
}
