//! LLaMA (`model_type: "llama"`): the decoder-only language model of InstructBLIP's Vicuna
//! checkpoints. `config` holds `LlamaConfig` (with the rotary settings), `model` the
//! network and its KV cache, `decode` the [`crate::lm::LanguageModel`] adapter.

mod config;
mod decode;
mod model;

pub use config::{LlamaConfig, RopeScaling};
pub use model::{KvCache, Llama};
