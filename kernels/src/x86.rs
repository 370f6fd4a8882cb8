//! x86-64 microkernels and GEMV loops (AVX-512F, AVX2+FMA). Everything here is an
//! `unsafe fn` with `#[target_feature]`: callers must have resolved the ISA first, and pass
//! pointers valid for the documented extents.

use std::arch::x86_64::*;

/// How far ahead (bytes) the row-dot GEMV prefetches each weight row: measured on Zen 5, it
/// lifts f16 weight streaming from DRAM by ~40% (f32 unchanged); a prefetch past the end of
/// the matrix is harmless (it never faults).
const PREFETCH_BYTES: usize = 2048;

/// Loads 16 weights as f32 from f32 or f16 storage (full and masked forms).
macro_rules! w512 {
    (f32, $p:expr) => {
        _mm512_loadu_ps($p)
    };
    (f16, $p:expr) => {
        _mm512_cvtph_ps(_mm256_loadu_si256($p as *const __m256i))
    };
    (f32, $m:expr, $p:expr) => {
        _mm512_maskz_loadu_ps($m, $p)
    };
    (f16, $m:expr, $p:expr) => {
        _mm512_cvtph_ps(_mm256_maskz_loadu_epi16($m, $p as *const i16))
    };
}
pub(crate) use w512;

/// AVX-512 register-blocked microkernel: C[rows×cols] (+)= Apanel[kc×MR]·Bpanel[kc×16NV].
///
/// `a` is an A micro-panel packed as [kc][MR], `b` a B micro-panel packed as [kc][16·NV]
/// (both zero-padded), `c` points at C[0,0] of the tile with row stride `ldc`; only the
/// `rows ≤ MR` × `cols ≤ 16·NV` corner is written (masked stores on the column edge).
/// `accumulate` adds to C instead of overwriting it. With `F16` the B panel holds f16 values
/// (`b` is then a cast `*const f16`) widened in registers: the layout of the weights packed
/// at load (`packed.rs`), read in place.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
pub(crate) unsafe fn ukr_avx512<const MR: usize, const NV: usize, const F16: bool>(
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    accumulate: bool,
) {
    // SAFETY: as for ukr_avx512_pf, with nothing to prefetch.
    unsafe {
        ukr_avx512_pf::<MR, NV, F16>(
            kc,
            a,
            b,
            c,
            ldc,
            rows,
            cols,
            accumulate,
            (std::ptr::null(), 0),
        )
    }
}

