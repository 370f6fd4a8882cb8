//! `blip2 eval caption` and `blip2 eval vqa`: scores of predictions against references
//! (docs/eval.md). The computation lives in the `blip2-eval` crate; this prints it.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde_json::{Map, Value, json};

#[derive(Subcommand, Clone, Debug)]
pub enum EvalCommand {
    /// BLEU-1..4 and CIDEr-D of captions, computed as pycocoevalcap does (PTB tokenization
    /// included).
    #[command(
        after_help = "Files: COCO results [{image_id, caption}], COCO annotations {images, annotations: [{image_id, caption}]},\nor the JSONL rows of `blip2 dataset caption` (rows with an error are skipped).\nExample:\n  blip2 eval caption --predictions results.json --references captions_val2017.json --json"
    )]
    Caption(CaptionOpts),
    /// VQAv2 accuracy with the official answer normalisation and the 10-choose-9 average.
    #[command(
        after_help = "Files: official VQAv2 annotations {annotations: [...]} (or JSONL {question_id, answer_type, answers: [...]}),\npredictions [{question_id, answer}] (or JSONL, including `blip2 dataset` rows).\nExample:\n  blip2 eval vqa --predictions answers.json --annotations v2_mscoco_val2014_annotations.json --json"
    )]
    Vqa(VqaOpts),
}

#[derive(Args, Clone, Debug)]
pub struct CaptionOpts {
    /// Predicted captions, one per image.
    #[arg(long)]
    pub predictions: PathBuf,
    /// Reference captions (any number per image).
    #[arg(long)]
    pub references: PathBuf,
    /// Print one JSON object with pycocoevalcap's metric names.
    #[arg(long)]
    pub json: bool,
    /// Also print the scores of every image (JSON: an `images` list).
    #[arg(long)]
    pub per_image: bool,
}

#[derive(Args, Clone, Debug)]
pub struct VqaOpts {
    /// Predicted answers, one per question.
    #[arg(long)]
    pub predictions: PathBuf,
    /// Human answers (10 per question in VQAv2).
    #[arg(long)]
    pub annotations: PathBuf,
    /// The official questions file; when given, every annotated question must be in it.
    #[arg(long)]
    pub questions: Option<PathBuf>,
    /// Print one JSON object: `accuracy` (overall) and per answer/question type.
    #[arg(long)]
    pub json: bool,
}

pub fn eval(command: &EvalCommand) -> anyhow::Result<()> {
    match command {
        EvalCommand::Caption(o) => caption(o),
        EvalCommand::Vqa(o) => vqa(o),
    }
}

const BLEU_NAMES: [&str; 4] = ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4"];

fn caption(o: &CaptionOpts) -> anyhow::Result<()> {
    let report = blip2::eval::evaluate_caption_files(&o.predictions, &o.references)?;
    if report.skipped_prediction_errors > 0 {
        eprintln!(
            "skipped {} prediction rows that carry an error",
            report.skipped_prediction_errors
        );
    }
    if report.skipped_reference_errors > 0 {
        eprintln!(
            "skipped {} reference rows that carry an error",
            report.skipped_reference_errors
        );
    }
    if o.json {
        let mut obj = Map::new();
        for (name, v) in BLEU_NAMES.iter().zip(report.bleu) {
            obj.insert(name.to_string(), json!(v));
        }
        obj.insert("CIDEr".into(), json!(report.cider));
        obj.insert("images".into(), json!(report.per_image.len()));
        obj.insert(
            "skipped_errors".into(),
            json!(report.skipped_prediction_errors),
        );
        if o.per_image {
            let images: Vec<Value> = report
                .per_image
                .iter()
                .map(|s| {
                    let mut m = Map::new();
                    m.insert("image_id".into(), json!(s.image_id));
                    for (name, v) in BLEU_NAMES.iter().zip(s.bleu) {
                        m.insert(name.to_string(), json!(v));
                    }
                    m.insert("CIDEr".into(), json!(s.cider));
                    Value::Object(m)
                })
                .collect();
            obj.insert("per_image".into(), Value::Array(images));
        }
        println!("{}", Value::Object(obj));
        return Ok(());
    }
    if o.per_image {
        for s in &report.per_image {
            println!(
                "{}\tBleu_1 {:.6}\tBleu_4 {:.6}\tCIDEr {:.6}",
                s.image_id, s.bleu[0], s.bleu[3], s.cider
            );
        }
    }
    for (name, v) in BLEU_NAMES.iter().zip(report.bleu) {
        println!("{name}: {v:.6}");
    }
    println!("CIDEr: {:.6}", report.cider);
    println!("images: {}", report.per_image.len());
    Ok(())
}

fn vqa(o: &VqaOpts) -> anyhow::Result<()> {
    let report =
        blip2::eval::evaluate_vqa_files(&o.predictions, &o.annotations, o.questions.as_deref())?;
    let s = &report.scores;
    if o.json {
        let per_answer: Map<String, Value> = s
            .per_answer_type
            .iter()
            .map(|(t, v)| (t.clone(), json!(v)))
            .collect();
        let per_question: Map<String, Value> = s
            .per_question_type
            .iter()
            .map(|(t, v)| (t.clone(), json!(v)))
            .collect();
        let obj = json!({
            "accuracy": s.overall,
            "perAnswerType": per_answer,
            "perQuestionType": per_question,
            "questions": report.question_ids.len(),
        });
        println!("{obj}");
        return Ok(());
    }
    println!("accuracy: {:.2}", s.overall);
    for (t, v) in &s.per_answer_type {
        println!("{t}: {v:.2}");
    }
    println!("questions: {}", report.question_ids.len());
    Ok(())
}
