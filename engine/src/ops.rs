//! Ops: shape/dtype/device guards and shape inference here, then the backend kernel.
//!
//! Dtype rules: activations (`x`, `a`, `q`...) may be F32 or F16 and the output has the
//! activation's dtype. Parameters (linear weights and biases, norm weights, the second
//! operand of add/mul, embedding tables) may have either dtype independently; backends
//! convert as they read. Masks and attention biases are F32. All arithmetic is f32.

pub use crate::desc::{AttnDims, AttnOpts, Binary, LinearFusion, MatmulDims, NormIn, Unary};
use crate::{DType, Device, Error, Result, Tensor, cpu, gpu};

fn check_device(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.device().same(b.device()) {
        Ok(())
    } else {
        Err(Error::DeviceMismatch {
            op,
            a: format!("{:?}", a.device()),
            b: format!("{:?}", b.device()),
        })
    }
}

fn check_f32(op: &'static str, operand: &'static str, t: &Tensor) -> Result<()> {
    if t.dtype() != DType::F32 {
        return Err(Error::DType {
            op,
            operand,
            expected: "f32",
            found: t.dtype(),
        });
    }
    Ok(())
}

/// Packed tensors (Q8, Q4, BF16) are linear weights and embedding tables only: every other
/// operand must be f32 or f16.
fn check_float(op: &'static str, operands: &[(&'static str, &Tensor)]) -> Result<()> {
    for &(operand, t) in operands {
        if t.dtype().is_packed() {
            return Err(Error::DType {
                op,
                operand,
                expected: "f32 or f16 (packed q8/q4/bf16 tensors are linear weights and embedding tables only)",
                found: t.dtype(),
            });
        }
    }
    Ok(())
}

fn check_rank_min(op: &'static str, operand: &str, t: &Tensor, min: usize) -> Result<()> {
    if t.rank() < min {
        return Err(Error::shape(
            op,
            format!(
                "{operand} must have rank >= {min}, found shape {:?}",
                t.shape()
            ),
        ));
    }
    Ok(())
}

fn check_shape(op: &'static str, operand: &str, t: &Tensor, expected: &[usize]) -> Result<()> {
    if t.shape() != expected {
        return Err(Error::shape(
            op,
            format!(
                "{operand}: expected shape {expected:?}, found {:?}",
                t.shape()
            ),
        ));
    }
    Ok(())
}

fn last(t: &Tensor) -> usize {
    *t.shape().last().unwrap_or(&1)
}

/// `x · wᵀ + b`: x `[.., K]`, w `[N, K]` (nn.Linear layout), b `[N]` -> `[.., N]`.
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let out_shape = check_linear(x, w, b)?;
    match x.device() {
        Device::Cpu => cpu::linear(x, w, b, &cpu::Epilogue::default(), out_shape),
        Device::Gpu(g) => gpu::ops::linear(g, x, w, b, out_shape),
    }
}

/// [`linear`]'s operand checks; its output shape.
fn check_linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Vec<usize>> {
    const OP: &str = "linear";
    check_float(OP, &[("x", x)])?;
    if let Some(b) = b {
        check_float(OP, &[("bias", b)])?;
    }
    check_device(OP, x, w)?;
    check_rank_min(OP, "x", x, 1)?;
    if w.rank() != 2 || w.dim(1) != last(x) {
        return Err(Error::shape(
            OP,
            format!(
                "weight: expected [N, {}], found {:?} (x is {:?})",
                last(x),
                w.shape(),
                x.shape()
            ),
        ));
    }
    if let Some(b) = b {
        check_device(OP, x, b)?;
        check_shape(OP, "bias", b, &[w.dim(0)])?;
    }
    let mut out_shape = x.shape().to_vec();
    if let Some(n) = out_shape.last_mut() {
        *n = w.dim(0);
    }
    Ok(out_shape)
}

/// Batched matmul: a `[.., M, K]` · b `[.., K, N]` (or b `[.., N, K]` when `b_trans`).
/// Leading (batch) dims must be equal, or b may be rank 2 and shared by every batch.
pub fn matmul(a: &Tensor, b: &Tensor, b_trans: bool) -> Result<Tensor> {
    const OP: &str = "matmul";
    check_float(OP, &[("a", a), ("b", b)])?;
    check_device(OP, a, b)?;
    check_rank_min(OP, "a", a, 2)?;
    check_rank_min(OP, "b", b, 2)?;
    let (m, k) = (a.dim(a.rank() - 2), a.dim(a.rank() - 1));
    let (bk, n) = if b_trans {
        (b.dim(b.rank() - 1), b.dim(b.rank() - 2))
    } else {
        (b.dim(b.rank() - 2), b.dim(b.rank() - 1))
    };
    if bk != k {
        return Err(Error::shape(
            OP,
            format!(
                "inner dims differ: a {:?}, b {:?} (b_trans={b_trans})",
                a.shape(),
                b.shape()
            ),
        ));
    }
    let a_batch = &a.shape()[..a.rank() - 2];
    let b_batch = &b.shape()[..b.rank() - 2];
    if b.rank() != 2 && a_batch != b_batch {
        return Err(Error::shape(
            OP,
            format!("batch dims differ: a {:?}, b {:?}", a.shape(), b.shape()),
        ));
    }
    let batch: usize = a_batch.iter().product();
    let mut out_shape = a_batch.to_vec();
    out_shape.extend([m, n]);
    let dims = MatmulDims {
        batch,
        m,
        k,
        n,
        b_trans,
        b_shared: b.rank() == 2 && batch != 1,
    };
    match a.device() {
        Device::Cpu => cpu::matmul(a, b, &dims, out_shape),
        Device::Gpu(g) => gpu::ops::matmul(g, a, b, &dims, out_shape),
    }
}

