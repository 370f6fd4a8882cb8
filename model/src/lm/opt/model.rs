//! OPTForCausalLM (pre-LN decoder, learned positions with offset 2, ReLU FFN) with a
//! preallocated KV cache written in place.

use blip2_engine::ops::LinearFusion;
use blip2_engine::{AttnOpts, DType, Device, Result, Tensor, ops};

use super::OptConfig;
pub use crate::lm::kv::KvCache;
use crate::nn::{LayerNorm, Linear, StackedLinear, activation};
use crate::weights::WeightLoader;

/// HF's OPTLearnedPositionalEmbedding skips the first two rows.
const POSITION_OFFSET: u32 = 2;

struct Layer {
    ln_attn: LayerNorm,
    /// q, k and v projections, stacked into one `[3D, D]` linear on a GPU.
    qkv: StackedLinear,
    out: Linear,
    ln_ffn: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

/// The fusion of a projection after `ln`: the norm as its prologue when the model is pre-LN.
fn pre_norm(pre_ln: bool, ln: &LayerNorm) -> LinearFusion<'_> {
    LinearFusion {
        norm: pre_ln.then(|| ln.prologue()),
        ..Default::default()
    }
}

pub struct Opt {
    pub embed_tokens: Tensor,
    embed_positions: Tensor,
    layers: Vec<Layer>,
    final_ln: Option<LayerNorm>,
    lm_head: Tensor,
    act: blip2_engine::ops::Unary,
    pre_ln: bool,
    heads: usize,
    pub hidden: usize,
    pub vocab: usize,
    pub max_positions: usize,
}

