//! T5 (`model_type: "t5"`): the encoder-decoder language model of blip2-flan-t5-xl/-xxl.
//! `config` holds `T5Config`, `model` the network and its decoder cache, `decode` the
//! [`crate::lm::LanguageModel`] adapter the pipeline drives, `batch` its step-level batch
//! (continuous batching).

mod batch;
mod config;
mod decode;
mod model;

pub use config::{T5Config, parse_feed_forward_proj};
pub use model::{T5, T5DecoderCache, relative_position_bucket};