fn check_norm_param(op: &'static str, operand: &str, x: &Tensor, p: &Tensor) -> Result<()> {
    check_device(op, x, p)?;
    check_shape(op, operand, p, &[last(x)])
}

/// LayerNorm over the last dim: (x - mean) / sqrt(var + eps) * w + b.
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f32) -> Result<Tensor> {
    const OP: &str = "layer_norm";
    check_float(OP, &[("x", x), ("weight", w), ("bias", b)])?;
    check_rank_min(OP, "x", x, 1)?;
    check_norm_param(OP, "weight", x, w)?;
    check_norm_param(OP, "bias", x, b)?;
    match x.device() {
        Device::Cpu => cpu::layer_norm(x, w, b, eps),
        Device::Gpu(g) => gpu::ops::layer_norm(g, x, w, b, eps),
    }
}

/// RMSNorm over the last dim as T5 does it: x * rsqrt(mean(x²) + eps) * w (variance in f32).
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
    const OP: &str = "rms_norm";
    check_float(OP, &[("x", x), ("weight", w)])?;
    check_rank_min(OP, "x", x, 1)?;
    check_norm_param(OP, "weight", x, w)?;
    match x.device() {
        Device::Cpu => cpu::rms_norm(x, w, eps),
        Device::Gpu(g) => gpu::ops::rms_norm(g, x, w, eps),
    }
}

/// Element strides (0 where broadcast) of `mask` for each dim of `x`, numpy-style
/// right-aligned broadcasting; the last dims must be equal.
fn broadcast_strides(op: &'static str, x: &Tensor, mask: &Tensor) -> Result<Vec<usize>> {
    let (xr, mr) = (x.rank(), mask.rank());
    let bad = || {
        Error::shape(
            op,
            format!(
                "mask {:?} does not broadcast to {:?}",
                mask.shape(),
                x.shape()
            ),
        )
    };
    if mr > xr || mr == 0 || last(mask) != last(x) {
        return Err(bad());
    }
    let mut strides = vec![0usize; xr];
    let mut s = 1usize;
    for i in (0..xr).rev() {
        let md = if i + mr >= xr {
            mask.dim(i + mr - xr)
        } else {
            1
        };
        if md == x.dim(i) {
            strides[i] = if md == 1 { 0 } else { s };
        } else if md != 1 {
            return Err(bad());
        }
        s *= md;
    }
    Ok(strides)
}

/// Softmax over the last dim, after adding an optional f32 `mask` that broadcasts to `x`
/// (e.g. `[B,1,1,L]` padding or `[L,L]` causal masks against `[B,H,L,L]` scores).
/// Rows whose entries are all masked with `f32::MIN` give uniform weights, not NaN.
pub fn softmax(x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    const OP: &str = "softmax";
    check_float(OP, &[("x", x)])?;
    check_rank_min(OP, "x", x, 1)?;
    let strides = match mask {
        Some(m) => {
            check_device(OP, x, m)?;
            check_f32(OP, "mask", m)?;
            Some(broadcast_strides(OP, x, m)?)
        }
        None => None,
    };
    match x.device() {
        Device::Cpu => cpu::softmax(x, mask, strides.as_deref()),
        Device::Gpu(g) => gpu::ops::softmax(g, x, mask, strides.as_deref()),
    }
}

/// Log-softmax over the last dim into an f32 tensor (f32 or f16 input), as
/// `torch.log_softmax(x.float(), -1)`: v − max − ln Σ exp(v − max). A row holding any NaN or
/// ±∞ is copied unchanged. The CPU sums each row's exps in f64 ([`log_softmax_row`],
/// bit-equal to it); the GPU reduces in f32 over a workgroup, so its ln Σ differs from the
/// CPU's by rounding (a few ulps, the same for every entry of a row).
pub fn log_softmax(x: &Tensor) -> Result<Tensor> {
    const OP: &str = "log_softmax";
    check_float(OP, &[("x", x)])?;
    check_rank_min(OP, "x", x, 1)?;
    match x.device() {
        Device::Cpu => cpu::log_softmax(x),
        Device::Gpu(g) => gpu::ops::log_softmax(g, x),
    }
}

/// [`log_softmax`] of one host row in place (the CPU op's arithmetic).
pub fn log_softmax_row(row: &mut [f32]) {
    blip2_kernels::log_softmax_inplace(row)
}

pub fn unary(x: &Tensor, f: Unary) -> Result<Tensor> {
    check_float("unary", &[("x", x)])?;
    match x.device() {
        Device::Cpu => cpu::unary(x, f),
        Device::Gpu(g) => gpu::ops::unary(g, x, f),
    }
}

pub fn gelu(x: &Tensor) -> Result<Tensor> {
    unary(x, Unary::Gelu)
}

pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    unary(x, Unary::GeluTanh)
}

pub fn relu(x: &Tensor) -> Result<Tensor> {
    unary(x, Unary::Relu)
}

pub fn silu(x: &Tensor) -> Result<Tensor> {
    unary(x, Unary::Silu)
}

/// `a ∘ b` where b's shape equals a's or a suffix of it (b repeats over a's leading dims:
/// a bias row `[C]`, position embeddings `[L, C]` against `[B, L, C]`).
pub fn binary(a: &Tensor, b: &Tensor, f: Binary) -> Result<Tensor> {
    const OP: &str = "add/mul";
    check_float(OP, &[("a", a), ("b", b)])?;
    check_device(OP, a, b)?;
    if b.rank() > a.rank() || a.shape()[a.rank() - b.rank()..] != *b.shape() || b.elem_count() == 0
    {
        return Err(Error::shape(
            OP,
            format!("b {:?} is not a suffix of a {:?}", b.shape(), a.shape()),
        ));
    }
    match a.device() {
        Device::Cpu => cpu::binary(a, b, f),
        Device::Gpu(g) => gpu::ops::binary(g, a, b, f),
    }
}

pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(a, b, Binary::Add)
}

pub fn mul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(a, b, Binary::Mul)
}

/// `x * s`.
pub fn scale(x: &Tensor, s: f32) -> Result<Tensor> {
    check_float("scale", &[("x", x)])?;
    match x.device() {
        Device::Cpu => cpu::scale(x, s),
        Device::Gpu(g) => gpu::ops::scale(g, x, s),
    }
}

/// Rows of `table` `[V, D]` picked by `ids` -> `[ids.len(), D]` in `dtype`.
pub fn embedding(table: &Tensor, ids: &[u32], dtype: DType) -> Result<Tensor> {
    const OP: &str = "embedding";
    // A quantized table (a tied embedding / lm_head) is dequantized row by row; the output
    // is always float.
    if dtype.is_packed() {
        return Err(Error::DType {
            op: OP,
            operand: "output",
            expected: "f32 or f16",
            found: dtype,
        });
    }
    if table.rank() != 2 {
        return Err(Error::shape(
            OP,
            format!("table must be [V, D], found {:?}", table.shape()),
        ));
    }
    if let Some(&bad) = ids.iter().find(|&&i| i as usize >= table.dim(0)) {
        return Err(Error::shape(
            OP,
            format!("id {bad} out of range for a table of {} rows", table.dim(0)),
        ));
    }
    match table.device() {
        Device::Cpu => cpu::embedding(table, ids, dtype),
        Device::Gpu(g) => gpu::ops::embedding(g, table, ids, dtype),
    }
}

/// Rows of `x` along axis 0 in the order of `rows`, repeats allowed (beam search expanding
/// one hypothesis into several) -> `[rows.len(), x.shape()[1..]]` in x's dtype, bits as they
/// are. The identity selection returns a clone sharing x's storage.
pub fn gather_rows(x: &Tensor, rows: &[usize]) -> Result<Tensor> {
    const OP: &str = "gather_rows";
    check_float(OP, &[("x", x)])?;
    check_rank_min(OP, "x", x, 1)?;
    let n = x.dim(0);
    if let Some((pos, &bad)) = rows.iter().enumerate().find(|&(_, &r)| r >= n) {
        return Err(Error::shape(
            OP,
            format!(
                "row index {bad} (at position {pos}) out of range for x {:?} with {n} rows",
                x.shape()
            ),
        ));
    }
    if rows.len() == n && rows.iter().enumerate().all(|(i, &r)| i == r) {
        return Ok(x.clone());
    }
    let mut out_shape = x.shape().to_vec();
    out_shape[0] = rows.len();
    // A long selection of wide rows could overflow the element count.
    if out_shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .is_none()
    {
        return Err(Error::shape(
            OP,
            format!(
                "{} rows of {:?} overflow usize",
                rows.len(),
                &x.shape()[1..]
            ),
        ));
    }
    match x.device() {
        Device::Cpu => cpu::gather_rows(x, rows, out_shape),
        Device::Gpu(g) => gpu::ops::gather_rows(g, x, rows, out_shape),
    }
}

fn check_axis(op: &'static str, t: &Tensor, axis: usize) -> Result<()> {
    if axis >= t.rank() {
        return Err(Error::shape(
            op,
            format!("axis {axis} out of range for shape {:?}", t.shape()),
        ));
    }
    Ok(())
}

/// Concatenation along `axis`; all other dims and the dtype must agree.
pub fn concat(ts: &[&Tensor], axis: usize) -> Result<Tensor> {
    const OP: &str = "concat";
    let first = ts
        .first()
        .ok_or_else(|| Error::Invalid("concat of zero tensors".into()))?;
    check_float(OP, &[("input", first)])?;
    check_axis(OP, first, axis)?;
    let mut total = 0;
    for t in ts {
        check_device(OP, first, t)?;
        if t.dtype() != first.dtype() {
            return Err(Error::DType {
                op: OP,
                operand: "input",
                expected: "all inputs of one dtype",
                found: t.dtype(),
            });
        }
        let same_rest = t.rank() == first.rank()
            && (0..t.rank()).all(|d| d == axis || t.dim(d) == first.dim(d));
        if !same_rest {
            return Err(Error::shape(
                OP,
                format!(
                    "{:?} and {:?} differ outside axis {axis}",
                    first.shape(),
                    t.shape()
                ),
            ));
        }
        total += t.dim(axis);
    }
    let mut out_shape = first.shape().to_vec();
    out_shape[axis] = total;
    match first.device() {
        Device::Cpu => cpu::concat(ts, axis, out_shape),
        Device::Gpu(g) => gpu::ops::concat(g, ts, axis, out_shape),
    }
}

/// Copy of `len` entries starting at `start` along `axis`.
pub fn narrow(x: &Tensor, axis: usize, start: usize, len: usize) -> Result<Tensor> {
    const OP: &str = "narrow";
    check_float(OP, &[("x", x)])?;
    check_axis(OP, x, axis)?;
    if start + len > x.dim(axis) {
        return Err(Error::shape(
            OP,
            format!(
                "range {start}..{} out of bounds for axis {axis} of {:?}",
                start + len,
                x.shape()
            ),
        ));
    }
    let mut out_shape = x.shape().to_vec();
    out_shape[axis] = len;
    match x.device() {
        Device::Cpu => cpu::narrow(x, axis, start, out_shape),
        Device::Gpu(g) => gpu::ops::narrow(g, x, axis, start, out_shape),
    }
}

