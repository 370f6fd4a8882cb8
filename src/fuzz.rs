//! What each fuzz target (`fuzz/fuzz_targets/*.rs`) does with its input, here so that the
//! nightly libFuzzer targets and the stable replay of the committed corpus
//! (`tests/fuzz_corpus.rs`) run the same code. Every function takes arbitrary bytes and
//! must return: errors are the expected outcome of a bad input, a panic, abort, hang or
//! allocation past the fuzzer's cap is a bug. Targets and caps: `fuzz/README.md`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::model::config::ImageProcessorConfig;
use crate::model::{Blip2Config, Checkpoint, ProcessorConfig, WeightLoader};
use crate::serve_api::api::{ChatRequest, CompletionRequest, EmbeddingRequest, MatchRequest};
use crate::serve_api::limits::Limits;
use crate::{Blip2, DType, Device, GenerationConfig, LoadOptions, Turn};

/// A target's entry function.
pub type Entry = fn(&[u8]);

/// Every target, by the name of its `fuzz/fuzz_targets/NAME.rs` and corpus folder.
pub const TARGETS: &[(&str, Entry)] = &[
    ("safetensors", safetensors),
    ("shard_index", shard_index),
    ("configs", configs),
    ("prompt", prompt),
    ("image", image),
    ("jpeg", jpeg),
    ("serve_request", serve_request),
];

/// Tensors of at most this many elements are loaded (converted, checked) by
/// [`safetensors`]; the header of a larger one is still validated.
const MAX_LOADED_ELEMENTS: usize = 1 << 20;

/// A safetensors file held in memory: header validation, every tensor's metadata and
/// bytes, and a load of each (small) tensor at its declared shape in f32 and f16 (dtype
/// conversion, the non-finite and f16-overflow checks, quantized companions).
pub fn safetensors(data: &[u8]) {
    let Ok(ckpt) = Checkpoint::from_bytes("<fuzz>/model.safetensors", data.to_vec()) else {
        return;
    };
    let _ = (ckpt.dtype_counts(), ckpt.quant_dtype(), ckpt.total_bytes());
    for dtype in [DType::F32, DType::F16] {
        let vb = WeightLoader::new(&ckpt, &Device::Cpu, dtype);
        for name in ckpt.names() {
            let _ = ckpt.raw(name);
            let Some(meta) = ckpt.meta(name) else {
                continue;
            };
            let shape = meta.shape.to_vec();
            let n = shape
                .iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d))
                .unwrap_or(usize::MAX);
            if n <= MAX_LOADED_ELEMENTS && !name.ends_with(crate::model::weights::QSCALES_SUFFIX) {
                if shape.len() == 2 {
                    let _ = vb.get_linear(name, &shape);
                } else {
                    let _ = vb.get(name, &shape);
                }
            }
        }
        let _ = vb.finish();
    }
}

/// A per-process scratch directory under the system temp dir.
fn scratch(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("blip2-fuzz-{what}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("creating the fuzz scratch directory");
    dir
}

/// A minimal safetensors file: one f32 vector `name` of `values`.
fn tiny_safetensors(name: &str, values: &[f32]) -> Vec<u8> {
    let n = values.len() * 4;
    let header = format!(
        r#"{{"{name}":{{"dtype":"F32","shape":[{}],"data_offsets":[0,{n}]}}}}"#,
        values.len()
    );
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// `model.safetensors.index.json` of a directory holding two shards (`a.safetensors`
/// with tensor `a`, `b.safetensors` with `b`), one level below a directory holding
/// `outside.safetensors` (which an index must not reach with `../`).
pub fn shard_index(data: &[u8]) {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let root = scratch("index");
        let dir = root.join("model");
        std::fs::create_dir_all(&dir).expect("creating the fuzz model directory");
        let write = |p: PathBuf, b: Vec<u8>| std::fs::write(p, b).expect("writing a fuzz shard");
        write(
            dir.join("a.safetensors"),
            tiny_safetensors("a", &[1.0, 2.0]),
        );
        write(dir.join("b.safetensors"), tiny_safetensors("b", &[3.0]));
        write(
            root.join("outside.safetensors"),
            tiny_safetensors("o", &[4.0]),
        );
        dir
    });
    let index = dir.join(crate::model::weights::INDEX_FILE);
    std::fs::write(&index, data).expect("writing the fuzz index");
    if let Ok(ckpt) = Checkpoint::open(dir) {
        for f in ckpt.files() {
            assert!(
                f.starts_with(dir),
                "an index reached {} outside the model directory",
                f.display()
            );
        }
        for n in ckpt.names() {
            let _ = ckpt.raw(n);
        }
    }
}

/// The demo model's files in a scratch directory, config files aside.
fn demo_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = scratch("configs");
        let demo = &crate::demo::DEMO_MODEL;
        let write = |name: &str, b: &[u8]| {
            std::fs::write(dir.join(name), b).expect("writing the fuzz demo directory")
        };
        write("model.safetensors", demo.weights);
        write("tokenizer.json", demo.tokenizer_json);
        if let Some(t) = demo.tokenizer_config_json {
            write("tokenizer_config.json", t.as_bytes());
        }
        dir
    })
}

