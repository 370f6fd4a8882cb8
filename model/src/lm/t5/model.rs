//! T5ForConditionalGeneration as Flan-T5 uses it: RMSNorm, unscaled attention with a
//! relative position bias from block 0 shared by every layer, gated FFN, untied lm_head.
//! The decoder keeps a preallocated self-attention cache; cross-attention K/V over the
//! encoder output are computed once per request.

use blip2_engine::ops::LinearFusion;
use blip2_engine::{AttnOpts, DType, Device, Result, Tensor, ops};

use super::T5Config;
use crate::lm::kv::KvCache;
use crate::nn::{Linear, RmsNorm, StackedLinear, activation};
use crate::weights::WeightLoader;

/// HF `_relative_position_bucket`, with the logarithm in f32 as torch computes it.
pub fn relative_position_bucket(
    rel: i64,
    bidirectional: bool,
    num_buckets: usize,
    max_distance: usize,
) -> usize {
    let mut nb = num_buckets as i64;
    let mut bucket = 0i64;
    let n = if bidirectional {
        nb /= 2;
        if rel > 0 {
            bucket += nb;
        }
        rel.abs()
    } else {
        (-rel).max(0)
    };
    let max_exact = nb / 2;
    if n < max_exact {
        bucket += n;
    } else {
        let ratio = ((n as f32) / (max_exact as f32)).ln()
            / ((max_distance as f64 / max_exact as f64).ln() as f32);
        // `as` saturates on f32 -> i64; the clamp keeps any config in the table's range.
        let large = max_exact.saturating_add((ratio * (nb - max_exact) as f32) as i64);
        bucket += large.clamp(max_exact, nb - 1);
    }
    bucket as usize
}

/// Self-attention: q, k and v, stacked into one `[3·inner, d]` linear on a GPU.
struct SelfAttention {
    qkv: StackedLinear,
    o: Linear,
    inner: usize,
}

impl SelfAttention {
    fn load(vb: &WeightLoader, d: usize, inner: usize) -> crate::Result<SelfAttention> {
        Ok(SelfAttention {
            qkv: StackedLinear::load(
                &["q", "k", "v"].map(|n| vb.pp(n)),
                d,
                &[inner; 3],
                false,
                false,
            )?,
            o: Linear::load(&vb.pp("o"), inner, d, false),
            inner,
        })
    }
}

/// Cross-attention: k and v run once over the encoder output, q every step.
struct CrossAttention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
}

impl CrossAttention {
    fn load(vb: &WeightLoader, d: usize, inner: usize) -> CrossAttention {
        CrossAttention {
            q: Linear::load(&vb.pp("q"), d, inner, false),
            k: Linear::load(&vb.pp("k"), d, inner, false),
            v: Linear::load(&vb.pp("v"), d, inner, false),
            o: Linear::load(&vb.pp("o"), inner, d, false),
        }
    }
}

/// Feed-forward; a gated one (Flan-T5) keeps wi_0 (gate) and wi_1 (up) as interleaved row
/// pairs of one linear on a GPU, which `ops::linear_fused` gates in its epilogue.
struct Ffn {
    wi: StackedLinear,
    gated: bool,
    wo: Linear,
    act: ops::Unary,
}

impl Ffn {
    fn load(vb: &WeightLoader, cfg: &T5Config) -> crate::Result<Ffn> {
        let (d, ff) = (cfg.d_model, cfg.d_ff);
        let wi = if cfg.is_gated_act {
            StackedLinear::load(&[vb.pp("wi_0"), vb.pp("wi_1")], d, &[ff, ff], false, true)?
        } else {
            StackedLinear::One(Linear::load(&vb.pp("wi"), d, ff, false))
        };
        Ok(Ffn {
            wi,
            gated: cfg.is_gated_act,
            wo: Linear::load(&vb.pp("wo"), ff, d, false),
            act: activation(&cfg.dense_act_fn)?,
        })
    }

    /// `h + ffn(norm(h))`.
    fn forward(&self, h: &Tensor, norm: &RmsNorm) -> Result<Tensor> {
        let f = self.wi.forward_fused(
            h,
            &LinearFusion {
                norm: Some(norm.prologue()),
                act: Some(self.act),
                gated: self.gated,
                residual: None,
            },
        )?;
        self.wo.forward_fused(&f, &residual(h))
    }
}

