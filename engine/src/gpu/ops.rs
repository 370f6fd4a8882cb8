//! GPU implementations of the ops validated in `crate::ops`, under the same names and in the
//! same order as the CPU backend (`crate::cpu`): kernel choice by shape and device features,
//! sub-range bindings for tensors larger than one storage binding, and the typed constants
//! and parameters of every WGSL kernel (declared in `blip2_shaders`). The kernel-recording
//! helpers follow the ops.
//!
//! f16 outputs are written a word (two elements) per invocation. Where a row of an f16
//! output would start in the middle of a word (odd row length and more than one row), two
//! workgroups would share that word, so those ops compute into an f32 scratch tensor and
//! cast it instead (`with_out_dtype`).

use std::sync::Arc;

use blip2_shaders::{
    Activation, ArgmaxConsts, ArgmaxParams, AttentionConsts, AttentionParams, AttnDecodeConsts,
    AttnDecodeParams, CoopMatmulConsts, CoopMatmulParams, CopyConsts, CopyMode, CopyParams,
    ElementwiseConsts, ElementwiseOp, ElementwiseParams, EmbeddingConsts, EmbeddingParams,
    FlashAttentionConsts, GemvConsts, GemvEpilogue, GemvFusion, GemvNorm, GemvParams, MatmulConsts,
    MatmulParams, MatmulTile, NormConsts, NormParams, QEmbeddingConsts, QEmbeddingParams,
    QGemvConsts, QMatmulConsts, QMatmulParams, RowWorkgroup, SoftmaxConsts, SoftmaxParams,
    TopkConsts, TopkParams,
};

use super::{Bind, GpuContext, GpuStorage, Recorder, data_bytes};
use crate::desc::{
    AttnDims, AttnOpts, Binary, LinearFusion, MatmulDims, NormIn, Unary, split_at_axis,
};
use crate::ops::Candidates;
use crate::tensor::Storage;
use crate::{DType, Device, Error, QFormat, Result, Tensor};

type Ctx = Arc<GpuContext>;

fn tensor(g: &Ctx, shape: Vec<usize>, dtype: DType, s: GpuStorage) -> Tensor {
    Tensor::from_parts(shape, dtype, Device::Gpu(g.clone()), Storage::Gpu(s))
}

