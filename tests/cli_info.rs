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
