//! Vectors whose data starts on a 64-byte cache line.
//!
//! Packed weights and the tile scratch are read 64 bytes at a time (an AMX tile row, a zmm
//! register); a base that is not line-aligned splits every such read across two lines. A
//! large `Vec` comes from `mmap` through glibc 16 bytes past a page boundary, so nothing
//! aligns it by chance: AMX tile loads from such a buffer ran at about half their speed
//! (2026-12-07, 2-core Sapphire Rapids VM: 1.0 against 2.2–2.8 TFLOP/s in a tile-load
//! microbenchmark, and 1.4–1.6× on the ViT linear layers with bf16 weights).

use std::alloc::{Layout, alloc_zeroed, handle_alloc_error};
use std::fmt;
use std::ops::{Deref, DerefMut};

use bytemuck::Zeroable;

/// Alignment of [`AlignedVec`] data, in bytes.
pub const LINE: usize = 64;

/// A fixed-length vector of plain values whose first element is [`LINE`]-aligned. It
/// over-allocates by one line and starts at the first aligned element.
pub struct AlignedVec<T> {
    buf: Vec<T>,
    off: usize,
    len: usize,
}

impl<T: Copy + Default + Zeroable> AlignedVec<T> {
    /// `len` zeros, from [`zeroed_vec`]: a large one costs nothing until written.
    pub fn zeroed(len: usize) -> Self {
        let size = size_of::<T>().max(1);
        assert!(
            LINE.is_multiple_of(size) && align_of::<T>() == size,
            "AlignedVec: element size must divide {LINE} and equal its alignment"
        );
        let buf = zeroed_vec::<T>(len + LINE / size);
        let off = (LINE - buf.as_ptr() as usize % LINE) % LINE / size;
        AlignedVec { buf, off, len }
    }

    /// A copy of `s`.
    pub fn from_slice(s: &[T]) -> Self {
        let mut v = Self::zeroed(s.len());
        v.copy_from_slice(s);
        v
    }

    /// Changes the length to `len`, keeping the first `min(len, old)` values and filling
    /// any new ones with the default (reallocating only to grow past the capacity).
    pub fn resize(&mut self, len: usize) {
        if self.off + len <= self.buf.len() {
            let old = self.len;
            self.len = len;
            if len > old {
                self[old..].fill(T::default());
            }
            return;
        }
        let mut grown = Self::zeroed(len);
        grown[..self.len].copy_from_slice(self);
        *self = grown;
    }
}

impl<T: Copy + Default + Zeroable> AlignedVec<T> {
    /// Changes the length to `len` for a caller that writes every value next (the kernels'
    /// per-thread scratch): within the capacity, values past the old length keep whatever
    /// an earlier use left (no fill); past it, a fresh zeroed buffer, nothing copied.
    pub fn resize_for_overwrite(&mut self, len: usize) {
        if self.off + len <= self.buf.len() {
            self.len = len;
        } else {
            *self = Self::zeroed(len);
        }
    }
}

impl<T: Copy + Default + Zeroable> Default for AlignedVec<T> {
    fn default() -> Self {
        Self::zeroed(0)
    }
}

/// `n` zeros in a fresh zeroed allocation: for a large `n`, `calloc`'s untouched pages
/// (nothing is written until the caller writes, and advice such as huge pages still
/// applies). `vec![T::default(); n]` gets that only for the types std knows to be zero
/// (f32, integers); for f16 and bf16 it writes every value first.
pub fn zeroed_vec<T: Zeroable>(n: usize) -> Vec<T> {
    if n == 0 || size_of::<T>() == 0 {
        let mut v = Vec::new();
        v.resize_with(n, T::zeroed);
        return v;
    }
    let layout = Layout::array::<T>(n).expect("zeroed_vec: length overflows the address space");
    // SAFETY: the layout has a nonzero size; the memory is zeroed, a valid T per
    // `Zeroable`, and comes from the global allocator with T's layout, as
    // `Vec::from_raw_parts` requires.
    unsafe {
        let p = alloc_zeroed(layout) as *mut T;
        if p.is_null() {
            handle_alloc_error(layout);
        }
        Vec::from_raw_parts(p, n, n)
    }
}

