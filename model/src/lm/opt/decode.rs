//! OPT as a [`LanguageModel`]: left-padded prompts, a KV cache sized for the prompt plus
//! the new tokens, and penalties that count every input id (image and padding ids
//! included), as HF's do for decoder-only models.

use blip2_engine::{Device, Tensor, ops};

use super::{KvCache, Opt};
use crate::error::{ModelError, Result};
use crate::generate::DecodeModel;
use crate::inputs::PaddedBatch;
use crate::lm::{LanguageModel, LmInput, Prefill};
use crate::tokenizer::PaddingSide;

impl LanguageModel for Opt {
    fn hidden_size(&self) -> usize {
        self.hidden
    }
    fn vocab_size(&self) -> usize {
        self.vocab
    }
    fn padding_side(&self) -> PaddingSide {
        PaddingSide::Left
    }
    fn embed(&self, ids: &[u32]) -> blip2_engine::Result<Tensor> {
        Opt::embed(self, ids)
    }

    fn prefill(&self, input: LmInput, max_new_tokens: usize) -> Result<Prefill<'_>> {
        let LmInput { embeds, batch } = input;
        let capacity = batch.len.saturating_add(max_new_tokens);
        if capacity > self.max_positions {
            return Err(ModelError::Invalid(format!(
                "prompt of {} tokens + {} new tokens exceeds the model's {} positions",
                batch.len, max_new_tokens, self.max_positions
            )));
        }
        let device = embeds.device().clone();
        let mut cache = self.new_cache(batch.rows.len(), capacity, &device)?;
        let mask = batch.mask_tensor(&device)?;
        let h = self.forward(&embeds, &batch.positions(), mask.as_ref(), &mut cache)?;
        let last = ops::narrow(&h, 1, batch.len - 1, 1)?;
        let logits = self.logits(&last)?.to_vec_f32()?;
        Ok(Prefill {
            logits,
            seen: batch.rows.clone(),
            decoder: Box::new(OptDecoder {
                opt: self,
                cache,
                batch,
                device,
            }),
        })
    }

    fn row_batch(&self, device: &Device) -> Box<dyn crate::lm::batch::RowBatch + '_> {
        Box::new(crate::lm::batch::SlotBatch::new(self, device.clone()))
    }

    fn prompt_logits(
        &self,
        input: LmInput,
        _decoder_ids: Option<&[Vec<u32>]>,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let LmInput { embeds, batch } = input;
        let device = embeds.device().clone();
        let mask = batch.mask_tensor(&device)?;
        let mut cache = self.new_cache(batch.rows.len(), batch.len, &device)?;
        let h = self.forward(&embeds, &batch.positions(), mask.as_ref(), &mut cache)?;
        Ok((self.logits(&h)?, None))
    }
}

/// OPT decoding state: the KV cache and the growing padded id rows (mask and positions).
struct OptDecoder<'a> {
    opt: &'a Opt,
    cache: KvCache,
    batch: PaddedBatch,
    device: Device,
}

impl DecodeModel for OptDecoder<'_> {
    fn vocab(&self) -> usize {
        self.opt.vocab
    }

    fn select_rows(&mut self, src: &[usize]) -> Result<()> {
        self.cache.select_rows(src)?;
        self.batch.select_rows(src);
        Ok(())
    }

    fn step(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        Ok(self.forward_step(tokens)?.to_vec_f32()?)
    }

    fn step_logits(&mut self, tokens: &[u32]) -> Result<Option<Tensor>> {
        Ok(Some(self.forward_step(tokens)?))
    }
}

impl OptDecoder<'_> {
    /// One step's logits `[rows, vocab]`, left where they were computed.
    fn forward_step(&mut self, tokens: &[u32]) -> Result<Tensor> {
        // HF appends the token and a 1 to the attention mask.
        self.batch.push(tokens);
        let embeds = self
            .opt
            .embed(tokens)?
            .reshape(&[tokens.len(), 1, self.opt.hidden])?;
        let mask = self.batch.mask_tensor(&self.device)?;
        let h = self.opt.forward(
            &embeds,
            &self.batch.last_positions(),
            mask.as_ref(),
            &mut self.cache,
        )?;
        Ok(self
            .opt
            .logits(&h)?
            .reshape(&[tokens.len(), self.opt.vocab])?)
    }
}