/// [`ukr_avx512`] that also brings `prefetch.1` 64-byte lines from `prefetch.0` into L2,
/// a few at a time spread over its K loop. Issued in one burst before the tile, as many
/// prefetches as there are line-fill buffers stall the core until memory answers (10% of the
/// ViT's f32 time in a profile); spread out, they overlap the FMAs.
///
/// # Safety
/// As [`ukr_avx512`]; the prefetched range may be anything (a prefetch never faults).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
pub(crate) unsafe fn ukr_avx512_pf<const MR: usize, const NV: usize, const F16: bool>(
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    accumulate: bool,
    prefetch: (*const i8, usize),
) {
    // SAFETY: the caller guarantees the panel extents (kc·MR, kc·16NV) and the C tile.
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); NV]; MR];
        let mut ap = a;
        let mut off = 0;
        let (mut pf, mut pf_left) = prefetch;
        // Every `step` K steps, `per` lines (one flat loop: nesting it spills the
        // accumulators).
        let chunks = pf_left.min(kc).max(1);
        let step = kc.div_ceil(chunks);
        let per = pf_left.div_ceil(chunks);
        let mut next_pf = 0;
        // Halfway through K, request the C tile this call adds into (one T0 request per
        // line): its lines are far (C of a ViT layer is megabytes) and the loads at the end
        // stalled the finished tile, 7.6% of the kernel's samples on a Zen 4. Only where C is
        // read (`accumulate`); 3–4% off a ViT layer's four matmuls there, 2026-12-07
        // (docs/performance.md).
        let c_at = if accumulate { kc / 2 } else { usize::MAX };
        for p in 0..kc {
            if p == c_at {
                for i in 0..MR.min(rows) {
                    let row = c.add(i * ldc) as *const i8;
                    for l in 0..(cols * 4).div_ceil(64) {
                        _mm_prefetch::<_MM_HINT_T0>(row.add(l * 64));
                    }
                }
            }
            if p == next_pf && pf_left > 0 {
                let n = per.min(pf_left);
                for l in 0..n {
                    _mm_prefetch::<_MM_HINT_T1>(pf.add(l * 64));
                }
                pf = pf.wrapping_add(n * 64);
                pf_left -= n;
                next_pf += step;
            }
            let mut bv = [_mm512_setzero_ps(); NV];
            for v in 0..NV {
                bv[v] = if F16 {
                    w512!(f16, (b as *const u16).add(off + 16 * v))
                } else {
                    w512!(f32, b.add(off + 16 * v))
                };
            }
            for i in 0..MR {
                let ai = _mm512_set1_ps(*ap.add(i));
                for v in 0..NV {
                    acc[i][v] = _mm512_fmadd_ps(ai, bv[v], acc[i][v]);
                }
            }
            ap = ap.add(MR);
            off += 16 * NV;
        }
        if cols == 16 * NV {
            for i in 0..MR.min(rows) {
                for v in 0..NV {
                    let p = c.add(i * ldc + 16 * v);
                    let r = if accumulate {
                        _mm512_add_ps(_mm512_loadu_ps(p), acc[i][v])
                    } else {
                        acc[i][v]
                    };
                    _mm512_storeu_ps(p, r);
                }
            }
        } else {
            for i in 0..MR.min(rows) {
                for v in 0..NV {
                    let left = cols.saturating_sub(16 * v).min(16);
                    if left == 0 {
                        break;
                    }
                    let m = ((1u32 << left) - 1) as u16;
                    let p = c.add(i * ldc + 16 * v);
                    let r = if accumulate {
                        _mm512_add_ps(_mm512_maskz_loadu_ps(m, p), acc[i][v])
                    } else {
                        acc[i][v]
                    };
                    _mm512_mask_storeu_ps(p, m, r);
                }
            }
        }
    }
}

/// Loads 8 weights as f32 from f32 or f16 storage.
macro_rules! w256 {
    (f32, $p:expr) => {
        _mm256_loadu_ps($p)
    };
    (f16, $p:expr) => {
        _mm256_cvtph_ps(_mm_loadu_si128($p as *const __m128i))
    };
}
pub(crate) use w256;

/// AVX2+FMA microkernel, same contract as [`ukr_avx512`] with 8-lane registers (B packed
/// per call, rows 8·NV apart).
///
/// # Safety
/// As [`ukr_avx512`].
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn ukr_avx2<const MR: usize, const NV: usize>(
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    accumulate: bool,
) {
    // SAFETY: per the contract above.
    unsafe { ukr_avx2_ld::<MR, NV, false>(kc, a, b, 8 * NV, c, ldc, rows, cols, accumulate) }
}

