//! BLIP-2 image-text retrieval (ITM / ITC) parity with transformers on the `blip2-itm-tiny`
//! fixture (tools/fixtures), on the CPU and on the GPU adapter.

mod common;

use blip2::engine::{DType, Device, Tensor};
use blip2::model::retrieval::itm_probability;
use blip2::{Blip2Retrieval, Error, LoadOptions};
use common::*;

const MODEL: &str = "blip2-itm-tiny";
const TEXTS: [&str; 2] = ["match", "nonmatch"];

/// Hidden states: relative error max|ours − ref| / max|ref|, the bound used for every f32
/// stage in this project. Only summation order and exp/erf implementations differ (~1e-6).
const F32_REL_TOL: f64 = 1e-4;
/// Probabilities, ITC similarities and ITM logits, absolute: the bound. They are
/// O(1) values computed from the hidden states above, so reordering noise stays ~1e-6.
const SCORE_ABS_TOL: f64 = 1e-4;
/// Embeddings, absolute: they are unit vectors (every component in [-1, 1]), so an
/// absolute bound is a bound relative to the vector's norm; 1e-5 is ten times the
/// largest error seen (≈1e-6 on CPU and llvmpipe) and still catches any wrong weight,
/// missing bias or unnormalised output, which move components by 1e-2 or more.
const EMBED_ABS_TOL: f64 = 1e-5;

fn load(dir: &std::path::Path, dev: &Device) -> Blip2Retrieval {
    Blip2Retrieval::load(
        dir,
        LoadOptions {
            device: dev.clone(),
            dtype: DType::F32,
            progress: None,
            adapters: Vec::new(),
        },
    )
    .unwrap_or_else(|e| panic!("loading {}: {e}", dir.display()))
}

fn text(key: &str, kind: &str) -> &'static str {
    let (m, n) = match key {
        "rgb" => (
            "a red circle and a blue square on a gradient background",
            "a dog sleeping on a wooden boat at night",
        ),
        "rgba" => (
            "a green ring with a transparent hole",
            "two people eating soup in a kitchen",
        ),
        "jpeg" => (
            "orange stripes around a purple ellipse",
            "a white cat on a snowy mountain",
        ),
        "gray" => (
            "a small gray picture with a dark cross",
            "a yellow bus on a busy city street",
        ),
        _ => unreachable!(),
    };
    if kind == "match" { m } else { n }
}

fn pixels(key: &str, dev: &Device) -> Tensor {
    let t = &reference("images.safetensors")[&format!("{key}.pixel_values")];
    Tensor::from_f32(t.f32(), &t.shape, dev).unwrap()
}

fn check_rel(what: &str, got: &Tensor, want: &RefTensor) -> f64 {
    assert_eq!(got.shape(), &want.shape[..], "{what}: shape");
    let e = rel_err(&got.to_vec_f32().unwrap(), &want.f);
    assert!(
        e <= F32_REL_TOL,
        "{what}: relative error {e:e} > {F32_REL_TOL:e}"
    );
    e
}

fn check_abs(what: &str, got: &[f32], want: &[f64], tol: f64) -> f64 {
    let e = max_abs_err(got, want);
    assert!(
        e <= tol,
        "{what}: max abs error {e:e} > {tol:e} (got {got:?}, want {want:?})"
    );
    e
}

