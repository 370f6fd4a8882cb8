//! Op descriptors shared by the op front end (`ops.rs`, which validates and builds them) and
//! both backends (`cpu.rs`, `gpu/ops.rs`, which trust them). Public through `crate::ops`.

use crate::Tensor;

/// Sizes of a validated batched matmul (see [`crate::ops::matmul`]).
#[derive(Clone, Copy, Debug)]
pub struct MatmulDims {
    pub batch: usize,
    pub m: usize,
    pub k: usize,
    pub n: usize,
    pub b_trans: bool,
    /// b is one `[K,N]`/`[N,K]` matrix used by every batch.
    pub b_shared: bool,
}

/// Options of [`crate::ops::attention`].
#[derive(Clone, Copy, Debug)]
pub struct AttnOpts<'a> {
    /// Multiplies q·kᵀ (hd^-0.5 for ViT/BERT/OPT, 1.0 for T5).
    pub scale: f32,
    /// Query i (of lq) may see keys j <= i + (kv_len - lq).
    pub causal: bool,
    /// Number of leading key rows of k/v to use (a preallocated cache); None = all.
    pub kv_len: Option<usize>,
    /// Additive f32 mask `[B, 1 | Lq, kv_len]` (padding: 0 or a large negative).
    pub mask: Option<&'a Tensor>,
    /// Additive f32 per-head bias `[H, Lq, kv_len]` (T5 relative positions).
    pub bias: Option<&'a Tensor>,
}

impl Default for AttnOpts<'_> {
    fn default() -> Self {
        AttnOpts {
            scale: 1.0,
            causal: false,
            kv_len: None,
            mask: None,
            bias: None,
        }
    }
}

/// Validated sizes of an [`crate::ops::attention`] call.
#[derive(Clone, Copy, Debug)]
pub struct AttnDims {
    pub batch: usize,
    pub heads: usize,
    pub lq: usize,
    pub lk: usize,
    pub lk_cap: usize,
    pub head_dim: usize,
    pub mask_rows: usize,
}

/// Element-wise activations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Unary {
    /// Exact GELU: 0.5·x·(1 + erf(x/√2)).
    Gelu,
    /// GELU with the tanh approximation (`gelu_new`, `gelu_pytorch_tanh`).
    GeluTanh,
    Relu,
    /// SiLU / swish: x·σ(x) (LLaMA's gated MLP).
    Silu,
}

/// Element-wise binary ops with a repeating second operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Binary {
    Add,
    Mul,
}

/// (outer, dim, inner) sizes around `axis`.
pub(crate) fn split_at_axis(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    (
        shape[..axis].iter().product(),
        shape[axis],
        shape[axis + 1..].iter().product(),
    )
}

/// Prologue of [`crate::ops::linear_fused`]: a norm of x's rows over the last dim.
#[derive(Clone, Copy, Debug)]
pub enum NormIn<'a> {
    /// LayerNorm with weight and bias.
    Layer {
        w: &'a Tensor,
        b: &'a Tensor,
        eps: f32,
    },
    /// T5's RMSNorm with weight.
    Rms { w: &'a Tensor, eps: f32 },
}

/// What [`crate::ops::linear_fused`] fuses around `x · wᵀ + b`: y = linear(norm(x)), then
/// `act(y)`, or with `gated` `act(y[.., 2j]) · y[.., 2j+1]` (gate and up rows interleaved
/// in w), then `+ residual`.
#[derive(Clone, Copy, Debug, Default)]
pub struct LinearFusion<'a> {
    pub norm: Option<NormIn<'a>>,
    pub act: Option<Unary>,
    pub gated: bool,
    pub residual: Option<&'a Tensor>,
}