fn is_f16(d: DType) -> bool {
    d == DType::F16
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// `groups` workgroups as an (x, y) grid within the per-dimension limit; kernels rebuild
/// the linear id as `x + y * groups_x`.
fn grid(g: &GpuContext, groups: usize) -> Result<[u32; 3]> {
    let maxd = g.limits.max_compute_workgroups_per_dimension as usize;
    let x = groups.clamp(1, maxd);
    let y = groups.div_ceil(x);
    if y > maxd {
        return Err(Error::Limit {
            what: "workgroups of one dispatch".into(),
            needed: groups as u64,
            limit: (maxd * maxd) as u64,
        });
    }
    Ok([x as u32, y as u32, 1])
}

/// Invocations of a one-workgroup-per-row reduction: short rows (attention scores over a
/// few hundred keys) waste fewer idle invocations and barrier steps with 64.
fn row_workgroup(n: usize) -> RowWorkgroup {
    if n <= 1024 {
        RowWorkgroup::Wg64
    } else {
        RowWorkgroup::Wg256
    }
}

/// Fails when one operand would need a storage binding larger than the device allows.
fn check_binding(g: &GpuContext, what: &str, bytes: u64) -> Result<()> {
    if bytes > g.max_binding {
        return Err(Error::Limit {
            what: format!(
                "{what} ({bytes} bytes) in one storage binding (max_storage_buffer_binding_size)"
            ),
            needed: bytes,
            limit: g.max_binding,
        });
    }
    Ok(())
}

/// Row chunk for binding a `[rows, row_bytes]` matrix larger than one binding: a multiple
/// of `multiple` rows whose byte offset keeps the storage offset alignment.
fn chunk_rows(
    g: &GpuContext,
    what: &str,
    rows: usize,
    row_bytes: u64,
    total: u64,
    multiple: u64,
) -> Result<usize> {
    if total <= g.max_binding {
        return Ok(rows.max(1));
    }
    let align = g.storage_align;
    let step = align / gcd(row_bytes, align);
    let step = step / gcd(step, multiple) * multiple;
    let fit = (g.max_binding / row_bytes) / step * step;
    if fit == 0 {
        return Err(Error::Limit {
            what: format!("{what}: {step} rows of {row_bytes} bytes in one storage binding"),
            needed: step * row_bytes,
            limit: g.max_binding,
        });
    }
    Ok(fit as usize)
}

/// Row chunk for binding a quantized `[rows, k]` weight larger than one binding: quants
/// (`q_row` bytes a row) and scales (`s_row` bytes a row) are bound as the same row range, so
/// the chunk start must keep both byte offsets aligned; a multiple of 4 rows as for floats.
fn quant_chunk_rows(g: &GpuContext, rows: usize, q_row: u64, s_row: u64) -> Result<usize> {
    let (q_total, s_total) = (rows as u64 * q_row, rows as u64 * s_row);
    if q_total <= g.max_binding && s_total <= g.max_binding {
        return Ok(rows.max(1));
    }
    let align = g.storage_align;
    let lcm = |a: u64, b: u64| a / gcd(a, b) * b;
    let step = lcm(lcm(align / gcd(q_row, align), align / gcd(s_row, align)), 4);
    let fit = (g.max_binding / q_row.max(s_row)) / step * step;
    if fit == 0 {
        return Err(Error::Limit {
            what: format!(
                "quantized linear weight: {step} rows of {q_row} quant bytes in one storage binding"
            ),
            needed: step * q_row,
            limit: g.max_binding,
        });
    }
    Ok(fit as usize)
}

/// Runs `f` with output dtype `dtype` when `direct` (f16 rows start on words), else with an
/// f32 output that is then cast to f16.
fn with_out_dtype(
    g: &Ctx,
    dtype: DType,
    direct: bool,
    n: usize,
    f: impl FnOnce(DType) -> Result<GpuStorage>,
) -> Result<GpuStorage> {
    if dtype == DType::F32 || direct {
        return f(dtype);
    }
    let tmp = f(DType::F32)?;
    elementwise(
        g,
        &tmp,
        DType::F32,
        n,
        None,
        ElementwiseOp::Copy,
        1.0,
        DType::F16,
    )
}

// ------------------------------------------------------------------------------------ ops

pub(crate) fn linear(
    g: &Ctx,
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    out_shape: Vec<usize>,
) -> Result<Tensor> {
    let (n, k) = (w.dim(0), w.dim(1));
    let m = out_shape.iter().product::<usize>() / n.max(1);
    let dt = x.dtype();
    if m == 0 || n == 0 {
        return Ok(tensor(g, out_shape, dt, g.zeros(0, dt)?));
    }
    let direct = n.is_multiple_of(2) || m == 1;
    let out = with_out_dtype(g, dt, direct, m * n, |odt| match w.dtype().quant_format() {
        Some(format) => qlinear_into(g, x, w, format, b, m, k, n, odt, None),
        None => linear_into(g, x, w, b, m, k, n, odt, None),
    })?;
    Ok(tensor(g, out_shape, dt, out))
}

pub(crate) fn matmul(
    g: &Ctx,
    a: &Tensor,
    b: &Tensor,
    d: &MatmulDims,
    out_shape: Vec<usize>,
) -> Result<Tensor> {
    let dt = a.dtype();
    let total = d.batch * d.m * d.n;
    if total == 0 {
        return Ok(tensor(g, out_shape, dt, g.zeros(0, dt)?));
    }
    check_binding(g, "matmul a", data_bytes(d.batch * d.m * d.k, dt))?;
    check_binding(g, "matmul b", data_bytes(b.elem_count(), b.dtype()))?;
    check_binding(g, "matmul output", data_bytes(total, dt))?;
    if d.batch > g.limits.max_compute_workgroups_per_dimension as usize {
        return Err(Error::Limit {
            what: "matmul batch (one workgroup layer per batch)".into(),
            needed: d.batch as u64,
            limit: g.limits.max_compute_workgroups_per_dimension as u64,
        });
    }
    let direct = d.n.is_multiple_of(2) || d.batch * d.m == 1;
    let out = with_out_dtype(g, dt, direct, total, |odt| {
        let out = g.alloc(data_bytes(total, odt), true)?;
        let mm = Mm {
            batch: d.batch,
            m: d.m,
            n: d.n,
            k: d.k,
            b_trans: d.b_trans,
            lda: d.k,
            ldb: if d.b_trans { d.k } else { d.n },
            ldc: d.n,
            n_off: 0,
            a_bs: d.m * d.k,
            b_bs: if d.b_shared { 0 } else { d.k * d.n },
            c_bs: d.m * d.n,
        };
        let mut rec = g.recorder()?;
        let (ab, bb) = (Bind::whole(a.gpu_storage()), Bind::whole(b.gpu_storage()));
        record_matmul(g, &mut rec, ab, dt, bb, b.dtype(), None, &out, odt, &mm)?;
        Ok(out)
    })?;
    Ok(tensor(g, out_shape, dt, out))
}

pub(crate) fn layer_norm(g: &Ctx, x: &Tensor, w: &Tensor, b: &Tensor, eps: f32) -> Result<Tensor> {
    norm(g, x, w, Some(b), eps, false)
}

pub(crate) fn rms_norm(g: &Ctx, x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
    norm(g, x, w, None, eps, true)
}

pub(crate) fn softmax(
    g: &Ctx,
    x: &Tensor,
    mask: Option<&Tensor>,
    strides: Option<&[usize]>,
) -> Result<Tensor> {
    let dt = x.dtype();
    let shape = x.shape();
    let n_all = x.elem_count();
    let n = *shape.last().unwrap_or(&1);
    if n_all == 0 {
        return Ok(tensor(g, shape.to_vec(), dt, g.zeros(0, dt)?));
    }
    check_binding(g, "softmax input", data_bytes(n_all, dt))?;
    let r = shape.len();
    let zero = vec![0usize; r];
    let st = strides.unwrap_or(&zero);
    // View x as [d0, d1, d2, n]: pad on the left, or merge leading dims whose mask strides
    // merge (all broadcast, or contiguous).
    let (dims, mstr) = if r <= 4 {
        let mut d = [1usize; 4];
        let mut s = [0usize; 4];
        d[4 - r..].copy_from_slice(shape);
        s[4 - r..].copy_from_slice(st);
        (d, s)
    } else {
        let lead = r - 3;
        let merged: usize = shape[..lead].iter().product();
        let all_zero = st[..lead].iter().all(|&s| s == 0);
        let contiguous = (0..lead - 1).all(|i| st[i] == st[i + 1] * shape[i + 1]);
        if !all_zero && !contiguous {
            return Err(Error::Invalid(format!(
                "softmax on the GPU: mask strides {st:?} of a rank-{r} input cannot be merged to rank 4"
            )));
        }
        let s0 = if all_zero { 0 } else { st[lead - 1] };
        (
            [merged, shape[r - 3], shape[r - 2], shape[r - 1]],
            [s0, st[r - 3], st[r - 2], st[r - 1]],
        )
    };
    let rows = n_all / n;
    let out = with_out_dtype(g, dt, n.is_multiple_of(2) || rows == 1, n_all, |odt| {
        let sm = Sm {
            rows,
            n,
            d1: dims[1],
            d2: dims[2],
            mask: mask.map(|m| (m.gpu_storage(), mstr)),
            bias: None,
            scale: 1.0,
            causal_off: None,
            log: false,
        };
        softmax_into(g, x.gpu_storage(), dt, &sm, odt)
    })?;
    Ok(tensor(g, shape.to_vec(), dt, out))
}

/// `ops::log_softmax`: one workgroup per row (softmax.wgsl's LOG variant), f32 out.
pub(crate) fn log_softmax(g: &Ctx, x: &Tensor) -> Result<Tensor> {
    let shape = x.shape().to_vec();
    let n_all = x.elem_count();
    let n = *shape.last().unwrap_or(&1);
    if n_all == 0 {
        return Ok(tensor(g, shape, DType::F32, g.zeros(0, DType::F32)?));
    }
    check_binding(g, "log_softmax input", data_bytes(n_all, x.dtype()))?;
    check_binding(g, "log_softmax output", data_bytes(n_all, DType::F32))?;
    let sm = Sm {
        rows: n_all / n,
        n,
        d1: 1,
        d2: 1,
        mask: None,
        bias: None,
        scale: 1.0,
        causal_off: None,
        log: true,
    };
    let out = softmax_into(g, x.gpu_storage(), x.dtype(), &sm, DType::F32)?;
    Ok(tensor(g, shape, DType::F32, out))
}

pub(crate) fn unary(g: &Ctx, x: &Tensor, f: Unary) -> Result<Tensor> {
    let op = match f {
        Unary::Gelu => ElementwiseOp::Gelu,
        Unary::GeluTanh => ElementwiseOp::GeluTanh,
        Unary::Relu => ElementwiseOp::Relu,
        Unary::Silu => ElementwiseOp::Silu,
    };
    let n = x.elem_count();
    let out = elementwise(g, x.gpu_storage(), x.dtype(), n, None, op, 1.0, x.dtype())?;
    Ok(tensor(g, x.shape().to_vec(), x.dtype(), out))
}

pub(crate) fn binary(g: &Ctx, a: &Tensor, b: &Tensor, f: Binary) -> Result<Tensor> {
    let op = match f {
        Binary::Add => ElementwiseOp::Add,
        Binary::Mul => ElementwiseOp::Mul,
    };
    let out = elementwise(
        g,
        a.gpu_storage(),
        a.dtype(),
        a.elem_count(),
        Some((b.gpu_storage(), b.dtype(), b.elem_count())),
        op,
        1.0,
        a.dtype(),
    )?;
    Ok(tensor(g, a.shape().to_vec(), a.dtype(), out))
}

pub(crate) fn scale(g: &Ctx, x: &Tensor, s: f32) -> Result<Tensor> {
    let out = elementwise(
        g,
        x.gpu_storage(),
        x.dtype(),
        x.elem_count(),
        None,
        ElementwiseOp::Scale,
        s,
        x.dtype(),
    )?;
    Ok(tensor(g, x.shape().to_vec(), x.dtype(), out))
}

pub(crate) fn embedding(g: &Ctx, table: &Tensor, ids: &[u32], dtype: DType) -> Result<Tensor> {
    let (vocab, dim) = (table.dim(0), table.dim(1));
    let out_shape = vec![ids.len(), dim];
    let n = ids.len() * dim;
    if n == 0 {
        return Ok(tensor(g, out_shape, dtype, g.zeros(0, dtype)?));
    }
    let tdt = table.dtype();
    if let Some(format) = tdt.quant_format() {
        let out = qembedding(g, table, format, ids)?;
        return if dtype == DType::F32 {
            Ok(out)
        } else {
            cast(g, &out, dtype)
        };
    }
    check_binding(g, "embedding output", data_bytes(n, dtype))?;
    let row_bytes = (dim * tdt.size_of()) as u64;
    let rows = chunk_rows(
        g,
        "embedding table",
        vocab,
        row_bytes,
        data_bytes(vocab * dim, tdt),
        1,
    )?;
    let ids_s = g.upload_u32(ids)?;
    let out = g.alloc(data_bytes(n, dtype), true)?;
    let kernel = EmbeddingConsts {
        t_f16: is_f16(tdt),
        out_f16: is_f16(dtype),
    };
    let groups = grid(g, n.div_ceil(2).div_ceil(256))?;
    let mut rec = g.recorder()?;
    for (r0, rc) in id_chunks(ids, vocab, rows) {
        let tb = Bind::range(
            table.gpu_storage(),
            r0 as u64 * row_bytes,
            data_bytes(rc * dim, tdt),
        );
        let params = EmbeddingParams {
            n: n as u32,
            d: dim as u32,
            row0: r0 as u32,
            rows: rc as u32,
            groups_x: groups[0],
        };
        rec.dispatch(
            g,
            &kernel,
            &params,
            &[Bind::whole(&ids_s), tb, Bind::whole(&out)],
            groups,
        )?;
    }
    Ok(tensor(g, out_shape, dtype, out))
}

/// Row chunks `(row0, rows)` of a `vocab`-row table cut every `rows` rows, only those that
/// hold a requested id (the others need no dispatch).
fn id_chunks(ids: &[u32], vocab: usize, rows: usize) -> Vec<(usize, usize)> {
    (0..vocab)
        .step_by(rows.max(1))
        .map(|r0| (r0, rows.min(vocab - r0)))
        .filter(|&(r0, rc)| ids.iter().any(|&i| (r0..r0 + rc).contains(&(i as usize))))
        .collect()
}

/// [`embedding`] from a q8/q4 table, into f32: rows dequantized by qembedding.wgsl, the
/// table bound in row chunks like a quantized linear weight.
fn qembedding(g: &Ctx, table: &Tensor, format: QFormat, ids: &[u32]) -> Result<Tensor> {
    let (vocab, dim) = (table.dim(0), table.dim(1));
    let n = ids.len() * dim;
    check_binding(g, "embedding output", data_bytes(n, DType::F32))?;
    let q_row = format.row_bytes(dim) as u64;
    let s_row = 2 * QFormat::row_blocks(dim) as u64;
    let s_base = g.quant_scales_offset(vocab * q_row as usize) as u64;
    let rows = quant_chunk_rows(g, vocab, q_row, s_row)?;
    let ids_s = g.upload_u32(ids)?;
    let out = g.alloc(data_bytes(n, DType::F32), true)?;
    let kernel = QEmbeddingConsts {
        q4: format == QFormat::Q4,
    };
    let groups = grid(g, n.div_ceil(256))?;
    let ts = table.gpu_storage();
    let mut rec = g.recorder()?;
    for (r0, rc) in id_chunks(ids, vocab, rows) {
        let params = QEmbeddingParams {
            n: n as u32,
            d: dim as u32,
            rb: QFormat::row_blocks(dim) as u32,
            row0: r0 as u32,
            rows: rc as u32,
            groups_x: groups[0],
        };
        let binds = [
            Bind::whole(&ids_s),
            Bind::range(ts, r0 as u64 * q_row, rc as u64 * q_row),
            Bind::range(ts, s_base + r0 as u64 * s_row, rc as u64 * s_row),
            Bind::whole(&out),
        ];
        rec.dispatch(g, &kernel, &params, &binds, groups)?;
    }
    Ok(tensor(g, vec![ids.len(), dim], DType::F32, out))
}

/// One box copy per run of rows whose source index advances by a constant step (0 for a
/// repeated row, 1 for a contiguous block), recorded into one encoder; bits are moved as
/// they are. Like the other copies, refuses (Limit) a tensor larger than one binding.
pub(crate) fn gather_rows(
    g: &Ctx,
    x: &Tensor,
    rows: &[usize],
    out_shape: Vec<usize>,
) -> Result<Tensor> {
    let dt = x.dtype();
    let inner: usize = x.shape()[1..].iter().product();
    let n = rows.len() * inner;
    let out = g.alloc(data_bytes(n, dt), true)?;
    if n > 0 {
        let mut rec = g.recorder()?;
        let mut i = 0;
        while i < rows.len() {
            let step = match rows.get(i + 1) {
                Some(&next) if next >= rows[i] => next - rows[i],
                _ => 0,
            };
            let mut j = i + 1;
            while j < rows.len() && rows[j] == rows[j - 1] + step {
                j += 1;
            }
            // A contiguous block is one long row; other runs are one box row per output row.
            let (box_rows, len, src_stride) = if step == 1 {
                (1, (j - i) * inner, 0)
            } else {
                (j - i, inner, step * inner)
            };
            box_copy(
                g,
                &mut rec,
                x.gpu_storage(),
                &out,
                dt,
                box_rows,
                len,
                inner,
                i * inner,
                src_stride,
                rows[i] * inner,
            )?;
            i = j;
        }
    }
    Ok(tensor(g, out_shape, dt, out))
}

pub(crate) fn concat(
    g: &Ctx,
    ts: &[&Tensor],
    axis: usize,
    out_shape: Vec<usize>,
) -> Result<Tensor> {
    let dt = ts[0].dtype();
    let n: usize = out_shape.iter().product();
    let out = g.alloc(data_bytes(n, dt), true)?;
    let (outer, total, inner) = split_at_axis(&out_shape, axis);
    let mut rec = g.recorder()?;
    let mut off = 0;
    for t in ts {
        let len = t.dim(axis);
        box_copy(
            g,
            &mut rec,
            t.gpu_storage(),
            &out,
            dt,
            outer,
            len * inner,
            total * inner,
            off * inner,
            len * inner,
            0,
        )?;
        off += len;
    }
    drop(rec);
    Ok(tensor(g, out_shape, dt, out))
}

pub(crate) fn narrow(
    g: &Ctx,
    x: &Tensor,
    axis: usize,
    start: usize,
    out_shape: Vec<usize>,
) -> Result<Tensor> {
    let dt = x.dtype();
    let n: usize = out_shape.iter().product();
    let out = g.alloc(data_bytes(n, dt), true)?;
    let (outer, dim, inner) = split_at_axis(x.shape(), axis);
    let len = out_shape[axis];
    let mut rec = g.recorder()?;
    box_copy(
        g,
        &mut rec,
        x.gpu_storage(),
        &out,
        dt,
        outer,
        len * inner,
        len * inner,
        0,
        dim * inner,
        start * inner,
    )?;
    drop(rec);
    Ok(tensor(g, out_shape, dt, out))
}

/// Writes src into dst's buffer. Like the CPU backend (copy-on-write of shared storage), a
/// dst whose buffer other tensors share gets its own copy first, so clones never change.
pub(crate) fn write_at(
    g: &Ctx,
    dst: &mut Tensor,
    src: &Tensor,
    axis: usize,
    offset: usize,
) -> Result<()> {
    let dt = dst.dtype();
    let shared = match &dst.storage {
        Storage::Gpu(s) => Arc::strong_count(&s.buf) > 1,
        Storage::Cpu(_) => {
            return Err(Error::Invalid(
                "write_at: CPU storage on a GPU tensor".into(),
            ));
        }
    };
    let mut rec = g.recorder()?;
    if shared {
        let old = dst.gpu_storage().clone();
        let fresh = g.alloc(old.bytes, true)?;
        rec.copy(g, &old, &fresh, old.bytes)?;
        dst.storage = Storage::Gpu(fresh);
    }
    let (outer, dim, inner) = split_at_axis(dst.shape(), axis);
    let len = src.dim(axis) * inner;
    box_copy(
        g,
        &mut rec,
        src.gpu_storage(),
        dst.gpu_storage(),
        dt,
        outer,
        len,
        dim * inner,
        offset * inner,
        len,
        0,
    )
}

pub(crate) fn permute_0213(g: &Ctx, x4: &Tensor) -> Result<Tensor> {
    let s = x4.shape();
    let (b, a, c, d) = (s[0], s[1], s[2], s[3]);
    gather_copy(g, x4, CopyMode::Permute0213, [a, c, d, 0], vec![b, c, a, d])
}

pub(crate) fn attention(
    g: &Ctx,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    opts: &AttnOpts,
    d: &AttnDims,
) -> Result<Tensor> {
    let dt = q.dtype();
    let (bh, lq, lk, hd) = (d.batch * d.heads, d.lq, d.lk, d.head_dim);
    let out_shape = vec![d.batch, d.heads, lq, hd];
    let total = bh * lq * hd;
    if total == 0 {
        return Ok(tensor(g, out_shape, dt, g.zeros(0, dt)?));
    }
    for (what, t) in [("attention q", q), ("attention k", k), ("attention v", v)] {
        check_binding(g, what, data_bytes(t.elem_count(), dt))?;
    }
    let scores_bytes = (bh * lq * lk * 4) as u64;
    let fusable = hd <= 512;
    // Few queries: one workgroup per query (attention.wgsl). Many: the flash kernel, tiles of
    // queries sharing K/V tiles. Either never writes the scores; the plain matmul + softmax +
    // matmul path is the fallback (switches off, or head dims past the kernels' limits).
    let small = g.opts.fused_attention && lq <= 32;
    let flash = !small && g.opts.flash_attention && hd <= FlashAttentionConsts::DMAX;
    let fused = !flash && fusable && (small || scores_bytes > g.max_binding);
    // Only read when causal, where the op guarantees lq <= lk (cross-attention may have lq > lk).
    let causal_off = lk.saturating_sub(lq);
    let direct = hd.is_multiple_of(2) || bh * lq == 1;
    let out = with_out_dtype(g, dt, direct, total, |odt| {
        let out = g.alloc(data_bytes(total, odt), true)?;
        // The uniform and bindings both one-pass kernels take; `rows` is what their
        // workgroups index (queries for attention.wgsl, heads for the flash kernel).
        let one_pass = |rows: usize, groups_x: u32| {
            let params = AttentionParams {
                lq: lq as u32,
                lk: lk as u32,
                lk_cap: d.lk_cap as u32,
                d: hd as u32,
                heads: d.heads as u32,
                rows: rows as u32,
                scale: opts.scale,
                causal: opts.causal as u32,
                causal_off: causal_off as u32,
                mask_rows: d.mask_rows.max(1) as u32,
                groups_x,
            };
            let binds = [
                Bind::whole(q.gpu_storage()),
                Bind::whole(k.gpu_storage()),
                Bind::whole(v.gpu_storage()),
                Bind::whole(opts.mask.map_or(&g.dummy, |m| m.gpu_storage())),
                Bind::whole(opts.bias.map_or(&g.dummy, |b| b.gpu_storage())),
                Bind::whole(&out),
            ];
            (params, binds)
        };
        if fused {
            let kernel = AttentionConsts {
                qkv_f16: is_f16(dt),
                out_f16: is_f16(odt),
                has_mask: opts.mask.is_some(),
                has_bias: opts.bias.is_some(),
                d_even: hd.is_multiple_of(2),
                subgroups: g.subgroups,
            };
            let rows = bh * lq;
            let groups = grid(g, rows)?;
            let (params, binds) = one_pass(rows, groups[0]);
            g.recorder()?
                .dispatch(g, &kernel, &params, &binds, groups)?;
            return Ok(out);
        }
        if flash {
            let kernel = FlashAttentionConsts {
                qkv_f16: is_f16(dt),
                out_f16: is_f16(odt),
                has_mask: opts.mask.is_some(),
                has_bias: opts.bias.is_some(),
            };
            let groups = grid(g, bh * lq.div_ceil(FlashAttentionConsts::BQ))?;
            let (params, binds) = one_pass(bh, groups[0]);
            g.recorder()?
                .dispatch(g, &kernel, &params, &binds, groups)?;
            return Ok(out);
        }
        if scores_bytes > g.max_binding {
            check_binding(g, "attention scores", scores_bytes)?;
        }
        if bh > g.limits.max_compute_workgroups_per_dimension as usize {
            return Err(Error::Limit {
                what: "attention batch x heads (one workgroup layer each)".into(),
                needed: bh as u64,
                limit: g.limits.max_compute_workgroups_per_dimension as u64,
            });
        }
        // scores = q . k^T over the first lk keys of each [lk_cap, hd] slab.
        let scores = g.alloc(scores_bytes, true)?;
        {
            let mut rec = g.recorder()?;
            let mm = Mm {
                batch: bh,
                m: lq,
                n: lk,
                k: hd,
                b_trans: true,
                lda: hd,
                ldb: hd,
                ldc: lk,
                n_off: 0,
                a_bs: lq * hd,
                b_bs: d.lk_cap * hd,
                c_bs: lq * lk,
            };
            let (qb, kb) = (Bind::whole(q.gpu_storage()), Bind::whole(k.gpu_storage()));
            record_matmul(g, &mut rec, qb, dt, kb, dt, None, &scores, DType::F32, &mm)?;
        }
        let mr = d.mask_rows.max(1);
        let sm = Sm {
            rows: bh * lq,
            n: lk,
            d1: d.heads,
            d2: lq,
            mask: opts.mask.map(|m| {
                (
                    m.gpu_storage(),
                    [mr * lk, 0, if mr == 1 { 0 } else { lk }, 1],
                )
            }),
            bias: opts.bias.map(|b| (b.gpu_storage(), [0, lq * lk, lk, 1])),
            scale: opts.scale,
            causal_off: opts.causal.then_some(causal_off),
            log: false,
        };
        let probs = softmax_into(g, &scores, DType::F32, &sm, DType::F32)?;
        drop(scores);
        let mut rec = g.recorder()?;
        let mm = Mm {
            batch: bh,
            m: lq,
            n: hd,
            k: lk,
            b_trans: false,
            lda: lk,
            ldb: hd,
            ldc: hd,
            n_off: 0,
            a_bs: lq * lk,
            b_bs: d.lk_cap * hd,
            c_bs: lq * hd,
        };
        let (pb, vb) = (Bind::whole(&probs), Bind::whole(v.gpu_storage()));
        record_matmul(g, &mut rec, pb, DType::F32, vb, dt, None, &out, odt, &mm)?;
        Ok(out)
    })?;
    Ok(tensor(g, out_shape, dt, out))
}

/// The GEMV kernels' fusion of a [`LinearFusion`], when they have it for these operands:
/// 1..=4 rows of x, f32 norm parameters and bias, a residual of x's dtype, f32 output when
/// gated, and one of the fusions the variant lists hold ([`GemvFusion::all`]).
pub(crate) fn linear_fused(
    g: &Ctx,
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    f: &LinearFusion,
    out_shape: Vec<usize>,
) -> Result<Option<Tensor>> {
    let (n, k) = (w.dim(0), w.dim(1));
    let dt = x.dtype();
    let m = x.elem_count() / k.max(1);
    if !g.opts.fused_decode || !g.opts.gemv || m == 0 || m > 4 || k == 0 || n == 0 {
        return Ok(None);
    }
    let f32_param = |t: &Tensor| t.dtype() == DType::F32;
    let (norm, nw, nb, eps) = match f.norm {
        None => (GemvNorm::None, None, None, 0.0),
        Some(NormIn::Layer { w, b, eps }) => (GemvNorm::Layer, Some(w), Some(b), eps),
        Some(NormIn::Rms { w, eps }) => (GemvNorm::Rms, Some(w), None, eps),
    };
    let act = f.act.map(|a| match a {
        Unary::Gelu => Activation::Gelu,
        Unary::GeluTanh => Activation::GeluTanh,
        Unary::Relu => Activation::Relu,
        Unary::Silu => Activation::Silu,
    });
    let epi = match (f.gated, act) {
        (true, Some(a)) => GemvEpilogue::Gated(a),
        (false, Some(a)) => GemvEpilogue::Act(a),
        _ => GemvEpilogue::None,
    };
    let fusion = GemvFusion {
        norm,
        epi,
        residual: f.residual.is_some(),
    };
    let supported = GemvFusion::all().contains(&fusion)
        && b.is_none_or(f32_param)
        && nw.is_none_or(f32_param)
        && nb.is_none_or(f32_param)
        && f.residual.is_none_or(|r| r.dtype() == dt)
        && !(f.gated && dt == DType::F16)
        // f16 outputs are written in word pairs: rows must start on a word.
        && (dt == DType::F32 || n.is_multiple_of(2) || m == 1)
        && matches!(w.dtype(), DType::F32 | DType::F16 | DType::Q8 | DType::Q4);
    if !supported {
        return Ok(None);
    }
    let fuse = Fuse {
        fusion,
        nw: nw.map(|t| t.gpu_storage()),
        nb: nb.map(|t| t.gpu_storage()),
        res: f.residual.map(|t| t.gpu_storage()),
        eps,
    };
    let out = match w.dtype().quant_format() {
        Some(format) => qlinear_into(g, x, w, format, b, m, k, n, dt, Some(&fuse))?,
        None => linear_into(g, x, w, b, m, k, n, dt, Some(&fuse))?,
    };
    Ok(Some(tensor(g, out_shape, dt, out)))
}

/// Decode attention with the append fused (attention_decode.wgsl) for one new token;
/// `None` where the kernel does not apply (several tokens, mixed dtypes, f16 with an odd
/// head dim, head dims past its limit, the switch off).
pub(crate) fn attention_append(
    g: &Ctx,
    qkv: &Tensor,
    k: &mut Tensor,
    v: &mut Tensor,
    pos: usize,
    opts: &AttnOpts,
) -> Result<Option<Tensor>> {
    let dt = qkv.dtype();
    let (b, heads, cap, d) = (k.dim(0), k.dim(1), k.dim(2), k.dim(3));
    let hidden = heads * d;
    let fits = g.opts.fused_decode
        && g.opts.fused_attention
        && qkv.dim(1) == 1
        && k.dtype() == dt
        && v.dtype() == dt
        && d > 0
        && d <= AttnDecodeConsts::DMAX
        && (dt == DType::F32 || d.is_multiple_of(2))
        && data_bytes(k.elem_count(), dt) <= g.max_binding
        && data_bytes(qkv.elem_count(), dt) <= g.max_binding;
    if !fits || b == 0 {
        return Ok(None);
    }
    // Copy-on-write as write_at: clones of a cache never change.
    for t in [&mut *k, &mut *v] {
        if Arc::strong_count(&t.gpu_storage().buf) > 1 {
            let old = t.gpu_storage().clone();
            let fresh = g.alloc(old.bytes, true)?;
            g.recorder()?.copy(g, &old, &fresh, old.bytes)?;
            t.storage = Storage::Gpu(fresh);
        }
    }
    let rows = b * heads;
    let groups = grid(g, rows)?;
    let out = g.alloc(data_bytes(b * hidden, dt), true)?;
    let kernel = AttnDecodeConsts {
        f16: is_f16(dt),
        has_mask: opts.mask.is_some(),
        has_bias: opts.bias.is_some(),
        d_even: d.is_multiple_of(2),
        subgroups: g.subgroups,
    };
    let params = AttnDecodeParams {
        lk: (pos + 1) as u32,
        lk_cap: cap as u32,
        d: d as u32,
        heads: heads as u32,
        rows: rows as u32,
        scale: opts.scale,
        pos: pos as u32,
        ld_qkv: (3 * hidden) as u32,
        hidden: hidden as u32,
        groups_x: groups[0],
    };
    let binds = [
        Bind::whole(qkv.gpu_storage()),
        Bind::whole(opts.mask.map_or(&g.dummy, |m| m.gpu_storage())),
        Bind::whole(opts.bias.map_or(&g.dummy, |b| b.gpu_storage())),
        Bind::whole(k.gpu_storage()),
        Bind::whole(v.gpu_storage()),
        Bind::whole(&out),
    ];
    g.recorder()?
        .dispatch(g, &kernel, &params, &binds, groups)?;
    Ok(Some(tensor(g, vec![b, 1, hidden], dt, out)))
}

/// `ops::argmax_rows` in one dispatch (argmax.wgsl), reading back 8 bytes a row; `None`
/// with more excluded ids than the kernel takes, or with the switch off.
pub(crate) fn argmax_rows(
    g: &Ctx,
    x: &Tensor,
    exclude: &[u32],
) -> Result<Option<(Vec<u32>, Vec<u32>)>> {
    if !g.opts.device_argmax || exclude.len() > ArgmaxConsts::MAX_EXCLUDED {
        return Ok(None);
    }
    let (rows, n) = (x.dim(0), x.dim(1));
    check_binding(g, "argmax input", data_bytes(x.elem_count(), x.dtype()))?;
    let out = g.alloc(data_bytes(2 * rows, DType::F32), true)?;
    let groups = grid(g, rows)?;
    let e = |i: usize| exclude.get(i).copied().unwrap_or(u32::MAX);
    let params = ArgmaxParams {
        n: n as u32,
        rows: rows as u32,
        n_excl: exclude.len() as u32,
        e0: e(0),
        e1: e(1),
        e2: e(2),
        e3: e(3),
        groups_x: groups[0],
    };
    let kernel = ArgmaxConsts {
        x_f16: is_f16(x.dtype()),
    };
    let binds = [Bind::whole(x.gpu_storage()), Bind::whole(&out)];
    g.recorder()?
        .dispatch(g, &kernel, &params, &binds, groups)?;
    let words = g.download_words(&out, 2 * rows)?;
    Ok(Some(words.chunks(2).map(|w| (w[0], w[1])).unzip()))
}

/// `ops::top_candidates` in one dispatch (topk.wgsl), reading back 2 + 2·min(max_out, n)
/// words a row; `None` with more excluded ids than the kernel takes, or with the switch off.
pub(crate) fn top_candidates(
    g: &Ctx,
    x: &Tensor,
    k: usize,
    max_out: usize,
    exclude: &[u32],
) -> Result<Option<Vec<Option<Candidates>>>> {
    if !g.opts.device_topk || exclude.len() > TopkConsts::MAX_EXCLUDED {
        return Ok(None);
    }
    let (rows, n) = (x.dim(0), x.dim(1));
    check_binding(
        g,
        "top_candidates input",
        data_bytes(x.elem_count(), x.dtype()),
    )?;
    // A row has at most n candidates: wider slots would only be read back empty, and k > n
    // means all of them either way (so both fit u32 once the input fits a binding).
    let slots = max_out.min(n);
    let k = k.min(n + 1);
    let stride = 2 + 2 * slots;
    let words = rows * stride;
    check_binding(g, "top_candidates output", 4 * words as u64)?;
    let out = g.alloc(4 * words as u64, true)?;
    let groups = grid(g, rows)?;
    let e = |i: usize| exclude.get(i).copied().unwrap_or(u32::MAX);
    let params = TopkParams {
        n: n as u32,
        rows: rows as u32,
        k: k as u32,
        max_out: slots as u32,
        n_excl: exclude.len() as u32,
        e0: e(0),
        e1: e(1),
        e2: e(2),
        e3: e(3),
        groups_x: groups[0],
    };
    let f16 = is_f16(x.dtype());
    let kernel = TopkConsts { x_f16: f16 };
    let binds = [Bind::whole(x.gpu_storage()), Bind::whole(&out)];
    g.recorder()?
        .dispatch(g, &kernel, &params, &binds, groups)?;
    let words = g.download_words(&out, words)?;
    let value = |b: u32| {
        if f16 {
            half::f16::from_bits(b as u16).to_f32()
        } else {
            f32::from_bits(b)
        }
    };
    Ok(Some(
        words
            .chunks(stride)
            .map(|r| {
                let count = r[0] as usize;
                if count > slots {
                    return None;
                }
                // Appended in whatever order the invocations got their slots.
                let mut pairs: Vec<(u32, u32)> = r[2..2 + 2 * count]
                    .chunks(2)
                    .map(|p| (p[0], p[1]))
                    .collect();
                pairs.sort_unstable_by_key(|p| p.0);
                Some(Candidates {
                    ids: pairs.iter().map(|p| p.0).collect(),
                    values: pairs.iter().map(|p| value(p.1)).collect(),
                    non_finite: r[1],
                })
            })
            .collect(),
    ))
}

/// The extra operands of a fused GEMV (see [`linear_fused`]).
struct Fuse<'a> {
    fusion: GemvFusion,
    nw: Option<&'a GpuStorage>,
    nb: Option<&'a GpuStorage>,
    res: Option<&'a GpuStorage>,
    eps: f32,
}