/// `+ residual` as a linear's epilogue.
fn residual(h: &Tensor) -> LinearFusion<'_> {
    LinearFusion {
        residual: Some(h),
        ..Default::default()
    }
}

/// `norm` as a linear's prologue.
fn normed(norm: &RmsNorm) -> LinearFusion<'_> {
    LinearFusion {
        norm: Some(norm.prologue()),
        ..Default::default()
    }
}

struct EncoderBlock {
    ln_attn: RmsNorm,
    attn: SelfAttention,
    ln_ffn: RmsNorm,
    ffn: Ffn,
}

struct DecoderBlock {
    ln_self: RmsNorm,
    self_attn: SelfAttention,
    ln_cross: RmsNorm,
    cross_attn: CrossAttention,
    ln_ffn: RmsNorm,
    ffn: Ffn,
}

pub struct T5 {
    pub shared: Tensor,
    enc_blocks: Vec<EncoderBlock>,
    enc_final: RmsNorm,
    /// Relative bias tables `[buckets, H]` of block 0, on the host (small; the bias for a
    /// given (q, k) window is built on the host and uploaded).
    enc_rel: Vec<f32>,
    dec_rel: Vec<f32>,
    dec_blocks: Vec<DecoderBlock>,
    dec_final: RmsNorm,
    lm_head: Tensor,
    tie_scale: Option<f32>,
    heads: usize,
    d_kv: usize,
    pub d_model: usize,
    pub vocab: usize,
    /// The first decoder input (`decoder_start_token_id`).
    pub decoder_start: u32,
    buckets: usize,
    max_distance: usize,
}

/// Decoder state: self-attention K/V (a [`KvCache`], the next token written at column
/// `kv.len`) and every layer's cross-attention K/V of the encoder output, with the
/// encoder's padding mask.
pub struct T5DecoderCache {
    pub(crate) kv: KvCache,
    cross_k: Vec<Tensor>,
    cross_v: Vec<Tensor>,
    /// Additive `[B, 1, L]` mask of the encoder's padding (None: nothing padded).
    enc_mask: Option<Tensor>,
    /// Encoder batch row each decoder row attends to: cross K/V are only copied when this
    /// changes (beams of one row share them, so they are expanded once).
    enc_rows: Vec<usize>,
}

impl T5DecoderCache {
    /// Keeps decoder row `src[i]` as row `i` (beam search reordering, dropping finished
    /// rows).
    pub fn select_rows(&mut self, src: &[usize]) -> Result<()> {
        self.kv.select_rows(src)?;
        let enc_rows: Vec<usize> = src.iter().map(|&s| self.enc_rows[s]).collect();
        if enc_rows != self.enc_rows {
            for t in self.cross_k.iter_mut().chain(self.cross_v.iter_mut()) {
                *t = ops::gather_rows(t, src)?;
            }
            if let Some(m) = &self.enc_mask {
                self.enc_mask = Some(ops::gather_rows(m, src)?);
            }
            self.enc_rows = enc_rows;
        }
        Ok(())
    }

    pub fn rows(&self) -> usize {
        self.kv.rows()
    }

    /// Encoder columns of the cross-attention K/V.
    pub fn enc_len(&self) -> usize {
        self.cross_k.first().map_or(0, |t| t.dim(2))
    }

