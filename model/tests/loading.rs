//! Checkpoint loading: synthetic safetensors files written here (f32 / f16 / bf16, single
//! and sharded), every kind of problem reported at once, corrupt files as errors, and the
//! fixture checkpoints.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use blip2_engine::{DType, Device};
use blip2_model::weights::{Checkpoint, WeightLoader};
use blip2_model::{ModelError, WeightProblem};
use half::{bf16, f16};
use safetensors::Dtype;
use safetensors::tensor::TensorView;

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("blip2-model-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct T {
    name: &'static str,
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

fn f32s(name: &'static str, shape: &[usize], v: &[f32]) -> T {
    T {
        name,
        dtype: Dtype::F32,
        shape: shape.to_vec(),
        data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    }
}
fn f16s(name: &'static str, shape: &[usize], v: &[f32]) -> T {
    T {
        name,
        dtype: Dtype::F16,
        shape: shape.to_vec(),
        data: v
            .iter()
            .flat_map(|x| f16::from_f32(*x).to_le_bytes())
            .collect(),
    }
}
fn bf16s(name: &'static str, shape: &[usize], v: &[f32]) -> T {
    T {
        name,
        dtype: Dtype::BF16,
        shape: shape.to_vec(),
        data: v
            .iter()
            .flat_map(|x| bf16::from_f32(*x).to_le_bytes())
            .collect(),
    }
}

fn write(path: &Path, tensors: &[T]) {
    let views: Vec<(&str, TensorView)> = tensors
        .iter()
        .map(|t| {
            (
                t.name,
                TensorView::new(t.dtype, t.shape.clone(), &t.data).unwrap(),
            )
        })
        .collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

// Values exactly representable in f16 and bf16, so every dtype must give them back exactly.
const W: [f32; 6] = [1.0, -2.5, 0.375, 1024.0, -0.0078125, 3.0];
const B: [f32; 3] = [0.5, -1.0, 2.0];

fn sample() -> Vec<T> {
    vec![
        f32s("enc.fc.weight", &[2, 3], &W),
        f16s("enc.fc.bias", &[3], &B),
        bf16s("enc.ln.weight", &[3], &B),
        bf16s("enc.proj.weight", &[3, 2], &W),
        f16s("head.weight", &[1, 6], &W),
    ]
}

fn values(t: &blip2_engine::Tensor) -> Vec<f32> {
    t.to_vec_f32().unwrap()
}

#[test]
fn loads_f32_f16_bf16_with_dtype_policy() {
    let dir = TempDir::new("dtypes");
    write(&dir.path().join("model.safetensors"), &sample());
    let ckpt = Checkpoint::open(dir.path()).unwrap();
    assert_eq!(ckpt.len(), 5);
    assert_eq!(ckpt.names()[0], "enc.fc.bias", "sorted names");
    for dtype in [DType::F32, DType::F16] {
        let vb = WeightLoader::new(&ckpt, &Device::Cpu, dtype);
        let enc = vb.pp("enc");
        let w = enc.get("fc.weight", &[2, 3]);
        assert_eq!(
            (w.shape(), w.dtype()),
            (&[2usize, 3][..], dtype),
            "matrices in the loader dtype"
        );
        assert_eq!(values(&w), W);
        let b = enc.pp("fc").get("bias", &[3]);
        assert_eq!(b.dtype(), DType::F32, "vectors always f32");
        assert_eq!(values(&b), B);
        assert_eq!(values(&enc.get("ln.weight", &[3])), B);
        assert_eq!(values(&enc.get("proj.weight", &[3, 2])), W);
        let h = vb.get_f32("head.weight", &[1, 6]);
        assert_eq!((h.dtype(), values(&h)), (DType::F32, W.to_vec()));
        vb.finish().unwrap();
        assert!(vb.unused().is_empty());
    }
}

#[test]
fn converts_inexact_values_like_the_dtype() {
    // 0.1 is not representable in f16: an f32-stored weight loaded as f16 must equal the
    // f16 rounding of the f32 value (exact comparison: conversion is round-to-nearest-even).
    let dir = TempDir::new("rounding");
    // (65504, f16's largest value, would be 65536 in bf16 and overflow as f16: that case is
    // a load problem, tested in `nonfinite_weights_and_f16_overflow_are_problems_...`.)
    let v = [0.1f32, 1.0 / 3.0, 60000.0, -1e-5];
    write(
        &dir.path().join("model.safetensors"),
        &[f32s("w", &[2, 2], &v), bf16s("b", &[2, 2], &v)],
    );
    let ckpt = Checkpoint::open(dir.path().join("model.safetensors")).unwrap();
    let vb = WeightLoader::new(&ckpt, &Device::Cpu, DType::F16);
    let want: Vec<f32> = v.iter().map(|x| f16::from_f32(*x).to_f32()).collect();
    assert_eq!(values(&vb.get("w", &[2, 2])), want);
    let want_bf: Vec<f32> = v
        .iter()
        .map(|x| f16::from_f32(bf16::from_f32(*x).to_f32()).to_f32())
        .collect();
    assert_eq!(values(&vb.get("b", &[2, 2])), want_bf);
}

#[test]
fn every_problem_is_reported_at_once() {
    let dir = TempDir::new("problems");
    let mut ts = sample();
    ts.push(T {
        name: "enc.steps",
        dtype: Dtype::I64,
        shape: vec![2],
        data: vec![0; 16],
    });
    write(&dir.path().join("model.safetensors"), &ts);
    let ckpt = Checkpoint::open(dir.path()).unwrap();
    let vb = WeightLoader::new(&ckpt, &Device::Cpu, DType::F32);
    let enc = vb.pp("enc");
    // Construction goes on: placeholders keep the rank, with no elements.
    let missing = enc.get("fc2.weight", &[4, 3]);
    assert_eq!(
        (missing.shape(), missing.elem_count()),
        (&[0usize, 3][..], 0)
    );
    let _ = enc.get("fc.weight", &[3, 2]); // transposed: mismatch
    let _ = enc.get("ln.weight", &[3]); // fine
    let _ = enc.get("steps", &[2]); // I64
    let _ = vb.get("a.missing.bias", &[7]);
    let _ = vb.get("a.missing.bias", &[7]); // asked twice, reported once
    let _ = vb.get_linear_with_fallback("lm_head.weight", "embed.weight", &[10, 4]);

    let problems = vb.problems();
    assert_eq!(problems.len(), 5, "{problems:#?}");
    let names: Vec<&str> = problems.iter().map(|p| p.name()).collect();
    assert_eq!(
        names,
        [
            "a.missing.bias",
            "enc.fc.weight",
            "enc.fc2.weight",
            "enc.steps",
            "lm_head.weight"
        ]
    );
    assert!(
        matches!(&problems[1], WeightProblem::ShapeMismatch { expected, found, .. }
        if expected == &[3, 2] && found == &[2, 3])
    );

    let err = vb.finish().unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ModelError::Weights(_)));
    for needle in [
        "5 problems",
        "missing: a.missing.bias (expected shape [7])",
        "shape mismatch: enc.fc.weight: expected [3, 2], found [2, 3]",
        "missing: enc.fc2.weight (expected shape [4, 3])",
        "unsupported dtype: enc.steps is I64",
        "missing: lm_head.weight (expected shape [10, 4]; fallback embed.weight missing too)",
    ] {
        assert!(msg.contains(needle), "'{needle}' not in:\n{msg}");
    }
    assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
    // Never-requested tensors are listed for debugging.
    assert_eq!(
        vb.unused(),
        [
            "enc.fc.bias",
            "enc.fc.weight",
            "enc.proj.weight",
            "enc.steps",
            "head.weight"
        ]
    );
}

