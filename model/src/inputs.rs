//! Language-model inputs as `Blip2Processor` and `generate` build them: padded id rows,
//! attention masks, position ids, and the image-token scatter.

use blip2_engine::{Device, Tensor, ops};

use crate::tokenizer::PaddingSide;
use crate::{ModelError, Result};

/// Padded id rows and their attention mask (1 = real token), laid out as `Blip2Processor`
/// lays them out: the text is padded first and the `<image>` tokens are prepended
/// afterwards, so with left padding the padding sits between the image tokens and the text.
/// `len` is the padded row length.
pub struct PaddedBatch {
    pub rows: Vec<Vec<u32>>,
    pub mask: Vec<Vec<u8>>,
    pub len: usize,
}

impl PaddedBatch {
    pub fn new(ids: &[Vec<u32>], pad: u32, image_id: u32, side: PaddingSide) -> PaddedBatch {
        let len = ids.iter().map(Vec::len).max().unwrap_or(0);
        let mut rows = Vec::with_capacity(ids.len());
        let mut mask = Vec::with_capacity(ids.len());
        for r in ids {
            let fill = len - r.len();
            let split = match side {
                PaddingSide::Left => r.iter().take_while(|&&t| t == image_id).count(),
                PaddingSide::Right => r.len(),
            };
            rows.push([&r[..split], &vec![pad; fill], &r[split..]].concat());
            mask.push(
                [
                    vec![1u8; split],
                    vec![0u8; fill],
                    vec![1u8; r.len() - split],
                ]
                .concat(),
            );
        }
        PaddedBatch { rows, mask, len }
    }

    /// Keeps row `src[i]` as row `i` (beam reordering, dropping finished rows).
    pub fn select_rows(&mut self, src: &[usize]) {
        self.rows = src.iter().map(|&s| self.rows[s].clone()).collect();
        self.mask = src.iter().map(|&s| self.mask[s].clone()).collect();
    }

    pub fn push(&mut self, next: &[u32]) {
        for (r, &t) in next.iter().enumerate() {
            self.rows[r].push(t);
            self.mask[r].push(1);
        }
        self.len += 1;
    }

    /// HF's position ids: cumsum(mask)·mask − 1 (padding gets −1).
    pub fn positions(&self) -> Vec<i64> {
        self.mask
            .iter()
            .flat_map(|m| {
                let mut c = 0i64;
                m.iter()
                    .map(move |&v| {
                        c += v as i64;
                        if v == 1 { c - 1 } else { -1 }
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Position ids of the last column only (one decode step).
    pub fn last_positions(&self) -> Vec<i64> {
        self.mask
            .iter()
            .map(|m| m.iter().map(|&v| v as i64).sum::<i64>() - 1)
            .collect()
    }

    /// Additive `[B, 1, len]` mask, or None when nothing is padded.
    pub fn mask_tensor(&self, device: &Device) -> Result<Option<Tensor>> {
        if self.mask.iter().all(|m| m.iter().all(|&v| v == 1)) {
            return Ok(None);
        }
        let data: Vec<f32> = self
            .mask
            .iter()
            .flat_map(|m| m.iter().map(|&v| if v == 1 { 0.0 } else { f32::MIN }))
            .collect();
        Ok(Some(Tensor::from_f32(
            data,
            &[self.mask.len(), 1, self.len],
            device,
        )?))
    }
}

/// Input embeddings `[B, L, D]`: token embeddings of each row, with the row's `<image>`
/// positions replaced in order by that row's projected query outputs (HF's masked_scatter).
pub(crate) fn image_scatter(
    rows: &[Vec<u32>],
    image_id: u32,
    projected: &Tensor,
    embed: impl Fn(&[u32]) -> blip2_engine::Result<Tensor>,
) -> Result<Tensor> {
    let q = projected.dim(1);
    let mut per_row = Vec::with_capacity(rows.len());
    for (b, ids) in rows.iter().enumerate() {
        let img = ops::narrow(projected, 0, b, 1)?.reshape(&[q, projected.dim(2)])?;
        let mut parts = Vec::new();
        let (mut i, mut used) = (0, 0);
        while i < ids.len() {
            let is_img = ids[i] == image_id;
            let mut j = i;
            while j < ids.len() && (ids[j] == image_id) == is_img {
                j += 1;
            }
            if is_img {
                if used + (j - i) > q {
                    return Err(ModelError::Invalid(format!(
                        "prompt row {b} has more than {q} <image> tokens"
                    )));
                }
                parts.push(ops::narrow(&img, 0, used, j - i)?);
                used += j - i;
            } else {
                parts.push(embed(&ids[i..j])?);
            }
            i = j;
        }
        if used != q {
            return Err(ModelError::Invalid(format!(
                "prompt row {b} has {used} <image> tokens, the model has {q} queries"
            )));
        }
        let refs: Vec<&Tensor> = parts.iter().collect();
        let row = ops::concat(&refs, 0)?;
        per_row.push(row.reshape(&[1, ids.len(), row.dim(1)])?);
    }
    let refs: Vec<&Tensor> = per_row.iter().collect();
    Ok(ops::concat(&refs, 0)?)
}
