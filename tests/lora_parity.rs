//! PEFT LoRA adapters merged at load against peft's `merge_and_unload()` models
//! (tools/fixtures/make_lora.py): Q-Former and projection outputs, prompt logits and
//! greedy/beam ids, on the CPU for every fixture adapter and on the GPU adapter for one.

mod common;

use std::path::PathBuf;

use blip2::engine::{DType, Device};
use blip2::{AdapterSpec, Blip2, GenerationConfig, LoadOptions};
use common::*;

/// f32 relative error bound, max|ours − ref| / max|ref| per tensor (the 1e-4): both
/// sides compute in f32 and differ only in summation order, exp/erf, and the merge (f64 sum
/// of B·A here, f32 in peft: a few f32 ulps of each delta), ~1e-6 in practice.
const F32_REL_TOL: f64 = 1e-4;

/// Each case of `reference/lora.safetensors`: base checkpoint and (adapter, scale) list.
/// (case name, base checkpoint, adapters with their scales).
type Case = (&'static str, &'static str, &'static [(&'static str, f32)]);
const CASES: [Case; 5] = [
    (
        "opt-qformer-qkv",
        "blip2-opt-tiny",
        &[("opt-qformer-qkv", 1.0)],
    ),
    ("opt-lm-qv", "blip2-opt-tiny", &[("opt-lm-qv", 1.0)]),
    ("t5-lm-qv", "blip2-flan-t5-tiny", &[("t5-lm-qv", 1.0)]),
    ("opt-mixed", "blip2-opt-tiny", &[("opt-mixed", 1.0)]),
    (
        "opt-stack",
        "blip2-opt-tiny",
        &[("opt-qformer-qkv", 0.5), ("opt-lm-qv", 1.0)],
    ),
];

fn adapter_dir(name: &str) -> PathBuf {
    fixtures().join("adapters").join(name)
}

fn load_with(base: &str, adapters: &[(&str, f32)], dev: &Device, dtype: DType) -> Blip2 {
    let opts = LoadOptions {
        device: dev.clone(),
        dtype,
        progress: None,
        adapters: adapters
            .iter()
            .map(|(a, s)| AdapterSpec {
                dir: adapter_dir(a),
                scale: *s,
            })
            .collect(),
    };
    Blip2::load(model_dir(base), opts)
        .unwrap_or_else(|e| panic!("loading {base} + {adapters:?}: {e}"))
}

/// Every reference of `case` against the merged model on `dev`.
fn check_case(case: &str, base: &str, adapters: &[(&str, f32)], dev: &Device) {
    let images = reference("images.safetensors");
    let refs = reference("lora.safetensors");
    let model = load_with(base, adapters, dev, DType::F32);
    for img in ["rgb", "jpeg"] {
        let what = |s: &str| format!("{case} {img} {s} on {dev:?}");
        let [_, q, proj] = model.stages(&ref_pixels(&images, img, dev)).unwrap();
        let r = |k: &str| &refs[&format!("{case}.{img}.{k}")];
        check_rel(
            &what("qformer"),
            &q,
            r("qformer_last_hidden_state"),
            F32_REL_TOL,
        );
        check_rel(
            &what("projection"),
            &proj,
            r("language_projection"),
            F32_REL_TOL,
        );
        let feats = model.features_from_projected(proj);
        for p in ["noprompt", "question"] {
            for (mode, cfg) in [
                ("greedy", GenerationConfig::default()),
                // num_beams 3, length_penalty 1, early_stopping false (HF's _beam_search).
                ("beam3", GenerationConfig::beam_search(3)),
            ] {
                let g = model
                    .generate_from_features(&feats, &[prompt_text(p)], &cfg)
                    .unwrap();
                assert_eq!(
                    g[0].token_ids,
                    r(&format!("{p}.{mode}.new_ids")).ids(),
                    "{}",
                    what(&format!("{p} {mode} ids"))
                );
            }
            if img != "rgb" {
                continue; // the fixture keeps logits of one image
            }
            let dec = refs
                .get(&format!("{case}.{img}.{p}.decoder_input_ids"))
                .map(|t| t.id_rows());
            let (logits, _) = model
                .prompt_logits(&feats, &[prompt_text(p)], dec.as_deref())
                .unwrap();
            check_rel(
                &what(&format!("{p} logits")),
                &logits,
                r(&format!("{p}.logits")),
                F32_REL_TOL,
            );
        }
    }
}

