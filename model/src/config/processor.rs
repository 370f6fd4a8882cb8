//! Image-processor settings (`processor_config.json`, or the older
//! `preprocessor_config.json`): `BlipImageProcessor`'s keys with the BLIP-2 hub defaults.

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use super::json::{Obj, parse_json};
use crate::error::Result;
use crate::preprocess::Filter;

/// Settings of `BlipImageProcessor`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ImageProcessorConfig {
    /// Output (height, width).
    pub size: (usize, usize),
    /// Resampling filter of the resize. The JSON stores PIL's integer code (1 lanczos,
    /// 2 bilinear, 3 bicubic, 4 box, 5 hamming, 6 mks2013, 7 mks2021); 0 (nearest), which
    /// Pillow resizes by another code path, is refused when the file is parsed.
    pub resample: Filter,
    pub do_resize: bool,
    pub do_rescale: bool,
    pub rescale_factor: f64,
    pub do_normalize: bool,
    pub image_mean: [f64; 3],
    pub image_std: [f64; 3],
    pub do_convert_rgb: bool,
}

/// OPENAI_CLIP_MEAN / OPENAI_CLIP_STD of transformers.
pub const CLIP_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
pub const CLIP_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];

impl Default for ImageProcessorConfig {
    /// BLIP-2 hub values (224x224, bicubic, CLIP mean/std).
    fn default() -> Self {
        ImageProcessorConfig {
            size: (224, 224),
            resample: Filter::Bicubic,
            do_resize: true,
            do_rescale: true,
            rescale_factor: 1.0 / 255.0,
            do_normalize: true,
            image_mean: CLIP_MEAN,
            image_std: CLIP_STD,
            do_convert_rgb: true,
        }
    }
}

/// What the processor files of a checkpoint directory say.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProcessorConfig {
    pub image: ImageProcessorConfig,
    /// `num_query_tokens` from processor_config.json, when it has one.
    pub num_query_tokens: Option<usize>,
    /// The file the image settings came from (None: defaults, no file found).
    pub source: Option<PathBuf>,
}

impl ImageProcessorConfig {
    /// Parses one image-processor JSON object (`path` and `prefix` for error messages).
    fn parse(o: &Obj) -> Result<ImageProcessorConfig> {
        let d = ImageProcessorConfig::default();
        let size = match o.get("size") {
            None | Some(Value::Null) => d.size,
            Some(Value::Number(_)) => {
                let s = o.usize("size", 0)?;
                (s, s)
            }
            Some(Value::Object(_)) => {
                let Some(s) = o.obj("size")? else {
                    return Err(o.err("size", "expected an object".to_string()));
                };
                match (s.opt_usize("height")?, s.opt_usize("width")?) {
                    (Some(h), Some(w)) => (h, w),
                    _ => match s.opt_usize("shortest_edge")? {
                        // BLIP resizes to a square; a lone edge means size x size.
                        Some(e) => (e, e),
                        None => {
                            return Err(o.err(
                                "size",
                                "expected {\"height\": H, \"width\": W}".to_string(),
                            ));
                        }
                    },
                }
            }
            Some(other) => {
                return Err(o.err(
                    "size",
                    format!("expected an object or an integer, found {other}"),
                ));
            }
        };
        if size.0 == 0 || size.1 == 0 {
            return Err(o.err("size", "height and width must be at least 1".to_string()));
        }
        let image_mean = o.triple("image_mean", d.image_mean)?;
        let image_std = o.triple("image_std", d.image_std)?;
        if image_std.contains(&0.0) {
            return Err(o.err("image_std", "a standard deviation of 0".to_string()));
        }
        // Checked here so a bad filter is a config error at load, not a failure on the
        // first image that needs resizing.
        let resample = match o.opt_u32("resample")? {
            None => d.resample,
            Some(code) => {
                Filter::from_pil_code(code).map_err(|e| o.err("resample", e.to_string()))?
            }
        };
        Ok(ImageProcessorConfig {
            size,
            resample,
            do_resize: o.bool("do_resize", d.do_resize)?,
            do_rescale: o.bool("do_rescale", d.do_rescale)?,
            rescale_factor: o.f64("rescale_factor", d.rescale_factor)?,
            do_normalize: o.bool("do_normalize", d.do_normalize)?,
            image_mean,
            image_std,
            do_convert_rgb: o.bool("do_convert_rgb", d.do_convert_rgb)?,
        })
    }

    /// Parses a `preprocessor_config.json` (older layout: the settings at top level).
    pub fn from_preprocessor_json(
        text: &str,
        path: impl AsRef<Path>,
    ) -> Result<ImageProcessorConfig> {
        let path = path.as_ref();
        let v = parse_json(text, path)?;
        Self::parse(&Obj::root(path, &v)?)
    }
}

impl ProcessorConfig {
    /// Reads the processor settings of a checkpoint directory: `processor_config.json`
    /// (v5 layout: key `image_processor`, plus `num_query_tokens`) when it holds image
    /// settings, else `preprocessor_config.json` (older layout), else the BLIP-2 defaults.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<ProcessorConfig> {
        let dir = dir.as_ref();
        let mut num_query_tokens = None;
        let proc_path = dir.join("processor_config.json");
        if proc_path.is_file() {
            let text = crate::limits::read_text_bounded(
                &proc_path,
                crate::limits::MAX_JSON_BYTES,
                "config",
            )?;
            let (image, n) = Self::from_processor_json(&text, &proc_path)?;
            num_query_tokens = n;
            if let Some(image) = image {
                return Ok(ProcessorConfig {
                    image,
                    num_query_tokens,
                    source: Some(proc_path),
                });
            }
        }
        let pre_path = dir.join("preprocessor_config.json");
        if pre_path.is_file() {
            let text = crate::limits::read_text_bounded(
                &pre_path,
                crate::limits::MAX_JSON_BYTES,
                "config",
            )?;
            let v = parse_json(&text, &pre_path)?;
            let o = Obj::root(&pre_path, &v)?;
            if num_query_tokens.is_none() {
                num_query_tokens = o.opt_usize("num_query_tokens")?;
            }
            return Ok(ProcessorConfig {
                image: ImageProcessorConfig::parse(&o)?,
                num_query_tokens,
                source: Some(pre_path),
            });
        }
        Ok(ProcessorConfig {
            image: ImageProcessorConfig::default(),
            num_query_tokens,
            source: None,
        })
    }

    /// Parses `processor_config.json`: `(image settings if key image_processor exists, num_query_tokens)`.
    pub fn from_processor_json(
        text: &str,
        path: impl AsRef<Path>,
    ) -> Result<(Option<ImageProcessorConfig>, Option<usize>)> {
        let path = path.as_ref();
        let v = parse_json(text, path)?;
        let o = Obj::root(path, &v)?;
        let n = o.opt_usize("num_query_tokens")?;
        let image = match o.obj("image_processor")? {
            Some(ip) => Some(ImageProcessorConfig::parse(&ip)?),
            None => None,
        };
        Ok((image, n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resample_is_read_as_a_typed_filter() {
        let j = r#"{"resample": 2}"#;
        let c = ImageProcessorConfig::from_preprocessor_json(j, "p.json").unwrap();
        assert_eq!(c.resample, Filter::Bilinear);
        for code in 1..=7 {
            assert_eq!(Filter::from_pil_code(code).unwrap().pil_code(), code);
        }
        assert_eq!(ImageProcessorConfig::default().resample, Filter::Bicubic);
    }
}
