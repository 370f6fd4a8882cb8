//! Inputs are bounded before they are allocated (issue 20): config counts against the
//! checkpoint's tensors, the processor's resize size, file kinds and sizes, image headers,
//! prompt lengths. Each case must fail fast with an error that names the key, file or limit.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use blip2_engine::{DType, Device};
use blip2_model::ModelError;
use blip2_model::blip2::Blip2;
use blip2_model::loading::LoadOptions;
use blip2_model::preprocess::load_image_from_bytes;
use serde_json::Value;

fn models() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models")
}

fn images() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/images")
}

fn cpu() -> LoadOptions {
    LoadOptions {
        device: Device::Cpu,
        dtype: DType::F32,
        ..Default::default()
    }
}

/// A copy of a fixture checkpoint in a temp dir (weights symlinked), removed on drop.
struct Copy(PathBuf);

impl Copy {
    fn of(fixture: &str, tag: &str) -> Copy {
        let dst = std::env::temp_dir().join(format!("blip2-bounds-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dst);
        std::fs::create_dir_all(&dst).unwrap();
        for e in std::fs::read_dir(models().join(fixture)).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap();
            if p.extension().is_some_and(|x| x == "safetensors") {
                std::os::unix::fs::symlink(&p, dst.join(name)).unwrap();
            } else {
                std::fs::copy(&p, dst.join(name)).unwrap();
            }
        }
        Copy(dst)
    }
    fn dir(&self) -> &Path {
        &self.0
    }
    /// Sets `key` (a dotted path) in a JSON file of the copy.
    fn set(&self, file: &str, key: &str, value: Value) {
        let path = self.0.join(file);
        let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let mut at = &mut v;
        let parts: Vec<&str> = key.split('.').collect();
        for p in &parts[..parts.len() - 1] {
            at = at
                .get_mut(*p)
                .unwrap_or_else(|| panic!("{file} has no {key}"));
        }
        at[parts[parts.len() - 1]] = value;
        std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    }
}

impl Drop for Copy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn load_err(dir: &Path) -> String {
    let t = Instant::now();
    let e = match Blip2::load(dir, cpu()) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e.to_string(),
    };
    // Refused before anything of the claimed size is built.
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "took {:?}: {e}",
        t.elapsed()
    );
    e
}

#[test]
fn layer_counts_that_contradict_the_checkpoint_are_errors_naming_the_key() {
    for (fixture, key) in [
        ("blip2-opt-tiny", "text_config.num_hidden_layers"),
        ("blip2-opt-tiny", "vision_config.num_hidden_layers"),
        ("blip2-opt-tiny", "qformer_config.num_hidden_layers"),
        ("blip2-flan-t5-tiny", "text_config.num_layers"),
        ("blip2-flan-t5-tiny", "text_config.num_decoder_layers"),
    ] {
        for n in [1_000_000_000_000u64, 0] {
            let c = Copy::of(fixture, "layers");
            c.set("config.json", key, Value::from(n));
            let e = load_err(c.dir());
            assert!(
                e.contains(&format!("config key {key} is {n} but the checkpoint holds")),
                "{fixture} {key}={n}: {e}"
            );
        }
    }
}

#[test]
fn processor_size_must_match_the_vision_encoder() {
    let c = Copy::of("blip2-opt-tiny", "procsize");
    c.set(
        "processor_config.json",
        "image_processor.size",
        serde_json::json!({"height": 100000, "width": 100000}),
    );
    let e = load_err(c.dir());
    assert!(e.contains("processor_config.json"), "{e}");
    assert!(e.contains("key 'size'"), "{e}");
    assert!(e.contains("resizes to 100000x100000"), "{e}");
}

