use std::sync::Arc;

use half::f16;

use crate::bf16::Bf16Data;
use crate::gpu::GpuStorage;
use crate::host::{HostVec, SharedBytes, SharedSlice, zeroed_large};
use crate::panels::Panels;
use crate::quant::QuantData;
use crate::stored::{Elem, StoredView, read_pod};
use crate::{DType, Device, Error, Result, StoredDType};

/// Host storage: contiguous, row-major.
#[derive(Clone, Debug)]
pub(crate) enum CpuStorage {
    F32(Vec<f32>),
    /// Owned, or in place in a mapped checkpoint ([`Tensor::from_shared_bytes`]).
    F16(HostVec<f16>),
    Quant(QuantData),
    Bf16(Bf16Data),
    /// An f32/f16 linear weight in the GEMM's panel layout (`panels.rs`).
    Panels(Panels),
}

#[derive(Clone)]
pub(crate) enum Storage {
    Cpu(Arc<CpuStorage>),
    Gpu(GpuStorage),
}

/// A contiguous row-major n-d array on a [`Device`]. Cloning is cheap (shared storage);
/// ops never mutate their inputs, except the explicit in-place [`crate::ops::write_at`].
#[derive(Clone)]
pub struct Tensor {
    shape: Vec<usize>,
    dtype: DType,
    device: Device,
    pub(crate) storage: Storage,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Tensor({:?}, {}, {:?})",
            self.shape, self.dtype, self.device
        )
    }
}

/// Element count of a shape that comes from outside (a config, a file, a caller), checked:
/// a plain product would wrap in release builds and let a short buffer pass for a huge shape.
fn numel(what: &'static str, shape: &[usize]) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| {
            Error::shape(
                what,
                format!("shape {shape:?} has more elements than usize holds"),
            )
        })
}

impl Tensor {
    pub(crate) fn from_parts(
        shape: Vec<usize>,
        dtype: DType,
        device: Device,
        storage: Storage,
    ) -> Tensor {
        Tensor {
            shape,
            dtype,
            device,
            storage,
        }
    }

    pub(crate) fn from_cpu(shape: Vec<usize>, storage: CpuStorage) -> Tensor {
        let dtype = match storage {
            CpuStorage::F32(_) => DType::F32,
            CpuStorage::F16(_) => DType::F16,
            CpuStorage::Quant(ref q) => DType::from_format(q.format),
            CpuStorage::Bf16(_) => DType::BF16,
            CpuStorage::Panels(ref p) => p.dtype(),
        };
        Tensor::from_parts(shape, dtype, Device::Cpu, Storage::Cpu(Arc::new(storage)))
    }

    fn check_len(what: &'static str, len: usize, shape: &[usize]) -> Result<()> {
        let n = numel(what, shape)?;
        if len != n {
            return Err(Error::shape(
                what,
                format!("{len} elements given for shape {shape:?} ({n} expected)"),
            ));
        }
        Ok(())
    }

    /// An f32 tensor from host data.
    pub fn from_f32(data: Vec<f32>, shape: &[usize], device: &Device) -> Result<Tensor> {
        Self::check_len("from_f32", data.len(), shape)?;
        Self::upload(CpuStorage::F32(data), shape, device)
    }

    /// An f16 tensor from host data.
    pub fn from_f16(data: Vec<f16>, shape: &[usize], device: &Device) -> Result<Tensor> {
        Self::check_len("from_f16", data.len(), shape)?;
        Self::upload(CpuStorage::F16(data.into()), shape, device)
    }