#[test]
fn nonfinite_weights_and_f16_overflow_are_problems_naming_the_tensor() {
    // NaN / inf in any stored dtype is refused under every load dtype; a finite value past
    // f16's range (≥ 65520 rounds to inf) only when the load stores the tensor as f16
    // (matrices; vectors always load as f32); 65504, the largest f16, and 65519, which
    // rounds to it, are fine.
    let dir = TempDir::new("nonfinite");
    let ts = vec![
        f32s("a.nan", &[1, 3], &[1.0, f32::NAN, 2.0]),
        f16s("a.inf", &[1, 2], &[f32::INFINITY, 0.0]),
        bf16s("a.neginf", &[1, 2], &[0.0, f32::NEG_INFINITY]),
        f32s("a.big", &[2, 2], &[1.0, -1.0e5, 7.0e4, 65520.0]),
        bf16s("a.bigbf16", &[1, 2], &[1.0, 65536.0]),
        f32s("a.edge", &[1, 2], &[65504.0, -65519.0]),
    ];
    write(&dir.path().join("model.safetensors"), &ts);
    let ckpt = Checkpoint::open(dir.path()).unwrap();
    let load = |dtype: DType| {
        let vb = WeightLoader::new(&ckpt, &Device::Cpu, dtype);
        for t in &ts {
            let _ = vb.get(t.name, &t.shape);
        }
        vb
    };
    let vb = load(DType::F16);
    let problems = vb.problems();
    let names: Vec<&str> = problems.iter().map(|p| p.name()).collect();
    assert_eq!(names, ["a.big", "a.bigbf16", "a.inf", "a.nan", "a.neginf"]);
    assert!(
        matches!(&problems[0], WeightProblem::F16Overflow { count: 3, max_abs, .. } if max_abs == "1e5")
    );
    assert!(matches!(
        &problems[3],
        WeightProblem::NonFinite {
            count: 1,
            first: 1,
            ..
        }
    ));
    let msg = vb.finish().unwrap_err().to_string();
    for needle in [
        "non-finite values: a.nan in ",
        "holds 1 NaN or infinite value (the first at element 1)",
        "f16 overflow: a.big in ",
        "has 3 values beyond f16's range (largest magnitude 1e5 > 65504); load it with --dtype f32 or bf16",
    ] {
        assert!(msg.contains(needle), "'{needle}' not in:\n{msg}");
    }
    assert_eq!(
        values(&load(DType::F16).get("a.edge", &[1, 2])),
        [65504.0, -65504.0]
    );
    // As f32, large values are fine; non-finite ones are not.
    let names32: Vec<String> = load(DType::F32)
        .problems()
        .iter()
        .map(|p| p.name().to_string())
        .collect();
    assert_eq!(names32, ["a.inf", "a.nan", "a.neginf"]);
}

