//! Quantized weight blocks into AMX B tiles (`amx_quant.rs`, `amx_qint8.rs`): reading 16
//! rows of one quantization block as signed bytes, transposing them, and the blocks' scales
//! step-major.
//!
//! A B tile row is, for 16 rows of W (the tile's columns), a few consecutive K values of
//! each: the pair (k, k + 1) for bf16 tiles, the quad k .. k + 4 for int8 ones. So a tile is
//! the transpose of the 16 rows' 32-value blocks read as 16-bit pairs or 32-bit quads. Held
//! two rows per register, that transpose takes three rounds of two-source byte permutes
//! (`vpermt2b`, one instruction; the word form is three on these CPUs), each swapping one
//! bit of the register index with one bit of the lane. A layout names, low bit first, which
//! bit of the element index (r, c) each bit of the register index and of the lane holds:
//! row bits r0..r3 are 0..3, column bits c0.. are 4...

use std::arch::x86_64::*;

use crate::quant::{QFormat, QMatrix};

/// Register-index bits and lane bits (`N` of them: 2^N elements per register).
type Layout<const N: usize> = ([u8; 3], [u8; N]);

/// Pairs (16 per row, 32 lanes of 2 bytes): loaded as register r / 2, lane 16·(r % 2) + c;
/// transposed to register c / 2, lane 16·(c % 2) + r (register o: columns 2o and 2o + 1).
const W0: Layout<5> = ([1, 2, 3], [4, 5, 6, 7, 0]);
const W1: Layout<5> = ([1, 2, 7], [4, 5, 6, 3, 0]);
const W2: Layout<5> = ([1, 6, 7], [4, 5, 2, 3, 0]);
const W3: Layout<5> = ([5, 6, 7], [0, 1, 2, 3, 4]);
/// Quads (8 per row, 16 lanes of 4 bytes): loaded as register r / 2, lane 8·(r % 2) + c;
/// transposed to register c, lane r.
const D0: Layout<4> = ([1, 2, 3], [4, 5, 6, 0]);
const D1: Layout<4> = ([1, 2, 6], [4, 5, 3, 0]);
const D2: Layout<4> = ([1, 5, 6], [4, 2, 3, 0]);
const D3: Layout<4> = ([4, 5, 6], [0, 1, 2, 3]);

/// `vpermt2b` indices (bit 6 picks the second source) from layout `old` to `new`, which
/// differ in register bit `q`, for the output whose register bit q is `v` (the first source
/// has it 0).
const fn round<const N: usize>(old: Layout<N>, new: Layout<N>, q: usize, v: usize) -> [u8; 64] {
    let width = 64 >> N;
    let mut idx = [0u8; 64];
    let mut l = 0;
    while l < 1 << N {
        let mut e = (v & 1) << new.0[q];
        let mut b = 0;
        while b < N {
            e |= ((l >> b) & 1) << new.1[b];
            b += 1;
        }
        let table = (e >> old.0[q]) & 1;
        let mut src = 0;
        b = 0;
        while b < N {
            src |= ((e >> old.1[b]) & 1) << b;
            b += 1;
        }
        let mut t = 0;
        while t < width {
            idx[l * width + t] = ((table << 6) | (src * width + t)) as u8;
            t += 1;
        }
        l += 1;
    }
    idx
}

/// The three rounds: register bit, and the indices of the outputs with it 0 and 1.
type Rounds = [(usize, [[u8; 64]; 2]); 3];

const PAIRS: Rounds = [
    (2, [round(W0, W1, 2, 0), round(W0, W1, 2, 1)]),
    (1, [round(W1, W2, 1, 0), round(W1, W2, 1, 1)]),
    (0, [round(W2, W3, 0, 0), round(W2, W3, 0, 1)]),
];
const QUADS: Rounds = [
    (2, [round(D0, D1, 2, 0), round(D0, D1, 2, 1)]),
    (1, [round(D1, D2, 1, 0), round(D1, D2, 1, 1)]),
    (0, [round(D2, D3, 0, 0), round(D2, D3, 0, 1)]),
];

