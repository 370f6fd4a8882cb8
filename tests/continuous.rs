//! Continuous batching (`Blip2::decode_batch`) and chat KV-cache reuse on the tiny
//! fixtures: sequences joining a running batch at different steps, with their own
//! settings, leaving early or removed, give exactly the token ids they give alone
//! (greedy, and sampled with a seed); a chat that reuses the previous turn's cache gives
//! the answers of one that prefills the whole history, while prefilling fewer tokens.
//!
//! Tolerance: token ids are compared exactly. A row's logits in a batch may differ from
//! its logits alone in the last bits (longer masked attention rows, batched GEMMs), which
//! on these fixtures never flips a choice; the same holds for the per-wave batches of
//! `tests/generation.rs`.

mod common;

use std::collections::HashMap;

use blip2::engine::ops;
use blip2::engine::{DType, Device};
use blip2::{Blip2, GenerationConfig, ImageFeatures, Join, TokenEvent};
use common::*;

/// Every family: BLIP-2 OPT, InstructBLIP Vicuna (LLaMA, grouped-query attention, rope
/// scaling) and BLIP-2 Flan-T5 (encoder-decoder: each row its own encoder output, prompts
/// right-padded).
const BATCHED: [&str; 3] = [
    "blip2-opt-tiny",
    "instructblip-vicuna-tiny",
    "blip2-flan-t5-tiny",
];

/// One request: image row, prompt, settings, and the step before which it joins.
struct Req {
    row: usize,
    prompt: Option<&'static str>,
    cfg: GenerationConfig,
    join_at: usize,
    /// Removed (client gone) before this step, if any.
    remove_at: Option<usize>,
}

fn greedy(max: usize, min: usize) -> GenerationConfig {
    GenerationConfig {
        max_new_tokens: max,
        min_new_tokens: min,
        ..Default::default()
    }
}

fn requests() -> Vec<Req> {
    let long = "Question: what is in the picture and what colour is the thing on the left side of it? Answer:";
    vec![
        // Starts alone with a short prompt (the caption: image tokens + BOS).
        Req {
            row: 0,
            prompt: None,
            cfg: greedy(40, 40),
            join_at: 0,
            remove_at: None,
        },
        // A longer prompt joins later: the batch shifts right to make room.
        Req {
            row: 1,
            prompt: Some(long),
            cfg: greedy(12, 0),
            join_at: 3,
            remove_at: None,
        },
        Req {
            row: 1,
            prompt: Some(QUESTION),
            cfg: greedy(30, 25),
            join_at: 3,
            remove_at: None,
        },
        // Its own penalties.
        Req {
            row: 0,
            prompt: Some(QUESTION),
            cfg: GenerationConfig {
                repetition_penalty: 1.5,
                no_repeat_ngram_size: 2,
                ..greedy(20, 20)
            },
            join_at: 7,
            remove_at: None,
        },
        // Sampled with a seed: its own random stream.
        Req {
            row: 1,
            prompt: None,
            cfg: GenerationConfig {
                do_sample: true,
                seed: Some(11),
                top_k: 20,
                ..greedy(25, 25)
            },
            join_at: 9,
            remove_at: None,
        },
        // Leaves before its end (client gone).
        Req {
            row: 0,
            prompt: Some(long),
            cfg: greedy(30, 30),
            join_at: 2,
            remove_at: Some(8),
        },
        // Joins late, after the cache has grown and compacted.
        Req {
            row: 1,
            prompt: Some(long),
            cfg: greedy(35, 35),
            join_at: 33,
            remove_at: None,
        },
    ]
}

fn alone(model: &Blip2, feats: &[ImageFeatures], r: &Req) -> Vec<u32> {
    let s = model.resolve_generation(&r.cfg).unwrap();
    model
        .generate_from_features_with(&feats[r.row], &[r.prompt], &s, &mut |_| {})
        .unwrap()
        .remove(0)
        .token_ids
}

