use crate::DType;

pub type Result<T> = std::result::Result<T, Error>;

/// Every failure the engine can report. Messages name the op, the operand and the
/// expected vs found value so a caller can tell which tensor or limit is at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{op}: shape mismatch: {msg}")]
    Shape { op: &'static str, msg: String },
    #[error("{op}: unsupported dtype {found} for {operand} (expected {expected})")]
    DType {
        op: &'static str,
        operand: &'static str,
        expected: &'static str,
        found: DType,
    },
    #[error("{op}: operands live on different devices ({a} vs {b})")]
    DeviceMismatch {
        op: &'static str,
        a: String,
        b: String,
    },
    #[error("invalid argument: {0}")]
    Invalid(String),
    #[error("no GPU adapter available: {0}")]
    NoAdapter(String),
    #[error("GPU out of memory: {0}")]
    OutOfMemory(String),
    #[error("GPU device lost: {0}")]
    DeviceLost(String),
    #[error("GPU error: {0}")]
    Gpu(String),
    #[error("{what} needs {needed} but the device limit is {limit}")]
    Limit {
        what: String,
        needed: u64,
        limit: u64,
    },
}

impl Error {
    pub(crate) fn shape(op: &'static str, msg: impl Into<String>) -> Self {
        Error::Shape {
            op,
            msg: msg.into(),
        }
    }
}