/// Every stage from the reference pixel values: vision, query output, image embeddings,
/// the ids the Q-Former embeds, ITM logits and probability, text embeddings, ITC score.
#[test]
fn stages_and_scores_match_transformers() {
    let refs = reference("itm.safetensors");
    let q = 8;
    for dev in devices() {
        let model = load(&model_dir(MODEL), &dev);
        let (mut e_hidden, mut e_score, mut e_embed) = (0f64, 0f64, 0f64);
        for (key, _) in IMAGES {
            let what = |s: &str| format!("{key} {s} on {dev:?}");
            let vis = model.vision_features(&pixels(key, &dev)).unwrap();
            e_hidden = e_hidden.max(check_rel(
                &what("vision"),
                &vis,
                &refs[&format!("{key}.vision_last_hidden_state")],
            ));
            let qo = model.query_output(&vis).unwrap();
            e_hidden = e_hidden.max(check_rel(
                &what("qformer"),
                &qo,
                &refs[&format!("{key}.qformer_last_hidden_state")],
            ));
            let img = model
                .image_embeddings_from_vision(&vis)
                .unwrap()
                .pop()
                .unwrap();
            assert_eq!((img.num_query(), img.dim()), (q, 32));
            e_embed = e_embed.max(check_abs(
                &what("image_embeds"),
                img.as_slice(),
                &refs[&format!("{key}.image_embeds")].f,
                EMBED_ABS_TOL,
            ));
            for kind in TEXTS {
                let r = |s: &str| &refs[&format!("{key}.{kind}.{s}")];
                let what = |s: &str| format!("{key} {kind} {s} on {dev:?}");
                let enc = model.tokenize(&[text(key, kind)]).unwrap();
                // HF's model input: the processor ids minus the Q leading <image> ids.
                assert_eq!(
                    enc.ids[0],
                    r("text_input_ids").ids(),
                    "{}",
                    what("text ids")
                );
                assert_eq!(
                    enc.ids[0],
                    r("input_ids").ids()[q..],
                    "{}",
                    what("processor ids")
                );
                assert!(
                    r("input_ids").ids()[..q].iter().all(|&i| i == 467),
                    "{}",
                    what("<image> ids")
                );
                assert_eq!(
                    enc.attention_mask[0],
                    r("attention_mask").ids()[q..],
                    "{}",
                    what("mask")
                );
                let logits = model.itm_logits(&vis, &enc).unwrap();
                e_score = e_score.max(check_abs(
                    &what("itm logits"),
                    &logits[0],
                    &r("itm_logits").f,
                    SCORE_ABS_TOL,
                ));
                let p = itm_probability(logits[0]);
                e_score = e_score.max(check_abs(
                    &what("itm probability"),
                    &[p],
                    &r("itm_probability").f,
                    SCORE_ABS_TOL,
                ));
                let t = model
                    .text_embeddings_from_tokens(&enc)
                    .unwrap()
                    .pop()
                    .unwrap();
                e_embed = e_embed.max(check_abs(
                    &what("text_embeds"),
                    t.as_slice(),
                    &r("text_embeds").f,
                    EMBED_ABS_TOL,
                ));
                let s = img.similarity(&t).unwrap();
                e_score = e_score.max(check_abs(
                    &what("itc score"),
                    &[s],
                    &r("itc_score").f,
                    SCORE_ABS_TOL,
                ));
            }
        }
        eprintln!(
            "{dev:?}: max rel err hidden {e_hidden:.2e}, max abs err scores {e_score:.2e}, embeddings {e_embed:.2e}"
        );
    }
}

/// Two texts of different lengths, right-padded in one pass, against one image: the ITM
/// logits (HF ran two copies of the image), the ITC scores and the text embeddings.
#[test]
fn padded_text_batch_matches_transformers() {
    let refs = reference("itm.safetensors");
    let q = 8;
    let texts = [text("rgb", "match"), "a circle"];
    for dev in devices() {
        let model = load(&model_dir(MODEL), &dev);
        let enc = model.tokenize(&texts).unwrap();
        let want_ids: Vec<Vec<u32>> = refs["batch.input_ids"]
            .id_rows()
            .iter()
            .map(|r| r[q..].to_vec())
            .collect();
        let want_mask: Vec<Vec<u32>> = refs["batch.attention_mask"]
            .id_rows()
            .iter()
            .map(|r| r[q..].to_vec())
            .collect();
        assert_eq!(enc.ids, want_ids);
        assert_eq!(enc.attention_mask, want_mask);
        assert!(
            enc.attention_mask[1].contains(&0),
            "the second text is padded"
        );
        let vis = model.vision_features(&pixels("rgb", &dev)).unwrap();
        let logits: Vec<f32> = model.itm_logits(&vis, &enc).unwrap().concat();
        let e1 = check_abs(
            "batch itm logits",
            &logits,
            &refs["batch.itm_logits"].f,
            SCORE_ABS_TOL,
        );
        let probs: Vec<f32> = logits
            .chunks(2)
            .map(|l| itm_probability([l[0], l[1]]))
            .collect();
        let e2 = check_abs(
            "batch itm probability",
            &probs,
            &refs["batch.itm_probability"].f,
            SCORE_ABS_TOL,
        );
        let txt = model.text_embeddings_from_tokens(&enc).unwrap();
        let flat: Vec<f32> = txt.iter().flat_map(|t| t.as_slice().to_vec()).collect();
        let e3 = check_abs(
            "batch text_embeds",
            &flat,
            &refs["batch.text_embeds"].f,
            EMBED_ABS_TOL,
        );
        let img = model
            .image_embeddings_from_vision(&vis)
            .unwrap()
            .pop()
            .unwrap();
        let sims: Vec<f32> = txt.iter().map(|t| img.similarity(t).unwrap()).collect();
        let e4 = check_abs(
            "batch itc scores",
            &sims,
            &refs["batch.itc_scores"].f,
            SCORE_ABS_TOL,
        );
        eprintln!(
            "{dev:?}: batch max abs err logits {e1:.2e} probs {e2:.2e} text_embeds {e3:.2e} itc {e4:.2e}"
        );
    }
}