/// [`ukr_avx2`] over a B panel whose K steps are `ldb` elements apart (the 32-wide panels
/// packed at load, read 16 columns at a time) and, with `F16`, stored as f16 (`b` a cast
/// `*const f16`) widened in registers. Unlike [`ukr_avx512_pf`] it requests nothing ahead:
/// on a Zen 3 the next block's L2 requests and the C tile's halfway request, as the AVX-512
/// kernel makes them, took the ViT from 3.2 to 3.85 s (f32 panels, `blip2 bench`).
///
/// # Safety
/// `a` valid for kc·MR floats, `b` for kc rows of `ldb` elements (8·NV used from each), the
/// `rows ≤ MR` × `cols ≤ 8·NV` corner of C (row stride `ldc`).
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
pub(crate) unsafe fn ukr_avx2_ld<const MR: usize, const NV: usize, const F16: bool>(
    kc: usize,
    a: *const f32,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    accumulate: bool,
) {
    // SAFETY: per the contract above.
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); NV]; MR];
        let mut ap = a;
        let mut off = 0;
        for _ in 0..kc {
            let mut bv = [_mm256_setzero_ps(); NV];
            for v in 0..NV {
                bv[v] = if F16 {
                    w256!(f16, (b as *const u16).add(off + 8 * v))
                } else {
                    w256!(f32, b.add(off + 8 * v))
                };
            }
            for i in 0..MR {
                let ai = _mm256_set1_ps(*ap.add(i));
                for v in 0..NV {
                    acc[i][v] = _mm256_fmadd_ps(ai, bv[v], acc[i][v]);
                }
            }
            ap = ap.add(MR);
            off += ldb;
        }
        if cols == 8 * NV {
            for i in 0..MR.min(rows) {
                for v in 0..NV {
                    let p = c.add(i * ldc + 8 * v);
                    let r = if accumulate {
                        _mm256_add_ps(_mm256_loadu_ps(p), acc[i][v])
                    } else {
                        acc[i][v]
                    };
                    _mm256_storeu_ps(p, r);
                }
            }
        } else {
            // Column edge: spill to the stack, copy the valid corner.
            let mut tmp = [[[0.0f32; 8]; NV]; MR];
            for i in 0..MR {
                for v in 0..NV {
                    _mm256_storeu_ps(tmp[i][v].as_mut_ptr(), acc[i][v]);
                }
            }
            for i in 0..MR.min(rows) {
                for j in 0..cols {
                    let p = c.add(i * ldc + j);
                    let t = tmp[i][j / 8][j % 8];
                    *p = if accumulate { *p + t } else { t };
                }
            }
        }
    }
}

/// How far ahead the row-major GEMVs request each of their four rows (`rb` bytes apart):
/// into L1 [`PREFETCH_BYTES`]; into L2 the quantized GEMV's rule
/// (`x86_prefetch::prefetch_ahead`: 16 KiB or one pass of four rows, whichever is further).
#[inline(always)]
fn gemv_ahead(l2: bool, rb: usize) -> usize {
    if l2 {
        crate::x86_prefetch::prefetch_ahead(true, 4, rb)
    } else {
        PREFETCH_BYTES
    }
}