/// `config.json`, `processor_config.json` and `generation_config.json`, given as the
/// input's first three NUL-separated parts (an absent or empty part: the file is absent),
/// each parsed alone, then a whole load of the demo weights with them; a model that loads
/// captions a small image with up to 3 new tokens.
pub fn configs(data: &[u8]) {
    let mut parts = data.splitn(3, |&b| b == 0);
    let config = parts.next().unwrap_or_default();
    let processor = parts.next().unwrap_or_default();
    let generation = parts.next().unwrap_or_default();
    let dir = demo_dir();
    let text = String::from_utf8_lossy(config);
    let parsed = Blip2Config::from_json_str(&text, dir.join("config.json"));
    let ptext = String::from_utf8_lossy(processor);
    let _ = ProcessorConfig::from_processor_json(&ptext, dir.join("processor_config.json"));
    let _ = ImageProcessorConfig::from_preprocessor_json(&ptext, "preprocessor_config.json");
    for (name, bytes) in [
        ("config.json", config),
        ("processor_config.json", processor),
        ("generation_config.json", generation),
    ] {
        let path = dir.join(name);
        if bytes.is_empty() {
            let _ = std::fs::remove_file(&path);
        } else {
            std::fs::write(&path, bytes).expect("writing a fuzz config file");
        }
    }
    let _ = crate::model::config::generation_file::ignored_settings(
        dir,
        parsed.as_ref().ok().and_then(|c| c.text_config.as_ref()),
    );
    let Ok(model) = Blip2::load(dir, LoadOptions::default()) else {
        return;
    };
    let img = crate::image::DynamicImage::new_rgb8(16, 16);
    let cfg = GenerationConfig {
        max_new_tokens: 3,
        ..Default::default()
    };
    let _ = model.generate(&img, None, &cfg);
    let _ = model.generate(&img, Some("Question: how many shapes? Answer:"), &cfg);
}

/// The demo model, loaded once per process.
fn demo_model() -> &'static Blip2 {
    static MODEL: OnceLock<Blip2> = OnceLock::new();
    MODEL.get_or_init(|| crate::demo::load_demo(LoadOptions::default()).expect("the demo model"))
}

/// Prompt text (lossy UTF-8) through the prompt builders and the demo model's tokenizer:
/// the ids of the raw prompt, the VQA prompt and a chat prompt with one earlier turn,
/// and their decoding.
pub fn prompt(data: &[u8]) {
    let model = demo_model();
    let text = String::from_utf8_lossy(data);
    let (question, answer) = text.split_once('\n').unwrap_or((&text, ""));
    let history = [Turn {
        question: question.to_string(),
        answer: answer.to_string(),
    }];
    for p in [
        text.to_string(),
        crate::vqa_prompt(&text),
        crate::model::chat::chat_prompt(&history, answer),
    ] {
        if let Ok(ids) = model.prompt_ids(Some(&p)) {
            let _ = model.fits(ids.len(), 20);
            let _ = model.tokenizer.decode(&ids, true);
            let _ = model.tokenizer.decode(&ids, false);
        }
    }
}

/// Image bytes through `load_image_from_bytes` (any format, the pixel limit) and the
/// processor (resize, rescale, normalize) at the demo model's 64x64.
pub fn image(data: &[u8]) {
    let Ok(img) = crate::load_image_from_bytes(data, "<fuzz>") else {
        return;
    };
    let cfg = ImageProcessorConfig {
        size: (64, 64),
        ..Default::default()
    };
    let _ = crate::model::pixel_values(&[&img], &cfg, &Device::Cpu);
}

/// JPEG bytes through the blip2-jpeg decoder alone, with and without the EXIF rotation.
pub fn jpeg(data: &[u8]) {
    for apply_exif_orientation in [false, true] {
        let opts = blip2_jpeg::DecodeOptions {
            apply_exif_orientation,
            max_pixels: crate::model::limits::MAX_IMAGE_PIXELS,
        };
        if let Ok(img) = blip2_jpeg::decode(data, &opts) {
            let px = img.width as usize * img.height as usize * img.channels as usize;
            assert_eq!(
                img.pixels.len(),
                px,
                "decoded size disagrees with the header"
            );
        }
    }
}

/// A server request body: the first byte picks the endpoint (chat, completions,
/// embeddings, match, or the rest taken as an `image_url` string), the rest is the JSON
/// body, parsed and converted as the server does (default limits).
pub fn serve_request(data: &[u8]) {
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    let limits = Limits::default();
    match kind % 5 {
        0 => {
            if let Ok(r) = serde_json::from_slice::<ChatRequest>(body) {
                let _ = r.into_gen(&limits);
            }
        }
        1 => {
            if let Ok(r) = serde_json::from_slice::<CompletionRequest>(body) {
                let _ = r.into_gen(&limits);
            }
        }
        2 => {
            if let Ok(r) = serde_json::from_slice::<EmbeddingRequest>(body) {
                let _ = r.inputs();
            }
        }
        3 => {
            if let Ok(r) = serde_json::from_slice::<MatchRequest>(body) {
                let _ = crate::serve_api::api::image_from_url(&r.image);
            }
        }
        _ => {
            let _ = crate::serve_api::api::image_from_url(&String::from_utf8_lossy(body));
        }
    }
}