impl Fuse<'_> {
    /// Output columns for a weight of `n` rows (a gate halves them).
    fn out_cols(&self, n: usize) -> usize {
        match self.fusion.epi {
            GemvEpilogue::Gated(_) => n / 2,
            _ => n,
        }
    }
}

/// Norm weight, norm bias and residual bindings of the GEMV kernels (the dummy buffer
/// where absent).
fn fused_binds<'a>(g: &'a GpuContext, fuse: Option<&Fuse<'a>>) -> [Bind<'a>; 3] {
    let pick = |s: Option<&'a GpuStorage>| Bind::whole(s.unwrap_or(&g.dummy));
    match fuse {
        Some(f) => [pick(f.nw), pick(f.nb), pick(f.res)],
        None => [pick(None), pick(None), pick(None)],
    }
}

pub(crate) fn im2col(g: &Ctx, pixels: &Tensor, p: usize) -> Result<Tensor> {
    let s = pixels.shape();
    let (b, c, h, w) = (s[0], s[1], s[2], s[3]);
    gather_copy(
        g,
        pixels,
        CopyMode::Im2col,
        [c, h, w, p],
        vec![b, (h / p) * (w / p), c * p * p],
    )
}

pub(crate) fn cast(g: &Ctx, x: &Tensor, dtype: DType) -> Result<Tensor> {
    let out = elementwise(
        g,
        x.gpu_storage(),
        x.dtype(),
        x.elem_count(),
        None,
        ElementwiseOp::Copy,
        1.0,
        dtype,
    )?;
    Ok(tensor(g, x.shape().to_vec(), dtype, out))
}

