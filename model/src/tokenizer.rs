//! Tokenizer: `tokenizer.json` through the `tokenizers` crate, plus the special-token
//! settings of `tokenizer_config.json` / `special_tokens_map.json`, and prompt building as
//! `Blip2Processor` does it.
//!
//! Prompt layout (transformers `Blip2Processor.__call__` + `Blip2ForConditionalGeneration.generate`):
//! - with text: `[<image>] * num_query_tokens` followed by `tokenizer(text)` with special
//!   tokens: OPT gives `</s>` (BOS, id 2) first, T5 gives `</s>` (EOS, id 1) last.
//! - without text: `generate()` builds `[image_token_index] * num_query_tokens +
//!   [text_config.bos_token_id]` (2 for OPT; 1 = `</s>` in the Flan-T5 BLIP-2 configs), for
//!   the decoder-only and the encoder-decoder model alike.
//!
//! BOS rule: a v5-saved OPT `tokenizer.json` adds BOS in its TemplateProcessing
//! post-processor; older repos may only say `add_bos_token: true` in tokenizer_config.json.
//! At load we probe whether the post-processor adds BOS; we prepend it ourselves only when
//! it does not and `add_bos_token` is true, so BOS never appears twice.

use std::path::{Path, PathBuf};

use serde_json::Value;
use tokenizers::Tokenizer;

use crate::error::{ModelError, Result};

/// The placeholder token `Blip2Processor` adds to the tokenizer.
pub const IMAGE_TOKEN: &str = "<image>";

/// Which end padding goes to in a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PaddingSide {
    /// Pad at the start (decoder-only generation: the last position is the real last token).
    Left,
    /// Pad at the end (encoders, T5).
    Right,
}

/// Padded ids of a batch and the matching attention mask (1 = token, 0 = padding).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchEncoding {
    pub ids: Vec<Vec<u32>>,
    pub attention_mask: Vec<Vec<u32>>,
}

impl BatchEncoding {
    pub fn batch_size(&self) -> usize {
        self.ids.len()
    }
    /// Length of every (padded) row.
    pub fn seq_len(&self) -> usize {
        self.ids.first().map_or(0, Vec::len)
    }
}

/// A `tokenizers` tokenizer with the special-token settings of the checkpoint.
pub struct Blip2Tokenizer {
    inner: Tokenizer,
    path: PathBuf,
    bos_token_id: Option<u32>,
    eos_token_id: Option<u32>,
    pad_token_id: Option<u32>,
    add_bos_token: bool,
    post_processor_adds_bos: bool,
    padding_side: PaddingSide,
    model_max_length: Option<usize>,
    clean_up_tokenization_spaces: bool,
}

impl std::fmt::Debug for Blip2Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blip2Tokenizer")
            .field("path", &self.path)
            .field("vocab_size", &self.vocab_size())
            .field("bos_token_id", &self.bos_token_id)
            .field("eos_token_id", &self.eos_token_id)
            .field("pad_token_id", &self.pad_token_id)
            .field("add_bos_token", &self.add_bos_token)
            .field("post_processor_adds_bos", &self.post_processor_adds_bos)
            .finish()
    }
}

/// A special token in tokenizer_config.json: a string or an AddedToken object {"content": ...}.
fn token_str(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(m) => m.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

fn read_json_opt(path: &Path) -> Result<Option<serde_json::Map<String, Value>>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text =
        crate::limits::read_text_bounded(path, crate::limits::MAX_JSON_BYTES, "tokenizer config")?;
    match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(m)) => Ok(Some(m)),
        Ok(_) => Err(ModelError::tokenizer(path, "expected a JSON object")),
        Err(e) => Err(ModelError::tokenizer(path, format!("invalid JSON: {e}"))),
    }
}

