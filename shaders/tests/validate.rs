//! Every kernel family, in the variants the engine builds, parses and validates with naga
//! and translates to SPIR-V: catches WGSL mistakes on machines without any GPU adapter.

use blip2_shaders::{self as shaders, specialise, wgsl_bool, wgsl_u32};

fn check(name: &str, src: &str, consts: &[(&str, String)], subgroups: bool) {
    let text = specialise(src, consts, subgroups).unwrap_or_else(|e| panic!("{name}: {e}"));
    let module = naga::front::wgsl::parse_str(&text).unwrap_or_else(|e| {
        panic!(
            "{name} {consts:?} sg={subgroups}: {}",
            e.emit_to_string(&text)
        )
    });
    let mut validator = naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::all(),
    );
    let info = validator.validate(&module).unwrap_or_else(|e| {
        panic!(
            "{name} {consts:?} sg={subgroups}: {}",
            e.emit_to_string(&text)
        )
    });
    let opts = naga::back::spv::Options::default();
    naga::back::spv::write_vec(&module, &info, &opts, None)
        .unwrap_or_else(|e| panic!("{name} {consts:?} sg={subgroups}: SPIR-V: {e}"));
}

fn b(v: bool) -> String {
    wgsl_bool(v)
}

#[test]
fn elementwise_variants_validate() {
    for op in 0..7u32 {
        for f in [false, true] {
            check(
                "elementwise",
                shaders::ELEMENTWISE,
                &[
                    ("OP", wgsl_u32(op)),
                    ("X_F16", b(f)),
                    ("B_F16", b(!f)),
                    ("OUT_F16", b(f)),
                ],
                false,
            );
        }
    }
}

#[test]
fn reductions_validate_with_and_without_subgroups() {
    for sg in [false, true] {
        for f in [false, true] {
            check(
                "norm",
                shaders::NORM,
                &[
                    ("WG", wgsl_u32(if f { 64 } else { 256 })),
                    ("RMS", b(f)),
                    ("HAS_BIAS", b(!f)),
                    ("X_F16", b(f)),
                    ("W_F16", b(f)),
                    ("B_F16", b(f)),
                    ("OUT_F16", b(f)),
                ],
                sg,
            );
            check(
                "softmax",
                shaders::SOFTMAX,
                &[
                    ("WG", wgsl_u32(if f { 64 } else { 256 })),
                    ("HAS_MASK", b(f)),
                    ("HAS_BIAS", b(f)),
                    ("X_F16", b(f)),
                    ("OUT_F16", b(f)),
                ],
                sg,
            );
            for d_even in [false, true] {
                check(
                    "attention",
                    shaders::ATTENTION,
                    &[
                        ("QKV_F16", b(f)),
                        ("OUT_F16", b(f)),
                        ("HAS_MASK", b(f)),
                        ("HAS_BIAS", b(!f)),
                        ("D_EVEN", b(d_even)),
                    ],
                    sg,
                );
            }
            for m in 1..=4u32 {
                for vec in [false, true] {
                    check(
                        "gemv",
                        shaders::GEMV,
                        &[
                            ("M", wgsl_u32(m)),
                            ("VEC", b(vec)),
                            ("HAS_BIAS", b(f)),
                            ("X_F16", b(f)),
                            ("W_F16", b(!f)),
                            ("B_F16", b(f)),
                            ("OUT_F16", b(f)),
                        ],
                        sg,
                    );
                }
            }
        }
    }
}

#[test]
fn matmul_tiles_validate() {
    for (tm, wg) in [(64u32, 256u32), (32, 128)] {
        for trans in [false, true] {
            for f in [false, true] {
                check(
                    "matmul",
                    shaders::MATMUL,
                    &[
                        ("TM", wgsl_u32(tm)),
                        ("WG", wgsl_u32(wg)),
                        ("B_TRANS", b(trans)),
                        ("HAS_BIAS", b(f)),
                        ("A_VEC", b(f)),
                        ("B_VEC", b(!f)),
                        ("A_F16", b(f)),
                        ("B_F16", b(!f)),
                        ("BIAS_F16", b(f)),
                        ("OUT_F16", b(f)),
                    ],
                    false,
                );
            }
        }
    }
}

#[test]
fn copies_validate() {
    for mode in 0..3u32 {
        for f in [false, true] {
            check(
                "copy",
                shaders::COPY,
                &[("MODE", wgsl_u32(mode)), ("F16", b(f))],
                false,
            );
        }
    }
    for f in [false, true] {
        check(
            "embedding",
            shaders::EMBEDDING,
            &[("T_F16", b(f)), ("OUT_F16", b(!f))],
            false,
        );
    }
}
