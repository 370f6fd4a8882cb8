//! The KV cache of the decoder-only families (OPT, LLaMA): per layer K and V
//! `[B, heads, capacity, hd]`, written in place at column `len`. Besides the static batch's
//! uses (fill left to right, reorder rows) it supports the step-level batch of
//! [`super::batch`]: rows appended right-aligned at the current column, columns shifted
//! (compaction, room for a longer joining prompt) and the capacity grown, and a chat's
//! cache cut back to a shared prefix.

use blip2_engine::{Result, Tensor, ops};

pub struct KvCache {
    pub(crate) k: Vec<Tensor>,
    pub(crate) v: Vec<Tensor>,
    /// Columns written (the next token's K/V goes to column `len`).
    pub len: usize,
    pub capacity: usize,
}

impl KvCache {
    /// Keeps batch row `src[i]` as row `i` of every layer (beam search reordering,
    /// dropping finished rows).
    pub fn select_rows(&mut self, src: &[usize]) -> Result<()> {
        for t in self.k.iter_mut().chain(self.v.iter_mut()) {
            *t = ops::gather_rows(t, src)?;
        }
        Ok(())
    }

    pub fn rows(&self) -> usize {
        self.k.first().map_or(0, |t| t.dim(0))
    }

    /// Forgets the columns from `len` on (they are overwritten by the next writes; the
    /// attention reads `len` columns only).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Moves the written columns: the first `drop_front` go (they must be padding in every
    /// row), `pad_front` empty ones come before the rest, in a cache of `capacity` columns.
    pub fn relayout(&mut self, drop_front: usize, pad_front: usize, capacity: usize) -> Result<()> {
        let keep = self.len.saturating_sub(drop_front);
        let len = pad_front + keep;
        if len > capacity {
            return Err(blip2_engine::Error::Limit {
                what: "KV cache".into(),
                needed: len as u64,
                limit: capacity as u64,
            });
        }
        for t in self.k.iter_mut().chain(self.v.iter_mut()) {
            let mut shape = t.shape().to_vec();
            shape[2] = capacity;
            let mut n = Tensor::zeros(&shape, t.dtype(), t.device())?;
            if keep > 0 {
                ops::write_at(&mut n, &ops::narrow(t, 2, drop_front, keep)?, 2, pad_front)?;
            }
            *t = n;
        }
        self.len = len;
        self.capacity = capacity;
        Ok(())
    }

    /// Appends the single row of `row` as a new last row, its `row.len` columns ending at
    /// this cache's column `len` (right-aligned; the columns before it hold zeros, which
    /// the caller's mask hides). Needs `row.len <= self.len`.
    pub fn append_row(&mut self, row: &KvCache) -> Result<()> {
        if row.rows() != 1 || row.len > self.len || row.k.len() != self.k.len() {
            return Err(blip2_engine::Error::Invalid(format!(
                "cannot append a cache row of {} columns at column {}",
                row.len, self.len
            )));
        }
        let at = self.len - row.len;
        let pairs = self
            .k
            .iter_mut()
            .zip(&row.k)
            .chain(self.v.iter_mut().zip(&row.v));
        for (t, r) in pairs {
            let mut shape = t.shape().to_vec();
            shape[0] = 1;
            let mut n = Tensor::zeros(&shape, t.dtype(), t.device())?;
            if row.len > 0 {
                ops::write_at(&mut n, &ops::narrow(r, 2, 0, row.len)?, 2, at)?;
            }
            *t = ops::concat(&[&*t, &n], 0)?;
        }
        Ok(())
    }
}
