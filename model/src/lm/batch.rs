//! Step-level batching for the decoder-only families: a [`RowBatch`] holds running
//! sequences in the rows of one KV cache. Sequences join between steps (the prompts that
//! join at the same step are prefilled together, left-padded, and their K/V written into
//! free rows of the cache), every step feeds one token per row, and rows leave at any step
//! (their rows become free, nothing is copied).
//!
//! Rows have different lengths, so the cache is laid out as a left-padded batch is in HF:
//! each row's columns end at the shared write column, the columns before its first token
//! are masked, and positions (OPT's learned table, LLaMA's rotary angles) come from the
//! row's own mask (cumsum − 1), so a row sees exactly what it sees alone. A joining prompt
//! longer than the write column shifts the batch right; a full cache first drops the
//! columns that are padding in every row (compaction), then grows.

use blip2_engine::{Device, Tensor, ops};

use super::LmInput;
use super::kv::KvCache;
use super::llama::Llama;
use super::opt::Opt;
use crate::error::{ModelError, Result};

/// Running sequences of a decoder-only language model, one cache row each.
pub trait RowBatch: Send {
    fn vocab(&self) -> usize;
    /// Positions the model can embed (a prompt and its new tokens must fit).
    fn max_positions(&self) -> usize;
    /// Rows running now.
    fn rows(&self) -> usize;
    /// Prefills the left-padded prompts of `input` together (one forward) and adds them
    /// as the last rows, in order; returns their first logits `[joined, vocab]`, left on
    /// the model's device. Each row's prompt + `max_new_tokens[i]` is checked against the
    /// model's positions.
    fn join(&mut self, input: LmInput, max_new_tokens: &[usize]) -> Result<Tensor>;
    /// Keeps row `src[i]` as row `i` (rows may repeat: beam search).
    fn select_rows(&mut self, src: &[usize]) -> Result<()>;
    /// Feeds one token per row; returns the next logits `[rows, vocab]`, left on the
    /// model's device (a GPU chooses greedy tokens there: [`ops::argmax_rows`]).
    fn step(&mut self, tokens: &[u32]) -> Result<Tensor>;
    /// A batch of one unpadded row (a chat): keeps the first `keep` cached tokens, runs the
    /// prompt tokens `embeds` `[1, n, D]` after them and returns the last one's logits. With
    /// no row yet, `keep` must be 0 and the prompt becomes the row.
    fn extend(&mut self, keep: usize, embeds: &Tensor, max_new_tokens: usize) -> Result<Vec<f32>>;
    /// Prompt tokens run through the model so far (joins and extensions), a cost counter.
    fn prefilled_tokens(&self) -> usize;
    /// The ids the logits processors (penalties, n-gram bans) count for a row with this
    /// prompt before its first new token: the prompt's own for a decoder-only model.
    fn processor_ids(&self, prompt_ids: Vec<u32>) -> Vec<u32> {
        prompt_ids
    }
}

/// Row indices of a [`RowBatch::select_rows`] are within its `rows`.
pub(crate) fn check_selection(src: &[usize], rows: usize) -> Result<()> {
    if src.iter().any(|&s| s >= rows) {
        return Err(ModelError::Invalid(format!(
            "row selection {src:?} out of {rows} rows"
        )));
    }
    Ok(())
}

/// A [`RowBatch::join`] has one embedding row and one limit per (non-empty) prompt.
pub(crate) fn check_join(
    embeds: &Tensor,
    batch: &crate::inputs::PaddedBatch,
    max_new_tokens: &[usize],
) -> Result<()> {
    let j = batch.rows.len();
    if j == 0 || max_new_tokens.len() != j || embeds.dim(0) != j || batch.len == 0 {
        return Err(ModelError::Invalid(format!(
            "{j} joining prompts with {} limits and embeddings {:?}",
            max_new_tokens.len(),
            embeds.shape()
        )));
    }
    Ok(())
}

/// `[rows, 1, columns]` additive mask of per-row flags (1 = seen, 0 = masked), or None
/// when nothing is masked.
pub(crate) fn additive_mask(flags: &[Vec<u8>], device: &Device) -> Result<Option<Tensor>> {
    if flags.iter().all(|m| m.iter().all(|&v| v == 1)) {
        return Ok(None);
    }
    let len = flags.first().map_or(0, Vec::len);
    let data: Vec<f32> = flags
        .iter()
        .flat_map(|m| m.iter().map(|&v| if v == 1 { 0.0 } else { f32::MIN }))
        .collect();
    Ok(Some(Tensor::from_f32(
        data,
        &[flags.len(), 1, len],
        device,
    )?))
}

