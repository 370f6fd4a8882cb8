//! Fixture access for the model parity tests: reference tensors written by
//! `tools/fixtures/make_fixtures.py` with transformers, and comparison metrics.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[allow(unused_imports)] // not every test binary uses it
pub use blip2::engine::testing::devices;

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn model_dir(name: &str) -> PathBuf {
    fixtures().join("models").join(name)
}

/// Image keys of the fixtures and their files.
pub const IMAGES: [(&str, &str); 4] = [
    ("rgb", "scene_rgb.png"),
    ("rgba", "scene_rgba.png"),
    ("jpeg", "photo.jpg"),
    ("gray", "small_gray.png"),
];

pub fn image(key: &str) -> blip2::image::DynamicImage {
    let file = IMAGES
        .iter()
        .find(|(k, _)| *k == key)
        .expect("known image key")
        .1;
    blip2::load_image(fixtures().join("images").join(file)).expect("fixture image loads")
}

/// One reference tensor, widened to f64 (floats) or kept as integers (ids, masks).
pub struct RefTensor {
    pub shape: Vec<usize>,
    pub f: Vec<f64>,
    pub i: Vec<i64>,
}

impl RefTensor {
    pub fn f32(&self) -> Vec<f32> {
        self.f.iter().map(|&v| v as f32).collect()
    }
    pub fn ids(&self) -> Vec<u32> {
        self.i.iter().map(|&v| v as u32).collect()
    }
    /// Rows of a 2-d integer tensor.
    pub fn id_rows(&self) -> Vec<Vec<u32>> {
        let w = *self.shape.last().unwrap_or(&0);
        self.ids().chunks(w.max(1)).map(<[u32]>::to_vec).collect()
    }
}

/// Every tensor of `tests/fixtures/reference/{file}`.
pub fn reference(file: &str) -> HashMap<String, RefTensor> {
    let bytes = std::fs::read(fixtures().join("reference").join(file)).expect("reference file");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("reference parses");
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        let data = view.data();
        let (mut f, mut i) = (Vec::new(), Vec::new());
        match view.dtype() {
            safetensors::Dtype::F32 => {
                f = data
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
                    .collect()
            }
            safetensors::Dtype::I64 => {
                i = data
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                    .collect()
            }
            safetensors::Dtype::U8 => i = data.iter().map(|&v| v as i64).collect(),
            other => panic!("unexpected dtype {other:?} for {name}"),
        }
        out.insert(
            name.to_string(),
            RefTensor {
                shape: view.shape().to_vec(),
                f,
                i,
            },
        );
    }
    out
}

/// max|a − b| / max|b|: relative to the tensor's scale, so near-zero entries do not dominate.
pub fn rel_err(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "length mismatch");
    let scale = want.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-30);
    got.iter()
        .zip(want)
        .fold(0f64, |m, (&a, &b)| m.max((a as f64 - b).abs()))
        / scale
}

pub fn max_abs_err(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "length mismatch");
    got.iter()
        .zip(want)
        .fold(0f64, |m, (&a, &b)| m.max((a as f64 - b).abs()))
}

/// The fixtures' VQA prompt.
pub const QUESTION: &str = "Question: what is in the picture? Answer:";

/// Prompt text for a fixture prompt key ("noprompt" or "question").
pub fn prompt_text(key: &str) -> Option<&'static str> {
    (key == "question").then_some(QUESTION)
}

/// A fixture checkpoint on `device` with weights stored in `dtype`.
pub fn load(name: &str, device: &blip2::Device, dtype: blip2::DType) -> blip2::Blip2 {
    let opts = blip2::LoadOptions {
        device: device.clone(),
        dtype,
        progress: None,
        adapters: Vec::new(),
    };
    blip2::Blip2::load(model_dir(name), opts).unwrap_or_else(|e| panic!("loading {name}: {e}"))
}

/// The reference pixel values of an image, as a tensor on `dev`.
pub fn ref_pixels(
    images: &HashMap<String, RefTensor>,
    key: &str,
    dev: &blip2::Device,
) -> blip2::engine::Tensor {
    let t = &images[&format!("{key}.pixel_values")];
    blip2::engine::Tensor::from_f32(t.f32(), &t.shape, dev).unwrap()
}

/// `reference/index.json`.
pub fn index() -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(fixtures().join("reference/index.json")).unwrap())
        .unwrap()
}

/// Asserts the shape and relative error (see [`rel_err`]) of `got` against `want`.
pub fn check_rel(what: &str, got: &blip2::engine::Tensor, want: &RefTensor, tol: f64) {
    assert_eq!(got.shape(), &want.shape[..], "{what}: shape");
    let e = rel_err(&got.to_vec_f32().unwrap(), &want.f);
    assert!(e <= tol, "{what}: relative error {e:e} > {tol:e}");
}

fn run_blip2<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_blip2"))
        .args(args)
        .output()
        .unwrap()
}

/// Runs the `blip2` binary with `args`; fails the test with its stderr unless it exits 0.
/// Returns stdout.
pub fn blip2_ok<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> String {
    let out = run_blip2(args);
    assert!(
        out.status.success(),
        "blip2 exited with {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs the `blip2` binary with `args`, which must fail; returns its stderr.
pub fn blip2_err<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> String {
    let out = run_blip2(args);
    assert!(
        !out.status.success(),
        "blip2 should have failed; stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        out.stdout.is_empty(),
        "a failed run prints nothing on stdout"
    );
    String::from_utf8(out.stderr).unwrap()
}
