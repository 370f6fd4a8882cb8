//! Preprocessing against Pillow (the library transformers' `BlipImageProcessorPil` calls) and
//! against the transformers fixtures in tests/fixtures/reference/images.safetensors.
//!
//! The small expected arrays below were printed by Pillow 13.0.0 (numpy 2.4.6) with:
//! ```python
//! import numpy as np
//! from PIL import Image
//! def pattern(w, h, c):
//!     a = np.zeros((h, w, c), dtype=np.uint8)
//!     for y in range(h):
//!         for x in range(w):
//!             for k in range(c):
//!                 a[y, x, k] = (x * 37 + y * 91 + k * 53 + ((x * y) % 17) * 11 + (x ^ y) * 7) % 256
//!     return a
//! im = Image.fromarray(pattern(13, 9, 3), 'RGB')
//! print([int(v) for v in np.array(im.resize((5, 7), Image.BICUBIC)).reshape(-1)])
//! im2 = Image.fromarray(pattern(7, 5, 3), 'RGB')
//! print([int(v) for v in np.array(im2.resize((11, 8), Image.BICUBIC)).reshape(-1)])
//! for f in [Image.BILINEAR, Image.LANCZOS, Image.BOX, Image.HAMMING]:
//!     r = np.array(im.resize((5, 7), f)).astype(np.int64); print(r.sum(), (r * r).sum())
//! def fp(r):
//!     r = r.astype(np.int64); return r.sum(), (r * r).sum(), (r.reshape(-1) * (np.arange(r.size) % 251)).sum()
//! for f in [Image.Resampling.MKS2013, Image.Resampling.MKS2021]:
//!     print(fp(np.array(im.resize((5, 7), f))))
//! for (w, h, ow, oh) in [(300, 200, 224, 224), (97, 61, 224, 224), (224, 50, 224, 224), (30, 40, 24, 20),
//!                        (200, 240, 224, 224), (9, 13, 7, 5), (640, 480, 224, 224), (480, 640, 224, 224)]:
//!     print(fp(np.array(Image.fromarray(pattern(w, h, 3), 'RGB').resize((ow, oh), Image.BICUBIC))))
//! print(fp(np.array(Image.fromarray(pattern(30, 40, 1)[..., 0], 'L').resize((24, 20), Image.BICUBIC))))
//! ```
//! Resizing is integer arithmetic in Pillow and here, so these comparisons are exact.

use std::path::PathBuf;

use blip2_engine::Device;
use blip2_model::ModelError;
use blip2_model::config::ImageProcessorConfig;
use blip2_model::preprocess::{
    Filter, ImageInput, composite_on_white, load_image, load_image_from_bytes, pixel_values,
    preprocess, resize_u8, to_rgb8_like_pil,
};
use image::{DynamicImage, ImageBuffer, Luma, LumaA, Rgb, Rgba};

fn pattern(w: usize, h: usize, c: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(w * h * c);
    for y in 0..h {
        for x in 0..w {
            for k in 0..c {
                out.push(
                    ((x * 37 + y * 91 + k * 53 + ((x * y) % 17) * 11 + (x ^ y) * 7) % 256) as u8,
                );
            }
        }
    }
    out
}

const PIL_BICUBIC_13X9_TO_5X7: [u8; 105] = [
    66, 102, 165, 160, 151, 136, 103, 87, 103, 111, 162, 176, 161, 109, 89, 122, 133, 146, 136, 72,
    137, 118, 119, 118, 114, 111, 160, 161, 172, 113, 90, 142, 122, 144, 111, 106, 83, 116, 130,
    120, 85, 142, 101, 167, 187, 148, 104, 153, 130, 171, 139, 164, 141, 93, 123, 123, 179, 180,
    72, 134, 133, 130, 99, 97, 134, 121, 132, 93, 160, 169, 99, 155, 132, 108, 122, 103, 161, 113,
    99, 156, 117, 91, 153, 144, 123, 136, 134, 130, 123, 120, 83, 126, 164, 121, 101, 138, 121,
    182, 127, 132, 151, 176, 134, 109, 82,
];

