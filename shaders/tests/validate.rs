//! Every kernel family, in every variant its consts type lists ([`Kernel::variants`]), parses
//! and validates with naga and translates to SPIR-V: catches WGSL mistakes on machines
//! without any GPU adapter. Also checks the Rust side of the contract against the WGSL: the
//! `Params` structs, the binding signatures and the op codes.

use std::collections::HashSet;

use blip2_shaders::{
    ArgmaxConsts, AttentionConsts, AttnDecodeConsts, CoopMatmulConsts, CopyConsts,
    ElementwiseConsts, EmbeddingConsts, FlashAttentionConsts, GemvConsts, INCLUDES, Kernel,
    MatmulConsts, NormConsts, Params, QEmbeddingConsts, QGemvConsts, QMatmulConsts, SoftmaxConsts,
    TopkConsts, specialise,
};

fn compile(what: &str, text: &str) -> naga::Module {
    let module = naga::front::wgsl::parse_str(text)
        .unwrap_or_else(|e| panic!("{what}: {}", e.emit_to_string(text)));
    let mut validator = naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::all(),
    );
    let info = validator
        .validate(&module)
        .unwrap_or_else(|e| panic!("{what}: {}", e.emit_to_string(text)));
    let opts = naga::back::spv::Options::default();
    naga::back::spv::write_vec(&module, &info, &opts, None)
        .unwrap_or_else(|e| panic!("{what}: SPIR-V: {e}"));
    module
}

/// Every variant of `K` compiles; the list has no duplicates, and it has subgroup variants
/// exactly when the source has subgroup lines.
fn variants_validate<K: Kernel>() -> usize {
    let variants = K::variants();
    assert!(!variants.is_empty(), "{}: no variants", K::NAME);
    let distinct: HashSet<K> = variants.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        variants.len(),
        "{}: duplicate variants",
        K::NAME
    );
    for k in &variants {
        let text = k.wgsl().unwrap_or_else(|e| panic!("{}: {e}", k.label()));
        compile(&k.label(), &text);
    }
    let has_sg_lines = specialise(K::SOURCE, &[], false)
        .unwrap()
        .lines()
        .any(|l| l.trim_start().starts_with("//SG "));
    assert_eq!(
        variants.iter().any(|k| k.subgroups()),
        has_sg_lines,
        "{}: subgroup variants vs //SG lines",
        K::NAME
    );
    let has_h_lines = specialise(K::SOURCE, &[], false)
        .unwrap()
        .lines()
        .any(|l| l.trim_start().starts_with("//H "));
    assert_eq!(
        variants.iter().any(|k| k.f16_math()),
        has_h_lines,
        "{}: f16 variants vs //H lines",
        K::NAME
    );
    for k in variants.iter().filter(|k| k.f16_math()) {
        let text = k.wgsl().unwrap();
        assert!(text.starts_with("enable f16;\n"), "{}", k.label());
        assert!(k.label().ends_with(" +f16"), "{}", k.label());
    }
    variants.len()
}

fn scalar_name(module: &naga::Module, ty: naga::Handle<naga::Type>) -> &'static str {
    match module.types[ty].inner {
        naga::TypeInner::Scalar(naga::Scalar::U32) => "u32",
        naga::TypeInner::Scalar(naga::Scalar::F32) => "f32",
        naga::TypeInner::Scalar(naga::Scalar::I32) => "i32",
        _ => "not a 4-byte scalar",
    }
}

