//! Errors of the model crate. Every message names the file, tensor, key or limit at fault.

use std::fmt;
use std::path::PathBuf;

/// One thing wrong with one tensor of a checkpoint, collected by
/// [`crate::weights::WeightLoader`] and reported all together by `finish()`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WeightProblem {
    /// The tensor (and its fallback, if one was given) is not in the checkpoint.
    Missing {
        name: String,
        expected: Vec<usize>,
        fallback: Option<String>,
    },
    /// The tensor exists with another shape.
    ShapeMismatch {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    /// The tensor is stored in a dtype we do not convert (only F32/F16/BF16 are read).
    UnsupportedDType {
        name: String,
        dtype: String,
        file: PathBuf,
    },
    /// A quantized tensor (as `blip2 quantize` writes it) or its `.qscales` companion is
    /// inconsistent: wrong dtype, byte count or shape, a missing or extra scales tensor.
    Quantized {
        name: String,
        file: PathBuf,
        msg: String,
    },
    /// The bytes could not be turned into a tensor (engine refused, device upload failed...).
    Read {
        name: String,
        file: PathBuf,
        msg: String,
    },
    /// The stored values include NaN or ±inf (`count` of them, the first at element `first`):
    /// a model computing with them gives NaN or garbage, never a usable answer.
    NonFinite {
        name: String,
        file: PathBuf,
        count: usize,
        first: usize,
    },
    /// Finite stored values too large for f16 (`count` of them, largest magnitude `max_abs`,
    /// formatted) would become ±inf when loaded as f16.
    F16Overflow {
        name: String,
        file: PathBuf,
        count: usize,
        max_abs: String,
    },
}

impl WeightProblem {
    pub fn name(&self) -> &str {
        match self {
            WeightProblem::Missing { name, .. }
            | WeightProblem::ShapeMismatch { name, .. }
            | WeightProblem::UnsupportedDType { name, .. }
            | WeightProblem::Quantized { name, .. }
            | WeightProblem::Read { name, .. }
            | WeightProblem::NonFinite { name, .. }
            | WeightProblem::F16Overflow { name, .. } => name,
        }
    }
}

impl fmt::Display for WeightProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WeightProblem::Missing {
                name,
                expected,
                fallback: None,
            } => write!(f, "missing: {name} (expected shape {expected:?})"),
            WeightProblem::Missing {
                name,
                expected,
                fallback: Some(fb),
            } => write!(
                f,
                "missing: {name} (expected shape {expected:?}; fallback {fb} missing too)"
            ),
            WeightProblem::ShapeMismatch {
                name,
                expected,
                found,
            } => write!(
                f,
                "shape mismatch: {name}: expected {expected:?}, found {found:?}"
            ),
            WeightProblem::UnsupportedDType { name, dtype, file } => write!(
                f,
                "unsupported dtype: {name} is {dtype} in {} (only F32, F16 and BF16 are read)",
                file.display()
            ),
            WeightProblem::Quantized { name, file, msg } => {
                write!(
                    f,
                    "bad quantized tensor: {name} in {}: {msg}",
                    file.display()
                )
            }
            WeightProblem::Read { name, file, msg } => {
                write!(f, "unreadable: {name} in {}: {msg}", file.display())
            }
            WeightProblem::NonFinite {
                name,
                file,
                count,
                first,
            } => write!(
                f,
                "non-finite values: {name} in {} holds {count} NaN or infinite value{} (the first at element {first})",
                file.display(),
                if *count == 1 { "" } else { "s" }
            ),
            WeightProblem::F16Overflow {
                name,
                file,
                count,
                max_abs,
            } => write!(
                f,
                "f16 overflow: {name} in {} has {count} value{} beyond f16's range (largest magnitude {max_abs} > 65504); load it with --dtype f32 or bf16",
                file.display(),
                if *count == 1 { "" } else { "s" }
            ),
        }
    }
}

/// At most this many problems are kept per checkpoint (a config asking for a million layers
/// must not build a million-line error); the rest are counted in [`WeightProblems::more`].
pub const MAX_WEIGHT_PROBLEMS: usize = 1000;
/// At most this many problems are printed; the message ends with how many were left out.
pub const SHOWN_WEIGHT_PROBLEMS: usize = 40;

