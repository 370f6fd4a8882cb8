//! Subcommand implementations of the `blip2` binary, one file per family.

pub mod bench;
pub mod common;
pub mod dataset;
pub mod eval;
pub mod generate;
pub mod info;
pub mod quantize;
pub mod retrieval;
pub mod scene;
