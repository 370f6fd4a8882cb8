//! The image half every BLIP-2 model shares: preprocessing (the processor's resize, rescale
//! and normalisation), the ViT, and the Q-Former whose learned queries read the image.
//! Captioning projects the query outputs into the language model; retrieval scores them
//! against text.

use std::time::{Duration, Instant};

use blip2_engine::{Device, Tensor};
use image::DynamicImage;

use crate::config::{Blip2Config, ImageProcessorConfig};
use crate::error::Result;
use crate::preprocess;
use crate::qformer::QFormer;
use crate::vision::VisionModel;
use crate::weights::WeightLoader;

/// Wall-clock time of the image stages of one batch.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ImageTimings {
    pub preprocess: Duration,
    pub vision: Duration,
    pub qformer: Duration,
}

pub struct ImageEncoder {
    pub image_config: ImageProcessorConfig,
    device: Device,
    vision: VisionModel,
    qformer: QFormer,
}

impl ImageEncoder {
    /// `vb` is rooted at the checkpoint root (`vision_model.*`, `query_tokens`, `qformer.*`).
    /// `with_text`: also load the Q-Former's text FFN (retrieval checkpoints).
    pub fn load(
        vb: &WeightLoader,
        config: &Blip2Config,
        image_config: ImageProcessorConfig,
        with_text: bool,
    ) -> Result<ImageEncoder> {
        Ok(ImageEncoder {
            vision: VisionModel::load(&vb.pp("vision_model"), &config.vision_config)?,
            qformer: QFormer::load(
                vb,
                &config.qformer_config,
                config.num_query_tokens,
                with_text,
                config.is_instructblip(),
            )?,
            image_config,
            device: vb.device().clone(),
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The Q-Former, for passes that mix queries with text (retrieval).
    pub fn qformer(&self) -> &QFormer {
        &self.qformer
    }

    /// `[B, 3, H, W]` pixel values as the processor computes them.
    pub fn pixel_values(&self, images: &[&DynamicImage]) -> Result<Tensor> {
        preprocess::pixel_values(images, &self.image_config, &self.device)
    }

    /// Vision encoder output (after post_layernorm) `[B, N, Dv]`.
    pub fn vision(&self, pixels: &Tensor) -> Result<Tensor> {
        Ok(self.vision.forward(pixels)?)
    }

    /// Q-Former output of the queries alone over the image `[B, Q, D]`.
    pub fn queries(&self, vision: &Tensor) -> Result<Tensor> {
        Ok(self.qformer.forward(vision)?)
    }

    /// InstructBLIP: Q-Former query outputs `[B, Q, D]` over the image with each row's
    /// instruction (padded Q-Former ids and mask) beside the queries.
    pub fn queries_with_text(
        &self,
        vision: &Tensor,
        ids: &[Vec<u32>],
        mask: &[Vec<u8>],
    ) -> Result<Tensor> {
        self.qformer.forward_with_text(vision, ids, mask)
    }

    /// Preprocess → ViT → Q-Former → `head` (the captioning model's projection) for a batch
    /// of images, timed stage by stage: the device is synchronised after each stage so the
    /// times are the stages' own; `head` counts as part of the Q-Former stage.
    pub fn encode(
        &self,
        images: &[&DynamicImage],
        head: impl FnOnce(&Tensor) -> Result<Tensor>,
    ) -> Result<(Tensor, ImageTimings)> {
        self.encode_with(images, |vis| head(&self.queries(vis)?))
    }

    /// Preprocess → ViT → `rest` (the Q-Former and head, for models whose Q-Former reads more
    /// than the image), timed as [`ImageEncoder::encode`] times them.
    pub fn encode_with(
        &self,
        images: &[&DynamicImage],
        rest: impl FnOnce(&Tensor) -> Result<Tensor>,
    ) -> Result<(Tensor, ImageTimings)> {
        let t = Instant::now();
        let pixels = self.pixel_values(images)?;
        let preprocess = t.elapsed();
        let (out, mut timings) = self.encode_pixels(&pixels, rest)?;
        timings.preprocess = preprocess;
        Ok((out, timings))
    }

    /// [`ImageEncoder::encode_with`] on pixel values computed elsewhere (e.g. preprocessed on
    /// worker threads ahead of the model); the preprocess time is zero.
    pub fn encode_pixels(
        &self,
        pixels: &Tensor,
        rest: impl FnOnce(&Tensor) -> Result<Tensor>,
    ) -> Result<(Tensor, ImageTimings)> {
        let t = Instant::now();
        let vis = self.vision(pixels)?;
        self.device.synchronize()?;
        let vision = t.elapsed();
        let t = Instant::now();
        let out = rest(&vis)?;
        self.device.synchronize()?;
        Ok((
            out,
            ImageTimings {
                preprocess: Duration::ZERO,
                vision,
                qformer: t.elapsed(),
            },
        ))
    }
}
