//! CPU backend: validated ops (see `ops.rs`) mapped onto `blip2-kernels` slice kernels.
//! F16 tensors are widened to f32 for compute and narrowed on output; matmul reads f16
//! weights directly (converted while packing), which is what makes f16 storage pay off.

use std::borrow::Cow;

use blip2_kernels as k;
use half::f16;
use rayon::prelude::*;

use crate::desc::{AttnDims, AttnOpts, Binary, MatmulDims, Unary, split_at_axis};
use crate::host::HostVec;
use crate::tensor::CpuStorage;
use crate::{DType, Error, Result, Tensor};

/// f32 view of a tensor's data (borrowed when it is already f32).
fn f32_data(t: &Tensor) -> Cow<'_, [f32]> {
    match t.cpu_storage() {
        CpuStorage::F32(v) => Cow::Borrowed(v.as_slice()),
        CpuStorage::F16(v) => {
            let mut out = vec![0f32; v.len()];
            k::f16_to_f32(v, &mut out);
            Cow::Owned(out)
        }
        // `ops` admits quantized tensors only as linear weights; dequantize defensively.
        CpuStorage::Quant(q) => Cow::Owned(q.dequantize()),
        CpuStorage::Bf16(b) => Cow::Owned(b.unpack()),
        CpuStorage::Panels(p) => Cow::Owned(p.unpack()),
    }
}

fn b_slice(t: &Tensor) -> k::BSlice<'_> {
    match t.cpu_storage() {
        CpuStorage::F32(v) => k::BSlice::F32(v),
        CpuStorage::F16(v) => k::BSlice::F16(v),
        CpuStorage::Quant(_) | CpuStorage::Bf16(_) | CpuStorage::Panels(_) => {
            unreachable!(
                "ops::check_float keeps packed tensors out of matmul, and `matmul` unpacks panels"
            )
        }
    }
}

/// Wraps f32 results in a tensor of `dtype`.
fn output(data: Vec<f32>, shape: Vec<usize>, dtype: DType) -> Result<Tensor> {
    Ok(match dtype {
        DType::F32 => Tensor::from_cpu(shape, CpuStorage::F32(data)),
        DType::F16 => {
            let mut h = vec![f16::ZERO; data.len()];
            k::f32_to_f16(&data, &mut h);
            Tensor::from_cpu(shape, CpuStorage::F16(h.into()))
        }
        DType::Q8 | DType::Q4 | DType::BF16 => {
            return Tensor::from_slice(&data, &shape, dtype, &crate::Device::Cpu);
        }
    })
}

/// What a CPU linear does to its product in place: `act`, then `+ residual` (an f32 tensor
/// of the output's shape).
#[derive(Default)]
pub(crate) struct Epilogue<'a> {
    pub act: Option<Unary>,
    pub residual: Option<&'a Tensor>,
}

pub(crate) fn linear(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    epi: &Epilogue,
    out_shape: Vec<usize>,
) -> Result<Tensor> {
    let kdim = w.dim(1);
    let n = w.dim(0);
    // Rows = every dimension but the last (x's last is K; `ops::linear` checked rank >= 1).
    let m: usize = x.shape()[..x.rank() - 1].iter().product();
    let xa = f32_data(x);
    let bias = b.map(f32_data);
    let mut c = vec![0f32; m * n];
    if m > 0 && n > 0 {
        match w.cpu_storage() {
            CpuStorage::Quant(q) => k::matmul_q(&xa, &q.matrix(), bias.as_deref(), &mut c, m),
            CpuStorage::Bf16(p) => k::matmul_bf16(&xa, &p.matrix(), bias.as_deref(), &mut c, m),
            CpuStorage::Panels(p) => k::matmul_packed(&xa, &p.matrix(), bias.as_deref(), &mut c, m),
            _ => k::matmul(&xa, b_slice(w), bias.as_deref(), &mut c, m, kdim, n, true),
        }
    }
    if epi.act.is_some() || epi.residual.is_some() {
        let r = epi.residual.map(f32_data);
        // The chunks of `unary` (an activation's vector tail lands where it would there).
        c.par_chunks_mut(CHUNK).enumerate().for_each(|(i, ch)| {
            if let Some(f) = epi.act {
                unary_inplace(f, ch);
            }
            if let Some(r) = r.as_deref() {
                k::add_inplace(ch, &r[i * CHUNK..][..ch.len()]);
            }
        });
    }
    output(c, out_shape, x.dtype())
}

