//! The JSON of the OpenAI-compatible API: request bodies (parsed leniently: unknown fields
//! are ignored, as OpenAI's own server does for optional extras) and the conversion of a
//! request into what the scheduler runs (prompt, image, generation settings).

use base64::Engine as _;
use serde::Deserialize;
use serde_json::Value;

use crate::GenerationConfig;
use crate::model::chat::{Turn, chat_prompt};

use super::limits::{ApiError, Limits};

/// `POST /v1/chat/completions`.
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    /// Accepted and ignored: a server serves one model.
    #[serde(default, rename = "model")]
    pub _model: Option<String>,
    pub messages: Vec<Message>,
    #[serde(flatten)]
    pub sampling: SamplingParams,
}

#[derive(Debug, Deserialize)]
pub struct Message {
    pub role: String,
    #[serde(default)]
    pub content: Value,
}

/// `POST /v1/completions`: a raw prompt (given to the processor verbatim, as vLLM's BLIP-2
/// takes it) and one image (extension field `image`: a `data:` URL).
#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    /// Accepted and ignored: a server serves one model.
    #[serde(default, rename = "model")]
    pub _model: Option<String>,
    #[serde(default)]
    pub prompt: Value,
    #[serde(default)]
    pub image: Option<Value>,
    #[serde(flatten)]
    pub sampling: SamplingParams,
}

/// The generation parameters both endpoints take, named as OpenAI and `transformers` name
/// them.
#[derive(Debug, Default, Deserialize)]
pub struct SamplingParams {
    pub max_tokens: Option<u64>,
    pub max_completion_tokens: Option<u64>,
    /// Absent or 0: greedy search (transformers' default). > 0: sampling.
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<u64>,
    pub seed: Option<u64>,
    #[serde(default)]
    pub stop: Value,
    pub n: Option<u64>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    pub num_beams: Option<u64>,
    pub repetition_penalty: Option<f64>,
    pub min_tokens: Option<u64>,
    pub length_penalty: Option<f64>,
    pub no_repeat_ngram_size: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// What a generation request asks the scheduler for, once checked.
#[derive(Debug)]
pub struct GenRequest {
    pub image: Vec<u8>,
    /// The processor's text (None: a caption).
    pub prompt: Option<String>,
    pub config: GenerationConfig,
    pub stop: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
}

impl SamplingParams {
    /// The generation settings, checked against the limits. Greedy unless a temperature
    /// above 0 is given.
    pub fn config(&self, limits: &Limits) -> Result<GenerationConfig, ApiError> {
        let bad = |m: String| Err(ApiError::invalid("invalid_parameter", m));
        if let Some(n) = self.n
            && n != 1
        {
            return bad(format!("n must be 1 (one choice per request), got {n}"));
        }
        let max = self.max_completion_tokens.or(self.max_tokens);
        let max_new_tokens = match max {
            None => 20.min(limits.max_tokens),
            Some(0) => return bad("max_tokens must be at least 1".into()),
            Some(m) if m as usize > limits.max_tokens => {
                return bad(format!(
                    "max_tokens {m} is above the server's limit of {} (--max-tokens)",
                    limits.max_tokens
                ));
            }
            Some(m) => m as usize,
        };
        let min_new_tokens = self.min_tokens.unwrap_or(0) as usize;
        if min_new_tokens > max_new_tokens {
            return bad(format!(
                "min_tokens {min_new_tokens} is above max_tokens {max_new_tokens}"
            ));
        }
        let temperature = self.temperature.unwrap_or(0.0);
        if !(0.0..=2.0).contains(&temperature) {
            return bad(format!("temperature must be in [0, 2], got {temperature}"));
        }
        let num_beams = self.num_beams.unwrap_or(1) as usize;
        if !(1..=16).contains(&num_beams) {
            return bad(format!("num_beams must be in [1, 16], got {num_beams}"));
        }
        let do_sample = temperature > 0.0;
        let cfg = GenerationConfig {
            max_new_tokens,
            min_new_tokens,
            num_beams,
            length_penalty: self.length_penalty.unwrap_or(1.0) as f32,
            do_sample,
            temperature: if do_sample { temperature as f32 } else { 1.0 },
            // OpenAI has no top_k: sampling considers the whole vocabulary unless asked.
            top_k: self.top_k.unwrap_or(0) as usize,
            top_p: self.top_p.unwrap_or(1.0) as f32,
            repetition_penalty: self.repetition_penalty.unwrap_or(1.0) as f32,
            no_repeat_ngram_size: self.no_repeat_ngram_size.unwrap_or(0) as usize,
            // Greedy and beam search do not draw: a seed would only keep them from
            // sharing a batch.
            seed: if do_sample { self.seed } else { None },
            ..Default::default()
        };
        cfg.validate()
            .map_err(|e| ApiError::invalid("invalid_parameter", e.to_string()))?;
        Ok(cfg)
    }