impl Blip2Tokenizer {
    /// Loads `dir/tokenizer.json` and, when present, `dir/tokenizer_config.json` and
    /// `dir/special_tokens_map.json`.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Blip2Tokenizer> {
        let dir = dir.as_ref();
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            return Err(ModelError::tokenizer(
                &path,
                "file not found (a fast-tokenizer tokenizer.json is required)",
            ));
        }
        let bytes =
            crate::limits::read_bounded(&path, crate::limits::MAX_TOKENIZER_BYTES, "tokenizer")?;
        let config = read_json_opt(&dir.join("tokenizer_config.json"))?;
        let special = read_json_opt(&dir.join("special_tokens_map.json"))?;
        Self::from_parts(&bytes, &path, config.as_ref(), special.as_ref())
    }

    /// Builds from the bytes of a tokenizer.json and the parsed optional JSON objects of
    /// tokenizer_config.json and special_tokens_map.json (`path` names the tokenizer.json).
    pub fn from_parts(
        tokenizer_json: &[u8],
        path: impl AsRef<Path>,
        tokenizer_config: Option<&serde_json::Map<String, Value>>,
        special_tokens_map: Option<&serde_json::Map<String, Value>>,
    ) -> Result<Blip2Tokenizer> {
        let path = path.as_ref().to_path_buf();
        let mut inner = Tokenizer::from_bytes(tokenizer_json)
            .map_err(|e| ModelError::tokenizer(&path, format!("cannot parse: {e}")))?;
        // The processor encodes without padding or truncation; a tokenizer.json may carry
        // either as a default.
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| ModelError::tokenizer(&path, e.to_string()))?;

        let lookup = |key: &str| -> Option<String> {
            token_str(tokenizer_config.and_then(|c| c.get(key)))
                .or_else(|| token_str(special_tokens_map.and_then(|c| c.get(key))))
        };
        let id_of = |key: &str| lookup(key).and_then(|t| inner.token_to_id(&t));
        let bos_token_id = id_of("bos_token");
        let eos_token_id = id_of("eos_token");
        let pad_token_id = id_of("pad_token");
        let cfg_bool = |key: &str| {
            tokenizer_config
                .and_then(|c| c.get(key))
                .and_then(Value::as_bool)
        };
        let add_bos_token = cfg_bool("add_bos_token").unwrap_or(false);
        let padding_side = match tokenizer_config
            .and_then(|c| c.get("padding_side"))
            .and_then(Value::as_str)
        {
            Some("left") => PaddingSide::Left,
            _ => PaddingSide::Right,
        };
        let model_max_length = tokenizer_config
            .and_then(|c| c.get("model_max_length"))
            .and_then(Value::as_u64)
            // HF writes a huge sentinel (1e30) when there is no limit.
            .filter(|&n| n < 1 << 40)
            .map(|n| n as usize);

        let clean_up_tokenization_spaces =
            cfg_bool("clean_up_tokenization_spaces").unwrap_or(false);
        let post_processor_adds_bos = match bos_token_id {
            None => false,
            Some(bos) => {
                let probe = "a";
                let with = inner
                    .encode(probe, true)
                    .map_err(|e| ModelError::tokenizer(&path, e.to_string()))?;
                let without = inner
                    .encode(probe, false)
                    .map_err(|e| ModelError::tokenizer(&path, e.to_string()))?;
                with.get_ids().first() == Some(&bos) && without.get_ids().first() != Some(&bos)
            }
        };
        Ok(Blip2Tokenizer {
            inner,
            path,
            bos_token_id,
            eos_token_id,
            pad_token_id,
            add_bos_token,
            post_processor_adds_bos,
            padding_side,
            model_max_length,
            clean_up_tokenization_spaces,
        })
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn bos_token_id(&self) -> Option<u32> {
        self.bos_token_id
    }
    pub fn eos_token_id(&self) -> Option<u32> {
        self.eos_token_id
    }
    pub fn pad_token_id(&self) -> Option<u32> {
        self.pad_token_id
    }
    /// `add_bos_token` from tokenizer_config.json (false when absent).
    pub fn add_bos_token(&self) -> bool {
        self.add_bos_token
    }
    /// Whether tokenizer.json's post-processor puts BOS first by itself.
    pub fn post_processor_adds_bos(&self) -> bool {
        self.post_processor_adds_bos
    }
    /// `padding_side` from tokenizer_config.json (right when absent).
    pub fn padding_side(&self) -> PaddingSide {
        self.padding_side
    }
    pub fn model_max_length(&self) -> Option<usize> {
        self.model_max_length
    }
    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Id of `<image>`; an error when the tokenizer does not have it (checkpoints saved
    /// before transformers 4.47 lack it: pass `image_token_index` from the config instead).
    pub fn image_token_id(&self) -> Result<u32> {
        self.inner.token_to_id(IMAGE_TOKEN).ok_or_else(|| {
            ModelError::tokenizer(
                &self.path,
                format!("the vocabulary has no '{IMAGE_TOKEN}' token (needed for the image placeholders)"),
            )
        })
    }

    /// `tokenizer(text)` with special tokens, honouring `add_bos_token` when the
    /// post-processor does not add BOS.
    pub fn encode_text(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, true).map_err(|e| {
            ModelError::tokenizer(&self.path, format!("cannot encode {text:?}: {e}"))
        })?;
        let ids = enc.get_ids();
        match self.bos_token_id {
            Some(bos) if self.add_bos_token && !self.post_processor_adds_bos => {
                let mut out = Vec::with_capacity(ids.len() + 1);
                out.push(bos);
                out.extend_from_slice(ids);
                Ok(out)
            }
            _ => Ok(ids.to_vec()),
        }
    }

    /// Ids without any special token (the processor's `add_special_tokens=False`).
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, false).map_err(|e| {
            ModelError::tokenizer(&self.path, format!("cannot encode {text:?}: {e}"))
        })?;
        Ok(enc.get_ids().to_vec())
    }

    /// The token that follows the image tokens when there is no text: BOS when the
    /// tokenizer has one, else EOS (T5 has no BOS; its BLIP-2 configs use `</s>`).
    pub fn start_token_id(&self) -> Result<u32> {
        self.bos_token_id.or(self.eos_token_id).ok_or_else(|| {
            ModelError::tokenizer(
                &self.path,
                "neither bos_token nor eos_token is set in tokenizer_config.json / special_tokens_map.json",
            )
        })
    }

    /// The ids `Blip2Processor` + `generate()` give the language model:
    /// `[image_token_id; num_query_tokens]` then `tokenizer(text)`, or, without text, the
    /// image tokens then [`Self::start_token_id`].
    pub fn encode_prompt(
        &self,
        text: Option<&str>,
        num_query_tokens: usize,
        image_token_id: u32,
    ) -> Result<Vec<u32>> {
        match text {
            Some(_) => self.encode_prompt_with_start(text, num_query_tokens, image_token_id, 0),
            None => self.encode_prompt_with_start(
                None,
                num_query_tokens,
                image_token_id,
                self.start_token_id()?,
            ),
        }
    }

    /// Like [`Self::encode_prompt`] with the no-text start token given explicitly
    /// (`text_config.bos_token_id`, which is what HF `generate()` uses).
    pub fn encode_prompt_with_start(
        &self,
        text: Option<&str>,
        num_query_tokens: usize,
        image_token_id: u32,
        start_token_id: u32,
    ) -> Result<Vec<u32>> {
        let mut ids = vec![image_token_id; num_query_tokens];
        match text {
            Some(t) => ids.extend(self.encode_text(t)?),
            None => ids.push(start_token_id),
        }
        Ok(ids)
    }

    /// Prompts of a batch as `Blip2Processor` builds them: the texts are tokenized and
    /// padded on `side` first, then the image tokens are put in front of every row (so
    /// with left padding the pads sit between the image tokens and the text, mask 0 there).
    /// A `None` text is the no-text start token alone.
    pub fn encode_prompt_batch(
        &self,
        texts: &[Option<&str>],
        num_query_tokens: usize,
        image_token_id: u32,
        side: PaddingSide,
    ) -> Result<BatchEncoding> {
        let seqs = texts
            .iter()
            .map(|t| match t {
                Some(t) => self.encode_text(t),
                None => Ok(vec![self.start_token_id()?]),
            })
            .collect::<Result<Vec<_>>>()?;
        let mut batch = self.pad(seqs, side)?;
        for (ids, mask) in batch.ids.iter_mut().zip(&mut batch.attention_mask) {
            ids.splice(0..0, std::iter::repeat_n(image_token_id, num_query_tokens));
            mask.splice(0..0, std::iter::repeat_n(1, num_query_tokens));
        }
        Ok(batch)
    }

    /// Texts of a batch (`tokenizer(texts, padding=True)`), e.g. for ITM/ITC.
    pub fn encode_text_batch(&self, texts: &[&str], side: PaddingSide) -> Result<BatchEncoding> {
        let seqs = texts
            .iter()
            .map(|t| self.encode_text(t))
            .collect::<Result<Vec<_>>>()?;
        self.pad(seqs, side)
    }

    /// Pads sequences to the longest with the pad token; an error when padding is needed and
    /// the tokenizer has no pad token.
    pub fn pad(&self, seqs: Vec<Vec<u32>>, side: PaddingSide) -> Result<BatchEncoding> {
        let max = seqs.iter().map(Vec::len).max().unwrap_or(0);
        let needs_pad = seqs.iter().any(|s| s.len() != max);
        let pad = match (needs_pad, self.pad_token_id) {
            (false, p) => p.unwrap_or(0),
            (true, Some(p)) => p,
            (true, None) => {
                return Err(ModelError::tokenizer(
                    &self.path,
                    "sequences of different lengths need padding but the tokenizer has no pad_token",
                ));
            }
        };
        let mut ids = Vec::with_capacity(seqs.len());
        let mut attention_mask = Vec::with_capacity(seqs.len());
        for s in seqs {
            let n = max - s.len();
            let (row, mask) = match side {
                PaddingSide::Left => (
                    std::iter::repeat_n(pad, n)
                        .chain(s.iter().copied())
                        .collect(),
                    std::iter::repeat_n(0, n)
                        .chain(std::iter::repeat_n(1, s.len()))
                        .collect(),
                ),
                PaddingSide::Right => (
                    s.iter()
                        .copied()
                        .chain(std::iter::repeat_n(pad, n))
                        .collect(),
                    std::iter::repeat_n(1, s.len())
                        .chain(std::iter::repeat_n(0, n))
                        .collect(),
                ),
            };
            ids.push(row);
            attention_mask.push(mask);
        }
        Ok(BatchEncoding {
            ids,
            attention_mask,
        })
    }

    /// Text of `ids`; with `skip_special_tokens` the special tokens (`</s>`, `<pad>`,
    /// `<image>`...) are left out, as `batch_decode(..., skip_special_tokens=True)` does.
    /// `clean_up_tokenization_spaces: true` in tokenizer_config.json applies HF's clean-up.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        let text = self.inner.decode(ids, skip_special_tokens).map_err(|e| {
            ModelError::tokenizer(&self.path, format!("cannot decode {ids:?}: {e}"))
        })?;
        Ok(if self.clean_up_tokenization_spaces {
            clean_up_tokenization(&text)
        } else {
            text
        })
    }
}

/// `PreTrainedTokenizerBase.clean_up_tokenization` of transformers.
pub fn clean_up_tokenization(s: &str) -> String {
    s.replace(" .", ".")
        .replace(" ?", "?")
        .replace(" !", "!")
        .replace(" ,", ",")
        .replace(" ' ", "'")
        .replace(" n't", "n't")
        .replace(" 'm", "'m")
        .replace(" 's", "'s")
        .replace(" 've", "'ve")
        .replace(" 're", "'re")
}
