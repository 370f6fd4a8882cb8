//! GPU dispatches of one decode step, counted by the runtime (`GpuStats::dispatches`): with
//! the decode fusion (`ops::linear_fused`: norm prologues, activation/gate and residual
//! epilogues; `ops::attention_append`: the new K/V written by the attention) a step is at
//! most 8 dispatches per language-model layer plus a constant, for the OPT and T5 fixtures
//! and for random OPT layers at OPT-2.7B width; a greedy step reads back 8 bytes (the
//! token chosen on the device and its row's non-finite count) in one submit. Skipped
//! without a GPU adapter (set BLIP2_REQUIRE_GPU=1 to fail instead).

mod common;

use blip2::engine::gpu::{GpuContext, GpuOptions, GpuStats};
use blip2::engine::testing::devices;
use blip2::engine::{DType, Device};
use blip2::model::generate::GenerationConfig;
use blip2::model::inputs::PaddedBatch;
use blip2::model::lm::opt::OptConfig;
use blip2::model::lm::{LmConfig, LmInput};
use blip2::model::tokenizer::PaddingSide;
use blip2::model::{Checkpoint, WeightLoader};
use common::*;

/// The bound of issue 14: dispatches per layer.
const PER_LAYER: u64 = 8;
/// Dispatches outside the layers: token and position embedding gathers and their add
/// (OPT), the padding mask and T5's position bias are uploads, the final norm, T5's tied
/// scale, the LM head.
const CONSTANT: u64 = 6;

/// The counters are the device's, shared by every test thread: counting tests run one at a
/// time.
static COUNTING: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn gpu() -> Option<Device> {
    devices().into_iter().find(|d| matches!(d, Device::Gpu(_)))
}

/// A second GPU context on the same adapter, with the environment's options changed by
/// `change` (a fast path turned off, for an on/off comparison).
fn gpu_with(change: impl FnOnce(&mut GpuOptions)) -> Device {
    let mut opts = GpuOptions::from_env();
    change(&mut opts);
    Device::Gpu(std::sync::Arc::new(GpuContext::with_options(opts).unwrap()))
}

/// A fixture pipeline on `d` with f32 weights, and the features of two test images.
fn two_images(name: &str, d: &Device) -> (blip2::Blip2, blip2::ImageFeatures) {
    let model = load(name, d, DType::F32);
    let imgs = [image("rgb"), image("jpeg")];
    let refs: Vec<_> = imgs.iter().collect();
    let feats = model.image_features(&refs).unwrap();
    (model, feats)
}

fn stats(dev: &Device) -> GpuStats {
    match dev {
        Device::Gpu(g) => g.stats(),
        Device::Cpu => unreachable!("GPU only"),
    }
}

/// Counters between the second and the last of `marks` (the first step may compile and
/// warm up), per step.
fn per_step(marks: &[GpuStats]) -> GpuStats {
    let (a, b) = (&marks[1], marks.last().unwrap());
    let steps = marks.len() as u64 - 2;
    GpuStats {
        dispatches: (b.dispatches - a.dispatches) / steps,
        submits: (b.submits - a.submits) / steps,
        readback_bytes: (b.readback_bytes - a.readback_bytes) / steps,
        ..GpuStats::default()
    }
}

/// Counters per decode step of a fixture pipeline's greedy generation, and its layers.
fn fixture_step(name: &str, dev: &Device) -> (GpuStats, u64) {
    let model = load(name, dev, DType::F32);
    let layers = model.config.text_config.as_ref().unwrap().decoder_layers() as u64;
    let img = image("rgb");
    let feats = model.image_features(&[&img]).unwrap();
    let settings = model
        .resolve_generation(&GenerationConfig {
            max_new_tokens: 6,
            min_new_tokens: 6,
            ..Default::default()
        })
        .unwrap();
    let mut marks = Vec::new();
    model
        .generate_from_features_with(&feats, &[None], &settings, &mut |_| marks.push(stats(dev)))
        .unwrap();
    assert!(marks.len() >= 4, "{name}: {} tokens", marks.len());
    (per_step(&marks), layers)
}

