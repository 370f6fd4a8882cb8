//! x86-64 kernels for block-quantized weights (AVX2+FMA+F16C, AVX-512F): quants are widened
//! to f32 in registers and multiplied with f32 activations; f32 accumulation, one partial sum
//! per block scaled once by the block's f16 scale. Layouts: see `quant.rs`.

use std::arch::x86_64::*;

use half::f16;

use crate::quant::{QBLOCK, QFormat};

/// Bytes ahead of the current block each weight row is prefetched (rows are streamed once).
const PREFETCH_BYTES: usize = 1024;

/// An f16 scale as f32 (F16C).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scale(s: *const f16) -> f32 {
    // SAFETY: the caller passes a valid scale pointer.
    unsafe { _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128((*s).to_bits() as i32))) }
}

/// The 32 values of one block (unscaled, q − 8 for q4) as four 8-lane vectors.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn block_avx2(format: QFormat, q: *const u8) -> [__m256; 4] {
    // SAFETY: the caller passes block_bytes readable bytes.
    unsafe {
        match format {
            QFormat::Q8 => {
                let ld = |t: usize| {
                    _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(
                        q.add(8 * t) as *const __m128i
                    )))
                };
                [ld(0), ld(1), ld(2), ld(3)]
            }
            QFormat::Q4 => {
                let v = _mm_loadu_si128(q as *const __m128i);
                let m = _mm_set1_epi8(15);
                let lo = _mm_and_si128(v, m);
                let hi = _mm_and_si128(_mm_srli_epi16::<4>(v), m);
                let eight = _mm256_set1_epi32(8);
                let cv = |x: __m128i| {
                    _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_cvtepu8_epi32(x), eight))
                };
                [
                    cv(lo),
                    cv(_mm_srli_si128::<8>(lo)),
                    cv(hi),
                    cv(_mm_srli_si128::<8>(hi)),
                ]
            }
        }
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hsum256(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
    _mm_cvtss_f32(s)
}

/// out[0..blocks·32] = the dequantized values of `blocks` consecutive blocks.
///
/// # Safety
/// AVX2+FMA+F16C present; `qs` holds blocks·block_bytes bytes, `scales` blocks scales, `out`
/// blocks·32 floats.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn dequant_avx2(
    format: QFormat,
    blocks: usize,
    qs: *const u8,
    scales: *const f16,
    out: *mut f32,
) {
    let bb = format.block_bytes();
    // SAFETY: per the contract above.
    unsafe {
        for b in 0..blocks {
            let d = _mm256_set1_ps(scale(scales.add(b)));
            let v = block_avx2(format, qs.add(b * bb));
            for (t, x) in v.iter().enumerate() {
                _mm256_storeu_ps(out.add(b * QBLOCK + 8 * t), _mm256_mul_ps(*x, d));
            }
        }
    }
}

/// The last, partial block of a row: Σ a[i]·value(i) for i < rem (portable).
///
/// # Safety
/// `a` holds rem floats, `q` one block, `s` one scale.
unsafe fn tail_dot(format: QFormat, rem: usize, a: *const f32, q: *const u8, s: *const f16) -> f32 {
    // SAFETY: per the contract above.
    unsafe {
        let q = std::slice::from_raw_parts(q, format.block_bytes());
        let mut vals = [0f32; QBLOCK];
        crate::quant::dequantize_row(format, q, std::slice::from_ref(&*s), &mut vals[..rem]);
        (0..rem).map(|i| *a.add(i) * vals[i]).sum()
    }
}