// ------------------------------------------------------------------- kernel recording

/// Element-wise kernel over `n` elements of x; `b` = (storage, dtype, elements) repeats over
/// x. Ranges larger than one binding are processed in aligned chunks.
#[allow(clippy::too_many_arguments)]
fn elementwise(
    g: &Ctx,
    x: &GpuStorage,
    xdt: DType,
    n: usize,
    b: Option<(&GpuStorage, DType, usize)>,
    op: ElementwiseOp,
    s: f32,
    odt: DType,
) -> Result<GpuStorage> {
    let out = g.alloc(data_bytes(n, odt), true)?;
    if n == 0 {
        return Ok(out);
    }
    // Chunk starts are multiples of the offset alignment in elements, so every operand's
    // byte offset is aligned whatever its dtype; 4 bytes per element bounds every binding.
    let align = g.storage_align as usize;
    let chunk = ((g.max_binding as usize) / 4 / align * align).max(align);
    let bdt = b.map_or(DType::F32, |b| b.1);
    let kernel = ElementwiseConsts {
        op,
        x_f16: is_f16(xdt),
        b_f16: is_f16(bdt),
        out_f16: is_f16(odt),
    };
    let mut rec = g.recorder()?;
    let mut e0 = 0;
    while e0 < n {
        let len = chunk.min(n - e0);
        let xb = Bind::range(x, (e0 * xdt.size_of()) as u64, data_bytes(len, xdt));
        let ob = Bind::range(&out, (e0 * odt.size_of()) as u64, data_bytes(len, odt));
        let (bb, b_len, b_base) = match b {
            None => (Bind::whole(&g.dummy), 1, 0),
            Some((bs, bdt, bl)) => {
                if data_bytes(bl, bdt) <= g.max_binding {
                    (Bind::whole(bs), bl, e0 % bl)
                } else if bl == n {
                    (
                        Bind::range(bs, (e0 * bdt.size_of()) as u64, data_bytes(len, bdt)),
                        len,
                        0,
                    )
                } else {
                    return Err(Error::Limit {
                        what: "repeating operand of add/mul in one storage binding".into(),
                        needed: data_bytes(bl, bdt),
                        limit: g.max_binding,
                    });
                }
            }
        };
        let groups = grid(g, len.div_ceil(2).div_ceil(256))?;
        let params = ElementwiseParams {
            n: len as u32,
            b_len: b_len as u32,
            b_base: b_base as u32,
            s,
            groups_x: groups[0],
        };
        rec.dispatch(g, &kernel, &params, &[xb, bb, ob], groups)?;
        e0 += len;
    }
    Ok(out)
}

