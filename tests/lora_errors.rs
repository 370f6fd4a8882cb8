//! Adapters that do not fit: each is one typed error naming the key, file or setting at
//! fault, before any inference.

mod common;

use std::path::{Path, PathBuf};

use blip2::model::save::{QuantizeOptions, quantize_dir};
use blip2::{AdapterSpec, Blip2, DType, Device, Error, LoadOptions};
use common::*;

const OPT_CONFIG: &str = r#"{"peft_type": "LORA", "r": 4, "lora_alpha": 8,
    "target_modules": ["q_proj", "v_proj"], "bias": "none"}"#;
const Q: &str = "base_model.model.language_model.model.decoder.layers.0.self_attn.q_proj";

/// A fresh temporary adapter directory holding `config` and the f32 `tensors` (filled with
/// 0.01: their values do not matter to these checks).
fn adapter(name: &str, config: &str, tensors: &[(String, Vec<usize>)]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("blip2-lora-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("adapter_config.json"), config).unwrap();
    let data: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, s)| {
            let n: usize = s.iter().product();
            (0..n).flat_map(|_| 0.01f32.to_le_bytes()).collect()
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .zip(&data)
        .map(|((k, s), d)| {
            let v = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d)
                .unwrap();
            (k.clone(), v)
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("adapter_model.safetensors")).unwrap();
    dir
}

fn pair(module: &str, r: usize, out: usize, inp: usize) -> [(String, Vec<usize>); 2] {
    [
        (format!("{module}.lora_A.weight"), vec![r, inp]),
        (format!("{module}.lora_B.weight"), vec![out, r]),
    ]
}

fn load_err(model: &Path, adapters: &[PathBuf]) -> Error {
    let opts = LoadOptions {
        device: Device::Cpu,
        dtype: DType::F32,
        progress: None,
        adapters: adapters.iter().map(AdapterSpec::new).collect(),
    };
    match Blip2::load(model, opts) {
        Ok(_) => panic!("loading {} with {adapters:?} should fail", model.display()),
        Err(e) => e,
    }
}

#[test]
fn a_valid_handmade_adapter_loads() {
    // The helper itself writes adapters the loader takes (so the failures below are the
    // faults they name, not the helper's).
    let ok = adapter("ok", OPT_CONFIG, &pair(Q, 4, 48, 48));
    let opts = LoadOptions {
        adapters: vec![AdapterSpec::new(&ok)],
        ..Default::default()
    };
    let m = Blip2::load(model_dir("blip2-opt-tiny"), opts).unwrap();
    assert_eq!(m.weight_stats().adapters[0].merged, 1);
}

#[test]
fn unknown_and_mismatched_keys_are_listed_together() {
    let layer9 = Q.replace("layers.0", "layers.9");
    let mut tensors: Vec<(String, Vec<usize>)> = pair(&layer9, 4, 48, 48).to_vec();
    // A of rank 4 but 47 inputs (q_proj takes 48).
    let v = Q.replace("q_proj", "v_proj");
    tensors.extend(pair(&v, 4, 48, 47));
    // A B without its A.
    tensors.push((
        format!("{}.lora_B.weight", Q.replace("layers.0", "layers.1")),
        vec![48, 4],
    ));
    // An embedding LoRA.
    tensors.push((
        "base_model.model.language_model.model.decoder.embed_tokens.lora_embedding_A".into(),
        vec![4, 768],
    ));
    let dir = adapter("keys", OPT_CONFIG, &tensors);
    let e = load_err(&model_dir("blip2-opt-tiny"), std::slice::from_ref(&dir));
    let Error::Adapter(p) = &e else {
        panic!("expected an adapter error, got {e}");
    };
    assert_eq!(p.adapter, dir);
    assert_eq!(p.problems.len(), 4, "{e}");
    let msg = e.to_string();
    for want in [
        "unknown key: base_model.model.language_model.model.decoder.layers.9.self_attn.q_proj.lora_A.weight: the checkpoint has no tensor language_model.model.decoder.layers.9.self_attn.q_proj.weight",
        "shape mismatch: base_model.model.language_model.model.decoder.layers.0.self_attn.v_proj.lora_A.weight: expected [4, 48]",
        "unpaired: base_model.model.language_model.model.decoder.layers.1.self_attn.q_proj.lora_B.weight",
        "unsupported key: base_model.model.language_model.model.decoder.embed_tokens.lora_embedding_A",
    ] {
        assert!(msg.contains(want), "missing {want:?} in:\n{msg}");
    }
}

#[test]
fn a_rank_other_than_the_configs_is_a_shape_mismatch() {
    let dir = adapter("rank", OPT_CONFIG, &pair(Q, 2, 48, 48));
    let msg = load_err(&model_dir("blip2-opt-tiny"), &[dir]).to_string();
    assert!(
        msg.contains("expected [4, 48] (rank 4 from adapter_config.json"),
        "{msg}"
    );
}

#[test]
fn a_module_outside_target_modules_is_refused() {
    let fc1 = "base_model.model.language_model.model.decoder.layers.0.fc1";
    let dir = adapter("target", OPT_CONFIG, &pair(fc1, 4, 112, 48));
    let msg = load_err(&model_dir("blip2-opt-tiny"), &[dir]).to_string();
    assert!(msg.contains("not targeted"), "{msg}");
    assert!(
        msg.contains("language_model.model.decoder.layers.0.fc1"),
        "{msg}"
    );
}

#[test]
fn dora_is_refused_by_name() {
    let cfg = OPT_CONFIG.replace(r#""bias": "none""#, r#""bias": "none", "use_dora": true"#);
    let dir = adapter("dora", &cfg, &pair(Q, 4, 48, 48));
    let e = load_err(&model_dir("blip2-opt-tiny"), &[dir]);
    assert!(matches!(e, Error::Unsupported(_)), "{e}");
    assert!(e.to_string().contains("use_dora"), "{e}");
}

#[test]
fn missing_files_are_named() {
    let dir = adapter("nofile", OPT_CONFIG, &pair(Q, 4, 48, 48));
    std::fs::remove_file(dir.join("adapter_model.safetensors")).unwrap();
    let msg = load_err(&model_dir("blip2-opt-tiny"), std::slice::from_ref(&dir)).to_string();
    assert!(
        msg.contains("adapter_model.safetensors: file not found"),
        "{msg}"
    );
    std::fs::remove_file(dir.join("adapter_config.json")).unwrap();
    let msg = load_err(&model_dir("blip2-opt-tiny"), &[dir]).to_string();
    assert!(msg.contains("adapter_config.json: file not found"), "{msg}");
}

#[test]
fn a_quantized_checkpoint_takes_no_adapter() {
    let out = std::env::temp_dir().join(format!("blip2-lora-q8-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let opts = QuantizeOptions {
        dtype: DType::Q8,
        max_shard_bytes: blip2::model::save::MAX_SHARD_BYTES,
    };
    quantize_dir(&model_dir("blip2-opt-tiny"), &out, &opts).unwrap();
    let dir = fixtures().join("adapters/opt-lm-qv");
    let e = load_err(&out, &[dir]);
    assert!(matches!(e, Error::Unsupported(_)), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("q8 checkpoint written by `blip2 quantize`"),
        "{msg}"
    );
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn an_adapter_for_another_checkpoint_is_refused() {
    // The OPT adapter's modules do not exist in the T5 checkpoint.
    let dir = fixtures().join("adapters/opt-lm-qv");
    let e = load_err(&model_dir("blip2-flan-t5-tiny"), &[dir]);
    let msg = e.to_string();
    assert!(matches!(e, Error::Adapter(_)), "{msg}");
    assert!(msg.contains("unknown key: base_model.model.language_model.model.decoder.layers.0.self_attn.q_proj.lora_A.weight"), "{msg}");
}

/// The CLI: `--adapter` on caption gives the merged model's ids, `info` counts what was
/// merged, and more scales than adapters is refused.
#[test]
fn cli_adapter_flags() {
    let model = model_dir("blip2-opt-tiny");
    let adapter = fixtures().join("adapters/opt-qformer-qkv");
    let img = fixtures().join("images/scene_rgb.png");
    let out = blip2_ok(&[
        "caption".as_ref(),
        "--model".as_ref(),
        model.as_os_str(),
        "--device".as_ref(),
        "cpu".as_ref(),
        "--adapter".as_ref(),
        adapter.as_os_str(),
        "--adapter-scale".as_ref(),
        "0.5".as_ref(),
        "--json".as_ref(),
        "-q".as_ref(),
        img.as_os_str(),
    ]);
    let v: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    // The same merge through the library (`opt-stack`'s first half is this adapter at 0.5).
    let lib = Blip2::load(
        &model,
        LoadOptions {
            adapters: vec![AdapterSpec {
                dir: adapter.clone(),
                scale: 0.5,
            }],
            ..Default::default()
        },
    )
    .unwrap();
    let want = lib.caption(&blip2::load_image(&img).unwrap()).unwrap();
    assert_eq!(v["text"].as_str().unwrap(), want.text, "{out}");
    let ids: Vec<u32> = serde_json::from_value(v["token_ids"].clone()).unwrap();
    assert_eq!(ids, want.token_ids, "{out}");

    let info = blip2_ok(&[
        "info".as_ref(),
        "--model".as_ref(),
        model.as_os_str(),
        "--adapter".as_ref(),
        adapter.as_os_str(),
        "--json".as_ref(),
    ]);
    let v: serde_json::Value = serde_json::from_str(&info).unwrap();
    let a = &v["model"]["weights"]["adapters"][0];
    assert_eq!(
        a["merged_matrices"],
        lib.weight_stats().adapters[0].merged,
        "{info}"
    );
    assert!(a["merged_matrices"].as_u64().unwrap() > 0);

    let err = blip2_err(&[
        "caption".as_ref(),
        "--model".as_ref(),
        model.as_os_str(),
        "--adapter-scale".as_ref(),
        "0.5".as_ref(),
        img.as_os_str(),
    ]);
    assert!(
        err.contains("1 --adapter-scale values for 0 --adapter directories"),
        "{err}"
    );
}
