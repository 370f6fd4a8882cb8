//! T5 as a [`LanguageModel`]: right-padded prompts go through the encoder once; decoding
//! starts from `decoder_start_token_id`, and penalties count the decoder ids only, as HF's
//! do for encoder-decoder models.

use blip2_engine::Tensor;

use super::{T5, T5DecoderCache};
use crate::error::{ModelError, Result};
use crate::generate::DecodeModel;
use crate::lm::{LanguageModel, LmInput, Prefill};
use crate::tokenizer::PaddingSide;

impl LanguageModel for T5 {
    fn hidden_size(&self) -> usize {
        self.d_model
    }
    fn vocab_size(&self) -> usize {
        self.vocab
    }
    fn padding_side(&self) -> PaddingSide {
        PaddingSide::Right
    }
    fn embed(&self, ids: &[u32]) -> blip2_engine::Result<Tensor> {
        T5::embed(self, ids)
    }

    fn prefill(&self, input: LmInput, max_new_tokens: usize) -> Result<Prefill<'_>> {
        let LmInput { embeds, batch } = input;
        let b = batch.rows.len();
        let mask = batch.mask_tensor(embeds.device())?;
        let enc = self.encode(&embeds, mask.as_ref())?;
        // The decoder cache holds the start token and every new token.
        let cache =
            self.new_decoder_cache(&enc, mask.as_ref(), max_new_tokens.saturating_add(1))?;
        let mut decoder = T5Decoder { t5: self, cache };
        let first = vec![self.decoder_start; b];
        let logits = decoder.step(&first)?;
        Ok(Prefill {
            logits,
            seen: vec![vec![self.decoder_start]; b],
            decoder: Box::new(decoder),
        })
    }

    fn row_batch(&self, device: &blip2_engine::Device) -> Box<dyn crate::lm::batch::RowBatch + '_> {
        Box::new(super::batch::T5Batch::new(self, device.clone()))
    }

    fn prompt_logits(
        &self,
        input: LmInput,
        decoder_ids: Option<&[Vec<u32>]>,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let LmInput { embeds, batch } = input;
        let mask = batch.mask_tensor(embeds.device())?;
        let enc = self.encode(&embeds, mask.as_ref())?;
        let dec =
            decoder_ids.ok_or_else(|| ModelError::Invalid("T5 logits need decoder ids".into()))?;
        let l = dec.first().map_or(0, Vec::len);
        if dec.len() != batch.rows.len() || dec.iter().any(|r| r.len() != l) || l == 0 {
            return Err(ModelError::Invalid(
                "decoder ids must be one non-empty row of equal length per prompt".into(),
            ));
        }
        let mut cache = self.new_decoder_cache(&enc, mask.as_ref(), l)?;
        let flat: Vec<u32> = dec.concat();
        let emb = self.embed(&flat)?.reshape(&[dec.len(), l, self.d_model])?;
        Ok((self.decode(&emb, &mut cache, None)?, Some(enc)))
    }
}

/// T5 decoding state: self-attention cache and cross-attention K/V.
struct T5Decoder<'a> {
    t5: &'a T5,
    cache: T5DecoderCache,
}

impl DecodeModel for T5Decoder<'_> {
    fn vocab(&self) -> usize {
        self.t5.vocab
    }

    fn select_rows(&mut self, src: &[usize]) -> Result<()> {
        Ok(self.cache.select_rows(src)?)
    }

    fn step(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        Ok(self.forward_step(tokens)?.to_vec_f32()?)
    }

    fn step_logits(&mut self, tokens: &[u32]) -> Result<Option<Tensor>> {
        Ok(Some(self.forward_step(tokens)?))
    }
}

impl T5Decoder<'_> {
    /// One step's logits `[rows, vocab]`, left where they were computed.
    fn forward_step(&mut self, tokens: &[u32]) -> blip2_engine::Result<Tensor> {
        let embeds = self
            .t5
            .embed(tokens)?
            .reshape(&[tokens.len(), 1, self.t5.d_model])?;
        self.t5
            .decode(&embeds, &mut self.cache, None)?
            .reshape(&[tokens.len(), self.t5.vocab])
    }
}