/// A transpose of 16 rows held two per register, its indices loaded.
#[derive(Clone, Copy)]
pub(crate) struct Transpose([(usize, __m512i, __m512i); 3]);

impl Transpose {
    /// 16×16 pairs (16-bit elements): register o then holds columns 2o and 2o + 1.
    ///
    /// # Safety
    /// AVX512-F.
    #[target_feature(enable = "avx512f")]
    pub(crate) unsafe fn pairs() -> Transpose {
        // SAFETY: per the contract.
        unsafe { Self::load(&PAIRS) }
    }

    /// 16×8 quads (32-bit elements): register o then holds column o.
    ///
    /// # Safety
    /// AVX512-F.
    #[target_feature(enable = "avx512f")]
    pub(crate) unsafe fn quads() -> Transpose {
        // SAFETY: per the contract.
        unsafe { Self::load(&QUADS) }
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn load(r: &Rounds) -> Transpose {
        // SAFETY: each index array is 64 bytes.
        Transpose(r.map(|(q, [i0, i1])| unsafe {
            (
                q,
                _mm512_loadu_si512(i0.as_ptr() as *const __m512i),
                _mm512_loadu_si512(i1.as_ptr() as *const __m512i),
            )
        }))
    }

    /// Transposes `z` in place.
    ///
    /// # Safety
    /// AVX512-F/VBMI.
    #[inline]
    #[target_feature(enable = "avx512f,avx512vbmi")]
    pub(crate) unsafe fn apply(&self, z: &mut [__m512i; 8]) {
        for &(q, i0, i1) in &self.0 {
            for x in (0..8).filter(|x| x & (1 << q) == 0) {
                let y = x | (1 << q);
                let (zx, zy) = (z[x], z[y]);
                z[x] = _mm512_permutex2var_epi8(zx, i0, zy);
                z[y] = _mm512_permutex2var_epi8(zx, i1, zy);
            }
        }
    }
}

/// Bytes ahead of the block being read that each row is prefetched, once per 64-byte line:
/// the 16 rows of a block are 16 strided streams that the hardware prefetcher did not keep
/// ahead of. OPT-2.7B's fc1 in q8, a loop of 300 calls over 6 matrices, 2026-12-07: bf16
/// tiles at 33 rows 3.5–4.1 ms a call without, 2.9–3.1 with 256, 3.1–4.1 with 512, 3.7–3.9
/// with 1024; int8 tiles at 8 rows 2.3 ms without, 1.75 with 128, 1.72–1.82 with 256,
/// 1.95–2.0 with 512, 2.2–2.4 with 1024 (farther is worse: more lines in flight than the
/// core's fill buffers). Prefetching the next pair's contiguous rows into L2 instead was
/// slower too (1.8–2.2 ms).
const PREFETCH_AHEAD: usize = 256;

/// Quantization block `st` of W's rows `r0 .. r0 + 16` (zeros past `valid` rows) as signed
/// bytes, two rows per register (row 2i in the low half of register i): q8's as stored,
/// q4's two nibbles of byte i as values i and i + 16, minus 8. Prefetches the rows ahead.
///
/// # Safety
/// AVX512-F/BW, AVX2; `w` is consistent and of format Q4 (if `Q4`) or Q8, `r0 + valid ≤
/// w.rows`, `st <` its blocks per row.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx2")]
pub(crate) unsafe fn block_rows<const Q4: bool>(
    w: &QMatrix,
    r0: usize,
    valid: usize,
    st: usize,
) -> [__m512i; 8] {
    let (rb, bb) = (w.format.row_bytes(w.cols), w.format.block_bytes());
    debug_assert!(w.format == if Q4 { QFormat::Q4 } else { QFormat::Q8 });
    // SAFETY: per the contract, every read is a whole block of a row below r0 + valid.
    unsafe {
        // Rows past W (a pair's empty second block) are never read from `base`.
        let base = w.qs.as_ptr().wrapping_add(r0.min(w.rows) * rb + st * bb);
        if (st * bb).is_multiple_of(64) {
            for j in 0..valid {
                let p = base.add(j * rb).wrapping_add(PREFETCH_AHEAD);
                _mm_prefetch::<_MM_HINT_T0>(p as *const i8);
            }
        }
        let row = |j: usize| {
            if j >= valid {
                _mm256_setzero_si256()
            } else if Q4 {
                let v = _mm_loadu_si128(base.add(j * rb) as *const __m128i);
                let low = _mm_set1_epi8(0x0f);
                let lo = _mm_and_si128(v, low);
                let hi = _mm_and_si128(_mm_srli_epi16::<4>(v), low);
                _mm256_sub_epi8(_mm256_set_m128i(hi, lo), _mm256_set1_epi8(8))
            } else {
                _mm256_loadu_si256(base.add(j * rb) as *const __m256i)
            }
        };
        let mut z = [_mm512_setzero_si512(); 8];
        for (i, z) in z.iter_mut().enumerate() {
            *z = if !Q4 && valid == 16 {
                // The second row straight into the upper half (a masked load merges on a
                // general port; an insert takes the shuffle port the transpose needs).
                let second = base.add((2 * i + 1) * rb).sub(32) as *const i64;
                _mm512_mask_loadu_epi64(_mm512_castsi256_si512(row(2 * i)), 0xf0, second)
            } else {
                _mm512_inserti64x4::<1>(_mm512_castsi256_si512(row(2 * i)), row(2 * i + 1))
            };
        }
        z
    }
}

/// The f16 scales of W's rows `r0 .. r0 + 16` (zero past `valid`) for K steps `s0 .. s0 +
/// steps`, step-major: step s's 16 at `out[16·s..]`. Each row's scales are contiguous, so
/// 16 steps of 16 rows are one transpose of pairs.
///
/// # Safety
/// AVX512-F/BW/VL/VBMI, AVX2; `w` is consistent, `r0 + valid ≤ w.rows`, `s0 + steps ≤` its
/// blocks per row; `out` is writable for `16·steps` values.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vbmi,avx2")]
pub(crate) unsafe fn block_scales(
    w: &QMatrix,
    r0: usize,
    valid: usize,
    s0: usize,
    steps: usize,
    out: *mut u16,
    pairs: &Transpose,
) {
    let nb = QFormat::row_blocks(w.cols);
    // SAFETY: per the contract; the masked loads read only the rows' scales of steps s0 ..
    // s0 + steps, and the stores stay inside out's 16·steps values.
    unsafe {
        let sc = w.scales.as_ptr() as *const u16;
        let mut g = 0;
        while g < steps {
            let cnt = (steps - g).min(16);
            let mask = ((1u32 << cnt) - 1) as u16;
            let row = |j: usize| {
                if j < valid {
                    _mm256_maskz_loadu_epi16(mask, sc.add((r0 + j) * nb + s0 + g) as *const i16)
                } else {
                    _mm256_setzero_si256()
                }
            };
            let mut z = [_mm512_setzero_si512(); 8];
            for (i, z) in z.iter_mut().enumerate() {
                *z = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(row(2 * i)), row(2 * i + 1));
            }
            pairs.apply(&mut z);
            // Register o holds steps g + 2o and g + 2o + 1; only those below `steps`.
            for (o, z) in z.iter().enumerate().take(cnt.div_ceil(2)) {
                let p = out.add((g + 2 * o) * 16);
                if g + 2 * o + 1 < steps {
                    _mm512_storeu_si512(p as *mut __m512i, *z);
                } else {
                    _mm256_storeu_si256(p as *mut __m256i, _mm512_castsi512_si256(*z));
                }
            }
            g += 16;
        }
    }
}