pub(crate) fn matmul(
    a: &Tensor,
    b: &Tensor,
    d: &MatmulDims,
    out_shape: Vec<usize>,
) -> Result<Tensor> {
    let aa = f32_data(a);
    let b = b.plain();
    let b = b.as_ref();
    let mut c = vec![0f32; d.batch * d.m * d.n];
    if d.batch > 0 && d.m > 0 && d.n > 0 {
        if d.b_shared {
            // One weight for every batch: a single big matmul over batch*m rows.
            k::matmul(
                &aa,
                b_slice(b),
                None,
                &mut c,
                d.batch * d.m,
                d.k,
                d.n,
                d.b_trans,
            );
        } else {
            k::batched_matmul(&aa, b_slice(b), &mut c, d.batch, d.m, d.k, d.n, d.b_trans);
        }
    }
    output(c, out_shape, a.dtype())
}

pub(crate) fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f32) -> Result<Tensor> {
    norm(x, w, Some(b), eps, false)
}

pub(crate) fn rms_norm(x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
    norm(x, w, None, eps, true)
}

fn norm(x: &Tensor, w: &Tensor, b: Option<&Tensor>, eps: f32, rms: bool) -> Result<Tensor> {
    let cols = w.dim(0);
    let xa = f32_data(x);
    let wa = f32_data(w);
    let mut out = vec![0f32; xa.len()];
    if let Some(rows) = xa.len().checked_div(cols) {
        // Rows are independent: split into row blocks across threads.
        let rows_per = rows.div_ceil(rayon::current_num_threads()).max(1);
        let chunk = rows_per * cols;
        let ba = b.map(f32_data);
        out.par_chunks_mut(chunk)
            .zip(xa.par_chunks(chunk))
            .for_each(|(o, xi)| {
                if rms {
                    k::rms_norm(xi, &wa, o, cols, eps);
                } else {
                    k::layer_norm(xi, &wa, ba.as_deref().unwrap_or(&[]), o, cols, eps);
                }
            });
    }
    output(out, x.shape().to_vec(), x.dtype())
}

pub(crate) fn softmax(
    x: &Tensor,
    mask: Option<&Tensor>,
    strides: Option<&[usize]>,
) -> Result<Tensor> {
    let cols = *x.shape().last().unwrap_or(&1);
    let mut data = f32_data(x).into_owned();
    let md = mask.map(f32_data);
    let shape = x.shape().to_vec();
    if cols > 0 {
        data.par_chunks_mut(cols).enumerate().for_each(|(r, row)| {
            if let (Some(m), Some(st)) = (md.as_deref(), strides) {
                // Row r -> multi-index over the leading dims -> mask offset via strides.
                let mut rem = r;
                let mut off = 0;
                for d in (0..shape.len() - 1).rev() {
                    off += (rem % shape[d]) * st[d];
                    rem /= shape[d];
                }
                for (v, mv) in row.iter_mut().zip(&m[off..off + cols]) {
                    *v += mv;
                }
            }
            k::softmax_inplace(row);
        });
    }
    output(data, shape, x.dtype())
}

pub(crate) fn log_softmax(x: &Tensor) -> Result<Tensor> {
    let cols = *x.shape().last().unwrap_or(&1);
    let mut data = f32_data(x).into_owned();
    if cols > 0 {
        data.par_chunks_mut(cols).for_each(k::log_softmax_inplace);
    }
    output(data, x.shape().to_vec(), DType::F32)
}

pub(crate) fn unary(x: &Tensor, f: Unary) -> Result<Tensor> {
    let mut data = f32_data(x).into_owned();
    data.par_chunks_mut(CHUNK).for_each(|c| unary_inplace(f, c));
    output(data, x.shape().to_vec(), x.dtype())
}

fn unary_inplace(f: Unary, c: &mut [f32]) {
    match f {
        Unary::Gelu => k::gelu_erf_inplace(c),
        Unary::GeluTanh => k::gelu_tanh_inplace(c),
        Unary::Relu => k::relu_inplace(c),
        Unary::Silu => k::silu_inplace(c),
    }
}

