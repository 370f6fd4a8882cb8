use std::fmt;

pub use blip2_kernels::QFormat;

/// Storage dtype of a tensor. Arithmetic always accumulates in f32.
///
/// `Q8` and `Q4` are block-quantized weight matrices (32 values per block with an f16 scale;
/// layout in `docs/quantization.md`): they are accepted as the weight of [`crate::ops::linear`]
/// and by [`crate::ops::cast`] / [`crate::Tensor::to_vec_f32`], and rejected with
/// [`crate::Error::DType`] by every other op.
///
/// `BF16` is a packed weight format of the same kind (CPU only): a linear weight rounded to
/// bf16 once and laid out for the matrix engines (`blip2_kernels::Bf16Matrix`), multiplied
/// with AMX tiles where the CPU has them (activations rounded to bf16, f32 sums) and with f32
/// activations otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    Q8,
    Q4,
    BF16,
}

impl DType {
    /// Bytes per element of a float dtype. Quantized dtypes have no per-element size (a
    /// block of 32 shares its scale): this returns their per-value byte count rounded up (1),
    /// and [`crate::Tensor::size_in_bytes`] gives exact sizes.
    pub fn size_of(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::Q8 | DType::Q4 => 1,
        }
    }

    /// The block format of a quantized dtype.
    pub fn quant_format(self) -> Option<QFormat> {
        match self {
            DType::Q8 => Some(QFormat::Q8),
            DType::Q4 => Some(QFormat::Q4),
            DType::F32 | DType::F16 | DType::BF16 => None,
        }
    }

    pub fn is_quantized(self) -> bool {
        self.quant_format().is_some()
    }

    /// A packed weight format (Q8, Q4, BF16): the weight of [`crate::ops::linear`] only (Q8/Q4
    /// also embedding tables), read back with [`crate::Tensor::to_vec_f32`] or
    /// [`crate::ops::cast`], rejected by every other op.
    pub fn is_packed(self) -> bool {
        self.is_quantized() || self == DType::BF16
    }

    /// The dtype of a block format.
    pub fn from_format(f: QFormat) -> DType {
        match f {
            QFormat::Q8 => DType::Q8,
            QFormat::Q4 => DType::Q4,
        }
    }

    /// Storage bits per weight (scales included for quantized dtypes).
    pub fn bits_per_weight(self) -> f64 {
        match self.quant_format() {
            Some(f) => f.bits_per_weight(),
            None => (self.size_of() * 8) as f64,
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::Q8 => "q8",
            DType::Q4 => "q4",
            DType::BF16 => "bf16",
        })
    }
}

impl std::str::FromStr for DType {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" => Ok(DType::F32),
            "f16" | "float16" => Ok(DType::F16),
            "q8" | "q8_0" => Ok(DType::Q8),
            "q4" | "q4_0" => Ok(DType::Q4),
            "bf16" | "bfloat16" => Ok(DType::BF16),
            _ => Err(crate::Error::Invalid(format!(
                "unknown dtype '{s}' (expected f32, f16, bf16, q8 or q4)"
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

    fn bits(self) -> blip2_kernels::FloatBits {
        match self {
            StoredDType::F32 => blip2_kernels::FloatBits::F32,
            StoredDType::F16 => blip2_kernels::FloatBits::F16,
            StoredDType::BF16 => blip2_kernels::FloatBits::Bf16,
        }
    }

    /// How many of the little-endian values in `bytes` are NaN or infinite (SIMD, threaded).
    pub fn count_nonfinite(self, bytes: &[u8]) -> usize {
        blip2_kernels::count_nonfinite(self.bits(), bytes)
    }

    /// The index of the first NaN or infinite value in `bytes`.
    pub fn first_nonfinite(self, bytes: &[u8]) -> Option<usize> {
        blip2_kernels::first_nonfinite(self.bits(), bytes)
    }

    /// How many finite values in `bytes` become ±inf when rounded to f16, and the largest
    /// magnitude among them (0 when none).
    pub fn f16_overflow(self, bytes: &[u8]) -> (usize, f32) {
        blip2_kernels::f16_overflow(self.bits(), bytes)
    }
}
