//! The LLaMA decoder alone against transformers' `LlamaForCausalLM` (fixture
//! `llama-tiny` from `tools/fixtures/make_instructblip.py`): head_dim 6 with 6 query and 3
//! K/V heads, llama3 rope scaling over all three frequency bands, attention and MLP
//! biases, tied embeddings; a left-padded batch with generate()'s position ids.

mod common;

use blip2::engine::DType;
use blip2::model::generate::{GenerationConfig, GenerationDefaults, decode};
use blip2::model::inputs::PaddedBatch;
use blip2::model::lm::llama::{LlamaConfig, RopeScaling};
use blip2::model::lm::{LanguageModel, LmConfig, LmInput};
use blip2::model::tokenizer::PaddingSide;
use blip2::model::{Checkpoint, WeightLoader};
use common::*;

/// f32 compute: relative 1e-4 of the logits' scale; only summation order and sin/cos/exp
/// implementations differ (the weights are f16-exact values in both).
const F32_REL_TOL: f64 = 1e-4;

fn load(dev: &blip2::Device) -> (LlamaConfig, Box<dyn LanguageModel>) {
    let dir = model_dir("llama-tiny");
    let cfg = LlamaConfig::from_file(dir.join("config.json")).unwrap();
    let ckpt = Checkpoint::open(&dir).unwrap();
    let vb = WeightLoader::new(&ckpt, dev, DType::F32);
    let lm = cfg.load(&vb).unwrap();
    vb.finish().unwrap();
    (cfg, lm)
}

/// The reference's left-padded rows without their padding, as the pipeline passes prompts.
fn rows(refs: &std::collections::HashMap<String, RefTensor>) -> Vec<Vec<u32>> {
    let ids = refs["llama.batch.input_ids"].id_rows();
    let mask = refs["llama.batch.attention_mask"].id_rows();
    ids.iter()
        .zip(&mask)
        .map(|(r, m)| {
            r.iter()
                .zip(m)
                .filter(|(_, m)| **m == 1)
                .map(|(t, _)| *t)
                .collect()
        })
        .collect()
}

fn input(lm: &dyn LanguageModel, rows: &[Vec<u32>], pad: u32) -> LmInput {
    // No image tokens here: u32::MAX never matches, so padding goes fully to the left.
    let batch = PaddedBatch::new(rows, pad, u32::MAX, PaddingSide::Left);
    let flat: Vec<u32> = batch.rows.concat();
    let embeds = lm
        .embed(&flat)
        .unwrap()
        .reshape(&[rows.len(), batch.len, lm.hidden_size()])
        .unwrap();
    LmInput { embeds, batch }
}

#[test]
fn config_reads_llama3_rope_and_gqa() {
    let cfg = LlamaConfig::from_file(model_dir("llama-tiny").join("config.json")).unwrap();
    assert_eq!(
        (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim
        ),
        (6, 3, 6)
    );
    assert!(matches!(cfg.rope_scaling, RopeScaling::Llama3 { factor, .. } if factor == 8.0));
    assert!(cfg.attention_bias && cfg.mlp_bias && cfg.tie_word_embeddings);
    assert_eq!(cfg.rope_theta, 500.0);
    // The three llama3 bands: wavelength 2π/f of 6.3 (kept), 50 (smoothed), 395 (÷ 8).
    let f = cfg.inv_freq();
    assert_eq!(f.len(), 3);
    assert_eq!(f[0], 1.0);
    let base2 = 1.0 / 500f64.powf(2.0 / 3.0);
    assert!((f[2] as f64 - base2 / 8.0).abs() < 1e-9, "{}", f[2]);
    let base1 = 1.0 / 500f64.powf(1.0 / 3.0);
    assert!(
        f[1] as f64 > base1 / 8.0 && (f[1] as f64) < base1,
        "{}",
        f[1]
    );
}

