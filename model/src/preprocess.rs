//! Image preprocessing identical to transformers' `BlipImageProcessor` on its PIL path
//! (`BlipImageProcessorPil` in v5):
//!
//! 1. `convert_to_rgb` (transformers 5.24, `image_transforms.py`): an image with an alpha
//!    channel (RGBA, LA, palette with transparency) is composited onto opaque white with
//!    Pillow's `alpha_composite` integer arithmetic; others are converted with
//!    `convert("RGB")` (grey replicated). (Older transformers dropped alpha instead.)
//! 2. Resize straight to `size` (no aspect ratio, no crop) with Pillow 13's `ImagingResample`:
//!    separable, horizontal pass first unless the height shrinks much more than the width
//!    (then vertical first, as Pillow 13 decides), filter support scaled by the
//!    downscaling factor (antialiasing), coefficients normalised in f64 then quantised to
//!    22-bit fixed point, each pass rounded and clipped to u8.
//! 3. Rescale `u8 as f64 * rescale_factor` cast to f32, then `(x - mean) / std` in f32,
//!    channels first.
//!
//! JPEGs are decoded by `blip2-jpeg`, byte-identical to Pillow's libjpeg-turbo decode
//! (docs/jpeg.md); other formats by the `image` crate (PNG/BMP/GIF/TIFF/WebP-lossless give
//! the same pixels as Pillow). Images are not rotated by EXIF orientation unless asked
//! (`ImageLoadOptions::apply_exif_orientation`): `PIL.Image.open` does not rotate either.

use std::borrow::Cow;
use std::path::Path;

use blip2_engine::{Device, Tensor};
use image::{DynamicImage, RgbImage};

use crate::config::ImageProcessorConfig;
use crate::error::{ModelError, Result};
use crate::limits::{MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS};

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

impl<'a> ImageInput<'a> {
    /// Decodes (paths and bytes) or borrows the image.
    pub fn load(&self) -> Result<Cow<'a, DynamicImage>> {
        match self {
            ImageInput::Path(p) => Ok(Cow::Owned(load_image(p)?)),
            ImageInput::Bytes(b) => Ok(Cow::Owned(load_image_from_bytes(b, "<bytes>")?)),
            ImageInput::Image(i) => Ok(Cow::Borrowed(*i)),
        }
    }
}

/// How images are decoded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImageLoadOptions {
    /// Rotate/flip JPEGs by their EXIF orientation tag as Pillow's `ImageOps.exif_transpose`
    /// does. Off by default, as in transformers (whose processors see `Image.open`'s
    /// unrotated pixels).
    pub apply_exif_orientation: bool,
}

/// Decodes an image file; the format is guessed from its content.
pub fn load_image(path: impl AsRef<Path>) -> Result<DynamicImage> {
    load_image_with(path, &ImageLoadOptions::default())
}

/// [`load_image`] with options.
pub fn load_image_with(path: impl AsRef<Path>, opts: &ImageLoadOptions) -> Result<DynamicImage> {
    let path = path.as_ref();
    // A missing or unreadable image is an image error (as a bad one is), not a checkpoint's.
    let bytes = crate::limits::read_bounded(path, crate::limits::MAX_IMAGE_BYTES, "image")
        .map_err(|e| match e {
            ModelError::Io { source, .. } => {
                ModelError::image(path.display().to_string(), source.to_string())
            }
            e => e,
        })?;
    load_image_from_bytes_with(&bytes, &path.display().to_string(), opts)
}

/// Decodes an encoded image held in memory; `name` is used in error messages.
pub fn load_image_from_bytes(bytes: &[u8], name: &str) -> Result<DynamicImage> {
    load_image_from_bytes_with(bytes, name, &ImageLoadOptions::default())
}