/// Elements per parallel work item of the element-wise ops.
const CHUNK: usize = 16384;

pub(crate) fn binary(a: &Tensor, b: &Tensor, f: Binary) -> Result<Tensor> {
    let aa = f32_data(a);
    let ba = f32_data(b);
    let mut out = vec![0f32; aa.len()];
    let bl = ba.len();
    // Work items of about CHUNK elements whatever b's length: a whole number of b periods
    // when b is short (bias rows), slices of b when it is long (residual adds).
    let per = if bl >= CHUNK {
        CHUNK
    } else {
        bl * (CHUNK / bl)
    };
    out.par_chunks_mut(per)
        .zip(aa.par_chunks(per))
        .enumerate()
        .for_each(|(i, (o, ai))| {
            let (mut pos, mut off) = (0, (i * per) % bl);
            while pos < o.len() {
                let n = (bl - off).min(o.len() - pos);
                let (x, y, z) = (&ai[pos..pos + n], &ba[off..off + n], &mut o[pos..pos + n]);
                match f {
                    Binary::Add => k::add(x, y, z),
                    Binary::Mul => k::mul(x, y, z),
                }
                pos += n;
                off = 0;
            }
        });
    output(out, a.shape().to_vec(), a.dtype())
}

pub(crate) fn scale(x: &Tensor, s: f32) -> Result<Tensor> {
    let mut data = f32_data(x).into_owned();
    data.par_chunks_mut(CHUNK)
        .for_each(|c| k::scale_inplace(c, s));
    output(data, x.shape().to_vec(), x.dtype())
}

pub(crate) fn embedding(table: &Tensor, ids: &[u32], dtype: DType) -> Result<Tensor> {
    let d = table.dim(1);
    let mut out = vec![0f32; ids.len() * d];
    for (o, &id) in out.chunks_mut(d.max(1)).zip(ids) {
        let r = id as usize * d..(id as usize + 1) * d;
        match table.cpu_storage() {
            CpuStorage::F32(v) => o.copy_from_slice(&v[r]),
            CpuStorage::F16(v) => k::f16_to_f32(&v[r], o),
            CpuStorage::Quant(q) => k::dequantize_matrix_row(&q.matrix(), id as usize, o),
            CpuStorage::Bf16(b) => k::unpack_bf16_row(&b.matrix(), id as usize, o),
            CpuStorage::Panels(p) => k::unpack_packed_row(&p.matrix(), id as usize, o),
        }
    }
    output(out, vec![ids.len(), d], dtype)
}

/// Copies raw storage without dtype conversion (concat/narrow/permute keep the dtype).
macro_rules! with_storage {
    ($t:expr, $v:ident => $body:expr) => {
        match $t.plain().cpu_storage() {
            CpuStorage::F32($v) => CpuStorage::F32($body),
            CpuStorage::F16($v) => CpuStorage::F16(HostVec::Owned($body)),
            CpuStorage::Quant(_) | CpuStorage::Bf16(_) | CpuStorage::Panels(_) => {
                unreachable!("ops::check_float admits packed tensors only as linear weights")
            }
        }
    };
}

pub(crate) fn gather_rows(x: &Tensor, rows: &[usize], out_shape: Vec<usize>) -> Result<Tensor> {
    let inner: usize = x.shape()[1..].iter().product();
    let storage = with_storage!(x, v => {
        let mut out = Vec::with_capacity(rows.len() * inner);
        for &r in rows {
            out.extend_from_slice(&v[r * inner..(r + 1) * inner]);
        }
        out
    });
    Ok(Tensor::from_cpu(out_shape, storage))
}