/// A batched matmul of the tiled kernel: C[z] = A[z] . op(B[z]) with explicit strides
/// (elements). B_TRANS: B rows are output columns (ldb = k).
struct Mm {
    batch: usize,
    m: usize,
    n: usize,
    k: usize,
    b_trans: bool,
    lda: usize,
    ldb: usize,
    ldc: usize,
    n_off: usize,
    a_bs: usize,
    b_bs: usize,
    c_bs: usize,
}

#[allow(clippy::too_many_arguments)]
fn record_matmul(
    g: &Ctx,
    rec: &mut Recorder,
    a: Bind,
    adt: DType,
    b: Bind,
    bdt: DType,
    bias: Option<(&GpuStorage, DType)>,
    c: &GpuStorage,
    cdt: DType,
    mm: &Mm,
) -> Result<()> {
    let tile = MatmulTile::for_rows(mm.m);
    let vec = g.opts.vec4;
    let kernel = MatmulConsts {
        tile,
        b_trans: mm.b_trans,
        has_bias: bias.is_some(),
        a_vec: vec && mm.lda.is_multiple_of(4) && mm.a_bs.is_multiple_of(4),
        b_vec: vec && mm.ldb.is_multiple_of(4) && mm.b_bs.is_multiple_of(4),
        a_f16: is_f16(adt),
        b_f16: is_f16(bdt),
        bias_f16: bias.is_some_and(|b| is_f16(b.1)),
        out_f16: is_f16(cdt),
        f16_math: g.f16_math && is_f16(bdt) && (is_f16(adt) || g.opts.f16_math_f32_act),
    };
    let params = MatmulParams {
        m: mm.m as u32,
        n: mm.n as u32,
        k: mm.k as u32,
        lda: mm.lda as u32,
        ldb: mm.ldb as u32,
        ldc: mm.ldc as u32,
        n_off: mm.n_off as u32,
        a_bs: mm.a_bs as u32,
        b_bs: mm.b_bs as u32,
        c_bs: mm.c_bs as u32,
    };
    let groups = [
        mm.n.div_ceil(64) as u32,
        mm.m.div_ceil(tile.tm() as usize) as u32,
        mm.batch as u32,
    ];
    let bias_bind = Bind::whole(bias.map_or(&g.dummy, |b| b.0));
    rec.dispatch(
        g,
        &kernel,
        &params,
        &[a, b, bias_bind, Bind::whole(c)],
        groups,
    )
}

