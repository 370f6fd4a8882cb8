//! Image preprocessing identical to transformers' `BlipImageProcessor` on its PIL path
//! (`BlipImageProcessorPil` in v5):
//!
//! 1. `convert_to_rgb`: PIL `image.convert("RGB")`, i.e. alpha is dropped (no compositing),
//!    grey is replicated, palettes are looked up. 16-bit colour channels keep their high byte
//!    and 16-bit grey is clipped to 0..255, as Pillow loads and converts them.
//! 2. Resize straight to `size` (no aspect ratio, no crop) with Pillow's `ImagingResample`:
//!    separable, horizontal pass first then vertical, filter support scaled by the
//!    downscaling factor (antialiasing), coefficients normalised in f64 then quantised to
//!    22-bit fixed point, each pass rounded and clipped to u8.
//! 3. Rescale `u8 as f64 * rescale_factor` cast to f32, then `(x - mean) / std` in f32,
//!    channels first.
//!
//! Images are decoded with the `image` crate and not rotated by EXIF orientation
//! (`PIL.Image.open` does not rotate either). PNG/BMP/GIF/TIFF/WebP-lossless decode to the
//! same pixels as Pillow; baseline JPEG decoders may differ from libjpeg-turbo by a grey
//! level here and there.

use std::borrow::Cow;
use std::path::Path;

use blip2_engine::{Device, Tensor};
use image::{DynamicImage, RgbImage};

use crate::config::ImageProcessorConfig;
use crate::error::{ModelError, Result};

/// Where an image comes from.
#[derive(Clone, Copy, Debug)]
pub enum ImageInput<'a> {
    Path(&'a Path),
    Bytes(&'a [u8]),
    Image(&'a DynamicImage),
}

impl<'a> From<&'a Path> for ImageInput<'a> {
    fn from(p: &'a Path) -> Self {
        ImageInput::Path(p)
    }
}
impl<'a> From<&'a [u8]> for ImageInput<'a> {
    fn from(b: &'a [u8]) -> Self {
        ImageInput::Bytes(b)
    }
}
impl<'a> From<&'a DynamicImage> for ImageInput<'a> {
    fn from(i: &'a DynamicImage) -> Self {
        ImageInput::Image(i)
    }
}

impl ImageInput<'_> {
    /// Decodes (paths and bytes) or borrows the image.
    pub fn load(&self) -> Result<Cow<'_, DynamicImage>> {
        match self {
            ImageInput::Path(p) => Ok(Cow::Owned(load_image(p)?)),
            ImageInput::Bytes(b) => Ok(Cow::Owned(load_image_from_bytes(b, "<bytes>")?)),
            ImageInput::Image(i) => Ok(Cow::Borrowed(i)),
        }
    }
}

/// Decodes an image file; the format is guessed from its content.
pub fn load_image(path: impl AsRef<Path>) -> Result<DynamicImage> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| ModelError::image(path.display().to_string(), e.to_string()))?;
    load_image_from_bytes(&bytes, &path.display().to_string())
}

/// Decodes an encoded image held in memory; `name` is used in error messages.
pub fn load_image_from_bytes(bytes: &[u8], name: &str) -> Result<DynamicImage> {
    let format = image::guess_format(bytes).map_err(|_| {
        ModelError::image(
            name,
            "not a supported image format (expected PNG, JPEG, WebP, BMP, GIF or TIFF)",
        )
    })?;
    image::load_from_memory_with_format(bytes, format)
        .map_err(|e| ModelError::image(name, format!("cannot decode {format:?}: {e}")))
}

