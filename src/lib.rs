//! # blip2
//!
//! BLIP-2 image captioning and visual question answering in pure Rust, on a tensor engine
//! with a CPU SIMD backend and WGSL kernels for any wgpu adapter (Vulkan, Metal, DX12).
//! It loads Hugging Face checkpoints (`Salesforce/blip2-opt-2.7b` and friends) unmodified.
//!
//! ```no_run
//! use blip2::{Blip2, Device, LoadOptions};
//!
//! let model = Blip2::load("blip2-opt-2.7b", LoadOptions { device: Device::auto()?, ..Default::default() })?;
//! let image = blip2::load_image("photo.jpg")?;
//! println!("{}", model.caption(&image)?.text);
//! println!("{}", model.ask(&image, "what is the dog doing?")?.text);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub use blip2_engine::{DType, Device, DeviceInfo};
pub use blip2_model::adapters::{AdapterSpec, AdapterStats};
pub use blip2_model::batch::{DecodeBatch, Join, SeqId};
pub use blip2_model::blip2::{Blip2, Generation, ImageFeatures, Timings};
pub use blip2_model::chat::{Chat, SharedChat, Turn};
pub use blip2_model::generate::{EarlyStopping, GenerationConfig, ResolvedGeneration, TokenEvent};
pub use blip2_model::loading::{LoadOptions, Source};
pub use blip2_model::preprocess::{
    ImageInput, ImageLoadOptions, load_image, load_image_from_bytes, load_image_from_bytes_with,
    load_image_with,
};
pub use blip2_model::prompt::vqa_prompt;
pub use blip2_model::retrieval::{
    Blip2Retrieval, ImageEmbedding, MatchScore, RankedText, SearchHit, TextEmbedding,
};
pub use blip2_model::stream::TextStream;
pub use blip2_model::{ModelError as Error, Result};

/// Lower layers, for advanced use (custom pipelines, benchmarks).
pub mod engine {
    pub use blip2_engine::*;
}

/// BLIP-2 components, loading and preprocessing.
pub mod model {
    pub use blip2_model::*;
}

/// Caption (BLEU, CIDEr-D) and VQA accuracy evaluation (docs/eval.md).
pub mod eval {
    pub use blip2_eval::*;
}

/// Re-export so callers can pass `image::DynamicImage` without naming the crate version.
pub use image;

/// The bundled demo model (embedded weights) and its evaluation on fresh scenes.
pub mod demo;

/// Procedural scenes with exact ground truth: what the bundled demo model was trained on.
pub mod scene;

/// The server's request JSON (`blip2 serve`): request types, their conversion into prompts
/// and generation settings, `data:` URL decoding, limits and API errors. In the library so
/// that the fuzz targets (`fuzz/`) parse requests with the server's own code.
#[doc(hidden)]
#[path = "serve/shared.rs"]
pub mod serve_api;

/// Entry points of the fuzz targets (`fuzz/`), shared with the stable-toolchain replay of
/// their committed corpus (`tests/fuzz_corpus.rs`).
#[doc(hidden)]
pub mod fuzz;
