//! Host element buffers that are either owned or used in place from a shared byte buffer (a
//! memory-mapped checkpoint file), so a weight stored in the dtype it is computed in is never
//! copied at load: its pages come from the page cache when first read.

use std::marker::PhantomData;
use std::ops::Deref;
use std::sync::Arc;

use blip2_kernels::AlignedVec;
use bytemuck::Pod;

/// A byte buffer shared by the tensors that live in it (`Arc<Mmap>`, `&'static [u8]`, ..).
pub type SharedBytes = Arc<dyn AsRef<[u8]> + Send + Sync>;

/// `len` elements of `T` in place at byte `start` of a shared buffer: in range and aligned
/// for `T` (checked once, by [`SharedSlice::new`]; the buffer never moves).
#[derive(Clone)]
pub struct SharedSlice<T> {
    owner: SharedBytes,
    start: usize,
    len: usize,
    _t: PhantomData<T>,
}

impl<T: Pod> SharedSlice<T> {
    /// The view, or `None` when the range overflows, leaves the buffer or is not aligned for
    /// `T` (the caller then copies). Elements are read in native byte order: only
    /// little-endian targets share little-endian files.
    pub fn new(owner: SharedBytes, start: usize, len: usize) -> Option<SharedSlice<T>> {
        let bytes = len.checked_mul(size_of::<T>())?;
        let end = start.checked_add(bytes)?;
        let data = (*owner).as_ref();
        let range = data.get(start..end)?;
        let aligned = (range.as_ptr() as usize).is_multiple_of(align_of::<T>());
        (cfg!(target_endian = "little") && aligned).then(|| SharedSlice {
            owner,
            start,
            len,
            _t: PhantomData,
        })
    }

    pub fn as_slice(&self) -> &[T] {
        let bytes = &(*self.owner).as_ref()[self.start..self.start + self.len * size_of::<T>()];
        // Range and alignment were checked in `new`, and the owner's bytes never move.
        bytemuck::cast_slice(bytes)
    }
}

/// Host elements: owned, or shared in place (see the module doc). Reads go through `Deref`;
/// a write makes a shared buffer owned first ([`HostVec::to_mut`]).
#[derive(Clone)]
pub enum HostVec<T> {
    Owned(Vec<T>),
    Shared(SharedSlice<T>),
}

impl<T: Pod> HostVec<T> {
    /// The elements, mutably: a shared buffer is copied into an owned one first (the file
    /// behind it is read-only).
    pub fn to_mut(&mut self) -> &mut Vec<T> {
        if let HostVec::Shared(s) = self {
            *self = HostVec::Owned(s.as_slice().to_vec());
        }
        match self {
            HostVec::Owned(v) => v,
            HostVec::Shared(_) => unreachable!("made owned just above"),
        }
    }

    /// Whether the elements live in a shared buffer (not counted as this tensor's own heap).
    pub fn is_shared(&self) -> bool {
        matches!(self, HostVec::Shared(_))
    }
}

impl<T: Pod> Deref for HostVec<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        match self {
            HostVec::Owned(v) => v,
            HostVec::Shared(s) => s.as_slice(),
        }
    }
}

impl<T> From<Vec<T>> for HostVec<T> {
    fn from(v: Vec<T>) -> Self {
        HostVec::Owned(v)
    }
}

impl<T: Pod> std::fmt::Debug for HostVec<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostVec::Owned(v) => write!(f, "Owned({} elements)", v.len()),
            HostVec::Shared(s) => write!(f, "Shared({} elements)", s.len),
        }
    }
}

/// A zeroed vector of `len` elements whose pages Linux may back with transparent huge pages
/// (in its `madvise` mode, the common default): a checkpoint's matrices are hundreds of MB
/// written once at load, and faulting them in 4 KiB at a time was most of an f16 → f32
/// load (3.7 million minor faults, 12 s of system time for opt-2.7b on 2 cores). The advice
/// is given before the first write (the zeros come from `calloc`, untouched:
/// `blip2_kernels::zeroed_vec`); elsewhere, and below 8 MiB, a plain zeroed vector.
pub(crate) fn zeroed_large<T: bytemuck::Zeroable>(len: usize) -> Vec<T> {
    let v = blip2_kernels::zeroed_vec(len);
    advise_huge(&v);
    v
}

/// [`zeroed_large`] with the data on a 64-byte line (packed weights, which the kernels
/// read 64 bytes at a time: `blip2_kernels::AlignedVec`).
pub(crate) fn zeroed_large_aligned<T: Copy + Default + bytemuck::Zeroable>(
    len: usize,
) -> AlignedVec<T> {
    let v = AlignedVec::zeroed(len);
    advise_huge(&v);
    v
}

/// The huge-page advice of [`zeroed_large`] for the whole 2 MiB pages inside `v`.
fn advise_huge<T>(v: &[T]) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let bytes = std::mem::size_of_val(v);
        let start = v.as_ptr() as usize;
        let (a, b) = (start.next_multiple_of(HUGE), (start + bytes) / HUGE * HUGE);
        if bytes >= 4 * HUGE && b > a {
            // SAFETY: advice on whole pages inside this vector's own allocation; it changes
            // no contents (a failure, e.g. THP off, leaves 4 KiB pages).
            unsafe {
                libc::madvise(a as *mut libc::c_void, b - a, libc::MADV_HUGEPAGE);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = v;
}
