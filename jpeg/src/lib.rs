//! A pure-Rust JPEG decoder whose output is byte-identical to Pillow's
//! `Image.open(f).convert("RGB")` (Pillow decodes with libjpeg-turbo: the "islow" integer
//! IDCT, "fancy" triangular chroma upsampling and jdcolor.c's fixed-point YCbCr->RGB).
//! See `docs/jpeg.md` for what is verified and what is refused.
//!
//! ```no_run
//! let bytes = std::fs::read("photo.jpg").unwrap();
//! let img = blip2_jpeg::decode(&bytes, &blip2_jpeg::DecodeOptions::default()).unwrap();
//! let rgb = img.into_rgb();
//! ```

mod color;
mod decoder;
mod error;
mod exif;
mod huffman;
mod idct;

pub use error::{JpegError, Result};

/// Pillow's `Image.MAX_IMAGE_PIXELS * 2`: above this Pillow raises `DecompressionBombError`.
pub const DEFAULT_MAX_PIXELS: u64 = 2 * 89_478_485;

/// Decoding options.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeOptions {
    /// Rotate/flip by the EXIF orientation tag as `ImageOps.exif_transpose` does. Off by
    /// default: `Image.open` (and so transformers' processors) does not.
    pub apply_exif_orientation: bool,
    /// Largest width x height accepted (checked on the frame header, before allocating).
    pub max_pixels: u64,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        DecodeOptions {
            apply_exif_orientation: false,
            max_pixels: DEFAULT_MAX_PIXELS,
        }
    }
}

/// The colour space the file was coded in (libjpeg's `jpeg_color_space` guess).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColorSpace {
    Gray,
    YCbCr,
    Rgb,
    Cmyk,
    Ycck,
}

/// A decoded image: 1 channel (greyscale files, Pillow mode "L") or 3 (RGB, as Pillow's
/// `convert("RGB")` gives for YCbCr, RGB, CMYK and YCCK files), rows top to bottom.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    pub width: u32,
    pub height: u32,
    pub channels: u8,
    pub pixels: Vec<u8>,
    pub color_space: ColorSpace,
    /// The EXIF orientation tag of the first APP1 Exif segment, if any.
    pub exif_orientation: Option<u16>,
}

impl Image {
    /// Interleaved RGB (grey replicated, as Pillow's `convert("RGB")`).
    pub fn into_rgb(self) -> Vec<u8> {
        if self.channels == 3 {
            self.pixels
        } else {
            self.pixels.iter().flat_map(|&v| [v, v, v]).collect()
        }
    }
}

/// True if `data` starts with a JPEG SOI marker.
pub fn is_jpeg(data: &[u8]) -> bool {
    data.starts_with(&[0xFF, 0xD8, 0xFF])
}

/// Decodes a JPEG held in memory.
pub fn decode(data: &[u8], opts: &DecodeOptions) -> Result<Image> {
    let mut img = decoder::Decoder::new(data, *opts).decode()?;
    if opts.apply_exif_orientation
        && let Some(o @ 2..=8) = img.exif_orientation
    {
        let (w, h, px) = exif::apply(
            o,
            img.width as usize,
            img.height as usize,
            img.channels as usize,
            &img.pixels,
        );
        img.width = w as u32;
        img.height = h as u32;
        img.pixels = px;
    }
    Ok(img)
}
