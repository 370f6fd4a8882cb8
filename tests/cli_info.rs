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

/// An f16 checkpoint loaded as f16 on the CPU is used in place from the map (`mapped` counts
/// those tensors); `BLIP2_CPU_PACK=all` packs its linear weights into panels instead, where
/// this CPU packs at all (AVX-512: `panels` in the backend line), with the same answer.
#[test]
fn pack_all_packs_the_weights_an_f16_checkpoint_would_map() {
    let model = common::model_dir("blip2-opt-tiny-f16");
    let image = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/circle_and_triangle.png"
    );
    let run = |pack: Option<&str>, args: &[&str]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_blip2"));
        cmd.args(args)
            .args(["--model".as_ref(), model.as_os_str()])
            .args(["--dtype", "f16"]);
        match pack {
            Some(v) => cmd.env("BLIP2_CPU_PACK", v),
            None => cmd.env_remove("BLIP2_CPU_PACK"),
        };
        let out = cmd.output().expect("blip2 runs");
        assert!(
            out.status.success(),
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let stats = |pack| {
        let v: serde_json::Value =
            serde_json::from_str(run(pack, &["info", "--json"]).trim()).expect("info JSON");
        let w = &v["model"]["weights"];
        (
            w["mapped"].as_u64().unwrap(),
            w["linear_weights"].as_u64().unwrap(),
        )
    };
    let (mapped, linears) = stats(None);
    // Every linear weight at least (norms and other vectors may be mapped too).
    assert!(
        mapped >= linears && linears > 0,
        "mapped {mapped}, linears {linears}"
    );
    let (mapped_all, _) = stats(Some("all"));
    if blip2::engine::panels_preferred() {
        assert!(
            mapped_all + linears <= mapped,
            "BLIP2_CPU_PACK=all still maps {mapped_all} of {mapped}"
        );
    } else {
        assert_eq!(mapped_all, mapped, "no panels on this CPU: nothing to pack");
    }
    let caption = |pack| {
        run(
            pack,
            &[
                "caption",
                image,
                "-q",
                "--device",
                "cpu",
                "--max-new-tokens",
                "8",
            ],
        )
    };
    assert_eq!(caption(None), caption(Some("all")));
}
