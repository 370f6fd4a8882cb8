//! Tokenizer: the BOS rule on small hand-written tokenizer.json files, and the fixture
//! tokenizers against the ids the transformers processor produced (reference/*.safetensors).

use std::path::PathBuf;

use blip2_model::ModelError;
use blip2_model::tokenizer::{Blip2Tokenizer, PaddingSide};
use serde_json::{Map, Value, json};

/// A WordLevel tokenizer: "</s>"=0 (BOS/EOS), "<pad>"=1, "hello"=2, "world"=3, "<unk>"=4,
/// "<image>"=5; with or without a TemplateProcessing post-processor that prepends "</s>".
fn word_level(template_bos: bool, with_image: bool) -> Vec<u8> {
    let special = |id: u32, content: &str| {
        json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
               "normalized": false, "special": true})
    };
    let mut added = vec![special(0, "</s>"), special(1, "<pad>"), special(4, "<unk>")];
    let mut vocab = json!({"</s>": 0, "<pad>": 1, "hello": 2, "world": 3, "<unk>": 4});
    if with_image {
        added.push(special(5, "<image>"));
        vocab["<image>"] = json!(5);
    }
    let post = if template_bos {
        json!({"type": "TemplateProcessing",
               "single": [{"SpecialToken": {"id": "</s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
               "pair": [{"SpecialToken": {"id": "</s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                        {"Sequence": {"id": "B", "type_id": 1}}],
               "special_tokens": {"</s>": {"id": "</s>", "ids": [0], "tokens": ["</s>"]}}})
    } else {
        Value::Null
    };
    json!({"version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
           "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": post,
           "decoder": null, "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}})
    .to_string()
    .into_bytes()
}

fn config(add_bos: Option<bool>) -> Map<String, Value> {
    let mut m = json!({"bos_token": "</s>", "eos_token": {"content": "</s>", "__type": "AddedToken"},
                       "pad_token": "<pad>", "unk_token": "<unk>"});
    if let Some(b) = add_bos {
        m["add_bos_token"] = json!(b);
    }
    m.as_object().unwrap().clone()
}

fn tok(template_bos: bool, add_bos: Option<bool>) -> Blip2Tokenizer {
    Blip2Tokenizer::from_parts(
        &word_level(template_bos, true),
        "t/tokenizer.json",
        Some(&config(add_bos)),
        None,
    )
    .unwrap()
}

#[test]
fn bos_is_added_exactly_once() {
    // (post-processor adds BOS, add_bos_token) -> expected ids for "hello world"
    for (template, add_bos, want) in [
        (true, Some(true), vec![0, 2, 3]),
        (true, Some(false), vec![0, 2, 3]),
        (true, None, vec![0, 2, 3]),
        (false, Some(true), vec![0, 2, 3]),
        (false, Some(false), vec![2, 3]),
        (false, None, vec![2, 3]),
    ] {
        let t = tok(template, add_bos);
        assert_eq!(t.post_processor_adds_bos(), template);
        assert_eq!(
            t.encode_text("hello world").unwrap(),
            want,
            "template {template}, add_bos_token {add_bos:?}"
        );
    }
}

#[test]
fn prompts_as_the_processor_builds_them() {
    let t = tok(false, Some(true));
    let img = t.image_token_id().unwrap();
    assert_eq!(img, 5);
    assert_eq!(
        t.encode_prompt(Some("hello world"), 3, img).unwrap(),
        [5, 5, 5, 0, 2, 3]
    );
    // No text: image tokens then BOS, as generate() does.
    assert_eq!(t.encode_prompt(None, 2, img).unwrap(), [5, 5, 0]);
    assert_eq!(
        t.encode_prompt_with_start(None, 2, img, 9).unwrap(),
        [5, 5, 9]
    );
    // An empty prompt is what HF encodes for "": image tokens + BOS.
    assert_eq!(t.encode_prompt(Some(""), 2, img).unwrap(), [5, 5, 0]);

    // The processor pads the text, then prepends the image tokens: pads sit in between.
    let left = t
        .encode_prompt_batch(
            &[Some("hello"), Some("hello world world")],
            1,
            img,
            PaddingSide::Left,
        )
        .unwrap();
    assert_eq!(left.ids, [vec![5, 1, 1, 0, 2], vec![5, 0, 2, 3, 3]]);
    assert_eq!(
        left.attention_mask,
        [vec![1, 0, 0, 1, 1], vec![1, 1, 1, 1, 1]]
    );
    let right = t
        .encode_text_batch(&["world", "hello hello"], PaddingSide::Right)
        .unwrap();
    assert_eq!(right.ids, [vec![0, 3, 1], vec![0, 2, 2]]);
    assert_eq!(right.attention_mask, [vec![1, 1, 0], vec![1, 1, 1]]);
    assert_eq!((right.batch_size(), right.seq_len()), (2, 3));

    assert_eq!(t.decode(&[5, 0, 2, 3, 1], true).unwrap(), "hello world");
    assert_eq!(t.decode(&[2, 3], false).unwrap(), "hello world");
}

#[test]
fn typed_errors() {
    // No <image> in the vocabulary.
    let t = Blip2Tokenizer::from_parts(
        &word_level(true, false),
        "t/tokenizer.json",
        Some(&config(None)),
        None,
    )
    .unwrap();
    let err = t.image_token_id().unwrap_err();
    assert!(
        matches!(err, ModelError::Tokenizer { .. }) && err.to_string().contains("<image>"),
        "{err}"
    );
    // Bad JSON.
    let err = Blip2Tokenizer::from_parts(b"{ nope", "x/tokenizer.json", None, None).unwrap_err();
    assert!(err.to_string().contains("x/tokenizer.json"), "{err}");
    // Missing file.
    let err = Blip2Tokenizer::from_dir("/nonexistent/model").unwrap_err();
    assert!(
        err.to_string()
            .contains("/nonexistent/model/tokenizer.json"),
        "{err}"
    );
    // Padding without a pad token.
    let mut cfg = config(None);
    cfg.remove("pad_token");
    let t = Blip2Tokenizer::from_parts(
        &word_level(true, true),
        "t/tokenizer.json",
        Some(&cfg),
        None,
    )
    .unwrap();
    assert!(
        t.encode_text_batch(&["hello", "hello world"], PaddingSide::Right)
            .is_err()
    );
    assert!(
        t.encode_text_batch(&["hello", "world"], PaddingSide::Right)
            .is_ok(),
        "equal lengths need no pad"
    );
    // special_tokens_map.json is the fallback for the special tokens.
    let special = config(None);
    let t = Blip2Tokenizer::from_parts(
        &word_level(false, true),
        "t/tokenizer.json",
        None,
        Some(&special),
    )
    .unwrap();
    assert_eq!(
        (t.bos_token_id(), t.eos_token_id(), t.pad_token_id()),
        (Some(0), Some(0), Some(1))
    );
}

// ---- fixture tokenizers vs transformers' processor output ----

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

struct Ref(Vec<u8>);

impl Ref {
    fn load(file: &str) -> Ref {
        let p = fixtures().join("reference").join(file);
        Ref(std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
    }
    /// An int64 tensor as rows of u32.
    fn ids(&self, name: &str) -> Vec<Vec<u32>> {
        let st = safetensors::SafeTensors::deserialize(&self.0).unwrap();
        let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert_eq!(t.dtype(), safetensors::Dtype::I64, "{name}");
        let cols = *t.shape().last().unwrap();
        let v: Vec<u32> = t
            .data()
            .chunks_exact(8)
            .map(|c| u32::try_from(i64::from_le_bytes(c.try_into().unwrap())).unwrap())
            .collect();
        v.chunks(cols).map(<[u32]>::to_vec).collect()
    }
}

const QUESTION: &str = "Question: what is in the picture? Answer:";
const BATCH_PROMPTS: [&str; 2] = [QUESTION, "a photo of"];

#[test]
fn fixture_opt_and_t5_prompts() {
    for (model, file, side) in [
        ("blip2-opt-tiny", "opt.safetensors", PaddingSide::Left),
        ("blip2-flan-t5-tiny", "t5.safetensors", PaddingSide::Right),
    ] {
        let t = Blip2Tokenizer::from_dir(fixtures().join("models").join(model)).unwrap();
        let r = Ref::load(file);
        let img = t.image_token_id().unwrap();
        for image in ["rgb", "gray"] {
            let want = &r.ids(&format!("{image}.question.input_ids"))[0];
            assert_eq!(
                &t.encode_prompt(Some(QUESTION), 8, img).unwrap(),
                want,
                "{model}"
            );
            let want = &r.ids(&format!("{image}.noprompt.input_ids"))[0];
            assert_eq!(
                &t.encode_prompt(Some(""), 8, img).unwrap(),
                want,
                "{model}: empty prompt"
            );
            assert_eq!(
                &t.encode_prompt(None, 8, img).unwrap(),
                want,
                "{model}: no text = image tokens + start"
            );
        }
        let texts: Vec<Option<&str>> = BATCH_PROMPTS.iter().map(|p| Some(*p)).collect();
        let batch = t.encode_prompt_batch(&texts, 8, img, side).unwrap();
        assert_eq!(batch.ids, r.ids("batch.input_ids"), "{model}");
        assert_eq!(
            batch.attention_mask,
            r.ids("batch.attention_mask"),
            "{model}"
        );
    }
    let opt = Blip2Tokenizer::from_dir(fixtures().join("models/blip2-opt-tiny")).unwrap();
    assert!(opt.post_processor_adds_bos());
    assert_eq!(opt.image_token_id().unwrap(), 700);
    let t5 = Blip2Tokenizer::from_dir(fixtures().join("models/blip2-flan-t5-tiny")).unwrap();
    assert_eq!(
        (
            t5.bos_token_id(),
            t5.eos_token_id(),
            t5.start_token_id().unwrap()
        ),
        (None, Some(1), 1)
    );
}

#[test]
fn fixture_itm_texts() {
    let t = Blip2Tokenizer::from_dir(fixtures().join("models/blip2-itm-tiny")).unwrap();
    let r = Ref::load("itm.safetensors");
    let img = t.image_token_id().unwrap();
    for (image, kind, text) in [
        (
            "rgb",
            "match",
            "a red circle and a blue square on a gradient background",
        ),
        (
            "rgb",
            "nonmatch",
            "a dog sleeping on a wooden boat at night",
        ),
    ] {
        let text_ids = t.encode_text(text).unwrap();
        assert_eq!(
            text_ids,
            r.ids(&format!("{image}.{kind}.text_input_ids"))[0],
            "{text}"
        );
        let full = t.encode_prompt(Some(text), 8, img).unwrap();
        assert_eq!(
            full,
            r.ids(&format!("{image}.{kind}.input_ids"))[0],
            "{text}"
        );
    }
    let texts = [
        Some("a red circle and a blue square on a gradient background"),
        Some("a circle"),
    ];
    let batch = t
        .encode_prompt_batch(&texts, 8, img, PaddingSide::Right)
        .unwrap();
    assert_eq!(batch.ids, r.ids("batch.input_ids"));
    assert_eq!(batch.attention_mask, r.ids("batch.attention_mask"));
}