/// out[q] = Σ_p a[p]·W[q, p] for q < n, W given by its first row's quants `qs` (stride
/// row_bytes(cols)) and scales (stride row_blocks(cols)). Four rows at a time share the
/// loads of `a`.
///
/// # Safety
/// AVX2+FMA+F16C present; `a` holds cols floats; n rows of quants/scales; `out` n floats.
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::needless_range_loop)]
pub(crate) unsafe fn dot_rows_avx2(
    format: QFormat,
    cols: usize,
    a: *const f32,
    qs: *const u8,
    scales: *const f16,
    n: usize,
    out: *mut f32,
) {
    let (bb, rb, nb) = (
        format.block_bytes(),
        format.row_bytes(cols),
        QFormat::row_blocks(cols),
    );
    let (full, rem) = (cols / QBLOCK, cols % QBLOCK);
    // SAFETY: per the contract above; row pointers are clamped to the last valid row.
    unsafe {
        let mut j = 0;
        while j < n {
            let r = (n - j).min(4);
            let row = |q: usize| j + q.min(r - 1);
            let mut acc = [_mm256_setzero_ps(); 4];
            for b in 0..full {
                let x = [
                    _mm256_loadu_ps(a.add(b * QBLOCK)),
                    _mm256_loadu_ps(a.add(b * QBLOCK + 8)),
                    _mm256_loadu_ps(a.add(b * QBLOCK + 16)),
                    _mm256_loadu_ps(a.add(b * QBLOCK + 24)),
                ];
                for q in 0..4 {
                    let p = qs.add(row(q) * rb + b * bb);
                    _mm_prefetch::<_MM_HINT_T0>((p as *const i8).wrapping_add(PREFETCH_BYTES));
                    let w = block_avx2(format, p);
                    let mut s = _mm256_mul_ps(w[0], x[0]);
                    s = _mm256_fmadd_ps(w[1], x[1], s);
                    s = _mm256_fmadd_ps(w[2], x[2], s);
                    s = _mm256_fmadd_ps(w[3], x[3], s);
                    let d = _mm256_set1_ps(scale(scales.add(row(q) * nb + b)));
                    acc[q] = _mm256_fmadd_ps(s, d, acc[q]);
                }
            }
            for q in 0..r {
                let mut v = hsum256(acc[q]);
                if rem > 0 {
                    v += tail_dot(
                        format,
                        rem,
                        a.add(full * QBLOCK),
                        qs.add((j + q) * rb + full * bb),
                        scales.add((j + q) * nb + full),
                    );
                }
                *out.add(j + q) = v;
            }
            j += r;
        }
    }
}

/// The 32 values of one block (unscaled, q − 8 for q4) as two 16-lane vectors.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn block_avx512(format: QFormat, q: *const u8) -> [__m512; 2] {
    // SAFETY: the caller passes block_bytes readable bytes.
    unsafe {
        match format {
            QFormat::Q8 => {
                let ld = |t: usize| {
                    _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(
                        q.add(16 * t) as *const __m128i
                    )))
                };
                [ld(0), ld(1)]
            }
            QFormat::Q4 => {
                let v = _mm_loadu_si128(q as *const __m128i);
                let m = _mm_set1_epi8(15);
                let lo = _mm_and_si128(v, m);
                let hi = _mm_and_si128(_mm_srli_epi16::<4>(v), m);
                let eight = _mm512_set1_epi32(8);
                let cv = |x: __m128i| {
                    _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_cvtepu8_epi32(x), eight))
                };
                [cv(lo), cv(hi)]
            }
        }
    }
}

/// [`dot_rows_avx2`] with 16-lane vectors.
///
/// # Safety
/// AVX-512F/BW/VL (and AVX2+FMA+F16C) present; otherwise as [`dot_rows_avx2`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[allow(clippy::needless_range_loop)]
pub(crate) unsafe fn dot_rows_avx512(
    format: QFormat,
    cols: usize,
    a: *const f32,
    qs: *const u8,
    scales: *const f16,
    n: usize,
    out: *mut f32,
) {
    let (bb, rb, nb) = (
        format.block_bytes(),
        format.row_bytes(cols),
        QFormat::row_blocks(cols),
    );
    let (full, rem) = (cols / QBLOCK, cols % QBLOCK);
    // SAFETY: per the contract above; row pointers are clamped to the last valid row.
    unsafe {
        let mut j = 0;
        while j < n {
            let r = (n - j).min(4);
            let row = |q: usize| j + q.min(r - 1);
            let mut acc = [_mm512_setzero_ps(); 4];
            for b in 0..full {
                let x0 = _mm512_loadu_ps(a.add(b * QBLOCK));
                let x1 = _mm512_loadu_ps(a.add(b * QBLOCK + 16));
                for q in 0..4 {
                    let p = qs.add(row(q) * rb + b * bb);
                    _mm_prefetch::<_MM_HINT_T0>((p as *const i8).wrapping_add(PREFETCH_BYTES));
                    let w = block_avx512(format, p);
                    let s = _mm512_fmadd_ps(w[1], x1, _mm512_mul_ps(w[0], x0));
                    let d = _mm512_set1_ps(scale(scales.add(row(q) * nb + b)));
                    acc[q] = _mm512_fmadd_ps(s, d, acc[q]);
                }
            }
            for q in 0..r {
                let mut v = _mm512_reduce_add_ps(acc[q]);
                if rem > 0 {
                    v += tail_dot(
                        format,
                        rem,
                        a.add(full * QBLOCK),
                        qs.add((j + q) * rb + full * bb),
                        scales.add((j + q) * nb + full),
                    );
                }
                *out.add(j + q) = v;
            }
            j += r;
        }
    }
}
