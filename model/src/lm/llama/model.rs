//! LlamaForCausalLM: pre-RMSNorm decoder with rotary position embeddings (HF's rotate_half
//! layout), grouped-query attention and a SwiGLU MLP, with a preallocated KV cache written
//! in place.
//!
//! Rotary embeddings are composed from engine ops on `[B, L, heads·hd]` (before the heads
//! are split): x·cos + swap_halves(x)·sin±, where sin± carries rotate_half's sign. GQA
//! repeats each K/V head `heads / kv_heads` times before it enters the cache (HF's
//! `repeat_kv`), so the attention op sees as many K/V heads as query heads.

use blip2_engine::{AttnOpts, DType, Device, Result, Tensor, ops};

use super::LlamaConfig;
pub use crate::lm::kv::KvCache;
use crate::nn::{Linear, RmsNorm, activation};
use crate::weights::WeightLoader;

struct Layer {
    ln_attn: RmsNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    ln_mlp: RmsNorm,
    gate: Linear,
    up: Linear,
    down: Linear,
}

pub struct Llama {
    pub embed_tokens: Tensor,
    layers: Vec<Layer>,
    norm: RmsNorm,
    lm_head: Tensor,
    act: ops::Unary,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    inv_freq: Vec<f32>,
    pub hidden: usize,
    pub vocab: usize,
    pub max_positions: usize,
}

/// cos and signed sin tables `[B, L, heads·hd]` for the rotary embedding of `positions`.
struct Rotary {
    cos: Tensor,
    sin: Tensor,
}

