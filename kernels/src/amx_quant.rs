//! Quantized weights (`q8`, `q4`) on AMX for more rows than a decode step: W is dequantized
//! per call, one pair of 16-row blocks and one chunk of K at a time, into bf16 B tiles in a
//! per-thread scratch that every row block of A then reads, and A is rounded to bf16 once:
//! the AMX walk of the bf16 weights (`bf16.rs`) on the dequantized values.
//!
//! Precision: d·q is exact in f32 (an f16 scale times an integer of at most 8 bits) and is
//! rounded once to bf16; the activations are rounded to bf16 as on the bf16 path; each
//! product of two bf16 values is exact in f32 and the sums are f32. Against the f32 path on
//! the same quantized W (dequantized blocks and the f32 GEMM), each product moves by at
//! most 2·2^-8 + 2^-16 of |a·w|. A q8 weight is already off by up to half a step (d/2 =
//! max|block|/254, about 2^-8 of the block's largest value) and a q4 one by up to d, so
//! the two roundings are of the order of the quantization's own error.
//!
//! Why it pays: AMX multiplies bf16 tiles at 16× the f32 FMA rate per core, and the
//! dequantization (a few vector instructions per weight, amortised over every row of A)
//! replaces the dequantization the f32 path does anyway. `matmul_q` sends up to 16 rows to
//! the integer kernels instead (the decode GEMV, the int8 tiles of `amx_qint8.rs`), which
//! convert nothing.

use crate::gemm::{linear_trivial, resolve_threads};
use crate::quant::QMatrix;

