//! Quantized tensors (`DType::Q8`, `DType::Q4`): host storage, construction (quantizing f32
//! data, or adopting already-packed bytes such as a memory-mapped file) and read-back.
//!
//! A quantized tensor of shape `[.., cols]` is a matrix of `rows = Π leading dims` rows,
//! each quantized along `cols` in blocks of 32 (`blip2_kernels::QFormat` has the layout).

use std::sync::Arc;

use half::f16;

use crate::tensor::{CpuStorage, Storage};
use crate::{DType, Device, Error, QFormat, Result, Tensor};

/// Bytes of packed quants: owned, or a range of a shared buffer (a memory-mapped file) that
/// is used in place.
#[derive(Clone)]
pub enum QuantBytes {
    Owned(Vec<u8>),
    Shared {
        owner: Arc<dyn AsRef<[u8]> + Send + Sync>,
        start: usize,
        len: usize,
    },
}

impl QuantBytes {
    pub fn as_slice(&self) -> &[u8] {
        match self {
            QuantBytes::Owned(v) => v,
            QuantBytes::Shared { owner, start, len } => {
                // Range checked when the tensor was made (`Tensor::from_quantized`).
                &(**owner).as_ref()[*start..*start + *len]
            }
        }
    }
}

impl std::fmt::Debug for QuantBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QuantBytes::Owned(v) => write!(f, "Owned({} bytes)", v.len()),
            QuantBytes::Shared { len, .. } => write!(f, "Shared({len} bytes)"),
        }
    }
}

/// Host storage of a quantized matrix.
#[derive(Clone, Debug)]
pub(crate) struct QuantData {
    pub format: QFormat,
    pub rows: usize,
    pub cols: usize,
    pub qs: QuantBytes,
    pub scales: Vec<f16>,
}

impl QuantData {
    pub(crate) fn matrix(&self) -> blip2_kernels::QMatrix<'_> {
        blip2_kernels::QMatrix {
            format: self.format,
            rows: self.rows,
            cols: self.cols,
            qs: self.qs.as_slice(),
            scales: &self.scales,
        }
    }

    pub(crate) fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        blip2_kernels::dequantize(&self.matrix(), &mut out);
        out
    }

    pub(crate) fn quantize(format: QFormat, data: &[f32], rows: usize, cols: usize) -> QuantData {
        let mut qs = vec![0u8; rows * format.row_bytes(cols)];
        let mut scales = vec![f16::ZERO; rows * QFormat::row_blocks(cols)];
        blip2_kernels::quantize_rows(format, data, rows, cols, &mut qs, &mut scales);
        QuantData {
            format,
            rows,
            cols,
            qs: QuantBytes::Owned(qs),
            scales,
        }
    }
}

/// (rows, cols) of a quantized tensor's shape, or a shape error.
fn matrix_dims(op: &'static str, shape: &[usize]) -> Result<(usize, usize)> {
    let Some((&cols, lead)) = shape.split_last() else {
        return Err(Error::shape(
            op,
            "a quantized tensor needs rank >= 1 (quantization blocks run along the last dim)",
        ));
    };
    let rows = lead
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| Error::shape(op, format!("shape {shape:?} overflows usize")))?;
    rows.checked_mul(cols)
        .ok_or_else(|| Error::shape(op, format!("shape {shape:?} overflows usize")))?;
    Ok((rows, cols))
}

fn format_of(op: &'static str, dtype: DType) -> Result<QFormat> {
    dtype.quant_format().ok_or(Error::DType {
        op,
        operand: "dtype",
        expected: "q8 or q4",
        found: dtype,
    })
}

impl Tensor {
    /// Quantizes f32 host values of `shape` (row-major; blocks along the last dim) to the
    /// quantized `dtype` (Q8 or Q4) on `device`.
    pub fn quantize(
        data: &[f32],
        shape: &[usize],
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        const OP: &str = "quantize";
        let format = format_of(OP, dtype)?;
        let (rows, cols) = matrix_dims(OP, shape)?;
        if data.len() != rows * cols {
            return Err(Error::shape(
                OP,
                format!("{} values given for shape {shape:?}", data.len()),
            ));
        }
        Self::upload_quant(QuantData::quantize(format, data, rows, cols), shape, device)
    }

