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

    /// The layer with its decode fusions (`ops::linear_fused`).
    pub fn forward_fused(&self, x: &Tensor, f: &ops::LinearFusion) -> Result<Tensor> {
        ops::linear_fused(x, &self.w, self.b.as_ref(), f)
    }

    /// Several layers over the same input as one (q/k/v, or with `interleave` gate/up row
    /// pairs): their weights' rows stacked once at load (`ops::stack_rows`, any dtype), so a
    /// decode step reads x once and dispatches once.
    pub fn fuse(parts: &[Linear], interleave: bool) -> Result<Linear> {
        let ws: Vec<&Tensor> = parts.iter().map(|l| &l.w).collect();
        let w = ops::stack_rows(&ws, interleave)?;
        let bs: Option<Vec<&Tensor>> = parts.iter().map(|l| l.b.as_ref()).collect();
        let b = match bs {
            Some(bs) => {
                // Biases are vectors: stack them as [n, 1] columns.
                let cols = bs
                    .iter()
                    .map(|b| b.reshape(&[b.elem_count(), 1]))
                    .collect::<Result<Vec<_>>>()?;
                let refs: Vec<&Tensor> = cols.iter().collect();
                let s = ops::stack_rows(&refs, interleave)?;
                let n = s.elem_count();
                Some(s.reshape(&[n])?)
            }
            None => None,
        };
        Ok(Linear { w, b })
    }
}

/// Several linear layers over one input (q/k/v, or T5's gate/up): their weights stacked once
/// at load into one matrix ([`Linear::fuse`]) on a GPU, and on the CPU for q/k/v when they
/// are packed copies in the GEMM's panels anyway, so a decode step reads x once and streams
/// one matrix (three 2560² f16 matrices at OPT-2.7B ran at 28 GB/s a call against fc1's 33).
/// Other CPU weights (used in place from a mapped file, bf16, quantized) and T5's gate/up
/// pair (each already a large matrix; stacked, the CPU would gate through copies) stay
/// apart, and the products run as separate linears.
pub enum StackedLinear {
    One(Linear),
    Parts {
        parts: Vec<Linear>,
        interleave: bool,
    },
}

impl StackedLinear {
    pub fn new(parts: Vec<Linear>, interleave: bool) -> Result<StackedLinear> {
        let stack = |l: &Linear| l.w.device().is_gpu() || (l.w.is_panels() && !interleave);
        if !parts.is_empty() && parts.iter().all(stack) {
            Ok(StackedLinear::One(Linear::fuse(&parts, interleave)?))
        } else {
            Ok(StackedLinear::Parts { parts, interleave })
        }
    }

    /// The layers at `vbs` (`[out_dims[i], in_dim]`, with biases when `bias`) loaded and
    /// stacked as [`Self::new`] decides. A stacked part's tensors are then released by the
    /// loader, so the part goes at once rather than at the end of the load.
    pub fn load(
        vbs: &[WeightLoader],
        in_dim: usize,
        out_dims: &[usize],
        bias: bool,
        interleave: bool,
    ) -> Result<StackedLinear> {
        let parts = vbs
            .iter()
            .zip(out_dims)
            .map(|(vb, &out)| Linear::load(vb, in_dim, out, bias))
            .collect();
        let s = StackedLinear::new(parts, interleave)?;
        if matches!(s, StackedLinear::One(_)) {
            for vb in vbs {
                vb.release(&["weight", "bias"]);
            }
        }
        Ok(s)
    }

    /// `ops::linear_fused` of the stacked layers: the parts' outputs concatenated along the
    /// last dim, or with a gate (`interleave`d gate/up pair) `act(gate) · up`.
    pub fn forward_fused(&self, x: &Tensor, f: &ops::LinearFusion) -> Result<Tensor> {
        let (parts, interleave) = match self {
            StackedLinear::One(l) => return l.forward_fused(x, f),
            StackedLinear::Parts { parts, interleave } => (parts, *interleave),
        };
        let xn = match f.norm {
            Some(ops::NormIn::Layer { w, b, eps }) => ops::layer_norm(x, w, b, eps)?,
            Some(ops::NormIn::Rms { w, eps }) => ops::rms_norm(x, w, eps)?,
            None => x.clone(),
        };
        let ys = parts
            .iter()
            .map(|l| l.forward(&xn))
            .collect::<Result<Vec<_>>>()?;
        let y = match (f.gated, f.act, &ys[..]) {
            (true, Some(act), [gate, up]) if interleave => ops::mul(&ops::unary(gate, act)?, up)?,
            (true, _, _) => {
                return Err(blip2_engine::Error::Invalid(
                    "a gated stacked linear needs an activation and one gate/up pair".into(),
                ));
            }
            (false, act, _) => {
                let refs: Vec<&Tensor> = ys.iter().collect();
                let y = ops::concat(&refs, x.rank() - 1)?;
                match act {
                    Some(a) => ops::unary(&y, a)?,
                    None => y,
                }
            }
        };
        match f.residual {
            Some(r) => ops::add(r, &y),
            None => Ok(y),
        }
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

    /// As the prologue of a fused linear.
    pub fn prologue(&self) -> ops::NormIn<'_> {
        ops::NormIn::Layer {
            w: &self.w,
            b: &self.b,
            eps: self.eps,
        }
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

    /// As the prologue of a fused linear.
    pub fn prologue(&self) -> ops::NormIn<'_> {
        ops::NormIn::Rms {
            w: &self.w,
            eps: self.eps,
        }
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