/// RGB pixels as PIL's `image.convert("RGB")` makes them from what Pillow would have loaded.
pub fn to_rgb8_like_pil(img: &DynamicImage) -> RgbImage {
    use DynamicImage as D;
    let (w, h) = (img.width(), img.height());
    let from_fn = |f: &dyn Fn(u32, u32) -> [u8; 3]| RgbImage::from_fn(w, h, |x, y| image::Rgb(f(x, y)));
    match img {
        D::ImageRgb8(i) => i.clone(),
        // Alpha dropped, not composited (PIL "RGBA" -> "RGB").
        D::ImageRgba8(i) => from_fn(&|x, y| {
            let p = i.get_pixel(x, y).0;
            [p[0], p[1], p[2]]
        }),
        D::ImageLuma8(i) => from_fn(&|x, y| {
            let l = i.get_pixel(x, y).0[0];
            [l, l, l]
        }),
        D::ImageLumaA8(i) => from_fn(&|x, y| {
            let l = i.get_pixel(x, y).0[0];
            [l, l, l]
        }),
        // Pillow reads 16-bit RGB(A)/LA PNGs keeping the most significant byte.
        D::ImageRgb16(i) => from_fn(&|x, y| {
            let p = i.get_pixel(x, y).0;
            [(p[0] >> 8) as u8, (p[1] >> 8) as u8, (p[2] >> 8) as u8]
        }),
        D::ImageRgba16(i) => from_fn(&|x, y| {
            let p = i.get_pixel(x, y).0;
            [(p[0] >> 8) as u8, (p[1] >> 8) as u8, (p[2] >> 8) as u8]
        }),
        D::ImageLumaA16(i) => from_fn(&|x, y| {
            let l = (i.get_pixel(x, y).0[0] >> 8) as u8;
            [l, l, l]
        }),
        // 16-bit grey is mode "I;16" in Pillow, whose conversion to RGB clips at 255.
        D::ImageLuma16(i) => from_fn(&|x, y| {
            let l = i.get_pixel(x, y).0[0].min(255) as u8;
            [l, l, l]
        }),
        // Float images (HDR/EXR/float TIFF): no Pillow equivalent; clamp and round.
        other => other.to_rgb8(),
    }
}

/// Pillow resampling filters (PIL codes: 1 lanczos, 2 bilinear, 3 bicubic, 4 box, 5 hamming).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filter {
    Box,
    Bilinear,
    Hamming,
    Bicubic,
    Lanczos,
}

impl Filter {
    /// From PIL's integer code. Nearest (0) uses a different Pillow code path and is not supported.
    pub fn from_pil_code(code: u32) -> Result<Filter> {
        Ok(match code {
            1 => Filter::Lanczos,
            2 => Filter::Bilinear,
            3 => Filter::Bicubic,
            4 => Filter::Box,
            5 => Filter::Hamming,
            _ => {
                return Err(ModelError::Invalid(format!(
                    "resample {code} is not supported (1 lanczos, 2 bilinear, 3 bicubic, 4 box, 5 hamming)"
                )));
            }
        })
    }

    fn support(self) -> f64 {
        match self {
            Filter::Box => 0.5,
            Filter::Bilinear | Filter::Hamming => 1.0,
            Filter::Bicubic => 2.0,
            Filter::Lanczos => 3.0,
        }
    }

