//! The KV cache of the decoder-only families (OPT, LLaMA): per layer K and V
//! `[B, heads, capacity, hd]`, written in place at column `len`. Besides the static batch's
//! uses (fill left to right, reorder rows) it supports the step-level batch of
//! [`super::batch`]: rows added (free slots) and rows written in place, right-aligned at the
//! current column, columns shifted (compaction, room for a longer joining prompt) and the
//! capacity grown, and a chat's cache cut back to a shared prefix.

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

    /// Adds `n` zeroed rows after the last one (free slots for joining rows).
    pub fn add_rows(&mut self, n: usize) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        for t in self.k.iter_mut().chain(self.v.iter_mut()) {
            let mut shape = t.shape().to_vec();
            shape[0] = n;
            let z = Tensor::zeros(&shape, t.dtype(), t.device())?;
            *t = ops::concat(&[&*t, &z], 0)?;
        }
        Ok(())
    }

    /// Overwrites rows `slots[j]` in place with the rows `j` of `src`, whose `src.len`
    /// columns end at this cache's column `len` (right-aligned; the columns before them
    /// are zeroed, which the caller's mask hides). Only those rows are copied (one write
    /// per run of consecutive slots). Needs `src.len <= self.len`.
    pub fn write_rows(&mut self, slots: &[usize], src: &KvCache) -> Result<()> {
        let n = self.rows();
        if slots.len() != src.rows()
            || slots.iter().any(|&s| s >= n)
            || src.len > self.len
            || src.k.len() != self.k.len()
        {
            return Err(blip2_engine::Error::Invalid(format!(
                "cannot write a {}-row cache of {} columns into rows {slots:?} of a {n}-row \
                 cache at column {}",
                src.rows(),
                src.len,
                self.len
            )));
        }
        // Runs of consecutive slots: (first source row, first slot, rows).
        let mut runs: Vec<(usize, usize, usize)> = Vec::new();
        for (j, &s) in slots.iter().enumerate() {
            match runs.last_mut() {
                Some((_, s0, len)) if *s0 + *len == s => *len += 1,
                _ => runs.push((j, s, 1)),
            }
        }
        let at = self.len - src.len;
        let pairs = self
            .k
            .iter_mut()
            .zip(&src.k)
            .chain(self.v.iter_mut().zip(&src.v));
        for (t, s) in pairs {
            let mut shape = t.shape().to_vec();
            shape[0] = slots.len();
            let mut rows = Tensor::zeros(&shape, t.dtype(), t.device())?;
            if src.len == s.dim(2) {
                ops::write_at(&mut rows, s, 2, at)?;
            } else if src.len > 0 {
                ops::write_at(&mut rows, &ops::narrow(s, 2, 0, src.len)?, 2, at)?;
            }
            for &(j, slot, len) in &runs {
                if len == slots.len() {
                    ops::write_at(t, &rows, 0, slot)?;
                } else {
                    ops::write_at(t, &ops::narrow(&rows, 0, j, len)?, 0, slot)?;
                }
            }
        }
        Ok(())
    }
}