/// Room in `cache` for `n` more columns of its rows' `mask` flags (1 = seen, 0 = masked):
/// the leading columns every row in `live` masks are dropped (compaction), and the cache
/// grows, by [`GROW`] beyond the need, only when that is not enough.
pub(crate) fn make_room(
    cache: &mut KvCache,
    mask: &mut [Vec<u8>],
    live: &[usize],
    n: usize,
) -> Result<()> {
    if cache.len + n <= cache.capacity {
        return Ok(());
    }
    let lead = live
        .iter()
        .map(|&r| mask[r].iter().take_while(|&&v| v == 0).count())
        .min()
        .unwrap_or(0);
    let capacity = cache.capacity.max(cache.len - lead + n + GROW);
    cache.relayout(lead, 0, capacity)?;
    for m in mask {
        m.drain(..lead);
    }
    Ok(())
}

/// What the generic batch needs of a decoder-only family.
pub(crate) trait CausalLm: Sync {
    fn hidden(&self) -> usize;
    fn vocab_size(&self) -> usize;
    fn max_positions(&self) -> usize;
    fn new_cache(
        &self,
        batch: usize,
        capacity: usize,
        device: &Device,
    ) -> blip2_engine::Result<KvCache>;
    fn forward(
        &self,
        embeds: &Tensor,
        positions: &[i64],
        mask: Option<&Tensor>,
        cache: &mut KvCache,
    ) -> blip2_engine::Result<Tensor>;
    fn logits(&self, h: &Tensor) -> blip2_engine::Result<Tensor>;
    fn embed(&self, ids: &[u32]) -> blip2_engine::Result<Tensor>;
}

macro_rules! causal_lm {
    ($t:ty, $hidden:ident) => {
        impl CausalLm for $t {
            fn hidden(&self) -> usize {
                self.$hidden
            }
            fn vocab_size(&self) -> usize {
                self.vocab
            }
            fn max_positions(&self) -> usize {
                self.max_positions
            }
            fn new_cache(
                &self,
                batch: usize,
                capacity: usize,
                device: &Device,
            ) -> blip2_engine::Result<KvCache> {
                <$t>::new_cache(self, batch, capacity, device)
            }
            fn forward(
                &self,
                embeds: &Tensor,
                positions: &[i64],
                mask: Option<&Tensor>,
                cache: &mut KvCache,
            ) -> blip2_engine::Result<Tensor> {
                <$t>::forward(self, embeds, positions, mask, cache)
            }
            fn logits(&self, h: &Tensor) -> blip2_engine::Result<Tensor> {
                <$t>::logits(self, h)
            }
            fn embed(&self, ids: &[u32]) -> blip2_engine::Result<Tensor> {
                <$t>::embed(self, ids)
            }
        }
    };
}
causal_lm!(Opt, hidden);
causal_lm!(Llama, hidden);

/// Free columns a grown cache gets beyond what it holds (amortises the copies).
pub(crate) const GROW: usize = 32;

/// [`RowBatch`] over any [`CausalLm`].
///
/// The cache's rows are slots: a running row holds one, a row that leaves frees its slot
/// without copying the cache, and joining rows are written into free slots (the cache
/// gains rows only when none is free). Free slots ride along in each step's forward with
/// a dummy token (their outputs are dropped); the cache is packed again when more than
/// half its slots are free.
pub(crate) struct SlotBatch<'a, M: CausalLm> {
    lm: &'a M,
    device: Device,
    /// None while no row runs.
    cache: Option<KvCache>,
    /// Per slot, one flag per cache column (1 = the row's token, 0 = padding). A free
    /// slot's flags only keep its dummy rows well defined.
    mask: Vec<Vec<u8>>,
    /// The slot of each running row, in row order.
    slots: Vec<usize>,
    prefilled: usize,
}

