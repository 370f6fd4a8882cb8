//! Test helpers shared by the generation test modules.

use super::decode_model::DecodeModel;
use super::settings::{GenerationConfig, GenerationDefaults, ResolvedGeneration};
use crate::Result;

/// `cfg` resolved against a checkpoint whose eos ids are `eos` (pad 0).
pub fn resolved(cfg: GenerationConfig, eos: &[u32]) -> ResolvedGeneration {
    cfg.resolve(&GenerationDefaults {
        eos_token_ids: eos.to_vec(),
        pad_token_id: 0,
    })
    .expect("valid test settings")
}

/// A `v`×`v` table of logits with a different, tie-rich spread after every token.
pub fn spread_table(v: usize) -> Vec<Vec<f32>> {
    (0..v)
        .map(|p| {
            (0..v)
                .map(|i| ((i * 7 + p * 3) % 11) as f32 * 0.3)
                .collect()
        })
        .collect()
}

/// A model whose next logits are a fixed function of (previous token, step): row
/// independent, so batch/beam bookkeeping can be checked without weights.
pub struct TableModel {
    pub vocab: usize,
    /// `table[prev]` = logits after token `prev`.
    pub table: Vec<Vec<f32>>,
    pub rows: usize,
    pub selects: Vec<Vec<usize>>,
}

impl DecodeModel for TableModel {
    fn vocab(&self) -> usize {
        self.vocab
    }
    fn select_rows(&mut self, src: &[usize]) -> Result<()> {
        assert!(
            src.iter().all(|&s| s < self.rows),
            "select {src:?} of {} rows",
            self.rows
        );
        self.rows = src.len();
        self.selects.push(src.to_vec());
        Ok(())
    }
    fn step(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        assert_eq!(tokens.len(), self.rows);
        Ok(tokens
            .iter()
            .flat_map(|&t| self.table[t as usize].clone())
            .collect())
    }
}

/// A [`TableModel`] whose `step_logits` leaves its logits as a tensor on `device`, as a
/// model on that device does.
pub struct DeviceTable {
    pub table: TableModel,
    pub device: blip2_engine::Device,
}

impl DecodeModel for DeviceTable {
    fn vocab(&self) -> usize {
        self.table.vocab
    }
    fn select_rows(&mut self, src: &[usize]) -> Result<()> {
        self.table.select_rows(src)
    }
    fn step(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        self.table.step(tokens)
    }
    fn step_logits(&mut self, tokens: &[u32]) -> Result<Option<blip2_engine::Tensor>> {
        let v = self.table.step(tokens)?;
        let shape = [tokens.len(), self.table.vocab];
        Ok(Some(blip2_engine::Tensor::from_f32(
            v,
            &shape,
            &self.device,
        )?))
    }
}
