//! Builds `examples/caption.c` with the system C compiler against the static library
//! cargo built for these tests, runs it on the README's example image with the embedded
//! demo model, and checks its output and one error path.
//!
//! The static library is a dependency artifact of this test: `cargo test` compiles the
//! crate's `staticlib` into the same `deps/` directory as this test's executable (the
//! crate's only library target builds all its crate types at once), so no nested cargo
//! invocation is needed.

use std::path::{Path, PathBuf};
use std::process::Command;

/// What `blip2 caption examples/circle_and_triangle.png` prints (README.md).
const CAPTION: &str = "a large green circle and a small blue triangle on a gray background";

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn repo_root() -> PathBuf {
    crate_dir().join("../..").canonicalize().unwrap()
}

/// `libblip2_c.a` next to this test's executable (target/<profile>/deps), or in the
/// profile directory itself after a plain `cargo build -p blip2-c`.
fn static_lib() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    let candidates = [
        deps.join("libblip2_c.a"),
        deps.parent().unwrap().join("libblip2_c.a"),
    ];
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .unwrap_or_else(|| panic!("libblip2_c.a not found in {candidates:?}"))
}

fn compiler() -> String {
    std::env::var("CC").unwrap_or_else(|_| "cc".into())
}

/// Compiles and links the example once per test process.
fn example_binary() -> &'static Path {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        // target/<profile>/c-example/: beside the build outputs, removed by `cargo clean`.
        let exe = std::env::current_exe().unwrap();
        let out_dir = exe.parent().unwrap().parent().unwrap().join("c-example");
        std::fs::create_dir_all(&out_dir).unwrap();
        let bin = out_dir.join("caption");
        let mut cmd = Command::new(compiler());
        cmd.args(["-std=c99", "-Wall", "-Wextra", "-Werror", "-O1"])
            .arg("-I")
            .arg(crate_dir().join("include"))
            .arg(crate_dir().join("examples/caption.c"))
            .arg(static_lib());
        // The system libraries Rust's std needs (`--print native-static-libs`).
        if cfg!(target_os = "macos") {
            cmd.args([
                "-framework",
                "CoreFoundation",
                "-framework",
                "Metal",
                "-framework",
                "QuartzCore",
                "-liconv",
                "-lc",
                "-lm",
            ]);
        } else {
            cmd.args([
                "-lgcc_s",
                "-lutil",
                "-lrt",
                "-lpthread",
                "-lm",
                "-ldl",
                "-lc",
            ]);
        }
        cmd.arg("-o").arg(&bin);
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", compiler()));
        assert!(
            out.status.success(),
            "compiling examples/caption.c failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        bin
    })
}

#[test]
fn c_example_captions_the_readme_image() {
    let out = Command::new(example_binary())
        .arg("examples/circle_and_triangle.png")
        .arg("what color is the triangle?")
        .current_dir(repo_root())
        .env("BLIP2_DEVICE", "cpu")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines, [CAPTION, "answer: blue"], "stderr: {stderr}");
    assert!(stderr.contains("streamed in"), "{stderr}");
}

#[test]
fn c_example_reports_a_missing_file() {
    let missing = "examples/no_such_image.png";
    let out = Command::new(example_binary())
        .arg(missing)
        .current_dir(repo_root())
        .env("BLIP2_DEVICE", "cpu")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // BLIP2_STATUS_IMAGE = 2, and the message names the path.
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(
        stderr.contains("blip2_image_load failed (status 2)") && stderr.contains(missing),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
}
