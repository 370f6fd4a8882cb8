//! `blip2 dataset caption`: captions every image of a dataset into sharded Parquet or
//! JSONL files, resumable after a crash (docs/dataset.md).
//!
//! The run loop: list the items (inputs.rs), pick this process's shards (shard.rs), then
//! for each shard not yet complete: resume its row log (output.rs), read and preprocess the
//! remaining items on worker threads (reader.rs), caption them in batches through the
//! library facade (`Blip2::features_from_pixels` + `generate_from_features_with`), append
//! each batch's rows with a checkpoint, and finally write the shard's file and stats.

pub mod inputs;
pub mod output;
pub mod reader;
pub mod shard;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, ensure};
use blip2::engine::Tensor;
use blip2::{Blip2, ImageLoadOptions, ResolvedGeneration};
use sha2::{Digest, Sha256};

use inputs::WorkItem;
use output::{Format, Row, RowLog, RssSample, ShardFiles, Stats};
use reader::{Prepared, ReadLimits, Reader};

/// Everything a run needs besides the model and the items.
pub struct Settings {
    pub output: PathBuf,
    pub format: Format,
    /// Default prompt (a manifest's prompt column overrides it per row).
    pub prompt: Option<String>,
    pub batch_size: usize,
    pub num_shards: usize,
    /// The shards this process runs (shard::resolve).
    pub shards: Vec<usize>,
    /// Reader threads.
    pub workers: usize,
    pub limits: ReadLimits,
    pub load: ImageLoadOptions,
    pub quiet: bool,
    /// Names the model in the stats and the fingerprint: "demo", "random:PRESET" or the
    /// checkpoint directory.
    pub model_name: String,
    /// Log RSS in the stats every this many rows.
    pub rss_every: usize,
}

/// Runs every shard of `s.shards`; returns the stats of the shards completed by this call
/// (shards already complete are skipped and not returned).
pub fn caption(
    model: &Blip2,
    cfg: &ResolvedGeneration,
    items: &[WorkItem],
    s: &Settings,
) -> anyhow::Result<Vec<Stats>> {
    ensure!(s.batch_size >= 1, "--batch-size must be at least 1");
    std::fs::create_dir_all(&s.output)
        .with_context(|| format!("creating {}", s.output.display()))?;
    let generation = serde_json::to_string(cfg)?;
    let mut done = Vec::new();
    for &index in &s.shards {
        let files = ShardFiles::new(&s.output, index, s.num_shards);
        let range = shard::range(items.len(), s.num_shards, index);
        let shard_items = &items[range];
        let fp = fingerprint(s, index, &generation, shard_items);
        if output::completed(&files, s.format, &fp)? {
            if !s.quiet {
                eprintln!(
                    "shard {index}/{}: already complete ({}), skipped",
                    s.num_shards,
                    files.output(s.format).display()
                );
            }
            continue;
        }
        let stats = run_shard(model, cfg, &generation, shard_items, &files, &fp, index, s)?;
        if !s.quiet {
            eprintln!(
                "shard {index}/{}: {} rows ({} errors), {:.1} images/s -> {}",
                s.num_shards,
                stats.rows,
                stats.errors,
                stats.images_per_s,
                files.output(s.format).display()
            );
        }
        done.push(stats);
    }
    Ok(done)
}

