//! x86-64 kernels for block-quantized weights (AVX2+FMA+F16C, AVX-512F): quants are widened
//! to f32 in registers and multiplied with f32 activations; f32 accumulation, one partial sum
//! per block scaled once by the block's f16 scale. Layouts: see `quant.rs`.

use std::arch::x86_64::*;

use half::f16;

use crate::quant::{QBLOCK, QFormat};
use crate::x86_prefetch::{prefetch_ahead, request_ahead};

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

/// `ds[q·blocks + b] = d_w[rows[q], b] · d_x[b]` for the four rows of a register block: the
/// per-block scale of every block sum, converted 8 at a time up front so the block loops of
/// the decode kernels (AVX2 and VNNI) only broadcast it.
///
/// # Safety
/// AVX2+FMA+F16C present; `scales` holds the rows' scales (stride `blocks`), `xd` blocks
/// floats, `ds` 4·blocks floats.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn scale_products(
    scales: *const f16,
    rows: [usize; 4],
    blocks: usize,
    xd: *const f32,
    ds: *mut f32,
) {
    // SAFETY: per the contract above.
    unsafe {
        for (q, &row) in rows.iter().enumerate() {
            let (src, dst) = (scales.add(row * blocks), ds.add(q * blocks));
            let mut b = 0;
            while b + 8 <= blocks {
                let h = _mm_loadu_si128(src.add(b) as *const __m128i);
                let v = _mm256_mul_ps(_mm256_cvtph_ps(h), _mm256_loadu_ps(xd.add(b)));
                _mm256_storeu_ps(dst.add(b), v);
                b += 8;
            }
            for b in b..blocks {
                *dst.add(b) = scale(src.add(b)) * *xd.add(b);
            }
        }
    }
}

/// Σ over 32 lanes of w·x as 8 i32 lanes, w and x signed bytes in [−127, 127] (the sign
/// trick: |w| as unsigned times x·sign(w), so maddubs' u8×i8 pairs never saturate: 2·127²).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_i8_avx2(w: __m256i, x: __m256i) -> __m256i {
    let p16 = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
    _mm256_madd_epi16(p16, _mm256_set1_epi16(1))
}

/// Lane pattern of a q8 block pair after `vphaddd`: [b, b, b+1, b+1 | b, b, b+1, b+1].
const PAIR_Q8: [i32; 8] = [0, 0, 1, 1, 0, 0, 1, 1];
/// Lane pattern of a q4 block pair: [b × 4 | b+1 × 4].
const PAIR_Q4: [i32; 8] = [0, 0, 0, 0, 1, 1, 1, 1];

/// The two scales at `d` spread over the 8 lanes as `pattern` says.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn pair_scales(d: *const f32, pattern: [i32; 8]) -> __m256 {
    // SAFETY: the caller passes two readable floats.
    unsafe {
        let two = _mm_castpd_ps(_mm_load_sd(d as *const f64));
        let idx = _mm256_loadu_si256(pattern.as_ptr() as *const __m256i);
        _mm256_permutevar8x32_ps(_mm256_castps128_ps256(two), idx)
    }
}

/// The signature every decode kernel shares ([`dot_rows_i8_avx2`], `x86_vnni::dot_rows_vnni`).
pub(crate) type DotRows =
    unsafe fn(QFormat, usize, *const i8, *const f32, *const u8, *const f16, usize, *mut f32);

