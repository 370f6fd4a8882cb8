//! The embedded demo model through our engine reproduces transformers' own predictions on
//! held-out scenes (`tests/fixtures/demo/transformers_predictions.json`, written by
//! tools/demo_model/evaluate.py), and the binary uses it when `--model` is absent.

use std::collections::HashMap;

use blip2::demo::load_demo;
use blip2::scene::{draw_scene, vqa_prompt};
use blip2::{DType, Device, GenerationConfig, LoadOptions};

fn predictions() -> serde_json::Value {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/demo/transformers_predictions.json");
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

/// Greedy texts must be identical to transformers' for every caption and answer of the
/// first `scenes` scenes (the model's greedy margins on these scenes are what they are, so
/// a near-tie could in principle flip; none does on this set).
fn check(device: Device, scenes: usize) {
    let model = load_demo(LoadOptions {
        device: device.clone(),
        dtype: DType::F32,
        progress: None,
    })
    .unwrap();
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
    let (mut n, mut same) = (0, 0);
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
        same += usize::from(cap.text.trim() == c["got"].as_str().unwrap().trim());
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
            same += usize::from(ans.text.trim() == want.trim());
            assert_eq!(
                ans.text.trim(),
                want.trim(),
                "scene {seed}: {} on {device:?}",
                q.question
            );
        }
    }
    eprintln!("{device:?}: {same}/{n} texts identical to transformers");
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

#[test]
fn cli_uses_the_embedded_model_without_model_flag() {
    let dir = std::env::temp_dir().join(format!("blip2-demo-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let png = dir.join("scene.png");
    let bin = env!("CARGO_BIN_EXE_blip2");
    let seed = "9000001";
    let out = std::process::Command::new(bin)
        .args(["demo-scene", "--seed", seed, "--json"])
        .arg(&png)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let truth: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        truth["caption"],
        "a small yellow triangle on a gray background"
    );
    let out = std::process::Command::new(bin)
        .args(["caption", "--device", "cpu", "--json", "-q"])
        .arg(&png)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // transformers captions this scene correctly; so must we.
    assert_eq!(got["text"], truth["caption"]);
    let out = std::process::Command::new(bin)
        .args(["ask", "--device", "cpu", "-q"])
        .arg(&png)
        .arg("what color is the background?")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "gray");
    // Retrieval needs a real checkpoint: a clear error, not the demo model.
    let out = std::process::Command::new(bin)
        .args(["match", "--device", "cpu"])
        .arg(&png)
        .arg("a triangle")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--model"));
    std::fs::remove_dir_all(&dir).ok();
}