#[test]
fn problem_lists_are_capped() {
    // A config asking for far more layers than the file has must not build an unbounded
    // error: MAX_WEIGHT_PROBLEMS are kept, the rest counted, SHOWN_WEIGHT_PROBLEMS printed.
    use blip2_model::error::{MAX_WEIGHT_PROBLEMS, SHOWN_WEIGHT_PROBLEMS};
    let dir = TempDir::new("capped");
    write(
        &dir.path().join("model.safetensors"),
        &[f32s("a.weight", &[2, 3], &W)],
    );
    let ckpt = Checkpoint::open(dir.path()).unwrap();
    let vb = WeightLoader::new(&ckpt, &Device::Cpu, DType::F32);
    let asked = MAX_WEIGHT_PROBLEMS + 500;
    for i in 0..asked {
        let _ = vb.get(&format!("layers.{i}.bias"), &[4]);
    }
    let _ = vb.get("layers.0.bias", &[4]); // a repeat within the kept ones counts once
    let Err(ModelError::Weights(w)) = vb.finish() else {
        panic!("expected a weights error");
    };
    assert_eq!(w.problems.len(), MAX_WEIGHT_PROBLEMS);
    assert_eq!(w.total(), asked);
    let msg = w.to_string();
    assert!(msg.contains(&format!("{asked} problems")), "{msg}");
    assert!(
        msg.ends_with(&format!("... and {} more", asked - SHOWN_WEIGHT_PROBLEMS)),
        "{msg}"
    );
    assert_eq!(msg.lines().count(), 1 + SHOWN_WEIGHT_PROBLEMS + 1);
}

