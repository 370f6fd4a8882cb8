//! `blip2 match` and `blip2 rank` run as a process on the retrieval fixture (CPU).

mod common;

use common::*;

fn path(p: std::path::PathBuf) -> String {
    p.to_string_lossy().into_owned()
}

const MATCH: &str = "a red circle and a blue square on a gradient background";
const NONMATCH: &str = "a dog sleeping on a wooden boat at night";

/// `--json` prints one object per text with image, text, itm and itc; the numbers are the
/// HF references within 1e-4 (the PNG fixture decodes to Pillow's exact pixels, and JSON
/// carries the f32 scores through f64 without loss).
#[test]
fn match_json_scores_each_text() {
    let img = path(fixtures().join("images/scene_rgb.png"));
    let dir = path(model_dir("blip2-itm-tiny"));
    let stdout = blip2_ok(&[
        "match", &img, MATCH, NONMATCH, "--model", &dir, "--device", "cpu", "--json",
    ]);
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    let refs = reference("itm.safetensors");
    for (v, (text, kind)) in lines.iter().zip([(MATCH, "match"), (NONMATCH, "nonmatch")]) {
        assert_eq!(v["image"], img.as_str());
        assert_eq!(v["text"], text);
        let itm = v["itm"].as_f64().expect("itm is a number");
        let itc = v["itc"].as_f64().expect("itc is a number");
        assert!(
            (itm - refs[&format!("rgb.{kind}.itm_probability")].f[0]).abs() <= 1e-4,
            "{v}"
        );
        assert!(
            (itc - refs[&format!("rgb.{kind}.itc_score")].f[0]).abs() <= 1e-4,
            "{v}"
        );
    }
}

/// Plain output: one line per text; `rank` orders the file's texts per image.
#[test]
fn match_plain_and_rank() {
    let img = path(fixtures().join("images/scene_rgb.png"));
    let img2 = path(fixtures().join("images/small_gray.png"));
    let dir = path(model_dir("blip2-itm-tiny"));
    let stdout = blip2_ok(&["match", &img, MATCH, "--model", &dir, "--device", "cpu"]);
    assert_eq!(stdout.lines().count(), 1);
    assert!(
        stdout.starts_with("itm ") && stdout.trim_end().ends_with(MATCH),
        "{stdout}"
    );

    let file = std::env::temp_dir().join(format!("blip2-rank-texts-{}.txt", std::process::id()));
    std::fs::write(&file, format!("{NONMATCH}\n\n{MATCH}\na circle\n")).unwrap();
    let texts_file = path(file.clone());
    let rank = |images: &[&str]| {
        let mut args = vec![
            "rank",
            "--model",
            &dir,
            "--device",
            "cpu",
            "--texts",
            &texts_file,
            "--json",
        ];
        args.extend_from_slice(images);
        blip2_ok(&args)
    };
    let stdout = rank(&[&img, &img2]);
    let per_image: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(per_image.len(), 2, "{stdout}");
    for v in &per_image {
        let ranking = v["ranking"].as_array().unwrap();
        assert_eq!(ranking.len(), 3, "blank line skipped: {v}");
        let itm: Vec<f64> = ranking.iter().map(|r| r["itm"].as_f64().unwrap()).collect();
        assert!(itm.windows(2).all(|w| w[0] >= w[1]), "best first: {v}");
    }
    // On the rgb image the fixture's matching caption beats the non-matching one
    // (HF: 0.914 vs 0.284).
    let texts: Vec<&str> = per_image[0]["ranking"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["text"].as_str().unwrap())
        .collect();
    let pos = |t: &str| texts.iter().position(|&x| x == t).unwrap();
    assert!(pos(MATCH) < pos(NONMATCH), "{texts:?}");

    // A directory stands for every image inside it, in name order (as for `caption`).
    let images = path(fixtures().join("images"));
    let stdout = rank(&[&images]);
    std::fs::remove_file(&file).ok();
    let ranked: Vec<String> = stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["image"].to_string())
        .collect();
    assert_eq!(ranked.len(), IMAGES.len(), "{stdout}");
}

/// A captioning checkpoint: non-zero exit and a message that it has no retrieval heads.
#[test]
fn caption_checkpoint_is_refused() {
    let img = path(fixtures().join("images/scene_rgb.png"));
    let dir = path(model_dir("blip2-opt-tiny"));
    let stderr = blip2_err(&["match", &img, MATCH, "--model", &dir, "--device", "cpu"]);
    assert!(stderr.contains("no retrieval heads"), "{stderr}");
}
