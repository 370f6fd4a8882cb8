use std::fmt;

/// Storage dtype of a tensor. Arithmetic always accumulates in f32.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
}

impl DType {
    pub fn size_of(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 => 2,
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
        })
    }
}

impl std::str::FromStr for DType {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Self> {
        match s {
            "f32" | "float32" => Ok(DType::F32),
            "f16" | "float16" => Ok(DType::F16),
            _ => Err(crate::Error::Invalid(format!(
                "unknown dtype '{s}' (expected f32 or f16)"
            ))),
        }
    }
}

/// Element type of raw bytes given to [`crate::Tensor::from_bytes`] (what a checkpoint stores).
/// BF16 is accepted here only: it is converted at upload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoredDType {
    F32,
    F16,
    BF16,
}

impl StoredDType {
    pub fn size_of(self) -> usize {
        match self {
            StoredDType::F32 => 4,
            StoredDType::F16 | StoredDType::BF16 => 2,
        }
    }
}