#[test]
fn merged_models_match_peft_on_cpu() {
    for (case, base, adapters) in CASES {
        check_case(case, base, adapters, &Device::Cpu);
    }
}

/// One case on the GPU adapter (llvmpipe in CI): the merge happens on the host before the
/// upload, so one case covers it; the rest of the GPU path is the base parity tests'.
#[test]
fn merged_model_matches_peft_on_gpu() {
    for dev in devices().into_iter().filter(Device::is_gpu) {
        check_case("opt-mixed", "blip2-opt-tiny", &[("opt-mixed", 1.0)], &dev);
    }
}

/// The adapters change what the model computes (a merge that did nothing would pass the
/// parity test only if the fixture's deltas were zero): the merged Q-Former output is far
/// from the base model's, and the merged LM's logits too.
#[test]
fn adapters_change_the_outputs() {
    let base = reference("opt.safetensors");
    let lora = reference("lora.safetensors");
    let q_base = &base["rgb.qformer_last_hidden_state"];
    let q_lora = &lora["opt-qformer-qkv.rgb.qformer_last_hidden_state"];
    assert!(rel_err(&q_lora.f32(), &q_base.f) > 1e-2);
    let l_base = &base["rgb.question.logits"];
    let l_lora = &lora["opt-lm-qv.rgb.question.logits"];
    assert!(rel_err(&l_lora.f32(), &l_base.f) > 1e-2);
}

/// Counts of what each adapter merged, from its file: every lora_A is one merged matrix.
#[test]
fn weight_stats_count_merged_matrices() {
    let model = load_with(
        "blip2-opt-tiny",
        &[("opt-qformer-qkv", 0.5), ("opt-mixed", 1.0)],
        &Device::Cpu,
        DType::F32,
    );
    let stats = &model.weight_stats().adapters;
    assert_eq!(stats.len(), 2);
    for (s, name) in stats.iter().zip(["opt-qformer-qkv", "opt-mixed"]) {
        let bytes = std::fs::read(adapter_dir(name).join("adapter_model.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let count = |suffix: &str| st.names().iter().filter(|n| n.ends_with(suffix)).count();
        assert_eq!(s.merged, count(".lora_A.weight"), "{name}");
        assert_eq!(s.bias_deltas, count(".lora_B.bias"), "{name}");
        assert_eq!(s.dir, adapter_dir(name));
        // Stored whole: trained biases of the LoRA layers (bias="lora_only") and
        // modules_to_save (opt-mixed's language_projection weight and bias).
        let whole = st.names().iter().filter(|n| !n.contains(".lora_")).count();
        assert_eq!(s.replaced, whole, "{name}");
    }
    assert_eq!(stats[0].scale, 0.5);
    assert_eq!(
        stats[1].replaced, 7,
        "5 trained biases + language_projection"
    );
}

/// Quantization happens after the merge: a q8 load of a merged model runs, its linear weights
/// are quantized from the merged values (close to the f32 merged model's outputs), and it
/// generates.
#[test]
fn q8_load_quantizes_the_merged_weights() {
    let images = reference("images.safetensors");
    let refs = reference("lora.safetensors");
    let model = load_with(
        "blip2-opt-tiny",
        &[("opt-mixed", 1.0)],
        &Device::Cpu,
        DType::Q8,
    );
    assert!(model.weight_stats().quantized_at_load > 0);
    assert_eq!(model.weight_stats().linear_dtype, "q8");
    let [_, _, proj] = model
        .stages(&ref_pixels(&images, "rgb", &Device::Cpu))
        .unwrap();
    // q8 blocks round each weight to 1/254 of its block's range: the projection stays within
    // a few percent of the f32 merged model's; the base model's is much further away
    // (opt-mixed replaces language_projection).
    let got = proj.to_vec_f32().unwrap();
    let e = rel_err(&got, &refs["opt-mixed.rgb.language_projection"].f);
    assert!(e < 5e-2, "q8 merged projection: relative error {e:e}");
    let base = reference("opt.safetensors");
    let e_base = rel_err(&got, &base["rgb.language_projection"].f);
    assert!(
        e_base > e,
        "q8 merged is closer to the base ({e_base:e}) than to the merge ({e:e})"
    );
    let feats = model.features_from_projected(proj);
    let g = model
        .generate_from_features(&feats, &[None], &GenerationConfig::default())
        .unwrap();
    assert!(!g[0].token_ids.is_empty());
}
