//! The embedded demo model through our engine reproduces transformers' own predictions on
//! held-out scenes (`tests/fixtures/demo/transformers_predictions.json`, written by
//! tools/demo_model/evaluate.py), and the binary uses it when `--model` is absent.

mod common;

use std::collections::HashMap;

use blip2::demo::{evaluate, load_demo};
use blip2::scene::{draw_scene, normalize_answer, vqa_prompt};
use blip2::{Blip2, DType, Device, GenerationConfig, LoadOptions};
use common::{blip2_err, blip2_ok};

/// The embedded model with f32 activations, as `blip2 caption` runs it by default.
fn demo(device: &Device) -> Blip2 {
    load_demo(LoadOptions {
        device: device.clone(),
        dtype: DType::F32,
        progress: None,
        adapters: Vec::new(),
    })
    .unwrap()
}

fn predictions() -> serde_json::Value {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/demo/transformers_predictions.json");
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

/// Greedy texts must be identical to transformers' for every caption and answer of the
/// first `scenes` scenes (the model's greedy margins on these scenes are what they are, so
/// a near-tie could in principle flip; none does on this set).
fn check(device: Device, scenes: usize) {
    let model = demo(&device);
    let p = predictions();
    let mut qa: HashMap<(u64, String), String> = HashMap::new();
    for r in p["qa"].as_array().unwrap() {
        qa.insert(
            (
                r["seed"].as_u64().unwrap(),
                r["question"].as_str().unwrap().to_string(),
            ),
            r["got"].as_str().unwrap().to_string(),
        );
    }
    let cfg = GenerationConfig::default();
    let mut n = 0;
    for c in p["captions"].as_array().unwrap().iter().take(scenes) {
        let seed = c["seed"].as_u64().unwrap();
        let scene = draw_scene(seed);
        let img = blip2::image::DynamicImage::ImageRgb8(scene.image.clone());
        let feats = model.image_features(&[&img]).unwrap();
        let cap = model
            .generate_from_features(&feats, &[None], &cfg)
            .unwrap()
            .remove(0);
        n += 1;
        assert_eq!(
            cap.text.trim(),
            c["got"].as_str().unwrap().trim(),
            "caption of scene {seed} on {device:?}"
        );
        for q in &scene.qa {
            let want = &qa[&(seed, q.question.clone())];
            let prompt = vqa_prompt(&q.question);
            let ans = model
                .generate_from_features(&feats, &[Some(&prompt)], &cfg)
                .unwrap()
                .remove(0);
            n += 1;
            assert_eq!(
                ans.text.trim(),
                want.trim(),
                "scene {seed}: {} on {device:?}",
                q.question
            );
        }
    }
    eprintln!("{device:?}: all {n} texts identical to transformers");
}

#[test]
fn demo_model_matches_transformers_on_cpu() {
    check(Device::cpu(), 40);
}

/// A subset on the GPU adapter (llvmpipe in CI is slow).
#[test]
fn demo_model_matches_transformers_on_gpu() {
    if let Some(gpu) = blip2::engine::testing::gpu() {
        check(gpu, 6);
    }
}

/// Issue 7's bar, through our engine, on scenes drawn for this test only: seeds from
/// 7_000_000 (training used 1_000_000..1_039_999; the documented evaluation 9_000_000..).
/// Exact match, case and a trailing period aside: captions >= 90%, answers >= 95%.
fn check_accuracy(device: Device, scenes: u64) {
    let model = demo(&device);
    let s = evaluate(&model, 7_000_000, scenes).unwrap();
    eprintln!(
        "{device:?}: {s}; first mistakes: {:?}",
        &s.mistakes[..s.mistakes.len().min(5)]
    );
    assert_eq!(s.scenes as u64, scenes);
    assert!(
        s.caption_accuracy() >= 0.90,
        "caption exact match {:.3} < 0.90 on {device:?}",
        s.caption_accuracy()
    );
    assert!(
        s.vqa_accuracy() >= 0.95,
        "answer accuracy {:.3} < 0.95 on {device:?}",
        s.vqa_accuracy()
    );
}

#[test]
fn demo_model_accuracy_on_fresh_scenes_cpu() {
    check_accuracy(Device::cpu(), 300);
}

/// The first 30 of the same scenes on the GPU adapter (llvmpipe in CI runs ~1 scene/s).
#[test]
fn demo_model_accuracy_on_fresh_scenes_gpu() {
    if let Some(gpu) = blip2::engine::testing::gpu() {
        check_accuracy(gpu, 30);
    }
}

/// The README's quick start points at `examples/*.png`: each has its ground truth beside it
/// (`blip2 demo-scene --json`), and the embedded model must caption it and answer every one of
/// its questions exactly.
#[test]
fn examples_are_captioned_and_answered_exactly() {
    let model = demo(&Device::cpu());
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let png = entry.unwrap().path();
        if png.extension().and_then(|e| e.to_str()) != Some("png") {
            continue;
        }
        let truth: serde_json::Value =
            serde_json::from_slice(&std::fs::read(png.with_extension("json")).unwrap()).unwrap();
        let image = blip2::load_image(&png).unwrap();
        let caption = model.caption(&image).unwrap().text;
        assert_eq!(
            normalize_answer(&caption),
            normalize_answer(truth["caption"].as_str().unwrap()),
            "{}",
            png.display()
        );
        for qa in truth["qa"].as_array().unwrap() {
            let question = qa["question"].as_str().unwrap();
            let answer = model.ask(&image, question).unwrap().text;
            assert_eq!(
                normalize_answer(&answer),
                normalize_answer(qa["answer"].as_str().unwrap()),
                "{}: {question}",
                png.display()
            );
        }
        checked += 1;
    }
    assert!(checked >= 3, "examples/ should hold the README's scenes");
}

