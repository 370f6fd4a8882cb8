//! Element-wise kernels: activations, softmax, add/mul. Portable bodies, compiled per ISA.

use crate::isa::multiversion;
use crate::vmath::{self, LANES};
use crate::{Isa, isa};

#[inline(always)]
fn gelu_erf_body(x: &mut [f32]) {
    for v in x.iter_mut() {
        *v = vmath::gelu_erf(*v);
    }
}

#[inline(always)]
fn gelu_tanh_body(x: &mut [f32]) {
    for v in x.iter_mut() {
        *v = vmath::gelu_tanh(*v);
    }
}

#[inline(always)]
fn silu_body(x: &mut [f32]) {
    for v in x.iter_mut() {
        *v = vmath::silu(*v);
    }
}

#[inline(always)]
fn relu_body(x: &mut [f32]) {
    for v in x.iter_mut() {
        // Select, not `max`: keeps NaN as NaN like torch.relu.
        *v = if *v < 0.0 { 0.0 } else { *v };
    }
}

#[inline(always)]
pub(crate) fn softmax_body(row: &mut [f32]) {
    let n = row.len();
    if n == 0 {
        return;
    }
    let m = vmath::max(row);
    if m == f32::NEG_INFINITY {
        // Every entry is −∞: the limit of a row masked with a finite minimum is uniform,
        // which is also what an `f32::MIN` additive mask gives; never NaN.
        row.fill(1.0 / n as f32);
        return;
    }
    let mut acc = [0.0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for i in 0..LANES {
            let e = vmath::exp(c[i] - m);
            c[i] = e;
            acc[i] += e;
        }
    }
    for (i, v) in chunks.into_remainder().iter_mut().enumerate() {
        let e = vmath::exp(*v - m);
        *v = e;
        acc[i] += e;
    }
    // The max entry contributes e⁰ = 1, so the sum is ≥ 1.
    let inv = 1.0 / acc.iter().sum::<f32>();
    for v in row.iter_mut() {
        *v *= inv;
    }
}

#[inline(always)]
fn add_body(a: &[f32], b: &[f32], out: &mut [f32]) {
    for ((o, x), y) in out.iter_mut().zip(a).zip(b) {
        *o = x + y;
    }
}

#[inline(always)]
fn mul_body(a: &[f32], b: &[f32], out: &mut [f32]) {
    for ((o, x), y) in out.iter_mut().zip(a).zip(b) {
        *o = x * y;
    }
}

#[inline(always)]
fn add_inplace_body(dst: &mut [f32], src: &[f32]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d += s;
    }
}

#[inline(always)]
fn mul_inplace_body(dst: &mut [f32], src: &[f32]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d *= s;
    }
}

#[inline(always)]
fn scale_body(x: &mut [f32], s: f32) {
    for v in x.iter_mut() {
        *v *= s;
    }
}

multiversion! { pub(crate) fn gelu_erf_isa(x: &mut [f32]) = gelu_erf_body; }
multiversion! { pub(crate) fn gelu_tanh_isa(x: &mut [f32]) = gelu_tanh_body; }
multiversion! { pub(crate) fn silu_isa(x: &mut [f32]) = silu_body; }
multiversion! { pub(crate) fn relu_isa(x: &mut [f32]) = relu_body; }
multiversion! { pub(crate) fn softmax_isa(row: &mut [f32]) = softmax_body; }
multiversion! { fn add_isa(a: &[f32], b: &[f32], out: &mut [f32]) = add_body; }
multiversion! { fn mul_isa(a: &[f32], b: &[f32], out: &mut [f32]) = mul_body; }
multiversion! { fn add_inplace_isa(dst: &mut [f32], src: &[f32]) = add_inplace_body; }
multiversion! { fn mul_inplace_isa(dst: &mut [f32], src: &[f32]) = mul_inplace_body; }
multiversion! { fn scale_isa(x: &mut [f32], s: f32) = scale_body; }

/// GELU with the exact erf, in place: x·½(1 + erf(x/√2)) (PyTorch `gelu`, approximate="none").
/// Relative error ≲ 1e-6 for |x| ≤ 8.5; below that the result is within 1e-15 of 0.
pub fn gelu_erf_inplace(x: &mut [f32]) {
    gelu_erf_isa(isa(), x)
}

/// [`gelu_erf_inplace`] on a chosen instruction set.
pub fn gelu_erf_inplace_with(isa: Isa, x: &mut [f32]) {
    gelu_erf_isa(isa.resolve(), x)
}

/// GELU, tanh approximation, in place (PyTorch `gelu(approximate="tanh")`, T5's `gelu_new`).
pub fn gelu_tanh_inplace(x: &mut [f32]) {
    gelu_tanh_isa(isa(), x)
}

/// [`gelu_tanh_inplace`] on a chosen instruction set.
pub fn gelu_tanh_inplace_with(isa: Isa, x: &mut [f32]) {
    gelu_tanh_isa(isa.resolve(), x)
}

