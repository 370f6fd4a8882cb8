//! Every corpus file decodes to exactly what Pillow 13 (libjpeg-turbo) returns for
//! `Image.open(f).convert("RGB")` (SHA-256 of the RGB bytes, and full byte comparison for the
//! files with a stored reference); refused files give `JpegError::Unsupported`.

mod common;

use blip2_jpeg::{DecodeOptions, JpegError, decode};
use common::{corpus_dir, manifest, sha256_hex};

#[test]
fn corpus_matches_pillow_byte_for_byte() {
    let m = manifest();
    let entries = m["entries"].as_array().unwrap();
    let mut failures = Vec::new();
    let (mut identical, mut refused) = (0, 0);
    for e in entries {
        let name = e["file"].as_str().unwrap();
        let data = std::fs::read(corpus_dir().join(name)).unwrap();
        let got = decode(&data, &DecodeOptions::default());
        match e["expect"].as_str().unwrap() {
            "identical" => {
                let img = match got {
                    Ok(i) => i,
                    Err(err) => {
                        failures.push(format!("{name}: error {err}"));
                        continue;
                    }
                };
                let (w, h) = (img.width, img.height);
                let rgb = img.into_rgb();
                if (w as u64, h as u64)
                    != (e["width"].as_u64().unwrap(), e["height"].as_u64().unwrap())
                {
                    failures.push(format!("{name}: size {w}x{h}"));
                    continue;
                }
                if let Some(f) = e["rgb_file"].as_str() {
                    let want = std::fs::read(corpus_dir().join(f)).unwrap();
                    let diff = rgb.iter().zip(&want).filter(|(a, b)| a != b).count();
                    if diff != 0 {
                        failures.push(format!("{name}: {diff} bytes differ from {f}"));
                        continue;
                    }
                }
                if sha256_hex(&rgb) != e["rgb_sha256"].as_str().unwrap() {
                    failures.push(format!("{name}: RGB hash differs"));
                    continue;
                }
                if let Some(t) = e.get("transposed") {
                    let opts = DecodeOptions {
                        apply_exif_orientation: true,
                        ..DecodeOptions::default()
                    };
                    let img = decode(&data, &opts).unwrap();
                    assert_eq!(
                        (img.width as u64, img.height as u64),
                        (t["width"].as_u64().unwrap(), t["height"].as_u64().unwrap()),
                        "{name}"
                    );
                    assert_eq!(
                        sha256_hex(&img.into_rgb()),
                        t["rgb_sha256"].as_str().unwrap(),
                        "{name}: exif_transpose"
                    );
                }
                identical += 1;
            }
            "unsupported" => match got {
                Err(JpegError::Unsupported(_)) => refused += 1,
                other => failures.push(format!("{name}: expected Unsupported, got {other:?}")),
            },
            x => panic!("unknown expectation {x}"),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} corpus files fail:\n{}",
        failures.len(),
        entries.len(),
        failures.join("\n")
    );
    eprintln!("{identical} files byte-identical to Pillow, {refused} refused as expected");
    assert!(identical >= 90);
}