impl<T> Deref for AlignedVec<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.buf[self.off..self.off + self.len]
    }
}

impl<T> DerefMut for AlignedVec<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.buf[self.off..self.off + self.len]
    }
}

impl<T: Copy + Default + Zeroable> Clone for AlignedVec<T> {
    fn clone(&self) -> Self {
        // The clone's allocation has its own offset to the next line.
        Self::from_slice(self)
    }
}

impl<T> fmt::Debug for AlignedVec<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AlignedVec")
            .field("len", &self.len)
            .finish()
    }
}

/// A per-thread scratch buffer (`thread_local!` of `RefCell<AlignedVec<T>>`).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) type Scratch<T> = std::thread::LocalKey<std::cell::RefCell<AlignedVec<T>>>;

/// Runs `f` on this thread's `scratch`, which keeps its allocation across calls (a fresh
/// zeroed buffer per call cost ~5% of the ViT in page clearing and memset on the AMX path).
/// A nested call on the same key (a rayon task stolen while the outer one waits) gets a
/// fresh buffer instead of a borrow panic, as `gemm::with_pack_buffers` does.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) fn with_scratch<T: Copy + Default + Zeroable + 'static, R>(
    scratch: &'static Scratch<T>,
    f: impl FnOnce(&mut AlignedVec<T>) -> R,
) -> R {
    scratch.with(|cell| match cell.try_borrow_mut() {
        Ok(mut v) => f(&mut v),
        Err(_) => f(&mut AlignedVec::default()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::f16;

    #[test]
    fn data_starts_on_a_line_and_keeps_values() {
        for len in [0usize, 1, 31, 32, 33, 4097, 3 << 20] {
            let mut v = AlignedVec::<f16>::zeroed(len);
            assert_eq!(v.len(), len);
            assert_eq!(v.as_ptr() as usize % LINE, 0, "len {len}");
            assert!(v.iter().all(|x| *x == f16::ZERO));
            for (i, x) in v.iter_mut().enumerate() {
                *x = f16::from_f32((i % 1000) as f32);
            }
            let c = v.clone();
            assert_eq!(c.as_ptr() as usize % LINE, 0);
            assert_eq!(&c[..], &v[..]);
            let mut w = AlignedVec::<u16>::from_slice(&[1, 2, 3]);
            w.resize(2);
            assert_eq!(&w[..], &[1, 2]);
            w.resize(5000);
            assert_eq!(w.as_ptr() as usize % LINE, 0);
            assert_eq!(&w[..4], &[1, 2, 0, 0]);
            assert!(w[2..].iter().all(|&x| x == 0));
            // Scratch resizing keeps the line and the length asked for, within the capacity
            // and past it.
            w.resize_for_overwrite(3);
            assert_eq!((w.len(), w.as_ptr() as usize % LINE), (3, 0));
            w.resize_for_overwrite(9000);
            assert_eq!((w.len(), w.as_ptr() as usize % LINE), (9000, 0));
        }
    }

    #[test]
    fn zeroed_vec_gives_zeros_of_any_length() {
        assert!(zeroed_vec::<f16>(0).is_empty());
        assert_eq!(zeroed_vec::<()>(5).len(), 5);
        for n in [1usize, 33, 1 << 20] {
            let v = zeroed_vec::<half::bf16>(n);
            assert_eq!(v.len(), n);
            assert!(v.iter().all(|x| x.to_bits() == 0), "n {n}");
            let w = zeroed_vec::<f32>(n);
            assert!(w.iter().all(|x| x.to_bits() == 0), "n {n}");
        }
    }
}
