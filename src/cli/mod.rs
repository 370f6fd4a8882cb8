//! Subcommand implementations of the `blip2` binary, one file per family.

pub mod common;
pub mod generate;
pub mod info;