    /// Appends the rows of `other`: their cross-attention K/V, and their self-attention
    /// columns right-aligned at this cache's write column (as [`KvCache::write_rows`]
    /// places them; the caller masks the columns before them). Both caches' encoder
    /// columns are padded with zeros on the right to the longer of the two; `enc_mask`
    /// `[rows, 1, that length]` (additive) must hide the padding of every row (None: no
    /// row has any).
    pub fn append_rows(&mut self, other: &T5DecoderCache, enc_mask: Option<Tensor>) -> Result<()> {
        let (n, j) = (self.rows(), other.rows());
        let l = self.enc_len().max(other.enc_len());
        let bad = match &enc_mask {
            Some(m) => m.shape() != [n + j, 1, l],
            None => self.enc_len() != other.enc_len(),
        };
        if bad {
            return Err(blip2_engine::Error::Invalid(format!(
                "T5 decoder cache: encoder mask of {} rows of {l} columns expected, found {:?}",
                n + j,
                enc_mask.as_ref().map(Tensor::shape)
            )));
        }
        let pad = |t: &Tensor| -> Result<Tensor> {
            if t.dim(2) == l {
                return Ok(t.clone());
            }
            let mut shape = t.shape().to_vec();
            shape[2] = l;
            let mut z = Tensor::zeros(&shape, t.dtype(), t.device())?;
            ops::write_at(&mut z, t, 2, 0)?;
            Ok(z)
        };
        let pairs = self
            .cross_k
            .iter_mut()
            .zip(&other.cross_k)
            .chain(self.cross_v.iter_mut().zip(&other.cross_v));
        for (t, o) in pairs {
            *t = ops::concat(&[&pad(t)?, &pad(o)?], 0)?;
        }
        self.kv.add_rows(j)?;
        self.kv
            .write_rows(&(n..n + j).collect::<Vec<_>>(), &other.kv)?;
        self.enc_mask = enc_mask;
        // The new rows attend to encoder rows of their own.
        let base = self.enc_rows.iter().max().map_or(0, |m| m + 1);
        self.enc_rows
            .extend(other.enc_rows.iter().map(|r| base + r));
        Ok(())
    }
}

impl T5 {
    /// `vb` is rooted at `language_model`.
    pub fn load(vb: &WeightLoader, cfg: &T5Config) -> crate::Result<T5> {
        let d = cfg.d_model;
        let inner = cfg.num_heads * cfg.d_kv;
        vb.check_dim("shared.weight", 0, cfg.vocab_size, "text_config.vocab_size")?;
        let shared = vb.get_embedding("shared.weight", &[cfg.vocab_size, d]);
        let enc = vb.pp("encoder");
        let dec = vb.pp("decoder");
        let eps = cfg.layer_norm_epsilon;
        enc.check_layer_count("block", cfg.num_layers, "text_config.num_layers")?;
        dec.check_layer_count(
            "block",
            cfg.num_decoder_layers,
            "text_config.num_decoder_layers",
        )?;
        let mut enc_blocks = Vec::new();
        for i in 0..cfg.num_layers {
            let b = enc.pp("block").pp(i.to_string());
            enc_blocks.push(EncoderBlock {
                ln_attn: RmsNorm::load(&b.pp("layer.0.layer_norm"), d, eps),
                attn: SelfAttention::load(&b.pp("layer.0.SelfAttention"), d, inner)?,
                ln_ffn: RmsNorm::load(&b.pp("layer.1.layer_norm"), d, eps),
                ffn: Ffn::load(&b.pp("layer.1.DenseReluDense"), cfg)?,
            });
        }
        let mut dec_blocks = Vec::new();
        for i in 0..cfg.num_decoder_layers {
            let b = dec.pp("block").pp(i.to_string());
            dec_blocks.push(DecoderBlock {
                ln_self: RmsNorm::load(&b.pp("layer.0.layer_norm"), d, eps),
                self_attn: SelfAttention::load(&b.pp("layer.0.SelfAttention"), d, inner)?,
                ln_cross: RmsNorm::load(&b.pp("layer.1.layer_norm"), d, eps),
                cross_attn: CrossAttention::load(&b.pp("layer.1.EncDecAttention"), d, inner),
                ln_ffn: RmsNorm::load(&b.pp("layer.2.layer_norm"), d, eps),
                ffn: Ffn::load(&b.pp("layer.2.DenseReluDense"), cfg)?,
            });
        }
        let rel_shape = [cfg.relative_attention_num_buckets, cfg.num_heads];
        let enc_rel = enc.get_f32(
            "block.0.layer.0.SelfAttention.relative_attention_bias.weight",
            &rel_shape,
        );
        let dec_rel = dec.get_f32(
            "block.0.layer.0.SelfAttention.relative_attention_bias.weight",
            &rel_shape,
        );
        // A stored lm_head is used even when the config says "tied" (transformers 5 writes
        // tie_word_embeddings=true for Flan-T5 whose checkpoints hold a separate head).
        let lm_head = if cfg.tie_word_embeddings {
            vb.get_linear_with_fallback("lm_head.weight", "shared.weight", &[cfg.vocab_size, d])
        } else {
            vb.get_linear("lm_head.weight", &[cfg.vocab_size, d])
        };
        Ok(T5 {
            shared,
            enc_blocks,
            enc_final: RmsNorm::load(&enc.pp("final_layer_norm"), d, eps),
            // Zero-size placeholders (missing weights) download as empty vectors; the
            // loader's finish() reports the problem before these are ever used.
            enc_rel: enc_rel.to_vec_f32()?,
            dec_rel: dec_rel.to_vec_f32()?,
            dec_blocks,
            dec_final: RmsNorm::load(&dec.pp("final_layer_norm"), d, eps),
            lm_head,
            tie_scale: cfg.scale_decoder_outputs.then(|| (d as f32).powf(-0.5)),
            heads: cfg.num_heads,
            d_kv: cfg.d_kv,
            d_model: d,
            vocab: cfg.vocab_size,
            decoder_start: cfg.decoder_start_token_id,
            buckets: cfg.relative_attention_num_buckets,
            max_distance: cfg.relative_attention_max_distance,
        })
    }

