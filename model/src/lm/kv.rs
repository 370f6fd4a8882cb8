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

#[cfg(test)]
mod tests {
    use blip2_engine::{Device, Tensor};

    use super::KvCache;

    /// One layer, `rows` rows, one head of width 1: element (r, c) = `f(r, c)`.
    fn cache(rows: usize, cols: usize, len: usize, f: impl Fn(usize, usize) -> f32) -> KvCache {
        let data: Vec<f32> = (0..rows * cols).map(|i| f(i / cols, i % cols)).collect();
        let t = Tensor::from_f32(data, &[rows, 1, cols, 1], &Device::cpu()).unwrap();
        KvCache {
            k: vec![t.clone()],
            v: vec![t],
            len,
            capacity: cols,
        }
    }

    fn rows(c: &KvCache) -> Vec<Vec<f32>> {
        let cols = c.capacity;
        c.k[0]
            .to_vec_f32()
            .unwrap()
            .chunks(cols)
            .map(<[f32]>::to_vec)
            .collect()
    }

    #[test]
    fn write_rows_fills_free_slots_right_aligned_and_leaves_the_others() {
        // Four rows of 5 written columns (capacity 6), every value 9.
        let mut c = cache(4, 6, 5, |_, _| 9.0);
        // Two prompts of 3 columns: (j, c) = 10·(j + 1) + c.
        let src = cache(2, 3, 3, |j, c| (10 * (j + 1) + c) as f32);
        // Slots 1 and 3: two runs of one.
        c.write_rows(&[3, 1], &src).unwrap();
        let r = rows(&c);
        assert_eq!(r[0], vec![9.0; 6]);
        assert_eq!(r[2], vec![9.0; 6]);
        // Right-aligned at column len = 5: columns 2..5, zeros before and after.
        assert_eq!(r[3], vec![0.0, 0.0, 10.0, 11.0, 12.0, 0.0]);
        assert_eq!(r[1], vec![0.0, 0.0, 20.0, 21.0, 22.0, 0.0]);
        assert_eq!(rows(&c), {
            let v = c.v[0].to_vec_f32().unwrap();
            v.chunks(6).map(<[f32]>::to_vec).collect::<Vec<_>>()
        });
        // Consecutive slots (one run), and a source longer than the written columns refused.
        c.write_rows(&[0, 1], &src).unwrap();
        assert_eq!(rows(&c)[0], vec![0.0, 0.0, 10.0, 11.0, 12.0, 0.0]);
        assert_eq!(rows(&c)[1], vec![0.0, 0.0, 20.0, 21.0, 22.0, 0.0]);
        assert!(c.write_rows(&[4, 0], &src).is_err(), "slot out of range");
        assert!(c.write_rows(&[0], &src).is_err(), "row count");
        let long = cache(1, 6, 6, |_, _| 1.0);
        assert!(c.write_rows(&[2], &long).is_err(), "longer than len");
        // New rows come zeroed.
        c.add_rows(2).unwrap();
        assert_eq!(c.rows(), 6);
        assert_eq!(rows(&c)[5], vec![0.0; 6]);
        assert_eq!(rows(&c)[2], vec![9.0; 6]);
    }
}