/// Tolerances (scores, embeddings) of results computed from image files through our
/// preprocessing, which gives Pillow's pixel values exactly for every fixture, `photo.jpg`
/// included (blip2-jpeg decodes JPEGs as Pillow's libjpeg-turbo does; docs/jpeg.md): the
/// same tolerances as from the reference pixel values.
fn file_tols(_key: &str) -> (f64, f64) {
    (SCORE_ABS_TOL, EMBED_ABS_TOL)
}

/// The high-level API from image files (our preprocessing): match_score, match_scores,
/// rank, image_embeddings, text_embeddings and search against the HF scores.
#[test]
fn library_api_matches_transformers() {
    let refs = reference("itm.safetensors");
    for dev in devices() {
        let model = load(&model_dir(MODEL), &dev);
        let imgs: Vec<_> = IMAGES.iter().map(|(k, _)| image(k)).collect();
        let img_refs: Vec<_> = imgs.iter().collect();
        let all_texts: Vec<&str> = IMAGES
            .iter()
            .flat_map(|(k, _)| TEXTS.map(|t| text(k, t)))
            .collect();
        // One batched vision + Q-Former pass for the four images, one text pass for eight texts.
        let img_emb = model.image_embeddings(&img_refs).unwrap();
        let txt_emb = model.text_embeddings(&all_texts).unwrap();
        assert_eq!((img_emb.len(), txt_emb.len()), (4, 8));
        for (i, (key, _)) in IMAGES.iter().enumerate() {
            let (score_tol, embed_tol) = file_tols(key);
            let (mut e_score, mut e_embed) = (0f64, 0f64);
            let e = check_abs(
                &format!("{key} image_embeddings on {dev:?}"),
                img_emb[i].as_slice(),
                &refs[&format!("{key}.image_embeds")].f,
                embed_tol,
            );
            e_embed = e_embed.max(e);
            let scores = model.match_scores(&imgs[i], &all_texts).unwrap();
            for kind in TEXTS {
                let r = |s: &str| &refs[&format!("{key}.{kind}.{s}")];
                let t = text(key, kind);
                let what = format!("{key} {kind} on {dev:?}");
                let one = model.match_score(&imgs[i], t).unwrap();
                e_score = e_score.max(check_abs(
                    &format!("{what} itm"),
                    &[one.itm],
                    &r("itm_probability").f,
                    score_tol,
                ));
                e_score = e_score.max(check_abs(
                    &format!("{what} itc"),
                    &[one.itc],
                    &r("itc_score").f,
                    score_tol,
                ));
                // The same pair inside the padded batch of eight texts: only float reordering
                // of the padded pass differs (masked keys get exactly zero weight).
                let j = all_texts.iter().position(|&x| x == t).unwrap();
                assert!(
                    (scores[j].itm - one.itm).abs() <= 1e-5
                        && (scores[j].itc - one.itc).abs() <= 1e-5,
                    "{what}: batched {:?} vs alone {one:?}",
                    scores[j]
                );
                // Text embeddings do not depend on the image: the tight bound applies.
                let te = check_abs(
                    &format!("{what} text_embeddings"),
                    txt_emb[j].as_slice(),
                    &r("text_embeds").f,
                    EMBED_ABS_TOL,
                );
                e_embed = e_embed.max(te);
            }
            // rank: a permutation of the batch scores, best ITM first.
            let ranked = model.rank(&imgs[i], &all_texts).unwrap();
            assert!(
                ranked.windows(2).all(|w| w[0].score.itm >= w[1].score.itm),
                "{key}: rank order"
            );
            for r in &ranked {
                assert!(
                    (r.score.itm - scores[r.index].itm).abs() <= 1e-5,
                    "{key}: rank score"
                );
            }
            let mut idx: Vec<usize> = ranked.iter().map(|r| r.index).collect();
            idx.sort_unstable();
            assert_eq!(idx, (0..8).collect::<Vec<_>>());
            eprintln!(
                "{dev:?} {key} from file: max abs err scores {e_score:.2e}, embeddings {e_embed:.2e}"
            );
        }
        // search: each image's ITC similarity with the query text, most similar first.
        for (key, _) in IMAGES {
            let t = text(key, "match");
            let hits = model.search(t, &img_emb).unwrap();
            assert_eq!(hits.len(), 4);
            assert!(
                hits.windows(2).all(|w| w[0].similarity >= w[1].similarity),
                "search order"
            );
            let me = IMAGES.iter().position(|(k, _)| *k == key).unwrap();
            let hit = hits.iter().find(|h| h.index == me).unwrap();
            check_abs(
                &format!("search {key} on {dev:?}"),
                &[hit.similarity],
                &refs[&format!("{key}.match.itc_score")].f,
                file_tols(key).0,
            );
        }
    }
}

