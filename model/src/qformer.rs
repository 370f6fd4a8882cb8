//! Blip2QFormerModel: a post-LN BERT whose first `query_len` rows are the learned queries.
//! Queries cross-attend the image every `cross_attention_frequency` layers and use the
//! `*_query` FFN; text rows (retrieval) skip cross-attention and use the text FFN.

use blip2_engine::{AttnOpts, Result, Tensor, ops};

use crate::config::QFormerConfig;
use crate::nn::{LayerNorm, Linear, activation};
use crate::weights::WeightLoader;

/// BertAttention: q/k/v projections, then LN(dense(context) + input).
struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    ln: LayerNorm,
}

impl Attention {
    fn load(vb: &WeightLoader, d: usize, kv_dim: usize, eps: f64) -> Attention {
        let a = vb.pp("attention");
        Attention {
            q: Linear::load(&a.pp("query"), d, d, true),
            k: Linear::load(&a.pp("key"), kv_dim, d, true),
            v: Linear::load(&a.pp("value"), kv_dim, d, true),
            out: Linear::load(&vb.pp("output.dense"), d, d, true),
            ln: LayerNorm::load(&vb.pp("output.LayerNorm"), d, eps),
        }
    }

    fn forward(
        &self,
        x: &Tensor,
        kv: &Tensor,
        heads: usize,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let q = ops::split_heads(&self.q.forward(x)?, heads)?;
        let k = ops::split_heads(&self.k.forward(kv)?, heads)?;
        let v = ops::split_heads(&self.v.forward(kv)?, heads)?;
        let scale = (q.dim(3) as f32).powf(-0.5);
        let ctx = ops::attention(
            &q,
            &k,
            &v,
            &AttnOpts {
                scale,
                mask,
                ..Default::default()
            },
        )?;
        let h = self.out.forward(&ops::merge_heads(&ctx)?)?;
        self.ln.forward(&ops::add(&h, x)?)
    }
}

/// intermediate (the config's activation, GELU for BLIP-2) + output: LN(dense(act(dense(x))) + x).
struct Ffn {
    up: Linear,
    down: Linear,
    ln: LayerNorm,
    act: ops::Unary,
}

impl Ffn {
    fn load(
        vb: &WeightLoader,
        inter: &str,
        out: &str,
        d: usize,
        ff: usize,
        eps: f64,
        act: ops::Unary,
    ) -> Ffn {
        Ffn {
            act,
            up: Linear::load(&vb.pp(inter).pp("dense"), d, ff, true),
            down: Linear::load(&vb.pp(out).pp("dense"), ff, d, true),
            ln: LayerNorm::load(&vb.pp(out).pp("LayerNorm"), d, eps),
        }
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self
            .down
            .forward(&ops::unary(&self.up.forward(x)?, self.act)?)?;
        self.ln.forward(&ops::add(&h, x)?)
    }
}

struct Layer {
    self_attn: Attention,
    cross_attn: Option<Attention>,
    ffn_query: Ffn,
    /// Text FFN: present in retrieval checkpoints only.
    ffn_text: Option<Ffn>,
}

pub struct QFormer {
    pub query_tokens: Tensor,
    layernorm: LayerNorm,
    layers: Vec<Layer>,
    heads: usize,
    pub hidden: usize,
}

impl QFormer {
    /// `vb` is rooted at the checkpoint root (`query_tokens`, `qformer.*`).
    pub fn load(
        vb: &WeightLoader,
        cfg: &QFormerConfig,
        num_query_tokens: usize,
        with_text: bool,
    ) -> crate::Result<QFormer> {
        let d = cfg.hidden_size;
        let eps = cfg.layer_norm_eps;
        let act = activation(&cfg.hidden_act)?;
        let q = vb.pp("qformer");
        q.check_layer_count(
            "encoder.layer",
            cfg.num_hidden_layers,
            "qformer_config.num_hidden_layers",
        )?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let l = q.pp("encoder.layer").pp(i.to_string());
                let ff = cfg.intermediate_size;
                Layer {
                    self_attn: Attention::load(&l.pp("attention"), d, d, eps),
                    cross_attn: (i % cfg.cross_attention_frequency == 0).then(|| {
                        Attention::load(&l.pp("crossattention"), d, cfg.encoder_hidden_size, eps)
                    }),
                    ffn_query: Ffn::load(&l, "intermediate_query", "output_query", d, ff, eps, act),
                    ffn_text: with_text
                        .then(|| Ffn::load(&l, "intermediate", "output", d, ff, eps, act)),
                }
            })
            .collect();
        Ok(QFormer {
            query_tokens: vb.get_f32("query_tokens", &[1, num_query_tokens, d]),
            layernorm: LayerNorm::load(&q.pp("layernorm"), d, eps),
            layers,
            heads: cfg.num_attention_heads,
            hidden: d,
        })
    }

    /// Runs the encoder on `embeds` `[B, L, D]` (already holding queries and text
    /// embeddings, before the input LayerNorm) whose first `query_len` rows are queries.
    /// `image` `[B, N, Dv]` is cross-attended by the query rows (None: text-only mode).
    /// `self_mask` is an additive `[B, 1, L]` mask for self-attention.
    pub fn encode(
        &self,
        embeds: &Tensor,
        query_len: usize,
        image: Option<&Tensor>,
        self_mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let mut x = self.layernorm.forward(embeds)?;
        let len = x.dim(1);
        for layer in &self.layers {
            x = layer.self_attn.forward(&x, &x, self.heads, self_mask)?;
            let mut parts = Vec::with_capacity(2);
            if query_len > 0 {
                let mut q = if query_len == len {
                    x.clone()
                } else {
                    ops::narrow(&x, 1, 0, query_len)?
                };
                if let (Some(cross), Some(img)) = (&layer.cross_attn, image) {
                    q = cross.forward(&q, img, self.heads, None)?;
                }
                parts.push(layer.ffn_query.forward(&q)?);
            }
            if query_len < len {
                let t = if query_len == 0 {
                    x.clone()
                } else {
                    ops::narrow(&x, 1, query_len, len - query_len)?
                };
                let ffn = layer.ffn_text.as_ref().ok_or_else(|| {
                    blip2_engine::Error::Invalid(
                        "this Q-Former checkpoint has no text FFN (intermediate/output) weights"
                            .into(),
                    )
                })?;
                parts.push(ffn.forward(&t)?);
            }
            x = if parts.len() == 1 {
                parts.pop().unwrap_or(x)
            } else {
                ops::concat(&[&parts[0], &parts[1]], 1)?
            };
        }
        Ok(x)
    }

    /// The generation path: the learned queries attend to `image` `[B, N, Dv]` -> `[B, Q, D]`.
    pub fn forward(&self, image: &Tensor) -> Result<Tensor> {
        let queries = crate::nn::repeat_batch(&self.query_tokens, image.dim(0))?;
        self.encode(&queries, queries.dim(1), Some(image), None)
    }
}
