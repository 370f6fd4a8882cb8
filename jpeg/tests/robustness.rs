//! Corrupt and truncated JPEGs give a typed error (or, for harmless damage, an image), never
//! a panic or a hang: deterministic mutations of corpus files.

mod common;

use std::time::{Duration, Instant};

use blip2_jpeg::{DecodeOptions, JpegError, decode};
use common::corpus_dir;

const FILES: [&str; 10] = [
    "pil_q75_420_33x31.jpg",
    "pil_prog_q80_420_33x31.jpg",
    "pil_restart_blocks_q80_420_75x61.jpg",
    "pil_restart_rows_prog_q80_420_75x61.jpg",
    "cjpeg_q85_411_45x17.jpg",
    "cjpeg_q85_440_45x17.jpg",
    "cjpeg_q80_multiscan_123x77.jpg",
    "pil_gray_prog_q80_57x43.jpg",
    "pil_ycck_q90_20x14.jpg",
    "pil_exif_orient6_30x20.jpg",
];

fn check(name: &str, what: &str, data: &[u8], slowest: &mut Duration) {
    let t = Instant::now();
    let r = std::panic::catch_unwind(|| decode(data, &DecodeOptions::default()));
    let dt = t.elapsed();
    *slowest = (*slowest).max(dt);
    assert!(dt < Duration::from_secs(2), "{name} {what}: took {dt:?}");
    match r {
        Err(_) => panic!("{name} {what}: panicked"),
        Ok(Ok(img)) => assert_eq!(
            img.pixels.len(),
            img.width as usize * img.height as usize * img.channels as usize
        ),
        Ok(Err(e)) => {
            // Every error names its problem.
            assert!(!e.to_string().is_empty());
        }
    }
}

/// xorshift64*: a fixed pseudo-random sequence.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

#[test]
fn truncations_give_typed_errors() {
    let mut slowest = Duration::ZERO;
    for name in FILES {
        let data = std::fs::read(corpus_dir().join(name)).unwrap();
        let full = decode(&data, &DecodeOptions::default()).unwrap();
        for cut in 0..data.len() - 2 {
            check(name, &format!("cut at {cut}"), &data[..cut], &mut slowest);
            // Cuts inside the headers or the entropy data never yield an image: the
            // decoder needs EOI (progressive, multi-scan) or every MCU (sequential).
            if let Ok(img) = decode(&data[..cut], &DecodeOptions::default()) {
                assert_eq!(
                    img, full,
                    "{name}: truncated at {cut} but decoded differently"
                );
            }
        }
    }
    eprintln!("slowest decode {slowest:?}");
}

#[test]
fn flipped_bytes_give_typed_errors_or_images() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut slowest = Duration::ZERO;
    let (mut ok, mut err) = (0, 0);
    for name in FILES {
        let data = std::fs::read(corpus_dir().join(name)).unwrap();
        for i in 0..400 {
            let mut d = data.clone();
            let flips = 1 + (rng.next() % 4) as usize;
            for _ in 0..flips {
                let p = (rng.next() % d.len() as u64) as usize;
                d[p] = match rng.next() % 3 {
                    0 => d[p] ^ (1 << (rng.next() % 8)),
                    1 => 0xFF,
                    _ => rng.next() as u8,
                };
            }
            check(name, &format!("mutation {i}"), &d, &mut slowest);
            match decode(&d, &DecodeOptions::default()) {
                Ok(_) => ok += 1,
                Err(_) => err += 1,
            }
        }
    }
    eprintln!("{ok} decoded, {err} typed errors, slowest {slowest:?}");
    assert!(err > 0);
}

#[test]
fn refusals_and_limits_are_typed() {
    let data = std::fs::read(corpus_dir().join("pil_q75_420_33x31.jpg")).unwrap();
    // 12-bit precision in the SOF0 header.
    let sof = data.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
    let mut d = data.clone();
    d[sof + 4] = 12;
    assert!(
        matches!(decode(&d, &DecodeOptions::default()), Err(JpegError::Unsupported(m)) if m.contains("12-bit"))
    );
    // Lossless and arithmetic SOF markers.
    for m in [0xC3, 0xC9, 0xCA] {
        let mut d = data.clone();
        d[sof + 1] = m;
        assert!(matches!(
            decode(&d, &DecodeOptions::default()),
            Err(JpegError::Unsupported(_))
        ));
    }
    // A pixel limit is checked on the header.
    let opts = DecodeOptions {
        max_pixels: 33 * 31 - 1,
        ..DecodeOptions::default()
    };
    assert_eq!(
        decode(&data, &opts),
        Err(JpegError::TooLarge {
            width: 33,
            height: 31,
            limit: 33 * 31 - 1
        })
    );
    // A huge frame with no data behind it fails fast instead of decoding zeros.
    let mut d = data[..sof + 9].to_vec();
    d[sof + 5..sof + 9].copy_from_slice(&[0x2F, 0xFF, 0x2F, 0xFF]);
    let t = Instant::now();
    assert!(decode(&d, &DecodeOptions::default()).is_err());
    assert!(t.elapsed() < Duration::from_secs(1));
    assert!(matches!(
        decode(b"\x89PNG", &DecodeOptions::default()),
        Err(JpegError::NotJpeg { .. })
    ));
}

/// Found by fuzzing (fuzz/README.md): a DHT with more codes of a length than the length
/// holds (3 one-bit codes) indexed past the lookup table while it was built. Now the
/// typed error libjpeg gives, before any table is filled.
#[test]
fn oversubscribed_huffman_lengths_are_an_error_not_a_panic() {
    let data = std::fs::read(corpus_dir().join("pil_q75_420_33x31.jpg")).unwrap();
    let mut dht = vec![0xFF, 0xC4, 0x00, 2 + 17 + 3, 0x00, 3];
    dht.extend_from_slice(&[0; 15]);
    dht.extend_from_slice(&[0, 1, 2]);
    let mut d = data[..2].to_vec();
    d.extend_from_slice(&dht);
    d.extend_from_slice(&data[2..]);
    match decode(&d, &DecodeOptions::default()) {
        Err(JpegError::BadSegment { marker, reason, .. }) => {
            assert_eq!(marker, "DHT");
            assert!(reason.contains("oversubscribed at length 1"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    // The fuzzer's own input, as the committed corpus holds it.
    let found = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/seeds/jpeg/crash-huffman-oversubscribed.jpg"),
    )
    .unwrap();
    assert!(decode(&found, &DecodeOptions::default()).is_err());
}