/// The Rust declarations of `K` agree with its WGSL (stored defaults, fragments included).
fn contract_holds<K: Kernel>() {
    let name = K::NAME;
    let text = specialise(K::SOURCE, &[], false).unwrap_or_else(|e| panic!("{name}: {e}"));
    let module = compile(&format!("{name} (stored defaults)"), &text);

    // Params: same size, field names and scalar types, in order.
    let (span, members) = module
        .types
        .iter()
        .find_map(|(_, t)| match (&t.name, &t.inner) {
            (Some(n), naga::TypeInner::Struct { members, span }) if n == "Params" => {
                Some((*span, members))
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("{name}: no struct Params"));
    assert_eq!(
        span as usize,
        std::mem::size_of::<K::Params>(),
        "{name}: size of the WGSL Params vs the Rust struct"
    );
    let wgsl_fields: Vec<(&str, &str)> = members
        .iter()
        .map(|m| (m.name.as_deref().unwrap_or(""), scalar_name(&module, m.ty)))
        .collect();
    assert_eq!(
        wgsl_fields,
        <K::Params as Params>::FIELDS,
        "{name}: Params fields"
    );

    // Bindings: the uniform at 0, then READ_ONLY read-only and READ_WRITE read-write storage
    // buffers, nothing else.
    let mut bindings: Vec<(u32, naga::AddressSpace)> = module
        .global_variables
        .iter()
        .filter_map(|(_, v)| v.binding.as_ref().map(|b| (b, v.space)))
        .map(|(b, space)| {
            assert_eq!(b.group, 0, "{name}: bind group");
            (b.binding, space)
        })
        .collect();
    bindings.sort_by_key(|b| b.0);
    let expected: Vec<u32> = (0..(1 + K::READ_ONLY + K::READ_WRITE) as u32).collect();
    assert_eq!(
        bindings.iter().map(|b| b.0).collect::<Vec<_>>(),
        expected,
        "{name}: binding numbers"
    );
    for &(binding, space) in &bindings {
        let ok = match (binding as usize, space) {
            (0, naga::AddressSpace::Uniform) => true,
            (i, naga::AddressSpace::Storage { access }) => {
                let writable = access.contains(naga::StorageAccess::STORE);
                writable == (i > K::READ_ONLY)
            }
            _ => false,
        };
        assert!(ok, "{name}: binding {binding} is {space:?}");
    }

    // Op codes: each enum discriminant equals the WGSL constant of its name, and the WGSL
    // has no code of that family the enum lacks.
    let codes = K::op_codes();
    let consts: Vec<(&str, Option<u32>)> = module
        .constants
        .iter()
        .filter_map(|(_, c)| {
            let value = match module.global_expressions[c.init] {
                naga::Expression::Literal(naga::Literal::U32(v)) => Some(v),
                _ => None,
            };
            c.name.as_deref().map(|n| (n, value))
        })
        .collect();
    for &(code_name, value) in &codes {
        let found = consts.iter().find(|c| c.0 == code_name);
        assert_eq!(
            found.and_then(|c| c.1),
            Some(value),
            "{name}: WGSL const {code_name} vs the Rust enum"
        );
    }
    if let Some(&(first, _)) = codes.first() {
        let prefix = &first[..=first.find('_').unwrap_or(0)];
        for (n, _) in consts.iter().filter(|c| c.0.starts_with(prefix)) {
            assert!(
                codes.iter().any(|c| c.0 == *n),
                "{name}: WGSL const {n} has no Rust enum variant"
            );
        }
    }
}

#[test]
fn elementwise_variants_validate() {
    // 8 unary ops (SiLU added for LLaMA) x 8 variants.
    assert_eq!(variants_validate::<ElementwiseConsts>(), 8 * 8);
}

#[test]
fn reductions_validate_with_and_without_subgroups() {
    variants_validate::<NormConsts>();
    variants_validate::<SoftmaxConsts>();
    variants_validate::<AttentionConsts>();
    variants_validate::<FlashAttentionConsts>();
    variants_validate::<AttnDecodeConsts>();
    variants_validate::<GemvConsts>();
    variants_validate::<QGemvConsts>();
}

#[test]
fn matmul_tiles_validate() {
    variants_validate::<MatmulConsts>();
    variants_validate::<QMatmulConsts>();
}

/// The f16-arithmetic variants (`enable f16;`, validated above with every other variant)
/// exist exactly where the weight operand is stored f16: GEMV with 16-byte loads of f16
/// weights, matmul with f16 B; each has its packed-pair twin.
#[test]
fn f16_math_variants_pair_with_packed_ones() {
    let gemv = GemvConsts::variants();
    let h: Vec<_> = gemv.iter().filter(|k| k.f16_math).collect();
    assert!(!h.is_empty());
    for k in &h {
        assert!(k.vec && k.w_f16, "{}", k.label());
        let twin = GemvConsts {
            f16_math: false,
            ..**k
        };
        assert!(gemv.contains(&twin), "{}", k.label());
    }
    let mm = MatmulConsts::variants();
    let h: Vec<_> = mm.iter().filter(|k| k.f16_math).collect();
    let packed = mm.iter().filter(|k| k.b_f16 && !k.f16_math);
    assert_eq!(h.len(), packed.count());
    for k in &h {
        assert!(k.b_f16, "{}", k.label());
    }
}

/// The tensor-core variants validate and translate to SPIR-V with the cooperative-matrix
/// capability (no adapter here runs them: the device issue does).
#[test]
fn cooperative_matmul_validates() {
    variants_validate::<CoopMatmulConsts>();
}

#[test]
fn copies_validate() {
    variants_validate::<ArgmaxConsts>();
    variants_validate::<TopkConsts>();
    variants_validate::<CopyConsts>();
    variants_validate::<EmbeddingConsts>();
    variants_validate::<QEmbeddingConsts>();
}

#[test]
fn rust_declarations_match_the_wgsl() {
    contract_holds::<GemvConsts>();
    contract_holds::<MatmulConsts>();
    contract_holds::<QGemvConsts>();
    contract_holds::<QMatmulConsts>();
    contract_holds::<NormConsts>();
    contract_holds::<SoftmaxConsts>();
    contract_holds::<ElementwiseConsts>();
    contract_holds::<CopyConsts>();
    contract_holds::<EmbeddingConsts>();
    contract_holds::<QEmbeddingConsts>();
    contract_holds::<AttentionConsts>();
    contract_holds::<FlashAttentionConsts>();
    contract_holds::<CoopMatmulConsts>();
    contract_holds::<AttnDecodeConsts>();
    contract_holds::<ArgmaxConsts>();
    contract_holds::<TopkConsts>();
}

#[test]
fn every_fragment_is_included_by_a_kernel() {
    for (frag, _) in INCLUDES {
        let line = format!("// #include \"{frag}\"");
        assert!(
            blip2_shaders::ALL
                .iter()
                .any(|(_, src)| src.contains(&line)),
            "fragment {frag} is included by no kernel"
        );
    }
}