/// Several rows joining at the same step: prompts of different lengths (one longer than
/// the batch's write column, so the batch shifts right), a sampled row, a row that ends at
/// its first token, more joiners than free rows (the cache gains rows), and joiners taking
/// the rows of sequences that ended or were removed.
fn joining_together() -> Vec<Req> {
    // Within InstructBLIP's 32 Q-Former positions.
    let long = "Question: what colour is the thing on the left? Answer:";
    let longer = "Question: what is in the picture and what colour is the thing on the left side of it? Answer:";
    let at = |row, prompt, cfg, join_at, remove_at| Req {
        row,
        prompt,
        cfg,
        join_at,
        remove_at,
    };
    vec![
        at(0, None, greedy(30, 30), 0, None),
        at(1, Some(QUESTION), greedy(12, 12), 0, None),
        at(1, Some(long), greedy(6, 6), 2, None),
        at(0, Some(longer), greedy(20, 0), 2, None),
        at(
            1,
            None,
            GenerationConfig {
                do_sample: true,
                seed: Some(3),
                top_k: 20,
                ..greedy(18, 18)
            },
            2,
            None,
        ),
        at(0, Some(QUESTION), greedy(1, 0), 2, None),
        at(0, Some(long), greedy(25, 25), 2, Some(9)),
        at(1, Some(long), greedy(10, 10), 10, None),
        at(0, None, greedy(14, 14), 10, None),
        at(1, Some(longer), greedy(8, 8), 10, None),
        at(0, Some(QUESTION), greedy(9, 9), 10, None),
    ]
}

/// Runs `reqs` in one step-level batch (those joining at the same step added together
/// when `together`, else one by one) and checks every row's ids against its run alone.
fn check_batched(name: &str, model: &Blip2, feats: &[ImageFeatures], reqs: &[Req], together: bool) {
    let want: Vec<Vec<u32>> = reqs.iter().map(|r| alone(model, feats, r)).collect();
    let settings: Vec<_> = reqs
        .iter()
        .map(|r| model.resolve_generation(&r.cfg).unwrap())
        .collect();
    let both = both(name, model, feats);
    let mut batch = model.decode_batch();
    let mut got: HashMap<usize, Vec<u32>> = HashMap::new();
    let mut streamed: HashMap<usize, Vec<u32>> = HashMap::new();
    let mut sizes = Vec::new();
    let mut on = |e: &TokenEvent| streamed.entry(e.row).or_default().push(e.token_id);
    let mut step = 0;
    loop {
        let joining: Vec<usize> = (0..reqs.len())
            .filter(|&i| reqs[i].join_at == step)
            .collect();
        if together && joining.len() > 1 {
            let joins: Vec<Join> = joining
                .iter()
                .map(|&i| Join {
                    id: i,
                    row: reqs[i].row,
                    prompt: reqs[i].prompt,
                    settings: &settings[i],
                })
                .collect();
            let before = batch.len();
            let out = batch.add_many(&both, &joins, &mut on).unwrap();
            let mut running = 0;
            for (id, r) in out {
                match r.unwrap() {
                    Some(g) => {
                        got.insert(id, g.token_ids);
                    }
                    None => running += 1,
                }
            }
            assert_eq!(batch.len(), before + running, "{name}: rows after the join");
        } else {
            for &i in &joining {
                let r = &reqs[i];
                if let Some(g) = batch
                    .add(i, &feats[r.row], 0, r.prompt, &settings[i], &mut on)
                    .unwrap()
                {
                    got.insert(i, g.token_ids);
                }
            }
        }
        for (id, r) in reqs.iter().enumerate() {
            if r.remove_at == Some(step) {
                assert!(batch.remove(id).unwrap(), "{name}: {id} still running");
            }
        }
        if batch.is_empty() && reqs.iter().all(|r| r.join_at <= step) {
            break;
        }
        sizes.push(batch.len());
        for (id, g) in batch.step(&mut on).unwrap() {
            got.insert(id, g.unwrap().token_ids);
        }
        step += 1;
    }
    for (id, (r, w)) in reqs.iter().zip(&want).enumerate() {
        match r.remove_at {
            None => {
                assert_eq!(
                    got.get(&id),
                    Some(w),
                    "{name}: request {id} batched vs alone"
                );
                assert_eq!(streamed.get(&id), Some(w), "{name}: request {id} streamed");
            }
            Some(at) => {
                assert!(!got.contains_key(&id), "{name}: removed {id} has no answer");
                let s = &streamed[&id];
                assert_eq!(s[..], w[..s.len()], "{name}: removed {id}'s tokens so far");
                assert_eq!(
                    s.len(),
                    at - r.join_at + 1,
                    "{name}: {id} stopped at removal"
                );
            }
        }
    }
    assert!(
        sizes.iter().any(|&n| n >= 4),
        "{name}: rows ran together: {sizes:?}"
    );
    assert_eq!(batch.steps(), step, "{name}: one forward per step");
}

