//! Incremental text from a stream of token ids.
//!
//! A byte-level BPE token can hold part of a multi-byte UTF-8 character, and the
//! tokenizer's clean-up can change how a space before a token is written. So the whole
//! prefix is decoded after each token and only the part that can no longer change is
//! released: trailing U+FFFD (an incomplete character) and trailing whitespace are held
//! back until a later token or the end settles them. The concatenation of everything
//! released equals the final text (`Generation::text`: decoded, skip_special_tokens,
//! trimmed).

use crate::Result;
use crate::tokenizer::Blip2Tokenizer;

pub struct TextStream<'a> {
    tokenizer: &'a Blip2Tokenizer,
    eos: Vec<u32>,
    ids: Vec<u32>,
    emitted: String,
}

impl<'a> TextStream<'a> {
    /// `eos`: ids that end the text (left out of it, as the final text leaves them out
    /// after trimming).
    pub fn new(tokenizer: &'a Blip2Tokenizer, eos: &[u32]) -> TextStream<'a> {
        TextStream {
            tokenizer,
            eos: eos.to_vec(),
            ids: Vec::new(),
            emitted: String::new(),
        }
    }

    /// Adds one token; returns the newly settled text (often empty).
    pub fn push(&mut self, id: u32) -> Result<String> {
        if self.eos.contains(&id) {
            return Ok(String::new());
        }
        self.ids.push(id);
        let full = self.tokenizer.decode(&self.ids, true)?;
        let settled = full
            .trim_start()
            .trim_end_matches(|c: char| c == '\u{FFFD}' || c.is_whitespace())
            .to_string();
        Ok(self.release(&settled))
    }

    /// Ends the stream; returns the rest of the text.
    pub fn finish(&mut self) -> Result<String> {
        let full = self.tokenizer.decode(&self.ids, true)?;
        Ok(self.release(full.trim()))
    }

    /// Everything released so far.
    pub fn text(&self) -> &str {
        &self.emitted
    }

    /// The part of `settled` beyond what was released. A released prefix cannot be taken
    /// back; if a later decoding disagrees with it, nothing more is released until it
    /// agrees again (the final `Generation::text` stays authoritative).
    fn release(&mut self, settled: &str) -> String {
        match settled.strip_prefix(self.emitted.as_str()) {
            Some(rest) if !rest.is_empty() => {
                let rest = rest.to_string();
                self.emitted.push_str(&rest);
                rest
            }
            _ => String::new(),
        }
    }
}