    /// A quantized tensor from already-packed parts (as `blip2 quantize` writes them): `qs`
    /// the quants (`rows · row_bytes(cols)` bytes, used in place when shared), `scales` the
    /// little-endian f16 scales (`rows · row_blocks(cols)` of them). Sizes are checked.
    pub fn from_quantized(
        dtype: DType,
        shape: &[usize],
        qs: QuantBytes,
        scales: &[u8],
        device: &Device,
    ) -> Result<Tensor> {
        const OP: &str = "from_quantized";
        let format = format_of(OP, dtype)?;
        let (rows, cols) = matrix_dims(OP, shape)?;
        if let QuantBytes::Shared { owner, start, len } = &qs {
            let have = (**owner).as_ref().len();
            if start.checked_add(*len).is_none_or(|e| e > have) {
                return Err(Error::shape(
                    OP,
                    format!(
                        "quant bytes {start}..{} lie outside a {have}-byte buffer",
                        start + len
                    ),
                ));
            }
        }
        let want_q = rows.checked_mul(format.row_bytes(cols));
        let want_s = rows
            .checked_mul(QFormat::row_blocks(cols))
            .and_then(|n| n.checked_mul(2));
        let got_q = qs.as_slice().len();
        if want_q != Some(got_q) || want_s != Some(scales.len()) {
            return Err(Error::shape(
                OP,
                format!(
                    "{dtype} {shape:?} needs {} quant bytes and {} scale bytes, found {got_q} and {}",
                    want_q.map_or("too many".into(), |v| v.to_string()),
                    want_s.map_or("too many".into(), |v| v.to_string()),
                    scales.len()
                ),
            ));
        }
        let scales = scales
            .chunks_exact(2)
            .map(|c| f16::from_bits(u16::from_le_bytes([c[0], c[1]])))
            .collect();
        let data = QuantData {
            format,
            rows,
            cols,
            qs,
            scales,
        };
        Self::upload_quant(data, shape, device)
    }

    pub(crate) fn upload_quant(
        data: QuantData,
        shape: &[usize],
        device: &Device,
    ) -> Result<Tensor> {
        let dtype = DType::from_format(data.format);
        match device {
            Device::Cpu => Ok(Tensor::from_cpu(shape.to_vec(), CpuStorage::Quant(data))),
            Device::Gpu(g) => Ok(Tensor::from_parts(
                shape.to_vec(),
                dtype,
                device.clone(),
                Storage::Gpu(g.upload_quant(&data)?),
            )),
        }
    }

    /// The packed parts of a quantized CPU tensor: (format, quant bytes, scales). `None` for
    /// float tensors and for tensors on a GPU (copy them to the CPU first).
    pub fn quantized_parts(&self) -> Option<(QFormat, &[u8], &[f16])> {
        match &self.storage {
            Storage::Cpu(s) => match s.as_ref() {
                CpuStorage::Quant(q) => Some((q.format, q.qs.as_slice(), &q.scales)),
                _ => None,
            },
            Storage::Gpu(_) => None,
        }
    }

    /// Host copy of the quantized data of this tensor (downloading from a GPU if needed).
    pub(crate) fn quant_data(&self) -> Result<QuantData> {
        let format = format_of("quant_data", self.dtype())?;
        let (rows, cols) = matrix_dims("quant_data", self.shape())?;
        match &self.storage {
            Storage::Cpu(s) => match s.as_ref() {
                CpuStorage::Quant(q) => Ok(q.clone()),
                _ => Err(Error::Invalid("float storage on a quantized tensor".into())),
            },
            Storage::Gpu(s) => match self.device() {
                Device::Gpu(g) => g.download_quant(s, format, rows, cols),
                Device::Cpu => Err(Error::Invalid("GPU storage on a CPU tensor".into())),
            },
        }
    }
}