    /// Token embeddings `[n, D]` (f32) from the shared table.
    pub fn embed(&self, ids: &[u32]) -> Result<Tensor> {
        ops::embedding(&self.shared, ids, DType::F32)
    }

    /// Position bias `[H, q_len, k_len]` for queries at `q_offset..q_offset+q_len`.
    fn position_bias(
        &self,
        table: &[f32],
        q_offset: usize,
        q_len: usize,
        k_len: usize,
        bidirectional: bool,
        device: &Device,
    ) -> Result<Tensor> {
        let h = self.heads;
        let mut out = vec![0f32; h * q_len * k_len];
        for i in 0..q_len {
            for j in 0..k_len {
                let rel = j as i64 - (i + q_offset) as i64;
                let b =
                    relative_position_bucket(rel, bidirectional, self.buckets, self.max_distance);
                for hh in 0..h {
                    out[(hh * q_len + i) * k_len + j] = table[b * h + hh];
                }
            }
        }
        Tensor::from_f32(out, &[h, q_len, k_len], device)
    }

    fn heads_of(&self, lin: &Linear, x: &Tensor) -> Result<Tensor> {
        ops::split_heads(&lin.forward(x)?, self.heads)
    }

    /// Encoder over `embeds` `[B, L, D]` with an additive padding `mask` `[B, 1, L]`.
    pub fn encode(&self, embeds: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let l = embeds.dim(1);
        let bias = self.position_bias(&self.enc_rel, 0, l, l, true, embeds.device())?;
        let mut h = embeds.clone();
        for b in &self.enc_blocks {
            let qkv = b.attn.qkv.forward_fused(&h, &normed(&b.ln_attn))?;
            let inner = b.attn.inner;
            let [q, k, v] = [0, 1, 2].map(|i| {
                ops::narrow(&qkv, 2, i * inner, inner)
                    .and_then(|t| ops::split_heads(&t, self.heads))
            });
            let a = ops::attention(
                &q?,
                &k?,
                &v?,
                &AttnOpts {
                    scale: 1.0,
                    mask,
                    bias: Some(&bias),
                    ..Default::default()
                },
            )?;
            h = b
                .attn
                .o
                .forward_fused(&ops::merge_heads(&a)?, &residual(&h))?;
            h = b.ffn.forward(&h, &b.ln_ffn)?;
        }
        self.enc_final.forward(&h)
    }

    /// Decoder state: cross-attention K/V of `enc_out` `[B, L, D]` for every layer, and an
    /// empty self-attention cache of `capacity` positions.
    pub fn new_decoder_cache(
        &self,
        enc_out: &Tensor,
        enc_mask: Option<&Tensor>,
        capacity: usize,
    ) -> Result<T5DecoderCache> {
        let bsz = enc_out.dim(0);
        let mut cache = T5DecoderCache {
            kv: KvCache {
                k: Vec::new(),
                v: Vec::new(),
                len: 0,
                capacity,
            },
            cross_k: Vec::new(),
            cross_v: Vec::new(),
            enc_mask: enc_mask.cloned(),
            enc_rows: (0..bsz).collect(),
        };
        for b in &self.dec_blocks {
            cache.cross_k.push(self.heads_of(&b.cross_attn.k, enc_out)?);
            cache.cross_v.push(self.heads_of(&b.cross_attn.v, enc_out)?);
            let z = || {
                Tensor::zeros(
                    &[bsz, self.heads, capacity, self.d_kv],
                    DType::F32,
                    enc_out.device(),
                )
            };
            cache.kv.k.push(z()?);
            cache.kv.v.push(z()?);
        }
        Ok(cache)
    }