/// The output columns one dispatch writes: `n` of a row of `ldo`, from column `n_off`.
struct Cols {
    n: usize,
    ldo: usize,
    n_off: usize,
}

/// Records the tensor-core linear over `m` rows (binds: x, the weight rows, bias, out).
fn record_coop(
    g: &Ctx,
    rec: &mut Recorder,
    coop: &CoopMatmulConsts,
    m: usize,
    cols: Cols,
    binds: [Bind; 4],
) -> Result<()> {
    let block = CoopMatmulConsts::BLOCK as usize;
    let mut groups = grid(g, cols.n / block)?;
    groups[2] = u32::try_from(m.div_ceil(block))
        .ok()
        .filter(|&z| z <= g.limits.max_compute_workgroups_per_dimension)
        .ok_or_else(|| Error::Limit {
            what: "tensor-core linear: row blocks of one dispatch".into(),
            needed: m.div_ceil(block) as u64,
            limit: g.limits.max_compute_workgroups_per_dimension as u64,
        })?;
    let params = CoopMatmulParams {
        m: m as u32,
        n: cols.n as u32,
        ldo: cols.ldo as u32,
        n_off: cols.n_off as u32,
        groups_x: groups[0],
    };
    rec.dispatch(g, coop, &params, &binds, groups)
}

/// The tensor-core self-check's shapes: rows that are not a multiple of the 32-row block,
/// K = 768 (the Q-Former's width), two column blocks.
const COOP_CHECK: (usize, usize, usize) = (48, 768, 64);

/// The tensor-core self-check's problem: x `[48, 768]`, w `[64, 768]` (nn.Linear layout) and
/// their exact product `[48, 64]`. Every value is one of −1, −½, 0, ½, 1, so each product is
/// exact in f16 and each partial sum (a multiple of ¼ below 768 in size) exact in f32, in
/// any order: a kernel that computes what it should returns these bits.
pub fn coop_check_problem() -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (m, k, n) = COOP_CHECK;
    let val = |i: usize, salt: usize| ((i * 7919 + salt) % 5) as f32 * 0.5 - 1.0;
    let x: Vec<f32> = (0..m * k).map(|i| val(i, 13)).collect();
    let w: Vec<f32> = (0..n * k).map(|i| val(i, 29)).collect();
    let y = (0..m * n)
        .map(|o| {
            let (r, c) = (o / n, o % n);
            (0..k).map(|j| x[r * k + j] * w[c * k + j]).sum()
        })
        .collect();
    (x, w, y)
}

/// Whether the tensor-core kernel may run on this context: its self-check, made once on
/// first use ([`coop_check_problem`] through the kernel, every output exact). No
/// adapter of the sessions that wrote it had cooperative matrices, and a driver can get
/// them wrong; a failure is reported once and the tiled matmul stays in use.
fn coop_verified(g: &Ctx) -> bool {
    *g.coop_checked.get_or_init(|| {
        let bad = match coop_check(g) {
            Ok(0) => return true,
            Ok(bad) => format!("{bad} of {} outputs wrong", COOP_CHECK.0 * COOP_CHECK.2),
            Err(e) => e.to_string(),
        };
        eprintln!(
            "warning: the tensor-core matmul failed its self-check on {:?} ({bad}); \
             linear layers use the tiled matmul (BLIP2_GPU_NO_COOP=1 skips the check)",
            g.info().name
        );
        false
    })
}

/// Runs [`coop_check_problem`] through the tensor-core kernel: the outputs that differ.
fn coop_check(g: &Ctx) -> Result<usize> {
    let Some(sg) = g.coop else { return Ok(0) };
    let (m, k, n) = COOP_CHECK;
    let (xv, wv, want) = coop_check_problem();
    let dev = Device::Gpu(g.clone());
    let x = Tensor::from_slice(&xv, &[m, k], DType::F32, &dev)?;
    let w = Tensor::from_slice(&wv, &[n, k], DType::F16, &dev)?;
    let out = g.alloc(data_bytes(m * n, DType::F32), true)?;
    let kernel = CoopMatmulConsts {
        k: k as u32,
        sg,
        has_bias: false,
        x_f16: false,
        b_f16: false,
        out_f16: false,
    };
    let binds = [
        Bind::whole(x.gpu_storage()),
        Bind::whole(w.gpu_storage()),
        Bind::whole(&g.dummy),
        Bind::whole(&out),
    ];
    let cols = Cols {
        n,
        ldo: n,
        n_off: 0,
    };
    record_coop(g, &mut *g.recorder()?, &kernel, m, cols, binds)?;
    let got = g.download_words(&out, m * n)?;
    Ok(got
        .iter()
        .zip(&want)
        .filter(|(g, w)| f32::from_bits(**g) != **w)
        .count())
}