/// In-place: writes `src` into `dst` at `offset` along `axis` (KV caches, filled without
/// reallocation). Shapes must agree outside `axis`.
pub fn write_at(dst: &mut Tensor, src: &Tensor, axis: usize, offset: usize) -> Result<()> {
    const OP: &str = "write_at";
    check_float(OP, &[("dst", dst), ("src", src)])?;
    check_device(OP, dst, src)?;
    check_axis(OP, dst, axis)?;
    let fits = src.rank() == dst.rank()
        && (0..dst.rank()).all(|d| d == axis || src.dim(d) == dst.dim(d))
        && offset + src.dim(axis) <= dst.dim(axis);
    if !fits {
        return Err(Error::shape(
            OP,
            format!(
                "cannot write {:?} into {:?} at {offset} along axis {axis}",
                src.shape(),
                dst.shape()
            ),
        ));
    }
    if src.dtype() != dst.dtype() {
        return Err(Error::DType {
            op: OP,
            operand: "src",
            expected: "the destination's dtype",
            found: src.dtype(),
        });
    }
    match dst.device().clone() {
        Device::Cpu => cpu::write_at(dst, src, axis, offset),
        Device::Gpu(g) => gpu::ops::write_at(&g, dst, src, axis, offset),
    }
}

/// `[B, L, H·d]` -> `[B, H, L, d]`.
pub fn split_heads(x: &Tensor, heads: usize) -> Result<Tensor> {
    const OP: &str = "split_heads";
    check_float(OP, &[("x", x)])?;
    if x.rank() != 3 || heads == 0 || !x.dim(2).is_multiple_of(heads) {
        return Err(Error::shape(
            OP,
            format!("expected [B, L, H*d] with H={heads}, found {:?}", x.shape()),
        ));
    }
    let (b, l, d) = (x.dim(0), x.dim(1), x.dim(2) / heads);
    if l == 1 {
        // One position (decode): [B, 1, H·d] and [B, H, 1, d] are the same memory.
        return x.reshape(&[b, heads, 1, d]);
    }
    permute_0213(x, [b, l, heads, d])
}

/// `[B, H, L, d]` -> `[B, L, H·d]`.
pub fn merge_heads(x: &Tensor) -> Result<Tensor> {
    const OP: &str = "merge_heads";
    check_float(OP, &[("x", x)])?;
    if x.rank() != 4 {
        return Err(Error::shape(
            OP,
            format!("expected [B, H, L, d], found {:?}", x.shape()),
        ));
    }
    let (b, h, l, d) = (x.dim(0), x.dim(1), x.dim(2), x.dim(3));
    if l == 1 {
        return x.reshape(&[b, 1, h * d]);
    }
    permute_0213(x, [b, h, l, d])?.reshape(&[b, l, h * d])
}

/// Swaps dims 1 and 2 of a 4-d view `dims` of x.
fn permute_0213(x: &Tensor, dims: [usize; 4]) -> Result<Tensor> {
    let x4 = x.reshape(&dims)?;
    match x.device() {
        Device::Cpu => cpu::permute_0213(&x4),
        Device::Gpu(g) => gpu::ops::permute_0213(g, &x4),
    }
}

/// Multi-head attention: q `[B, H, Lq, d]`, k/v `[B, H, Lcap, d]` -> `[B, H, Lq, d]`;
/// softmax(q·kᵀ·scale + bias + mask) · v over the first `kv_len` keys.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, opts: &AttnOpts) -> Result<Tensor> {
    const OP: &str = "attention";
    check_float(OP, &[("q", q), ("k", k), ("v", v)])?;
    check_device(OP, q, k)?;
    check_device(OP, q, v)?;
    if q.rank() != 4 || k.rank() != 4 || k.shape() != v.shape() {
        return Err(Error::shape(
            OP,
            format!(
                "expected q [B,H,Lq,d], k = v [B,H,Lk,d]; found q {:?}, k {:?}, v {:?}",
                q.shape(),
                k.shape(),
                v.shape()
            ),
        ));
    }
    let (b, h, lq, d) = (q.dim(0), q.dim(1), q.dim(2), q.dim(3));
    if k.dim(0) != b || k.dim(1) != h || k.dim(3) != d {
        return Err(Error::shape(
            OP,
            format!(
                "k {:?} does not match q {:?} in batch/heads/head_dim",
                k.shape(),
                q.shape()
            ),
        ));
    }
    if k.dtype() != q.dtype() || v.dtype() != q.dtype() {
        return Err(Error::DType {
            op: OP,
            operand: "k/v",
            expected: "q's dtype",
            found: if k.dtype() != q.dtype() {
                k.dtype()
            } else {
                v.dtype()
            },
        });
    }
    let dims = check_attn_opts(OP, q, opts, b, h, lq, k.dim(2), d)?;
    match q.device() {
        Device::Cpu => cpu::attention(q, k, v, opts, &dims),
        Device::Gpu(g) => gpu::ops::attention(g, q, k, v, opts, &dims),
    }
}

