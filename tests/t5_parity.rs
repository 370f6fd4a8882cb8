//! BLIP-2 Flan-T5 parity with transformers on the tiny fixtures, on the CPU and the GPU
//! adapter: stages, encoder output, decoder logits, generated ids.

mod common;

use blip2::GenerationConfig;
use blip2::engine::DType;
use common::*;

/// f32 compute: max|ours − ref| / max|ref| ≤ 1e-4 (issue 5); only summation order and
/// exp/erf implementations differ.
const F32_REL_TOL: f64 = 1e-4;

#[test]
fn stages_encoder_and_decoder_logits_match_transformers() {
    let images = reference("images.safetensors");
    let refs = reference("t5.safetensors");
    for dev in devices() {
        // The v4-style config (tie_word_embeddings false, no scale_decoder_outputs) must give
        // the same numbers: transformers reads both layouts to the same model.
        for ckpt in ["blip2-flan-t5-tiny", "blip2-flan-t5-tiny-v4cfg"] {
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
                    let dec = refs[&format!("{key}.{p}.decoder_input_ids")].id_rows();
                    let (logits, enc) = model
                        .prompt_logits(&feats, &[prompt_text(p)], Some(&dec))
                        .unwrap();
                    check_rel(
                        &what(&format!("{p} encoder")),
                        &enc.unwrap(),
                        &refs[&format!("{key}.{p}.encoder_last_hidden_state")],
                        F32_REL_TOL,
                    );
                    check_rel(
                        &what(&format!("{p} decoder logits")),
                        &logits,
                        &refs[&format!("{key}.{p}.logits")],
                        F32_REL_TOL,
                    );
                }
            }
        }
    }
}

#[test]
fn greedy_ids_match_transformers() {
    let refs = reference("t5.safetensors");
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
        let model = load("blip2-flan-t5-tiny", &dev, DType::F32);
        for (key, _) in IMAGES {
            let feats = model.image_features(&[&image(key)]).unwrap();
            for p in ["noprompt", "question"] {
                for (mode, cfg) in &modes {
                    let g = model
                        .generate_from_features(&feats, &[prompt_text(p)], cfg)
                        .unwrap();
                    assert_eq!(
                        g[0].token_ids,
                        refs[&format!("{key}.{p}.{mode}.new_ids")].ids(),
                        "{key} {p} {mode} on {dev:?}"
                    );
                }
            }
        }
    }
}

/// Two images, prompts of different lengths, right padding (the T5 processor's side).
#[test]
fn padded_batch_matches_transformers() {
    let images = reference("images.safetensors");
    let refs = reference("t5.safetensors");
    let prompts = [
        Some("Question: what is in the picture? Answer:"),
        Some("a photo of"),
    ];
    for dev in devices() {
        let model = load("blip2-flan-t5-tiny", &dev, DType::F32);
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
        let dec = refs["batch.decoder_input_ids"].id_rows();
        let (logits, enc) = model
            .prompt_logits(&model.features_from_projected(proj), &prompts, Some(&dec))
            .unwrap();
        // Encoder rows at padding positions are defined but unused; compare real rows.
        let mask = refs["batch.attention_mask"].ids();
        let want = &refs["batch.encoder_last_hidden_state"];
        let d = want.shape[2];
        let enc = enc.unwrap().to_vec_f32().unwrap();
        let (mut g, mut w) = (Vec::new(), Vec::new());
        for (pos, &m) in mask.iter().enumerate() {
            if m == 1 {
                g.extend_from_slice(&enc[pos * d..(pos + 1) * d]);
                w.extend_from_slice(&want.f[pos * d..(pos + 1) * d]);
            }
        }
        let e = rel_err(&g, &w);
        assert!(e <= F32_REL_TOL, "batch encoder on {dev:?}: {e:e}");
        check_rel(
            &format!("batch decoder logits on {dev:?}"),
            &logits,
            &refs["batch.logits"],
            F32_REL_TOL,
        );
        let feats = model.image_features(&[&a, &b]).unwrap();
        let out = model
            .generate_from_features(&feats, &prompts, &GenerationConfig::default())
            .unwrap();
        for (r, row) in refs["batch.greedy.new_ids"].id_rows().iter().enumerate() {
            let mut ours = out[r].token_ids.clone();
            ours.resize(row.len(), 0);
            assert_eq!(&ours, row, "batch row {r} on {dev:?}");
        }
    }
}

/// f16 weight storage (activations stay f32, so nothing overflows the way HF's all-f16
/// Flan-T5 does): every output finite, logits within relative error 1e-2 (11-bit
/// mantissa, ~5e-4 per rounding, compounded over the layers), and greedy ids identical
/// wherever the reference's smallest top-1/top-2 margin exceeds twice the measured logit
/// error E (a flip needs the gap to shrink by the error of two logits, each at most E).
#[test]
fn f16_storage_is_finite_and_close() {
    let images = reference("images.safetensors");
    let refs = reference("t5.safetensors");
    let idx = index();
    for dev in devices() {
        let model = load("blip2-flan-t5-tiny", &dev, DType::F16);
        for (key, _) in IMAGES {
            let [_, _, proj] = model.stages(&ref_pixels(&images, key, &dev)).unwrap();
            let feats = model.features_from_projected(proj);
            for p in ["noprompt", "question"] {
                let dec = refs[&format!("{key}.{p}.decoder_input_ids")].id_rows();
                let (logits, enc) = model
                    .prompt_logits(&feats, &[prompt_text(p)], Some(&dec))
                    .unwrap();
                let enc = enc.unwrap().to_vec_f32().unwrap();
                let got = logits.to_vec_f32().unwrap();
                assert!(
                    enc.iter().chain(&got).all(|v| v.is_finite()),
                    "f16 {key} {p}: non-finite values on {dev:?}"
                );
                let want = &refs[&format!("{key}.{p}.logits")];
                let e = rel_err(&got, &want.f);
                assert!(e <= 1e-2, "f16 {key} {p} logits on {dev:?}: {e:e}");
                let abs = max_abs_err(&got, &want.f);
                let rec = idx["generations"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|r| {
                        r["model"] == "blip2-flan-t5-tiny"
                            && r["image"] == key
                            && r["mode"] == "greedy"
                            && r["prompt"] == prompt_text(p).unwrap_or("")
                    })
                    .expect("fixture record");
                let margin = rec["min_top1_top2_margin"].as_f64().unwrap();
                let ours = model
                    .generate_from_features(&feats, &[prompt_text(p)], &GenerationConfig::default())
                    .unwrap();
                if margin > 2.0 * abs {
                    assert_eq!(
                        ours[0].token_ids,
                        refs[&format!("{key}.{p}.greedy.new_ids")].ids(),
                        "f16 {key} {p} on {dev:?}"
                    );
                } else {
                    eprintln!(
                        "f16 {key} {p} on {dev:?}: margin {margin} <= 2E = {}: ids not compared",
                        2.0 * abs
                    );
                }
            }
        }
    }
}