/// Both images' features in one batch, each row its own image's (InstructBLIP's reusable
/// features are the ViT output: its Q-Former reads each row's prompt).
fn both(name: &str, model: &Blip2, feats: &[ImageFeatures]) -> ImageFeatures {
    let reusable = |f: &ImageFeatures| match &f.vision_output {
        Some(v) if name.starts_with("instructblip") => v.clone(),
        _ => f.projected.clone(),
    };
    let t = ops::concat(&[&reusable(&feats[0]), &reusable(&feats[1])], 0).unwrap();
    model.features_from_reusable(t).unwrap()
}

fn features(model: &Blip2) -> Vec<ImageFeatures> {
    [image("rgb"), image("jpeg")]
        .iter()
        .map(|i| model.image_features(&[i]).unwrap())
        .collect()
}

#[test]
fn joining_rows_equal_their_runs_alone() {
    for name in BATCHED {
        let model = load(name, &Device::cpu(), DType::F32);
        check_batched(name, &model, &features(&model), &requests(), false);
    }
}

/// The same on the GPU (llvmpipe in CI): the masked attention over the cache, T5's
/// cross-attention padding and the row copies are the device's.
#[test]
fn joining_rows_on_the_gpu_equal_their_runs_alone() {
    let Some(gpu) = blip2::engine::testing::gpu() else {
        return;
    };
    for name in BATCHED {
        let model = load(name, &gpu, DType::F32);
        check_batched(name, &model, &features(&model), &joining_together(), true);
    }
}

#[test]
fn rows_joining_together_equal_their_runs_alone() {
    for name in BATCHED {
        let model = load(name, &Device::cpu(), DType::F32);
        let feats = features(&model);
        let reqs = joining_together();
        check_batched(name, &model, &feats, &reqs, true);
        // The prompts of a step are prefilled in one forward: the prefilled tokens are the
        // prompts' own (padding not counted).
        let mut batch = model.decode_batch();
        let s = model.resolve_generation(&greedy(3, 3)).unwrap();
        let both = both(name, &model, &feats);
        let prompts = [None, Some(QUESTION)];
        let joins: Vec<Join> = prompts
            .iter()
            .enumerate()
            .map(|(i, &prompt)| Join {
                id: i,
                row: i,
                prompt,
                settings: &s,
            })
            .collect();
        batch.add_many(&both, &joins, &mut |_| {}).unwrap();
        let tokens: usize = prompts
            .iter()
            .map(|p| model.prompt_ids(*p).unwrap().len())
            .sum();
        assert_eq!(batch.prefilled_tokens(), tokens, "{name}");
        assert_eq!(batch.len(), 2);
        // A duplicate id and a row out of range fail alone; the others join.
        let joins = [
            Join {
                id: 0,
                row: 0,
                prompt: None,
                settings: &s,
            },
            Join {
                id: 5,
                row: 2,
                prompt: None,
                settings: &s,
            },
            Join {
                id: 6,
                row: 1,
                prompt: None,
                settings: &s,
            },
        ];
        let out = batch.add_many(&both, &joins, &mut |_| {}).unwrap();
        assert!(out[0].1.is_err() && out[1].1.is_err(), "{name}");
        assert!(matches!(out[2].1, Ok(None)), "{name}");
        assert_eq!(batch.ids(), vec![0, 1, 6], "{name}");
    }
}