/// Checks `opts` (kv_len, causal, mask, bias) of an attention of `lq` queries over a K/V of
/// `lk_cap` rows; the call's sizes.
#[allow(clippy::too_many_arguments)]
fn check_attn_opts(
    op: &'static str,
    q: &Tensor,
    opts: &AttnOpts,
    b: usize,
    h: usize,
    lq: usize,
    lk_cap: usize,
    d: usize,
) -> Result<AttnDims> {
    let lk = opts.kv_len.unwrap_or(lk_cap);
    if lk > lk_cap || lk == 0 {
        return Err(Error::shape(op, format!("kv_len {lk} not in 1..={lk_cap}")));
    }
    if opts.causal && lq > lk {
        return Err(Error::shape(
            op,
            format!("causal attention with {lq} queries over {lk} keys"),
        ));
    }
    let mut mask_rows = 0;
    if let Some(m) = opts.mask {
        check_device(op, q, m)?;
        check_f32(op, "mask", m)?;
        if m.rank() != 3 || m.dim(0) != b || (m.dim(1) != 1 && m.dim(1) != lq) || m.dim(2) != lk {
            return Err(Error::shape(
                op,
                format!(
                    "mask: expected [{b}, 1 or {lq}, {lk}], found {:?}",
                    m.shape()
                ),
            ));
        }
        mask_rows = m.dim(1);
    }
    if let Some(bias) = opts.bias {
        check_device(op, q, bias)?;
        check_f32(op, "bias", bias)?;
        check_shape(op, "bias", bias, &[h, lq, lk])?;
    }
    Ok(AttnDims {
        batch: b,
        heads: h,
        lq,
        lk,
        lk_cap,
        head_dim: d,
        mask_rows,
    })
}

/// Self-attention straight from a fused projection: `qkv` `[B, L, 3·H·d]` whose rows are
/// [q of every head | k of every head | v of every head] -> `[B, L, H·d]` with the heads
/// merged; the same as `narrow` + `split_heads` of each third, [`attention`] and
/// [`merge_heads`], which the GPU runs. The CPU reads q, k and v in place and writes the
/// merged rows directly (no copies; the same products and sums, so the same bits).
pub fn self_attention(qkv: &Tensor, heads: usize, opts: &AttnOpts) -> Result<Tensor> {
    const OP: &str = "self_attention";
    check_float(OP, &[("qkv", qkv)])?;
    if qkv.rank() != 3 || heads == 0 || !last(qkv).is_multiple_of(3 * heads) {
        return Err(Error::shape(
            OP,
            format!(
                "expected qkv [B, L, 3·H·d] with H = {heads}, found {:?}",
                qkv.shape()
            ),
        ));
    }
    let (b, l, hd) = (qkv.dim(0), qkv.dim(1), last(qkv) / 3);
    let dims = check_attn_opts(OP, qkv, opts, b, heads, l, l, hd / heads)?;
    match qkv.device() {
        Device::Cpu => cpu::self_attention(qkv, opts, &dims),
        Device::Gpu(_) => {
            let part = |i: usize| split_heads(&narrow(qkv, 2, i * hd, hd)?, heads);
            merge_heads(&attention(&part(0)?, &part(1)?, &part(2)?, opts)?)
        }
    }
}

/// Patch embedding (Conv2d with kernel = stride = p, no padding) via im2col + matmul:
/// pixels `[B, C, H, W]` (f32), weight `[D, C, p, p]`, bias `[D]` -> `[B, (H/p)·(W/p), D]`
/// in row-major patch order, as ViT flattens the conv output.
pub fn patch_embed(pixels: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    const OP: &str = "patch_embed";
    check_float(OP, &[("pixels", pixels), ("weight", w), ("bias", b)])?;
    check_device(OP, pixels, w)?;
    check_device(OP, pixels, b)?;
    if pixels.rank() != 4 || w.rank() != 4 || w.dim(1) != pixels.dim(1) || w.dim(2) != w.dim(3) {
        return Err(Error::shape(
            OP,
            format!(
                "expected pixels [B,C,H,W] and weight [D,C,p,p]; found {:?} and {:?}",
                pixels.shape(),
                w.shape()
            ),
        ));
    }
    let p = w.dim(2);
    let (bsz, c, hh, ww) = (pixels.dim(0), pixels.dim(1), pixels.dim(2), pixels.dim(3));
    if p == 0 || hh % p != 0 || ww % p != 0 {
        return Err(Error::shape(
            OP,
            format!("image {hh}x{ww} is not a multiple of the patch size {p}"),
        ));
    }
    check_shape(OP, "bias", b, &[w.dim(0)])?;
    let patches = match pixels.device() {
        Device::Cpu => cpu::im2col(pixels, p)?,
        Device::Gpu(g) => gpu::ops::im2col(g, pixels, p)?,
    };
    debug_assert_eq!(patches.shape(), &[bsz, (hh / p) * (ww / p), c * p * p]);
    let w2 = w.reshape(&[w.dim(0), c * p * p])?;
    linear(&patches, &w2, Some(b))
}

/// Converts the storage dtype.
pub fn cast(x: &Tensor, dtype: DType) -> Result<Tensor> {
    if x.dtype() == dtype {
        return Ok(x.clone());
    }
    if dtype.is_packed() || x.dtype().is_packed() {
        // Packing and unpacking happen on the host (load-time work, not a hot path).
        let host = x.to_vec_f32()?;
        return Tensor::from_slice(&host, x.shape(), dtype, x.device());
    }
    match x.device() {
        Device::Cpu => cpu::cast(x, dtype),
        Device::Gpu(g) => gpu::ops::cast(g, x, dtype),
    }
}

