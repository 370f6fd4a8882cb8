//! A checkpoint tensor's little-endian bytes as elements of its stored dtype, and their
//! conversion into a compute dtype: the one place `Tensor::from_bytes` (row-major) and
//! `Tensor::panels_from_bytes` (packed as converted) take their values from.

use std::borrow::Cow;

use half::{bf16, f16};

use crate::StoredDType;

/// The stored elements: in place where the bytes are aligned for them on a little-endian
/// machine (as a safetensors file's data mostly is), else copied once.
pub(crate) enum StoredView<'a> {
    F32(Cow<'a, [f32]>),
    F16(Cow<'a, [f16]>),
    BF16(Cow<'a, [bf16]>),
}

impl<'a> StoredView<'a> {
    /// `bytes` (a whole number of `stored` elements, checked by the caller) as elements.
    pub(crate) fn new(bytes: &'a [u8], stored: StoredDType) -> StoredView<'a> {
        match stored {
            StoredDType::F32 => StoredView::F32(view_pod(bytes, f32::from_le_bytes)),
            StoredDType::F16 => {
                StoredView::F16(view_pod(bytes, |b| f16::from_bits(u16::from_le_bytes(b))))
            }
            StoredDType::BF16 => {
                StoredView::BF16(view_pod(bytes, |b| bf16::from_bits(u16::from_le_bytes(b))))
            }
        }
    }
}

/// A compute element a stored element converts into: f32 (widening, exact) or f16 (round to
/// nearest even; bf16 through its exact f32 value).
pub(crate) trait Elem: Copy + Default + Send + Sync + bytemuck::Zeroable {
    /// Elements `at .. at + out.len()` of `src` into `out` (large runs on all threads: the
    /// kernels' conversions split them).
    fn convert(src: &StoredView<'_>, at: usize, out: &mut [Self]);
}

impl Elem for f32 {
    fn convert(src: &StoredView<'_>, at: usize, out: &mut [f32]) {
        let r = at..at + out.len();
        match src {
            StoredView::F32(v) => out.copy_from_slice(&v[r]),
            StoredView::F16(v) => blip2_kernels::f16_to_f32(&v[r], out),
            StoredView::BF16(v) => blip2_kernels::bf16_to_f32(&v[r], out),
        }
    }
}

impl Elem for f16 {
    fn convert(src: &StoredView<'_>, at: usize, out: &mut [f16]) {
        let r = at..at + out.len();
        match src {
            StoredView::F16(v) => out.copy_from_slice(&v[r]),
            StoredView::F32(v) => blip2_kernels::f32_to_f16(&v[r], out),
            StoredView::BF16(v) => {
                // Through f32 a block at a time: bf16 → f32 is exact.
                let mut wide = [0f32; 256];
                for (s, d) in v[r].chunks(256).zip(out.chunks_mut(256)) {
                    let w = &mut wide[..s.len()];
                    blip2_kernels::bf16_to_f32(s, w);
                    blip2_kernels::f32_to_f16(w, d);
                }
            }
        }
    }
}

/// `bytes` as a slice of `T` without a copy where they are aligned for it on a
/// little-endian machine, else [`read_pod`]'s copy.
fn view_pod<T: bytemuck::Pod + Default, const N: usize>(
    bytes: &[u8],
    f: impl Fn([u8; N]) -> T,
) -> Cow<'_, [T]> {
    if cfg!(target_endian = "little")
        && size_of::<T>() == N
        && let Ok(v) = bytemuck::try_cast_slice::<u8, T>(bytes)
    {
        return Cow::Borrowed(v);
    }
    Cow::Owned(read_pod(bytes, f))
}

/// `bytes` (little-endian, any alignment) as a vector of `T`: one memcpy on little-endian
/// hosts (loading a checkpoint in its stored dtype was bound by a per-element copy), the
/// element-wise [`read_le`] elsewhere.
pub(crate) fn read_pod<T: bytemuck::Pod + Default, const N: usize>(
    bytes: &[u8],
    f: impl Fn([u8; N]) -> T,
) -> Vec<T> {
    if cfg!(target_endian = "little") && size_of::<T>() == N {
        let n = bytes.len() / N;
        let mut out = vec![T::default(); n];
        bytemuck::cast_slice_mut::<T, u8>(&mut out).copy_from_slice(&bytes[..n * N]);
        out
    } else {
        read_le(bytes, f)
    }
}

fn read_le<T, const N: usize>(bytes: &[u8], f: impl Fn([u8; N]) -> T) -> Vec<T> {
    bytes
        .chunks_exact(N)
        .map(|c| {
            let mut a = [0u8; N];
            a.copy_from_slice(c);
            f(a)
        })
        .collect()
}