const PIL_BICUBIC_7X5_TO_11X8: [u8; 264] = [
    0, 43, 96, 9, 61, 114, 41, 95, 148, 68, 135, 188, 95, 168, 233, 124, 195, 248, 163, 242, 91,
    205, 187, 8, 235, 19, 54, 95, 20, 98, 0, 52, 125, 32, 83, 150, 53, 113, 173, 93, 140, 192, 129,
    95, 147, 164, 89, 149, 185, 124, 177, 142, 178, 116, 135, 167, 93, 179, 81, 129, 123, 103, 97,
    76, 136, 67, 102, 155, 198, 114, 181, 228, 141, 180, 234, 187, 45, 98, 232, 2, 55, 247, 47,
    100, 125, 86, 144, 56, 121, 187, 91, 151, 215, 143, 200, 104, 177, 230, 12, 194, 242, 81, 121,
    178, 110, 35, 84, 145, 65, 56, 131, 106, 87, 154, 143, 137, 190, 175, 56, 113, 136, 23, 90, 30,
    79, 154, 56, 124, 140, 97, 149, 117, 167, 213, 52, 97, 153, 89, 16, 78, 134, 48, 123, 116, 92,
    145, 140, 134, 128, 181, 178, 56, 124, 154, 38, 77, 57, 97, 73, 32, 96, 128, 31, 84, 172, 38,
    90, 133, 60, 116, 176, 100, 161, 198, 144, 217, 56, 193, 153, 17, 225, 25, 78, 135, 86, 173,
    99, 162, 156, 151, 205, 9, 81, 134, 72, 17, 70, 149, 83, 148, 214, 131, 112, 178, 179, 80, 126,
    119, 140, 97, 127, 148, 123, 183, 122, 175, 157, 176, 128, 128, 200, 97, 115, 169, 108, 111,
    163, 80, 110, 163, 58, 137, 209, 255, 190, 115, 167, 225, 9, 63, 86, 68, 136, 63, 142, 221,
    138, 209, 255, 179, 239, 87, 157, 209, 42, 74, 127, 192, 126, 179, 95, 182, 235, 0,
];

#[test]
fn bicubic_downscale_matches_pillow() {
    let out = resize_u8(&pattern(13, 9, 3), 13, 9, 3, 5, 7, Filter::Bicubic).unwrap();
    assert_eq!(out, PIL_BICUBIC_13X9_TO_5X7);
}

#[test]
fn bicubic_upscale_matches_pillow() {
    let out = resize_u8(&pattern(7, 5, 3), 7, 5, 3, 11, 8, Filter::Bicubic).unwrap();
    assert_eq!(out, PIL_BICUBIC_7X5_TO_11X8);
}

fn sums(v: &[u8]) -> (i64, i64, i64) {
    let s = v.iter().map(|&x| x as i64).sum();
    let sq = v.iter().map(|&x| (x as i64) * (x as i64)).sum();
    let ws = v
        .iter()
        .enumerate()
        .map(|(i, &x)| x as i64 * (i as i64 % 251))
        .sum();
    (s, sq, ws)
}

#[test]
fn other_filters_match_pillow() {
    let src = pattern(13, 9, 3);
    for (filter, sum, sumsq) in [
        (Filter::Bilinear, 13436, 1775648),
        (Filter::Lanczos, 13452, 1817060),
        (Filter::Box, 13535, 1891693),
        (Filter::Hamming, 13438, 1818404),
    ] {
        let out = resize_u8(&src, 13, 9, 3, 5, 7, filter).unwrap();
        let (s, sq, _) = sums(&out);
        assert_eq!((s, sq), (sum, sumsq), "{filter:?}");
    }
}

