//! The bundled demo model: a small BLIP-2 (OPT) trained on procedural scenes
//! (`tools/demo_model/`, `docs/demo-model.md`), compiled into the library so that the
//! binary works with no download; and its exact-match evaluation on fresh scenes.

use blip2_model::embedded::EmbeddedCheckpoint;

use crate::scene::{draw_scene, normalize_answer, vqa_prompt};
use crate::{Blip2, GenerationConfig, LoadOptions, Result};

/// The demo checkpoint's files (a Hugging Face `save_pretrained` directory, f16 weights).
pub const DEMO_MODEL: EmbeddedCheckpoint = EmbeddedCheckpoint {
    name: "<embedded demo model>",
    config_json: include_str!("../assets/demo-model/config.json"),
    processor_config_json: include_str!("../assets/demo-model/processor_config.json"),
    tokenizer_json: include_bytes!("../assets/demo-model/tokenizer.json"),
    tokenizer_config_json: Some(include_str!("../assets/demo-model/tokenizer_config.json")),
    weights: include_bytes!("../assets/demo-model/model.safetensors"),
};

/// Loads the embedded demo model.
pub fn load_demo(opts: LoadOptions) -> Result<Blip2> {
    Blip2::load_embedded(&DEMO_MODEL, opts)
}

/// Exact-match scores of a model on scenes `first_seed..first_seed+count`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DemoScores {
    pub scenes: usize,
    pub captions_correct: usize,
    pub questions: usize,
    pub answers_correct: usize,
    /// (seed, expected, got) of the first few mistakes, for diagnosis.
    pub mistakes: Vec<(u64, String, String)>,
}

impl std::fmt::Display for DemoScores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "captions {}/{} = {:.2}%, answers {}/{} = {:.2}%",
            self.captions_correct,
            self.scenes,
            100.0 * self.caption_accuracy(),
            self.answers_correct,
            self.questions,
            100.0 * self.vqa_accuracy()
        )
    }
}

impl DemoScores {
    pub fn caption_accuracy(&self) -> f64 {
        self.captions_correct as f64 / self.scenes.max(1) as f64
    }
    pub fn vqa_accuracy(&self) -> f64 {
        self.answers_correct as f64 / self.questions.max(1) as f64
    }
}

/// Captions every scene and asks every question of its ground truth (greedy, 20 new
/// tokens), comparing exactly (case and a trailing period aside).
pub fn evaluate(model: &Blip2, first_seed: u64, count: u64) -> Result<DemoScores> {
    let settings = model.resolve_generation(&GenerationConfig::default())?;
    let mut s = DemoScores::default();
    let miss = |s: &mut DemoScores, seed, want: &str, got: &str| {
        if s.mistakes.len() < 20 {
            s.mistakes.push((seed, want.to_string(), got.to_string()));
        }
    };
    let end = first_seed.checked_add(count).ok_or_else(|| {
        crate::Error::Invalid(format!(
            "scenes {first_seed} + {count} overflow the u64 seed range"
        ))
    })?;
    for seed in first_seed..end {
        let mut scene = draw_scene(seed);
        let image = image::DynamicImage::ImageRgb8(std::mem::take(&mut scene.image));
        let feats = model.image_features(&[&image])?;
        let cap = model
            .generate_from_features_with(&feats, &[None], &settings, &mut |_| {})?
            .remove(0);
        s.scenes += 1;
        if normalize_answer(&cap.text) == normalize_answer(&scene.caption) {
            s.captions_correct += 1;
        } else {
            miss(&mut s, seed, &scene.caption, &cap.text);
        }
        for qa in &scene.qa {
            let prompt = vqa_prompt(&qa.question);
            let ans = model
                .generate_from_features_with(&feats, &[Some(&prompt)], &settings, &mut |_| {})?
                .remove(0);
            s.questions += 1;
            if normalize_answer(&ans.text) == normalize_answer(&qa.answer) {
                s.answers_correct += 1;
            } else {
                miss(
                    &mut s,
                    seed,
                    &format!("{} -> {}", qa.question, qa.answer),
                    &ans.text,
                );
            }
        }
    }
    Ok(s)
}