/// SiLU (swish) in place: x·σ(x) = x / (1 + e^(−x)) (PyTorch `silu`, LLaMA's MLP).
pub fn silu_inplace(x: &mut [f32]) {
    silu_isa(isa(), x)
}

/// [`silu_inplace`] on a chosen instruction set.
pub fn silu_inplace_with(isa: Isa, x: &mut [f32]) {
    silu_isa(isa.resolve(), x)
}

/// max(x, 0) in place (NaN stays NaN).
pub fn relu_inplace(x: &mut [f32]) {
    relu_isa(isa(), x)
}

/// [`relu_inplace`] on a chosen instruction set.
pub fn relu_inplace_with(isa: Isa, x: &mut [f32]) {
    relu_isa(isa.resolve(), x)
}

/// Log-softmax of one row in place, as `torch.log_softmax` in f32: v − max − ln Σ exp(v − max),
/// the exps summed in f64 (an f32 running sum over OPT's 50,272 entries was off by 3e-5;
/// torch's vectorised sum is not, and beam scores add these up over steps). A row holding
/// any NaN or ±∞ is left unchanged: no statistic of it means anything, and callers count
/// such entries as errors. Scalar: it runs once per decoded row, never on a hot path.
pub fn log_softmax_inplace(row: &mut [f32]) {
    if row.iter().any(|v| !v.is_finite()) {
        return;
    }
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let sum: f64 = row.iter().map(|&v| (v - max).exp() as f64).sum();
    let lse = sum.ln() as f32;
    for v in row {
        *v = *v - max - lse;
    }
}

/// Numerically stable softmax of one row, in place (max subtracted before exp).
///
/// Masked entries may be −∞ or a large negative finite value (`f32::MIN`, as HF's
/// `finfo.min` masks give); a row whose entries are all −∞ becomes uniform, as a row masked
/// entirely with `f32::MIN` does, so the result is never NaN for such rows. An empty row is a
/// no-op.
pub fn softmax_inplace(row: &mut [f32]) {
    softmax_isa(isa(), row)
}

/// [`softmax_inplace`] on a chosen instruction set.
pub fn softmax_inplace_with(isa: Isa, row: &mut [f32]) {
    softmax_isa(isa.resolve(), row)
}

/// out = a + b element-wise. Precondition: all three have the same length.
pub fn add(a: &[f32], b: &[f32], out: &mut [f32]) {
    add_with(isa(), a, b, out)
}

/// [`add`] on a chosen instruction set.
pub fn add_with(isa: Isa, a: &[f32], b: &[f32], out: &mut [f32]) {
    assert!(
        a.len() == out.len() && b.len() == out.len(),
        "add: length mismatch"
    );
    add_isa(isa.resolve(), a, b, out)
}

/// out = a · b element-wise. Precondition: all three have the same length.
pub fn mul(a: &[f32], b: &[f32], out: &mut [f32]) {
    mul_with(isa(), a, b, out)
}

/// [`mul`] on a chosen instruction set.
pub fn mul_with(isa: Isa, a: &[f32], b: &[f32], out: &mut [f32]) {
    assert!(
        a.len() == out.len() && b.len() == out.len(),
        "mul: length mismatch"
    );
    mul_isa(isa.resolve(), a, b, out)
}

/// dst += src element-wise; `src` may be one row (`src.len()` divides `dst.len()`), which is
/// then broadcast over the rows of `dst`.
pub fn add_inplace(dst: &mut [f32], src: &[f32]) {
    add_inplace_with(isa(), dst, src)
}

/// [`add_inplace`] on a chosen instruction set.
pub fn add_inplace_with(isa: Isa, dst: &mut [f32], src: &[f32]) {
    let isa = isa.resolve();
    for_rows(dst, src, "add_inplace", |d, s| add_inplace_isa(isa, d, s));
}

/// dst *= src element-wise; `src` may be one row broadcast over the rows of `dst`, as in
/// [`add_inplace`].
pub fn mul_inplace(dst: &mut [f32], src: &[f32]) {
    mul_inplace_with(isa(), dst, src)
}

/// [`mul_inplace`] on a chosen instruction set.
pub fn mul_inplace_with(isa: Isa, dst: &mut [f32], src: &[f32]) {
    let isa = isa.resolve();
    for_rows(dst, src, "mul_inplace", |d, s| mul_inplace_isa(isa, d, s));
}

/// x *= s.
pub fn scale_inplace(x: &mut [f32], s: f32) {
    scale_isa(isa(), x, s)
}

/// [`scale_inplace`] on a chosen instruction set.
pub fn scale_inplace_with(isa: Isa, x: &mut [f32], s: f32) {
    scale_isa(isa.resolve(), x, s)
}

fn for_rows(dst: &mut [f32], src: &[f32], what: &str, mut f: impl FnMut(&mut [f32], &[f32])) {
    if dst.is_empty() {
        return;
    }
    assert!(
        !src.is_empty() && dst.len().is_multiple_of(src.len()),
        "{what}: src length must divide dst length"
    );
    for d in dst.chunks_exact_mut(src.len()) {
        f(d, src);
    }
}