impl<'a, M: CausalLm> SlotBatch<'a, M> {
    pub(crate) fn new(lm: &'a M, device: Device) -> SlotBatch<'a, M> {
        SlotBatch {
            lm,
            device,
            cache: None,
            mask: Vec::new(),
            slots: Vec::new(),
            prefilled: 0,
        }
    }

    fn check_positions(&self, prompt: usize, max_new_tokens: usize) -> Result<()> {
        let max = self.lm.max_positions();
        if prompt.saturating_add(max_new_tokens) > max {
            return Err(ModelError::Invalid(format!(
                "prompt of {prompt} tokens + {max_new_tokens} new tokens exceeds the model's {max} positions"
            )));
        }
        Ok(())
    }

    /// The last position's logits of a forward over `embeds` `[1, n, D]` at positions
    /// `start..start + n` of a one-row `cache`.
    fn run_prompt(
        &mut self,
        embeds: &Tensor,
        start: usize,
        cache: &mut KvCache,
    ) -> Result<Vec<f32>> {
        let n = embeds.dim(1);
        if embeds.dim(0) != 1 || n == 0 {
            return Err(ModelError::Invalid(format!(
                "a chat extends one non-empty prompt, not {:?}",
                embeds.shape()
            )));
        }
        let positions: Vec<i64> = (start..start + n).map(|p| p as i64).collect();
        let h = self.lm.forward(embeds, &positions, None, cache)?;
        self.prefilled += n;
        let last = ops::narrow(&h, 1, n - 1, 1)?;
        Ok(self.lm.logits(&last)?.to_vec_f32()?)
    }

    fn is_free(&self, slot: usize) -> bool {
        !self.slots.contains(&slot)
    }

    /// Room for `n` more columns: drop the columns every running row pads, else grow.
    fn ensure_room(&mut self, n: usize) -> Result<()> {
        match self.cache.as_mut() {
            Some(cache) => make_room(cache, &mut self.mask, &self.slots, n),
            None => Ok(()),
        }
    }

    /// Copies the running rows into a cache of exactly their slots, in row order.
    fn pack(&mut self) -> Result<()> {
        let identity = self.slots.len() == self.mask.len()
            && self.slots.iter().enumerate().all(|(i, &s)| i == s);
        if identity {
            return Ok(());
        }
        if let Some(c) = self.cache.as_mut() {
            c.select_rows(&self.slots)?;
        }
        self.mask = self.slots.iter().map(|&s| self.mask[s].clone()).collect();
        self.slots = (0..self.mask.len()).collect();
        Ok(())
    }

    /// Puts the prefilled rows of `rows` (`mask` per row, all ending at `rows.len`) into
    /// free slots, right-aligned at the write column, as the last running rows.
    fn place(&mut self, rows: KvCache, mask: Vec<Vec<u8>>) -> Result<()> {
        let n = rows.len;
        let Some(cache) = self.cache.as_mut() else {
            // The first rows: their own cache, with room for the next tokens.
            let mut rows = rows;
            rows.relayout(0, 0, n + GROW)?;
            self.cache = Some(rows);
            self.slots = (0..mask.len()).collect();
            self.mask = mask;
            return Ok(());
        };
        if n > cache.len {
            // Shift the batch right so the new rows end at the write column too.
            let pad = n - cache.len;
            let capacity = cache.capacity.max(n + GROW);
            cache.relayout(0, pad, capacity)?;
            for m in &mut self.mask {
                m.splice(0..0, std::iter::repeat_n(0, pad));
            }
        }
        let w = cache.len;
        let mut free: Vec<usize> = (0..self.mask.len())
            .filter(|&s| !self.slots.contains(&s))
            .collect();
        let more = mask.len().saturating_sub(free.len());
        if more > 0 {
            cache.add_rows(more)?;
            free.extend(self.mask.len()..self.mask.len() + more);
            self.mask.resize(self.mask.len() + more, vec![0; w]);
        }
        free.truncate(mask.len());
        cache.write_rows(&free, &rows)?;
        for (m, slot) in mask.into_iter().zip(free) {
            self.mask[slot] = [vec![0; w - n], m].concat();
            self.slots.push(slot);
        }
        Ok(())
    }
}

impl<M: CausalLm> RowBatch for SlotBatch<'_, M> {
    fn vocab(&self) -> usize {
        self.lm.vocab_size()
    }

    fn max_positions(&self) -> usize {
        self.lm.max_positions()
    }

    fn rows(&self) -> usize {
        self.slots.len()
    }

    fn join(&mut self, input: LmInput, max_new_tokens: &[usize]) -> Result<Tensor> {
        let LmInput { embeds, batch } = input;
        let j = batch.rows.len();
        check_join(&embeds, &batch, max_new_tokens)?;
        for (m, &max) in batch.mask.iter().zip(max_new_tokens) {
            if m.last() != Some(&1) {
                return Err(ModelError::Invalid(
                    "joining prompts are left-padded: each ends at the last column".into(),
                ));
            }
            self.check_positions(m.iter().filter(|&&v| v == 1).count(), max)?;
        }
        // One left-padded prefill for all of them, as a static batch's.
        let n = batch.len;
        let mut rows = self.lm.new_cache(j, n, &self.device)?;
        let mask = batch.mask_tensor(&self.device)?;
        let h = self
            .lm
            .forward(&embeds, &batch.positions(), mask.as_ref(), &mut rows)?;
        self.prefilled += batch.mask.iter().flatten().filter(|&&v| v == 1).count();
        let last = ops::narrow(&h, 1, n - 1, 1)?;
        let logits = self.lm.logits(&last)?.reshape(&[j, self.lm.vocab_size()])?;
        self.place(rows, batch.mask)?;
        Ok(logits)
    }