#[test]
fn a_row_that_ends_at_its_first_token_takes_no_row() {
    let model = load("blip2-opt-tiny", &Device::cpu(), DType::F32);
    let feats = model.image_features(&[&image("rgb")]).unwrap();
    let mut batch = model.decode_batch();
    let s = model.resolve_generation(&greedy(1, 0)).unwrap();
    let g = batch.add(0, &feats, 0, None, &s, &mut |_| {}).unwrap();
    assert_eq!(g.map(|g| g.token_ids.len()), Some(1));
    assert!(batch.is_empty());
    assert!(
        batch.add(1, &feats, 3, None, &s, &mut |_| {}).is_err(),
        "row out of range"
    );
    let s = model
        .resolve_generation(&GenerationConfig::beam_search(2))
        .unwrap();
    assert!(
        batch.add(2, &feats, 0, None, &s, &mut |_| {}).is_err(),
        "beam search refused"
    );
}

/// A three-turn chat with cache reuse answers as one without; decoder-only BLIP-2 prefills
/// only the new tokens after the first turn; InstructBLIP (its Q-Former reads the whole
/// prompt) and T5 (its encoder reads the whole history) prefill every prompt whole.
#[test]
fn chat_reuses_the_kv_cache_across_turns() {
    let dev = Device::cpu();
    let questions = ["what is it?", "colour?", "why?"];
    let cfgs = [
        greedy(5, 0),
        GenerationConfig {
            do_sample: true,
            seed: Some(5),
            ..greedy(4, 0)
        },
    ];
    for name in [
        "blip2-opt-tiny",
        "instructblip-vicuna-tiny",
        "blip2-flan-t5-tiny",
    ] {
        let model = load(name, &dev, DType::F32);
        let img = image("jpeg");
        for cfg in &cfgs {
            let s = model.resolve_generation(cfg).unwrap();
            let mut reuse = model.chat(&img).unwrap();
            let mut whole = model.chat(&img).unwrap();
            whole.set_cache_reuse(false);
            // InstructBLIP's Q-Former reads the whole history in 32 positions: two turns.
            let turns = if name.starts_with("instructblip") {
                2
            } else {
                3
            };
            for (t, q) in questions.iter().take(turns).enumerate() {
                let full = model.prompt_ids(Some(&whole.prompt(q))).unwrap().len();
                let a = reuse.ask_with(q, &s, &mut |_| {}).unwrap();
                let b = whole.ask_with(q, &s, &mut |_| {}).unwrap();
                assert_eq!(a.token_ids, b.token_ids, "{name} turn {t}: reuse vs whole");
                assert_eq!(a.text, b.text);
                assert_eq!(whole.last_prefill_tokens(), full, "{name} turn {t}");
                let n = reuse.last_prefill_tokens();
                if t > 0 && name == "blip2-opt-tiny" {
                    assert!(
                        n > 0 && n < full,
                        "{name} turn {t}: prefilled {n} of {full}"
                    );
                } else {
                    assert_eq!(n, full, "{name} turn {t}: no reuse");
                }
            }
            assert_eq!(reuse.turns(), whole.turns());
        }
    }
}

/// The chat the C and Python bindings keep (`SharedChat`: the model behind an `Arc`) keeps
/// its KV cache between calls too, with the same answers as whole prefills.
#[test]
fn shared_chat_keeps_the_kv_cache_between_calls() {
    let model = std::sync::Arc::new(load("blip2-opt-tiny", &Device::cpu(), DType::F32));
    let img = image("jpeg");
    let features = model.image_features(&[&img]).unwrap();
    let mut shared = blip2::SharedChat::new(model.clone(), features).unwrap();
    let mut whole = model.chat(&img).unwrap();
    whole.set_cache_reuse(false);
    let cfg = greedy(5, 0);
    for (t, q) in ["what is it?", "colour?", "why?"].iter().enumerate() {
        let full = model.prompt_ids(Some(&whole.prompt(q))).unwrap().len();
        let (a, n) = shared.with(|c| (c.ask(q, &cfg).unwrap(), c.last_prefill_tokens()));
        let b = whole.ask(q, &cfg).unwrap();
        assert_eq!(a.token_ids, b.token_ids, "turn {t}");
        if t > 0 {
            assert!(n > 0 && n < full, "turn {t}: prefilled {n} of {full}");
        }
    }
    assert_eq!(shared.with(|c| c.turns().to_vec()), whole.turns());
}