/// A captioning checkpoint is refused with a typed error naming the missing heads.
#[test]
fn caption_checkpoint_has_no_retrieval_heads() {
    let err = Blip2Retrieval::load(model_dir("blip2-opt-tiny"), LoadOptions::default())
        .err()
        .expect("must fail");
    match &err {
        Error::Unsupported(msg) => {
            assert!(msg.contains("no retrieval heads"), "{msg}");
            assert!(msg.contains("itm_head.weight"), "{msg}");
        }
        other => panic!("expected Unsupported, got {other:?}"),
    }
}

/// Texts longer than the position table (64 in the fixture) are an error, not a panic.
#[test]
fn overlong_text_is_an_error() {
    let model = load(&model_dir(MODEL), &Device::cpu());
    let long = "circle ".repeat(100);
    let err = model.tokenize(&[long.as_str()]).unwrap_err();
    assert!(
        matches!(err, Error::Invalid(ref m) if m.contains("64 positions")),
        "{err}"
    );
    assert!(model.match_score(&image("rgb"), &long).is_err());
    assert!(model.tokenize::<&str>(&[]).is_err());
}

/// Without `image_token_index` in config.json (pre-4.47 hub configs), HF concatenates
/// ones(Q) to the text mask itself; the Q-Former sees the same input, so the scores match.
#[test]
fn works_without_image_token_index() {
    let src = model_dir(MODEL);
    let dir = std::env::temp_dir().join(format!("blip2-itm-noimgtok-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for f in std::fs::read_dir(&src).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), dir.join(f.file_name())).unwrap();
    }
    let cfg = std::fs::read_to_string(src.join("config.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&cfg).unwrap();
    assert!(
        v.as_object_mut()
            .unwrap()
            .remove("image_token_index")
            .is_some()
    );
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&v).unwrap(),
    )
    .unwrap();
    let model = load(&dir, &Device::cpu());
    assert_eq!(model.config.image_token_index, None);
    let refs = reference("itm.safetensors");
    let s = model
        .match_score(&image("rgb"), text("rgb", "match"))
        .unwrap();
    check_abs(
        "no image_token_index itm",
        &[s.itm],
        &refs["rgb.match.itm_probability"].f,
        SCORE_ABS_TOL,
    );
    check_abs(
        "no image_token_index itc",
        &[s.itc],
        &refs["rgb.match.itc_score"].f,
        SCORE_ABS_TOL,
    );
    std::fs::remove_dir_all(&dir).ok();
}
