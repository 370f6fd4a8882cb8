//! Multi-turn visual question answering: the image goes through ViT, Q-Former and the
//! projection once, and every turn's prompt carries the conversation so far in the
//! format of the BLIP-2 examples: "Question: q1 Answer: a1. Question: q2 Answer:".
//!
//! Decoder-only language models (OPT, LLaMA) keep the KV cache of the previous turn's
//! prompt and answer: a turn prefills only the tokens after the longest prefix its prompt
//! ids share with the cached ones (typically the new question after the previous answer),
//! and greedy/sampled answers equal a full prefill's. The cache is not used, and every
//! turn prefills its whole prompt, for T5 (its encoder reads the whole history each turn:
//! that is how the model works), for InstructBLIP (its Q-Former reads the whole prompt,
//! so the image tokens change every turn) and for beam search. When old turns are dropped
//! to fit the positions, the prompt no longer starts like the cached one and the cache is
//! rebuilt from the first differing token.

use std::sync::Arc;
use std::time::Instant;

use blip2_engine::ops;

use crate::blip2::{Blip2, Generation, ImageFeatures, Timings};
use crate::generate::{GenerationConfig, ResolvedGeneration, TokenEvent, decode};
use crate::lm::batch::{RowBatch, RowBatchModel};
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
    /// Decoder-only: the cache of the last turn and the ids whose K/V it holds.
    cache: Option<(Box<dyn RowBatch + 'a>, Vec<u32>)>,
    reuse: bool,
    last_prefill: usize,
}

impl<'a> Chat<'a> {
    /// A conversation over features of exactly one image (`Blip2::image_features`).
    pub fn new(model: &'a Blip2, features: ImageFeatures) -> Chat<'a> {
        Chat {
            model,
            features,
            turns: Vec::new(),
            dropped: 0,
            cache: None,
            reuse: true,
            last_prefill: 0,
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
            cache: None,
            reuse: true,
            last_prefill: 0,
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

    /// Whether turns reuse the previous turn's KV cache where the model allows it (on by
    /// default; off, every turn prefills its whole prompt, as the answers' reference).
    pub fn set_cache_reuse(&mut self, on: bool) {
        self.reuse = on;
        if !on {
            self.cache = None;
        }
    }

    /// Prompt tokens the last turn ran through the language model's prefill: the whole
    /// prompt, or with cache reuse only those after the cached prefix.
    pub fn last_prefill_tokens(&self) -> usize {
        self.last_prefill
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
        let g = match self.ask_cached(&prompt, settings, on_token)? {
            Some(g) => g,
            None => {
                self.last_prefill = self.model.prompt_ids(Some(&prompt))?.len();
                let mut out = self.model.generate_from_features_with(
                    &self.features,
                    &[Some(&prompt)],
                    settings,
                    on_token,
                )?;
                out.pop()
                    .ok_or_else(|| ModelError::Invalid("empty generation batch".into()))?
            }
        };
        self.turns.push(Turn {
            question: question.trim().to_string(),
            answer: g.text.clone(),
        });
        Ok(g)
    }
}

impl Chat<'_> {
    /// The turn over the previous turn's cache; None where it is not used (see the module
    /// docs), the cache then dropped.
    fn ask_cached(
        &mut self,
        prompt: &str,
        settings: &ResolvedGeneration,
        on_token: &mut dyn FnMut(&TokenEvent),
    ) -> Result<Option<Generation>> {
        let cached = self.cache.take();
        if !self.reuse
            || settings.num_beams() > 1
            || self.model.config.is_instructblip()
            || !self.model.config.use_decoder_only_language_model
        {
            return Ok(None);
        }
        let t = Instant::now();
        let (mut lm, held) = match cached {
            Some(c) => c,
            None => (self.model.lm().row_batch(self.model.device()), Vec::new()),
        };
        let input =
            self.model
                .lm_input(&self.features, &[Some(prompt)], settings.pad_token_id())?;
        let ids = input.batch.rows[0].clone();
        // At least the last prompt token runs: its logits choose the first new token.
        let shared = held.iter().zip(&ids).take_while(|(a, b)| a == b).count();
        let keep = shared.min(ids.len().saturating_sub(1));
        let before = lm.prefilled_tokens();
        let suffix = ops::narrow(&input.embeds, 1, keep, ids.len() - keep)?;
        let first = lm.extend(keep, &suffix, settings.max_new_tokens())?;
        self.last_prefill = lm.prefilled_tokens() - before;
        let prefill = t.elapsed();
        let t = Instant::now();
        let out = decode(
            first,
            vec![ids.clone()],
            settings,
            &mut RowBatchModel(&mut *lm),
            on_token,
        )?;
        let toks = out.tokens.into_iter().next().unwrap_or_default();
        // The cache now holds the prompt and every new token fed back (all but the last).
        let mut held = ids;
        held.extend(toks.iter().take(out.steps));
        self.cache = Some((lm, held));
        Ok(Some(Generation {
            text: self.model.tokenizer.decode(&toks, true)?.trim().to_string(),
            token_ids: toks,
            score: None,
            timings: Timings {
                preprocess: self.features.preprocess,
                vision: self.features.vision,
                qformer: self.features.qformer,
                prefill,
                decode: t.elapsed(),
                decode_tokens: out.steps,
            },
        }))
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

/// `Chat<'a>` as a type constructor, for [`SharedChat`]'s self-referential cell.
type ChatOf<'a> = Chat<'a>;

self_cell::self_cell!(
    struct SharedChatCell {
        owner: Arc<Blip2>,
        #[not_covariant]
        dependent: ChatOf,
    }
);

/// A [`Chat`] that holds its model by `Arc` instead of borrowing it, so that owners with no
/// lifetime to offer (the C and Python bindings, a server's session table) keep one chat,
/// and with it the KV cache of the previous turn, from call to call.
pub struct SharedChat(SharedChatCell);

impl SharedChat {
    /// A conversation over features of exactly one image, as [`Chat::from_features`].
    pub fn new(model: Arc<Blip2>, features: ImageFeatures) -> Result<SharedChat> {
        SharedChatCell::try_new(model, |m| Chat::from_features(m, features)).map(SharedChat)
    }

    /// Runs `f` on the chat (ask, read the turns, clear…).
    pub fn with<R>(&mut self, f: impl for<'a> FnOnce(&mut Chat<'a>) -> R) -> R {
        self.0.with_dependent_mut(|_, chat| f(chat))
    }

    /// The model this chat holds.
    pub fn model(&self) -> &Arc<Blip2> {
        self.0.borrow_owner()
    }
}