    /// A tensor of `dtype` from f32 host values (converted when `dtype` is F16, quantized
    /// along the last dim when it is Q8/Q4).
    pub fn from_slice(
        data: &[f32],
        shape: &[usize],
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        Self::check_len("from_slice", data.len(), shape)?;
        if dtype.is_quantized() {
            return Tensor::quantize(data, shape, dtype, device);
        }
        if dtype == DType::BF16 {
            return Tensor::pack_bf16(data, shape, device);
        }
        let storage = match dtype {
            DType::F32 => CpuStorage::F32(data.to_vec()),
            DType::F16 => {
                let mut out = vec![f16::ZERO; data.len()];
                blip2_kernels::f32_to_f16(data, &mut out);
                CpuStorage::F16(out.into())
            }
            DType::Q8 | DType::Q4 | DType::BF16 => unreachable!("packed dtypes returned above"),
        };
        Self::upload(storage, shape, device)
    }

    /// A tensor of `dtype` from little-endian raw bytes of `stored` elements (as safetensors
    /// stores them, possibly unaligned). BF16 is converted here; it is never a storage dtype.
    pub fn from_bytes(
        bytes: &[u8],
        stored: StoredDType,
        shape: &[usize],
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let n = numel("from_bytes", shape)?;
        let want = n.checked_mul(stored.size_of()).ok_or_else(|| {
            Error::shape(
                "from_bytes",
                format!("{n} {stored:?} elements overflow usize bytes"),
            )
        })?;
        if bytes.len() != want {
            return Err(Error::shape(
                "from_bytes",
                format!(
                    "{} bytes given for {n} {stored:?} elements of shape {shape:?} ({want} expected)",
                    bytes.len(),
                ),
            ));
        }
        if dtype.is_packed() {
            let v = Self::from_bytes(bytes, stored, shape, DType::F32, &Device::Cpu)?;
            let data = match v.cpu_storage() {
                CpuStorage::F32(d) => d,
                _ => unreachable!("converted to f32 just above"),
            };
            return Tensor::from_slice(data, shape, dtype, device);
        }
        // Kept dtypes are copied (owned storage); conversions read the file's bytes in place
        // where aligned, into buffers advised for huge pages, on all threads when large.
        let storage = match (stored, dtype) {
            (StoredDType::F32, DType::F32) => CpuStorage::F32(read_pod(bytes, f32::from_le_bytes)),
            (StoredDType::F16, DType::F16) => {
                CpuStorage::F16(read_pod(bytes, |b| f16::from_bits(u16::from_le_bytes(b))).into())
            }
            (_, DType::F32) => CpuStorage::F32(converted(bytes, stored, n)),
            (_, DType::F16) => CpuStorage::F16(converted::<f16>(bytes, stored, n).into()),
            (_, DType::Q8 | DType::Q4 | DType::BF16) => {
                unreachable!("packed dtypes returned above")
            }
        };
        Self::upload(storage, shape, device)
    }

    /// A tensor of `dtype` from the `len` bytes at `start` of a shared buffer (a
    /// memory-mapped checkpoint) holding little-endian `stored` elements. f16 data kept as
    /// f16 on the CPU is used in place when aligned (no copy: its pages are read from the
    /// page cache when first used, and the tensor keeps the buffer alive); anything else is
    /// converted as [`Tensor::from_bytes`] does. [`Tensor::is_shared`] tells which.
    #[allow(clippy::too_many_arguments)]
    pub fn from_shared_bytes(
        owner: SharedBytes,
        start: usize,
        len: usize,
        stored: StoredDType,
        shape: &[usize],
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let range = start
            .checked_add(len)
            .and_then(|end| (*owner).as_ref().get(start..end))
            .ok_or_else(|| {
                Error::shape(
                    "from_shared_bytes",
                    format!(
                        "bytes {start}..{start}+{len} lie outside a {}-byte buffer",
                        (*owner).as_ref().len()
                    ),
                )
            })?;
        if Self::used_in_place(stored, dtype, device) {
            let n = numel("from_shared_bytes", shape)?;
            if n.checked_mul(2) == Some(len)
                && let Some(view) = SharedSlice::new(owner.clone(), start, n)
            {
                return Ok(Tensor::from_cpu(
                    shape.to_vec(),
                    CpuStorage::F16(HostVec::Shared(view)),
                ));
            }
        }
        Self::from_bytes(range, stored, shape, dtype, device)
    }