#[test]
fn mks_filters_match_pillow() {
    let src = pattern(13, 9, 3);
    for (filter, want) in [
        (Filter::Mks2013, (13446, 1828150, 703191)),
        (Filter::Mks2021, (13456, 1814958, 703693)),
    ] {
        assert_eq!(
            sums(&resize_u8(&src, 13, 9, 3, 5, 7, filter).unwrap()),
            want,
            "{filter:?}"
        );
    }
}

#[test]
fn bicubic_sizes_and_pass_orders_match_pillow() {
    // (30, 40) -> (24, 20), (200, 240) -> 224, (9, 13) -> (7, 5) and (480, 640) -> 224 shrink
    // the height much more than the width: Pillow 13 runs the vertical pass first there, and
    // the other order gives different pixels (checked against Pillow: up to 23 grey levels).
    for (w, h, ow, oh, want) in [
        (300, 200, 224, 224, (19174283, 2851596205, 2396846137)),
        (97, 61, 224, 224, (19140361, 2966686615, 2390021254)),
        (224, 50, 224, 224, (19135056, 3093303772, 2390958697)),
        (30, 40, 24, 20, (185415, 25785515, 22251034)),
        (200, 240, 224, 224, (19177392, 2945762156, 2397436505)),
        (9, 13, 7, 5, (13165, 1723483, 687799)),
        (640, 480, 224, 224, (19161636, 2523242466, 2394462380)),
        (480, 640, 224, 224, (19163499, 2523066859, 2395067636)),
    ] {
        let out = resize_u8(&pattern(w, h, 3), w, h, 3, ow, oh, Filter::Bicubic).unwrap();
        assert_eq!(sums(&out), want, "{w}x{h} -> {ow}x{oh}");
    }
    let grey = resize_u8(&pattern(30, 40, 1), 30, 40, 1, 24, 20, Filter::Bicubic).unwrap();
    assert_eq!(sums(&grey), (59843, 8066807, 7205475), "single channel");
}

#[test]
fn resize_rejects_bad_sizes() {
    assert!(matches!(
        resize_u8(&[], 0, 5, 3, 4, 4, Filter::Bicubic),
        Err(ModelError::Invalid(_))
    ));
    assert!(matches!(
        resize_u8(&[0; 10], 2, 2, 3, 4, 4, Filter::Bicubic),
        Err(ModelError::Invalid(_))
    ));
    assert!(
        Filter::from_pil_code(0).is_err(),
        "nearest is a different Pillow path"
    );
}

#[test]
fn alpha_composite_matches_pillow_formula() {
    // Pillow 13: Image.alpha_composite(white, RGBA(v, v, v, a)) for all 65536 (v, a) pairs
    // equals this scalar formula (checked once against Pillow; here spot values it produced).
    assert_eq!(composite_on_white(10, 0), 255);
    for v in 0..=255u8 {
        assert_eq!(composite_on_white(v, 255), v, "opaque pixels are unchanged");
    }
    assert_eq!(composite_on_white(0, 128), 127);
    assert_eq!(composite_on_white(100, 1), 254);
}