    /// The kernels of Pillow's Resample.c, bit for bit (f64).
    fn eval(self, x: f64) -> f64 {
        fn sinc(x: f64) -> f64 {
            if x == 0.0 {
                return 1.0;
            }
            let x = x * std::f64::consts::PI;
            x.sin() / x
        }
        match self {
            Filter::Box => {
                if x > -0.5 && x <= 0.5 {
                    1.0
                } else {
                    0.0
                }
            }
            Filter::Bilinear => {
                let x = x.abs();
                if x < 1.0 { 1.0 - x } else { 0.0 }
            }
            Filter::Hamming => {
                let x = x.abs();
                if x == 0.0 {
                    1.0
                } else if x >= 1.0 {
                    0.0
                } else {
                    let x = x * std::f64::consts::PI;
                    // Pillow uses float constants 0.54f / 0.46f here.
                    x.sin() / x * (0.54f32 as f64 + 0.46f32 as f64 * x.cos())
                }
            }
            Filter::Bicubic => {
                const A: f64 = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
            Filter::Lanczos => {
                if (-3.0..3.0).contains(&x) {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
        }
    }
}

/// 8 bits for the result, 2 for overflow of negative lobes: Pillow's PRECISION_BITS.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Per output pixel: first input index and fixed-point weights (Pillow's precompute_coeffs
/// followed by normalize_coeffs_8bpc).
struct Coeffs {
    bounds: Vec<(usize, usize)>,
    ksize: usize,
    k: Vec<i32>,
}

fn precompute_coeffs(in_size: usize, out_size: usize, filter: Filter) -> Coeffs {
    // box = (0, in_size): in0 = 0, in1 = in_size as f32 (exact for any image size).
    let in0 = 0.0f64;
    let scale = (in_size as f32 - 0.0f32) as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut k = vec![0i32; out_size * ksize];
    let mut w = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = in0 + (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C casts truncate toward zero; negative values are clamped to 0 right after.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64).max(xmin as i64) as usize - xmin;
        let mut ww = 0.0;
        for (x, wx) in w.iter_mut().enumerate().take(xmax) {
            let v = filter.eval((x as f64 + xmin as f64 - center + 0.5) * ss);
            *wx = v;
            ww += v;
        }
        let row = &mut k[xx * ksize..(xx + 1) * ksize];
        for x in 0..xmax {
            let v = if ww != 0.0 { w[x] / ww } else { w[x] };
            let f = v * (1u32 << PRECISION_BITS) as f64;
            row[x] = if v < 0.0 { (-0.5 + f) as i32 } else { (0.5 + f) as i32 };
        }
        bounds.push((xmin, xmax));
    }
    Coeffs { bounds, ksize, k }
}

#[inline]
fn clip8(acc: i64) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resizes interleaved 8-bit pixels (`channels` per pixel) exactly as Pillow's
/// `Image.resize((out_w, out_h), filter)` does for modes L/RGB/RGBX (not premultiplied RGBA).
pub fn resize_u8(
    src: &[u8],
    width: usize,
    height: usize,
    channels: usize,
    out_w: usize,
    out_h: usize,
    filter: Filter,
) -> Result<Vec<u8>> {
    if width == 0 || height == 0 || out_w == 0 || out_h == 0 || channels == 0 {
        return Err(ModelError::Invalid(format!(
            "resize from {width}x{height} to {out_w}x{out_h} with {channels} channels: sizes must be at least 1"
        )));
    }
    if src.len() != width * height * channels {
        return Err(ModelError::Invalid(format!(
            "resize: {} bytes given for a {width}x{height}x{channels} image",
            src.len()
        )));
    }
    let half = 1i64 << (PRECISION_BITS - 1);
    let vert = precompute_coeffs(height, out_h, filter);

    // Horizontal pass, only over the rows the vertical pass reads (Pillow does the same;
    // it changes no value, only work).
    let (y_first, y_last) = {
        let (f, _) = vert.bounds[0];
        let (l, n) = vert.bounds[out_h - 1];
        (f, l + n)
    };
    let (tmp, row_offset): (Cow<[u8]>, usize) = if out_w != width {
        let hc = precompute_coeffs(width, out_w, filter);
        let rows = y_last - y_first;
        let mut out = vec![0u8; rows * out_w * channels];
        for yy in 0..rows {
            let in_row = &src[(yy + y_first) * width * channels..(yy + y_first + 1) * width * channels];
            let out_row = &mut out[yy * out_w * channels..(yy + 1) * out_w * channels];
            for xx in 0..out_w {
                let (xmin, n) = hc.bounds[xx];
                let k = &hc.k[xx * hc.ksize..xx * hc.ksize + n];
                for c in 0..channels {
                    let mut acc = half;
                    for (x, &kx) in k.iter().enumerate() {
                        acc += in_row[(xmin + x) * channels + c] as i64 * kx as i64;
                    }
                    out_row[xx * channels + c] = clip8(acc);
                }
            }
        }
        (Cow::Owned(out), y_first)
    } else {
        (Cow::Borrowed(src), 0)
    };

    if out_h == height {
        // No vertical pass (Pillow skips it too); the rows read were all of them.
        return Ok(tmp.into_owned());
    }
    let stride = out_w * channels;
    let mut out = vec![0u8; out_h * stride];
    for yy in 0..out_h {
        let (ymin, n) = vert.bounds[yy];
        let ymin = ymin - row_offset;
        let k = &vert.k[yy * vert.ksize..yy * vert.ksize + n];
        let out_row = &mut out[yy * stride..(yy + 1) * stride];
        for (i, o) in out_row.iter_mut().enumerate() {
            let mut acc = half;
            for (y, &ky) in k.iter().enumerate() {
                acc += tmp[(ymin + y) * stride + i] as i64 * ky as i64;
            }
            *o = clip8(acc);
        }
    }
    Ok(out)
}

/// The full processor on one image: `[3, H, W]` f32, channels first.
pub fn preprocess(img: &DynamicImage, cfg: &ImageProcessorConfig) -> Result<Vec<f32>> {
    // do_convert_rgb false still needs 3 channels for the model: HF would fail on anything
    // else, we convert the same way.
    let rgb = to_rgb8_like_pil(img);
    let (w, h) = (rgb.width() as usize, rgb.height() as usize);
    if w == 0 || h == 0 {
        return Err(ModelError::Invalid(format!("image of size {w}x{h}")));
    }
    let (out_h, out_w) = cfg.size;
    let pixels: Cow<[u8]> = if cfg.do_resize && (out_w != w || out_h != h) {
        Cow::Owned(resize_u8(rgb.as_raw(), w, h, 3, out_w, out_h, Filter::from_pil_code(cfg.resample)?)?)
    } else {
        Cow::Borrowed(rgb.as_raw())
    };
    let (ow, oh) = if cfg.do_resize { (out_w, out_h) } else { (w, h) };
    let plane = ow * oh;
    let mut out = vec![0f32; 3 * plane];
    for c in 0..3 {
        let mean = cfg.image_mean[c] as f32;
        let std = cfg.image_std[c] as f32;
        let dst = &mut out[c * plane..(c + 1) * plane];
        for (i, d) in dst.iter_mut().enumerate() {
            let v = pixels[i * 3 + c];
            // rescale(): f64 multiply, then cast to f32; normalize(): f32 arithmetic.
            let x = if cfg.do_rescale { (v as f64 * cfg.rescale_factor) as f32 } else { v as f32 };
            *d = if cfg.do_normalize { (x - mean) / std } else { x };
        }
    }
    Ok(out)
}

/// A batch `[B, 3, H, W]` f32 tensor on `device`.
pub fn pixel_values(images: &[&DynamicImage], cfg: &ImageProcessorConfig, device: &Device) -> Result<Tensor> {
    if images.is_empty() {
        return Err(ModelError::Invalid("pixel_values: no images given".into()));
    }
    let dims = |i: &DynamicImage| (i.width(), i.height());
    if !cfg.do_resize && images.windows(2).any(|p| dims(p[0]) != dims(p[1])) {
        return Err(ModelError::Invalid(
            "pixel_values: images of different sizes cannot be batched without do_resize".into(),
        ));
    }
    let mut data = Vec::new();
    let mut hw = (0, 0);
    for img in images {
        data.extend(preprocess(img, cfg)?);
        hw = if cfg.do_resize { cfg.size } else { (img.height() as usize, img.width() as usize) };
    }
    Ok(Tensor::from_f32(data, &[images.len(), 3, hw.0, hw.1], device)?)
}
