//! BLIP-2 model: configuration, checkpoint loading, preprocessing, tokenizer and the
//! model components.

pub mod config;
pub mod error;
pub mod preprocess;
pub mod tokenizer;
pub mod weights;

pub use config::{Blip2Config, ImageProcessorConfig, OptConfig, ProcessorConfig, QFormerConfig, T5Config, TextConfig, VisionConfig};
pub use error::{ModelError, WeightProblem, WeightProblems};
pub use preprocess::{ImageInput, load_image, load_image_from_bytes, pixel_values, preprocess};
pub use tokenizer::{BatchEncoding, Blip2Tokenizer, PaddingSide};
pub use weights::{Checkpoint, WeightLoader};
