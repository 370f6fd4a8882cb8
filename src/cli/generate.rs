//! `blip2 caption` and `blip2 ask`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use blip2::{Generation, GenerationConfig};
use clap::Args;

use super::common::{ModelOpts, load_model, ms};

#[derive(Args, Clone, Debug)]
pub struct GenOpts {
    #[command(flatten)]
    pub model: ModelOpts,
    #[arg(long, default_value_t = 20)]
    pub max_new_tokens: usize,
    #[arg(long, default_value_t = 0)]
    pub min_new_tokens: usize,
}

impl GenOpts {
    fn config(&self) -> GenerationConfig {
        GenerationConfig {
            max_new_tokens: self.max_new_tokens,
            min_new_tokens: self.min_new_tokens,
            ..Default::default()
        }
    }
}

pub fn caption(images: &[PathBuf], prompt: Option<&str>, o: &GenOpts) -> anyhow::Result<()> {
    let (model, load) = load_model(&o.model)?;
    for path in images {
        let image = blip2::load_image(path)?;
        let g = model.generate(&image, prompt, &o.config())?;
        print_result(path, &g, load, o)?;
    }
    Ok(())
}

pub fn ask(image: &Path, question: &str, o: &GenOpts) -> anyhow::Result<()> {
    let (model, load) = load_model(&o.model)?;
    let img = blip2::load_image(image)?;
    let prompt = format!("Question: {} Answer:", question.trim());
    let g = model.generate(&img, Some(&prompt), &o.config())?;
    print_result(image, &g, load, o)
}

fn print_result(path: &Path, g: &Generation, load: Duration, o: &GenOpts) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if o.model.json {
        let t = &g.timings;
        let v = serde_json::json!({
            "image": path.display().to_string(),
            "text": g.text,
            "token_ids": g.token_ids,
            "timings_ms": {
                "load": ms(load),
                "preprocess": ms(t.preprocess),
                "vision": ms(t.vision),
                "qformer": ms(t.qformer),
                "prefill": ms(t.prefill),
                "decode": ms(t.decode),
            },
        });
        writeln!(out, "{v}")?;
    } else {
        writeln!(out, "{}", g.text)?;
    }
    Ok(())
}
