//! `blip2 info`: compute devices and what they support, and a model's weights.

use std::path::PathBuf;

use anyhow::Context;
use blip2::model::WeightStats;
use blip2::{Blip2, Blip2Retrieval, Device, LoadOptions};
use clap::Args;

use super::common::{AdapterArgs, DTypeArg, weight_summary};

#[derive(Args, Clone, Debug)]
pub struct InfoOpts {
    /// Checkpoint directory whose weights to report (loaded on the CPU); the embedded demo
    /// model without it.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Storage dtype to load the weights with (q8/q4 quantize the linear weights and
    /// token embeddings).
    #[arg(long, value_enum, default_value_t = DTypeArg::F32)]
    pub dtype: DTypeArg,
    /// One JSON object (devices and the model's weights) instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub adapters: AdapterArgs,
}

/// The weights of `--model` (or the demo model) loaded on the CPU with `--dtype`.
/// The loaded model's architecture, its family ("instructblip (vicuna/llama)") and weights.
fn model_weights(o: &InfoOpts) -> anyhow::Result<(String, String, WeightStats)> {
    let opts = LoadOptions {
        device: Device::cpu(),
        dtype: o.dtype.dtype(),
        progress: None,
        adapters: o.adapters.specs()?,
    };
    let Some(dir) = &o.model else {
        let m = blip2::demo::load_demo(opts).context("loading the embedded demo model")?;
        return Ok((
            "Blip2ForConditionalGeneration".into(),
            m.config.family(),
            m.weight_stats().clone(),
        ));
    };
    let cfg = blip2::model::Blip2Config::from_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?;
    let ctx = || format!("loading {}", dir.display());
    if cfg.is_retrieval() {
        let m = Blip2Retrieval::load(dir, opts).with_context(ctx)?;
        Ok((
            "Blip2ForImageTextRetrieval".into(),
            cfg.family(),
            m.weight_stats().clone(),
        ))
    } else {
        let m = Blip2::load(dir, opts).with_context(ctx)?;
        let arch = if cfg.is_instructblip() {
            "InstructBlipForConditionalGeneration"
        } else {
            "Blip2ForConditionalGeneration"
        };
        Ok((arch.into(), cfg.family(), m.weight_stats().clone()))
    }
}

fn info_json(o: &InfoOpts) -> anyhow::Result<()> {
    let adapters: Vec<serde_json::Value> = blip2::engine::gpu::list_adapters()
        .iter()
        .map(|a| {
            serde_json::json!({"name": a.name, "backend": a.backend,
                               "device_type": a.device_type, "driver": a.driver})
        })
        .collect();
    let cpu = Device::cpu().info();
    let gpu = Device::gpu().ok().map(|g| {
        let i = g.info();
        serde_json::json!({"name": i.name, "backend": i.backend, "device_type": i.device_type})
    });
    let (arch, family, stats) = model_weights(o)?;
    let v = serde_json::json!({
        "adapters": adapters,
        "cpu": {"name": cpu.name, "threads": cpu.threads},
        "gpu": gpu,
        "model": {
            "path": o.model.as_ref().map(|p| p.display().to_string()),
            "architecture": arch,
            "family": family,
            "dtype": o.dtype.dtype().to_string(),
            "weights": stats.to_json(),
        },
    });
    println!("{v}");
    Ok(())
}

pub fn info(o: &InfoOpts) -> anyhow::Result<()> {
    if o.json {
        return info_json(o);
    }
    let adapters = blip2::engine::gpu::list_adapters();
    println!("wgpu adapters: {}", adapters.len());
    for a in &adapters {
        println!(
            "  - {} ({}, {}; driver: {})",
            a.name,
            a.backend,
            a.device_type,
            if a.driver.is_empty() { "-" } else { &a.driver }
        );
    }
    let mut devices = vec![Device::cpu()];
    match Device::gpu() {
        Ok(g) => devices.push(g),
        Err(e) => println!("gpu: none ({e})"),
    }
    for d in devices {
        let i = d.info();
        let role = if d.is_gpu() {
            "gpu (used by --device gpu)"
        } else {
            "cpu"
        };
        println!("{role}: {}", i.name);
        if d.is_gpu() {
            println!(
                "  backend: {}  driver: {}  type: {}",
                i.backend, i.driver, i.device_type
            );
        } else {
            println!("  backend: {}  type: {}", i.backend, i.device_type);
        }
        if d.is_gpu() {
            println!(
                "  shader_f16: {}  subgroups: {} ({}..{})  timestamps: {}  cooperative_matrix: {}",
                i.shader_f16,
                i.subgroups,
                i.subgroup_min_size,
                i.subgroup_max_size,
                i.timestamp_query,
                i.cooperative_matrix
            );
            println!(
                "  max_storage_buffer_binding_size: {}  max_buffer_size: {}  workgroup storage: {}  invocations/workgroup: {}",
                i.max_storage_buffer_binding_size,
                i.max_buffer_size,
                i.max_compute_workgroup_storage_size,
                i.max_compute_invocations_per_workgroup
            );
        } else {
            println!("  threads: {}", i.threads);
        }
    }
    let c = blip2::demo::DEMO_MODEL.config()?;
    let v = &c.vision_config;
    let q = &c.qformer_config;
    println!(
        "embedded demo model ({:.1} MB of f16 weights):",
        blip2::demo::DEMO_MODEL.weights.len() as f64 / 1e6
    );
    println!(
        "  vision: {}px, patch {}, hidden {}, {} layers, {} heads",
        v.image_size, v.patch_size, v.hidden_size, v.num_hidden_layers, v.num_attention_heads
    );
    println!(
        "  q-former: hidden {}, {} layers, {} heads, {} queries",
        q.hidden_size, q.num_hidden_layers, q.num_attention_heads, c.num_query_tokens
    );
    if let Some(t) = &c.text_config {
        println!("  {}", t.summary());
    }
    let (arch, family, stats) = model_weights(o)?;
    match &o.model {
        Some(dir) => println!("model {} ({arch}, family {family}):", dir.display()),
        None => println!(
            "embedded demo model loaded with --dtype {}:",
            o.dtype.dtype()
        ),
    }
    println!("  {}", weight_summary(&stats));
    for a in &stats.adapters {
        println!("  {}", adapter_summary(a));
    }
    Ok(())
}

/// One line per merged adapter: "adapter DIR (scale 1): 12 matrices merged, ...".
fn adapter_summary(a: &blip2::AdapterStats) -> String {
    format!(
        "adapter {} (scale {}): {} weight matrices merged, {} bias deltas, {} tensors replaced",
        a.dir.display(),
        a.scale,
        a.merged,
        a.bias_deltas,
        a.replaced
    )
}
