//! f32/f16 linear weights in the CPU GEMM's panel layout (`blip2_kernels::PackedMatrix`),
//! made once at load so that no matmul repacks, transposes or widens them per call.
//!
//! The tensor keeps its dtype (F32 or F16) and shape; only its CPU storage differs. The
//! linear layer reads the panels in place; every other op (and a download, an upload to a
//! GPU, a reshape of the last dim) gets the plain row-major tensor back through
//! [`Tensor::plain`], so a panel tensor is never misread, only slower outside `linear`.

use std::borrow::Cow;

use half::f16;

use blip2_kernels::AlignedVec;

use crate::host::zeroed_large_aligned;
use crate::stored::{Elem, StoredView};
use crate::tensor::{CpuStorage, Storage};
use crate::{DType, Device, Error, Result, StoredDType, Tensor};

/// The panel-packed elements.
#[derive(Clone, Debug)]
pub(crate) enum PanelVec {
    F32(AlignedVec<f32>),
    F16(AlignedVec<f16>),
}

/// A `rows × cols` matrix in panels (rows = every dim but the last).
#[derive(Clone, Debug)]
pub(crate) struct Panels {
    pub rows: usize,
    pub cols: usize,
    pub data: PanelVec,
}

impl Panels {
    pub(crate) fn matrix(&self) -> blip2_kernels::PackedMatrix<'_> {
        blip2_kernels::PackedMatrix {
            rows: self.rows,
            cols: self.cols,
            data: match &self.data {
                PanelVec::F32(v) => blip2_kernels::PackedData::F32(v),
                PanelVec::F16(v) => blip2_kernels::PackedData::F16(v),
            },
        }
    }

    pub(crate) fn dtype(&self) -> DType {
        match self.data {
            PanelVec::F32(_) => DType::F32,
            PanelVec::F16(_) => DType::F16,
        }
    }

    /// Bytes held, padding included.
    pub(crate) fn bytes(&self) -> usize {
        match &self.data {
            PanelVec::F32(v) => v.len() * 4,
            PanelVec::F16(v) => v.len() * 2,
        }
    }

    /// The values, row-major, as f32.
    pub(crate) fn unpack(&self) -> Vec<f32> {
        let mut wide = vec![0f32; self.rows * self.cols];
        blip2_kernels::unpack_packed(&self.matrix(), &mut wide);
        wide
    }

    /// The row-major storage of the same dtype.
    pub(crate) fn plain(&self) -> CpuStorage {
        let wide = self.unpack();
        match self.data {
            PanelVec::F32(_) => CpuStorage::F32(wide),
            PanelVec::F16(_) => {
                // Exact: the values were f16 before they were widened.
                let mut h = vec![f16::ZERO; wide.len()];
                blip2_kernels::f32_to_f16(&wide, &mut h);
                CpuStorage::F16(h.into())
            }
        }
    }
}

/// The buffers `get` finds in `parts` one after the other, in one advised allocation of
/// `len` elements; `None` when a part has another element type or the lengths do not add
/// up to `len`.
fn concatenated<T: Copy + Default + bytemuck::Zeroable>(
    parts: &[&Panels],
    len: usize,
    get: impl Fn(&PanelVec) -> Option<&[T]>,
) -> Option<AlignedVec<T>> {
    let bufs = parts
        .iter()
        .map(|p| get(&p.data))
        .collect::<Option<Vec<&[T]>>>()?;
    if bufs.iter().map(|b| b.len()).sum::<usize>() != len {
        return None;
    }
    let mut out = zeroed_large_aligned::<T>(len);
    let mut at = 0;
    for b in bufs {
        out[at..at + b.len()].copy_from_slice(b);
        at += b.len();
    }
    Some(out)
}

impl Panels {
    /// `parts` stacked by rows (q/k/v over one input) by concatenating their buffers, which
    /// is the panel layout of the stacked matrix when every part but the last fills whole
    /// panels. `None` when they differ in dtype or columns or a padded panel would sit in
    /// the middle.
    pub(crate) fn stack(parts: &[&Panels]) -> Option<Panels> {
        let (last, lead) = parts.split_last()?;
        let cols = last.cols;
        let whole = |p: &&Panels| p.rows.is_multiple_of(blip2_kernels::PANEL);
        if !lead.iter().all(whole) || parts.iter().any(|p| p.cols != cols) {
            return None;
        }
        let rows = parts.iter().map(|p| p.rows).sum();
        let len = blip2_kernels::checked_packed_len(rows, cols)?;
        let data = match last.data {
            PanelVec::F32(_) => PanelVec::F32(concatenated(parts, len, |d| match d {
                PanelVec::F32(v) => Some(&v[..]),
                PanelVec::F16(_) => None,
            })?),
            PanelVec::F16(_) => PanelVec::F16(concatenated(parts, len, |d| match d {
                PanelVec::F16(v) => Some(&v[..]),
                PanelVec::F32(_) => None,
            })?),
        };
        Some(Panels { rows, cols, data })
    }
}

/// Whether f32/f16 linear weights should be packed into panels on this machine: the CPU
/// kernels read them in place (AVX-512, AVX2), and `BLIP2_CPU_PACK=0` has not turned that off.
pub fn panels_preferred() -> bool {
    blip2_kernels::packed_preferred()
}