impl Llama {
    /// `vb` is rooted at `language_model`.
    pub fn load(vb: &WeightLoader, cfg: &LlamaConfig) -> crate::Result<Llama> {
        let d = cfg.hidden_size;
        let (h, kvh, hd) = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
        );
        let m = vb.pp("model");
        let eps = cfg.rms_norm_eps;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let l = m.pp("layers").pp(i.to_string());
                let a = l.pp("self_attn");
                let mlp = l.pp("mlp");
                let (ab, mb) = (cfg.attention_bias, cfg.mlp_bias);
                let ff = cfg.intermediate_size;
                Layer {
                    ln_attn: RmsNorm::load(&l.pp("input_layernorm"), d, eps),
                    q: Linear::load(&a.pp("q_proj"), d, h * hd, ab),
                    k: Linear::load(&a.pp("k_proj"), d, kvh * hd, ab),
                    v: Linear::load(&a.pp("v_proj"), d, kvh * hd, ab),
                    o: Linear::load(&a.pp("o_proj"), h * hd, d, ab),
                    ln_mlp: RmsNorm::load(&l.pp("post_attention_layernorm"), d, eps),
                    gate: Linear::load(&mlp.pp("gate_proj"), d, ff, mb),
                    up: Linear::load(&mlp.pp("up_proj"), d, ff, mb),
                    down: Linear::load(&mlp.pp("down_proj"), ff, d, mb),
                }
            })
            .collect();
        m.check_dim(
            "embed_tokens.weight",
            0,
            cfg.vocab_size,
            "text_config.vocab_size",
        )?;
        let embed_tokens = m.get_embedding("embed_tokens.weight", &[cfg.vocab_size, d]);
        // Tied checkpoints store no lm_head (save_pretrained drops it): use the embeddings.
        let lm_head = if cfg.tie_word_embeddings {
            vb.get_linear_with_fallback(
                "lm_head.weight",
                "model.embed_tokens.weight",
                &[cfg.vocab_size, d],
            )
        } else {
            vb.get_linear("lm_head.weight", &[cfg.vocab_size, d])
        };
        Ok(Llama {
            embed_tokens,
            layers,
            norm: RmsNorm::load(&m.pp("norm"), d, eps),
            lm_head,
            act: activation(&cfg.hidden_act)?,
            heads: h,
            kv_heads: kvh,
            head_dim: hd,
            inv_freq: cfg.inv_freq(),
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
        let mk = || {
            Tensor::zeros(
                &[batch, self.heads, capacity, self.head_dim],
                DType::F32,
                device,
            )
        };
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

    /// cos / sin± tables for `heads` heads at `positions` (B·L ids), as HF computes them:
    /// freqs = pos·inv_freq in f32, emb = [freqs, freqs], then cos and sin. sin± is −sin on
    /// the first half of each head, which turns swap_halves(x) into rotate_half(x).
    fn rotary(
        &self,
        positions: &[i64],
        b: usize,
        l: usize,
        heads: usize,
        dev: &Device,
    ) -> Result<Rotary> {
        let hd = self.head_dim;
        let half = hd / 2;
        let n = positions.len() * heads * hd;
        let (mut cos, mut sin) = (Vec::with_capacity(n), Vec::with_capacity(n));
        let mut head_cos = vec![0f32; hd];
        let mut head_sin = vec![0f32; hd];
        for &p in positions {
            for (i, &f) in self.inv_freq.iter().enumerate() {
                let a = (p as f32 * f) as f64;
                let (s, c) = (a.sin() as f32, a.cos() as f32);
                head_cos[i] = c;
                head_cos[i + half] = c;
                head_sin[i] = -s;
                head_sin[i + half] = s;
            }
            for _ in 0..heads {
                cos.extend_from_slice(&head_cos);
                sin.extend_from_slice(&head_sin);
            }
        }
        let shape = [b, l, heads * hd];
        Ok(Rotary {
            cos: Tensor::from_f32(cos, &shape, dev)?,
            sin: Tensor::from_f32(sin, &shape, dev)?,
        })
    }

    /// x·cos + swap_halves(x)·sin± for x `[B, L, heads·hd]`.
    fn apply_rotary(&self, x: &Tensor, r: &Rotary) -> Result<Tensor> {
        let (b, l, w) = (x.dim(0), x.dim(1), x.dim(2));
        let hd = self.head_dim;
        let half = hd / 2;
        let heads = x.reshape(&[b, l * (w / hd), hd])?;
        let lo = ops::narrow(&heads, 2, 0, half)?;
        let hi = ops::narrow(&heads, 2, half, half)?;
        let swapped = ops::concat(&[&hi, &lo], 2)?.reshape(&[b, l, w])?;
        ops::add(&ops::mul(x, &r.cos)?, &ops::mul(&swapped, &r.sin)?)
    }

    /// `[B, kv_heads, L, hd]` -> `[B, heads, L, hd]`, head j reading K/V head j / groups.
    fn repeat_kv(&self, x: &Tensor) -> Result<Tensor> {
        let groups = self.heads / self.kv_heads;
        if groups == 1 {
            return Ok(x.clone());
        }
        let (b, l) = (x.dim(0), x.dim(2));
        let one = x.reshape(&[b, self.kv_heads, 1, l * self.head_dim])?;
        let copies: Vec<&Tensor> = std::iter::repeat_n(&one, groups).collect();
        ops::concat(&copies, 2)?.reshape(&[b, self.heads, l, self.head_dim])
    }

    /// Runs `embeds` `[B, L, D]` (the next L tokens of every row) through the decoder,
    /// appending their K/V to `cache`. `positions` holds B·L rotary position ids
    /// (generate's cumsum(mask) − 1, padding at 0); `mask` is the additive padding mask
    /// `[B, 1, cache.len + L]`. Returns the final hidden states `[B, L, D]` (after the norm).
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
        if positions.len() != b * l {
            return Err(blip2_engine::Error::Invalid(format!(
                "{} position ids for {b} rows of {l} tokens",
                positions.len()
            )));
        }
        let dev = embeds.device().clone();
        let rq = self.rotary(positions, b, l, self.heads, &dev)?;
        let rk = if self.kv_heads == self.heads {
            None
        } else {
            Some(self.rotary(positions, b, l, self.kv_heads, &dev)?)
        };
        let scale = (self.head_dim as f32).powf(-0.5);
        let kv_len = cache.len + l;
        let mut h = embeds.clone();
        for (i, layer) in self.layers.iter().enumerate() {
            let x = layer.ln_attn.forward(&h)?;
            let q = self.apply_rotary(&layer.q.forward(&x)?, &rq)?;
            let k = self.apply_rotary(&layer.k.forward(&x)?, rk.as_ref().unwrap_or(&rq))?;
            let q = ops::split_heads(&q, self.heads)?;
            let k = self.repeat_kv(&ops::split_heads(&k, self.kv_heads)?)?;
            let v = self.repeat_kv(&ops::split_heads(&layer.v.forward(&x)?, self.kv_heads)?)?;
            ops::write_at(&mut cache.k[i], &k, 2, cache.len)?;
            ops::write_at(&mut cache.v[i], &v, 2, cache.len)?;
            let opts = AttnOpts {
                scale,
                causal: true,
                kv_len: Some(kv_len),
                mask,
                bias: None,
            };
            let a = ops::attention(&q, &cache.k[i], &cache.v[i], &opts)?;
            h = ops::add(&h, &layer.o.forward(&ops::merge_heads(&a)?)?)?;
            let x = layer.ln_mlp.forward(&h)?;
            let g = ops::unary(&layer.gate.forward(&x)?, self.act)?;
            let f = layer.down.forward(&ops::mul(&g, &layer.up.forward(&x)?)?)?;
            h = ops::add(&h, &f)?;
        }
        cache.len = kv_len;
        self.norm.forward(&h)
    }

    /// Logits `[.., vocab]` for hidden states `[.., D]`.
    pub fn logits(&self, h: &Tensor) -> Result<Tensor> {
        ops::linear(h, &self.lm_head, None)
    }
}
