//! OPT (`model_type: "opt"`): the decoder-only language model of blip2-opt-2.7b/-6.7b.
//! `config` holds `OPTConfig`, `model` the network and its KV cache, `decode` the
//! [`crate::lm::LanguageModel`] adapter the pipeline drives.

mod config;
mod decode;
mod model;

pub use config::OptConfig;
pub use model::{KvCache, Opt};
