//! BLIP-2 model: configuration, checkpoint loading, preprocessing, tokenizer and the
//! model components.

pub mod config;
pub mod embedded;
pub mod error;
pub mod preprocess;
pub mod tokenizer;
pub mod weights;

pub use config::{
    Blip2Config, ImageProcessorConfig, OptConfig, ProcessorConfig, QFormerConfig, T5Config,
    TextConfig, VisionConfig,
};
pub use error::{ModelError, Result, WeightProblem, WeightProblems};
pub use preprocess::{ImageInput, load_image, load_image_from_bytes, pixel_values, preprocess};
pub use tokenizer::{BatchEncoding, Blip2Tokenizer, PaddingSide};
pub use weights::{Checkpoint, WeightLoader};
pub mod blip2;
pub mod chat;
pub mod generate;
mod inputs;
pub mod nn;
pub mod opt;
pub mod qformer;
mod random;
pub mod retrieval;
pub mod stream;
pub mod t5;
pub mod vision;