/// [`load_image_from_bytes`] with options.
pub fn load_image_from_bytes_with(
    bytes: &[u8],
    name: &str,
    opts: &ImageLoadOptions,
) -> Result<DynamicImage> {
    if blip2_jpeg::is_jpeg(bytes) {
        return decode_jpeg(bytes, name, opts);
    }
    let format = image::guess_format(bytes).map_err(|_| {
        ModelError::image(
            name,
            "not a supported image format (expected PNG, JPEG, WebP, BMP, GIF or TIFF)",
        )
    })?;
    if bytes.len() as u64 > MAX_IMAGE_BYTES {
        return Err(ModelError::image(
            name,
            format!(
                "{} exceeds the image limit of {}",
                crate::limits::human(bytes.len() as u64),
                crate::limits::human(MAX_IMAGE_BYTES)
            ),
        ));
    }
    // Checked on the header before any pixel buffer exists; `image`'s own limits stay as a
    // second guard on what the decoder allocates.
    let (w, h) = image::ImageReader::with_format(std::io::Cursor::new(bytes), format)
        .into_dimensions()
        .map_err(|e| decode_error(name, format, &e))?;
    check_pixels(name, w, h)?;
    let mut reader = image::ImageReader::with_format(std::io::Cursor::new(bytes), format);
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(4 * MAX_IMAGE_PIXELS * 4);
    reader.limits(limits);
    reader.decode().map_err(|e| decode_error(name, format, &e))
}

/// A decoder's error as plain text: the `png` crate prints chunk types with their Rust
/// `Debug` form (`ChunkType { type: IHDR, critical: true, ... }`), shown here as `IHDR`.
fn decode_error(name: &str, format: image::ImageFormat, e: &image::ImageError) -> ModelError {
    let mut text = e.to_string();
    const OPEN: &str = "ChunkType { type: ";
    while let Some(start) = text.find(OPEN) {
        let rest = &text[start + OPEN.len()..];
        let (Some(comma), Some(close)) = (rest.find(','), rest.find('}')) else {
            break;
        };
        let kind = rest[..comma.min(close)].to_string();
        let end = start + OPEN.len() + close + 1;
        text.replace_range(start..end, &kind);
    }
    let format = format!("{format:?}").to_uppercase();
    ModelError::image(name, format!("cannot decode {format}: {text}"))
}

/// Refuses images of more than [`MAX_IMAGE_PIXELS`] before their pixels are allocated.
fn check_pixels(name: &str, w: u32, h: u32) -> Result<()> {
    let pixels = w as u64 * h as u64;
    if pixels > MAX_IMAGE_PIXELS {
        return Err(ModelError::image(
            name,
            format!(
                "{w}x{h} is {pixels} pixels, more than the limit of {MAX_IMAGE_PIXELS} ({} MP)",
                MAX_IMAGE_PIXELS >> 20
            ),
        ));
    }
    Ok(())
}

/// A JPEG through `blip2-jpeg`: greyscale files become `Luma8` (Pillow mode "L"), all others
/// `Rgb8` as Pillow's `convert("RGB")` gives them (CMYK/YCCK included).
fn decode_jpeg(bytes: &[u8], name: &str, opts: &ImageLoadOptions) -> Result<DynamicImage> {
    let jopts = blip2_jpeg::DecodeOptions {
        apply_exif_orientation: opts.apply_exif_orientation,
        max_pixels: MAX_IMAGE_PIXELS,
    };
    let img = blip2_jpeg::decode(bytes, &jopts)
        .map_err(|e| ModelError::image(name, format!("cannot decode JPEG: {e}")))?;
    let (w, h) = (img.width, img.height);
    let image = if img.channels == 1 {
        image::GrayImage::from_raw(w, h, img.pixels).map(DynamicImage::ImageLuma8)
    } else {
        RgbImage::from_raw(w, h, img.pixels).map(DynamicImage::ImageRgb8)
    };
    image.ok_or_else(|| ModelError::image(name, "JPEG decoder returned a short buffer"))
}

/// `Image.alpha_composite(white, rgba)` of Pillow for one channel value `v` with alpha `a`
/// (its integer path with 7 extra bits, specialised to an opaque white background).
#[inline]
pub fn composite_on_white(v: u8, a: u8) -> u8 {
    if a == 0 {
        return 255;
    }
    let (v, a) = (v as u32, a as u32);
    // coef1 = a*255*255*128 / (255*255) = a*128 exactly; coef2 = (255-a)*128.
    let tmp = v * a * 128 + 255 * (255 - a) * 128 + (0x80 << 7);
    ((((tmp >> 8) + tmp) >> 8) >> 7) as u8
}