#[test]
fn padded_logits_match_transformers() {
    let refs = reference("instructblip.safetensors");
    for dev in devices() {
        let (cfg, lm) = load(&dev);
        let (logits, _) = lm
            .prompt_logits(input(&*lm, &rows(&refs), cfg.pad_token_id()), None)
            .unwrap();
        // Rows at padding positions attend to masked keys only and are never used; their
        // values depend on how a fully masked softmax is handled, so compare real rows.
        let mask = refs["llama.batch.attention_mask"].ids();
        let want = &refs["llama.batch.logits"];
        assert_eq!(logits.shape(), &want.shape[..]);
        let v = want.shape[2];
        let got = logits.to_vec_f32().unwrap();
        let (mut g, mut w) = (Vec::new(), Vec::new());
        for (pos, &m) in mask.iter().enumerate() {
            if m == 1 {
                g.extend_from_slice(&got[pos * v..(pos + 1) * v]);
                w.extend_from_slice(&want.f[pos * v..(pos + 1) * v]);
            }
        }
        let e = rel_err(&g, &w);
        assert!(e <= F32_REL_TOL, "llama batch logits on {dev:?}: {e:e}");
    }
}

#[test]
fn greedy_and_beam_ids_match_transformers_batched_and_alone() {
    let refs = reference("instructblip.safetensors");
    let rows = rows(&refs);
    for dev in devices() {
        let (cfg, lm) = load(&dev);
        let defaults = GenerationDefaults {
            eos_token_ids: vec![cfg.eos_token_id()],
            pad_token_id: cfg.pad_token_id(),
        };
        let run = |rows: &[Vec<u32>], wanted: &GenerationConfig| -> Vec<Vec<u32>> {
            let settings = wanted.resolve(&defaults).unwrap();
            let pre = lm
                .prefill(input(&*lm, rows, cfg.pad_token_id()), wanted.max_new_tokens)
                .unwrap();
            let mut dec = pre.decoder;
            decode(pre.logits, pre.seen, &settings, &mut *dec, &mut |_| {})
                .unwrap()
                .tokens
        };
        let greedy = GenerationConfig {
            max_new_tokens: 12,
            ..Default::default()
        };
        let beam = GenerationConfig {
            max_new_tokens: 12,
            ..GenerationConfig::beam_search(3)
        };
        for (mode, g) in [("greedy", &greedy), ("beam3", &beam)] {
            let got = run(&rows, g);
            for (r, want) in refs[&format!("llama.batch.{mode}.new_ids")]
                .id_rows()
                .iter()
                .enumerate()
            {
                let mut ours = got[r].clone();
                ours.resize(want.len(), cfg.pad_token_id());
                assert_eq!(&ours, want, "{mode} row {r} on {dev:?}");
            }
        }
        for (r, row) in rows.iter().enumerate() {
            let alone = run(std::slice::from_ref(row), &greedy);
            assert_eq!(
                alone[0],
                refs[&format!("llama.row{r}.greedy.new_ids")].ids(),
                "row {r} alone on {dev:?}"
            );
        }
    }
}

/// Bad configs are typed errors naming the key.
#[test]
fn invalid_llama_configs_are_rejected() {
    let dir = std::env::temp_dir().join(format!("blip2-llama-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases = [
        (
            r#"{"hidden_size": 36, "num_attention_heads": 6, "num_key_value_heads": 4}"#,
            "num_key_value_heads",
        ),
        (
            r#"{"hidden_size": 35, "num_attention_heads": 5}"#,
            "head_dim",
        ),
        (
            r#"{"rope_parameters": {"rope_type": "yarn", "factor": 2.0}}"#,
            "rope_type",
        ),
        (r#"{"rope_scaling": {"type": "linear"}}"#, "factor"),
    ];
    for (json, key) in cases {
        let p = dir.join("config.json");
        std::fs::write(&p, json).unwrap();
        let err = LlamaConfig::from_file(&p).unwrap_err().to_string();
        assert!(err.contains(key), "{json}: {err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