macro_rules! gemv_x86 {
    ($ty:ty, $kind:tt, $t512:ident, $n512:ident, $t256:ident, $n256:ident) => {
        /// out[j] = Σ_p a[p]·w[j·ld + p] for j < n (rows of W dotted with a; W is [n×k]).
        /// W's rows are requested ahead into L2 with `L2` (AMD: see
        /// `x86_prefetch::prefetch_to_l2`; the f16 rows of fc1 from DRAM took 0.77× the time
        /// with it on Zen 4), else [`PREFETCH_BYTES`] ahead into L1.
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
        #[allow(clippy::needless_range_loop)]
        pub(crate) unsafe fn $t512<const L2: bool>(
            k: usize,
            a: *const f32,
            w: *const $ty,
            ld: usize,
            n: usize,
            out: *mut f32,
        ) {
            let ahead = gemv_ahead(L2, ld * std::mem::size_of::<$ty>());
            // SAFETY: caller guarantees a[0..k], w rows j < n of length k, out[0..n].
            unsafe {
                let mut j = 0;
                while j < n {
                    // Four rows at a time share the loads of `a`; 8 independent FMA chains.
                    let r = (n - j).min(4);
                    let mut acc = [[_mm512_setzero_ps(); 2]; 4];
                    let rows = [
                        w.add(j * ld),
                        w.add((j + 1.min(r - 1)) * ld),
                        w.add((j + 2.min(r - 1)) * ld),
                        w.add((j + 3.min(r - 1)) * ld),
                    ];
                    let mut p = 0;
                    while p + 32 <= k {
                        let a0 = _mm512_loadu_ps(a.add(p));
                        let a1 = _mm512_loadu_ps(a.add(p + 16));
                        for q in 0..4 {
                            crate::x86_prefetch::request_ahead::<L2>(
                                rows[q].add(p) as *const u8,
                                ahead,
                            );
                        }
                        for q in 0..4 {
                            acc[q][0] =
                                _mm512_fmadd_ps(a0, w512!($kind, rows[q].add(p)), acc[q][0]);
                            acc[q][1] =
                                _mm512_fmadd_ps(a1, w512!($kind, rows[q].add(p + 16)), acc[q][1]);
                        }
                        p += 32;
                    }
                    while p < k {
                        let m = ((1u32 << (k - p).min(16)) - 1) as u16;
                        let a0 = _mm512_maskz_loadu_ps(m, a.add(p));
                        for q in 0..4 {
                            acc[q][0] =
                                _mm512_fmadd_ps(a0, w512!($kind, m, rows[q].add(p)), acc[q][0]);
                        }
                        p += 16;
                    }
                    for q in 0..r {
                        *out.add(j + q) = _mm512_reduce_add_ps(_mm512_add_ps(acc[q][0], acc[q][1]));
                    }
                    j += r;
                }
            }
        }

        /// out[j] = Σ_p a[p]·b[p·ld + j] for j < n (a times a [k×n] row-major B).
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
        #[allow(clippy::needless_range_loop)]
        pub(crate) unsafe fn $n512(
            k: usize,
            a: *const f32,
            b: *const $ty,
            ld: usize,
            n: usize,
            out: *mut f32,
        ) {
            // SAFETY: caller guarantees a[0..k], b rows p < k with n columns, out[0..n].
            unsafe {
                let mut j = 0;
                while j + 128 <= n {
                    let mut acc = [_mm512_setzero_ps(); 8];
                    for p in 0..k {
                        let ap = _mm512_set1_ps(*a.add(p));
                        let row = b.add(p * ld + j);
                        for v in 0..8 {
                            acc[v] = _mm512_fmadd_ps(ap, w512!($kind, row.add(16 * v)), acc[v]);
                        }
                    }
                    for v in 0..8 {
                        _mm512_storeu_ps(out.add(j + 16 * v), acc[v]);
                    }
                    j += 128;
                }
                while j < n {
                    let m = ((1u32 << (n - j).min(16)) - 1) as u16;
                    let mut acc = _mm512_setzero_ps();
                    for p in 0..k {
                        acc = _mm512_fmadd_ps(
                            _mm512_set1_ps(*a.add(p)),
                            w512!($kind, m, b.add(p * ld + j)),
                            acc,
                        );
                    }
                    _mm512_mask_storeu_ps(out.add(j), m, acc);
                    j += 16;
                }
            }
        }

        /// AVX2 form of the row-dot GEMV above.
        #[target_feature(enable = "avx2,fma,f16c")]
        #[allow(clippy::needless_range_loop)]
        pub(crate) unsafe fn $t256<const L2: bool>(
            k: usize,
            a: *const f32,
            w: *const $ty,
            ld: usize,
            n: usize,
            out: *mut f32,
        ) {
            let ahead = gemv_ahead(L2, ld * std::mem::size_of::<$ty>());
            // SAFETY: as above.
            unsafe {
                let mut j = 0;
                while j < n {
                    let r = (n - j).min(4);
                    let mut acc = [[_mm256_setzero_ps(); 2]; 4];
                    let rows = [
                        w.add(j * ld),
                        w.add((j + 1.min(r - 1)) * ld),
                        w.add((j + 2.min(r - 1)) * ld),
                        w.add((j + 3.min(r - 1)) * ld),
                    ];
                    let mut p = 0;
                    while p + 16 <= k {
                        let a0 = _mm256_loadu_ps(a.add(p));
                        let a1 = _mm256_loadu_ps(a.add(p + 8));
                        for q in 0..4 {
                            crate::x86_prefetch::request_ahead::<L2>(
                                rows[q].add(p) as *const u8,
                                ahead,
                            );
                        }
                        for q in 0..4 {
                            acc[q][0] =
                                _mm256_fmadd_ps(a0, w256!($kind, rows[q].add(p)), acc[q][0]);
                            acc[q][1] =
                                _mm256_fmadd_ps(a1, w256!($kind, rows[q].add(p + 8)), acc[q][1]);
                        }
                        p += 16;
                    }
                    for q in 0..r {
                        let s = _mm256_add_ps(acc[q][0], acc[q][1]);
                        let s =
                            _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps::<1>(s));
                        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
                        let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
                        let mut t = _mm_cvtss_f32(s);
                        for pp in p..k {
                            t += *a.add(pp) * f32::from(*rows[q].add(pp));
                        }
                        *out.add(j + q) = t;
                    }
                    j += r;
                }
            }
        }

        /// AVX2 form of the column GEMV above.
        #[target_feature(enable = "avx2,fma,f16c")]
        #[allow(clippy::needless_range_loop)]
        pub(crate) unsafe fn $n256(
            k: usize,
            a: *const f32,
            b: *const $ty,
            ld: usize,
            n: usize,
            out: *mut f32,
        ) {
            // SAFETY: as above.
            unsafe {
                let mut j = 0;
                while j + 64 <= n {
                    let mut acc = [_mm256_setzero_ps(); 8];
                    for p in 0..k {
                        let ap = _mm256_set1_ps(*a.add(p));
                        let row = b.add(p * ld + j);
                        for v in 0..8 {
                            acc[v] = _mm256_fmadd_ps(ap, w256!($kind, row.add(8 * v)), acc[v]);
                        }
                    }
                    for v in 0..8 {
                        _mm256_storeu_ps(out.add(j + 8 * v), acc[v]);
                    }
                    j += 64;
                }
                while j + 8 <= n {
                    let mut acc = _mm256_setzero_ps();
                    for p in 0..k {
                        acc = _mm256_fmadd_ps(
                            _mm256_set1_ps(*a.add(p)),
                            w256!($kind, b.add(p * ld + j)),
                            acc,
                        );
                    }
                    _mm256_storeu_ps(out.add(j), acc);
                    j += 8;
                }
                for jj in j..n {
                    let mut t = 0.0f32;
                    for p in 0..k {
                        t += *a.add(p) * f32::from(*b.add(p * ld + jj));
                    }
                    *out.add(jj) = t;
                }
            }
        }
    };
}