/// The sorted list of [`WeightProblem`]s of one checkpoint, displayed one per line with a count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WeightProblems {
    pub checkpoint: PathBuf,
    /// The first [`MAX_WEIGHT_PROBLEMS`] distinct problems, sorted by tensor name.
    pub problems: Vec<WeightProblem>,
    /// Further problems not kept.
    pub more: usize,
}

impl WeightProblems {
    /// Every problem found, kept or not.
    pub fn total(&self) -> usize {
        self.problems.len() + self.more
    }
}

impl fmt::Display for WeightProblems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.total();
        write!(
            f,
            "checkpoint {} does not fit the model: {n} problem{}",
            self.checkpoint.display(),
            if n == 1 { "" } else { "s" }
        )?;
        for p in self.problems.iter().take(SHOWN_WEIGHT_PROBLEMS) {
            write!(f, "\n  {p}")?;
        }
        let hidden = n - self.problems.len().min(SHOWN_WEIGHT_PROBLEMS);
        if hidden > 0 {
            write!(f, "\n  ... and {hidden} more")?;
        }
        Ok(())
    }
}

/// One thing wrong with one key of a PEFT adapter (see [`crate::adapters`]), collected while the
/// adapter is checked against the checkpoint and reported all together.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdapterProblem {
    /// The key names a tensor (`target`) the checkpoint does not have.
    Unknown { key: String, target: String },
    /// A kind of adapter tensor this library does not merge (embedding LoRA, DoRA magnitudes,
    /// keys without peft's `base_model.model.` prefix...).
    Unsupported { key: String, msg: String },
    /// The key's shape does not fit the base tensor or its partner (`what` says which).
    ShapeMismatch {
        key: String,
        expected: Vec<usize>,
        found: Vec<usize>,
        what: String,
    },
    /// A LoRA pair whose module the config's `target_modules` (or `exclude_modules`,
    /// `layers_to_transform`) does not select: the file and its config disagree.
    NotTargeted { key: String, module: String },
    /// `lora_A` without `lora_B` or the reverse.
    Unpaired { key: String, missing: String },
    /// The target exists in the checkpoint but the model never reads it (a head this model
    /// does not use): merging it would change nothing.
    Unused { key: String, target: String },
    /// Values that cannot be merged: a dtype other than F32/F16/BF16, NaN or infinity.
    BadValues { key: String, msg: String },
}

impl AdapterProblem {
    pub fn key(&self) -> &str {
        match self {
            AdapterProblem::Unknown { key, .. }
            | AdapterProblem::Unsupported { key, .. }
            | AdapterProblem::ShapeMismatch { key, .. }
            | AdapterProblem::NotTargeted { key, .. }
            | AdapterProblem::Unpaired { key, .. }
            | AdapterProblem::Unused { key, .. }
            | AdapterProblem::BadValues { key, .. } => key,
        }
    }
}

impl fmt::Display for AdapterProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdapterProblem::Unknown { key, target } => {
                write!(
                    f,
                    "unknown key: {key}: the checkpoint has no tensor {target}"
                )
            }
            AdapterProblem::Unsupported { key, msg } => write!(f, "unsupported key: {key}: {msg}"),
            AdapterProblem::ShapeMismatch {
                key,
                expected,
                found,
                what,
            } => write!(
                f,
                "shape mismatch: {key}: expected {expected:?} ({what}), found {found:?}"
            ),
            AdapterProblem::NotTargeted { key, module } => write!(
                f,
                "not targeted: {key}: adapter_config.json's target_modules does not select module {module}"
            ),
            AdapterProblem::Unpaired { key, missing } => {
                write!(f, "unpaired: {key} has no partner {missing}")
            }
            AdapterProblem::Unused { key, target } => write!(
                f,
                "unused: {key}: this model never reads {target}, so the adapter would change nothing there"
            ),
            AdapterProblem::BadValues { key, msg } => write!(f, "bad values: {key}: {msg}"),
        }
    }
}