#[test]
fn fixture_decode_steps_are_at_most_8_dispatches_per_layer() {
    let Some(dev) = gpu() else { return };
    let _one = COUNTING.lock().unwrap_or_else(|e| e.into_inner());
    for name in ["blip2-opt-tiny", "blip2-flan-t5-tiny"] {
        let (s, layers) = fixture_step(name, &dev);
        let d = s.dispatches;
        eprintln!("{name}: {s:?} per decode step, {layers} layers");
        assert!(
            d <= PER_LAYER * layers + CONSTANT,
            "{name}: {d} dispatches per step for {layers} layers"
        );
        // Greedy without processors that need the scores (min_new_tokens' eos ban is an
        // exclusion of the device argmax): the chosen id and the row's non-finite count,
        // 8 bytes, are all a step reads back, in the step's one submit.
        assert_eq!(s.readback_bytes, 8, "{name}: {s:?}");
        assert_eq!(s.submits, 1, "{name}: {s:?}");
    }
}

#[test]
fn opt_2_7b_wide_decode_step_is_at_most_8_dispatches_per_layer() {
    let Some(dev) = gpu() else { return };
    let _one = COUNTING.lock().unwrap_or_else(|e| e.into_inner());
    // OPT-2.7B's layer shape (hidden 2560, 32 heads, ffn 10240) with 2 layers and a small
    // vocabulary, random f16 weights (as `blip2 bench --dtype f16` loads them).
    let cfg = OptConfig {
        hidden_size: 2560,
        word_embed_proj_dim: 2560,
        ffn_dim: 10240,
        num_attention_heads: 32,
        num_hidden_layers: 2,
        vocab_size: 512,
        ..OptConfig::default()
    };
    let ckpt = Checkpoint::random(7);
    let vb = WeightLoader::new(&ckpt, &dev, DType::F16);
    let lm = cfg.load(&vb).unwrap();
    vb.finish().unwrap();
    let rows = vec![vec![2u32, 17, 33, 41, 5]];
    let batch = PaddedBatch::new(&rows, 1, u32::MAX, PaddingSide::Left);
    let embeds = lm
        .embed(&rows[0])
        .unwrap()
        .reshape(&[1, batch.len, lm.hidden_size()])
        .unwrap();
    let mut pre = lm.prefill(LmInput { embeds, batch }, 8).unwrap();
    let mut marks = vec![stats(&dev)];
    for t in [3u32, 9, 27, 81, 243] {
        let logits = pre.decoder.step(&[t]).unwrap();
        assert!(logits.iter().all(|v| v.is_finite()));
        marks.push(stats(&dev));
    }
    let d = per_step(&marks).dispatches;
    eprintln!("OPT-2.7B width, 2 layers: {d} dispatches per decode step");
    assert!(d <= PER_LAYER * 2 + CONSTANT, "{d} dispatches per step");
}

/// Tokens chosen on the device are the host's choice: the same fixtures generated greedily
/// (min_new_tokens = max_new_tokens, so every step bans eos through the kernel's exclusion)
/// on a context with the device argmax and on one without it (logits read back, host
/// argmax after the processors) give the same ids, and only the first reads 8 bytes a step.
#[test]
fn device_greedy_tokens_are_the_host_argmax() {
    let Some(dev) = gpu() else { return };
    let _one = COUNTING.lock().unwrap_or_else(|e| e.into_inner());
    let host = gpu_with(|o| o.device_argmax = false);
    for name in ["blip2-opt-tiny", "blip2-flan-t5-tiny"] {
        let run = |d: &Device| {
            let (model, feats) = two_images(name, d);
            let settings = model
                .resolve_generation(&GenerationConfig {
                    max_new_tokens: 7,
                    min_new_tokens: 7,
                    ..Default::default()
                })
                .unwrap();
            let mut marks = Vec::new();
            let out = model
                .generate_from_features_with(
                    &feats,
                    &[None, Some("Question: what is it? Answer:")],
                    &settings,
                    &mut |e| {
                        if e.row == 0 {
                            marks.push(stats(d))
                        }
                    },
                )
                .unwrap();
            let ids: Vec<Vec<u32>> = out.into_iter().map(|g| g.token_ids).collect();
            (ids, per_step(&marks).readback_bytes)
        };
        let (on_device, dev_bytes) = run(&dev);
        let (on_host, host_bytes) = run(&host);
        assert_eq!(on_device, on_host, "{name}");
        // Two rows: 8 bytes each, against two logits rows.
        assert_eq!(dev_bytes, 16, "{name}");
        assert!(host_bytes > 16, "{name}: {host_bytes}");
    }
}