gemv_x86!(
    f32,
    f32,
    gemv_t_f32_avx512,
    gemv_n_f32_avx512,
    gemv_t_f32_avx2,
    gemv_n_f32_avx2
);
gemv_x86!(
    half::f16,
    f16,
    gemv_t_f16_avx512,
    gemv_n_f16_avx512,
    gemv_t_f16_avx2,
    gemv_n_f16_avx2
);

/// Scalar part of the transposing packs: dst[p·nr + j] = src[j·ld + p] for the given ranges
/// (with `F16`, `src` is a cast `*const f16`, widened).
///
/// # Safety
/// As [`transpose_pack_avx512`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn transpose_scalar<const F16: bool>(
    src: *const f32,
    ld: usize,
    j0: usize,
    j1: usize,
    p0: usize,
    p1: usize,
    dst: *mut f32,
    nr: usize,
) {
    // SAFETY: the ranges are inside the caller's block.
    unsafe {
        for j in j0..j1 {
            for p in p0..p1 {
                *dst.add(p * nr + j) = if F16 {
                    (*(src as *const half::f16).add(j * ld + p)).to_f32()
                } else {
                    *src.add(j * ld + p)
                };
            }
        }
    }
}

/// dst[p·nr + j] = src[j·ld + p] for j < w, p < kc, in 16×16 register transposes. With
/// `F16` the source holds f16 values (`src` is then a cast `*const f16`, `ld` in elements),
/// widened as they are loaded: row-major f16 weights (a checkpoint's, used in place from
/// the mapped file) become f32 panels in one pass, without an f32 copy of their rows.
#[allow(clippy::needless_range_loop)]
///
/// # Safety
/// `src` valid for w rows of stride `ld` (kc used), `dst` for kc·nr floats, w ≤ nr.
#[target_feature(enable = "avx512f,f16c")]
pub(crate) unsafe fn transpose_pack_avx512<const F16: bool>(
    src: *const f32,
    ld: usize,
    w: usize,
    kc: usize,
    dst: *mut f32,
    nr: usize,
) {
    let kf = kc / 16 * 16;
    // SAFETY: 16×16 blocks lie inside p < kf ≤ kc; rows past w are neither read nor written
    // (a narrower last block of j loads zeros for them and stores only its `jw` lanes).
    unsafe {
        for p in (0..kf).step_by(16) {
            for j in (0..w).step_by(16) {
                let jw = (w - j).min(16);
                let lanes = if jw == 16 { !0u16 } else { (1u16 << jw) - 1 };
                let mut r = [_mm512_setzero_ps(); 16];
                for (i, ri) in r.iter_mut().enumerate().take(jw) {
                    let off = (j + i) * ld + p;
                    *ri = if F16 {
                        w512!(f16, (src as *const u16).add(off))
                    } else {
                        w512!(f32, src.add(off))
                    };
                }
                // Within each 128-bit lane: 4×4 transposes of every group of four rows.
                let mut x = [[_mm512_setzero_ps(); 4]; 4];
                for g in 0..4 {
                    let t0 = _mm512_unpacklo_ps(r[4 * g], r[4 * g + 1]);
                    let t1 = _mm512_unpackhi_ps(r[4 * g], r[4 * g + 1]);
                    let t2 = _mm512_unpacklo_ps(r[4 * g + 2], r[4 * g + 3]);
                    let t3 = _mm512_unpackhi_ps(r[4 * g + 2], r[4 * g + 3]);
                    x[g][0] = _mm512_shuffle_ps::<0x44>(t0, t2);
                    x[g][1] = _mm512_shuffle_ps::<0xEE>(t0, t2);
                    x[g][2] = _mm512_shuffle_ps::<0x44>(t1, t3);
                    x[g][3] = _mm512_shuffle_ps::<0xEE>(t1, t3);
                }
                // Then a 4×4 transpose of 128-bit lanes: column 4L + c = lane L of x[0..4][c].
                for c in 0..4 {
                    let a0 = _mm512_shuffle_f32x4::<0x44>(x[0][c], x[1][c]);
                    let a1 = _mm512_shuffle_f32x4::<0xEE>(x[0][c], x[1][c]);
                    let a2 = _mm512_shuffle_f32x4::<0x44>(x[2][c], x[3][c]);
                    let a3 = _mm512_shuffle_f32x4::<0xEE>(x[2][c], x[3][c]);
                    let cols = [
                        _mm512_shuffle_f32x4::<0x88>(a0, a2),
                        _mm512_shuffle_f32x4::<0xDD>(a0, a2),
                        _mm512_shuffle_f32x4::<0x88>(a1, a3),
                        _mm512_shuffle_f32x4::<0xDD>(a1, a3),
                    ];
                    for (l, v) in cols.into_iter().enumerate() {
                        _mm512_mask_storeu_ps(dst.add((p + 4 * l + c) * nr + j), lanes, v);
                    }
                }
            }
        }
        transpose_scalar::<F16>(src, ld, 0, w, kf, kc, dst, nr);
    }
}