/// The sorted [`AdapterProblem`]s of one adapter directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdapterProblems {
    pub adapter: PathBuf,
    /// The first [`MAX_WEIGHT_PROBLEMS`] problems, sorted by key.
    pub problems: Vec<AdapterProblem>,
    /// Further problems not kept.
    pub more: usize,
}

impl fmt::Display for AdapterProblems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len() + self.more;
        write!(
            f,
            "adapter {} does not fit the model: {n} problem{}",
            self.adapter.display(),
            if n == 1 { "" } else { "s" }
        )?;
        for p in self.problems.iter().take(SHOWN_WEIGHT_PROBLEMS) {
            write!(f, "\n  {p}")?;
        }
        let hidden = n - self.problems.len().min(SHOWN_WEIGHT_PROBLEMS);
        if hidden > 0 {
            write!(f, "\n  ... and {hidden} more")?;
        }
        Ok(())
    }
}

/// Every failure of the model crate.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A JSON configuration file is unreadable, malformed, or has a key of the wrong type
    /// or an invalid value. `key` is the dotted path inside the file ("" for the whole file).
    #[error("{}: {}{msg}", path.display(), if key.is_empty() { String::new() } else { format!("key '{key}': ") })]
    Config {
        path: PathBuf,
        key: String,
        msg: String,
    },
    /// A checkpoint file is missing, truncated or corrupt, or the shard index is inconsistent.
    #[error("{}: {msg}", path.display())]
    Checkpoint { path: PathBuf, msg: String },
    /// Missing / mismatched / unreadable tensors, all of them at once.
    #[error("{0}")]
    Weights(WeightProblems),
    /// A PEFT adapter's keys do not fit the checkpoint: every problem at once.
    #[error("{0}")]
    Adapter(AdapterProblems),
    /// An image could not be read or decoded. `what` is the file name or "<bytes>".
    #[error("image {what}: {msg}")]
    Image { what: String, msg: String },
    /// Tokenizer files are missing or invalid, or a needed token is absent.
    #[error("tokenizer {}: {msg}", path.display())]
    Tokenizer { path: PathBuf, msg: String },
    /// An input refused before it is read or allocated: too large for its limit
    /// ([`crate::limits`]), or not a regular file. `what` is its role ("config", "image").
    #[error("{what} {}: {msg}", path.display())]
    TooLarge {
        what: String,
        path: PathBuf,
        msg: String,
    },
    /// A prompt longer than the model takes (`source` says where the limit comes from).
    #[error("prompt of {tokens} tokens exceeds the model's limit of {limit} ({limit_from})")]
    PromptTooLong {
        tokens: usize,
        limit: usize,
        limit_from: &'static str,
    },
    /// An I/O failure on a named file.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A caller-side argument is invalid (empty batch, size 0, ...).
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// The checkpoint asks for something this library does not implement (named).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The caller cancelled a generation (`Blip2::generate_from_features_cancellable`).
    #[error("generation cancelled")]
    Cancelled,
    /// A computation produced NaN or infinite values where the model needs numbers (`what`
    /// names the stage): the weights or the inputs are broken, or the dtype overflowed.
    #[error("{what}: {count} of {total} values are NaN or infinite")]
    NonFinite {
        what: String,
        count: usize,
        total: usize,
    },
    #[error(transparent)]
    Engine(#[from] blip2_engine::Error),
}

impl ModelError {
    pub(crate) fn config(
        path: impl Into<PathBuf>,
        key: impl Into<String>,
        msg: impl Into<String>,
    ) -> Self {
        ModelError::Config {
            path: path.into(),
            key: key.into(),
            msg: msg.into(),
        }
    }

    pub(crate) fn checkpoint(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        ModelError::Checkpoint {
            path: path.into(),
            msg: msg.into(),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ModelError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn tokenizer(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        ModelError::Tokenizer {
            path: path.into(),
            msg: msg.into(),
        }
    }

    pub(crate) fn image(what: impl Into<String>, msg: impl Into<String>) -> Self {
        ModelError::Image {
            what: what.into(),
            msg: msg.into(),
        }
    }
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;