/// SHA-256 (hex, first 16 bytes) of what decides a shard's rows: model, settings, prompt,
/// sharding, format and every item of the shard.
fn fingerprint(s: &Settings, index: usize, generation: &str, items: &[WorkItem]) -> String {
    let mut h = Sha256::new();
    let mut field = |b: &[u8]| {
        h.update((b.len() as u64).to_le_bytes());
        h.update(b);
    };
    field(s.model_name.as_bytes());
    field(generation.as_bytes());
    field(s.prompt.as_deref().unwrap_or("\0none").as_bytes());
    field(format!("{index}/{}/{}", s.num_shards, s.format.ext()).as_bytes());
    for it in items {
        field(it.id.as_bytes());
        field(it.path.as_bytes());
        field(it.prompt.as_deref().unwrap_or("\0none").as_bytes());
    }
    h.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn run_shard(
    model: &Blip2,
    cfg: &ResolvedGeneration,
    generation: &str,
    items: &[WorkItem],
    files: &ShardFiles,
    fp: &str,
    index: usize,
    s: &Settings,
) -> anyhow::Result<Stats> {
    let started = Instant::now();
    let mut log = RowLog::open(files, fp)?;
    let resumed = log.rows();
    ensure!(
        resumed <= items.len(),
        "the checkpoint of shard {index} says {resumed} rows were written, but the shard has {} items",
        items.len()
    );
    let rest = Arc::new(items[resumed..].to_vec());
    let mut reader = Reader::start(
        rest.clone(),
        model.image_processor().clone(),
        s.load,
        s.limits,
        s.workers,
        2 * s.batch_size + s.workers,
    );
    let bar = progress_bar(s.quiet, index, s.num_shards, items.len(), resumed);
    let mut rss = Vec::new();
    let mut next_rss = s.rss_every.max(1);
    let mut done = 0;
    loop {
        let mut batch: Vec<(&WorkItem, Prepared)> = Vec::with_capacity(s.batch_size);
        while batch.len() < s.batch_size {
            match reader.next() {
                Some(p) => batch.push((&rest[done + batch.len()], p)),
                None => break,
            }
        }
        if batch.is_empty() {
            break;
        }
        let n = batch.len();
        let rows = caption_batch(model, cfg, generation, s.prompt.as_deref(), batch);
        log.append(&rows)?;
        done += n;
        if let Some(b) = &bar {
            b.inc(n as u64);
        }
        if done >= next_rss {
            next_rss += s.rss_every.max(1);
            rss.extend(rss_sample(done));
        }
    }
    drop(reader);
    rss.extend(rss_sample(done));
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let seconds = started.elapsed().as_secs_f64();
    let stats = Stats {
        shard_index: index,
        num_shards: s.num_shards,
        rows: 0,
        ok: 0,
        errors: 0,
        resumed_at_row: resumed,
        seconds,
        images_per_s: if seconds > 0.0 {
            done as f64 / seconds
        } else {
            0.0
        },
        batch_size: s.batch_size,
        format: s.format.ext().to_string(),
        model: s.model_name.clone(),
        generation: serde_json::from_str(generation)?,
        fingerprint: fp.to_string(),
        rss,
    };
    log.finish(s.format, stats)
}

fn rss_sample(rows: usize) -> Option<RssSample> {
    output::rss_mb().map(|(rss_mb, peak_mb)| RssSample {
        rows,
        rss_mb,
        peak_mb,
    })
}

/// Images/s and ETA on stderr for a terminal; nothing otherwise or with --quiet.
fn progress_bar(
    quiet: bool,
    index: usize,
    num_shards: usize,
    len: usize,
    pos: usize,
) -> Option<indicatif::ProgressBar> {
    if quiet || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(len as u64);
    let style = indicatif::ProgressStyle::with_template(
        "{prefix} {bar:30} {pos}/{len} {per_sec} ETA {eta}",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_prefix(format!("shard {index}/{num_shards}"));
    bar.set_position(pos as u64);
    bar.reset_eta();
    Some(bar)
}

/// One batch's rows, in item order: items that could not be read become error rows, the
/// others go through the model together. If the batch fails in the model, each image is
/// retried alone so that one bad image costs one row.
fn caption_batch(
    model: &Blip2,
    cfg: &ResolvedGeneration,
    generation: &str,
    default_prompt: Option<&str>,
    batch: Vec<(&WorkItem, Prepared)>,
) -> Vec<Row> {
    let row = |it: &WorkItem, prompt: Option<&str>| Row {
        id: it.id.clone(),
        path: it.path.clone(),
        text: None,
        token_ids: Vec::new(),
        prompt: prompt.map(str::to_string),
        generation: generation.to_string(),
        error: None,
    };
    let mut rows = Vec::with_capacity(batch.len());
    let mut ready = Vec::new();
    for (it, p) in batch {
        let prompt = it.prompt.as_deref().or(default_prompt);
        let mut r = row(it, prompt);
        match p {
            Ok(px) => ready.push((rows.len(), px)),
            Err(e) => r.error = Some(e),
        }
        rows.push(r);
    }
    if ready.is_empty() {
        return rows;
    }
    let prompts: Vec<Option<String>> = ready.iter().map(|(i, _)| rows[*i].prompt.clone()).collect();
    let same_size = ready.windows(2).all(|w| w[0].1.hw == w[1].1.hw);
    let together = if same_size && ready.len() > 1 {
        generate(
            model,
            cfg,
            &ready.iter().map(|(_, p)| p).collect::<Vec<_>>(),
            &prompts,
        )
        .ok()
    } else {
        None
    };
    let results: Vec<Result<blip2::Generation, String>> = match together {
        Some(gens) => gens.into_iter().map(Ok).collect(),
        None => ready
            .iter()
            .zip(&prompts)
            .map(|((_, p), prompt)| {
                generate(model, cfg, &[p], std::slice::from_ref(prompt)).map(|mut g| g.remove(0))
            })
            .collect(),
    };
    for ((i, _), res) in ready.iter().zip(results) {
        match res {
            Ok(g) => {
                rows[*i].text = Some(g.text);
                rows[*i].token_ids = g.token_ids;
            }
            Err(e) => rows[*i].error = Some(e),
        }
    }
    rows
}

/// Captions preprocessed images of one size together.
fn generate(
    model: &Blip2,
    cfg: &ResolvedGeneration,
    pixels: &[&reader::Pixels],
    prompts: &[Option<String>],
) -> Result<Vec<blip2::Generation>, String> {
    let (h, w) = pixels[0].hw;
    let mut data = Vec::with_capacity(pixels.len() * 3 * h * w);
    for p in pixels {
        data.extend_from_slice(&p.data);
    }
    let run = || -> blip2::Result<Vec<blip2::Generation>> {
        let t = Tensor::from_f32(data, &[pixels.len(), 3, h, w], model.device())?;
        let feats = model.features_from_pixels(&t)?;
        let prompts: Vec<Option<&str>> = prompts.iter().map(|p| p.as_deref()).collect();
        model.generate_from_features_with(&feats, &prompts, cfg, &mut |_| {})
    };
    run().map_err(|e| format!("model: {e}"))
}