    /// Whether [`Tensor::from_shared_bytes`] keeps elements stored as `stored` and wanted as
    /// `dtype` on `device` in place (f16 on the CPU, when the bytes are aligned for it)
    /// instead of converting them into memory of their own.
    pub fn used_in_place(stored: StoredDType, dtype: DType, device: &Device) -> bool {
        (stored, dtype) == (StoredDType::F16, DType::F16) && !device.is_gpu()
    }

    /// Whether this tensor's elements live in place in a shared buffer (a mapped file) rather
    /// than in memory of its own.
    pub fn is_shared(&self) -> bool {
        match &self.storage {
            Storage::Cpu(s) => match s.as_ref() {
                CpuStorage::F16(v) => v.is_shared(),
                CpuStorage::Quant(q) => matches!(q.qs, crate::QuantBytes::Shared { .. }),
                _ => false,
            },
            Storage::Gpu(_) => false,
        }
    }

    fn upload(storage: CpuStorage, shape: &[usize], device: &Device) -> Result<Tensor> {
        match device {
            Device::Cpu => Ok(Tensor::from_cpu(shape.to_vec(), storage)),
            Device::Gpu(g) => {
                let (dtype, s) = match storage {
                    CpuStorage::F32(v) => (DType::F32, g.upload_f32(&v)?),
                    CpuStorage::F16(v) => (DType::F16, g.upload_f16(&v)?),
                    CpuStorage::Quant(q) => return Tensor::upload_quant(q, shape, device),
                    CpuStorage::Bf16(b) => return Tensor::pack_bf16(&b.unpack(), shape, device),
                    CpuStorage::Panels(p) => return Tensor::upload(p.plain(), shape, device),
                };
                Ok(Tensor::from_parts(
                    shape.to_vec(),
                    dtype,
                    device.clone(),
                    Storage::Gpu(s),
                ))
            }
        }
    }