#[test]
fn fallback_and_optional_weights() {
    let dir = TempDir::new("fallback");
    write(
        &dir.path().join("model.safetensors"),
        &[f32s("lm.model.embed.weight", &[2, 3], &W)],
    );
    let ckpt = Checkpoint::open(dir.path()).unwrap();
    let vb = WeightLoader::new(&ckpt, &Device::Cpu, DType::F32).pp("lm");
    // Tied lm_head: absent, so the embedding is used (and shared, not loaded twice).
    let head = vb.get_linear_with_fallback("lm_head.weight", "model.embed.weight", &[2, 3]);
    assert_eq!(values(&head), W);
    let emb = vb.get_embedding("model.embed.weight", &[2, 3]);
    assert_eq!(values(&emb), W);
    assert_eq!(
        vb.bytes_loaded(),
        24,
        "the second request is served from the cache"
    );
    assert!(vb.get_optional("itm_head.weight", &[2, 3]).is_none());
    assert!(vb.contains("model.embed.weight") && !vb.contains("lm_head.weight"));
    assert_eq!(vb.full_name("x"), "lm.x");
    assert_eq!(vb.root().full_name("x"), "x");
    vb.finish().unwrap();
}

#[test]
fn progress_reports_bytes() {
    let dir = TempDir::new("progress");
    write(&dir.path().join("model.safetensors"), &sample());
    let ckpt = Checkpoint::open(dir.path()).unwrap();
    assert_eq!(ckpt.total_bytes(), 24 + 6 + 6 + 12 + 12);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let vb = WeightLoader::new(&ckpt, &Device::Cpu, DType::F32)
        .with_progress(move |d, t| s2.lock().unwrap().push((d, t)));
    let _ = vb.get("enc.fc.weight", &[2, 3]);
    let _ = vb.pp("enc").get("fc.bias", &[3]);
    assert_eq!(*seen.lock().unwrap(), [(24, 60), (30, 60)]);
}

#[test]
fn sharded_checkpoint_with_index() {
    let dir = TempDir::new("sharded");
    let ts = sample();
    let (a, b) = ts.split_at(2);
    write(&dir.path().join("model-00001-of-00002.safetensors"), a);
    write(&dir.path().join("model-00002-of-00002.safetensors"), b);
    let map: serde_json::Map<String, serde_json::Value> = ts
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let f = if i < 2 {
                "model-00001-of-00002.safetensors"
            } else {
                "model-00002-of-00002.safetensors"
            };
            (t.name.to_string(), f.into())
        })
        .collect();
    let index = serde_json::json!({"metadata": {"total_size": 60}, "weight_map": map});
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    let ckpt = Checkpoint::open(dir.path()).unwrap();
    assert_eq!((ckpt.len(), ckpt.files().len()), (5, 2));
    let vb = WeightLoader::new(&ckpt, &Device::Cpu, DType::F32);
    assert_eq!(values(&vb.get("enc.fc.weight", &[2, 3])), W);
    assert_eq!(values(&vb.get("head.weight", &[1, 6])), W);
    vb.finish().unwrap();

    // The index names a shard that is not there.
    std::fs::remove_file(dir.path().join("model-00002-of-00002.safetensors")).unwrap();
    let err = Checkpoint::open(dir.path()).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("model.safetensors.index.json")
            && msg.contains("model-00002-of-00002.safetensors (3 tensors)"),
        "{msg}"
    );

    // The index names a tensor its shard does not hold.
    write(
        &dir.path().join("model-00002-of-00002.safetensors"),
        &b[..2],
    );
    let err = Checkpoint::open(dir.path()).unwrap_err();
    assert!(err.to_string().contains("head.weight"), "{err}");

    // Malformed index.
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        r#"{"metadata": {}}"#,
    )
    .unwrap();
    let err = Checkpoint::open(dir.path()).unwrap_err();
    assert!(err.to_string().contains("weight_map"), "{err}");
}