/// AVX2 form of [`transpose_pack_avx512`] with 8×8 register transposes.
#[allow(clippy::needless_range_loop)]
///
/// # Safety
/// As [`transpose_pack_avx512`].
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn transpose_pack_avx2(
    src: *const f32,
    ld: usize,
    w: usize,
    kc: usize,
    dst: *mut f32,
    nr: usize,
) {
    let (wf, kf) = (w / 8 * 8, kc / 8 * 8);
    // SAFETY: full 8×8 blocks lie inside j < wf ≤ w and p < kf ≤ kc.
    unsafe {
        for p in (0..kf).step_by(8) {
            for j in (0..wf).step_by(8) {
                let mut r = [_mm256_setzero_ps(); 8];
                for (i, ri) in r.iter_mut().enumerate() {
                    *ri = _mm256_loadu_ps(src.add((j + i) * ld + p));
                }
                let mut x = [[_mm256_setzero_ps(); 4]; 2];
                for g in 0..2 {
                    let t0 = _mm256_unpacklo_ps(r[4 * g], r[4 * g + 1]);
                    let t1 = _mm256_unpackhi_ps(r[4 * g], r[4 * g + 1]);
                    let t2 = _mm256_unpacklo_ps(r[4 * g + 2], r[4 * g + 3]);
                    let t3 = _mm256_unpackhi_ps(r[4 * g + 2], r[4 * g + 3]);
                    x[g][0] = _mm256_shuffle_ps::<0x44>(t0, t2);
                    x[g][1] = _mm256_shuffle_ps::<0xEE>(t0, t2);
                    x[g][2] = _mm256_shuffle_ps::<0x44>(t1, t3);
                    x[g][3] = _mm256_shuffle_ps::<0xEE>(t1, t3);
                }
                for c in 0..4 {
                    // Lane 0 holds column c, lane 1 column 4 + c.
                    let lo = _mm256_permute2f128_ps::<0x20>(x[0][c], x[1][c]);
                    let hi = _mm256_permute2f128_ps::<0x31>(x[0][c], x[1][c]);
                    _mm256_storeu_ps(dst.add((p + c) * nr + j), lo);
                    _mm256_storeu_ps(dst.add((p + 4 + c) * nr + j), hi);
                }
            }
        }
        transpose_scalar::<false>(src, ld, wf, w, 0, kc, dst, nr);
        transpose_scalar::<false>(src, ld, 0, wf, kf, kc, dst, nr);
    }
}

