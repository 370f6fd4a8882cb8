//! `blip2 caption`, `blip2 ask` and `blip2 chat`.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use blip2::{
    Blip2, EarlyStopping, Generation, GenerationConfig, ResolvedGeneration, TextStream, TokenEvent,
};
use clap::{Args, ValueEnum};

use super::common::{
    Failures, ModelOpts, expand_images, load_model, ms, open_image, timing_summary,
};

#[derive(Args, Clone, Debug)]
pub struct GenOpts {
    #[command(flatten)]
    pub model: ModelOpts,
    /// Most new tokens per answer.
    #[arg(long, default_value_t = 20)]
    pub max_new_tokens: usize,
    /// Fewest new tokens before the end-of-sequence token is allowed.
    #[arg(long, default_value_t = 0)]
    pub min_new_tokens: usize,
    /// Beam search with this many beams (1: greedy search, or sampling with --sample).
    #[arg(long, default_value_t = 1)]
    pub num_beams: usize,
    /// Beam search: exponent of the length normalisation of finished hypotheses
    /// (> 0 favours longer answers, < 0 shorter ones).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub length_penalty: f32,
    /// Beam search stopping rule, as transformers' early_stopping.
    #[arg(long, value_enum, default_value_t = EarlyStoppingArg::False)]
    pub early_stopping: EarlyStoppingArg,
    /// Sample the next token instead of taking the most likely one.
    #[arg(long)]
    pub sample: bool,
    /// Sampling temperature (> 0; higher is more random).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub temperature: f32,
    /// Sample among the k most likely tokens (0: no limit).
    #[arg(long, default_value_t = 50)]
    pub top_k: usize,
    /// Sample among the most likely tokens whose probabilities add up to p, in (0, 1].
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub top_p: f32,
    /// Penalise tokens already present (> 1 discourages repetition).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub repetition_penalty: f32,
    /// Never repeat an n-gram of this size (0: off).
    #[arg(long, default_value_t = 0)]
    pub no_repeat_ngram_size: usize,
    /// Sampler seed; the same seed gives the same text on the same device (default: a
    /// fresh seed, reported in --json output).
    #[arg(long)]
    pub seed: Option<u64>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum EarlyStoppingArg {
    True,
    False,
    Never,
}

impl GenOpts {
    pub fn config(&self) -> GenerationConfig {
        GenerationConfig {
            max_new_tokens: self.max_new_tokens,
            min_new_tokens: self.min_new_tokens,
            num_beams: self.num_beams,
            length_penalty: self.length_penalty,
            early_stopping: match self.early_stopping {
                EarlyStoppingArg::True => EarlyStopping::True,
                EarlyStoppingArg::False => EarlyStopping::False,
                EarlyStoppingArg::Never => EarlyStopping::Never,
            },
            do_sample: self.sample,
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            repetition_penalty: self.repetition_penalty,
            no_repeat_ngram_size: self.no_repeat_ngram_size,
            seed: self.seed,
            eos_token_ids: None,
            pad_token_id: None,
        }
    }
}

/// Loads the model and resolves the settings once: every generation of the command uses
/// (and `--json` reports) this value, sampler seed included.
fn setup(o: &GenOpts) -> anyhow::Result<(Blip2, Duration, ResolvedGeneration)> {
    let requested = o.config();
    // Resolving needs the checkpoint's ids; checking first fails before the weights load.
    requested.validate()?;
    let (model, load) = load_model(&o.model)?;
    let cfg = model.resolve_generation(&requested)?;
    Ok((model, load, cfg))
}

pub fn caption(
    images: &[PathBuf],
    prompt: Option<&str>,
    batch_size: usize,
    o: &GenOpts,
) -> anyhow::Result<()> {
    if batch_size == 0 {
        anyhow::bail!("--batch-size must be at least 1");
    }
    let images = expand_images(images)?;
    // With several images each plain-text line says which image it is about.
    let labelled = images.len() > 1;
    let (model, load, cfg) = setup(o)?;
    // Tokens are streamed to a terminal only; a file or pipe gets whole lines.
    let stream = !o.model.json && std::io::stdout().is_terminal();
    let mut failures = Failures::new(&o.model, images.len());
    for chunk in images.chunks(batch_size) {
        let mut paths = Vec::with_capacity(chunk.len());
        let mut imgs = Vec::with_capacity(chunk.len());
        for p in chunk {
            match open_image(p, &o.model) {
                Ok(img) => {
                    paths.push(p.as_path());
                    imgs.push(img);
                }
                Err(e) => failures.report(p, e)?,
            }
        }
        if imgs.is_empty() {
            continue;
        }
        if imgs.len() == 1 && stream {
            if labelled {
                let mut out = std::io::stdout().lock();
                write!(out, "{}: ", paths[0].display())?;
                out.flush()?;
            }
            let run = model
                .image_features(&[&imgs[0]])
                .map_err(anyhow::Error::from)
                .and_then(|feats| {
                    print_streamed(
                        |on| model.generate_from_features_with(&feats, &[prompt], &cfg, on),
                        &model,
                        &cfg,
                    )
                });
            match run {
                Ok(gens) => summary(load, &gens, o),
                Err(e) => {
                    if labelled {
                        writeln!(std::io::stdout().lock())?;
                    }
                    failures.report(paths[0], e)?;
                }
            }
            continue;
        }
        let refs: Vec<&blip2::image::DynamicImage> = imgs.iter().collect();
        let run = model.image_features(&refs).and_then(|feats| {
            model.generate_from_features_with(&feats, &vec![prompt; refs.len()], &cfg, &mut |_| {})
        });
        let gens = match run {
            Ok(gens) => gens,
            Err(e) => {
                // The batch failed as a whole (e.g. non-finite logits): every image in it.
                let msg = super::common::error_chain(&anyhow::Error::from(e));
                for p in &paths {
                    failures.report(p, anyhow::anyhow!("{msg}"))?;
                }
                continue;
            }
        };
        for (path, g) in paths.iter().zip(&gens) {
            let label = labelled.then_some(*path);
            print_result(json_record(path, None, g, load, &cfg), g, label, o)?;
        }
        summary(load, &gens, o);
    }
    failures.finish()
}

pub fn ask(image: &Path, question: &str, o: &GenOpts) -> anyhow::Result<()> {
    // A bad image fails before gigabytes of weights load.
    let img = open_image(image, &o.model)?;
    let (model, load, cfg) = setup(o)?;
    let question = question.trim();
    let prompt = blip2::vqa_prompt(question);
    let feats = model.image_features(&[&img])?;
    if o.model.json || !std::io::stdout().is_terminal() {
        let g = model
            .generate_from_features_with(&feats, &[Some(&prompt)], &cfg, &mut |_| {})?
            .remove(0);
        print_result(
            json_record(image, Some(question), &g, load, &cfg),
            &g,
            None,
            o,
        )
    } else {
        let gens = print_streamed(
            |on| model.generate_from_features_with(&feats, &[Some(&prompt)], &cfg, on),
            &model,
            &cfg,
        )?;
        summary(load, &gens, o);
        Ok(())
    }
}

/// Questions from stdin, one per line, each answered in the context of the earlier ones.
/// The image goes through the vision model once. "/reset" forgets the conversation.
pub fn chat(image: &Path, o: &GenOpts) -> anyhow::Result<()> {
    anyhow::ensure!(
        image.as_os_str() != "-",
        "chat reads its questions from stdin, so the image must be a file, not -"
    );
    let img = open_image(image, &o.model)?;
    let (model, load, cfg) = setup(o)?;
    let mut chat = model.chat(&img)?;
    let stdin = std::io::stdin();
    let interactive = stdin.is_terminal();
    if interactive {
        eprintln!(
            "Ask about {} (one question per line; /reset starts over; Ctrl-D ends).",
            image.display()
        );
    }
    let mut lines = stdin.lock().lines();
    let mut failed = 0usize;
    loop {
        if interactive {
            eprint!("> ");
            std::io::stderr().flush()?;
        }
        let Some(line) = lines.next() else { break };
        let line = line.context("reading stdin")?;
        let q = line.trim();
        if q.is_empty() {
            continue;
        }
        if q == "/reset" {
            chat.clear();
            continue;
        }
        // A failed turn (e.g. a question too long for the model) is reported and the
        // session goes on.
        let turn = if o.model.json || !std::io::stdout().is_terminal() {
            chat.ask_with(q, &cfg, &mut |_| {})
                .map_err(anyhow::Error::from)
                .and_then(|g| {
                    print_result(json_record(image, Some(q), &g, load, &cfg), &g, None, o)
                })
        } else {
            print_streamed(
                |on| chat.ask_with(q, &cfg, on).map(|g| vec![g]),
                &model,
                &cfg,
            )
            .map(|gens| summary(load, &gens, o))
        };
        if let Err(e) = turn {
            failed += 1;
            eprintln!("error: {}", super::common::error_chain(&e));
            if o.model.fail_fast {
                break;
            }
            continue;
        }
        if chat.dropped_turns() > 0 && !o.model.quiet {
            eprintln!(
                "note: the {} oldest of {} earlier turns no longer fit the model and were left out of this answer's prompt",
                chat.dropped_turns(),
                chat.turns().len() - 1
            );
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} questions failed (each is reported above)");
    }
    Ok(())
}

/// Runs `run` and prints the text as it is produced (the whole prefix is decoded after
/// each token, so multi-byte characters are never split), then a newline.
fn print_streamed(
    run: impl FnOnce(&mut dyn FnMut(&TokenEvent)) -> blip2::Result<Vec<Generation>>,
    model: &Blip2,
    cfg: &ResolvedGeneration,
) -> anyhow::Result<Vec<Generation>> {
    let mut stream = TextStream::new(&model.tokenizer, cfg.eos_token_ids());
    let mut out = std::io::stdout().lock();
    let mut failure: Option<anyhow::Error> = None;
    let gens = run(&mut |e: &TokenEvent| {
        if failure.is_some() {
            return;
        }
        let r = stream
            .push(e.token_id)
            .map_err(anyhow::Error::from)
            .and_then(|s| {
                if !s.is_empty() {
                    out.write_all(s.as_bytes())?;
                    out.flush()?;
                }
                Ok(())
            });
        if let Err(e) = r {
            failure = Some(e);
        }
    })?;
    if let Some(e) = failure {
        return Err(e);
    }
    let rest = stream.finish()?;
    writeln!(out, "{rest}")?;
    Ok(gens)
}

/// The one-line timing summary on stderr, unless `--quiet` or `--json`.
fn summary(load: Duration, gens: &[Generation], o: &GenOpts) {
    if let Some(g) = gens.first()
        && !o.model.quiet
        && !o.model.json
    {
        eprintln!("{}", timing_summary(load, &g.timings));
    }
}

fn json_record(
    path: &Path,
    question: Option<&str>,
    g: &Generation,
    load: Duration,
    cfg: &ResolvedGeneration,
) -> serde_json::Value {
    let t = &g.timings;
    let mut v = serde_json::json!({
        "image": path.display().to_string(),
        "text": g.text,
        "token_ids": g.token_ids,
        "generation": cfg,
        "timings_ms": {
            "load": ms(load),
            "preprocess": ms(t.preprocess),
            "vision": ms(t.vision),
            "qformer": ms(t.qformer),
            "prefill": ms(t.prefill),
            "decode": ms(t.decode),
        },
    });
    if let Some(q) = question {
        v["question"] = q.into();
    }
    if let Some(s) = g.score {
        v["score"] = s.into();
    }
    v
}

/// One result: the JSON record with `--json`, else the text, after `PATH: ` when `label` is set.
fn print_result(
    record: serde_json::Value,
    g: &Generation,
    label: Option<&Path>,
    o: &GenOpts,
) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if o.model.json {
        writeln!(out, "{record}")?;
    } else if let Some(path) = label {
        writeln!(out, "{}: {}", path.display(), g.text)?;
    } else {
        writeln!(out, "{}", g.text)?;
    }
    Ok(())
}
