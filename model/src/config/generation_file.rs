//! `generation_config.json`, read as transformers reads it for BLIP-2: not at all when
//! generating. `Blip2ForConditionalGeneration.generate()` hands the work to
//! `self.language_model.generate()`, and the language model's generation config is built
//! from `text_config` (checked with transformers 5.24: a file setting `num_beams: 3,
//! max_new_tokens: 4` leaves the output ids unchanged). So we read the file only to tell the
//! user which of its settings differ from what generation will use, instead of silently
//! doing something other than they may expect (or than transformers does).

use std::path::Path;

use serde_json::Value;

use crate::generate::GenerationConfig;
use crate::lm::TextConfig;

pub const FILE: &str = "generation_config.json";

/// One line per setting of `dir/generation_config.json` that generation does not follow
/// (empty when the file is absent or agrees), for the CLI to print as notes.
pub fn ignored_settings(dir: &Path, text: Option<&TextConfig>) -> Vec<String> {
    let path = dir.join(FILE);
    if !path.is_file() {
        return Vec::new();
    }
    let parsed = crate::limits::read_text_bounded(&path, crate::limits::MAX_JSON_BYTES, "config")
        .map_err(|e| e.to_string())
        .and_then(|t| serde_json::from_str::<Value>(&t).map_err(|e| format!("invalid JSON: {e}")));
    let obj = match parsed {
        Ok(Value::Object(o)) => o,
        Ok(_) => {
            return vec![format!(
                "{}: not a JSON object; ignored (as transformers does)",
                path.display()
            )];
        }
        Err(e) => {
            return vec![format!(
                "{}: {e}; ignored (as transformers does)",
                path.display()
            )];
        }
    };
    let differing = differing_settings(&obj, text);
    if differing.is_empty() {
        return Vec::new();
    }
    vec![format!(
        "{} sets {}; transformers' BLIP-2 generate() ignores this file (the language model's settings come from text_config), and so does blip2: pass them as options",
        path.display(),
        differing.join(", ")
    )]
}

/// `key=value` for each generation setting the file gives a value other than the one used.
fn differing_settings(
    obj: &serde_json::Map<String, Value>,
    text: Option<&TextConfig>,
) -> Vec<String> {
    let d = GenerationConfig::default();
    let num = |x: f64| Value::from(x);
    // What generation uses when the caller sets nothing (transformers' library defaults,
    // ids from text_config). `max_length` 20 is HF's default, which BLIP-2 turns into 20
    // new tokens.
    let mut used: Vec<(&str, Value)> = vec![
        ("max_new_tokens", Value::Null),
        ("max_length", Value::from(20)),
        ("min_new_tokens", Value::Null),
        ("min_length", Value::from(0)),
        ("num_beams", Value::from(d.num_beams)),
        ("num_beam_groups", Value::from(1)),
        ("do_sample", Value::from(d.do_sample)),
        ("temperature", num(d.temperature as f64)),
        ("top_k", Value::from(d.top_k)),
        ("top_p", num(d.top_p as f64)),
        ("repetition_penalty", num(d.repetition_penalty as f64)),
        ("length_penalty", num(d.length_penalty as f64)),
        ("no_repeat_ngram_size", Value::from(d.no_repeat_ngram_size)),
        ("early_stopping", Value::from(false)),
    ];
    if let Some(t) = text {
        used.push(("eos_token_id", Value::from(t.eos_token_id())));
        used.push(("pad_token_id", Value::from(t.pad_token_id())));
        used.push(("bos_token_id", Value::from(t.bos_token_id())));
    }
    let mut out = Vec::new();
    for (key, default) in used {
        let Some(v) = obj.get(key) else { continue };
        if v.is_null() || same(v, &default) {
            continue;
        }
        out.push(format!("{key}={v}"));
    }
    out
}

/// JSON equality with numbers compared by value (1 == 1.0) and a one-element id list equal
/// to the id.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(xs), y) if xs.len() == 1 => same(&xs[0], y),
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_settings_that_differ_are_named() {
        let obj: serde_json::Map<String, Value> = serde_json::from_str(
            r#"{"num_beams": 3, "max_length": 20, "temperature": 1.0, "top_k": 50,
                "max_new_tokens": 4, "transformers_version": "5.24.0", "use_cache": true}"#,
        )
        .unwrap();
        assert_eq!(
            differing_settings(&obj, None),
            vec!["max_new_tokens=4", "num_beams=3"]
        );
    }
}
