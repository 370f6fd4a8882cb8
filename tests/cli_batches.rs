//! Commands over many images keep going past bad ones (issue 20): each failure is reported
//! (stderr line; `{"image", "error"}` record with `--json`), the others are captioned, and
//! the exit status says something failed. Also: `demo-scene --out-dir` writes files
//! atomically, and a checkpoint's generation_config.json is reported, not silently obeyed
//! or ignored.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_blip2");

struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let p = std::env::temp_dir().join(format!("blip2-batches-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Dir(p)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env("XDG_RUNTIME_DIR", "/tmp")
        .output()
        .expect("blip2 runs");
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// `count` demo scenes from `seed` written into `d` by `blip2 demo-scene --out-dir`.
fn demo_scenes(d: &Dir, seed: u64, count: usize) {
    let (ok, _, e) = run(&[
        "demo-scene",
        "--seed",
        &seed.to_string(),
        "--out-dir",
        d.path().to_str().unwrap(),
        "--count",
        &count.to_string(),
    ]);
    assert!(ok, "{e}");
}

/// Two good scenes and three bad files (not an image, a truncated PNG, an empty file) in
/// one directory, sorted so that bad files come first, between and last.
fn mixed_dir(tag: &str) -> Dir {
    let d = Dir::new(tag);
    demo_scenes(&d, 7, 2);
    std::fs::remove_file(d.path().join("scenes.jsonl")).unwrap();
    std::fs::write(d.path().join("0-not-an-image.png"), b"hello, world").unwrap();
    let png = std::fs::read(d.path().join("7.png")).unwrap();
    std::fs::write(d.path().join("70-truncated.png"), &png[..png.len() / 2]).unwrap();
    std::fs::write(d.path().join("9-empty.png"), b"").unwrap();
    d
}

#[test]
fn caption_reports_each_bad_image_and_goes_on() {
    let d = mixed_dir("caption");
    let dir = d.path().to_str().unwrap();
    for batch in ["1", "2"] {
        let (ok, out, err) = run(&[
            "caption",
            dir,
            "--device",
            "cpu",
            "--batch-size",
            batch,
            "-q",
        ]);
        assert!(!ok, "exit status must say something failed");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "batch {batch}: the two good scenes: {out}");
        assert!(
            lines[0].contains("7.png: ") && lines[1].contains("8.png: "),
            "{out}"
        );
        for bad in ["0-not-an-image.png", "70-truncated.png", "9-empty.png"] {
            assert_eq!(
                err.lines()
                    .filter(|l| l.starts_with("error: ") && l.contains(bad))
                    .count(),
                1,
                "batch {batch}: one line for {bad}: {err}"
            );
        }
        assert!(err.contains("3 of 5 images failed"), "{err}");
    }

    // --json: one record per input, in order, errors as {"image", "error"}.
    let (ok, out, _) = run(&["caption", dir, "--device", "cpu", "--json"]);
    assert!(!ok);
    let recs: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(recs.len(), 5, "{out}");
    let errors: Vec<&str> = recs
        .iter()
        .filter(|r| r.get("error").is_some())
        .map(|r| r["image"].as_str().unwrap())
        .collect();
    assert_eq!(errors.len(), 3, "{out}");
    assert!(
        errors
            .iter()
            .all(|p| !p.ends_with("/7.png") && !p.ends_with("/8.png"))
    );
    assert!(recs.iter().filter(|r| r.get("text").is_some()).count() == 2);

    // --fail-fast: the first bad file ends the run.
    let (ok, out, err) = run(&["caption", dir, "--device", "cpu", "--fail-fast", "-q"]);
    assert!(!ok);
    assert!(out.is_empty(), "{out}");
    assert!(
        err.contains("0-not-an-image.png") && !err.contains("9-empty"),
        "{err}"
    );
}

#[test]
fn rank_reports_each_bad_image_and_goes_on() {
    let d = mixed_dir("rank");
    let texts = d.path().join("texts.txt");
    std::fs::write(&texts, "a red circle\na blue square\n").unwrap();
    let model = model_dir("blip2-itm-tiny");
    let (ok, out, err) = run(&[
        "rank",
        "--model",
        model.to_str().unwrap(),
        "--device",
        "cpu",
        "--texts",
        texts.to_str().unwrap(),
        "--json",
        d.path().join("0-not-an-image.png").to_str().unwrap(),
        d.path().join("7.png").to_str().unwrap(),
    ]);
    assert!(!ok);
    let recs: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(recs.len(), 2, "{out}");
    assert!(
        recs[0]["error"]
            .as_str()
            .unwrap()
            .contains("not a supported image format")
    );
    assert_eq!(recs[1]["ranking"].as_array().unwrap().len(), 2);
    assert!(err.contains("1 of 2 images failed"), "{err}");
}

#[test]
fn demo_scene_batches_leave_no_partial_files() {
    let d = Dir::new("scenes");
    demo_scenes(&d, 3, 3);
    let mut names: Vec<String> = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["3.png", "4.png", "5.png", "scenes.jsonl"]);
}

