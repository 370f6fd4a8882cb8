//! Quantized weights (q8/q4) on the model side: quantize-at-load for every family, `blip2
//! quantize` directories that load bit-identically without re-quantizing, typed errors for
//! corrupt quantized files, and the weight sizes `info`/`bench` report.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use blip2::engine::{DType, Device};
use blip2::model::save::{QuantizeOptions, quantize_dir};
use blip2::model::{Blip2Config, Checkpoint, ModelError, WeightLoader, WeightProblem};
use blip2::{Blip2, Blip2Retrieval, GenerationConfig, LoadOptions};
use common::*;

const FAMILIES: [&str; 2] = ["blip2-opt-tiny", "blip2-flan-t5-tiny"];

fn opts(dtype: DType) -> LoadOptions {
    LoadOptions {
        device: Device::Cpu,
        dtype,
        progress: None,
        adapters: Vec::new(),
    }
}

/// A fresh empty directory under the system temp dir.
fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("blip2-quant-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn quantized_copy(fixture: &str, dtype: DType, name: &str) -> PathBuf {
    let out = tmp(name);
    quantize_dir(&model_dir(fixture), &out, &QuantizeOptions::new(dtype))
        .unwrap_or_else(|e| panic!("quantizing {fixture}: {e}"));
    out
}

fn is_encdec(m: &Blip2) -> bool {
    m.config
        .text_config
        .as_ref()
        .is_some_and(|t| t.is_encoder_decoder())
}

/// Prompt logits (T5: of the first decoder step) and 4 greedy tokens on a fixture image.
fn run(m: &Blip2) -> (Vec<f32>, Vec<u32>) {
    let img = image("rgb");
    let feats = m.image_features(&[&img]).unwrap();
    let dec = [vec![0u32]];
    let (logits, _) = m
        .prompt_logits(
            &feats,
            &[Some("a photo of")],
            is_encdec(m).then_some(&dec[..]),
        )
        .unwrap();
    let g = m
        .generate(
            &img,
            None,
            &GenerationConfig {
                max_new_tokens: 4,
                ..Default::default()
            },
        )
        .unwrap();
    (logits.to_vec_f32().unwrap(), g.token_ids)
}

fn itm(m: &Blip2Retrieval) -> (f32, f32) {
    let s = m.match_score(&image("rgb"), "a red square").unwrap();
    (s.itm, s.itc)
}

#[test]
fn quantize_at_load_runs_for_every_family() {
    for dtype in [DType::Q8, DType::Q4] {
        for fixture in FAMILIES {
            let m = Blip2::load(model_dir(fixture), opts(dtype)).unwrap();
            let s = m.weight_stats();
            assert_eq!(s.linear_dtype, dtype.to_string(), "{fixture} {dtype}");
            assert_eq!(s.quantized_at_load, s.linear_weights, "{fixture} {dtype}");
            assert_eq!(s.prequantized, 0);
            // Embeddings / lm_head stay f16, biases and norms f32; nothing else.
            let kinds: Vec<String> = s.bytes_by_dtype.keys().cloned().collect();
            let mut want = vec!["f16".to_string(), "f32".into(), dtype.to_string()];
            want.sort_unstable();
            assert_eq!(kinds, want, "{fixture} {dtype}");
            let (logits, tokens) = run(&m);
            assert!(logits.iter().all(|v| v.is_finite()), "{fixture} {dtype}");
            assert!(!tokens.is_empty(), "{fixture} {dtype}");
        }
        let r = Blip2Retrieval::load(model_dir("blip2-itm-tiny"), opts(dtype)).unwrap();
        assert_eq!(r.weight_stats().linear_dtype, dtype.to_string());
        let (p, c) = itm(&r);
        assert!(p.is_finite() && (0.0..=1.0).contains(&p) && c.is_finite());
    }
}

/// The tied lm_head (OPT) is the embedding tensor itself: one f16 copy, not two.
#[test]
fn tied_lm_head_is_loaded_once() {
    let f16 = Blip2::load(model_dir("blip2-opt-tiny"), opts(DType::F16)).unwrap();
    let q4 = Blip2::load(model_dir("blip2-opt-tiny"), opts(DType::Q4)).unwrap();
    assert_eq!(
        f16.weight_stats().tensors,
        q4.weight_stats().tensors,
        "same tensors whatever the dtype"
    );
}