/// Fewest rows of x for which the tensor-core kernel is chosen (its blocks are 32 rows;
/// decode's 1–4 rows stay on the memory-bound GEMV).
const COOP_MIN_M: usize = 16;

#[allow(clippy::too_many_arguments)]
fn linear_into(
    g: &Ctx,
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    m: usize,
    k: usize,
    n: usize,
    odt: DType,
    fuse: Option<&Fuse>,
) -> Result<GpuStorage> {
    let (xdt, wdt) = (x.dtype(), w.dtype());
    let n_out = fuse.map_or(n, |f| f.out_cols(n));
    check_binding(g, "linear input", data_bytes(m * k, xdt))?;
    check_binding(g, "linear output", data_bytes(m * n_out, odt))?;
    let out = g.alloc(data_bytes(m * n_out, odt), true)?;
    // Weights larger than one binding are bound in row chunks (multiples of 4 rows so GEMV
    // row groups and f16 output pairs never straddle chunks).
    let row_bytes = (k * wdt.size_of()).max(1) as u64;
    let bias = b.map(|b| (b.gpu_storage(), b.dtype()));
    // Tensor cores for f16 weights whose shape fits whole 32×32 blocks along n (chunks too).
    // They round x to f16: f32 activations only where f16 arithmetic on them was asked for
    // (`f16_math_f32_act`), as for the f16 GEMV.
    let coop = g
        .coop
        .filter(|_| {
            fuse.is_none()
                && is_f16(wdt)
                && (is_f16(xdt) || g.opts.f16_math_f32_act)
                && m >= COOP_MIN_M
                && k.is_multiple_of(16)
                && k <= u32::MAX as usize
        })
        .filter(|_| n.is_multiple_of(CoopMatmulConsts::BLOCK as usize))
        .filter(|_| coop_verified(g))
        .map(|sg| CoopMatmulConsts {
            k: k as u32,
            sg,
            has_bias: bias.is_some(),
            x_f16: is_f16(xdt),
            b_f16: bias.is_some_and(|b| is_f16(b.1)),
            out_f16: is_f16(odt),
        });
    let multiple = if coop.is_some() {
        CoopMatmulConsts::BLOCK as u64
    } else {
        4
    };
    let rows = chunk_rows(
        g,
        "linear weight",
        n,
        row_bytes,
        data_bytes(n * k, wdt),
        multiple,
    )?;
    let use_gemv = fuse.is_some() || (g.opts.gemv && m <= 4 && k > 0);
    let vec = g.opts.vec4 && k.is_multiple_of(8);
    let gemv = GemvConsts {
        m: m as u32,
        vec,
        has_bias: bias.is_some(),
        x_f16: is_f16(xdt),
        w_f16: is_f16(wdt),
        b_f16: bias.is_some_and(|b| is_f16(b.1)),
        out_f16: is_f16(odt),
        subgroups: g.subgroups,
        fusion: fuse.map_or(GemvFusion::NONE, |f| f.fusion),
        f16_math: g.f16_math && vec && is_f16(wdt) && (is_f16(xdt) || g.opts.f16_math_f32_act),
    };
    let mut rec = g.recorder()?;
    let ws = w.gpu_storage();
    let mut n0 = 0;
    while n0 < n {
        let nc = rows.min(n - n0);
        let wb = Bind::range(ws, n0 as u64 * row_bytes, data_bytes(nc * k, wdt));
        let xb = Bind::whole(x.gpu_storage());
        if let Some(coop) = &coop {
            let bb = Bind::whole(bias.map_or(&g.dummy, |b| b.0));
            let cols = Cols {
                n: nc,
                ldo: n,
                n_off: n0,
            };
            record_coop(g, &mut rec, coop, m, cols, [xb, wb, bb, Bind::whole(&out)])?;
        } else if use_gemv {
            let groups = grid(g, nc.div_ceil(4))?;
            let params = GemvParams {
                n: nc as u32,
                k: k as u32,
                ldo: n as u32,
                n_off: n0 as u32,
                groups_x: groups[0],
                eps: fuse.map_or(0.0, |f| f.eps),
            };
            let bb = Bind::whole(bias.map_or(&g.dummy, |b| b.0));
            let [nw, nb, rb] = fused_binds(g, fuse);
            let binds = [xb, wb, bb, nw, nb, rb, Bind::whole(&out)];
            rec.dispatch(g, &gemv, &params, &binds, groups)?;
        } else {
            let mm = Mm {
                batch: 1,
                m,
                n: nc,
                k,
                b_trans: true,
                lda: k,
                ldb: k,
                ldc: n,
                n_off: n0,
                a_bs: 0,
                b_bs: 0,
                c_bs: 0,
            };
            record_matmul(g, &mut rec, xb, xdt, wb, wdt, bias, &out, odt, &mm)?;
        }
        n0 += nc;
    }
    Ok(out)
}

/// `linear` with a q8/q4 weight: qgemv.wgsl for 1..=4 rows of x, qmatmul.wgsl above. The
/// quants and the scales of one buffer (`GpuContext::upload_quant`) are two bindings, cut
/// into matching row chunks when the weight is larger than one binding.
#[allow(clippy::too_many_arguments)]
fn qlinear_into(
    g: &Ctx,
    x: &Tensor,
    w: &Tensor,
    format: QFormat,
    b: Option<&Tensor>,
    m: usize,
    k: usize,
    n: usize,
    odt: DType,
    fuse: Option<&Fuse>,
) -> Result<GpuStorage> {
    let xdt = x.dtype();
    let n_out = fuse.map_or(n, |f| f.out_cols(n));
    check_binding(g, "linear input", data_bytes(m * k, xdt))?;
    check_binding(g, "linear output", data_bytes(m * n_out, odt))?;
    if let Some(b) = b {
        check_binding(g, "linear bias", data_bytes(n, b.dtype()))?;
    }
    let q4 = format == QFormat::Q4;
    let q_row = format.row_bytes(k) as u64;
    let s_row = 2 * QFormat::row_blocks(k) as u64;
    let s_base = g.quant_scales_offset(n * q_row as usize) as u64;
    let rows = quant_chunk_rows(g, n, q_row, s_row)?;
    let out = g.alloc(data_bytes(m * n_out, odt), true)?;
    let bias = b.map(|b| (b.gpu_storage(), b.dtype()));
    let b_f16 = bias.is_some_and(|b| is_f16(b.1));
    let use_gemv = fuse.is_some() || (g.opts.gemv && m <= 4);
    let gemv = QGemvConsts {
        m: m as u32,
        q4,
        vec: g.opts.vec4 && k.is_multiple_of(32),
        has_bias: bias.is_some(),
        x_f16: is_f16(xdt),
        b_f16,
        out_f16: is_f16(odt),
        subgroups: g.subgroups,
        fusion: fuse.map_or(GemvFusion::NONE, |f| f.fusion),
    };
    let tile = MatmulTile::for_rows(m);
    let mm = QMatmulConsts {
        tile,
        q4,
        has_bias: bias.is_some(),
        a_vec: g.opts.vec4 && k.is_multiple_of(4),
        a_f16: is_f16(xdt),
        bias_f16: b_f16,
        out_f16: is_f16(odt),
    };
    let maxd = g.limits.max_compute_workgroups_per_dimension as usize;
    let row_tiles = m.div_ceil(tile.tm() as usize);
    if !use_gemv && (row_tiles > maxd || rows.div_ceil(64) > maxd) {
        return Err(Error::Limit {
            what: format!("workgroups of one quantized matmul dispatch ({m} x {n} output)"),
            needed: row_tiles.max(rows.div_ceil(64)) as u64,
            limit: maxd as u64,
        });
    }
    let mut rec = g.recorder()?;
    let ws = w.gpu_storage();
    let mut n0 = 0;
    while n0 < n {
        let nc = rows.min(n - n0);
        let xb = Bind::whole(x.gpu_storage());
        let qb = Bind::range(ws, n0 as u64 * q_row, nc as u64 * q_row);
        let sb = Bind::range(ws, s_base + n0 as u64 * s_row, nc as u64 * s_row);
        let bb = Bind::whole(bias.map_or(&g.dummy, |b| b.0));
        let ob = Bind::whole(&out);
        if use_gemv {
            let groups = grid(g, nc.div_ceil(4))?;
            let params = GemvParams {
                n: nc as u32,
                k: k as u32,
                ldo: n as u32,
                n_off: n0 as u32,
                groups_x: groups[0],
                eps: fuse.map_or(0.0, |f| f.eps),
            };
            let [nw, nb, rb] = fused_binds(g, fuse);
            let binds = [xb, qb, sb, bb, nw, nb, rb, ob];
            rec.dispatch(g, &gemv, &params, &binds, groups)?;
        } else {
            let params = QMatmulParams {
                m: m as u32,
                n: nc as u32,
                k: k as u32,
                ldc: n as u32,
                n_off: n0 as u32,
            };
            let groups = [nc.div_ceil(64) as u32, row_tiles as u32, 1];
            rec.dispatch(g, &mm, &params, &[xb, qb, sb, bb, ob], groups)?;
        }
        n0 += nc;
    }
    Ok(out)
}