/// Continuous batching (`DecodeBatch`) and a chat's reused cache (`RowBatch`) choose greedy
/// tokens on the device too: a step of three greedy rows reads back 8 bytes a row in one
/// submit (the rows exclude the same ids, so one argmax dispatch serves them), and a chat
/// turn's decode steps read back 8 bytes each.
#[test]
fn batched_and_chat_greedy_steps_read_back_8_bytes_a_row() {
    use blip2::Join;
    let Some(dev) = gpu() else { return };
    let _one = COUNTING.lock().unwrap_or_else(|e| e.into_inner());
    for name in ["blip2-opt-tiny", "blip2-flan-t5-tiny"] {
        let model = load(name, &dev, DType::F32);
        let imgs = [image("rgb"), image("jpeg")];
        let refs: Vec<_> = imgs.iter().collect();
        let feats = model.image_features(&refs).unwrap();
        let settings = model
            .resolve_generation(&GenerationConfig {
                max_new_tokens: 8,
                min_new_tokens: 8,
                ..Default::default()
            })
            .unwrap();
        let prompts = [
            None,
            Some("Question: what is it? Answer:"),
            Some("a photo of"),
        ];
        let joins: Vec<Join> = prompts
            .iter()
            .enumerate()
            .map(|(i, &prompt)| Join {
                id: i,
                row: i % 2,
                prompt,
                settings: &settings,
            })
            .collect();
        let mut batch = model.decode_batch();
        for (id, r) in batch.add_many(&feats, &joins, &mut |_| {}).unwrap() {
            assert!(matches!(r, Ok(None)), "{name}: sequence {id} {r:?}");
        }
        let mut marks = vec![stats(&dev)];
        for _ in 0..4 {
            assert!(batch.step(&mut |_| {}).unwrap().is_empty(), "{name}");
            marks.push(stats(&dev));
        }
        let s = per_step(&marks);
        assert_eq!(s.readback_bytes, 3 * 8, "{name}: {s:?}");
        assert_eq!(s.submits, 1, "{name}: {s:?}");
    }
    // A chat reuses its cache on decoder-only models: its second turn decodes from it.
    let model = load("blip2-opt-tiny", &dev, DType::F32);
    let settings = model
        .resolve_generation(&GenerationConfig {
            max_new_tokens: 6,
            min_new_tokens: 6,
            ..Default::default()
        })
        .unwrap();
    let mut chat = model.chat(&image("jpeg")).unwrap();
    chat.ask_with("what is it?", &settings, &mut |_| {})
        .unwrap();
    let mut marks = Vec::new();
    chat.ask_with("colour?", &settings, &mut |_| marks.push(stats(&dev)))
        .unwrap();
    assert!(chat.last_prefill_tokens() > 0);
    let s = per_step(&marks);
    assert_eq!(s.readback_bytes, 8, "chat: {s:?}");
}

/// Sampled rows draw from their top-k candidates chosen on the device: the same seeded
/// requests on a context with the device top-k kernel, on one without it (the rows read
/// back whole and their candidates taken on the host) and drawing from whole rows give
/// the same ids, exactly, and a
/// step of two sampled rows reads back two candidate slots (k = 50 + the margin, room for
/// twice that with ties) instead of two vocabulary rows. That a draw from the candidates
/// is the draw from the whole row is `sampling::candidates_draw_what_the_whole_row_draws`.
#[test]
fn sampled_rows_read_back_their_top_k_candidates() {
    use blip2::Join;
    use blip2::model::generate::sampling::CANDIDATE_MARGIN;
    let Some(dev) = gpu() else { return };
    let _one = COUNTING.lock().unwrap_or_else(|e| e.into_inner());
    let host = gpu_with(|o| o.device_topk = false);
    for name in ["blip2-opt-tiny", "blip2-flan-t5-tiny"] {
        // `ngram`: a no-repeat n-gram size longer than any sequence here bans nothing but
        // makes the rows read their logits back whole and draw from them.
        let run = |d: &Device, ngram: usize| {
            let (model, feats) = two_images(name, d);
            let settings: Vec<_> = [3u64, 4]
                .iter()
                .map(|&seed| {
                    model
                        .resolve_generation(&GenerationConfig {
                            do_sample: true,
                            top_k: 50,
                            top_p: 0.95,
                            temperature: 0.8,
                            seed: Some(seed),
                            max_new_tokens: 8,
                            min_new_tokens: 8,
                            no_repeat_ngram_size: ngram,
                            ..Default::default()
                        })
                        .unwrap()
                })
                .collect();
            let joins: Vec<Join> = (0..2)
                .map(|i| Join {
                    id: i,
                    row: i,
                    prompt: None,
                    settings: &settings[i],
                })
                .collect();
            let mut batch = model.decode_batch();
            let mut ids = vec![Vec::new(); 2];
            let mut record = |e: &blip2::TokenEvent| ids[e.row].push(e.token_id);
            for (id, r) in batch.add_many(&feats, &joins, &mut record).unwrap() {
                assert!(matches!(r, Ok(None)), "{name}: sequence {id} {r:?}");
            }
            let mut marks = vec![stats(d)];
            for _ in 0..4 {
                assert!(batch.step(&mut record).unwrap().is_empty(), "{name}");
                marks.push(stats(d));
            }
            (ids, per_step(&marks).readback_bytes)
        };
        let (on_device, dev_bytes) = run(&dev, 0);
        let (on_host, host_bytes) = run(&host, 0);
        let (whole, _) = run(&dev, 1000);
        assert_eq!(on_device, on_host, "{name}");
        assert_eq!(on_device, whole, "{name}: candidates vs whole rows");
        let k = 50 + CANDIDATE_MARGIN as u64;
        // Per row: count, non-finite count, then (id, value) slots for 2k candidates.
        assert_eq!(dev_bytes, 2 * (2 + 2 * 2 * k) * 4, "{name}");
        // The fixtures' vocabularies are small (OPT tiny: 768, 6,144 bytes for two rows);
        // at OPT's 50,272 a row is 201 KB against 936 bytes of candidates.
        assert!(host_bytes > dev_bytes, "{name}: {host_bytes}");
    }
}

