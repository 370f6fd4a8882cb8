//! Packed bf16 weight matrices (`DType::BF16`): linear weights rounded to bf16 once, at
//! load, in the layout the CPU matrix kernels read directly (`blip2_kernels::Bf16Matrix`).
//! A CPU-only format: the GPU kernels have no bf16 path, so uploading one is a typed error.

use blip2_kernels::AlignedVec;
use half::bf16;

use crate::tensor::{CpuStorage, Storage};
use crate::{DType, Device, Error, Result, Tensor};

/// Host storage of a packed bf16 matrix of `rows × cols` logical elements.
#[derive(Clone, Debug)]
pub(crate) struct Bf16Data {
    pub rows: usize,
    pub cols: usize,
    pub data: AlignedVec<bf16>,
}

impl Bf16Data {
    pub(crate) fn matrix(&self) -> blip2_kernels::Bf16Matrix<'_> {
        blip2_kernels::Bf16Matrix {
            rows: self.rows,
            cols: self.cols,
            data: &self.data,
        }
    }

    pub(crate) fn unpack(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        blip2_kernels::unpack_bf16(&self.matrix(), &mut out);
        out
    }
}

impl Tensor {
    /// Rounds f32 host values of `shape` (rows = every dim but the last) to a packed bf16
    /// matrix on `device` (the CPU; the GPU has no bf16 kernels).
    pub(crate) fn pack_bf16(data: &[f32], shape: &[usize], device: &Device) -> Result<Tensor> {
        const OP: &str = "pack_bf16";
        let Some((&cols, lead)) = shape.split_last() else {
            return Err(Error::shape(OP, "a bf16 matrix needs rank >= 1"));
        };
        let rows = lead
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .filter(|r| r.checked_mul(cols).is_some())
            .ok_or_else(|| Error::shape(OP, format!("shape {shape:?} overflows usize")))?;
        if data.len() != rows * cols {
            return Err(Error::shape(
                OP,
                format!("{} values given for shape {shape:?}", data.len()),
            ));
        }
        if let Device::Gpu(_) = device {
            return Err(Error::DType {
                op: OP,
                operand: "device",
                expected: "the CPU (bf16 weights are a CPU format; use f16 or q8/q4 on the GPU)",
                found: DType::BF16,
            });
        }
        let mut packed = AlignedVec::zeroed(blip2_kernels::bf16_packed_len(rows, cols));
        blip2_kernels::pack_bf16(data, rows, cols, &mut packed);
        Ok(Tensor::from_cpu(
            shape.to_vec(),
            CpuStorage::Bf16(Bf16Data {
                rows,
                cols,
                data: packed,
            }),
        ))
    }

    pub(crate) fn bf16_data(&self) -> Option<&Bf16Data> {
        match &self.storage {
            Storage::Cpu(s) => match s.as_ref() {
                CpuStorage::Bf16(b) => Some(b),
                _ => None,
            },
            Storage::Gpu(_) => None,
        }
    }
}