fn norm(
    g: &Ctx,
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    eps: f32,
    rms: bool,
) -> Result<Tensor> {
    let dt = x.dtype();
    let d = *x.shape().last().unwrap_or(&1);
    let n = x.elem_count();
    if n == 0 || d == 0 {
        return Ok(tensor(g, x.shape().to_vec(), dt, g.zeros(n, dt)?));
    }
    let rows = n / d;
    check_binding(g, "norm input", data_bytes(n, dt))?;
    let out = with_out_dtype(g, dt, d.is_multiple_of(2) || rows == 1, n, |odt| {
        let out = g.alloc(data_bytes(n, odt), true)?;
        let kernel = NormConsts {
            wg: row_workgroup(d),
            rms,
            has_bias: b.is_some(),
            x_f16: is_f16(dt),
            w_f16: is_f16(w.dtype()),
            b_f16: b.is_some_and(|b| is_f16(b.dtype())),
            out_f16: is_f16(odt),
            subgroups: g.subgroups,
        };
        let groups = grid(g, rows)?;
        let params = NormParams {
            rows: rows as u32,
            d: d as u32,
            eps,
            groups_x: groups[0],
        };
        let bb = Bind::whole(b.map_or(&g.dummy, |b| b.gpu_storage()));
        let binds = [
            Bind::whole(x.gpu_storage()),
            Bind::whole(w.gpu_storage()),
            bb,
            Bind::whole(&out),
        ];
        g.recorder()?
            .dispatch(g, &kernel, &params, &binds, groups)?;
        Ok(out)
    })?;
    Ok(tensor(g, x.shape().to_vec(), dt, out))
}

/// Softmax rows of x viewed as [d0, d1, d2, n] with broadcast mask / bias strides.
struct Sm<'a> {
    rows: usize,
    n: usize,
    d1: usize,
    d2: usize,
    mask: Option<(&'a GpuStorage, [usize; 4])>,
    bias: Option<(&'a GpuStorage, [usize; 4])>,
    scale: f32,
    causal_off: Option<usize>,
    /// Log-softmax (softmax.wgsl's LOG variant; no mask, bias or causal masking).
    log: bool,
}

fn softmax_into(g: &Ctx, x: &GpuStorage, xdt: DType, sm: &Sm, odt: DType) -> Result<GpuStorage> {
    let out = g.alloc(data_bytes(sm.rows * sm.n, odt), true)?;
    let kernel = SoftmaxConsts {
        wg: row_workgroup(sm.n),
        has_mask: sm.mask.is_some(),
        has_bias: sm.bias.is_some(),
        x_f16: is_f16(xdt),
        out_f16: is_f16(odt),
        subgroups: g.subgroups,
        log: sm.log,
    };
    let groups = grid(g, sm.rows)?;
    let ms = sm.mask.map_or([0; 4], |m| m.1);
    let bs = sm.bias.map_or([0; 4], |b| b.1);
    let params = SoftmaxParams {
        rows: sm.rows as u32,
        n: sm.n as u32,
        d1: sm.d1 as u32,
        d2: sm.d2 as u32,
        ms0: ms[0] as u32,
        ms1: ms[1] as u32,
        ms2: ms[2] as u32,
        ms3: ms[3] as u32,
        bs0: bs[0] as u32,
        bs1: bs[1] as u32,
        bs2: bs[2] as u32,
        bs3: bs[3] as u32,
        scale: sm.scale,
        causal: sm.causal_off.is_some() as u32,
        causal_off: sm.causal_off.unwrap_or(0) as u32,
        groups_x: groups[0],
    };
    let binds = [
        Bind::whole(x),
        Bind::whole(sm.mask.map_or(&g.dummy, |m| m.0)),
        Bind::whole(sm.bias.map_or(&g.dummy, |b| b.0)),
        Bind::whole(&out),
    ];
    g.recorder()?
        .dispatch(g, &kernel, &params, &binds, groups)?;
    Ok(out)
}

/// Box copy: for o < rows, dst[o * dst_stride + dst_start + l] = src[o * src_stride +
/// src_start + l] for l < len (elements).
#[allow(clippy::too_many_arguments)]
fn box_copy(
    g: &Ctx,
    rec: &mut Recorder,
    src: &GpuStorage,
    dst: &GpuStorage,
    dt: DType,
    rows: usize,
    len: usize,
    dst_stride: usize,
    dst_start: usize,
    src_stride: usize,
    src_start: usize,
) -> Result<()> {
    if rows == 0 || len == 0 {
        return Ok(());
    }
    check_binding(g, "copy source", src.bytes)?;
    check_binding(g, "copy destination", dst.bytes)?;
    // An f16 invocation read-modify-writes one destination word of one row, so rows that
    // touch (len == dst_stride) and meet inside a word (an odd boundary) would race on it.
    // Even and odd rows never share a word: copy them in two dispatches, which are ordered.
    let odd_boundary = !dst_stride.is_multiple_of(2) || !dst_start.is_multiple_of(2);
    if is_f16(dt) && rows > 1 && len == dst_stride && odd_boundary {
        for parity in 0..2 {
            let (r, ds, ss) = (
                (rows - parity).div_ceil(2),
                dst_start + parity * dst_stride,
                src_start + parity * src_stride,
            );
            record_box(
                g,
                rec,
                src,
                dst,
                dt,
                r,
                len,
                2 * dst_stride,
                ds,
                2 * src_stride,
                ss,
            )?;
        }
        return Ok(());
    }
    record_box(
        g, rec, src, dst, dt, rows, len, dst_stride, dst_start, src_stride, src_start,
    )
}

/// One dispatch of [`box_copy`].
#[allow(clippy::too_many_arguments)]
fn record_box(
    g: &Ctx,
    rec: &mut Recorder,
    src: &GpuStorage,
    dst: &GpuStorage,
    dt: DType,
    rows: usize,
    len: usize,
    dst_stride: usize,
    dst_start: usize,
    src_stride: usize,
    src_start: usize,
) -> Result<()> {
    let units = if is_f16(dt) {
        len.div_ceil(2) + 1
    } else {
        len.div_ceil(2)
    };
    let groups = grid(g, (rows * units).div_ceil(256))?;
    let kernel = CopyConsts {
        mode: CopyMode::Box,
        f16: is_f16(dt),
    };
    let params = CopyParams {
        units: units as u32,
        rows: rows as u32,
        len: len as u32,
        a0: dst_stride as u32,
        a1: dst_start as u32,
        a2: src_stride as u32,
        a3: src_start as u32,
        groups_x: groups[0],
    };
    rec.dispatch(
        g,
        &kernel,
        &params,
        &[Bind::whole(src), Bind::whole(dst)],
        groups,
    )
}

/// Gather copies that write every output element (permute, im2col).
fn gather_copy(
    g: &Ctx,
    x: &Tensor,
    mode: CopyMode,
    a: [usize; 4],
    out_shape: Vec<usize>,
) -> Result<Tensor> {
    let dt = x.dtype();
    let n = x.elem_count();
    let out = g.alloc(data_bytes(n, dt), true)?;
    if n > 0 {
        check_binding(g, "copy source", data_bytes(n, dt))?;
        let groups = grid(g, n.div_ceil(2).div_ceil(256))?;
        let kernel = CopyConsts {
            mode,
            f16: is_f16(dt),
        };
        let params = CopyParams {
            units: n as u32,
            rows: 0,
            len: 0,
            a0: a[0] as u32,
            a1: a[1] as u32,
            a2: a[2] as u32,
            a3: a[3] as u32,
            groups_x: groups[0],
        };
        g.recorder()?.dispatch(
            g,
            &kernel,
            &params,
            &[Bind::whole(x.gpu_storage()), Bind::whole(&out)],
            groups,
        )?;
    }
    Ok(tensor(g, out_shape, dt, out))
}
