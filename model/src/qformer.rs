//! Blip2QFormerModel: a post-LN BERT whose first `query_len` rows are the learned queries.
//! Queries cross-attend the image every `cross_attention_frequency` layers and use the
//! `*_query` FFN; text rows (retrieval, InstructBLIP's instruction) skip cross-attention and
//! use the text FFN.
//!
//! InstructBlipQFormerModel is the same encoder with its own text embeddings
//! (`qformer.embeddings.{word,position}_embeddings`) and the input LayerNorm under
//! `qformer.embeddings.layernorm`: the instruction's BERT tokens follow the queries in
//! self-attention (padding masked), and only the query rows are returned.

use blip2_engine::{AttnOpts, DType, Result, Tensor, ops};

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

/// InstructBlipQFormerEmbeddings' text half: word + absolute position embeddings.
struct TextEmbeddings {
    word: Tensor,
    position: Tensor,
    vocab: usize,
    max_positions: usize,
}

pub struct QFormer {
    pub query_tokens: Tensor,
    layernorm: LayerNorm,
    /// InstructBLIP only.
    text_embeddings: Option<TextEmbeddings>,
    layers: Vec<Layer>,
    heads: usize,
    pub hidden: usize,
}

impl QFormer {
    /// `vb` is rooted at the checkpoint root (`query_tokens`, `qformer.*`). `with_text`:
    /// load the text FFN (retrieval); `instruct`: InstructBLIP's layout (text embeddings
    /// inside the Q-Former, text FFN, LayerNorm under `embeddings`).
    pub fn load(
        vb: &WeightLoader,
        cfg: &QFormerConfig,
        num_query_tokens: usize,
        with_text: bool,
        instruct: bool,
    ) -> crate::Result<QFormer> {
        let with_text = with_text || instruct;
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
        let emb = q.pp("embeddings");
        Ok(QFormer {
            query_tokens: vb.get_f32("query_tokens", &[1, num_query_tokens, d]),
            layernorm: if instruct {
                LayerNorm::load(&emb.pp("layernorm"), d, eps)
            } else {
                LayerNorm::load(&q.pp("layernorm"), d, eps)
            },
            text_embeddings: instruct.then(|| TextEmbeddings {
                word: emb.get("word_embeddings.weight", &[cfg.vocab_size, d]),
                position: emb.get(
                    "position_embeddings.weight",
                    &[cfg.max_position_embeddings, d],
                ),
                vocab: cfg.vocab_size,
                max_positions: cfg.max_position_embeddings,
            }),
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

    /// InstructBLIP's path: the learned queries attend to `image` `[B, N, Dv]` beside the
    /// instruction's padded Q-Former ids `ids` (one row per image, mask 1 = real token);
    /// returns the query rows `[B, Q, D]`.
    pub fn forward_with_text(
        &self,
        image: &Tensor,
        ids: &[Vec<u32>],
        mask: &[Vec<u8>],
    ) -> crate::Result<Tensor> {
        let te = self.text_embeddings.as_ref().ok_or_else(|| {
            crate::ModelError::Invalid(
                "this Q-Former has no text embeddings (not an InstructBLIP checkpoint)".into(),
            )
        })?;
        let b = image.dim(0);
        let l = ids.first().map_or(0, Vec::len);
        if ids.len() != b || mask.len() != b {
            return Err(crate::ModelError::Invalid(format!(
                "{} instructions for {b} images",
                ids.len()
            )));
        }
        if let Some((r, row)) = ids
            .iter()
            .zip(mask)
            .enumerate()
            .find(|(_, (row, m))| row.len() != l || m.len() != l)
        {
            return Err(crate::ModelError::Invalid(format!(
                "instruction row {r} has {} ids, row 0 has {l} (rows must be padded)",
                row.0.len()
            )));
        }
        if l > te.max_positions {
            return Err(crate::ModelError::Invalid(format!(
                "the instruction has {l} Q-Former tokens; the Q-Former has {} positions",
                te.max_positions
            )));
        }
        let flat: Vec<u32> = ids.concat();
        if let Some(&bad) = flat.iter().find(|&&t| t as usize >= te.vocab) {
            return Err(crate::ModelError::Invalid(format!(
                "Q-Former token id {bad} is outside its vocabulary of {}",
                te.vocab
            )));
        }
        let queries = crate::nn::repeat_batch(&self.query_tokens, b)?;
        let nq = queries.dim(1);
        let embeds = if l == 0 {
            queries
        } else {
            let words =
                ops::embedding(&te.word, &flat, DType::F32)?.reshape(&[b, l, self.hidden])?;
            let positions: Vec<u32> = (0..l as u32).collect();
            let pos = ops::embedding(&te.position, &positions, DType::F32)?;
            ops::concat(&[&queries, &ops::add(&words, &pos)?], 1)?
        };
        // Queries always visible; text keys masked where the mask is 0.
        let self_mask = if mask.iter().all(|m| m.iter().all(|&v| v == 1)) {
            None
        } else {
            let data: Vec<f32> = mask
                .iter()
                .flat_map(|m| {
                    std::iter::repeat_n(0.0, nq)
                        .chain(m.iter().map(|&v| if v == 1 { 0.0 } else { f32::MIN }))
                })
                .collect();
            Some(Tensor::from_f32(data, &[b, 1, nq + l], image.device())?)
        };
        let out = self.encode(&embeds, nq, Some(image), self_mask.as_ref())?;
        Ok(if l == 0 {
            out
        } else {
            ops::narrow(&out, 1, 0, nq)?
        })
    }

    /// The generation path: the learned queries attend to `image` `[B, N, Dv]` -> `[B, Q, D]`.
    pub fn forward(&self, image: &Tensor) -> Result<Tensor> {
        let queries = crate::nn::repeat_batch(&self.query_tokens, image.dim(0))?;
        self.encode(&queries, queries.dim(1), Some(image), None)
    }
}