/// Beam search chooses its candidates on the device: each step's log-softmax there, then
/// every beam row's best 2·num_beams entries (ties past them too, up to a margin of 16) read
/// back instead of its logits row: (2 + 2·(keep + 16)) words a row. Tokens and scores
/// equal, to the bit, a context whose top-k kernel is off (rows read back and chosen on
/// the host from the same device log-softmax), and the tokens equal the CPU backend's
/// (scores within 1e-3: the fixtures' GPU and CPU logits differ by ~1e-5 relative, summed
/// over up to 8 steps). That the host's full-row search equals the candidates' is
/// `beam::tests::device_candidates_give_the_host_search`.
#[test]
fn beam_search_reads_back_its_candidates() {
    let Some(dev) = gpu() else { return };
    let _one = COUNTING.lock().unwrap_or_else(|e| e.into_inner());
    let host = gpu_with(|o| o.device_topk = false);
    let (beams, images) = (3usize, 2usize);
    for name in ["blip2-opt-tiny", "blip2-flan-t5-tiny"] {
        // (ids, scores, bytes read back) of a search of `n` new tokens, all of them made
        // (min_new_tokens bans eos until the end).
        let run = |d: &Device, n: usize| {
            let (model, feats) = two_images(name, d);
            let settings = model
                .resolve_generation(&GenerationConfig {
                    num_beams: beams,
                    max_new_tokens: n,
                    min_new_tokens: n,
                    ..Default::default()
                })
                .unwrap();
            let before = match d {
                Device::Gpu(_) => stats(d).readback_bytes,
                Device::Cpu => 0,
            };
            let out = model
                .generate_from_features_with(&feats, &[None, None], &settings, &mut |_| {})
                .unwrap();
            let bytes = match d {
                Device::Gpu(_) => stats(d).readback_bytes - before,
                Device::Cpu => 0,
            };
            let ids: Vec<Vec<u32>> = out.iter().map(|g| g.token_ids.clone()).collect();
            let scores: Vec<f32> = out.iter().map(|g| g.score.unwrap()).collect();
            (ids, scores, bytes)
        };
        let (ids, scores, bytes8) = run(&dev, 8);
        let (_, _, bytes4) = run(&dev, 4);
        let (host_ids, host_scores, host8) = run(&host, 8);
        let (_, _, host4) = run(&host, 4);
        assert_eq!(ids, host_ids, "{name}");
        let bits = |v: &[f32]| v.iter().map(|s| s.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&scores), bits(&host_scores), "{name}");
        let (cpu_ids, cpu_scores, _) = run(&Device::Cpu, 8);
        assert_eq!(ids, cpu_ids, "{name}: GPU vs CPU");
        for (g, c) in scores.iter().zip(&cpu_scores) {
            assert!((g - c).abs() <= 1e-3, "{name}: {g} vs {c}");
        }
        // Four more steps, each over images × beams rows; eos is one id: keep = 2·beams.
        let per_step = (bytes8 - bytes4) / 4;
        let keep = 2 * beams as u64;
        let row = (2 + 2 * (keep + 16)) * 4;
        assert_eq!(per_step, (images * beams) as u64 * row, "{name}");
        let host_step = (host8 - host4) / 4;
        assert!(
            host_step > 4 * per_step,
            "{name}: {host_step} vs {per_step}"
        );
    }
}