/// RGB pixels as transformers 5.24's `convert_to_rgb` makes them from what Pillow loads:
/// images with an alpha channel are composited onto white (`Image.alpha_composite`), others
/// go through `convert("RGB")` (grey replicated). 16-bit colour channels keep their high
/// byte and 16-bit grey is clipped to 0..255, as Pillow loads and converts them.
pub fn to_rgb8_like_pil(img: &DynamicImage) -> RgbImage {
    use DynamicImage as D;
    let (w, h) = (img.width(), img.height());
    let from_fn =
        |f: &dyn Fn(u32, u32) -> [u8; 3]| RgbImage::from_fn(w, h, |x, y| image::Rgb(f(x, y)));
    let over_white = |[r, g, b, a]: [u8; 4]| {
        [
            composite_on_white(r, a),
            composite_on_white(g, a),
            composite_on_white(b, a),
        ]
    };
    match img {
        D::ImageRgb8(i) => i.clone(),
        D::ImageRgba8(i) => from_fn(&|x, y| over_white(i.get_pixel(x, y).0)),
        D::ImageLuma8(i) => from_fn(&|x, y| {
            let l = i.get_pixel(x, y).0[0];
            [l, l, l]
        }),
        D::ImageLumaA8(i) => from_fn(&|x, y| {
            let [l, a] = i.get_pixel(x, y).0;
            over_white([l, l, l, a])
        }),
        // Pillow reads 16-bit RGB(A)/LA PNGs keeping the most significant byte.
        D::ImageRgb16(i) => from_fn(&|x, y| {
            let p = i.get_pixel(x, y).0;
            [(p[0] >> 8) as u8, (p[1] >> 8) as u8, (p[2] >> 8) as u8]
        }),
        D::ImageRgba16(i) => from_fn(&|x, y| {
            let p = i.get_pixel(x, y).0.map(|c| (c >> 8) as u8);
            over_white(p)
        }),
        D::ImageLumaA16(i) => from_fn(&|x, y| {
            let [l, a] = i.get_pixel(x, y).0.map(|c| (c >> 8) as u8);
            over_white([l, l, l, a])
        }),
        // 16-bit grey is mode "I;16" in Pillow, whose conversion to RGB clips at 255.
        D::ImageLuma16(i) => from_fn(&|x, y| {
            let l = i.get_pixel(x, y).0[0].min(255) as u8;
            [l, l, l]
        }),
        // Float images (HDR/EXR/float TIFF) have no Pillow equivalent: clamp and round.
        D::ImageRgba32F(_) => {
            let rgba = img.to_rgba8();
            from_fn(&|x, y| over_white(rgba.get_pixel(x, y).0))
        }
        other => other.to_rgb8(),
    }
}

