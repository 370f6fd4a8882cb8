//! Small building blocks shared by the components: linear layers and norms bound to
//! their checkpoint weights.

use blip2_engine::{Result, Tensor, ops};

use crate::weights::WeightLoader;

/// nn.Linear: y = x·Wᵀ + b with W `[out, in]`.
pub struct Linear {
    pub w: Tensor,
    pub b: Option<Tensor>,
}

impl Linear {
    /// The weight goes through [`WeightLoader::get_linear`], the one place that decides
    /// whether a matrix is quantized.
    pub fn load(vb: &WeightLoader, in_dim: usize, out_dim: usize, bias: bool) -> Linear {
        Linear {
            w: vb.get_linear("weight", &[out_dim, in_dim]),
            b: bias.then(|| vb.get("bias", &[out_dim])),
        }
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ops::linear(x, &self.w, self.b.as_ref())
    }
}

/// nn.LayerNorm with affine weight and bias.
pub struct LayerNorm {
    pub w: Tensor,
    pub b: Tensor,
    pub eps: f32,
}

impl LayerNorm {
    pub fn load(vb: &WeightLoader, dim: usize, eps: f64) -> LayerNorm {
        LayerNorm {
            w: vb.get("weight", &[dim]),
            b: vb.get("bias", &[dim]),
            eps: eps as f32,
        }
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ops::layer_norm(x, &self.w, &self.b, self.eps)
    }
}

/// T5LayerNorm (RMSNorm, weight only).
pub struct RmsNorm {
    pub w: Tensor,
    pub eps: f32,
}

impl RmsNorm {
    pub fn load(vb: &WeightLoader, dim: usize, eps: f64) -> RmsNorm {
        RmsNorm {
            w: vb.get("weight", &[dim]),
            eps: eps as f32,
        }
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ops::rms_norm(x, &self.w, self.eps)
    }
}

/// `n` copies of `x` stacked along axis 0 (expanding a `[1, ..]` parameter over the batch).
pub fn repeat_batch(x: &Tensor, n: usize) -> Result<Tensor> {
    if n == 1 {
        return Ok(x.clone());
    }
    let parts: Vec<&Tensor> = std::iter::repeat_n(x, n).collect();
    ops::concat(&parts, 0)
}

/// The engine activation for an HF `hidden_act` / `activation_function` name.
pub fn activation(name: &str) -> crate::Result<ops::Unary> {
    match name {
        "gelu" => Ok(ops::Unary::Gelu),
        "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Ok(ops::Unary::GeluTanh),
        "relu" => Ok(ops::Unary::Relu),
        "silu" | "swish" => Ok(ops::Unary::Silu),
        other => Err(crate::ModelError::Unsupported(format!(
            "activation function '{other}'"
        ))),
    }
}
