//! `blip2 match` and `blip2 rank`: image-text matching (ITM probability) and contrastive
//! similarity (ITC) with a retrieval checkpoint (Blip2ForImageTextRetrieval).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use blip2::Blip2Retrieval;

use super::common::{Failures, ModelOpts, expand_images, load_timed, ms, open_image};

/// Loads the retrieval checkpoint of `o` and returns it with the load time. A captioning
/// checkpoint fails here with the library's "has no retrieval heads" error.
pub fn load_retrieval(o: &ModelOpts) -> anyhow::Result<(Blip2Retrieval, Duration)> {
    let dir = o.model_dir("image-text matching")?;
    load_timed(o, |opts| {
        Blip2Retrieval::load(dir, opts).with_context(|| format!("loading {}", dir.display()))
    })
}

/// Prints the ITM probability and the ITC similarity of each text with `image`.
pub fn match_texts(image: &Path, texts: &[String], o: &ModelOpts) -> anyhow::Result<()> {
    if texts.is_empty() {
        bail!("no texts given");
    }
    // A bad image fails before gigabytes of weights load.
    let img = open_image(image, o)?;
    let (model, load) = load_retrieval(o)?;
    let t = Instant::now();
    let scores = model.match_scores(&img, texts)?;
    let took = t.elapsed();
    let mut out = std::io::stdout().lock();
    for (text, s) in texts.iter().zip(&scores) {
        if o.json {
            let v = serde_json::json!({
                "image": image.display().to_string(),
                "text": text,
                "itm": s.itm,
                "itc": s.itc,
                "timings_ms": { "load": ms(load), "scores": ms(took) },
            });
            writeln!(out, "{v}")?;
        } else {
            writeln!(out, "itm {:.4}  itc {:+.4}  {text}", s.itm, s.itc)?;
        }
    }
    Ok(())
}

/// Texts of a file, one per line; blank lines are skipped.
fn read_texts(path: &Path) -> anyhow::Result<Vec<String>> {
    let s = std::fs::read_to_string(path)
        .with_context(|| format!("reading texts from {}", path.display()))?;
    let texts: Vec<String> = s
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    if texts.is_empty() {
        bail!("{}: no texts (one per line expected)", path.display());
    }
    Ok(texts)
}

/// Ranks the texts of `texts_file` for each image, best ITM probability first.
pub fn rank(images: &[PathBuf], texts_file: &Path, o: &ModelOpts) -> anyhow::Result<()> {
    let texts = read_texts(texts_file)?;
    let images = expand_images(images)?;
    let (model, load) = load_retrieval(o)?;
    let mut failures = Failures::new(o, images.len());
    for path in &images {
        let t = Instant::now();
        let run = open_image(path, o).and_then(|img| Ok(model.rank(&img, &texts)?));
        let ranked = match run {
            Ok(r) => r,
            Err(e) => {
                failures.report(path, e)?;
                continue;
            }
        };
        let took = t.elapsed();
        let mut out = std::io::stdout().lock();
        if o.json {
            let ranking: Vec<_> = ranked
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    serde_json::json!({
                        "rank": i + 1,
                        "index": r.index,
                        "text": texts[r.index],
                        "itm": r.score.itm,
                        "itc": r.score.itc,
                    })
                })
                .collect();
            let v = serde_json::json!({
                "image": path.display().to_string(),
                "ranking": ranking,
                "timings_ms": { "load": ms(load), "rank": ms(took) },
            });
            writeln!(out, "{v}")?;
        } else {
            writeln!(out, "{}", path.display())?;
            for (i, r) in ranked.iter().enumerate() {
                writeln!(
                    out,
                    "{:>4}. itm {:.4}  itc {:+.4}  {}",
                    i + 1,
                    r.score.itm,
                    r.score.itc,
                    texts[r.index]
                )?;
            }
        }
    }
    failures.finish()
}
