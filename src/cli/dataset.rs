//! `blip2 dataset caption`: flags -> dataset::Settings, model loading, the run.

use std::path::PathBuf;

use anyhow::Context;
use blip2::Blip2;
use blip2::model::config::Blip2Config;
use clap::{Args, Subcommand, ValueEnum};

use super::common::{load_model, load_timed};
use super::generate::GenOpts;
use crate::dataset::{self, inputs, output::Format, reader::ReadLimits, shard};

#[derive(Subcommand)]
pub enum DatasetCommand {
    /// Caption every image of a dataset into sharded Parquet or JSONL files (resumable;
    /// docs/dataset.md).
    #[command(
        after_help = "Examples:\n  blip2 dataset caption --input images/ --output captions/\n  blip2 dataset caption --input 'data-{000..099}.tar' --output out/ --num-shards 100 --model ./blip2-opt-2.7b\n  blip2 dataset caption --input list.csv --path-column file --output out/ --format jsonl\n  SLURM_ARRAY_TASK_ID=3 blip2 dataset caption --input imgs/ --output out/ --num-shards 8"
    )]
    Caption(CaptionOpts),
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum FormatArg {
    Parquet,
    Jsonl,
}

#[derive(Args, Clone, Debug)]
pub struct CaptionOpts {
    /// Image directories (recursive), manifests (.jsonl, .csv, .parquet), WebDataset shards
    /// (.tar; brace lists like data-{000..099}.tar) or image files.
    #[arg(long, required = true, num_args = 1..)]
    pub input: Vec<String>,
    /// Directory for the shard files (created if missing).
    #[arg(long)]
    pub output: PathBuf,
    #[arg(long, value_enum, default_value_t = FormatArg::Parquet)]
    pub format: FormatArg,
    /// Text given to the processor after the image tokens (a manifest's prompt column
    /// overrides it per row).
    #[arg(long)]
    pub prompt: Option<String>,
    /// Images per forward pass.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Number of shards the items are split into.
    #[arg(long, default_value_t = 1)]
    pub num_shards: usize,
    /// The shard this process runs (default: $SLURM_ARRAY_TASK_ID, else
    /// $JOB_COMPLETION_INDEX, else every shard in turn).
    #[arg(long)]
    pub shard_index: Option<usize>,
    /// Manifest column holding the image path (relative to the manifest's directory).
    #[arg(long, default_value = "path")]
    pub path_column: String,
    /// Manifest column holding the row id, used when present (else MANIFEST#ROW).
    #[arg(long, default_value = "id")]
    pub id_column: String,
    /// Manifest column holding a per-row prompt, used when present.
    #[arg(long, default_value = "prompt")]
    pub prompt_column: String,
    /// Threads reading and preprocessing images ahead of the model.
    #[arg(long, default_value_t = default_workers())]
    pub workers: usize,
    /// Largest encoded image read, in bytes; a bigger file is an error row.
    #[arg(long, default_value_t = 64 << 20)]
    pub max_image_bytes: u64,
    /// Largest width x height decoded (Pillow's MAX_IMAGE_PIXELS); a bigger image is an
    /// error row.
    #[arg(long, default_value_t = 89_478_485)]
    pub max_image_pixels: u64,
    /// Random weights of this size instead of a checkpoint (tiny, opt-2.7b, opt-6.7b,
    /// flan-t5-xl, flan-t5-xxl): for throughput measurements.
    #[arg(long, conflicts_with = "model")]
    pub preset: Option<String>,
    /// Record RSS in the stats every this many rows.
    #[arg(long, default_value_t = 1000)]
    pub rss_every: usize,
    #[command(flatten)]
    pub gen_opts: GenOpts,
}

fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(1, 4)
}

pub fn run(cmd: &DatasetCommand) -> anyhow::Result<()> {
    match cmd {
        DatasetCommand::Caption(o) => caption(o),
    }
}

fn caption(o: &CaptionOpts) -> anyhow::Result<()> {
    anyhow::ensure!(o.batch_size >= 1, "--batch-size must be at least 1");
    anyhow::ensure!(o.workers >= 1, "--workers must be at least 1");
    // Everything that can fail on the command line fails before the weights load.
    let shards = shard::resolve(o.shard_index, o.num_shards, shard::process_env)?;
    let cols = inputs::Columns {
        path: o.path_column.clone(),
        id: o.id_column.clone(),
        prompt: o.prompt_column.clone(),
    };
    let items = inputs::collect(&o.input, &cols)?;
    let mut requested = o.gen_opts.config();
    // A rerun (resume) must give the rows the first run would have: sampling without a
    // seed uses seed 0 rather than a fresh one.
    if requested.do_sample && requested.seed.is_none() {
        requested.seed = Some(0);
    }
    requested.validate()?;
    let mopts = &o.gen_opts.model;
    let (model, model_name) = match (&o.preset, &mopts.model) {
        (Some(p), _) => {
            let config = Blip2Config::preset(p)?;
            let (m, _) = load_timed(mopts, |opts| {
                Ok(Blip2::random(config, &opts.device, opts.dtype, 0)?)
            })?;
            (m, format!("random:{p}"))
        }
        (None, Some(dir)) => (load_model(mopts)?.0, dir.display().to_string()),
        (None, None) => (load_model(mopts)?.0, "demo".to_string()),
    };
    let cfg = model.resolve_generation(&requested)?;
    let settings = dataset::Settings {
        output: o.output.clone(),
        format: match o.format {
            FormatArg::Parquet => Format::Parquet,
            FormatArg::Jsonl => Format::Jsonl,
        },
        prompt: o.prompt.clone(),
        batch_size: o.batch_size,
        num_shards: o.num_shards,
        shards,
        workers: o.workers,
        limits: ReadLimits {
            max_bytes: o.max_image_bytes,
            max_pixels: o.max_image_pixels,
        },
        load: blip2::ImageLoadOptions {
            apply_exif_orientation: mopts.exif_orientation,
        },
        quiet: mopts.quiet,
        model_name,
        rss_every: o.rss_every,
    };
    if !mopts.quiet {
        eprintln!(
            "{} items in {} shard(s); this process runs {}",
            items.len(),
            o.num_shards,
            if settings.shards.len() == 1 {
                format!("shard {}", settings.shards[0])
            } else {
                "all of them".to_string()
            }
        );
    }
    let stats = dataset::caption(&model, &cfg, &items, &settings)
        .with_context(|| format!("captioning into {}", o.output.display()))?;
    if mopts.json {
        for s in &stats {
            println!("{}", serde_json::to_string(s)?);
        }
    }
    Ok(())
}
