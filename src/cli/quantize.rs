//! `blip2 quantize`: a checkpoint directory rewritten with quantized linear weights and token
//! embeddings.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use blip2::model::save::{QuantizeOptions, quantize_dir};
use clap::Args;

use super::common::{DTypeArg, ms, weight_summary};

#[derive(Args, Clone, Debug)]
pub struct QuantizeOpts {
    /// Float checkpoint directory (Hugging Face layout, generation or retrieval model).
    #[arg(long)]
    pub model: PathBuf,
    /// q8 or q4.
    #[arg(long, value_enum)]
    pub dtype: DTypeArg,
    /// Output directory (created; must not exist or be empty).
    #[arg(long)]
    pub out: PathBuf,
    /// Largest safetensors file in bytes before sharding with an index.
    #[arg(long, default_value_t = blip2::model::save::MAX_SHARD_BYTES)]
    pub max_shard_bytes: u64,
    #[arg(long)]
    pub json: bool,
}

pub fn quantize(o: &QuantizeOpts) -> anyhow::Result<()> {
    let dtype = o.dtype.dtype();
    anyhow::ensure!(
        dtype.is_quantized(),
        "--dtype must be q8 or q4, not {dtype}"
    );
    anyhow::ensure!(o.max_shard_bytes > 0, "--max-shard-bytes must be positive");
    let t = Instant::now();
    let opts = QuantizeOptions {
        dtype,
        max_shard_bytes: o.max_shard_bytes,
    };
    let r = quantize_dir(&o.model, &o.out, &opts)
        .with_context(|| format!("quantizing {}", o.model.display()))?;
    let files: Vec<String> = r.files.iter().map(|f| f.display().to_string()).collect();
    if o.json {
        let v = serde_json::json!({
            "model": o.model.display().to_string(), "out": o.out.display().to_string(),
            "dtype": dtype.to_string(), "files": files, "copied": r.copied,
            "tensors": r.tensors, "tensor_bytes": r.bytes, "weights": r.stats.to_json(),
            "time_ms": ms(t.elapsed()),
        });
        println!("{v}");
    } else {
        println!(
            "wrote {} ({} tensors, {:.2} MB) in {:.1} s",
            files.join(", "),
            r.tensors,
            r.bytes as f64 / 1e6,
            t.elapsed().as_secs_f64()
        );
        println!("{}", weight_summary(&r.stats));
        println!("copied: {}", r.copied.join(", "));
    }
    Ok(())
}