    /// A tensor of zeros.
    pub fn zeros(shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
        let n = numel("zeros", shape)?;
        if let Some(format) = dtype.quant_format() {
            let cols = shape.last().copied().unwrap_or(1);
            let rows = n.checked_div(cols).unwrap_or(0);
            let q = QuantData::quantize(format, &vec![0.0; n], rows, cols);
            return Tensor::upload_quant(q, shape, device);
        }
        if dtype == DType::BF16 {
            return Tensor::pack_bf16(&vec![0.0; n], shape, device);
        }
        match device {
            Device::Cpu => Ok(Tensor::from_cpu(
                shape.to_vec(),
                match dtype {
                    DType::F32 => CpuStorage::F32(vec![0.0; n]),
                    DType::F16 => CpuStorage::F16(vec![f16::ZERO; n].into()),
                    DType::Q8 | DType::Q4 | DType::BF16 => {
                        unreachable!("packed dtypes returned above")
                    }
                },
            )),
            Device::Gpu(g) => Ok(Tensor::from_parts(
                shape.to_vec(),
                dtype,
                device.clone(),
                Storage::Gpu(g.zeros(n, dtype)?),
            )),
        }
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// Size of dimension `d`; negative-style indexing is not supported (use `rank() - 1`).
    pub fn dim(&self, d: usize) -> usize {
        self.shape[d]
    }

    pub fn elem_count(&self) -> usize {
        // Checked when the tensor was made (its storage holds this many elements).
        self.shape.iter().product()
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Bytes of storage (quantized: quants plus scales).
    pub fn size_in_bytes(&self) -> usize {
        match self.dtype.quant_format() {
            Some(f) => {
                let cols = self.shape.last().copied().unwrap_or(1);
                let rows = self.elem_count().checked_div(cols).unwrap_or(0);
                rows * (f.row_bytes(cols) + 2 * blip2_kernels::QFormat::row_blocks(cols))
            }
            // Padding included: what the packed matrices really hold.
            None => match (self.bf16_data(), self.panels()) {
                (Some(b), _) => b.data.len() * 2,
                (None, Some(p)) => p.bytes(),
                (None, None) => self.elem_count() * self.dtype.size_of(),
            },
        }
    }

    /// Same data, new shape (no copy).
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        if numel("reshape", shape)? != self.elem_count() {
            return Err(Error::shape(
                "reshape",
                format!("cannot reshape {:?} into {shape:?}", self.shape),
            ));
        }
        // Packed formats lay rows out along the last dim: only the leading dims may change.
        if self.dtype.is_packed() && shape.last() != self.shape.last() {
            return Err(Error::shape(
                "reshape",
                format!(
                    "a {} tensor keeps its last dim: cannot reshape {:?} into {shape:?}",
                    self.dtype, self.shape
                ),
            ));
        }
        // Panels, too, but they can always go back to rows.
        let mut t = if self.is_panels() && shape.last() != self.shape.last() {
            self.plain().into_owned()
        } else {
            self.clone()
        };
        t.shape = shape.to_vec();
        Ok(t)
    }

    /// Downloads (waiting for pending GPU work) and converts to f32.
    pub fn to_vec_f32(&self) -> Result<Vec<f32>> {
        match &self.storage {
            Storage::Cpu(s) => Ok(match s.as_ref() {
                CpuStorage::F32(v) => v.clone(),
                CpuStorage::F16(v) => {
                    let mut out = vec![0f32; v.len()];
                    blip2_kernels::f16_to_f32(v, &mut out);
                    out
                }
                CpuStorage::Quant(q) => q.dequantize(),
                CpuStorage::Bf16(b) => b.unpack(),
                CpuStorage::Panels(p) => p.unpack(),
            }),
            Storage::Gpu(_) if self.dtype.is_quantized() => Ok(self.quant_data()?.dequantize()),
            Storage::Gpu(s) => match &self.device {
                Device::Gpu(g) => g.download_f32(s, self.dtype, self.elem_count()),
                Device::Cpu => Err(Error::Invalid("GPU storage on a CPU tensor".into())),
            },
        }
    }

    /// Copies to another device (a no-op clone when it is already there).
    pub fn to_device(&self, device: &Device) -> Result<Tensor> {
        if self.device.same(device) {
            return Ok(self.clone());
        }
        if self.dtype.is_quantized() {
            return Tensor::upload_quant(self.quant_data()?, &self.shape, device);
        }
        let host = self.to_vec_f32()?;
        Tensor::from_slice(&host, &self.shape, self.dtype, device)
    }

    /// Converts the storage dtype (f32 <-> f16).
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        crate::ops::cast(self, dtype)
    }

    /// Host view of CPU storage (crate-internal: backends only).
    pub(crate) fn cpu_storage(&self) -> &CpuStorage {
        match &self.storage {
            Storage::Cpu(s) => s,
            Storage::Gpu(_) => {
                unreachable!("cpu backend given a GPU tensor: ops::check_device guards this")
            }
        }
    }

    pub(crate) fn gpu_storage(&self) -> &GpuStorage {
        match &self.storage {
            Storage::Gpu(s) => s,
            Storage::Cpu(_) => {
                unreachable!("gpu backend given a CPU tensor: ops::check_device guards this")
            }
        }
    }

    pub(crate) fn cpu_storage_mut(&mut self) -> &mut CpuStorage {
        match &mut self.storage {
            Storage::Cpu(s) => Arc::make_mut(s),
            Storage::Gpu(_) => {
                unreachable!("cpu backend given a GPU tensor: ops::check_device guards this")
            }
        }
    }
}

/// The `n` stored elements of `bytes` converted into `T`.
fn converted<T: Elem>(bytes: &[u8], stored: StoredDType, n: usize) -> Vec<T> {
    let mut out = zeroed_large::<T>(n);
    T::convert(&StoredView::new(bytes, stored), 0, &mut out);
    out
}