/// At sizes that are whole blocks (the tiny preset: 32/64 wide), linear weights shrink to
/// 34/64 (q8) and 18/64 (q4) of f16. (The fixtures' 54/60/48-wide rows pad to 64.)
#[test]
fn quantized_linear_weights_are_smaller() {
    let cfg = || Blip2Config::preset("tiny").unwrap();
    let bytes = |d| {
        let m = Blip2::random(cfg(), &Device::Cpu, d, 3).unwrap();
        let s = m.weight_stats().clone();
        assert_eq!(s.linear_dtype, d.to_string());
        // Everything but the linear weights is the same size as with f16.
        (s.linear_bytes as f64, (s.bytes - s.linear_bytes) as f64)
    };
    let (f16, rest) = bytes(DType::F16);
    let (q8, rest8) = bytes(DType::Q8);
    let (q4, rest4) = bytes(DType::Q4);
    assert!(q8 <= 0.56 * f16, "q8 {q8} vs f16 {f16}");
    assert!(q4 <= 0.30 * f16, "q4 {q4} vs f16 {f16}");
    assert_eq!((rest, rest), (rest8, rest4));
    // And the random q4 model generates.
    let m = Blip2::random(cfg(), &Device::Cpu, DType::Q4, 3).unwrap();
    let g = m
        .generate(
            &blip2::image::DynamicImage::new_rgb8(30, 30),
            None,
            &GenerationConfig {
                max_new_tokens: 2,
                min_new_tokens: 2,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(g.token_ids.len(), 2);
}

#[test]
fn saved_checkpoints_load_bit_identically_without_requantizing() {
    for dtype in [DType::Q8, DType::Q4] {
        for fixture in FAMILIES {
            let at_load = Blip2::load(model_dir(fixture), opts(dtype)).unwrap();
            let want = run(&at_load);
            let dir = quantized_copy(fixture, dtype, &format!("{fixture}-{dtype}"));
            for copied in ["config.json", "tokenizer.json", "processor_config.json"] {
                assert!(dir.join(copied).is_file(), "{copied} in {}", dir.display());
            }
            // The saved format wins over --dtype for quantized tensors.
            for load_dtype in [dtype, DType::F32] {
                let m = Blip2::load(&dir, opts(load_dtype)).unwrap();
                let s = m.weight_stats();
                assert_eq!(s.linear_dtype, dtype.to_string());
                assert_eq!(s.prequantized, s.linear_weights, "{fixture} {dtype}");
                assert_eq!(s.quantized_at_load, 0, "{fixture} {dtype}: re-quantized");
                if load_dtype == dtype {
                    assert_eq!(*s, at_load.weight_stats().with_counts_of(s));
                    let got = run(&m);
                    assert_eq!(got.1, want.1, "{fixture} {dtype} tokens");
                    assert!(
                        got.0
                            .iter()
                            .zip(&want.0)
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{fixture} {dtype}: logits differ"
                    );
                }
            }
            std::fs::remove_dir_all(&dir).ok();
        }
        let at_load = Blip2Retrieval::load(model_dir("blip2-itm-tiny"), opts(dtype)).unwrap();
        let dir = quantized_copy("blip2-itm-tiny", dtype, &format!("itm-{dtype}"));
        let m = Blip2Retrieval::load(&dir, opts(dtype)).unwrap();
        assert_eq!(m.weight_stats().quantized_at_load, 0);
        let (a, b) = (itm(&at_load), itm(&m));
        assert_eq!(
            (a.0.to_bits(), a.1.to_bits()),
            (b.0.to_bits(), b.1.to_bits())
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}

/// `self` with the load counters of `other` (they differ by design).
trait WithCounts {
    fn with_counts_of(&self, other: &blip2::model::WeightStats) -> blip2::model::WeightStats;
}
impl WithCounts for blip2::model::WeightStats {
    fn with_counts_of(&self, other: &blip2::model::WeightStats) -> blip2::model::WeightStats {
        let mut s = self.clone();
        s.prequantized = other.prequantized;
        s.quantized_at_load = other.quantized_at_load;
        // A saved file's f16 matrices are used in place; quantized at load, converted.
        s.mapped = other.mapped;
        s
    }
}

/// The quants of a saved checkpoint are the mapped file's bytes: same address, no copy.
#[test]
fn saved_quants_are_used_in_place_from_the_map() {
    let dir = quantized_copy("blip2-opt-tiny", DType::Q4, "inplace");
    let ckpt = Checkpoint::open(&dir).unwrap();
    assert_eq!(ckpt.quant_dtype(), Some(DType::Q4));
    let vb = WeightLoader::new(&ckpt, &Device::Cpu, DType::F16);
    let name = "language_projection.weight";
    let t = vb.get_linear(name, &[48, 60]);
    vb.finish().unwrap();
    assert_eq!(t.dtype(), DType::Q4);
    let (_, qs, _) = t.quantized_parts().unwrap();
    let raw = ckpt.raw(name).unwrap();
    assert_eq!(qs.as_ptr(), raw.as_ptr(), "quants were copied");
    assert_eq!(qs.len(), raw.len());
    assert_eq!(
        qs.as_ptr() as usize % 16,
        0,
        "quants 16-byte aligned in the map"
    );
    drop(vb);
    drop(ckpt); // The tensor keeps the map alive.
    assert_eq!(t.to_vec_f32().unwrap().len(), 48 * 60);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn large_checkpoints_are_sharded_with_an_index() {
    let out = tmp("sharded");
    let mut o = QuantizeOptions::new(DType::Q8);
    o.max_shard_bytes = 20_000;
    let r = quantize_dir(&model_dir("blip2-opt-tiny"), &out, &o).unwrap();
    let shards = r
        .files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "safetensors"));
    assert!(shards.count() > 1);
    assert!(out.join("model.safetensors.index.json").is_file());
    assert!(!out.join("model.safetensors").exists());
    let want = run(&Blip2::load(model_dir("blip2-opt-tiny"), opts(DType::Q8)).unwrap());
    let m = Blip2::load(&out, opts(DType::Q8)).unwrap();
    assert_eq!(m.weight_stats().quantized_at_load, 0);
    assert_eq!(run(&m), want);
    // Refuses to write over a non-empty directory.
    assert!(quantize_dir(&model_dir("blip2-opt-tiny"), &out, &o).is_err());
    std::fs::remove_dir_all(&out).ok();
}

// ---- corrupt files ---------------------------------------------------------------------

struct Raw {
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

fn read_file(path: &Path) -> (HashMap<String, Raw>, HashMap<String, String>) {
    let bytes = std::fs::read(path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let tensors = st
        .tensors()
        .into_iter()
        .map(|(n, v)| {
            let r = Raw {
                dtype: v.dtype(),
                shape: v.shape().to_vec(),
                data: v.data().to_vec(),
            };
            (n, r)
        })
        .collect();
    (tensors, meta.metadata().clone().unwrap_or_default())
}

fn write_file(path: &Path, tensors: &HashMap<String, Raw>, meta: HashMap<String, String>) {
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, r)| {
            let v = safetensors::tensor::TensorView::new(r.dtype, r.shape.clone(), &r.data);
            (n.clone(), v.unwrap())
        })
        .collect();
    safetensors::serialize_to_file(views, Some(meta), path).unwrap();
}

/// A q-quantized copy of the OPT fixture with `edit` applied to its tensors and metadata;
/// the load's error.
fn corrupt(
    name: &str,
    dtype: DType,
    edit: impl FnOnce(&mut HashMap<String, Raw>, &mut HashMap<String, String>),
) -> ModelError {
    let dir = quantized_copy("blip2-opt-tiny", dtype, name);
    let file = dir.join("model.safetensors");
    let (mut t, mut meta) = read_file(&file);
    edit(&mut t, &mut meta);
    // A dtype changed in the files is changed in config.json too, so the tensors are checked.
    if let Some(d) = meta
        .get("blip2.quant_dtype")
        .filter(|d| **d != dtype.to_string())
    {
        let cfg = dir.join("config.json");
        let text = std::fs::read_to_string(&cfg).unwrap();
        let text = text.replace(&format!("\"{dtype}\""), &format!("\"{d}\""));
        std::fs::write(&cfg, text).unwrap();
    }
    write_file(&file, &t, meta);
    let err = Blip2::load(&dir, opts(dtype))
        .err()
        .expect("load must fail");
    std::fs::remove_dir_all(&dir).ok();
    err
}

const W: &str = "language_projection.weight";
const S: &str = "language_projection.weight.qscales";

/// The error lists a `Quantized` problem for `tensor` whose message contains `want`.
fn assert_quant_problem(err: &ModelError, tensor: &str, want: &str) {
    let ModelError::Weights(w) = err else {
        panic!("expected a weights error, got {err}");
    };
    assert!(
        w.problems
            .iter()
            .any(|p| matches!(p, WeightProblem::Quantized { name, msg, .. }
            if name == tensor && msg.contains(want))),
        "no quantized-tensor problem for {tensor} containing {want:?} in:\n{err}"
    );
    assert!(err.to_string().contains(tensor));
}

#[test]
fn corrupt_quantized_files_give_typed_errors_naming_the_tensor() {
    let e = corrupt("noscales", DType::Q4, |t, _| {
        t.remove(S);
    });
    assert_quant_problem(&e, W, "scales tensor");

    let e = corrupt("scalesdtype", DType::Q4, |t, _| {
        let s = t.get_mut(S).unwrap();
        s.dtype = safetensors::Dtype::F32;
        s.shape[1] /= 2;
    });
    assert_quant_problem(&e, W, "must be F16");

    let e = corrupt("scalesshape", DType::Q8, |t, _| {
        let s = t.get_mut(S).unwrap();
        s.shape = vec![s.shape[0] * s.shape[1]];
    });
    assert_quant_problem(&e, W, "must be F16");

    let e = corrupt("bytecount", DType::Q4, |t, _| {
        let q = t.get_mut(W).unwrap();
        q.shape[0] -= 1;
        q.data.truncate(q.shape[0] * q.shape[1]);
    });
    assert_quant_problem(&e, W, "need U8 shape");

    // A float tensor with a scales companion: extra scales.
    let e = corrupt("extrascales", DType::Q4, |t, _| {
        let s = Raw {
            dtype: safetensors::Dtype::F16,
            shape: vec![48, 1],
            data: vec![0; 96],
        };
        t.insert("language_projection.bias.qscales".into(), s);
    });
    assert_quant_problem(&e, "language_projection.bias", "has a scales tensor");

    // The files say q4 but hold q8-sized quants.
    let e = corrupt("q8asq4", DType::Q8, |_, m| {
        m.insert("blip2.quant_dtype".into(), "q4".into());
    });
    assert_quant_problem(&e, W, "q8-sized");

    // Quants without the metadata that says how to read them.
    let dir = quantized_copy("blip2-opt-tiny", DType::Q4, "nometa");
    std::fs::remove_file(dir.join("config.json")).ok();
    std::fs::copy(
        model_dir("blip2-opt-tiny").join("config.json"),
        dir.join("config.json"),
    )
    .unwrap();
    let file = dir.join("model.safetensors");
    let (t, _) = read_file(&file);
    write_file(&file, &t, HashMap::new());
    let e = Blip2::load(&dir, opts(DType::Q4)).err().unwrap();
    assert_quant_problem(&e, W, "declares no blip2.quant_dtype");

    // Truncated file: a checkpoint error naming the file.
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() - 100]).unwrap();
    match Blip2::load(&dir, opts(DType::Q4)).err().unwrap() {
        ModelError::Checkpoint { path, msg } => {
            assert_eq!(path, file);
            assert!(msg.contains("truncated"), "{msg}");
        }
        other => panic!("expected a checkpoint error, got {other}"),
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn config_quantization_must_match_the_files() {
    let dir = quantized_copy("blip2-opt-tiny", DType::Q8, "cfgmismatch");
    let cfg = dir.join("config.json");
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(text.contains("\"quant_method\": \"blip2\""), "{text}");
    std::fs::write(&cfg, text.replace("\"q8\"", "\"q4\"")).unwrap();
    match Blip2::load(&dir, opts(DType::Q4)).err().unwrap() {
        ModelError::Config { key, msg, .. } => {
            assert_eq!(key, "quantization_config.dtype");
            assert!(msg.contains("q4") && msg.contains("q8"), "{msg}");
        }
        other => panic!("expected a config error, got {other}"),
    }
    std::fs::write(&cfg, text.replace("\"blip2\"", "\"gptq\"")).unwrap();
    let e = Blip2::load(&dir, opts(DType::Q4)).err().unwrap();
    assert!(matches!(e, ModelError::Unsupported(_)), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

// ---- CLI -------------------------------------------------------------------------------

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[test]
fn cli_quantize_info_and_bench_report_dtype_and_bytes() {
    let src = model_dir("blip2-opt-tiny");
    let out = tmp("cli");
    let v = json(&blip2_ok(&[
        "quantize".as_ref(),
        "--model".as_ref(),
        src.as_os_str(),
        "--dtype".as_ref(),
        "q4".as_ref(),
        "--out".as_ref(),
        out.as_os_str(),
        "--json".as_ref(),
    ]));
    assert_eq!(v["weights"]["weight_dtype"], "q4");
    let info = |model: &Path, dtype: &str| {
        json(&blip2_ok(&[
            "info".as_ref(),
            "--model".as_ref(),
            model.as_os_str(),
            "--dtype".as_ref(),
            dtype.as_ref(),
            "--json".as_ref(),
        ]))
    };
    // q8 asked, q4 saved: the saved format wins (other matrices f16 either way).
    let saved = info(&out, "q8");
    let at_load = info(&src, "q4");
    for v in [&saved, &at_load] {
        let w = &v["model"]["weights"];
        assert_eq!(w["weight_dtype"], "q4", "{v}");
        let by = w["bytes_by_dtype"].as_object().unwrap();
        assert!(by["q4"].as_u64().unwrap() > 0 && by["f16"].as_u64().unwrap() > 0);
        let sum: u64 = by.values().map(|b| b.as_u64().unwrap()).sum();
        assert_eq!(sum, w["bytes"].as_u64().unwrap());
    }
    assert_eq!(
        saved["model"]["weights"]["prequantized"],
        at_load["model"]["weights"]["quantized_at_load"]
    );
    assert_eq!(
        saved["model"]["weights"]["bytes"],
        at_load["model"]["weights"]["bytes"]
    );
    let text = blip2_ok(&["info".as_ref(), "--model".as_ref(), out.as_os_str()]);
    assert!(text.contains("q4 weights: "), "{text}");
    // The saved directory captions exactly as quantize-at-load does.
    let img = fixtures().join("images/scene_rgb.png");
    let caption = |model: &Path, dtype: &str| {
        blip2_ok(&[
            "caption".as_ref(),
            img.as_os_str(),
            "--model".as_ref(),
            model.as_os_str(),
            "--dtype".as_ref(),
            dtype.as_ref(),
            "--device".as_ref(),
            "cpu".as_ref(),
            "--quiet".as_ref(),
            "--max-new-tokens".as_ref(),
            "5".as_ref(),
        ])
    };
    assert_eq!(caption(&out, "q4"), caption(&src, "q4"));
    std::fs::remove_dir_all(&out).ok();

    let b = json(&blip2_ok(&[
        "bench",
        "--preset",
        "tiny",
        "--device",
        "cpu",
        "--dtype",
        "q8",
        "--runs",
        "1",
        "--new-tokens",
        "2",
        "--json",
    ]));
    assert_eq!(b["weights"]["weight_dtype"], "q8");
    assert!(b["weights"]["bytes_by_dtype"]["q8"].as_u64().unwrap() > 0);
}

/// `--dtype bf16` packs every linear weight for the CPU's matrix engine (embeddings and LM
/// heads stay f16); the demo model still captions its scene exactly, and a GPU device refuses
/// the dtype with one typed error rather than a list of unreadable tensors.
#[test]
fn bf16_weights_on_the_cpu_and_a_typed_refusal_on_the_gpu() {
    for fixture in FAMILIES {
        let m = Blip2::load(model_dir(fixture), opts(DType::BF16)).unwrap();
        let kinds: Vec<String> = m.weight_stats().bytes_by_dtype.keys().cloned().collect();
        assert_eq!(kinds, ["bf16", "f16", "f32"], "{fixture}");
        let (logits, tokens) = run(&m);
        assert!(logits.iter().all(|v| v.is_finite()), "{fixture}");
        assert!(!tokens.is_empty(), "{fixture}");
    }
    let out = blip2_ok(&[
        "caption",
        "examples/circle_and_triangle.png",
        "--device",
        "cpu",
        "--dtype",
        "bf16",
        "-q",
    ]);
    assert_eq!(
        out.trim(),
        "a large green circle and a small blue triangle on a gray background"
    );
    for dev in devices().into_iter().filter(|d| !matches!(d, Device::Cpu)) {
        let opts = LoadOptions {
            device: dev,
            dtype: DType::BF16,
            progress: None,
            adapters: Vec::new(),
        };
        match Blip2::load(model_dir("blip2-opt-tiny"), opts) {
            Err(ModelError::Unsupported(msg)) => assert!(msg.contains("bf16"), "{msg}"),
            Err(e) => panic!("bf16 on a GPU: {e}"),
            Ok(_) => panic!("bf16 on a GPU loaded"),
        }
    }
}