#[test]
fn rgb_conversion_like_transformers() {
    // RGBA: composited onto white; alpha 0 -> white, alpha 255 -> unchanged.
    let rgba = ImageBuffer::from_fn(3, 1, |x, _| {
        Rgba([10, 200, 30, [0u8, 255, 128][x as usize]])
    });
    let rgb = to_rgb8_like_pil(&DynamicImage::ImageRgba8(rgba));
    assert_eq!(rgb.as_raw(), &[255, 255, 255, 10, 200, 30, 132, 227, 142]);
    // LA: grey replicated, then composited.
    let la = ImageBuffer::from_fn(2, 1, |x, _| LumaA([40u8, [255u8, 0][x as usize]]));
    assert_eq!(
        to_rgb8_like_pil(&DynamicImage::ImageLumaA8(la)).as_raw(),
        &[40, 40, 40, 255, 255, 255]
    );
    // 16-bit: Pillow 13 loads RGB 16-bit PNGs keeping the high byte ([0x0000, 0x00ff, 0x0180,
    // 0x7f80, 0xff00, 0xffff] -> [0, 0, 1, 127, 255, 255]) and clips 16-bit grey ("I;16")
    // at 255 in convert("RGB") ([0, 255, 256, 1000, 65535, 40000] -> [0, 255, 255, 255, 255, 255]).
    let vals = [0x0000u16, 0x00ff, 0x0180, 0x7f80, 0xff00, 0xffff];
    let rgb16 = ImageBuffer::from_fn(6, 1, |x, _| Rgb([vals[x as usize]; 3]));
    let out = to_rgb8_like_pil(&DynamicImage::ImageRgb16(rgb16));
    let reds: Vec<u8> = out.pixels().map(|p| p.0[0]).collect();
    assert_eq!(reds, [0, 0, 1, 127, 255, 255]);
    let greys = [0u16, 255, 256, 1000, 65535, 40000];
    let g16 = ImageBuffer::from_fn(6, 1, |x, _| Luma([greys[x as usize]]));
    let out = to_rgb8_like_pil(&DynamicImage::ImageLuma16(g16));
    let reds: Vec<u8> = out.pixels().map(|p| p.0[0]).collect();
    assert_eq!(reds, [0, 255, 255, 255, 255, 255]);
}

#[test]
fn normalisation_matches_numpy_pipeline() {
    // The first pixel values of the 13x9 RGB pattern resized to 5x7 and normalised the way
    // transformers does (rescale in f64 then cast to f32, (x - mean) / std in f32), computed
    // with numpy from Pillow's resize output:
    //   x = (r.astype(np.float64) * 0.00392156862745098).astype(np.float32).transpose(2, 0, 1)
    //   pv = ((x.T - mean_f32) / std_f32).T
    // Tolerance 0: the same f32 operations in the same order.
    let img = DynamicImage::ImageRgb8(ImageBuffer::from_raw(13, 9, pattern(13, 9, 3)).unwrap());
    let cfg = ImageProcessorConfig {
        size: (7, 5),
        ..ImageProcessorConfig::default()
    };
    let pv = preprocess(&img, &cfg).unwrap();
    assert_eq!(pv.len(), 3 * 7 * 5);
    let expected = [
        -0.8287663459777832f64,
        0.5434857606887817,
        -0.2886245846748352,
        -0.1718371957540512,
        0.5580841898918152,
        -0.011254520155489445,
    ];
    let got: Vec<f64> = pv[..6].iter().map(|&v| v as f64).collect();
    assert_eq!(got, expected, "f32 values printed exactly as f64");
    let sum: f64 = pv.iter().map(|&v| v as f64).sum();
    assert!((sum - 20.472486986778677).abs() < 1e-9, "sum {sum}");
}

#[test]
fn pixel_values_batches_and_errors() {
    let a = DynamicImage::ImageRgb8(ImageBuffer::from_raw(13, 9, pattern(13, 9, 3)).unwrap());
    let b = DynamicImage::ImageRgb8(ImageBuffer::from_raw(7, 5, pattern(7, 5, 3)).unwrap());
    let cfg = ImageProcessorConfig {
        size: (6, 4),
        ..ImageProcessorConfig::default()
    };
    let t = pixel_values(&[&a, &b], &cfg, &Device::Cpu).unwrap();
    assert_eq!(t.shape(), &[2, 3, 6, 4]);
    let v = t.to_vec_f32().unwrap();
    assert_eq!(&v[..72], preprocess(&a, &cfg).unwrap().as_slice());
    assert_eq!(&v[72..], preprocess(&b, &cfg).unwrap().as_slice());
    assert!(matches!(
        pixel_values(&[], &cfg, &Device::Cpu),
        Err(ModelError::Invalid(_))
    ));

    // Undecodable bytes and missing files name their source.
    let err = load_image_from_bytes(b"definitely not an image", "mem.bin").unwrap_err();
    assert!(err.to_string().contains("mem.bin"), "{err}");
    let err = load_image("/nonexistent/dir/cat.png").unwrap_err();
    assert!(err.to_string().contains("cat.png"), "{err}");
    let mut png = Vec::new();
    a.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    let truncated = &png[..png.len() / 2];
    let err = ImageInput::Bytes(truncated).load().unwrap_err();
    assert!(matches!(err, ModelError::Image { .. }), "{err}");
    let round = ImageInput::Bytes(&png).load().unwrap();
    assert_eq!(round.to_rgb8().as_raw(), a.to_rgb8().as_raw());
}

