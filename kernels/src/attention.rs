//! Multi-head scaled-dot-product attention on the CPU: per (batch, head, query block),
//! S = Q·Kᵀ with the packed GEMM, scale + bias + mask + causal cut + softmax per row, O = P·V.

use crate::elementwise::softmax_body;
use crate::gemm::{Shared, gemm_rows, resolve_threads, tile_rows};
use crate::isa::multiversion;
use crate::{Isa, isa};
use rayon::prelude::*;

/// Shapes and options of one [`attention`] call.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttnParams {
    /// Batch size b.
    pub batch: usize,
    /// Heads h.
    pub heads: usize,
    /// Query length.
    pub lq: usize,
    /// Key/value length used (the first `lk` rows of each head's K/V).
    pub lk: usize,
    /// Rows allocated per head in K/V (a KV cache's capacity), ≥ `lk`.
    pub lk_cap: usize,
    /// Head dimension d.
    pub head_dim: usize,
    /// Multiplies q·kᵀ (1/√d for most models, 1.0 for T5).
    pub scale: f32,
    /// `Some(offset)`: query i sees keys j ≤ i + offset (offset = lk − lq with a KV cache).
    pub causal_offset: Option<usize>,
}

/// Scale, add bias and mask, softmax: one score row, visible part only.
#[inline(always)]
fn probs_body(row: &mut [f32], scale: f32, bias: &[f32], mask: &[f32]) {
    for v in row.iter_mut() {
        *v *= scale;
    }
    if !bias.is_empty() {
        for (v, b) in row.iter_mut().zip(bias) {
            *v += b;
        }
    }
    if !mask.is_empty() {
        for (v, m) in row.iter_mut().zip(mask) {
            *v += m;
        }
    }
    softmax_body(row);
}
multiversion! { fn probs_isa(row: &mut [f32], scale: f32, bias: &[f32], mask: &[f32]) = probs_body; }

/// Multi-head attention: q `[b, h, lq, d]`; k, v `[b, h, lk_cap, d]` of which the first `lk`
/// rows per head are used; out `[b, h, lq, d]`.
///
/// scores[i, j] = q_i·k_j·scale + bias[h, i, j] + mask[b, i or 0, j]; causal cut as in
/// [`AttnParams::causal_offset`]; softmax in f32 (a row whose visible scores are all −∞
/// becomes uniform over the visible keys; `f32::MIN` masks give the same); out = P·V.
///
/// `mask` is (data [b, mask_rows, lk], mask_rows) with mask_rows ∈ {1, lq} (one row broadcast
/// over queries, or one per query); `bias` is [h, lq, lk] shared by the batch (T5's relative
/// position bias). Preconditions (asserted): the lengths above, `lk ≤ lk_cap`. Parallel over
/// batch·heads and query blocks.
pub fn attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    mask: Option<(&[f32], usize)>,
    bias: Option<&[f32]>,
    out: &mut [f32],
    p: &AttnParams,
) {
    attention_with(isa(), 0, q, k, v, mask, bias, out, p)
}

/// [`attention`] on a chosen instruction set and thread count (1 = calling thread, 0 = the
/// whole rayon pool).
#[allow(clippy::too_many_arguments)]
pub fn attention_with(
    isa: Isa,
    threads: usize,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    mask: Option<(&[f32], usize)>,
    bias: Option<&[f32]>,
    out: &mut [f32],
    p: &AttnParams,
) {
    let isa = isa.resolve();
    let &AttnParams {
        batch,
        heads,
        lq,
        lk,
        lk_cap,
        head_dim: d,
        scale,
        causal_offset,
    } = p;
    let bh = batch * heads;
    assert!(lk <= lk_cap, "attention: lk > lk_cap");
    assert!(
        q.len() == bh * lq * d && out.len() == q.len(),
        "attention: q/out length"
    );
    assert!(
        k.len() == bh * lk_cap * d && v.len() == k.len(),
        "attention: k/v length"
    );
    if let Some((m, rows)) = mask {
        assert!(
            (rows == 1 || rows == lq) && m.len() == batch * rows * lk,
            "attention: mask shape"
        );
    }
    if let Some(b) = bias {
        assert_eq!(b.len(), heads * lq * lk, "attention: bias shape");
    }
    if out.is_empty() {
        return;
    }
    if lk == 0 {
        // No keys: an empty weighted sum.
        out.fill(0.0);
        return;
    }
    let threads = resolve_threads(threads);
    // Query blocks bound the score scratch (≤ 128 rows × lk) and give idle threads work when
    // b·h is small; block sizes are whole microkernel tiles.
    let nqb = lq.div_ceil(128).max((2 * threads).div_ceil(bh)).min(lq);
    let mr = tile_rows(isa);
    let qb = lq.div_ceil(nqb).div_ceil(mr) * mr;
    let nqb = lq.div_ceil(qb);
    let outp = Shared(out.as_mut_ptr());
    let task = |t: usize| {
        let (bhi, qi) = (t / nqb, t % nqb);
        let (bi, hi) = (bhi / heads, bhi % heads);
        let i0 = qi * qb;
        let rows = qb.min(lq - i0);
        let mut s = vec![0.0f32; rows * lk];
        let qo = (bhi * lq + i0) * d;
        let ko = bhi * lk_cap * d;
        // SAFETY: offsets are inside the asserted lengths; each task writes its own rows of
        // `out` (distinct (bhi, query block)), and `s` is task-local.
        unsafe {
            gemm_rows(
                isa,
                rows,
                lk,
                d,
                q.as_ptr().add(qo),
                d,
                k.as_ptr().add(ko),
                d,
                true,
                s.as_mut_ptr(),
                lk,
            );
        }
        for (r, row) in s.chunks_exact_mut(lk).enumerate() {
            let i = i0 + r;
            let vis = causal_offset.map_or(lk, |off| (i + off + 1).min(lk));
            let b = bias.map_or(&[][..], |b| &b[(hi * lq + i) * lk..][..vis]);
            let m = mask.map_or(&[][..], |(m, mrows)| {
                let mi = if mrows == lq { i } else { 0 };
                &m[(bi * mrows + mi) * lk..][..vis]
            });
            probs_isa(isa, &mut row[..vis], scale, b, m);
            row[vis..].fill(0.0);
        }
        // SAFETY: as above.
        unsafe {
            gemm_rows(
                isa,
                rows,
                d,
                lk,
                s.as_ptr(),
                lk,
                v.as_ptr().add(ko),
                d,
                false,
                outp.get().add(qo),
                d,
            );
        }
    };
    let total = bh * nqb;
    // Below ~1 M multiply-adds (a decode step over a short cache) a rayon round trip costs
    // more than the work.
    let small = bh * lq * lk * d < (1 << 20);
    if threads <= 1 || total <= 1 || small {
        (0..total).for_each(task);
    } else {
        (0..total).into_par_iter().for_each(task);
    }
}
