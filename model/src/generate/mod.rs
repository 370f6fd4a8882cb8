//! Generation: the settings, the logits processors applied to each step's scores on the
//! host (in the order `transformers` applies them), and the decoding loops (greedy,
//! sampling and beam search) over any model that implements [`DecodeModel`].
//!
//! A caller's [`GenerationConfig`] is resolved once, against the checkpoint's
//! [`GenerationDefaults`], into a [`ResolvedGeneration`]; [`decode`] and everything below
//! it read only that value.
//!
//! Files, each importing only files listed after it (so there is no cycle):
//!
//! ```text
//! search        decode entry, greedy/sampling loop  → beam, row, settings, decode_model
//! beam          beam search and beam sampling       → row (rows_of, group_row), processors, settings, sampling, decode_model
//! row           one sequence's choice per step      → processors, settings, sampling, decode_model
//! processors    logits processors, argmax           → settings
//! test_util     TableModel (tests only)             → settings, decode_model
//! settings      GenerationConfig → ResolvedGeneration → sampling (random_seed)
//! sampling      Rng, warpers, softmax, draws        → (none)
//! decode_model  DecodeModel, TokenEvent, DecodeOutput, the logits checks → (none)
//! ```
//!
//! The tests of `processors`, `beam` and `search` use `test_util`.

pub mod beam;
mod decode_model;
pub mod processors;
mod row;
pub mod sampling;
mod search;
mod settings;
#[cfg(test)]
mod test_util;

pub use decode_model::{DecodeModel, DecodeOutput, TokenEvent};
pub use row::{RowDecoder, RowToken, choose_rows};
pub use search::decode;
pub use settings::{EarlyStopping, GenerationConfig, GenerationDefaults, ResolvedGeneration};
