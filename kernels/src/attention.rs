//! Multi-head scaled-dot-product attention on the CPU: per (batch, head, query block),
//! S = Q·Kᵀ with the packed GEMM, scale + bias + mask + causal cut + softmax per row, O = P·V.

use crate::elementwise::softmax_body;
use crate::gemm::{Shared, gemm_rows, resolve_threads, tile_rows};
use crate::isa::multiversion;
use crate::{Isa, isa};

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

/// Where row i of head h of batch b starts in one operand: `offset + b·batch + h·head + i·row`
/// (the row's d values are contiguous).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Strides {
    offset: usize,
    batch: usize,
    head: usize,
    row: usize,
}

impl Strides {
    /// Elements the operand must hold for `rows` rows per head.
    fn extent(&self, p: &AttnParams, rows: usize) -> usize {
        if p.batch == 0 || p.heads == 0 || rows == 0 {
            return 0;
        }
        self.offset
            + (p.batch - 1) * self.batch
            + (p.heads - 1) * self.head
            + (rows - 1) * self.row
            + p.head_dim
    }
}

/// How q, k, v and out are laid out in their slices. Only the constructors make one, so the
/// rows an attention call writes never overlap.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttnLayout {
    q: Strides,
    k: Strides,
    v: Strides,
    out: Strides,
}

impl AttnLayout {
    /// q and out `[b, h, lq, d]`, k and v `[b, h, lk_cap, d]`, each contiguous.
    pub fn split_heads(p: &AttnParams) -> AttnLayout {
        let d = p.head_dim;
        let at = |rows: usize| Strides {
            offset: 0,
            batch: p.heads * rows * d,
            head: rows * d,
            row: d,
        };
        AttnLayout {
            q: at(p.lq),
            k: at(p.lk_cap),
            v: at(p.lk_cap),
            out: at(p.lq),
        }
    }

    /// q, k and v read in place from one fused projection `[b, l, 3·h·d]` whose rows are
    /// [q of every head | k of every head | v of every head] (l = lq = lk_cap), and out
    /// `[b, l, h·d]` with the heads merged: no split or merge copies.
    pub fn fused_qkv(p: &AttnParams) -> AttnLayout {
        let (l, hd) = (p.lq, p.heads * p.head_dim);
        let part = |i: usize| Strides {
            offset: i * hd,
            batch: l * 3 * hd,
            head: p.head_dim,
            row: 3 * hd,
        };
        AttnLayout {
            q: part(0),
            k: part(1),
            v: part(2),
            out: Strides {
                offset: 0,
                batch: l * hd,
                head: p.head_dim,
                row: hd,
            },
        }
    }
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
    assert!(
        q.len() == p.batch * p.heads * p.lq * p.head_dim && out.len() == q.len(),
        "attention: q/out length"
    );
    assert!(
        k.len() == p.batch * p.heads * p.lk_cap * p.head_dim && v.len() == k.len(),
        "attention: k/v length"
    );
    let lay = AttnLayout::split_heads(p);
    attention_in(isa, threads, q, k, v, mask, bias, out, p, &lay)
}

/// [`attention_with`] over operands laid out as `lay` says (q, k and v may be one slice,
/// the fused projection of [`AttnLayout::fused_qkv`]). Preconditions (asserted): each slice
/// holds every row the layout addresses, `lk ≤ lk_cap`, mask and bias as in [`attention`].
#[allow(clippy::too_many_arguments)]
pub fn attention_in(
    isa: Isa,
    threads: usize,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    mask: Option<(&[f32], usize)>,
    bias: Option<&[f32]>,
    out: &mut [f32],
    p: &AttnParams,
    lay: &AttnLayout,
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
        q.len() >= lay.q.extent(p, lq) && out.len() >= lay.out.extent(p, lq),
        "attention: q/out length"
    );
    assert!(
        k.len() >= lay.k.extent(p, lk_cap) && v.len() >= lay.v.extent(p, lk_cap),
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
    if bh == 0 || lq == 0 || d == 0 {
        return;
    }
    if lk == 0 {
        // No keys: an empty weighted sum.
        for bhi in 0..bh {
            for i in 0..lq {
                let o = lay.out.offset
                    + bhi / heads * lay.out.batch
                    + bhi % heads * lay.out.head
                    + i * lay.out.row;
                out[o..o + d].fill(0.0);
            }
        }
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
        let at = |st: &Strides, i: usize| st.offset + bi * st.batch + hi * st.head + i * st.row;
        let (qo, ko, vo, oo) = (
            at(&lay.q, i0),
            at(&lay.k, 0),
            at(&lay.v, 0),
            at(&lay.out, i0),
        );
        // SAFETY: offsets are inside the asserted extents; each task writes its own rows of
        // `out` (distinct (bhi, query block), which the layouts map to disjoint ranges), and
        // `s` is task-local.
        unsafe {
            gemm_rows(
                isa,
                rows,
                lk,
                d,
                q.as_ptr().add(qo),
                lay.q.row,
                k.as_ptr().add(ko),
                lay.k.row,
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
                v.as_ptr().add(vo),
                lay.v.row,
                false,
                outp.get().add(oo),
                lay.out.row,
            );
        }
    };
    let total = bh * nqb;
    // Below ~1 M multiply-adds (a decode step over a short cache) a rayon round trip costs
    // more than the work, unless the call reads a large KV cache: a batched decode step
    // reads the whole cache from memory for few multiply-adds (batch 8 at OPT-2.7B, 41
    // positions: 1.7 M values, 6.7 MB a layer), and two threads stream it faster than one.
    let small = bh * lq * lk * d < (1 << 20) && 2 * bh * lk * d < (1 << 20);
    if threads <= 1 || total <= 1 || small {
        (0..total).for_each(task);
    } else {
        // A (batched) decode step goes to the team, as its matmuls.
        crate::team::run(total, lq <= crate::team::DECODE_ROWS, &task);
    }
}
