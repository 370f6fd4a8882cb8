//! Multi-turn visual question answering: the image goes through ViT, Q-Former and the
//! projection once, and every turn's prompt carries the conversation so far in the
//! format of the BLIP-2 examples: "Question: q1 Answer: a1. Question: q2 Answer:".

use crate::blip2::{Blip2, Generation, ImageFeatures};
use crate::generate::{GenerationConfig, ResolvedGeneration, TokenEvent};
use crate::prompt::vqa_prompt;
use crate::{ModelError, Result};

/// One question and the answer the model gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Turn {
    pub question: String,
    pub answer: String,
}

/// The prompt for `question` after the `history`: each earlier turn as
/// "Question: q Answer: a." (no extra period when the answer already ends a sentence),
/// then "Question: q Answer:".
pub fn chat_prompt(history: &[Turn], question: &str) -> String {
    let mut p = String::new();
    for t in history {
        let a = t.answer.trim();
        p.push_str(&vqa_prompt(&t.question));
        if !a.is_empty() {
            p.push(' ');
            p.push_str(a);
            if !a.ends_with(['.', '!', '?']) {
                p.push('.');
            }
        }
        p.push(' ');
    }
    p.push_str(&vqa_prompt(question));
    p
}

/// A conversation about one image.
pub struct Chat<'a> {
    model: &'a Blip2,
    features: ImageFeatures,
    turns: Vec<Turn>,
    /// Oldest turns left out of the last prompt to fit the model (see [`Chat::ask_with`]).
    dropped: usize,
}

impl<'a> Chat<'a> {
    /// A conversation over features of exactly one image (`Blip2::image_features`).
    pub fn new(model: &'a Blip2, features: ImageFeatures) -> Chat<'a> {
        Chat {
            model,
            features,
            turns: Vec::new(),
            dropped: 0,
        }
    }

    /// Like [`Chat::new`], checking that the features hold one image.
    pub fn from_features(model: &'a Blip2, features: ImageFeatures) -> Result<Chat<'a>> {
        if features.projected.dim(0) != 1 {
            return Err(ModelError::Invalid(format!(
                "a chat is about one image, the features hold {}",
                features.projected.dim(0)
            )));
        }
        Ok(Chat::new(model, features))
    }

    /// Resumes a conversation taken apart by [`Chat::into_parts`] (for owners that keep
    /// the model behind a shared pointer, such as the C and Python bindings).
    pub fn resume(model: &'a Blip2, features: ImageFeatures, turns: Vec<Turn>) -> Chat<'a> {
        Chat {
            model,
            features,
            turns,
            dropped: 0,
        }
    }

    /// The image features and the turns so far, releasing the borrow of the model.
    pub fn into_parts(self) -> (ImageFeatures, Vec<Turn>) {
        (self.features, self.turns)
    }

    pub fn features(&self) -> &ImageFeatures {
        &self.features
    }

    pub fn turns(&self) -> &[Turn] {
        &self.turns
    }

    /// How many of the oldest turns the last answer did not see because the whole history
    /// no longer fit the model (0 when it did).
    pub fn dropped_turns(&self) -> usize {
        self.dropped
    }

    /// Forgets the conversation (the image features stay).
    pub fn clear(&mut self) {
        self.turns.clear();
    }

    /// The prompt the next [`Chat::ask`] with `question` will use.
    pub fn prompt(&self, question: &str) -> String {
        chat_prompt(&self.turns, question)
    }

    /// Answers `question` in the context of the earlier turns and records the turn.
    pub fn ask(&mut self, question: &str, cfg: &GenerationConfig) -> Result<Generation> {
        self.ask_stream(question, cfg, |_| {})
    }

    /// [`Chat::ask`] with a callback that sees each new token as it is chosen.
    pub fn ask_stream(
        &mut self,
        question: &str,
        cfg: &GenerationConfig,
        mut on_token: impl FnMut(&TokenEvent),
    ) -> Result<Generation> {
        let settings = self.model.resolve_generation(cfg)?;
        self.ask_with(question, &settings, &mut on_token)
    }

    /// The general form of [`Chat::ask`]: settings resolved by `Blip2::resolve_generation`
    /// (so that every turn can share one sampler seed, for instance) and a callback that
    /// sees each new token as it is chosen.
    pub fn ask_with(
        &mut self,
        question: &str,
        settings: &ResolvedGeneration,
        on_token: &mut dyn FnMut(&TokenEvent),
    ) -> Result<Generation> {
        // A history longer than the model takes loses its oldest turns (they stay in
        // `turns`); only a question that does not fit alone is an error.
        let mut first = 0;
        let prompt = loop {
            let prompt = chat_prompt(&self.turns[first..], question);
            let len = self.model.prompt_ids(Some(&prompt)).map(|ids| ids.len());
            match len {
                Ok(n) if self.model.fits(n, settings.max_new_tokens()) => break prompt,
                Ok(_) | Err(ModelError::PromptTooLong { .. }) if first < self.turns.len() => {
                    first += 1
                }
                // Even alone, question + answer exceed the positions: prefill says how.
                Ok(_) => break prompt,
                Err(e) => return Err(e),
            }
        };
        self.dropped = first;
        let mut out = self.model.generate_from_features_with(
            &self.features,
            &[Some(&prompt)],
            settings,
            on_token,
        )?;
        let g = out
            .pop()
            .ok_or_else(|| ModelError::Invalid("empty generation batch".into()))?;
        self.turns.push(Turn {
            question: question.trim().to_string(),
            answer: g.text.clone(),
        });
        Ok(g)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_follow_the_blip2_template() {
        assert_eq!(
            chat_prompt(&[], " what is it? "),
            "Question: what is it? Answer:"
        );
        let h = vec![
            Turn {
                question: "what is it?".into(),
                answer: "a dog".into(),
            },
            Turn {
                question: "where?".into(),
                answer: "on the beach.".into(),
            },
        ];
        assert_eq!(
            chat_prompt(&h, "why?"),
            "Question: what is it? Answer: a dog. Question: where? Answer: on the beach. Question: why? Answer:"
        );
    }
}
