//! `blip2 info`: devices, adapters and the embedded model's configuration, exit 0.

mod common;

#[test]
fn info_lists_devices_adapters_and_the_embedded_model() {
    let text = common::blip2_ok(&["info"]);
    for want in [
        "wgpu adapters:",
        "cpu: ",
        "threads: ",
        "embedded demo model",
        "q-former: hidden 128, 2 layers, 4 heads, 8 queries",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    // With an adapter (CI: llvmpipe) the GPU section shows its capabilities and limits.
    if blip2::engine::testing::gpu().is_some() {
        for want in [
            "gpu (used by --device gpu): ",
            "shader_f16: ",
            "max_storage_buffer_binding_size: ",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
    }
}

#[test]
fn successful_gpu_runs_print_nothing_on_stderr_on_a_headless_machine() {
    // Without XDG_RUNTIME_DIR (a headless Linux machine), Mesa's device-select Vulkan layer
    // and the EGL probe used to print "XDG_RUNTIME_DIR is invalid or not set" twice per
    // instance. `-q` runs must leave stderr empty; errors still print (checked last).
    if blip2::engine::testing::gpu().is_none() {
        eprintln!("no GPU adapter; headless stderr check not run");
        return;
    }
    let image = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/circle_and_triangle.png"
    );
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_blip2"))
            .args(args)
            .env_remove("XDG_RUNTIME_DIR")
            .env_remove("NODEVICE_SELECT")
            .env_remove("WGPU_BACKEND")
            .output()
            .expect("blip2 runs")
    };
    for args in [
        &["caption", image, "--device", "gpu", "-q"][..],
        &["info"][..],
    ] {
        let out = run(args);
        assert!(out.status.success(), "{args:?} failed");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.is_empty(), "{args:?} printed on stderr:\n{err}");
    }
    let out = run(&["caption", "/nonexistent.png", "--device", "gpu", "-q"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("/nonexistent.png"),
        "{err}"
    );
    assert_eq!(
        err.matches("No such file").count(),
        1,
        "cause printed once: {err}"
    );
}