    /// Runs the next `L` decoder tokens `embeds` `[B, L, D]` and returns logits `[B, L, V]`.
    /// `self_mask` (additive, `[B, 1, len + L]`) hides self-attention columns: the padding
    /// before a row that joined a running batch later (its tokens end at the same column as
    /// the others', so the relative positions, column differences, are its own).
    pub fn decode(
        &self,
        embeds: &Tensor,
        cache: &mut T5DecoderCache,
        self_mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let l = embeds.dim(1);
        let len = cache.kv.len;
        if len + l > cache.kv.capacity {
            return Err(blip2_engine::Error::Limit {
                what: "T5 decoder cache".into(),
                needed: (len + l) as u64,
                limit: cache.kv.capacity as u64,
            });
        }
        let kv_len = len + l;
        let bias = self.position_bias(&self.dec_rel, len, l, kv_len, false, embeds.device())?;
        let mut h = embeds.clone();
        // Per layer on the GPU for one token: the RMSNorms are prologues of the projections
        // after them, the residual adds epilogues, the new K/V are written by the attention
        // (ops::linear_fused, ops::attention_append): eight dispatches.
        for (i, b) in self.dec_blocks.iter().enumerate() {
            let qkv = b.self_attn.qkv.forward_fused(&h, &normed(&b.ln_self))?;
            let opts = AttnOpts {
                scale: 1.0,
                causal: true,
                kv_len: None,
                mask: self_mask,
                bias: Some(&bias),
            };
            let (kc, vc) = (&mut cache.kv.k[i], &mut cache.kv.v[i]);
            let a = ops::attention_append(&qkv, kc, vc, len, &opts)?;
            h = b.self_attn.o.forward_fused(&a, &residual(&h))?;
            let q = b.cross_attn.q.forward_fused(&h, &normed(&b.ln_cross))?;
            let q = ops::split_heads(&q, self.heads)?;
            let opts = AttnOpts {
                scale: 1.0,
                mask: cache.enc_mask.as_ref(),
                ..Default::default()
            };
            let a = ops::attention(&q, &cache.cross_k[i], &cache.cross_v[i], &opts)?;
            h = b
                .cross_attn
                .o
                .forward_fused(&ops::merge_heads(&a)?, &residual(&h))?;
            h = b.ffn.forward(&h, &b.ln_ffn)?;
        }
        cache.kv.len = kv_len;
        let mut h = self.dec_final.forward(&h)?;
        if let Some(s) = self.tie_scale {
            h = ops::scale(&h, s)?;
        }
        ops::linear(&h, &self.lm_head, None)
    }
}

#[cfg(test)]
mod tests {
    use super::relative_position_bucket as bucket;

    #[test]
    fn buckets_match_hf_examples() {
        // Expected values printed by transformers 5.24's T5Attention._relative_position_bucket
        // (num_buckets 32, max_distance 128) with torch 2.15.
        assert_eq!(bucket(0, true, 32, 128), 0);
        assert_eq!(bucket(1, true, 32, 128), 17);
        assert_eq!(bucket(-1, true, 32, 128), 1);
        assert_eq!(bucket(-7, true, 32, 128), 7);
        assert_eq!(bucket(0, false, 32, 128), 0);
        assert_eq!(bucket(5, false, 32, 128), 0);
        assert_eq!(bucket(-15, false, 32, 128), 15);
        assert_eq!(bucket(-1000, false, 32, 128), 31);
        assert_eq!(bucket(1000, true, 32, 128), 31);
        assert_eq!(bucket(-20, false, 32, 128), 17);
        assert_eq!(bucket(-20, true, 32, 128), 10);
        assert_eq!(bucket(-50, false, 32, 128), 24);
        assert_eq!(bucket(37, true, 32, 128), 28);
    }
}