impl Opt {
    /// `vb` is rooted at `language_model`.
    pub fn load(vb: &WeightLoader, cfg: &OptConfig) -> crate::Result<Opt> {
        let d = cfg.hidden_size;
        if cfg.word_embed_proj_dim != d {
            return Err(crate::ModelError::Unsupported(format!(
                "OPT with word_embed_proj_dim {} != hidden_size {d} (project_in/out) is not supported",
                cfg.word_embed_proj_dim
            )));
        }
        if !cfg.layer_norm_elementwise_affine {
            return Err(crate::ModelError::Unsupported(
                "OPT with layer_norm_elementwise_affine = false (LayerNorms without weights) is not supported".into(),
            ));
        }
        let dec = vb.pp("model.decoder");
        let bias = cfg.enable_bias;
        dec.check_layer_count(
            "layers",
            cfg.num_hidden_layers,
            "text_config.num_hidden_layers",
        )?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let l = dec.pp("layers").pp(i.to_string());
                let a = l.pp("self_attn");
                let qkv = StackedLinear::load(
                    &[a.pp("q_proj"), a.pp("k_proj"), a.pp("v_proj")],
                    d,
                    &[d, d, d],
                    bias,
                    false,
                )?;
                Ok(Layer {
                    ln_attn: LayerNorm::load(&l.pp("self_attn_layer_norm"), d, cfg.layer_norm_eps),
                    qkv,
                    out: Linear::load(&a.pp("out_proj"), d, d, bias),
                    ln_ffn: LayerNorm::load(&l.pp("final_layer_norm"), d, cfg.layer_norm_eps),
                    fc1: Linear::load(&l.pp("fc1"), d, cfg.ffn_dim, bias),
                    fc2: Linear::load(&l.pp("fc2"), cfg.ffn_dim, d, bias),
                })
            })
            .collect::<crate::Result<Vec<_>>>()?;
        // Tied in every BLIP-2 OPT checkpoint: one tensor (and one quantization) for both.
        dec.check_dim(
            "embed_tokens.weight",
            0,
            cfg.vocab_size,
            "text_config.vocab_size",
        )?;
        let embed_tokens = dec.get_embedding("embed_tokens.weight", &[cfg.vocab_size, d]);
        let lm_head = vb.get_linear_with_fallback(
            "lm_head.weight",
            "model.decoder.embed_tokens.weight",
            &[cfg.vocab_size, d],
        );
        Ok(Opt {
            embed_positions: dec.get(
                "embed_positions.weight",
                &[cfg.max_position_embeddings + POSITION_OFFSET as usize, d],
            ),
            embed_tokens,
            layers,
            // HF: a final LayerNorm only with pre-LN and unless `_remove_final_layer_norm`.
            final_ln: (cfg.do_layer_norm_before && !cfg.remove_final_layer_norm)
                .then(|| LayerNorm::load(&dec.pp("final_layer_norm"), d, cfg.layer_norm_eps)),
            lm_head,
            act: activation(&cfg.activation_function)?,
            pre_ln: cfg.do_layer_norm_before,
            heads: cfg.num_attention_heads,
            hidden: d,
            vocab: cfg.vocab_size,
            max_positions: cfg.max_position_embeddings,
        })
    }

    /// Token embeddings `[n, D]` in f32 for `ids`.
    pub fn embed(&self, ids: &[u32]) -> Result<Tensor> {
        ops::embedding(&self.embed_tokens, ids, DType::F32)
    }

    pub fn new_cache(&self, batch: usize, capacity: usize, device: &Device) -> Result<KvCache> {
        let hd = self.hidden / self.heads;
        let mk = || Tensor::zeros(&[batch, self.heads, capacity, hd], DType::F32, device);
        let k = (0..self.layers.len())
            .map(|_| mk())
            .collect::<Result<Vec<_>>>()?;
        let v = (0..self.layers.len())
            .map(|_| mk())
            .collect::<Result<Vec<_>>>()?;
        Ok(KvCache {
            k,
            v,
            len: 0,
            capacity,
        })
    }

    /// Runs `embeds` `[B, L, D]` (the next L tokens of every row) through the decoder,
    /// appending their K/V to `cache`. `positions` holds B·L position ids (HF:
    /// cumsum(mask)·mask − 1, so padding gets −1); `mask` is the additive padding mask
    /// `[B, 1, cache.len + L]`. Returns the final hidden states `[B, L, D]`.
    pub fn forward(
        &self,
        embeds: &Tensor,
        positions: &[i64],
        mask: Option<&Tensor>,
        cache: &mut KvCache,
    ) -> Result<Tensor> {
        let (b, l) = (embeds.dim(0), embeds.dim(1));
        if cache.len + l > cache.capacity {
            return Err(blip2_engine::Error::Limit {
                what: "KV cache".into(),
                needed: (cache.len + l) as u64,
                limit: cache.capacity as u64,
            });
        }
        let ids: Vec<u32> = positions
            .iter()
            .map(|&p| (p + POSITION_OFFSET as i64).clamp(0, self.max_positions as i64 + 1) as u32)
            .collect();
        let pos = ops::embedding(&self.embed_positions, &ids, DType::F32)?.reshape(&[
            b,
            l,
            self.hidden,
        ])?;
        let mut h = ops::add(embeds, &pos)?;
        let scale = ((self.hidden / self.heads) as f32).powf(-0.5);
        let kv_len = cache.len + l;
        for (i, layer) in self.layers.iter().enumerate() {
            // Pre-LN: the norms are the prologues of the projections after them and the
            // residual adds their epilogues, so a decode step is five dispatches a layer on
            // the GPU (ops::linear_fused, ops::attention_append).
            let qkv = layer
                .qkv
                .forward_fused(&h, &pre_norm(self.pre_ln, &layer.ln_attn))?;
            let (kc, vc) = (&mut cache.k[i], &mut cache.v[i]);
            let opts = AttnOpts {
                scale,
                causal: true,
                kv_len: None,
                mask,
                bias: None,
            };
            let a = ops::attention_append(&qkv, kc, vc, cache.len, &opts)?;
            h = layer.out.forward_fused(
                &a,
                &LinearFusion {
                    residual: Some(&h),
                    ..Default::default()
                },
            )?;
            if !self.pre_ln {
                h = layer.ln_attn.forward(&h)?;
            }
            let f = layer.fc1.forward_fused(
                &h,
                &LinearFusion {
                    act: Some(self.act),
                    ..pre_norm(self.pre_ln, &layer.ln_ffn)
                },
            )?;
            h = layer.fc2.forward_fused(
                &f,
                &LinearFusion {
                    residual: Some(&h),
                    ..Default::default()
                },
            )?;
            if !self.pre_ln {
                h = layer.ln_ffn.forward(&h)?;
            }
        }
        cache.len = kv_len;
        match &self.final_ln {
            Some(ln) => ln.forward(&h),
            None => Ok(h),
        }
    }

    /// Logits `[.., vocab]` for hidden states `[.., D]`.
    pub fn logits(&self, h: &Tensor) -> Result<Tensor> {
        ops::linear(h, &self.lm_head, None)
    }
}
