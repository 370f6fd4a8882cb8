//! Row normalisations (LayerNorm, T5's RMSNorm), f32 statistics, two passes over each row.

use crate::isa::multiversion;
use crate::vmath;
use crate::{Isa, isa};

#[inline(always)]
fn layer_norm_body(x: &[f32], w: &[f32], b: &[f32], out: &mut [f32], cols: usize, eps: f32) {
    let inv_n = 1.0 / cols as f32;
    for (xr, or) in x.chunks_exact(cols).zip(out.chunks_exact_mut(cols)) {
        // Two-pass mean/variance: no cancellation from E[x²] − E[x]².
        let mean = vmath::sum(xr) * inv_n;
        let var = vmath::sum_sq_dev(xr, mean) * inv_n;
        let rstd = 1.0 / (var + eps).sqrt();
        if b.is_empty() {
            for ((o, v), g) in or.iter_mut().zip(xr).zip(w) {
                *o = (v - mean) * rstd * g;
            }
        } else {
            for (((o, v), g), bb) in or.iter_mut().zip(xr).zip(w).zip(b) {
                *o = (v - mean) * rstd * g + bb;
            }
        }
    }
}

#[inline(always)]
fn rms_norm_body(x: &[f32], w: &[f32], out: &mut [f32], cols: usize, eps: f32) {
    let inv_n = 1.0 / cols as f32;
    for (xr, or) in x.chunks_exact(cols).zip(out.chunks_exact_mut(cols)) {
        let var = vmath::sum_sq_dev(xr, 0.0) * inv_n;
        let r = 1.0 / (var + eps).sqrt();
        for ((o, v), g) in or.iter_mut().zip(xr).zip(w) {
            *o = v * r * g;
        }
    }
}

multiversion! {
    fn layer_norm_isa(x: &[f32], w: &[f32], b: &[f32], out: &mut [f32], cols: usize, eps: f32) = layer_norm_body;
}
multiversion! { fn rms_norm_isa(x: &[f32], w: &[f32], out: &mut [f32], cols: usize, eps: f32) = rms_norm_body; }

/// LayerNorm over rows of `cols`: out = (x − mean)/√(var + eps)·w + b, with the biased
/// variance (as torch). `b` may be empty for a LayerNorm without bias.
///
/// Preconditions: `cols > 0`, `x.len()` a multiple of `cols`, `out.len() == x.len()`,
/// `w.len() == cols`, `b.len()` is `cols` or 0. Runs on the calling thread (callers split
/// rows across threads).
pub fn layer_norm(x: &[f32], w: &[f32], b: &[f32], out: &mut [f32], cols: usize, eps: f32) {
    layer_norm_with(isa(), x, w, b, out, cols, eps)
}

/// [`layer_norm`] on a chosen instruction set.
pub fn layer_norm_with(
    isa: Isa,
    x: &[f32],
    w: &[f32],
    b: &[f32],
    out: &mut [f32],
    cols: usize,
    eps: f32,
) {
    if x.is_empty() {
        return;
    }
    assert!(
        cols > 0 && x.len().is_multiple_of(cols) && out.len() == x.len(),
        "layer_norm: shape"
    );
    assert!(
        w.len() == cols && (b.is_empty() || b.len() == cols),
        "layer_norm: weight/bias length"
    );
    layer_norm_isa(isa.resolve(), x, w, b, out, cols, eps)
}

/// T5 RMSNorm over rows of `cols`: out = x/√(mean(x²) + eps)·w (no mean subtraction, no bias).
/// Preconditions as [`layer_norm`] without `b`.
pub fn rms_norm(x: &[f32], w: &[f32], out: &mut [f32], cols: usize, eps: f32) {
    rms_norm_with(isa(), x, w, out, cols, eps)
}

/// [`rms_norm`] on a chosen instruction set.
pub fn rms_norm_with(isa: Isa, x: &[f32], w: &[f32], out: &mut [f32], cols: usize, eps: f32) {
    if x.is_empty() {
        return;
    }
    assert!(
        cols > 0 && x.len().is_multiple_of(cols) && out.len() == x.len(),
        "rms_norm: shape"
    );
    assert!(w.len() == cols, "rms_norm: weight length");
    rms_norm_isa(isa.resolve(), x, w, out, cols, eps)
}