#[test]
fn config_files_must_be_regular_files() {
    let c = Copy::of("blip2-opt-tiny", "devzero");
    std::fs::remove_file(c.dir().join("config.json")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", c.dir().join("config.json")).unwrap();
    let e = load_err(c.dir());
    assert!(e.contains("config.json"), "{e}");
    assert!(e.contains("not a regular file (a character device)"), "{e}");

    let c = Copy::of("blip2-opt-tiny", "dirtok");
    std::fs::remove_file(c.dir().join("tokenizer.json")).unwrap();
    std::fs::create_dir(c.dir().join("tokenizer.json")).unwrap();
    let e = load_err(c.dir());
    assert!(e.contains("tokenizer.json"), "{e}");
}

#[test]
fn long_prompts_are_refused_before_they_are_embedded() {
    for fixture in ["blip2-flan-t5-tiny", "blip2-opt-tiny"] {
        let m = Blip2::load(models().join(fixture), cpu()).unwrap();
        let (limit, from) = m.prompt_limit();
        let prompt = "a red square ".repeat(10_000);
        let t = Instant::now();
        let e = m.prompt_ids(Some(&prompt)).unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
        match e {
            ModelError::PromptTooLong {
                tokens, limit: l, ..
            } => {
                assert!(
                    tokens > l && l == limit,
                    "{fixture}: {tokens} > {l} ({from})"
                )
            }
            other => panic!("{fixture}: {other}"),
        }
        // The whole pipeline refuses it the same way.
        let img = blip2_model::preprocess::load_image(images().join("scene_rgb.png")).unwrap();
        let e = m
            .generate(&img, Some(prompt.as_str()), &Default::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("exceeds the model's limit of"), "{fixture}: {e}");
        // A prompt at the limit is fine.
        assert!(m.prompt_ids(Some("a red square")).is_ok());
    }
}

/// `(width, height)` written into a copy of a JPEG's SOF0/SOF2 frame header.
fn jpeg_with_size(w: u16, h: u16) -> Vec<u8> {
    let mut b = std::fs::read(images().join("photo.jpg")).unwrap();
    let sof = (0..b.len() - 1)
        .find(|&i| b[i] == 0xFF && (b[i + 1] == 0xC0 || b[i + 1] == 0xC2))
        .expect("a SOF marker");
    b[sof + 5..sof + 7].copy_from_slice(&h.to_be_bytes());
    b[sof + 7..sof + 9].copy_from_slice(&w.to_be_bytes());
    b
}

/// A PNG whose header says `w x h` (IHDR with a correct CRC) and whose data is one empty
/// zlib stream: decoders learn the size from the header alone.
fn png_with_size(w: u32, h: u32) -> Vec<u8> {
    fn crc32(bytes: &[u8]) -> u32 {
        let mut c = !0u32;
        for &b in bytes {
            c ^= b as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
        }
        !c
    }
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend((data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend(data);
        out.extend(&body);
        out.extend(crc32(&body).to_be_bytes());
    }
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend(w.to_be_bytes());
    ihdr.extend(h.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]); // 8-bit RGB
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(
        &mut out,
        b"IDAT",
        &[0x78, 0x9C, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    );
    chunk(&mut out, b"IEND", &[]);
    out
}

#[test]
fn images_beyond_the_pixel_limit_are_refused_from_their_header() {
    // 20000 x 20000 = 400 MP (the 389 KB PNG cost 1.6 GB); 9000 x 8000 = 72 MP.
    for (name, bytes) in [
        ("big.png", png_with_size(20_000, 20_000)),
        ("wide.png", png_with_size(9000, 8000)),
        ("big.jpg", jpeg_with_size(20_000, 20_000)),
        ("wide.jpg", jpeg_with_size(9000, 8000)),
    ] {
        let t = Instant::now();
        let e = load_image_from_bytes(&bytes, name).unwrap_err().to_string();
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "{name}: {:?}",
            t.elapsed()
        );
        assert!(e.contains(name), "{e}");
        assert!(
            e.contains("limit") && (e.contains("20000") || e.contains("9000")),
            "{name}: {e}"
        );
    }
    // Just under the limit, the header check passes and the (empty) data is the error.
    let e = load_image_from_bytes(&png_with_size(8192, 8192), "ok.png")
        .unwrap_err()
        .to_string();
    assert!(!e.contains("limit"), "{e}");
}

#[test]
fn image_files_are_bounded_regular_files() {
    let e = blip2_model::preprocess::load_image("/dev/zero")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("/dev/zero") && e.contains("not a regular file"),
        "{e}"
    );
    let e = blip2_model::preprocess::load_image(images())
        .unwrap_err()
        .to_string();
    assert!(e.contains("a directory"), "{e}");
}

/// Issue 20 item 4: a `text_config.vocab_size` that contradicts the checkpoint's embedding
/// table, or a tokenizer with ids past it, is an error naming the config key, not a bare
/// shape mismatch or the embedding's internal "id out of range".
#[test]
fn vocab_sizes_that_contradict_the_checkpoint_or_tokenizer_name_the_config_key() {
    for (fixture, vocab, table) in [
        (
            "blip2-opt-tiny",
            768,
            "language_model.model.decoder.embed_tokens.weight",
        ),
        ("blip2-flan-t5-tiny", 448, "language_model.shared.weight"),
    ] {
        let c = Copy::of(fixture, "vocab");
        c.set(
            "config.json",
            "text_config.vocab_size",
            Value::from(vocab - 8),
        );
        let e = load_err(c.dir());
        assert!(
            e.contains(&format!(
                "config key text_config.vocab_size is {} but {table} has {vocab}",
                vocab - 8
            )),
            "{fixture}: {e}"
        );
    }

    // A tokenizer token whose id is past the table: "Ġsquare" renumbered 5000.
    let c = Copy::of("blip2-opt-tiny", "vocab-tok");
    let path = c.dir().join("tokenizer.json");
    let mut tok: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    tok["model"]["vocab"]["Ġsquare"] = Value::from(5000);
    std::fs::write(&path, tok.to_string()).unwrap();
    let m = Blip2::load(c.dir(), cpu()).unwrap();
    let e = m.prompt_ids(Some("a red square")).unwrap_err().to_string();
    assert!(
        e.contains("token id 5000 (\"Ġsquare\" in tokenizer.json) is past config.json text_config.vocab_size 768"),
        "{e}"
    );
    let img = blip2_model::preprocess::load_image(images().join("scene_rgb.png")).unwrap();
    let e = m
        .generate(&img, Some("a red square"), &Default::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("text_config.vocab_size"), "{e}");
}