#[test]
fn corrupt_files_are_errors_naming_the_file() {
    let dir = TempDir::new("corrupt");
    let path = dir.path().join("model.safetensors");
    write(&path, &sample());
    let full = std::fs::read(&path).unwrap();

    // Truncated in the tensor data.
    std::fs::write(&path, &full[..full.len() - 5]).unwrap();
    let err = Checkpoint::open(dir.path()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ModelError::Checkpoint { .. }), "{msg}");
    assert!(
        msg.contains("model.safetensors") && msg.contains("truncated"),
        "{msg}"
    );
    assert!(
        msg.contains(&format!(
            "the header's tensors end at byte {} but the file has {} bytes (5 bytes missing: truncated)",
            full.len(),
            full.len() - 5
        )),
        "{msg}"
    );

    // Bytes after the last tensor.
    let mut long = full.clone();
    long.extend_from_slice(&[0; 3]);
    std::fs::write(&path, &long).unwrap();
    let err = Checkpoint::open(dir.path()).unwrap_err();
    assert!(
        err.to_string()
            .contains("(3 unexpected bytes after the last tensor)"),
        "{err}"
    );

    // Truncated in the header, and shorter than the header length itself.
    for cut in [40, 5, 0] {
        std::fs::write(&path, &full[..cut]).unwrap();
        let err = Checkpoint::open(dir.path()).unwrap_err();
        assert!(err.to_string().contains("model.safetensors"), "{err}");
        assert!(err.to_string().contains("truncated"), "cut {cut}: {err}");
    }
    // The header length against what follows it: two different numbers.
    let n = u64::from_le_bytes(full[..8].try_into().unwrap());
    std::fs::write(&path, &full[..40]).unwrap();
    let err = Checkpoint::open(dir.path()).unwrap_err();
    assert!(
        err.to_string().contains(&format!(
            "its first 8 bytes declare a JSON header of {n} bytes, but only 32 bytes follow them"
        )),
        "{err}"
    );

    // Garbage header.
    let mut bad = full.clone();
    bad[8] = b'!'; // the opening brace of the JSON header
    std::fs::write(&path, &bad).unwrap();
    let err = Checkpoint::open(dir.path()).unwrap_err();
    assert!(err.to_string().contains("header"), "{err}");

    // Nothing to open.
    std::fs::remove_file(&path).unwrap();
    let err = Checkpoint::open(dir.path()).unwrap_err();
    assert!(
        err.to_string().contains("model.safetensors.index.json"),
        "{err}"
    );
    std::fs::write(dir.path().join("pytorch_model.bin"), b"x").unwrap();
    let err = Checkpoint::open(dir.path()).unwrap_err();
    assert!(err.to_string().contains("not supported"), "{err}");
    let err = Checkpoint::open(dir.path().join("nope")).unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");
}

// ---- fixture checkpoints: the same weights stored as f32, f16, bf16 and in 4 shards ----

fn models() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models")
}