/// Small-M x·Wᵀ (M ≤ 8 activation rows, W stored [n×k]): each 16-weight chunk of two W
/// rows is loaded (and widened from f16) once and multiplied into all M rows, so a batch of
/// decode rows costs one pass over W instead of M (the per-row GEMV widened every weight M
/// times and was compute-bound at batch 8).
macro_rules! gemm_small_t_x86 {
    ($ty:ty, $kind:tt, $name:ident) => {
        /// out[i·ldc + j] = Σ_p a[i·lda + p]·w[j·ld + p] for i < M, j < n.
        ///
        /// # Safety
        /// AVX-512F/BW/VL and F16C present; `a` valid for M rows of stride `lda` (k used),
        /// `w` for n rows of stride `ld` (k used), `out` for M rows of stride `ldc` (n used).
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
        #[allow(clippy::needless_range_loop, clippy::too_many_arguments)]
        pub(crate) unsafe fn $name<const M: usize>(
            k: usize,
            a: *const f32,
            lda: usize,
            w: *const $ty,
            ld: usize,
            n: usize,
            out: *mut f32,
            ldc: usize,
        ) {
            // SAFETY: per the contract above.
            unsafe {
                let mut j = 0;
                while j < n {
                    let r = (n - j).min(2);
                    let rows = [w.add(j * ld), w.add((j + 1.min(r - 1)) * ld)];
                    let mut acc = [[_mm512_setzero_ps(); 2]; M];
                    let mut p = 0;
                    while p + 16 <= k {
                        for q in 0..2 {
                            _mm_prefetch::<_MM_HINT_T0>(
                                (rows[q].add(p) as *const i8).wrapping_add(PREFETCH_BYTES),
                            );
                        }
                        let w0 = w512!($kind, rows[0].add(p));
                        let w1 = w512!($kind, rows[1].add(p));
                        for i in 0..M {
                            let x = _mm512_loadu_ps(a.add(i * lda + p));
                            acc[i][0] = _mm512_fmadd_ps(x, w0, acc[i][0]);
                            acc[i][1] = _mm512_fmadd_ps(x, w1, acc[i][1]);
                        }
                        p += 16;
                    }
                    if p < k {
                        let m = ((1u32 << (k - p)) - 1) as u16;
                        let w0 = w512!($kind, m, rows[0].add(p));
                        let w1 = w512!($kind, m, rows[1].add(p));
                        for i in 0..M {
                            let x = _mm512_maskz_loadu_ps(m, a.add(i * lda + p));
                            acc[i][0] = _mm512_fmadd_ps(x, w0, acc[i][0]);
                            acc[i][1] = _mm512_fmadd_ps(x, w1, acc[i][1]);
                        }
                    }
                    for i in 0..M {
                        for q in 0..r {
                            *out.add(i * ldc + j + q) = _mm512_reduce_add_ps(acc[i][q]);
                        }
                    }
                    j += r;
                }
            }
        }
    };
}

gemm_small_t_x86!(f32, f32, gemm_small_t_f32_avx512);
gemm_small_t_x86!(half::f16, f16, gemm_small_t_f16_avx512);