pub(crate) fn concat(ts: &[&Tensor], axis: usize, out_shape: Vec<usize>) -> Result<Tensor> {
    let (outer, _, inner) = split_at_axis(&out_shape, axis);
    let total = out_shape.iter().product();
    let plain: Vec<_> = ts.iter().map(|t| t.plain()).collect();
    let ts: Vec<&Tensor> = plain.iter().map(|t| t.as_ref()).collect();
    let ts = &ts[..];
    let storage = match ts[0].cpu_storage() {
        CpuStorage::F32(_) => {
            CpuStorage::F32(concat_blocks(ts, axis, outer, inner, total, |s| match s {
                CpuStorage::F32(v) => Some(&v[..]),
                _ => None,
            })?)
        }
        CpuStorage::F16(_) => CpuStorage::F16(
            concat_blocks(ts, axis, outer, inner, total, |s| match s {
                CpuStorage::F16(v) => Some(&v[..]),
                _ => None,
            })?
            .into(),
        ),
        CpuStorage::Quant(_) | CpuStorage::Bf16(_) | CpuStorage::Panels(_) => {
            unreachable!("ops::check_float admits packed tensors only as linear weights")
        }
    };
    Ok(Tensor::from_cpu(out_shape, storage))
}

/// `get` returns `None` for an input whose dtype differs from the first one's.
fn concat_blocks<T: Copy>(
    ts: &[&Tensor],
    axis: usize,
    outer: usize,
    inner: usize,
    total: usize,
    get: impl Fn(&CpuStorage) -> Option<&[T]>,
) -> Result<Vec<T>> {
    let mut parts = Vec::with_capacity(ts.len());
    for t in ts {
        let v = get(t.cpu_storage()).ok_or(Error::DType {
            op: "concat",
            operand: "inputs",
            expected: "the first input's dtype",
            found: t.dtype(),
        })?;
        parts.push((v, t.dim(axis) * inner));
    }
    let mut out = Vec::with_capacity(total);
    for o in 0..outer {
        for (v, span) in &parts {
            out.extend_from_slice(&v[o * span..(o + 1) * span]);
        }
    }
    Ok(out)
}

pub(crate) fn narrow(
    x: &Tensor,
    axis: usize,
    start: usize,
    out_shape: Vec<usize>,
) -> Result<Tensor> {
    let (outer, dim, inner) = split_at_axis(x.shape(), axis);
    let len = out_shape[axis];
    let storage = with_storage!(x, v => {
        let mut out = Vec::with_capacity(outer * len * inner);
        for o in 0..outer {
            let base = (o * dim + start) * inner;
            out.extend_from_slice(&v[base..base + len * inner]);
        }
        out
    });
    Ok(Tensor::from_cpu(out_shape, storage))
}

pub(crate) fn write_at(dst: &mut Tensor, src: &Tensor, axis: usize, offset: usize) -> Result<()> {
    let (outer, dim, inner) = split_at_axis(dst.shape(), axis);
    let len = src.dim(axis);
    let span = len * inner;
    let found = src.dtype();
    let src = src.plain();
    match (dst.cpu_storage_mut(), src.cpu_storage()) {
        (CpuStorage::F32(d), CpuStorage::F32(s)) => {
            copy_blocks(d, s, outer, dim, inner, offset, span)
        }
        (CpuStorage::F16(d), CpuStorage::F16(s)) => {
            copy_blocks(d.to_mut(), s, outer, dim, inner, offset, span)
        }
        _ => {
            return Err(Error::DType {
                op: "write_at",
                operand: "src",
                expected: "dst's dtype",
                found,
            });
        }
    }
    Ok(())
}

fn copy_blocks<T: Copy>(
    d: &mut [T],
    s: &[T],
    outer: usize,
    dim: usize,
    inner: usize,
    offset: usize,
    span: usize,
) {
    for o in 0..outer {
        let base = (o * dim + offset) * inner;
        d[base..base + span].copy_from_slice(&s[o * span..(o + 1) * span]);
    }
}

pub(crate) fn permute_0213(x: &Tensor) -> Result<Tensor> {
    let (a, b, c, d) = (x.dim(0), x.dim(1), x.dim(2), x.dim(3));
    let storage = with_storage!(x, v => {
        let mut out = Vec::with_capacity(v.len());
        for i in 0..a {
            for kk in 0..c {
                for j in 0..b {
                    let base = ((i * b + j) * c + kk) * d;
                    out.extend_from_slice(&v[base..base + d]);
                }
            }
        }
        out
    });
    Ok(Tensor::from_cpu(vec![a, c, b, d], storage))
}

