//! f16/bf16 ↔ f32 conversions (F16C / AVX-512 on x86-64, `half` elsewhere).

use crate::isa::multiversion;
use crate::{Isa, isa};
use half::{bf16, f16};
use rayon::prelude::*;

/// Elements from which a conversion is split across the rayon pool (a checkpoint's matrix
/// converted at load: one thread converts a few GB/s, well under the memory's bandwidth).
const PAR_MIN: usize = 1 << 20;
/// Elements per parallel piece (256 KiB of f32 out).
const PAR_CHUNK: usize = 1 << 16;

/// `f` over `src` → `dst` in pieces on the rayon pool when large, else in one call.
fn split<S: Sync, D: Send>(src: &[S], dst: &mut [D], f: impl Fn(&[S], &mut [D]) + Sync) {
    if src.len() < PAR_MIN {
        return f(src, dst);
    }
    src.par_chunks(PAR_CHUNK)
        .zip(dst.par_chunks_mut(PAR_CHUNK))
        .for_each(|(s, d)| f(s, d));
}

#[inline(always)]
fn bf16_body(src: &[bf16], dst: &mut [f32]) {
    // bf16 is the top half of an f32: widening is a 16-bit shift, exact.
    for (d, s) in dst.iter_mut().zip(src) {
        *d = f32::from_bits((s.to_bits() as u32) << 16);
    }
}
multiversion! { fn bf16_isa(src: &[bf16], dst: &mut [f32]) = bf16_body; }

/// f16 → f32 on a resolved ISA (exact). Internal: used by the packing routines too.
pub(crate) fn f16_to_f32_isa(isa: Isa, src: &[f16], dst: &mut [f32]) {
    debug_assert_eq!(src.len(), dst.len());
    match isa {
        // SAFETY: `isa` is resolved, so the CPU has the features each routine enables.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { x86::f16_to_f32_avx512(src, dst) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma => unsafe { x86::f16_to_f32_f16c(src, dst) },
        Isa::Neon => {
            use half::slice::HalfFloatSliceExt;
            src.convert_to_f32_slice(dst)
        }
        _ => {
            for (d, s) in dst.iter_mut().zip(src) {
                *d = s.to_f32_const();
            }
        }
    }
}

fn f32_to_f16_isa(isa: Isa, src: &[f32], dst: &mut [f16]) {
    match isa {
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { x86::f32_to_f16_avx512(src, dst) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma => unsafe { x86::f32_to_f16_f16c(src, dst) },
        Isa::Neon => {
            use half::slice::HalfFloatSliceExt;
            dst.convert_from_f32_slice(src)
        }
        _ => {
            for (d, s) in dst.iter_mut().zip(src) {
                *d = f16::from_f32_const(*s);
            }
        }
    }
}

/// Widens f16 to f32 (exact). Precondition: `src.len() == dst.len()`.
pub fn f16_to_f32(src: &[f16], dst: &mut [f32]) {
    f16_to_f32_with(isa(), src, dst)
}

/// [`f16_to_f32`] on a chosen instruction set.
pub fn f16_to_f32_with(isa: Isa, src: &[f16], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "f16_to_f32: length mismatch");
    let isa = isa.resolve();
    split(src, dst, |s, d| f16_to_f32_isa(isa, s, d))
}

/// Narrows f32 to f16, round to nearest even (overflow → ±∞). Precondition: equal lengths.
pub fn f32_to_f16(src: &[f32], dst: &mut [f16]) {
    f32_to_f16_with(isa(), src, dst)
}

/// [`f32_to_f16`] on a chosen instruction set.
pub fn f32_to_f16_with(isa: Isa, src: &[f32], dst: &mut [f16]) {
    assert_eq!(src.len(), dst.len(), "f32_to_f16: length mismatch");
    let isa = isa.resolve();
    split(src, dst, |s, d| f32_to_f16_isa(isa, s, d))
}