// ---- transformers fixtures (tools/fixtures/make_fixtures.py, transformers 5.24, Pillow 13) ----

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

struct Reference {
    bytes: Vec<u8>,
}

impl Reference {
    fn load() -> Reference {
        let path = fixtures().join("reference/images.safetensors");
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Reference { bytes }
    }
    fn tensor(&self, name: &str) -> (Vec<usize>, Vec<u8>) {
        let st = safetensors::SafeTensors::deserialize(&self.bytes).unwrap();
        let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e:?}"));
        (t.shape().to_vec(), t.data().to_vec())
    }
    fn u8(&self, name: &str) -> (Vec<usize>, Vec<u8>) {
        self.tensor(name)
    }
    fn f32(&self, name: &str) -> (Vec<usize>, Vec<f32>) {
        let (s, b) = self.tensor(name);
        (
            s,
            b.chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect(),
        )
    }
}

const IMAGES: [(&str, &str); 4] = [
    ("rgb", "images/scene_rgb.png"),
    ("rgba", "images/scene_rgba.png"),
    ("gray", "images/small_gray.png"),
    ("jpeg", "images/photo.jpg"),
];

fn max_abs_u8(a: &[u8], b: &[u8]) -> u8 {
    a.iter()
        .zip(b)
        .map(|(x, y)| x.abs_diff(*y))
        .max()
        .unwrap_or(0)
}

#[test]
fn fixture_rgb_conversion_and_resize_are_exact() {
    let r = Reference::load();
    for (key, file) in IMAGES {
        let img = load_image(fixtures().join(file)).unwrap();
        let rgb = to_rgb8_like_pil(&img);
        let (shape, want) = r.u8(&format!("{key}.rgb_u8"));
        assert_eq!(
            shape,
            [rgb.height() as usize, rgb.width() as usize, 3],
            "{key}"
        );
        // Every image, the JPEG included (blip2-jpeg decodes as Pillow's libjpeg-turbo does),
        // gives exactly Pillow's RGB bytes.
        let diff = max_abs_u8(rgb.as_raw(), &want);
        assert_eq!(diff, 0, "{key}: decoded RGB differs from Pillow");
        // The resize alone, from the reference's own RGB pixels: bit-exact with Pillow.
        let (h, w) = (shape[0], shape[1]);
        let resized = resize_u8(&want, w, h, 3, 224, 224, Filter::Bicubic).unwrap();
        let (_, want_resized) = r.u8(&format!("{key}.resized_u8"));
        assert_eq!(
            max_abs_u8(&resized, &want_resized),
            0,
            "{key}: resize differs from Pillow"
        );
    }
}

#[test]
fn fixture_pixel_values_match() {
    let r = Reference::load();
    let cfg = ImageProcessorConfig::default();
    for (key, file) in IMAGES {
        let img = load_image(fixtures().join(file)).unwrap();
        let pv = pixel_values(&[&img], &cfg, &Device::Cpu).unwrap();
        let (shape, want) = r.f32(&format!("{key}.pixel_values"));
        assert_eq!(pv.shape(), shape.as_slice(), "{key}");
        let got = pv.to_vec_f32().unwrap();
        let max = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs() as f64)
            .fold(0f64, f64::max);
        // Same decoded pixels (JPEG included), same integer resize and the same f32
        // normalisation -> identical (measured 0; 1e-6 allows for nothing but f32 noise).
        let tol = 1e-6;
        assert!(max <= tol, "{key}: max |diff| {max} > {tol}");
    }
}