pub(crate) fn attention(
    q: &Tensor,
    kt: &Tensor,
    vt: &Tensor,
    opts: &AttnOpts,
    d: &AttnDims,
) -> Result<Tensor> {
    let qa = f32_data(q);
    // An f16 KV cache is widened only where it is filled (lk of lk_cap rows per slab), not
    // whole on every decode step; f32 caches are read in place.
    let f16_kv = kt.dtype() == DType::F16 || vt.dtype() == DType::F16;
    let slabs = d.batch * d.heads;
    let (ka, va, lk_cap) = if f16_kv {
        (
            filled_rows_f32(kt, slabs, d.lk, d.lk_cap, d.head_dim),
            filled_rows_f32(vt, slabs, d.lk, d.lk_cap, d.head_dim),
            d.lk,
        )
    } else {
        (f32_data(kt), f32_data(vt), d.lk_cap)
    };
    let mask = opts.mask.map(f32_data);
    let bias = opts.bias.map(f32_data);
    let mut out = vec![0f32; qa.len()];
    let p = k::AttnParams {
        lk_cap,
        ..attn_params(opts, d)
    };
    k::attention(
        &qa,
        &ka,
        &va,
        mask.as_deref().map(|m| (m, d.mask_rows)),
        bias.as_deref(),
        &mut out,
        &p,
    );
    output(out, q.shape().to_vec(), q.dtype())
}

pub(crate) fn self_attention(qkv: &Tensor, opts: &AttnOpts, d: &AttnDims) -> Result<Tensor> {
    let qa = f32_data(qkv);
    let mask = opts.mask.map(f32_data);
    let bias = opts.bias.map(f32_data);
    let p = attn_params(opts, d);
    let mut out = vec![0f32; d.batch * d.lq * d.heads * d.head_dim];
    k::attention_in(
        k::isa(),
        0,
        &qa,
        &qa,
        &qa,
        mask.as_deref().map(|m| (m, d.mask_rows)),
        bias.as_deref(),
        &mut out,
        &p,
        &k::AttnLayout::fused_qkv(&p),
    );
    output(out, vec![d.batch, d.lq, d.heads * d.head_dim], qkv.dtype())
}

fn attn_params(opts: &AttnOpts, d: &AttnDims) -> k::AttnParams {
    k::AttnParams {
        batch: d.batch,
        heads: d.heads,
        lq: d.lq,
        lk: d.lk,
        lk_cap: d.lk_cap,
        head_dim: d.head_dim,
        scale: opts.scale,
        causal_offset: opts.causal.then(|| d.lk - d.lq),
    }
}

/// The first `lk` of `lk_cap` rows (width `dh`) of each of `slabs` slabs, as compact f32.
fn filled_rows_f32(
    t: &Tensor,
    slabs: usize,
    lk: usize,
    lk_cap: usize,
    dh: usize,
) -> Cow<'_, [f32]> {
    let mut out = vec![0f32; slabs * lk * dh];
    let t = t.plain();
    for (s, o) in out.chunks_mut((lk * dh).max(1)).enumerate().take(slabs) {
        let src = s * lk_cap * dh..(s * lk_cap + lk) * dh;
        match t.cpu_storage() {
            CpuStorage::F32(v) => o.copy_from_slice(&v[src]),
            CpuStorage::F16(v) => k::f16_to_f32(&v[src], o),
            CpuStorage::Quant(_) | CpuStorage::Bf16(_) | CpuStorage::Panels(_) => {
                unreachable!("ops::check_float admits packed tensors only as linear weights")
            }
        }
    }
    Cow::Owned(out)
}

pub(crate) fn im2col(pixels: &Tensor, p: usize) -> Result<Tensor> {
    let (b, c, h, w) = (pixels.dim(0), pixels.dim(1), pixels.dim(2), pixels.dim(3));
    let px = f32_data(pixels);
    let np = (h / p) * (w / p);
    let row = c * p * p;
    let mut out = vec![0f32; b * np * row];
    out.par_chunks_mut((np * row).max(1))
        .enumerate()
        .for_each(|(i, o)| {
            k::im2col_patches(&px[i * c * h * w..(i + 1) * c * h * w], c, h, w, p, o)
        });
    output(out, vec![b, np, row], pixels.dtype())
}

pub(crate) fn cast(x: &Tensor, dtype: DType) -> Result<Tensor> {
    output(f32_data(x).into_owned(), x.shape().to_vec(), dtype)
}