#[test]
fn fixture_copies_agree() {
    let f32c = Checkpoint::open(models().join("blip2-opt-tiny")).unwrap();
    let names = f32c.names();
    assert!(names.contains(&"query_tokens"), "{names:?}");
    for (variant, dtype, rel) in [
        // Tolerances: the relative rounding error of the stored format (half an ulp):
        // f16 2^-11, bf16 2^-8; values below the f16 normal range get an absolute 2^-24.
        ("blip2-opt-tiny-sharded", Dtype::F32, 0.0f32),
        ("blip2-opt-tiny-f16", Dtype::F16, 1.0 / 2048.0),
        ("blip2-opt-tiny-bf16", Dtype::BF16, 1.0 / 256.0),
    ] {
        let other = Checkpoint::open(models().join(variant)).unwrap();
        assert_eq!(other.names(), names, "{variant}");
        let a = WeightLoader::new(&f32c, &Device::Cpu, DType::F32);
        let b = WeightLoader::new(&other, &Device::Cpu, DType::F32);
        for name in &names {
            let meta = other.meta(name).unwrap();
            let shape = meta.shape.to_vec();
            if meta.dtype != dtype {
                // HF keeps some tensors in f32 in low-precision saves; compare those exactly.
                assert_eq!(meta.dtype, Dtype::F32, "{variant}: {name}");
            }
            let tol = if meta.dtype == Dtype::F32 { 0.0 } else { rel };
            let (x, y) = (
                values(&a.get_f32(name, &shape)),
                values(&b.get_f32(name, &shape)),
            );
            for (p, q) in x.iter().zip(&y) {
                assert!(
                    (p - q).abs() <= tol * p.abs() + if tol > 0.0 { 6e-8 } else { 0.0 },
                    "{variant}: {name}: {p} vs {q}"
                );
            }
        }
        a.finish().unwrap();
        b.finish().unwrap();
    }
}

/// A safetensors file from a header written by hand and `data_len` zero bytes.
fn raw_safetensors(path: &Path, header: &str, data_len: usize) {
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(header.as_bytes());
    b.resize(b.len() + data_len, 0);
    std::fs::write(path, b).unwrap();
}

#[test]
fn header_offset_and_size_errors_name_the_tensor() {
    let dir = TempDir::new("offsets");
    let path = dir.path().join("model.safetensors");
    let cases = [
        // A size that disagrees with dtype and shape.
        (
            r#"{"a.weight":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b.weight":{"dtype":"F32","shape":[2,2],"data_offsets":[8,32]}}"#,
            32,
            "tensor b.weight: F32 of shape [2, 2] needs 16 bytes, but data_offsets [8, 32] hold 24",
        ),
        // A gap between two tensors.
        (
            r#"{"a.weight":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b.weight":{"dtype":"F32","shape":[1],"data_offsets":[12,16]}}"#,
            16,
            "tensor b.weight: data_offsets [12, 16] start at 12, but the tensor before it ends at 8 (leaving a gap",
        ),
        // Overlapping tensors.
        (
            r#"{"a.weight":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b.weight":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
            8,
            "tensor b.weight: data_offsets [4, 8] start at 4, but the tensor before it ends at 8 (overlapping it",
        ),
        // Offsets backwards.
        (
            r#"{"c.bias":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"d.bias":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}}"#,
            4,
            "tensor d.bias",
        ),
    ];
    for (header, data_len, want) in cases {
        raw_safetensors(&path, header, data_len);
        let err = Checkpoint::open(dir.path()).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, ModelError::Checkpoint { .. }), "{msg}");
        assert!(
            msg.contains("model.safetensors") && msg.contains(want),
            "{msg}\nwanted: {want}"
        );
    }
}

#[cfg(unix)]
#[test]
fn model_entries_that_are_not_files_are_named() {
    let dir = TempDir::new("entries");
    let entry = dir.path().join("model.safetensors");
    std::fs::create_dir(&entry).unwrap();
    let err = Checkpoint::open(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("model.safetensors is a directory, not a regular file"),
        "{err}"
    );
    std::fs::remove_dir(&entry).unwrap();

    // A symlink to itself: a loop.
    std::os::unix::fs::symlink("model.safetensors", &entry).unwrap();
    let err = Checkpoint::open(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("model.safetensors is a symbolic link that cannot be followed"),
        "{err}"
    );
    std::fs::remove_file(&entry).unwrap();

    let index = dir.path().join("model.safetensors.index.json");
    let status = std::process::Command::new("mkfifo")
        .arg(&index)
        .status()
        .unwrap();
    assert!(status.success());
    let err = Checkpoint::open(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("model.safetensors.index.json is a FIFO, not a regular file"),
        "{err}"
    );
}

