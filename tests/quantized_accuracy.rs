//! Quantized weights (q8, q4) against transformers' float32 outputs on the fixture
//! checkpoints: every stage (vision, Q-Former, projection, language-model logits; the T5
//! encoder too) by cosine similarity and relative error, on every device. The fixtures'
//! weights are transformers' random initialisation, so these bound the kernels' and the
//! formats' error, not a trained model's task accuracy (docs/quantization.md has that).
//!
//! Thresholds: measured on 2026-12-02 (printed by each run: `cargo test --test
//! quantized_accuracy -- --nocapture`) with headroom for another summation order: the
//! relative-error bound is 2× the largest measured value over all stages and devices,
//! rounded up; the cosine floor is 1 − 2·(1 − the smallest measured cosine).

mod common;

use blip2::engine::DType;
use common::*;

/// Cosine similarity of two vectors.
fn cosine(a: &[f32], b: &[f64]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0.0f64, 0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        let x = x as f64;
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    ab / (aa.sqrt() * bb.sqrt()).max(1e-300)
}

/// (max relative error, min cosine) allowed per dtype.
fn limits(dtype: DType) -> (f64, f64) {
    match dtype {
        DType::Q8 => (Q8_REL, Q8_COS),
        DType::Q4 => (Q4_REL, Q4_COS),
        _ => unreachable!(),
    }
}

const Q8_REL: f64 = 0.05;
const Q8_COS: f64 = 0.999;
const Q4_REL: f64 = 0.5;
const Q4_COS: f64 = 0.95;

fn check(what: &str, dtype: DType, got: &blip2::engine::Tensor, want: &RefTensor) {
    let g = got.to_vec_f32().unwrap();
    let (e, c) = (rel_err(&g, &want.f), cosine(&g, &want.f));
    let (max_e, min_c) = limits(dtype);
    eprintln!("{what}: rel_err {e:.3e} cosine {c:.6}");
    assert!(e <= max_e, "{what}: relative error {e:e} > {max_e:e}");
    assert!(c >= min_c, "{what}: cosine {c} < {min_c}");
}

#[test]
fn opt_stages_and_logits_with_quantized_weights() {
    let images = reference("images.safetensors");
    let refs = reference("opt.safetensors");
    for dev in devices() {
        for dtype in [DType::Q8, DType::Q4] {
            let model = load("blip2-opt-tiny", &dev, dtype);
            for (key, _) in IMAGES {
                let what = |s: &str| format!("opt {dtype} {key} {s} on {dev:?}");
                let [vis, q, proj] = model.stages(&ref_pixels(&images, key, &dev)).unwrap();
                check(
                    &what("vision"),
                    dtype,
                    &vis,
                    &refs[&format!("{key}.vision_last_hidden_state")],
                );
                check(
                    &what("qformer"),
                    dtype,
                    &q,
                    &refs[&format!("{key}.qformer_last_hidden_state")],
                );
                check(
                    &what("projection"),
                    dtype,
                    &proj,
                    &refs[&format!("{key}.language_projection")],
                );
                let feats = model.features_from_projected(proj);
                for p in ["noprompt", "question"] {
                    let (logits, _) = model
                        .prompt_logits(&feats, &[prompt_text(p)], None)
                        .unwrap();
                    check(
                        &what(&format!("{p} logits")),
                        dtype,
                        &logits,
                        &refs[&format!("{key}.{p}.logits")],
                    );
                }
            }
        }
    }
}

#[test]
fn t5_stages_encoder_and_logits_with_quantized_weights() {
    let images = reference("images.safetensors");
    let refs = reference("t5.safetensors");
    for dev in devices() {
        for dtype in [DType::Q8, DType::Q4] {
            let model = load("blip2-flan-t5-tiny", &dev, dtype);
            for (key, _) in IMAGES {
                let what = |s: &str| format!("t5 {dtype} {key} {s} on {dev:?}");
                let [vis, q, proj] = model.stages(&ref_pixels(&images, key, &dev)).unwrap();
                check(
                    &what("vision"),
                    dtype,
                    &vis,
                    &refs[&format!("{key}.vision_last_hidden_state")],
                );
                check(
                    &what("qformer"),
                    dtype,
                    &q,
                    &refs[&format!("{key}.qformer_last_hidden_state")],
                );
                check(
                    &what("projection"),
                    dtype,
                    &proj,
                    &refs[&format!("{key}.language_projection")],
                );
                let feats = model.features_from_projected(proj);
                for p in ["noprompt", "question"] {
                    let dec = refs[&format!("{key}.{p}.decoder_input_ids")].id_rows();
                    let (logits, enc) = model
                        .prompt_logits(&feats, &[prompt_text(p)], Some(&dec))
                        .unwrap();
                    check(
                        &what(&format!("{p} encoder")),
                        dtype,
                        &enc.unwrap(),
                        &refs[&format!("{key}.{p}.encoder_last_hidden_state")],
                    );
                    check(
                        &what(&format!("{p} logits")),
                        dtype,
                        &logits,
                        &refs[&format!("{key}.{p}.logits")],
                    );
                }
            }
        }
    }
}