/// Whether [`matmul_q_amx_with`] can run on this CPU ([`crate::amx_available`]: AMX-BF16
/// with the tile state granted, and the AVX512-F/BW/BF16 the conversions use; and
/// AVX512-VBMI, which every AMX CPU has, for the byte permutes).
pub fn quant_amx_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *ON.get_or_init(|| crate::amx_available() && is_x86_feature_detected!("avx512vbmi"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// C[m×n] = A[m×k]·Wᵀ (+ bias) for a quantized W on AMX, whatever `m`, over `threads`
/// tasks (0 = the rayon pool, 1 = the calling thread). Returns false, writing nothing,
/// where the CPU cannot run it ([`quant_amx_available`]).
///
/// Preconditions (asserted): as [`crate::matmul_q`].
pub fn matmul_q_amx_with(
    threads: usize,
    a: &[f32],
    w: &QMatrix,
    bias: Option<&[f32]>,
    c: &mut [f32],
    m: usize,
) -> bool {
    if !quant_amx_available() {
        return false;
    }
    let (n, k) = (w.rows, w.cols);
    if linear_trivial("matmul_q_amx", w.is_consistent(), a, bias, c, m, k, n) {
        return true;
    }
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    crate::bf16::amx_rounded(
        resolve_threads(threads),
        a,
        m,
        k,
        n,
        bias,
        c,
        &|pair, s0, steps, scratch| {
            let len = x86::scratch_len(steps);
            if scratch.len() < len {
                scratch.resize_for_overwrite(len);
            }
            // SAFETY: quant_amx_available() includes AVX512-F/BW/BF16/VBMI; the walk asks for
            // steps inside the padded K, whose 32-value steps are W's quantization blocks,
            // and the scratch holds both blocks' tiles and scales.
            unsafe { x86::dequant_pair(w, pair, s0, steps, &mut scratch[..len]) };
            (scratch.as_ptr(), steps * 512)
        },
        &|pair, s0, steps| {
            let (rb, bb) = (w.format.row_bytes(k), w.format.block_bytes());
            let r0 = pair * 32;
            let start = w.qs.as_ptr().wrapping_add(r0 * rb + s0 * bb);
            crate::x86_amx::Ahead::new(start, w.rows.saturating_sub(r0).min(32), steps * bb, rb)
        },
    );
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    let _ = (threads, resolve_threads);
    true
}

/// The dequantization into B tiles (also the packed bf16 layout's block pairs, which
/// `dpbf16_quant.rs` feeds to the AVX512-BF16 kernel).
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use std::arch::x86_64::*;

    use crate::quant::{QFormat, QMatrix};
    use crate::x86_qtiles::{Transpose, block_rows, block_scales};

    /// The transposed bytes of one tile: row p (32 bytes) = the pairs of element 2p of 16
    /// rows of W.
    #[repr(C, align(64))]
    struct TileBytes([u8; 512]);

    /// Values of scratch [`dequant_pair`] takes for `steps` K steps: both blocks' B tiles,
    /// then both blocks' scales, step-major.
    pub(crate) const fn scratch_len(steps: usize) -> usize {
        2 * steps * 512 + 2 * steps * 16
    }

    /// Writes the B tiles of W's rows `32·pair .. 32·pair + 32` (rows past W as zeros) for
    /// K steps `s0 .. s0 + steps` (step s is quantization block s): block b (16 rows) at
    /// `b·steps·512`, its step s at `s·512`, tile row p the pair (k, k + 1) =
    /// (32(s0 + s) + 2p, + 1) of the block's 16 rows interleaved, each value bf16(d·q).
    /// The blocks' scales go after the tiles (scratch).
    ///
    /// # Safety
    /// AVX512-F/BW/VL/BF16/VBMI; `w` is consistent, `32·pair < w.rows` rounded up to 32,
    /// `s0 + steps ≤` its blocks per row; `dst` holds [`scratch_len`]`(steps)` values.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,avx512vbmi,avx2")]
    pub(crate) unsafe fn dequant_pair(
        w: &QMatrix,
        pair: usize,
        s0: usize,
        steps: usize,
        dst: &mut [u16],
    ) {
        debug_assert!(dst.len() >= scratch_len(steps));
        // SAFETY: per the contract.
        unsafe {
            match w.format {
                QFormat::Q8 => pair_blocks::<false>(w, pair, s0, steps, dst),
                QFormat::Q4 => pair_blocks::<true>(w, pair, s0, steps, dst),
            }
        }
    }

    /// [`dequant_pair`] for one format (`Q4`: q4, else q8).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,avx512vbmi,avx2")]
    unsafe fn pair_blocks<const Q4: bool>(
        w: &QMatrix,
        pair: usize,
        s0: usize,
        steps: usize,
        dst: &mut [u16],
    ) {
        debug_assert!(w.is_consistent() && s0 + steps <= QFormat::row_blocks(w.cols));
        let mut t = TileBytes([0; 512]);
        let tp = t.0.as_mut_ptr();
        // SAFETY: rows below w.rows and blocks below its count are read (block_rows,
        // block_scales); the tile and scale stores land in dst (per scratch_len) and `t`.
        unsafe {
            let pairs = Transpose::pairs();
            // Scale of row j at lanes 2j and 2j + 1: rows 0..8 for a tile row's first 16
            // bytes, rows 8..16 for the next.
            let dup_lo = _mm512_set_epi32(7, 7, 6, 6, 5, 5, 4, 4, 3, 3, 2, 2, 1, 1, 0, 0);
            let dup_hi =
                _mm512_set_epi32(15, 15, 14, 14, 13, 13, 12, 12, 11, 11, 10, 10, 9, 9, 8, 8);
            for b in 0..2 {
                let r0 = pair * 32 + b * 16;
                let valid = w.rows.saturating_sub(r0).min(16);
                let tiles = dst.as_mut_ptr().add(b * steps * 512);
                let scales = dst.as_mut_ptr().add(2 * steps * 512 + b * steps * 16);
                block_scales(w, r0, valid, s0, steps, scales, &pairs);
                for s in 0..steps {
                    let mut z = block_rows::<Q4>(w, r0, valid, s0 + s);
                    pairs.apply(&mut z);
                    for (o, z) in z.iter().enumerate() {
                        _mm512_store_si512(tp.add(o * 64) as *mut __m512i, *z);
                    }
                    let d =
                        _mm512_cvtph_ps(_mm256_loadu_si256(scales.add(s * 16) as *const __m256i));
                    let (d_lo, d_hi) = (
                        _mm512_permutexvar_ps(dup_lo, d),
                        _mm512_permutexvar_ps(dup_hi, d),
                    );
                    let out = tiles.add(s * 512);
                    // Read back through memory: each widening then loads its 16 bytes
                    // itself, where extracting them from the registers took three more
                    // shuffles per register on the same port.
                    let tp = std::hint::black_box(tp);
                    for p in 0..16 {
                        let x0 =
                            _mm512_cvtepi8_epi32(_mm_load_si128(tp.add(p * 32) as *const __m128i));
                        let x1 = _mm512_cvtepi8_epi32(_mm_load_si128(
                            tp.add(p * 32 + 16) as *const __m128i
                        ));
                        let f0 = _mm512_mul_ps(_mm512_cvtepi32_ps(x0), d_lo);
                        let f1 = _mm512_mul_ps(_mm512_cvtepi32_ps(x1), d_hi);
                        let h: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(f1, f0));
                        _mm512_storeu_si512(out.add(p * 32) as *mut __m512i, h);
                    }
                }
            }
        }
    }
}
