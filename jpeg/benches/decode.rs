//! blip2-jpeg vs the `image` crate's decoder (zune-jpeg) on a 12-megapixel JPEG made here
//! from a synthetic photo-like image (nothing large is committed).
//!
//! `cargo bench -p blip2-jpeg --bench decode`

use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;

fn synthetic_jpeg(w: u32, h: u32, quality: u8) -> Vec<u8> {
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let n = (state % 24) as i32 - 12;
        let (fx, fy) = (x as f32 / w as f32, y as f32 / h as f32);
        let r = ((fx * 40.0).sin() * 90.0 + 128.0) as i32 + n;
        let g = (fy * 255.0) as i32 + n;
        let b = (((fx - 0.4).hypot(fy - 0.5) * 60.0).cos() * 100.0 + 128.0) as i32 + n;
        image::Rgb([r, g, b].map(|v| v.clamp(0, 255) as u8))
    });
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality)
        .encode_image(&img)
        .unwrap();
    out
}

fn bench(c: &mut Criterion) {
    let data = synthetic_jpeg(4000, 3000, 90);
    let mut g = c.benchmark_group("jpeg_12mp");
    g.sample_size(10);
    g.bench_function("blip2_jpeg", |b| {
        b.iter(|| {
            let img = blip2_jpeg::decode(black_box(&data), &Default::default()).unwrap();
            black_box(img.pixels.len())
        })
    });
    g.bench_function("image_zune", |b| {
        b.iter(|| {
            let img =
                image::load_from_memory_with_format(black_box(&data), image::ImageFormat::Jpeg)
                    .unwrap()
                    .into_rgb8();
            black_box(img.len())
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