#[test]
fn index_shard_names_outside_the_model_directory_are_refused() {
    let root = TempDir::new("index-escape");
    let dir = root.path().join("model");
    std::fs::create_dir(&dir).unwrap();
    // A valid shard outside the model directory, which the index must not reach.
    let outside = root.path().join("outside.safetensors");
    write(&outside, &sample());
    for name in [
        "../outside.safetensors".to_string(),
        outside.display().to_string(),
        "./../model/../outside.safetensors".to_string(),
    ] {
        let index = serde_json::json!({"weight_map": {"enc.fc.weight": name}});
        std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
        let err = Checkpoint::open(&dir).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("weight_map.enc.fc.weight")
                && msg.contains(&format!("shard file '{name}' is not a plain file name")),
            "{msg}"
        );
    }
}

/// q/k/v stacked at load (on CPUs whose weights are packed copies) leave the loader at once,
/// so the parts are not resident next to the stacks until the load ends, yet the stats
/// still count them as a separate load of the same tensors does.
#[test]
fn stacked_parts_leave_the_loader_but_stay_in_its_stats() {
    use blip2_model::nn::{Linear, StackedLinear};
    let dir = TempDir::new("stacked");
    let vals = |n: usize, s: f32| {
        (0..n)
            .map(|i| (i as f32 * 0.37 + s).sin())
            .collect::<Vec<_>>()
    };
    let (qw, kw, vw) = (vals(32 * 5, 0.1), vals(32 * 5, 0.2), vals(3 * 5, 0.3));
    let (qb, kb, vb_) = (vals(32, 0.4), vals(32, 0.5), vals(3, 0.6));
    write(
        &dir.path().join("model.safetensors"),
        &[
            f32s("a.q.weight", &[32, 5], &qw),
            f32s("a.k.weight", &[32, 5], &kw),
            f32s("a.v.weight", &[3, 5], &vw),
            f32s("a.q.bias", &[32], &qb),
            f32s("a.k.bias", &[32], &kb),
            f32s("a.v.bias", &[3], &vb_),
        ],
    );
    let ckpt = Checkpoint::open(dir.path()).unwrap();
    let names = ["a.q", "a.k", "a.v"];
    let outs = [32, 32, 3];
    let vb = WeightLoader::new(&ckpt, &Device::Cpu, DType::F32);
    let stacked = StackedLinear::load(&names.map(|n| vb.pp(n)), 5, &outs, true, false).unwrap();
    let apart = WeightLoader::new(&ckpt, &Device::Cpu, DType::F32);
    let parts: Vec<Linear> = names
        .iter()
        .zip(outs)
        .map(|(n, o)| Linear::load(&apart.pp(n), 5, o, true))
        .collect();
    assert_eq!(vb.stats(), apart.stats());
    assert_eq!(vb.stats().tensors, 6);
    match &stacked {
        StackedLinear::One(l) => {
            assert!(blip2_engine::panels_preferred() && l.w.is_panels());
            assert_eq!(vb.released(), 6);
            assert!(vb.loaded_tensors().is_empty());
            assert_eq!(values(&l.w), [qw, kw, vw].concat());
            assert_eq!(values(l.b.as_ref().unwrap()), [qb, kb, vb_].concat());
        }
        StackedLinear::Parts { parts: p, .. } => {
            assert!(!blip2_engine::panels_preferred());
            assert_eq!((vb.released(), p.len()), (0, parts.len()));
        }
    }
}
