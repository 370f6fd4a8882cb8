//! Blip2VisionModel: ViT-g/14 from EVA-CLIP. Pre-LN encoder with a fused qkv projection whose
//! bias is cat(q_bias, 0, v_bias), exact-erf GELU MLP, and a post_layernorm over all tokens.

use blip2_engine::ops::LinearFusion;
use blip2_engine::{AttnOpts, Result, Tensor, ops};

use crate::config::VisionConfig;
use crate::nn::{LayerNorm, Linear, activation, repeat_batch};
use crate::weights::WeightLoader;

struct VisionLayer {
    ln1: LayerNorm,
    qkv: Linear,
    proj: Linear,
    ln2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

pub struct VisionModel {
    patch_w: Tensor,
    patch_b: Tensor,
    class_embedding: Tensor,
    position_embedding: Tensor,
    layers: Vec<VisionLayer>,
    post_layernorm: LayerNorm,
    act: ops::Unary,
    heads: usize,
    hidden: usize,
}

impl VisionModel {
    /// `vb` is rooted at `vision_model`.
    pub fn load(vb: &WeightLoader, cfg: &VisionConfig) -> crate::Result<VisionModel> {
        let d = cfg.hidden_size;
        let p = cfg.patch_size;
        let n_pos = (cfg.image_size / p) * (cfg.image_size / p) + 1;
        let emb = vb.pp("embeddings");
        vb.check_layer_count(
            "encoder.layers",
            cfg.num_hidden_layers,
            "vision_config.num_hidden_layers",
        )?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let l = vb.pp("encoder.layers").pp(i.to_string());
                VisionLayer {
                    ln1: LayerNorm::load(&l.pp("layer_norm1"), d, cfg.layer_norm_eps),
                    qkv: Linear::load(&l.pp("self_attn.qkv"), d, 3 * d, cfg.qkv_bias),
                    proj: Linear::load(&l.pp("self_attn.projection"), d, d, true),
                    ln2: LayerNorm::load(&l.pp("layer_norm2"), d, cfg.layer_norm_eps),
                    fc1: Linear::load(&l.pp("mlp.fc1"), d, cfg.intermediate_size, true),
                    fc2: Linear::load(&l.pp("mlp.fc2"), cfg.intermediate_size, d, true),
                }
            })
            .collect();
        Ok(VisionModel {
            act: activation(&cfg.hidden_act)?,
            patch_w: emb.get("patch_embedding.weight", &[d, cfg.num_channels, p, p]),
            patch_b: emb.get("patch_embedding.bias", &[d]),
            class_embedding: emb.get_f32("class_embedding", &[1, 1, d]),
            position_embedding: emb.get_f32("position_embedding", &[1, n_pos, d]),
            layers,
            post_layernorm: LayerNorm::load(&vb.pp("post_layernorm"), d, cfg.layer_norm_eps),
            heads: cfg.num_attention_heads,
            hidden: d,
        })
    }

    /// pixel_values `[B, 3, H, W]` -> last_hidden_state `[B, 1 + (H/p)(W/p), D]` (post-LN).
    pub fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        let b = pixels.dim(0);
        let patches = ops::patch_embed(pixels, &self.patch_w, &self.patch_b)?;
        let cls = repeat_batch(&self.class_embedding, b)?;
        let mut x = ops::concat(&[&cls, &patches], 1)?;
        let n = x.dim(1);
        let pos = self.position_embedding.reshape(&[
            self.position_embedding.elem_count() / self.hidden,
            self.hidden,
        ])?;
        let pos = if pos.dim(0) == n {
            pos
        } else {
            ops::narrow(&pos, 0, 0, n)?
        };
        x = ops::add(&x, &pos)?;
        let d = self.hidden;
        let scale = ((d / self.heads) as f32).powf(-0.5);
        for l in &self.layers {
            let h = l.ln1.forward(&x)?;
            // Rows of the fused projection are [all q | all k | all v].
            let a = ops::self_attention(
                &l.qkv.forward(&h)?,
                self.heads,
                &AttnOpts {
                    scale,
                    ..Default::default()
                },
            )?;
            // The residual adds and the MLP's norm and GELU ride on the linears (in place on
            // the CPU: ops::linear_fused).
            x = l.proj.forward_fused(
                &a,
                &LinearFusion {
                    residual: Some(&x),
                    ..Default::default()
                },
            )?;
            let h = l.fc1.forward_fused(
                &x,
                &LinearFusion {
                    norm: Some(l.ln2.prologue()),
                    act: Some(self.act),
                    ..Default::default()
                },
            )?;
            x = l.fc2.forward_fused(
                &h,
                &LinearFusion {
                    residual: Some(&x),
                    ..Default::default()
                },
            )?;
        }
        self.post_layernorm.forward(&x)
    }
}