/// Widens bf16 to f32 (exact). Precondition: equal lengths.
pub fn bf16_to_f32(src: &[bf16], dst: &mut [f32]) {
    bf16_to_f32_with(isa(), src, dst)
}

/// [`bf16_to_f32`] on a chosen instruction set.
pub fn bf16_to_f32_with(isa: Isa, src: &[bf16], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "bf16_to_f32: length mismatch");
    let isa = isa.resolve();
    split(src, dst, |s, d| bf16_isa(isa, s, d))
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use half::f16;
    use std::arch::x86_64::*;

    // Round to nearest even (imm8 = 0; F16C accepts only the 3 rounding bits).
    const ROUND: i32 = _MM_FROUND_TO_NEAREST_INT;

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
    pub(super) unsafe fn f16_to_f32_avx512(src: &[f16], dst: &mut [f32]) {
        let n = src.len().min(dst.len());
        let (s, d) = (src.as_ptr() as *const u16, dst.as_mut_ptr());
        let mut i = 0;
        // SAFETY: every access is below n, masked tails included.
        unsafe {
            while i + 16 <= n {
                let h = _mm256_loadu_si256(s.add(i) as *const __m256i);
                _mm512_storeu_ps(d.add(i), _mm512_cvtph_ps(h));
                i += 16;
            }
            if i < n {
                let m = (1u32 << (n - i)) - 1;
                let h = _mm256_maskz_loadu_epi16(m as u16, s.add(i) as *const i16);
                _mm512_mask_storeu_ps(d.add(i), m as u16, _mm512_cvtph_ps(h));
            }
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
    pub(super) unsafe fn f32_to_f16_avx512(src: &[f32], dst: &mut [f16]) {
        let n = src.len().min(dst.len());
        let (s, d) = (src.as_ptr(), dst.as_mut_ptr() as *mut u16);
        let mut i = 0;
        // SAFETY: every access is below n, masked tails included.
        unsafe {
            while i + 16 <= n {
                let v = _mm512_loadu_ps(s.add(i));
                _mm256_storeu_si256(d.add(i) as *mut __m256i, _mm512_cvtps_ph::<ROUND>(v));
                i += 16;
            }
            if i < n {
                let m = ((1u32 << (n - i)) - 1) as u16;
                let v = _mm512_maskz_loadu_ps(m, s.add(i));
                _mm256_mask_storeu_epi16(d.add(i) as *mut i16, m, _mm512_cvtps_ph::<ROUND>(v));
            }
        }
    }

    #[target_feature(enable = "avx2,f16c")]
    pub(super) unsafe fn f16_to_f32_f16c(src: &[f16], dst: &mut [f32]) {
        let n = src.len().min(dst.len());
        let (s, d) = (src.as_ptr() as *const u16, dst.as_mut_ptr());
        let mut i = 0;
        // SAFETY: every access is below n.
        unsafe {
            while i + 8 <= n {
                let h = _mm_loadu_si128(s.add(i) as *const __m128i);
                _mm256_storeu_ps(d.add(i), _mm256_cvtph_ps(h));
                i += 8;
            }
        }
        for j in i..n {
            dst[j] = src[j].to_f32();
        }
    }

    #[target_feature(enable = "avx2,f16c")]
    pub(super) unsafe fn f32_to_f16_f16c(src: &[f32], dst: &mut [f16]) {
        let n = src.len().min(dst.len());
        let (s, d) = (src.as_ptr(), dst.as_mut_ptr() as *mut u16);
        let mut i = 0;
        // SAFETY: every access is below n.
        unsafe {
            while i + 8 <= n {
                let v = _mm256_loadu_ps(s.add(i));
                _mm_storeu_si128(d.add(i) as *mut __m128i, _mm256_cvtps_ph::<ROUND>(v));
                i += 8;
            }
        }
        for j in i..n {
            dst[j] = f16::from_f32(src[j]);
        }
    }
}