/// Pillow resampling filters (PIL codes: 1 lanczos, 2 bilinear, 3 bicubic, 4 box,
/// 5 hamming, 6 mks2013, 7 mks2021); the processor config's `resample`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Filter {
    Box,
    Bilinear,
    Hamming,
    Bicubic,
    Lanczos,
    Mks2013,
    Mks2021,
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
            6 => Filter::Mks2013,
            7 => Filter::Mks2021,
            _ => {
                return Err(ModelError::Invalid(format!(
                    "resample {code} is not supported (1 lanczos, 2 bilinear, 3 bicubic, 4 box, 5 hamming, 6 mks2013, 7 mks2021)"
                )));
            }
        })
    }

    /// PIL's integer code, as the processor JSON stores it.
    pub fn pil_code(self) -> u32 {
        match self {
            Filter::Lanczos => 1,
            Filter::Bilinear => 2,
            Filter::Bicubic => 3,
            Filter::Box => 4,
            Filter::Hamming => 5,
            Filter::Mks2013 => 6,
            Filter::Mks2021 => 7,
        }
    }

    fn support(self) -> f64 {
        match self {
            Filter::Box => 0.5,
            Filter::Bilinear | Filter::Hamming => 1.0,
            Filter::Bicubic => 2.0,
            Filter::Lanczos => 3.0,
            Filter::Mks2013 => 2.5,
            Filter::Mks2021 => 4.5,
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
            // https://johncostella.com/magic/ as in Pillow 13.
            Filter::Mks2013 => {
                let x = x.abs();
                if x < 0.5 {
                    17.0 / 16.0 - 7.0 / 4.0 * x.powi(2)
                } else if x < 1.5 {
                    (1.0 - x) * (7.0 / 4.0 - x)
                } else if x < 2.5 {
                    -1.0 / 8.0 * (x - 5.0 / 2.0).powi(2)
                } else {
                    0.0
                }
            }
            Filter::Mks2021 => {
                let x = x.abs();
                if x < 0.5 {
                    577.0 / 576.0 - 239.0 / 144.0 * x.powi(2)
                } else if x < 1.5 {
                    35.0 / 36.0 * (x - 1.0) * (x - 239.0 / 140.0)
                } else if x < 2.5 {
                    1.0 / 6.0 * (x - 2.0) * (65.0 / 24.0 - x)
                } else if x < 3.5 {
                    1.0 / 36.0 * (x - 3.0) * (x - 15.0 / 4.0)
                } else if x < 4.5 {
                    -1.0 / 288.0 * (x - 9.0 / 2.0).powi(2)
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
        let xmax = ((center + support + 0.5) as i64)
            .min(in_size as i64)
            .max(xmin as i64) as usize
            - xmin;
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
            row[x] = if v < 0.0 {
                (-0.5 + f) as i32
            } else {
                (0.5 + f) as i32
            };
        }
        bounds.push((xmin, xmax));
    }
    Coeffs { bounds, ksize, k }
}

#[inline]
fn clip8(acc: i64) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Horizontal pass over `rows` rows of `src` starting at row `row0`.
fn pass_horizontal(
    src: &[u8],
    width: usize,
    channels: usize,
    row0: usize,
    rows: usize,
    c: &Coeffs,
) -> Vec<u8> {
    let half = 1i64 << (PRECISION_BITS - 1);
    let out_w = c.bounds.len();
    let mut out = vec![0u8; rows * out_w * channels];
    for yy in 0..rows {
        let in_row = &src[(yy + row0) * width * channels..(yy + row0 + 1) * width * channels];
        let out_row = &mut out[yy * out_w * channels..(yy + 1) * out_w * channels];
        for xx in 0..out_w {
            let (xmin, n) = c.bounds[xx];
            let k = &c.k[xx * c.ksize..xx * c.ksize + n];
            for ch in 0..channels {
                let mut acc = half;
                for (x, &kx) in k.iter().enumerate() {
                    acc += in_row[(xmin + x) * channels + ch] as i64 * kx as i64;
                }
                out_row[xx * channels + ch] = clip8(acc);
            }
        }
    }
    out
}

/// Vertical pass; `row_shift` is subtracted from the bounds (rows skipped by a previous
/// horizontal pass). `stride` = pixels per row x channels.
fn pass_vertical(src: &[u8], stride: usize, row_shift: usize, c: &Coeffs) -> Vec<u8> {
    let half = 1i64 << (PRECISION_BITS - 1);
    let out_h = c.bounds.len();
    let mut out = vec![0u8; out_h * stride];
    for yy in 0..out_h {
        let (ymin, n) = c.bounds[yy];
        let ymin = ymin - row_shift;
        let k = &c.k[yy * c.ksize..yy * c.ksize + n];
        let out_row = &mut out[yy * stride..(yy + 1) * stride];
        for (i, o) in out_row.iter_mut().enumerate() {
            let mut acc = half;
            for (y, &ky) in k.iter().enumerate() {
                acc += src[(ymin + y) * stride + i] as i64 * ky as i64;
            }
            *o = clip8(acc);
        }
    }
    out
}

/// Resizes interleaved 8-bit pixels (`channels` per pixel) exactly as Pillow 13's
/// `Image.resize((out_w, out_h), filter)` does for modes L/RGB (not premultiplied RGBA):
/// `ImagingResampleInner`, including its choice of pass order (vertical first when the
/// height shrinks by more than twice as many pixels as the width).
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
    let need_h = out_w != width;
    let need_v = out_h != height;
    // Pillow 13: "If height is being scaled down more than twice the amount the width is,
    // run the vertical pass first" (in pixels removed, signed).
    let dh = height as i64 - out_h as i64;
    let dw = width as i64 - out_w as i64;
    let horizontal_first = !(dh > 0 && dh > dw * 2);
    let vert = precompute_coeffs(height, out_h, filter);
    if horizontal_first {
        let (tmp, shift, rows) = if need_h {
            let hc = precompute_coeffs(width, out_w, filter);
            // Only the rows the vertical pass reads (Pillow does the same; values unchanged).
            let first = vert.bounds[0].0;
            let (l, n) = vert.bounds[out_h - 1];
            let rows = l + n - first;
            (
                Cow::Owned(pass_horizontal(src, width, channels, first, rows, &hc)),
                first,
                rows,
            )
        } else {
            (Cow::Borrowed(src), 0, height)
        };
        if !need_v {
            debug_assert_eq!(rows, height);
            return Ok(tmp.into_owned());
        }
        Ok(pass_vertical(&tmp, out_w * channels, shift, &vert))
    } else {
        // Here need_v holds (the height shrinks).
        let tmp = pass_vertical(src, width * channels, 0, &vert);
        if !need_h {
            return Ok(tmp);
        }
        let hc = precompute_coeffs(width, out_w, filter);
        Ok(pass_horizontal(&tmp, width, channels, 0, out_h, &hc))
    }
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
        Cow::Owned(resize_u8(
            rgb.as_raw(),
            w,
            h,
            3,
            out_w,
            out_h,
            cfg.resample,
        )?)
    } else {
        Cow::Borrowed(rgb.as_raw())
    };
    let (ow, oh) = if cfg.do_resize {
        (out_w, out_h)
    } else {
        (w, h)
    };
    let plane = ow * oh;
    let mut out = vec![0f32; 3 * plane];
    for c in 0..3 {
        let mean = cfg.image_mean[c] as f32;
        let std = cfg.image_std[c] as f32;
        let dst = &mut out[c * plane..(c + 1) * plane];
        for (i, d) in dst.iter_mut().enumerate() {
            let v = pixels[i * 3 + c];
            // rescale(): f64 multiply, then cast to f32; normalize(): f32 arithmetic.
            let x = if cfg.do_rescale {
                (v as f64 * cfg.rescale_factor) as f32
            } else {
                v as f32
            };
            *d = if cfg.do_normalize {
                (x - mean) / std
            } else {
                x
            };
        }
    }
    Ok(out)
}

/// A batch `[B, 3, H, W]` f32 tensor on `device`.
pub fn pixel_values(
    images: &[&DynamicImage],
    cfg: &ImageProcessorConfig,
    device: &Device,
) -> Result<Tensor> {
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
        hw = if cfg.do_resize {
            cfg.size
        } else {
            (img.height() as usize, img.width() as usize)
        };
    }
    Ok(Tensor::from_f32(
        data,
        &[images.len(), 3, hw.0, hw.1],
        device,
    )?)
}

#[cfg(test)]
mod tests {
    #[test]
    fn png_chunk_errors_are_plain_text() {
        let mut png = include_bytes!("../../examples/three_shapes.png").to_vec();
        // Bytes 29..33 are IHDR's CRC (8-byte signature, 4 length, 4 type, 13 data).
        png[29] ^= 0xff;
        let err = super::load_image_from_bytes(&png, "bad.png")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("bad.png") && err.contains("cannot decode PNG") && err.contains("IHDR"),
            "{err}"
        );
        assert!(
            !err.contains("ChunkType") && !err.contains("critical"),
            "{err}"
        );
    }
}