    /// `stop`: a string or up to 4 strings.
    pub fn stop(&self) -> Result<Vec<String>, ApiError> {
        let v = match &self.stop {
            Value::Null => Vec::new(),
            Value::String(s) => vec![s.clone()],
            Value::Array(a) => a
                .iter()
                .map(|x| {
                    x.as_str().map(str::to_string).ok_or_else(|| {
                        ApiError::invalid(
                            "invalid_parameter",
                            "stop must be a string or an array of strings",
                        )
                    })
                })
                .collect::<Result<_, _>>()?,
            _ => {
                return Err(ApiError::invalid(
                    "invalid_parameter",
                    "stop must be a string or an array of strings",
                ));
            }
        };
        if v.len() > 4 {
            return Err(ApiError::invalid(
                "invalid_parameter",
                "at most 4 stop sequences",
            ));
        }
        Ok(v.into_iter().filter(|s| !s.is_empty()).collect())
    }

    fn finish(
        &self,
        image: Vec<u8>,
        prompt: Option<String>,
        limits: &Limits,
    ) -> Result<GenRequest, ApiError> {
        Ok(GenRequest {
            image,
            prompt,
            config: self.config(limits)?,
            stop: self.stop()?,
            stream: self.stream,
            include_usage: self
                .stream_options
                .as_ref()
                .is_some_and(|o| o.include_usage),
        })
    }
}

/// The bytes of an image given as a `data:` URL (`data:image/png;base64,...`). Remote URLs
/// and file paths are refused: the server reads no files and makes no requests.
pub fn image_from_url(url: &str) -> Result<Vec<u8>, ApiError> {
    let url = url.trim();
    let Some(rest) = url.strip_prefix("data:") else {
        let what = if url.starts_with("http://") || url.starts_with("https://") {
            "remote image URLs are not fetched"
        } else if url.starts_with("file:") || url.starts_with('/') || url.starts_with('.') {
            "file paths are not read"
        } else {
            "not a data: URL"
        };
        return Err(ApiError::invalid(
            "invalid_image_url",
            format!(
                "image_url: {what}; send the image inline as a base64 data URL (data:image/png;base64,...)"
            ),
        ));
    };
    let (meta, data) = rest.split_once(',').ok_or_else(|| {
        ApiError::invalid(
            "invalid_image_url",
            "image_url: a data URL needs a ',' before its data",
        )
    })?;
    if !meta.ends_with(";base64") {
        return Err(ApiError::invalid(
            "invalid_image_url",
            "image_url: only base64 data URLs are accepted (data:image/...;base64,...)",
        ));
    }
    decode_base64(data)
}

fn decode_base64(data: &str) -> Result<Vec<u8>, ApiError> {
    let clean: String = data.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(clean.as_bytes())
        .map_err(|e| ApiError::bad_image(format!("image_url: invalid base64 data: {e}")))
}

/// One message's content: its text parts joined with spaces, and its images' bytes.
fn content_parts(content: &Value) -> Result<(String, Vec<Vec<u8>>), ApiError> {
    match content {
        Value::Null => Ok((String::new(), Vec::new())),
        Value::String(s) => Ok((s.clone(), Vec::new())),
        Value::Array(parts) => {
            let mut texts = Vec::new();
            let mut images = Vec::new();
            for p in parts {
                match p.get("type").and_then(Value::as_str) {
                    Some("text") => texts.push(
                        p.get("text")
                            .and_then(Value::as_str)
                            .ok_or_else(|| {
                                ApiError::invalid(
                                    "invalid_content",
                                    "a text part needs a 'text' string",
                                )
                            })?
                            .to_string(),
                    ),
                    Some("image_url") => {
                        let u = p.get("image_url");
                        let url = u
                            .and_then(|u| u.get("url"))
                            .or(u)
                            .and_then(Value::as_str)
                            .ok_or_else(|| {
                                ApiError::invalid(
                                    "invalid_content",
                                    "an image_url part needs 'image_url': {'url': 'data:...'}",
                                )
                            })?;
                        images.push(image_from_url(url)?);
                    }
                    Some(other) => {
                        return Err(ApiError::invalid(
                            "invalid_content",
                            format!(
                                "content part type '{other}' is not supported (text and image_url are)"
                            ),
                        ));
                    }
                    None => {
                        return Err(ApiError::invalid(
                            "invalid_content",
                            "a content part needs a 'type'",
                        ));
                    }
                }
            }
            Ok((texts.join(" "), images))
        }
        _ => Err(ApiError::invalid(
            "invalid_content",
            "message content must be a string or an array of parts",
        )),
    }
}

impl ChatRequest {
    /// The prompt as the library's `Chat` builds it: earlier user/assistant pairs become
    /// "Question: q Answer: a." turns, the last user message's text the question; a last
    /// user message with an image and no text (and no earlier turns) asks for a caption.
    /// Exactly one image in the conversation; system messages are ignored.
    pub fn into_gen(self, limits: &Limits) -> Result<GenRequest, ApiError> {
        if self.messages.is_empty() {
            return Err(ApiError::invalid("invalid_messages", "messages is empty"));
        }
        let mut image: Option<Vec<u8>> = None;
        let mut history: Vec<Turn> = Vec::new();
        let mut pending: Option<String> = None;
        let last = self.messages.len() - 1;
        let mut question = None;
        for (i, m) in self.messages.iter().enumerate() {
            let (text, imgs) = content_parts(&m.content)?;
            match m.role.as_str() {
                "system" | "developer" => continue,
                "user" => {
                    for b in imgs {
                        if image.replace(b).is_some() {
                            return Err(ApiError::invalid(
                                "too_many_images",
                                "BLIP-2 answers about one image per conversation; this one has several",
                            ));
                        }
                    }
                    if pending.is_some() {
                        return Err(ApiError::invalid(
                            "invalid_messages",
                            "two user messages in a row: each user message but the last needs an assistant answer",
                        ));
                    }
                    if i == last {
                        question = Some(text.trim().to_string());
                    } else {
                        pending = Some(text);
                    }
                }
                "assistant" => {
                    if !imgs.is_empty() {
                        return Err(ApiError::invalid(
                            "invalid_messages",
                            "assistant messages cannot hold images",
                        ));
                    }
                    let q = pending.take().ok_or_else(|| {
                        ApiError::invalid(
                            "invalid_messages",
                            "an assistant message must follow a user message",
                        )
                    })?;
                    // A turn without a question (the caption of the image) adds no context.
                    if !q.trim().is_empty() {
                        history.push(Turn {
                            question: q.trim().to_string(),
                            answer: text.trim().to_string(),
                        });
                    }
                }
                other => {
                    return Err(ApiError::invalid(
                        "invalid_messages",
                        format!(
                            "message role '{other}' is not supported (system, user, assistant are)"
                        ),
                    ));
                }
            }
        }
        let question = question.ok_or_else(|| {
            ApiError::invalid("invalid_messages", "the last message must be the user's")
        })?;
        let image = image.ok_or_else(|| {
            ApiError::invalid(
                "missing_image",
                "BLIP-2 needs an image: add an image_url part with a base64 data URL to a user message",
            )
        })?;
        let prompt = if question.is_empty() && history.is_empty() {
            None
        } else {
            Some(chat_prompt(&history, &question))
        };
        self.sampling.finish(image, prompt, limits)
    }
}

impl CompletionRequest {
    pub fn into_gen(self, limits: &Limits) -> Result<GenRequest, ApiError> {
        let prompt = match &self.prompt {
            Value::Null => None,
            Value::String(s) => Some(s.clone()),
            Value::Array(a) if a.len() == 1 && a[0].is_string() => {
                a[0].as_str().map(str::to_string)
            }
            _ => {
                return Err(ApiError::invalid(
                    "invalid_parameter",
                    "prompt must be one string (one image per request)",
                ));
            }
        };
        let prompt = prompt.filter(|p| !p.is_empty());
        let image = match &self.image {
            Some(Value::String(u)) => image_from_url(u)?,
            Some(v) => match v.get("url").and_then(Value::as_str) {
                Some(u) => image_from_url(u)?,
                None => {
                    return Err(ApiError::invalid(
                        "invalid_parameter",
                        "image must be a data URL string",
                    ));
                }
            },
            None => {
                return Err(ApiError::invalid(
                    "missing_image",
                    "BLIP-2 needs an image: add \"image\": \"data:image/png;base64,...\" to the request",
                ));
            }
        };
        self.sampling.finish(image, prompt, limits)
    }
}

/// `POST /v1/embeddings` on a retrieval checkpoint: `input` is a string or an array; each
/// element is text, or an image as a `data:` URL string or an `{"image": url}` /
/// `{"type": "image_url", "image_url": {"url": ...}}` object.
#[derive(Debug, Deserialize)]
pub struct EmbeddingRequest {
    #[serde(default)]
    pub model: Option<String>,
    pub input: Value,
}

/// One input of an embeddings request.
#[derive(Debug)]
pub enum EmbedInput {
    Text(String),
    Image(Vec<u8>),
}

impl EmbeddingRequest {
    pub fn inputs(&self) -> Result<Vec<EmbedInput>, ApiError> {
        let one = |v: &Value| -> Result<EmbedInput, ApiError> {
            match v {
                Value::String(s) if s.starts_with("data:") => {
                    Ok(EmbedInput::Image(image_from_url(s)?))
                }
                Value::String(s) => Ok(EmbedInput::Text(s.clone())),
                Value::Object(_) => {
                    let url = v
                        .get("image")
                        .or_else(|| v.get("image_url").map(|u| u.get("url").unwrap_or(u)))
                        .and_then(Value::as_str);
                    if let Some(u) = url {
                        return Ok(EmbedInput::Image(image_from_url(u)?));
                    }
                    match v.get("text").and_then(Value::as_str) {
                        Some(t) => Ok(EmbedInput::Text(t.to_string())),
                        None => Err(ApiError::invalid(
                            "invalid_input",
                            "an input object needs 'text' or 'image'",
                        )),
                    }
                }
                _ => Err(ApiError::invalid(
                    "invalid_input",
                    "input must be strings or {text|image} objects",
                )),
            }
        };
        let v = match &self.input {
            Value::Array(a) => a.iter().map(one).collect::<Result<Vec<_>, _>>()?,
            other => vec![one(other)?],
        };
        if v.is_empty() {
            return Err(ApiError::invalid("invalid_input", "input is empty"));
        }
        Ok(v)
    }
}

/// `POST /v1/match`: ITM probability and ITC similarity of each text with one image.
#[derive(Debug, Deserialize)]
pub struct MatchRequest {
    pub image: String,
    pub texts: Vec<String>,
}
