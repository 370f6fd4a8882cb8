//! Step-level batching for T5 (continuous batching of an encoder-decoder): each row has
//! its own encoder output (its prompt, encoded once when it joins) and its own decoder
//! tokens. Rows that join at the same step are encoded together (right-padded, as a static
//! batch's) and run their decoder start token together; their cross-attention K/V are
//! appended to the batch's, both padded on the right to the longer encoder length and the
//! padding masked. The decoder's self-attention columns are laid out as the decoder-only
//! batch lays them out: each row's tokens end at the shared write column, the columns
//! before a later joiner's first token are masked, and since T5's relative position bias
//! depends only on column differences, a row sees exactly what it sees alone.

use blip2_engine::{Device, Tensor};

use super::{T5, T5DecoderCache};
use crate::error::{ModelError, Result};
use crate::lm::LmInput;
use crate::lm::batch::{GROW, RowBatch, additive_mask, check_join, check_selection, make_room};

pub(crate) struct T5Batch<'a> {
    t5: &'a T5,
    device: Device,
    /// None while no row runs.
    cache: Option<T5DecoderCache>,
    /// Per row, one flag per decoder column (1 = the row's token, 0 = before it joined).
    mask: Vec<Vec<u8>>,
    /// Per row, one flag per encoder column (1 = a prompt token, 0 = padding).
    enc_mask: Vec<Vec<u8>>,
    prefilled: usize,
}

impl<'a> T5Batch<'a> {
    pub(crate) fn new(t5: &'a T5, device: Device) -> T5Batch<'a> {
        T5Batch {
            t5,
            device,
            cache: None,
            mask: Vec::new(),
            enc_mask: Vec::new(),
            prefilled: 0,
        }
    }

    /// Room for one more decoder column: drop the columns every row pads, else grow.
    fn ensure_room(&mut self) -> Result<()> {
        let Some(cache) = self.cache.as_mut() else {
            return Ok(());
        };
        let rows: Vec<usize> = (0..self.mask.len()).collect();
        make_room(&mut cache.kv, &mut self.mask, &rows, 1)
    }
}

impl RowBatch for T5Batch<'_> {
    fn vocab(&self) -> usize {
        self.t5.vocab
    }

    /// T5's relative position buckets embed any length.
    fn max_positions(&self) -> usize {
        usize::MAX
    }

    fn rows(&self) -> usize {
        self.mask.len()
    }

    /// The penalties count the decoder's ids only, as HF's do for encoder-decoder models.
    fn processor_ids(&self, _prompt_ids: Vec<u32>) -> Vec<u32> {
        vec![self.t5.decoder_start]
    }

    fn join(&mut self, input: LmInput, max_new_tokens: &[usize]) -> Result<Tensor> {
        let LmInput { embeds, batch } = input;
        let j = batch.rows.len();
        check_join(&embeds, &batch, max_new_tokens)?;
        // Encoded together, and the decoder start token run for them alone: the first
        // logits, and one self-attention column per new row.
        let mask = batch.mask_tensor(&self.device)?;
        let enc = self.t5.encode(&embeds, mask.as_ref())?;
        let room = if self.cache.is_none() { 1 + GROW } else { 1 };
        let mut new = self.t5.new_decoder_cache(&enc, mask.as_ref(), room)?;
        let start =
            self.t5
                .embed(&vec![self.t5.decoder_start; j])?
                .reshape(&[j, 1, self.t5.d_model])?;
        let logits = self
            .t5
            .decode(&start, &mut new, None)?
            .reshape(&[j, self.t5.vocab])?;
        self.prefilled += batch.mask.iter().flatten().filter(|&&v| v == 1).count();
        let Some(cache) = self.cache.as_mut() else {
            self.cache = Some(new);
            self.mask = vec![vec![1]; j];
            self.enc_mask = batch.mask;
            return Ok(logits);
        };
        // Every running row has at least its start token, so the new column fits before
        // the write column.
        let w = cache.kv.len;
        let l = cache.enc_len().max(batch.len);
        let mut enc_mask = std::mem::take(&mut self.enc_mask);
        enc_mask.extend(batch.mask);
        for m in &mut enc_mask {
            m.resize(l, 0);
        }
        cache.append_rows(&new, additive_mask(&enc_mask, &self.device)?)?;
        self.enc_mask = enc_mask;
        let mut row = vec![0; w];
        row[w - 1] = 1;
        self.mask.extend(std::iter::repeat_n(row, j));
        Ok(logits)
    }

    fn select_rows(&mut self, src: &[usize]) -> Result<()> {
        check_selection(src, self.mask.len())?;
        if src.is_empty() {
            self.cache = None;
            self.mask.clear();
            self.enc_mask.clear();
            return Ok(());
        }
        if let Some(c) = self.cache.as_mut() {
            c.select_rows(src)?;
        }
        self.mask = src.iter().map(|&s| self.mask[s].clone()).collect();
        self.enc_mask = src.iter().map(|&s| self.enc_mask[s].clone()).collect();
        Ok(())
    }

    fn step(&mut self, tokens: &[u32]) -> Result<Tensor> {
        if tokens.len() != self.mask.len() || tokens.is_empty() {
            return Err(ModelError::Invalid(format!(
                "{} tokens for {} running rows",
                tokens.len(),
                self.mask.len()
            )));
        }
        self.ensure_room()?;
        for m in &mut self.mask {
            m.push(1);
        }
        let mask = additive_mask(&self.mask, &self.device)?;
        let embeds = self
            .t5
            .embed(tokens)?
            .reshape(&[tokens.len(), 1, self.t5.d_model])?;
        let cache = self
            .cache
            .as_mut()
            .ok_or_else(|| ModelError::Invalid("no row is running".into()))?;
        let logits = self.t5.decode(&embeds, cache, mask.as_ref())?;
        Ok(logits.reshape(&[tokens.len(), self.t5.vocab])?)
    }

    fn extend(&mut self, _keep: usize, _embeds: &Tensor, _max_new: usize) -> Result<Vec<f32>> {
        Err(ModelError::Invalid(
            "a T5 chat turn encodes its whole history again (the encoder sees every token): \
             there is no cached prefix to extend"
                .into(),
        ))
    }

    fn prefilled_tokens(&self) -> usize {
        self.prefilled
    }
}