#[test]
fn cli_uses_the_embedded_model_without_model_flag() {
    let dir = std::env::temp_dir().join(format!("blip2-demo-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let png = dir.join("scene.png");
    let seed = "9000001";
    let png_arg = png.to_str().unwrap();
    let truth: serde_json::Value = serde_json::from_str(&blip2_ok(&[
        "demo-scene",
        "--seed",
        seed,
        "--json",
        png_arg,
    ]))
    .unwrap();
    assert_eq!(
        truth["caption"],
        "a small yellow triangle on a gray background"
    );
    let got: serde_json::Value = serde_json::from_str(&blip2_ok(&[
        "caption", "--device", "cpu", "--json", "-q", png_arg,
    ]))
    .unwrap();
    // transformers captions this scene correctly; so must we.
    assert_eq!(got["text"], truth["caption"]);
    let answer = blip2_ok(&[
        "ask",
        "--device",
        "cpu",
        "-q",
        png_arg,
        "what color is the background?",
    ]);
    assert_eq!(answer.trim(), "gray");
    // Retrieval needs a real checkpoint: a clear error, not the demo model.
    let stderr = blip2_err(&["match", "--device", "cpu", png_arg, "a triangle"]);
    assert!(stderr.contains("--model"), "{stderr}");
    // chat reads questions from stdin, so the image cannot come from there too.
    let stderr = blip2_err(&["chat", "--device", "cpu", "-"]);
    assert!(stderr.contains("stdin"), "{stderr}");
    // A missing image is reported by name.
    let stderr = blip2_err(&["ask", "--device", "cpu", "/nonexistent.png", "what?"]);
    assert!(stderr.contains("/nonexistent.png"), "{stderr}");
    std::fs::remove_dir_all(&dir).ok();
}

/// Several images (here a directory): one line per image, `PATH: caption`, in name order.
#[test]
fn cli_labels_each_caption_with_its_image() {
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let stdout = blip2_ok(&[
        "caption",
        "--device",
        "cpu",
        "-q",
        examples.to_str().unwrap(),
    ]);
    let lines: Vec<&str> = stdout.lines().collect();
    let mut pngs: Vec<_> = std::fs::read_dir(&examples)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("png"))
        .collect();
    pngs.sort();
    assert_eq!(lines.len(), pngs.len(), "{stdout}");
    for (line, png) in lines.iter().zip(&pngs) {
        let truth: serde_json::Value =
            serde_json::from_slice(&std::fs::read(png.with_extension("json")).unwrap()).unwrap();
        let want = format!("{}: {}", png.display(), truth["caption"].as_str().unwrap());
        assert_eq!(*line, want);
    }
}

/// Soak (c), issue 20: one `Blip2` shared by 8 threads gives every scene the caption and
/// answer it gets sequentially (greedy: exact equality, no tolerance), so nothing in a
/// forward pass is shared mutable state between callers.
#[test]
fn eight_threads_sharing_one_model_give_the_sequential_texts() {
    let model = demo(&Device::cpu());
    let cfg = GenerationConfig::default();
    let run = |seed: u64| -> (String, String) {
        let scene = draw_scene(seed);
        let img = blip2::image::DynamicImage::ImageRgb8(scene.image);
        let cap = model.generate(&img, None, &cfg).unwrap().text;
        let q = vqa_prompt(&scene.qa[0].question);
        let ans = model.generate(&img, Some(&q), &cfg).unwrap().text;
        (cap, ans)
    };
    let seeds: Vec<u64> = (8_100_000..8_100_024).collect();
    let sequential: Vec<(String, String)> = seeds.iter().map(|&s| run(s)).collect();
    let threaded: Vec<Vec<(u64, (String, String))>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let (seeds, run) = (&seeds, &run);
                // Each thread takes every scene, starting at a different one, so the
                // same scenes run at the same time on different threads.
                s.spawn(move || {
                    (0..seeds.len())
                        .map(|i| seeds[(i + 3 * t) % seeds.len()])
                        .map(|seed| (seed, run(seed)))
                        .collect()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for results in threaded {
        for (seed, got) in results {
            let i = (seed - seeds[0]) as usize;
            assert_eq!(got, sequential[i], "scene {seed}");
        }
    }
}