/// Whether tensors that could be used in place from a mapped checkpoint
/// ([`Tensor::used_in_place`]) are packed into panels too (`BLIP2_CPU_PACK=all`).
pub fn panels_for_mapped() -> bool {
    blip2_kernels::packed_in_place_too()
}

/// `src` (`rows × cols` stored elements) converted into `T` as it is packed, into one
/// allocation of `len` elements.
fn pack_converted<T: Elem>(
    src: &StoredView<'_>,
    rows: usize,
    cols: usize,
    len: usize,
) -> AlignedVec<T> {
    let mut out = zeroed_large_aligned::<T>(len);
    blip2_kernels::pack_linear_with(rows, cols, &mut out, |r, c, run| {
        T::convert(src, r * cols + c, run)
    });
    out
}

/// Packs row-major `v` (`rows × cols`) into panels.
fn pack<T: Copy + Default + Send + Sync + bytemuck::Zeroable>(
    v: &[T],
    rows: usize,
    cols: usize,
) -> Result<AlignedVec<T>> {
    let len = blip2_kernels::checked_packed_len(rows, cols).ok_or_else(|| {
        Error::shape(
            "to_panels",
            format!("{rows} x {cols} overflows usize once padded"),
        )
    })?;
    // The same allocation as a checkpoint load's (`pack_converted`), huge-page advice
    // included.
    let mut out = zeroed_large_aligned(len);
    blip2_kernels::pack_linear(v, rows, cols, &mut out);
    Ok(out)
}

impl Tensor {
    /// This linear weight in the CPU GEMM's panel layout (module docs): an f32 or f16 CPU
    /// matrix of rank ≥ 2 is packed; anything else (GPU, quantized, bf16, vectors, already
    /// packed) is returned as it is.
    pub fn to_panels(&self) -> Result<Tensor> {
        let Storage::Cpu(s) = &self.storage else {
            return Ok(self.clone());
        };
        let Some((&cols, lead)) = self.shape().split_last() else {
            return Ok(self.clone());
        };
        if lead.is_empty() {
            return Ok(self.clone());
        }
        let rows = self.elem_count() / cols.max(1);
        let data = match s.as_ref() {
            CpuStorage::F32(v) => PanelVec::F32(pack(v, rows, cols)?),
            CpuStorage::F16(v) => PanelVec::F16(pack(v, rows, cols)?),
            _ => return Ok(self.clone()),
        };
        Ok(Tensor::from_cpu(
            self.shape().to_vec(),
            CpuStorage::Panels(Panels { rows, cols, data }),
        ))
    }

    /// A CPU tensor of `dtype` in the panel layout straight from little-endian `stored`
    /// bytes (a checkpoint's, as [`Tensor::from_bytes`] takes them): each element is
    /// converted as it is packed, into the one allocation the panels need, so loading
    /// f16 weights as f32 writes (and faults in) the f32 bytes once instead of three times
    /// (a staging copy, the row-major f32 tensor, then its panels). Dtypes other than
    /// f32/f16 and tensors of rank < 2 go through [`Tensor::from_bytes`] +
    /// [`Tensor::to_panels`].
    pub fn panels_from_bytes(
        bytes: &[u8],
        stored: StoredDType,
        shape: &[usize],
        dtype: DType,
    ) -> Result<Tensor> {
        const OP: &str = "panels_from_bytes";
        let fallback =
            || Tensor::from_bytes(bytes, stored, shape, dtype, &Device::Cpu)?.to_panels();
        let Some((&cols, lead)) = shape.split_last() else {
            return fallback();
        };
        if lead.is_empty() || !matches!(dtype, DType::F32 | DType::F16) {
            return fallback();
        }
        let n = lead
            .iter()
            .try_fold(cols, |a, &d| a.checked_mul(d))
            .ok_or_else(|| Error::shape(OP, format!("shape {shape:?} overflows usize")))?;
        if Some(bytes.len()) != n.checked_mul(stored.size_of()) {
            return Err(Error::shape(
                OP,
                format!(
                    "{} bytes given for {n} {stored:?} elements of shape {shape:?}",
                    bytes.len()
                ),
            ));
        }
        let rows = n / cols.max(1);
        let len = blip2_kernels::checked_packed_len(rows, cols).ok_or_else(|| {
            Error::shape(OP, format!("{rows} x {cols} overflows usize once padded"))
        })?;
        let src = StoredView::new(bytes, stored);
        let data = match dtype {
            DType::F32 => PanelVec::F32(pack_converted(&src, rows, cols, len)),
            _ => PanelVec::F16(pack_converted(&src, rows, cols, len)),
        };
        Ok(Tensor::from_cpu(
            shape.to_vec(),
            CpuStorage::Panels(Panels { rows, cols, data }),
        ))
    }

    /// Whether this tensor is held in the panel layout ([`Tensor::to_panels`]).
    pub fn is_panels(&self) -> bool {
        self.panels().is_some()
    }

    pub(crate) fn panels(&self) -> Option<&Panels> {
        match &self.storage {
            Storage::Cpu(s) => match s.as_ref() {
                CpuStorage::Panels(p) => Some(p),
                _ => None,
            },
            Storage::Gpu(_) => None,
        }
    }

    /// The same values in row-major storage: borrowed unless the tensor is in panels.
    pub(crate) fn plain(&self) -> Cow<'_, Tensor> {
        match self.panels() {
            Some(p) => Cow::Owned(Tensor::from_cpu(self.shape().to_vec(), p.plain())),
            None => Cow::Borrowed(self),
        }
    }
}