    fn select_rows(&mut self, src: &[usize]) -> Result<()> {
        check_selection(src, self.slots.len())?;
        if src.is_empty() {
            self.cache = None;
            self.mask.clear();
            self.slots.clear();
            return Ok(());
        }
        if src.windows(2).all(|w| w[0] < w[1]) {
            // Rows leave: their slots are freed, nothing is copied.
            self.slots = src.iter().map(|&s| self.slots[s]).collect();
            for s in 0..self.mask.len() {
                if self.is_free(s) {
                    self.mask[s].fill(0);
                }
            }
            if self.slots.len() * 2 < self.mask.len() {
                self.pack()?;
            }
            return Ok(());
        }
        // Reordered or repeated rows (beam search): copied.
        self.slots = src.iter().map(|&s| self.slots[s]).collect();
        self.pack()
    }

    fn step(&mut self, tokens: &[u32]) -> Result<Tensor> {
        if tokens.len() != self.slots.len() || tokens.is_empty() {
            return Err(ModelError::Invalid(format!(
                "{} tokens for {} running rows",
                tokens.len(),
                self.slots.len()
            )));
        }
        self.ensure_room(1)?;
        // As HF: the token is appended and a 1 to the row's mask; its position is the
        // row's own count of tokens. A free slot gets a dummy token at position 0 (its mask
        // lets it see its own dummy columns only).
        let mut ids = vec![tokens[0]; self.mask.len()];
        for (&s, &t) in self.slots.iter().zip(tokens) {
            ids[s] = t;
        }
        for m in &mut self.mask {
            m.push(1);
        }
        let positions: Vec<i64> = (0..self.mask.len())
            .map(|s| {
                if self.is_free(s) {
                    0
                } else {
                    self.mask[s].iter().map(|&v| v as i64).sum::<i64>() - 1
                }
            })
            .collect();
        let mask = additive_mask(&self.mask, &self.device)?;
        let embeds = self
            .lm
            .embed(&ids)?
            .reshape(&[ids.len(), 1, self.lm.hidden()])?;
        let cache = self
            .cache
            .as_mut()
            .ok_or_else(|| ModelError::Invalid("no row is running".into()))?;
        let h = self.lm.forward(&embeds, &positions, mask.as_ref(), cache)?;
        let h = ops::gather_rows(&h, &self.slots)?;
        let rows = self.slots.len();
        Ok(self.lm.logits(&h)?.reshape(&[rows, self.lm.vocab_size()])?)
    }

    fn extend(&mut self, keep: usize, embeds: &Tensor, max_new_tokens: usize) -> Result<Vec<f32>> {
        let n = embeds.dim(1);
        self.check_positions(keep + n, max_new_tokens)?;
        self.pack()?;
        let Some(mut cache) = self.cache.take() else {
            if keep != 0 {
                return Err(ModelError::Invalid("no cached tokens to keep".into()));
            }
            let mut cache = self.lm.new_cache(1, n + max_new_tokens, &self.device)?;
            let logits = self.run_prompt(embeds, 0, &mut cache)?;
            self.cache = Some(cache);
            self.mask = vec![vec![1; n]];
            self.slots = vec![0];
            return Ok(logits);
        };
        if self.mask.len() != 1 || self.mask[0].contains(&0) || keep > cache.len {
            let e = ModelError::Invalid(format!(
                "cannot keep {keep} tokens of a {}-row cache of {} columns",
                self.mask.len(),
                cache.len
            ));
            self.cache = Some(cache);
            return Err(e);
        }
        cache.truncate(keep);
        let need = keep + n + max_new_tokens;
        if need > cache.capacity {
            cache.relayout(0, 0, need)?;
        }
        let logits = self.run_prompt(embeds, keep, &mut cache);
        self.mask = vec![vec![1; cache.len]];
        self.cache = Some(cache);
        logits
    }

    fn prefilled_tokens(&self) -> usize {
        self.prefilled
    }
}

/// A [`RowBatch`] as the decoding loops' [`crate::generate::DecodeModel`] (a chat's turn
/// decodes with [`crate::generate::decode`] over its reused cache).
pub struct RowBatchModel<'b, 'a>(pub &'b mut (dyn RowBatch + 'a));

impl crate::generate::DecodeModel for RowBatchModel<'_, '_> {
    fn vocab(&self) -> usize {
        self.0.vocab()
    }
    fn select_rows(&mut self, src: &[usize]) -> Result<()> {
        self.0.select_rows(src)
    }
    fn step(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        Ok(self.0.step(tokens)?.to_vec_f32()?)
    }
    fn step_logits(&mut self, tokens: &[u32]) -> Result<Option<Tensor>> {
        Ok(Some(self.0.step(tokens)?))
    }
}
