//! The tokenizer of random-weight models at real sizes (`blip2 bench`,
//! [`crate::loading::Source::Random`]): no checkpoint and no tokenizer files are needed.

use crate::config::Blip2Config;
use crate::tokenizer::Blip2Tokenizer;
use crate::{ModelError, Result};

/// A WordLevel tokenizer with one token per id (`<t123>`), `</s>`/`<pad>` at the language
/// model's ids and `<image>` at `image_token_index`: enough to build prompts and decode.
pub(crate) fn synthetic_tokenizer(config: &Blip2Config) -> Result<Blip2Tokenizer> {
    let text = config.text_config.as_ref().ok_or_else(|| {
        ModelError::Invalid("a random generation model needs a text_config".into())
    })?;
    let vocab = text.vocab_size();
    let image = config.image_token_index.unwrap_or(vocab as u32 - 1) as usize;
    let (eos, pad) = (text.eos_token_id() as usize, text.pad_token_id() as usize);
    let bos = text.bos_token_id() as usize;
    let name = |i: usize| -> String {
        if i == image {
            "<image>".into()
        } else if i == bos || i == eos && text.is_encoder_decoder() {
            "</s>".into()
        } else if i == pad {
            "<pad>".into()
        } else {
            format!("<t{i}>")
        }
    };
    let mut map = serde_json::Map::new();
    for i in 0..vocab.max(image + 1) {
        map.entry(name(i)).or_insert_with(|| serde_json::json!(i));
    }
    map.entry("<unk>")
        .or_insert_with(|| serde_json::json!(vocab.max(image + 1)));
    let added = |content: &str, id: usize| {
        serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false,
                           "rstrip": false, "normalized": false, "special": true})
    };
    let tok = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [added("<image>", image), added("</s>", bos)],
        "normalizer": null,
        "pre_tokenizer": {"type": "WhitespaceSplit"},
        "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": map, "unk_token": "<unk>"},
    });
    let cfg =
        serde_json::json!({"bos_token": "</s>", "eos_token": name(eos), "pad_token": name(pad)});
    let bytes = serde_json::to_vec(&tok).map_err(|e| ModelError::Invalid(e.to_string()))?;
    Blip2Tokenizer::from_parts(&bytes, "<synthetic tokenizer>", cfg.as_object(), None)
}

/// A WordLevel stand-in for InstructBLIP's BERT Q-Former tokenizer: `[PAD]` 0, `[UNK]` 1,
/// `[CLS]` 2, `[SEP]` 3, `<q4>`.. up to `vocab`, with BERT's `[CLS] text [SEP]` framing.
pub(crate) fn synthetic_qformer_tokenizer(vocab: usize) -> Result<Blip2Tokenizer> {
    if vocab < 4 {
        return Err(ModelError::Invalid(format!(
            "a Q-Former vocabulary of {vocab} has no room for [PAD] [UNK] [CLS] [SEP]"
        )));
    }
    let mut map = serde_json::Map::new();
    for (i, t) in ["[PAD]", "[UNK]", "[CLS]", "[SEP]"].iter().enumerate() {
        map.insert(t.to_string(), serde_json::json!(i));
    }
    for i in 4..vocab {
        map.insert(format!("<q{i}>"), serde_json::json!(i));
    }
    let tok = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": {"type": "WhitespaceSplit"},
        "post_processor": {"type": "BertProcessing", "sep": ["[SEP]", 3], "cls": ["[CLS]", 2]},
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": map, "unk_token": "[UNK]"},
    });
    let cfg = serde_json::json!({"pad_token": "[PAD]", "cls_token": "[CLS]", "sep_token": "[SEP]"});
    let bytes = serde_json::to_vec(&tok).map_err(|e| ModelError::Invalid(e.to_string()))?;
    Blip2Tokenizer::from_parts(
        &bytes,
        "<synthetic Q-Former tokenizer>",
        cfg.as_object(),
        None,
    )
}

#[cfg(test)]
mod tests {
    use blip2_engine::{DType, Device};

    use crate::blip2::Blip2;
    use crate::config::Blip2Config;
    use crate::generate::GenerationConfig;

    #[test]
    fn tiny_random_model_generates() {
        let cfg = Blip2Config::preset("tiny").unwrap();
        let m = Blip2::random(cfg, &Device::Cpu, DType::F32, 7).unwrap();
        let img = image::DynamicImage::new_rgb8(40, 30);
        let g = m
            .generate(
                &img,
                None,
                &GenerationConfig {
                    max_new_tokens: 3,
                    min_new_tokens: 3,
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(g.token_ids.len(), 3);
    }
}
