//! Hugging Face configuration files, split by job:
//! - `schema`: `config.json` (`Blip2ForConditionalGeneration` / `Blip2ForImageTextRetrieval`)
//!   and transformers' defaults for every absent key; the language model's half is parsed by
//!   its family in `crate::lm`;
//! - `processor`: the image-processor settings;
//! - `presets`: configs at the published sizes for random-weight benchmarks;
//! - `validate`: invariants checked once at parse time;
//! - `generation_file`: `generation_config.json`, which BLIP-2 generation ignores as
//!   transformers does (its differing settings become notes);
//! - `json`: the typed JSON reader whose errors name the file and the dotted key
//!   (`config.json: key 'text_config.d_model': expected an unsigned integer, found "abc"`).

pub mod generation_file;
pub(crate) mod json;
pub mod presets;
pub mod processor;
pub mod schema;
pub mod validate;

pub use crate::lm::TextConfig;
pub use crate::lm::opt::OptConfig;
pub use crate::lm::t5::{T5Config, parse_feed_forward_proj};
pub use processor::{CLIP_MEAN, CLIP_STD, ImageProcessorConfig, ProcessorConfig};
pub use schema::{Blip2Config, ModelFamily, QFormerConfig, VisionConfig};