/// A linear layer with its decode fusions (see [`LinearFusion`]): `norm(x)` as the prologue,
/// `act` or the gate (`gated`: w's rows interleave gate and up rows, out `[.., N/2]`) and
/// `residual` (shaped as the output) as the epilogue. The GPU runs it as one GEMV dispatch
/// when x has 1..=4 rows and the fusion is one its kernels have; everything else (and the
/// CPU, the numeric reference) composes the plain ops in the same order.
pub fn linear_fused(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    f: &LinearFusion,
) -> Result<Tensor> {
    const OP: &str = "linear_fused";
    check_float(OP, &[("x", x)])?;
    check_rank_min(OP, "x", x, 1)?;
    match f.norm {
        Some(NormIn::Layer { w: nw, b: nb, .. }) => {
            check_float(OP, &[("norm weight", nw), ("norm bias", nb)])?;
            check_norm_param(OP, "norm weight", x, nw)?;
            check_norm_param(OP, "norm bias", x, nb)?;
        }
        Some(NormIn::Rms { w: nw, .. }) => {
            check_float(OP, &[("norm weight", nw)])?;
            check_norm_param(OP, "norm weight", x, nw)?;
        }
        None => {}
    }
    if w.rank() != 2 {
        return Err(Error::shape(
            OP,
            format!("weight: expected [N, K], found {:?}", w.shape()),
        ));
    }
    let n = w.dim(0);
    if f.gated && (f.act.is_none() || !n.is_multiple_of(2)) {
        return Err(Error::shape(
            OP,
            format!("a gated linear needs an activation and an even N, found N = {n}"),
        ));
    }
    let mut out_shape = x.shape().to_vec();
    if let Some(l) = out_shape.last_mut() {
        *l = if f.gated { n / 2 } else { n };
    }
    if let Some(r) = f.residual {
        check_float(OP, &[("residual", r)])?;
        check_device(OP, x, r)?;
        check_shape(OP, "residual", r, &out_shape)?;
    }
    if let Device::Gpu(g) = x.device() {
        // The linear's own guards run in `linear` on the fallback path; the fused kernel
        // needs the same ones first.
        if w.dim(1) == last(x)
            && w.device().same(x.device())
            && b.is_none_or(|b| b.device().same(x.device()) && b.shape() == [n].as_slice())
            && let Some(t) = gpu::ops::linear_fused(g, x, w, b, f, out_shape)?
        {
            return Ok(t);
        }
    }
    let normed = prologue(x, f)?;
    let x = normed.as_ref().unwrap_or(x);
    // The CPU applies the activation and the residual add in place on the product, in the
    // composed ops' order and chunks (the same bits, without their copies), when nothing in
    // between would have been rounded to f16.
    if matches!(x.device(), Device::Cpu)
        && !f.gated
        && x.dtype() == DType::F32
        && f.residual.is_none_or(|r| r.dtype() == DType::F32)
    {
        let out_shape = check_linear(x, w, b)?;
        let epi = cpu::Epilogue {
            act: f.act,
            residual: f.residual,
        };
        return cpu::linear(x, w, b, &epi, out_shape);
    }
    linear_fused_composed(x, w, b, f)
}

/// The norm of [`linear_fused`]'s prologue, if it has one.
fn prologue(x: &Tensor, f: &LinearFusion) -> Result<Option<Tensor>> {
    match f.norm {
        Some(NormIn::Layer { w: nw, b: nb, eps }) => layer_norm(x, nw, nb, eps).map(Some),
        Some(NormIn::Rms { w: nw, eps }) => rms_norm(x, nw, eps).map(Some),
        None => Ok(None),
    }
}

/// [`linear_fused`] after its prologue, as plain ops (the GPU fallback, and the CPU where
/// intermediate results are f16).
fn linear_fused_composed(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    f: &LinearFusion,
) -> Result<Tensor> {
    let mut y = linear(x, w, b)?;
    if f.gated {
        let lead = &y.shape()[..y.rank() - 1];
        let (rows, n) = (lead.iter().product::<usize>(), last(&y));
        let mut shape = lead.to_vec();
        shape.push(n / 2);
        let pairs = y.reshape(&[rows, n / 2, 2])?;
        let gate = narrow(&pairs, 2, 0, 1)?.reshape(&shape)?;
        let up = narrow(&pairs, 2, 1, 1)?.reshape(&shape)?;
        let act = f.act.unwrap_or(Unary::Relu);
        y = mul(&unary(&gate, act)?, &up)?;
    } else if let Some(act) = f.act {
        y = unary(&y, act)?;
    }
    match f.residual {
        Some(r) => add(r, &y),
        None => Ok(y),
    }
}

/// Attention of new tokens over a KV cache with their keys and values appended first:
/// `qkv` `[B, L, 3·H·d]` is a fused projection (q, k, v blocks of H·d), the caches are
/// `[B, H, capacity, d]` and get the new K/V at columns `pos..pos + L`; the result is
/// `[B, L, H·d]` (heads merged) over `pos + L` keys (`opts.kv_len` is ignored). The GPU does
/// one token (decode) in one dispatch; otherwise this is narrow, split_heads, write_at,
/// attention and merge_heads.
pub fn attention_append(
    qkv: &Tensor,
    k_cache: &mut Tensor,
    v_cache: &mut Tensor,
    pos: usize,
    opts: &AttnOpts,
) -> Result<Tensor> {
    const OP: &str = "attention_append";
    check_float(OP, &[("qkv", qkv), ("k", k_cache), ("v", v_cache)])?;
    check_device(OP, qkv, k_cache)?;
    check_device(OP, qkv, v_cache)?;
    if qkv.rank() != 3
        || k_cache.rank() != 4
        || k_cache.shape() != v_cache.shape()
        || k_cache.dim(0) != qkv.dim(0)
        || 3 * k_cache.dim(1) * k_cache.dim(3) != qkv.dim(2)
    {
        return Err(Error::shape(
            OP,
            format!(
                "expected qkv [B, L, 3·H·d] and caches [B, H, cap, d]; found {:?}, {:?}, {:?}",
                qkv.shape(),
                k_cache.shape(),
                v_cache.shape()
            ),
        ));
    }
    let (l, heads) = (qkv.dim(1), k_cache.dim(1));
    let hidden = qkv.dim(2) / 3;
    if pos + l > k_cache.dim(2) {
        return Err(Error::Limit {
            what: "KV cache".into(),
            needed: (pos + l) as u64,
            limit: k_cache.dim(2) as u64,
        });
    }
    let lk = pos + l;
    if let Some(m) = opts.mask {
        check_device(OP, qkv, m)?;
        check_f32(OP, "mask", m)?;
        if m.rank() != 3
            || m.dim(0) != qkv.dim(0)
            || (m.dim(1) != 1 && m.dim(1) != l)
            || m.dim(2) != lk
        {
            return Err(Error::shape(
                OP,
                format!(
                    "mask: expected [{}, 1 or {l}, {lk}], found {:?}",
                    qkv.dim(0),
                    m.shape()
                ),
            ));
        }
    }
    if let Some(bias) = opts.bias {
        check_device(OP, qkv, bias)?;
        check_f32(OP, "bias", bias)?;
        check_shape(OP, "bias", bias, &[heads, l, lk])?;
    }
    let opts = AttnOpts {
        kv_len: Some(lk),
        ..*opts
    };
    if let Device::Gpu(g) = qkv.device().clone()
        && let Some(t) = gpu::ops::attention_append(&g, qkv, k_cache, v_cache, pos, &opts)?
    {
        return Ok(t);
    }
    let q = split_heads(&narrow(qkv, 2, 0, hidden)?, heads)?;
    let k = split_heads(&narrow(qkv, 2, hidden, hidden)?, heads)?;
    let v = split_heads(&narrow(qkv, 2, 2 * hidden, hidden)?, heads)?;
    write_at(k_cache, &k, 2, pos)?;
    write_at(v_cache, &v, 2, pos)?;
    merge_heads(&attention(&q, k_cache, v_cache, &opts)?)
}

