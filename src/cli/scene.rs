//! `blip2 demo-scene`: draws scenes with the demo model's training generator.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;

#[derive(Args, Clone, Debug)]
pub struct SceneOpts {
    /// Seed of the (first) scene. The demo model was trained on seeds 1000000..1039999;
    /// any other seed draws a scene it never saw.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output PNG (single scene).
    #[arg(required_unless_present = "out_dir")]
    pub out: Option<PathBuf>,
    /// Print the ground truth as one JSON object {caption, qa: [{question, answer}]}.
    #[arg(long)]
    pub json: bool,
    /// Batch mode: write COUNT scenes as DIR/{seed}.png plus DIR/scenes.jsonl.
    #[arg(long, requires = "count")]
    pub out_dir: Option<PathBuf>,
    /// Number of scenes in batch mode (seeds SEED..SEED+COUNT).
    #[arg(long, requires = "out_dir")]
    pub count: Option<u64>,
}

pub fn demo_scene(o: &SceneOpts) -> anyhow::Result<()> {
    if let (Some(dir), Some(count)) = (&o.out_dir, o.count) {
        let jsonl = blip2::scene::write_scene_batch(dir, o.seed, count)?;
        eprintln!("wrote {count} scenes and {}", jsonl.display());
        return Ok(());
    }
    let out: &Path = o.out.as_deref().context("an output PNG path is required")?;
    let scene = blip2::scene::draw_scene(o.seed);
    scene
        .image
        .save(out)
        .with_context(|| format!("writing {}", out.display()))?;
    if o.json {
        println!("{}", blip2::scene::scene_json(&scene));
    } else {
        println!("caption: {}", scene.caption);
        for qa in &scene.qa {
            println!("Q: {}  A: {}", qa.question, qa.answer);
        }
    }
    Ok(())
}
