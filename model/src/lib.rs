//! BLIP-2 model: configuration, checkpoint loading, preprocessing, tokenizer, the model
//! components and generation.
//!
//! Layout: `config` (HF files), `loading` (one loader over directory, embedded and random
//! sources), `weights` (safetensors, shape-checked gets), `preprocess` + `tokenizer`
//! (processor parity), `image_encoder` (ViT + Q-Former, shared by captioning and
//! retrieval), `lm` (language-model families behind one trait), `blip2` (the captioning /
//! VQA pipeline), `retrieval` (ITM/ITC), `generate` (settings, processors, search).

pub mod adapters;
pub mod config;
pub mod embedded;
pub mod error;
pub mod limits;
pub mod preprocess;
pub mod tokenizer;
pub mod weights;

pub use adapters::{AdapterSpec, AdapterStats};
pub use config::{
    Blip2Config, ImageProcessorConfig, OptConfig, ProcessorConfig, QFormerConfig, T5Config,
    TextConfig, VisionConfig,
};
pub use error::{
    AdapterProblem, AdapterProblems, ModelError, Result, WeightProblem, WeightProblems,
};
pub use loading::{LoadOptions, Source};
pub use preprocess::{
    ImageInput, ImageLoadOptions, load_image, load_image_from_bytes, load_image_from_bytes_with,
    load_image_with, pixel_values, preprocess,
};
pub use tokenizer::{BatchEncoding, Blip2Tokenizer, PaddingSide};
pub use weights::{Checkpoint, WeightLoader, WeightStats};
pub mod batch;
pub mod blip2;
pub mod chat;
pub mod generate;
pub mod image_encoder;
pub mod inputs;
pub mod lm;
pub mod loading;
pub mod nn;
pub mod prompt;
pub mod qformer;
mod random;
pub mod retrieval;
pub mod save;
pub mod stream;
pub mod vision;