/// out[q] = Σ_b d_w[q,b]·d_x[b]·(Σ_i w[q,b,i]·x[b,i]) for q < n, with the activations
/// quantized to bytes (`xq`, `xd`: `blocks` blocks) and W given by its first row's quants
/// `qs` (stride row_bytes) and scales (stride `blocks`). Four rows share the loads of x.
/// W's rows are requested ahead into L2 with `L2`, else into L1 (`x86_prefetch::prefetch_to_l2`).
///
/// # Safety
/// AVX2+FMA+F16C present; xq holds blocks·32 bytes, xd blocks floats; n rows of quants and
/// scales; `out` n floats.
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
pub(crate) unsafe fn dot_rows_i8_avx2<const L2: bool>(
    format: QFormat,
    blocks: usize,
    xq: *const i8,
    xd: *const f32,
    qs: *const u8,
    scales: *const f16,
    n: usize,
    out: *mut f32,
) {
    let (bb, rb) = (format.block_bytes(), blocks * format.block_bytes());
    let ahead = prefetch_ahead(L2, 4, rb);
    // d_w·d_x of every block of the four current rows, converted 8 at a time up front, so
    // the block loop only broadcasts it.
    let mut ds = vec![0f32; 4 * blocks];
    // SAFETY: per the contract above; row pointers are clamped to the last valid row.
    unsafe {
        // q4: per pair of activation blocks, values 0..16 of both blocks, then values 16..32
        // of both (the order of the low and high nibbles of the pair's 32 quant bytes), and
        // the offset correction 8·Σx per 4-value lane; built once, shared by every row.
        let q4x: Vec<[__m256i; 3]> = if format == QFormat::Q4 {
            let (eight, ones) = (_mm256_set1_epi8(8), _mm256_set1_epi16(1));
            (0..blocks / 2)
                .map(|pb| {
                    let x0 = _mm256_loadu_si256(xq.add(2 * pb * QBLOCK) as *const __m256i);
                    let x1 = _mm256_loadu_si256(xq.add((2 * pb + 1) * QBLOCK) as *const __m256i);
                    let xl = _mm256_permute2x128_si256::<0x20>(x0, x1);
                    let xh = _mm256_permute2x128_si256::<0x31>(x0, x1);
                    let corr = _mm256_madd_epi16(
                        _mm256_add_epi16(
                            _mm256_maddubs_epi16(eight, xl),
                            _mm256_maddubs_epi16(eight, xh),
                        ),
                        ones,
                    );
                    [xl, xh, corr]
                })
                .collect()
        } else {
            Vec::new()
        };
        let mut j = 0;
        while j < n {
            let r = (n - j).min(4);
            let row = |q: usize| j + q.min(r - 1);
            scale_products(
                scales,
                [row(0), row(1), row(2), row(3)],
                blocks,
                xd,
                ds.as_mut_ptr(),
            );
            let mut acc = [_mm256_setzero_ps(); 4];
            // Blocks are taken in pairs (64 weights per row per step, one prefetch per 64
            // quant bytes for q8): half the conversions and FMAs of one block at a time. An
            // odd last block goes alone.
            let pairs = blocks / 2;
            match format {
                QFormat::Q8 => {
                    for pb in 0..pairs {
                        let b = 2 * pb;
                        let x0 = _mm256_loadu_si256(xq.add(b * QBLOCK) as *const __m256i);
                        let x1 = _mm256_loadu_si256(xq.add((b + 1) * QBLOCK) as *const __m256i);
                        for q in 0..4 {
                            let p = qs.add(row(q) * rb + b * bb);
                            request_ahead::<L2>(p, ahead);
                            let s0 = dot_i8_avx2(_mm256_loadu_si256(p as *const __m256i), x0);
                            let s1 =
                                dot_i8_avx2(_mm256_loadu_si256(p.add(32) as *const __m256i), x1);
                            // Lanes [b, b, b+1, b+1 | b, b, b+1, b+1].
                            let h = _mm256_cvtepi32_ps(_mm256_hadd_epi32(s0, s1));
                            let d = pair_scales(ds.as_ptr().add(q * blocks + b), PAIR_Q8);
                            acc[q] = _mm256_fmadd_ps(h, d, acc[q]);
                        }
                    }
                    if blocks % 2 == 1 {
                        let b = blocks - 1;
                        let x = _mm256_loadu_si256(xq.add(b * QBLOCK) as *const __m256i);
                        for q in 0..4 {
                            let p = qs.add(row(q) * rb + b * bb);
                            let w = _mm256_loadu_si256(p as *const __m256i);
                            let s = _mm256_cvtepi32_ps(dot_i8_avx2(w, x));
                            let d = _mm256_broadcast_ss(&*ds.as_ptr().add(q * blocks + b));
                            acc[q] = _mm256_fmadd_ps(s, d, acc[q]);
                        }
                    }
                }
                QFormat::Q4 => {
                    // Unsigned nibbles times x never saturate vpmaddubsw (2·15·127, and the
                    // low- and high-nibble products summed: 4·15·127 < 2¹⁵), so the offset is
                    // taken out afterwards: Σ(n − 8)·x = Σ n·x − corr, with corr (8·Σx per
                    // 4-value lane) computed once per pair of activation blocks (`q4x`).
                    let ones = _mm256_set1_epi16(1);
                    let mask = _mm256_set1_epi8(15);
                    for (pb, &[xl, xh, corr]) in q4x.iter().enumerate() {
                        let b = 2 * pb;
                        for q in 0..4 {
                            let p = qs.add(row(q) * rb + b * bb);
                            if pb % 2 == 0 {
                                request_ahead::<L2>(p, ahead);
                            }
                            let v = _mm256_loadu_si256(p as *const __m256i);
                            let lo = _mm256_and_si256(v, mask);
                            let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), mask);
                            let p16 = _mm256_add_epi16(
                                _mm256_maddubs_epi16(lo, xl),
                                _mm256_maddubs_epi16(hi, xh),
                            );
                            // Lanes [b × 4 | b+1 × 4].
                            let i = _mm256_sub_epi32(_mm256_madd_epi16(p16, ones), corr);
                            let d = pair_scales(ds.as_ptr().add(q * blocks + b), PAIR_Q4);
                            acc[q] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i), d, acc[q]);
                        }
                    }
                    if blocks % 2 == 1 {
                        let b = blocks - 1;
                        let m = _mm_set1_epi8(15);
                        let x = _mm256_loadu_si256(xq.add(b * QBLOCK) as *const __m256i);
                        let corr =
                            _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(8), x), ones);
                        for q in 0..4 {
                            let p = qs.add(row(q) * rb + b * bb);
                            let v = _mm_loadu_si128(p as *const __m128i);
                            let lo = _mm_and_si128(v, m);
                            let hi = _mm_and_si128(_mm_srli_epi16::<4>(v), m);
                            let nib = _mm256_set_m128i(hi, lo);
                            let i = _mm256_madd_epi16(_mm256_maddubs_epi16(nib, x), ones);
                            let s = _mm256_cvtepi32_ps(_mm256_sub_epi32(i, corr));
                            let d = _mm256_broadcast_ss(&*ds.as_ptr().add(q * blocks + b));
                            acc[q] = _mm256_fmadd_ps(s, d, acc[q]);
                        }
                    }
                }
            }
            for q in 0..r {
                *out.add(j + q) = hsum256(acc[q]);
            }
            j += r;
        }
    }
}