/// transformers' BLIP-2 generate() ignores generation_config.json (checked with 5.24: a
/// file with num_beams 3 and max_new_tokens 4 leaves the ids unchanged); so do we, and say
/// so on stderr.
#[test]
fn generation_config_settings_are_reported_and_not_applied() {
    let d = Dir::new("genconfig");
    let src = model_dir("blip2-opt-tiny");
    for e in std::fs::read_dir(&src).unwrap() {
        let p = e.unwrap().path();
        std::os::unix::fs::symlink(&p, d.path().join(p.file_name().unwrap())).unwrap();
    }
    std::fs::remove_file(d.path().join("generation_config.json")).unwrap();
    std::fs::write(
        d.path().join("generation_config.json"),
        r#"{"num_beams": 3, "max_new_tokens": 4, "eos_token_id": 202, "transformers_version": "5.24.0"}"#,
    )
    .unwrap();
    let img = fixtures().join("images/scene_rgb.png");
    let img = img.to_str().unwrap();
    let (ok, plain, err) = run(&[
        "caption",
        img,
        "--model",
        src.to_str().unwrap(),
        "--device",
        "cpu",
        "--json",
    ]);
    assert!(ok, "{err}");
    assert!(!err.contains("note:"), "{err}");
    let (ok, with_file, err) = run(&[
        "caption",
        img,
        "--model",
        d.path().to_str().unwrap(),
        "--device",
        "cpu",
        "--json",
    ]);
    assert!(ok, "{err}");
    assert!(
        err.contains("note: ")
            && err.contains("max_new_tokens=4, num_beams=3")
            && !err.contains("eos_token_id"),
        "{err}"
    );
    let ids =
        |s: &str| serde_json::from_str::<serde_json::Value>(s.trim()).unwrap()["token_ids"].clone();
    assert_eq!(ids(&plain), ids(&with_file));
    // -q silences notes.
    let (_, _, err) = run(&[
        "caption",
        img,
        "--model",
        d.path().to_str().unwrap(),
        "--device",
        "cpu",
        "-q",
    ]);
    assert!(err.is_empty(), "{err}");
}

/// The demo model has 128 positions: a long conversation drops its oldest turns from the
/// prompt (and says so) instead of ending the session at turn 8.
#[test]
fn chat_outlives_the_models_positions() {
    let d = Dir::new("chat");
    let png = d.path().join("scene.png");
    let (ok, _, e) = run(&["demo-scene", "--seed", "42", png.to_str().unwrap()]);
    assert!(ok, "{e}");
    let questions = "how many shapes are there?\nwhat color is the circle?\n".repeat(15);
    let mut child = Command::new(BIN)
        .args(["chat", png.to_str().unwrap(), "--device", "cpu", "--json"])
        .env("XDG_RUNTIME_DIR", "/tmp")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(questions.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        stdout.lines().count(),
        30,
        "every question answered: {stderr}"
    );
    assert!(stderr.contains("oldest of"), "{stderr}");
}