/// Rows of the matrices `parts` (`[R_i, K]`, one dtype and device) stacked into one
/// `[ΣR_i, K]` matrix, or with `interleave` (equal R) row r of every part in turn: load-time
/// fusion of projections (q/k/v into one, gate/up pairs). Quantized rows are moved as bytes
/// (exactly the quants and scales of the parts); bf16 goes through its f32 values (exact).
pub fn stack_rows(parts: &[&Tensor], interleave: bool) -> Result<Tensor> {
    const OP: &str = "stack_rows";
    let first = parts
        .first()
        .ok_or_else(|| Error::Invalid("stack_rows of zero tensors".into()))?;
    let cols = last(first);
    for t in parts {
        check_device(OP, first, t)?;
        if t.rank() != 2 || t.dim(1) != cols || t.dtype() != first.dtype() {
            return Err(Error::shape(
                OP,
                format!(
                    "parts must be [R, {cols}] matrices of one dtype; found {:?} ({})",
                    t.shape(),
                    t.dtype()
                ),
            ));
        }
        if interleave && t.dim(0) != first.dim(0) {
            return Err(Error::shape(OP, "interleaved parts need equal rows"));
        }
    }
    let rows: usize = parts.iter().map(|t| t.dim(0)).sum();
    let device = first.device().clone();
    // CPU weights in the GEMM's panels stay in panels: their buffers concatenated where
    // that is the stacked layout, else stacked as rows and packed again.
    if let Some(ps) = parts.iter().map(|t| t.panels()).collect::<Option<Vec<_>>>() {
        if !interleave && let Some(p) = crate::panels::Panels::stack(&ps) {
            return Ok(Tensor::from_cpu(
                vec![rows, cols],
                crate::tensor::CpuStorage::Panels(p),
            ));
        }
        let plain: Vec<Tensor> = parts.iter().map(|t| t.plain().into_owned()).collect();
        let refs: Vec<&Tensor> = plain.iter().collect();
        return stack_rows(&refs, interleave)?.to_panels();
    }
    if let Some(format) = first.dtype().quant_format() {
        let data = parts
            .iter()
            .map(|t| t.quant_data())
            .collect::<Result<Vec<_>>>()?;
        let (rb, sb) = (format.row_bytes(cols), crate::QFormat::row_blocks(cols));
        let mut qs = Vec::with_capacity(rows * rb);
        let mut scales: Vec<u8> = Vec::with_capacity(rows * sb * 2);
        let mut put = |d: &crate::quant::QuantData, r: usize| {
            qs.extend_from_slice(&d.qs.as_slice()[r * rb..(r + 1) * rb]);
            for s in &d.scales[r * sb..(r + 1) * sb] {
                scales.extend_from_slice(&s.to_bits().to_le_bytes());
            }
        };
        if interleave {
            for r in 0..first.dim(0) {
                for d in &data {
                    put(d, r);
                }
            }
        } else {
            for d in &data {
                for r in 0..d.rows {
                    put(d, r);
                }
            }
        }
        return Tensor::from_quantized(
            first.dtype(),
            &[rows, cols],
            crate::QuantBytes::Owned(qs),
            &scales,
            &device,
        );
    }
    if first.dtype().is_packed() {
        let host = parts
            .iter()
            .map(|t| t.to_vec_f32())
            .collect::<Result<Vec<_>>>()?;
        let mut all = Vec::with_capacity(rows * cols);
        if interleave {
            for r in 0..first.dim(0) {
                for h in &host {
                    all.extend_from_slice(&h[r * cols..(r + 1) * cols]);
                }
            }
        } else {
            for h in &host {
                all.extend_from_slice(h);
            }
        }
        return Tensor::from_slice(&all, &[rows, cols], first.dtype(), &device);
    }
    if interleave {
        let r = first.dim(0);
        let views = parts
            .iter()
            .map(|t| t.reshape(&[r, 1, cols]))
            .collect::<Result<Vec<_>>>()?;
        let refs: Vec<&Tensor> = views.iter().collect();
        return concat(&refs, 1)?.reshape(&[rows, cols]);
    }
    concat(parts, 0)
}

