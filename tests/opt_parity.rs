//! BLIP-2 OPT parity with transformers on the tiny fixtures (tools/fixtures), on the CPU and
//! on the GPU adapter: every stage, the prompt logits and the generated ids.

mod common;

use blip2::GenerationConfig;
use blip2::engine::{DType, Device};
use common::*;

/// f32 compute: relative error max|ours − ref| / max|ref| per tensor. The bound is
/// 1e-4; the only differences are summation order and exp/erf implementations (~1e-6).
const F32_REL_TOL: f64 = 1e-4;

/// Stage outputs, prompt ids and logits on the reference pixel values, for every copy of
/// the checkpoint that stores the same f32 values (single file and sharded).
#[test]
fn stages_and_logits_match_transformers_f32() {
    let images = reference("images.safetensors");
    let refs = reference("opt.safetensors");
    for dev in devices() {
        for ckpt in ["blip2-opt-tiny", "blip2-opt-tiny-sharded"] {
            let model = load(ckpt, &dev, DType::F32);
            for (key, _) in IMAGES {
                let what = |s: &str| format!("{ckpt} {key} {s} on {dev:?}");
                let [vis, q, proj] = model.stages(&ref_pixels(&images, key, &dev)).unwrap();
                check_rel(
                    &what("vision"),
                    &vis,
                    &refs[&format!("{key}.vision_last_hidden_state")],
                    F32_REL_TOL,
                );
                check_rel(
                    &what("qformer"),
                    &q,
                    &refs[&format!("{key}.qformer_last_hidden_state")],
                    F32_REL_TOL,
                );
                check_rel(
                    &what("projection"),
                    &proj,
                    &refs[&format!("{key}.language_projection")],
                    F32_REL_TOL,
                );
                let feats = model.features_from_projected(proj);
                for p in ["noprompt", "question"] {
                    let ids = model.prompt_ids(prompt_text(p)).unwrap();
                    assert_eq!(
                        ids,
                        refs[&format!("{key}.{p}.input_ids")].ids(),
                        "{}",
                        what("input ids")
                    );
                    let (logits, _) = model
                        .prompt_logits(&feats, &[prompt_text(p)], None)
                        .unwrap();
                    check_rel(
                        &what(&format!("{p} logits")),
                        &logits,
                        &refs[&format!("{key}.{p}.logits")],
                        F32_REL_TOL,
                    );
                }
            }
        }
    }
}

/// Greedy and beam-search ids from image files through our preprocessing, for each mode
/// HF recorded.
#[test]
fn greedy_ids_match_transformers() {
    let refs = reference("opt.safetensors");
    let modes = [
        ("greedy", GenerationConfig::default()),
        (
            "min_new10",
            GenerationConfig {
                min_new_tokens: 10,
                ..Default::default()
            },
        ),
        (
            "reppen1.3",
            GenerationConfig {
                repetition_penalty: 1.3,
                ..Default::default()
            },
        ),
        // num_beams 3, length_penalty 1, early_stopping false (HF's _beam_search).
        ("beam3", GenerationConfig::beam_search(3)),
    ];
    for dev in devices() {
        let model = load("blip2-opt-tiny", &dev, DType::F32);
        for (key, _) in IMAGES {
            let img = image(key);
            let feats = model.image_features(&[&img]).unwrap();
            for p in ["noprompt", "question"] {
                for (mode, cfg) in &modes {
                    let g = model
                        .generate_from_features(&feats, &[prompt_text(p)], cfg)
                        .unwrap();
                    let want = refs[&format!("{key}.{p}.{mode}.new_ids")].ids();
                    assert_eq!(g[0].token_ids, want, "{key} {p} {mode} on {dev:?}");
                }
            }
        }
    }
}

/// Two images with prompts of different lengths in one left-padded batch.
#[test]
fn padded_batch_matches_transformers() {
    let refs = reference("opt.safetensors");
    let prompts = [
        Some("Question: what is in the picture? Answer:"),
        Some("a photo of"),
    ];
    for dev in devices() {
        let model = load("blip2-opt-tiny", &dev, DType::F32);
        let images = reference("images.safetensors");
        // From the image files through our preprocessing (photo.jpg included: blip2-jpeg
        // decodes it exactly as Pillow does), under the tolerance the reference pixel values
        // get; the pixels themselves are checked against the reference to 0 here.
        let (a, b) = (image("rgb"), image("jpeg"));
        let both =
            blip2::model::preprocess::pixel_values(&[&a, &b], &Default::default(), &dev).unwrap();
        let (pa, pb) = (&images["rgb.pixel_values"], &images["jpeg.pixel_values"]);
        assert_eq!(
            both.to_vec_f32().unwrap(),
            [pa.f32(), pb.f32()].concat(),
            "pixel values"
        );
        let [_, _, proj] = model.stages(&both).unwrap();
        let (logits, _) = model
            .prompt_logits(&model.features_from_projected(proj), &prompts, None)
            .unwrap();
        let feats = model.image_features(&[&a, &b]).unwrap();
        // Compare the rows of real tokens only: HF's values at padded positions depend on
        // how a fully masked softmax row is resolved, and nothing downstream reads them.
        let mask = refs["batch.attention_mask"].ids();
        let want = &refs["batch.logits"];
        let v = want.shape[2];
        let got = logits.to_vec_f32().unwrap();
        let (mut g, mut w) = (Vec::new(), Vec::new());
        for (pos, &m) in mask.iter().enumerate() {
            if m == 1 {
                g.extend_from_slice(&got[pos * v..(pos + 1) * v]);
                w.extend_from_slice(&want.f[pos * v..(pos + 1) * v]);
            }
        }
        let e = rel_err(&g, &w);
        assert!(e <= F32_REL_TOL, "batch logits on {dev:?}: {e:e}");
        let out = model
            .generate_from_features(&feats, &prompts, &GenerationConfig::default())
            .unwrap();
        let pad = 1;
        for (r, row) in refs["batch.greedy.new_ids"].id_rows().iter().enumerate() {
            let mut ours = out[r].token_ids.clone();
            ours.resize(row.len(), pad);
            assert_eq!(&ours, row, "batch row {r} on {dev:?}");
        }
    }
}

/// Generation ends at eos (the fixture's jpeg caption stops after 5 tokens) and the text is
/// the tokenizer's decoding of the new ids.
#[test]
fn eos_stops_and_text_decodes() {
    let refs = reference("opt.safetensors");
    let model = load("blip2-opt-tiny", &Device::cpu(), DType::F32);
    let g = model.caption(&image("jpeg")).unwrap();
    let want = refs["jpeg.noprompt.greedy.new_ids"].ids();
    assert_eq!(g.token_ids, want);
    assert_eq!(*g.token_ids.last().unwrap(), 202, "ends with eos");
    assert_eq!(g.text, model.tokenizer.decode(&want, true).unwrap().trim());
}