/// Greedy choice per row of `x` `[R, V]` with the `exclude` ids impossible: the first index
/// of the maximum (NaN and −inf never win; a row without a candidate gives 0, as the host's
/// `argmax` in the generation loop) and each row's count of non-finite entries before
/// exclusion. On the GPU one dispatch, and 8 bytes a row read back instead of the logits.
pub fn argmax_rows(x: &Tensor, exclude: &[u32]) -> Result<(Vec<u32>, Vec<u32>)> {
    const OP: &str = "argmax_rows";
    check_float(OP, &[("x", x)])?;
    if x.rank() != 2 || x.dim(1) == 0 {
        return Err(Error::shape(
            OP,
            format!("expected [rows, n] with n > 0, found {:?}", x.shape()),
        ));
    }
    if let Device::Gpu(g) = x.device()
        && let Some(r) = gpu::ops::argmax_rows(g, x, exclude)?
    {
        return Ok(r);
    }
    let n = x.dim(1);
    let v = x.to_vec_f32()?;
    Ok(v.chunks(n).map(|row| host_argmax(row, exclude)).unzip())
}

/// [`argmax_rows`] of one host row.
fn host_argmax(row: &[f32], exclude: &[u32]) -> (u32, u32) {
    let bad = row.iter().filter(|v| !v.is_finite()).count() as u32;
    let mut best = 0;
    let mut bv = f32::NEG_INFINITY;
    for (i, &v) in row.iter().enumerate() {
        if v > bv && !exclude.contains(&(i as u32)) {
            bv = v;
            best = i;
        }
    }
    (best as u32, bad)
}

/// One row's result of [`top_candidates`].
#[derive(Clone, Debug, PartialEq)]
pub struct Candidates {
    /// Ascending indices of every entry that is finite, not excluded, and >= the k-th largest
    /// such value of the row (so ties with the k-th are all in: more than k entries possible).
    /// All finite non-excluded entries when the row has fewer than k of them.
    pub ids: Vec<u32>,
    /// Their values, exactly as stored (f16 tensors: the f16 value widened to f32).
    pub values: Vec<f32>,
    /// Entries of the row that are NaN or ±inf (before exclusion), as argmax_rows counts them.
    pub non_finite: u32,
}

/// For each row of `x` `[R, V]` (f32 or f16, any device): its candidates, or `None` for a row
/// whose candidate count exceeds `max_out` (ties; the caller then reads the row itself).
/// Values are ordered numerically (-0.0 == +0.0); NaN and ±inf are never candidates. `k` >= 1,
/// `max_out` >= k; `exclude`: ids that are never candidates (on the GPU at most
/// `TopkConsts::MAX_EXCLUDED`, beyond that and with `BLIP2_GPU_NO_DEVICE_TOPK=1` the rows are
/// downloaded and chosen on the host). On the GPU: one dispatch (topk.wgsl) and
/// `R · (2 + 2·min(max_out, V))` words read back, for top-k sampling without the logits.
pub fn top_candidates(
    x: &Tensor,
    k: usize,
    max_out: usize,
    exclude: &[u32],
) -> Result<Vec<Option<Candidates>>> {
    const OP: &str = "top_candidates";
    check_float(OP, &[("x", x)])?;
    // Ids are u32 (as the tokens they are).
    if x.rank() != 2 || x.dim(1) == 0 || x.dim(1) > u32::MAX as usize {
        return Err(Error::shape(
            OP,
            format!(
                "expected [rows, n] with 0 < n <= 2^32 - 1, found {:?}",
                x.shape()
            ),
        ));
    }
    if k == 0 || max_out < k {
        return Err(Error::Invalid(format!(
            "{OP}: need k >= 1 and max_out >= k, found k = {k}, max_out = {max_out}"
        )));
    }
    if x.dim(0) == 0 {
        return Ok(Vec::new());
    }
    if let Device::Gpu(g) = x.device()
        && let Some(r) = gpu::ops::top_candidates(g, x, k, max_out, exclude)?
    {
        return Ok(r);
    }
    let n = x.dim(1);
    let mut banned = vec![false; n];
    for &e in exclude {
        if let Some(b) = banned.get_mut(e as usize) {
            *b = true;
        }
    }
    let v = x.to_vec_f32()?;
    Ok(v.chunks(n)
        .map(|row| host_top_candidates(row, k, max_out, &banned))
        .collect())
}

/// [`top_candidates`] of one host row (the numeric reference); `banned[i]`: id i excluded.
fn host_top_candidates(
    row: &[f32],
    k: usize,
    max_out: usize,
    banned: &[bool],
) -> Option<Candidates> {
    let non_finite = row.iter().filter(|v| !v.is_finite()).count() as u32;
    let open = |&(i, v): &(usize, &f32)| v.is_finite() && !banned[i];
    let mut vals: Vec<f32> = row
        .iter()
        .enumerate()
        .filter(open)
        .map(|(_, &v)| v)
        .collect();
    // The k-th largest; which of -0.0 / +0.0 total_cmp puts there does not matter, the
    // comparison below is numeric. Fewer than k: every finite value passes -inf.
    let threshold = if vals.len() < k {
        f32::NEG_INFINITY
    } else {
        *vals.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a)).1
    };
    let (ids, values): (Vec<u32>, Vec<f32>) = row
        .iter()
        .enumerate()
        .filter(open)
        .filter(|&(_, &v)| v >= threshold)
        .map(|(i, &v)| (i as u32, v))
        .unzip();
    (ids.len() <= max_out).then_some(Candidates {
        ids,
        values,
        non_finite,
    })
}
