//! f16 (and, on request, f32) packed linear weights on AMX through a bf16 split: each value
//! v becomes hi = bf16(v) and lo = bf16(v − hi), and a product x·w is taken as
//! xh·wh + xh·wl + xl·wh, three `tdpbf16ps` terms with f32 sums.
//!
//! Why it is close to the f32 product: bf16 keeps 8 significant bits (unit roundoff 2^-8),
//! so |v − hi| ≤ 2^-8·|v| and |v − hi − lo| ≤ 2^-16·|v|; an f16 weight (11 bits) splits
//! exactly. With x = xh + xl + ex and w = wh + wl + ew, the product misses xl·wl + ex·w +
//! (xh + xl)·ew, at most 2·2^-16 of |x·w| for f16 weights (ew = 0) and 3·2^-16 for f32 ones
//! (each bf16 product is exact in f32, then f32 sums), against 2^-8 when the activations are
//! rounded to bf16 (the bf16-weight path) and 2^-11 for f16 activations (PyTorch's f16
//! matmul). An f32 FMA is exact per product, so this is a reduced-precision path: f16
//! weights take it by default where AMX is present (`BLIP2_CPU_SPLIT=0` turns it off), f32
//! weights only with `BLIP2_CPU_SPLIT=all`. As every AMX product, denormal inputs count as
//! zero.
//!
//! Why it pays: AMX multiplies bf16 tiles at 16× the f32 FMA rate per core, so three terms
//! still beat the f32 GEMM once M is large enough to pay for splitting W ([`SPLIT_MIN_M`]:
//! the ViT, the Q-Former's cross-attention over the image tokens, long prefills). W is
//! split per call, one pair of 16-row blocks and one chunk of K at a time, into a
//! per-thread scratch that every row block of A then reads (no extra memory is held for
//! the weights); A is split once per call.

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
use crate::AlignedVec;
use crate::packed::{PackedData, PackedMatrix};

/// Smallest M the split path takes. Splitting W costs about as much per call whatever M
/// is, so few rows do not pay for it: at the ViT's shapes on 2 threads (`linear_vit` example,
/// spr-2c, 2026-12-07) the split took 1.17–1.27× the f32 path's time at 33 rows (prefill),
/// 0.72–1.03× at 32 (the Q-Former's queries), 0.63–0.78× at 64 and 0.57–0.71× at 257.
pub const SPLIT_MIN_M: usize = 48;

/// Which packed weights [`split_applies`] sends to the split path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SplitWeights {
    /// None (`BLIP2_CPU_SPLIT=0`, or no AMX).
    Off,
    /// f16 weights (the default where AMX is present).
    F16,
    /// f16 and f32 weights (`BLIP2_CPU_SPLIT=all`).
    All,
}

/// Whether this CPU can run the split path: [`crate::amx_available`] (AMX-BF16 with the
/// tile state granted, and the AVX512-BF16 the conversions use).
pub fn split_available() -> bool {
    crate::amx_available()
}

/// The weights the split path takes in this process: [`SplitWeights::Off`] without
/// [`split_available`], else `BLIP2_CPU_SPLIT` (`0`/`off`, `f16`, `all`; default f16).
pub fn split_weights() -> SplitWeights {
    use std::sync::OnceLock;
    static ON: OnceLock<SplitWeights> = OnceLock::new();
    *ON.get_or_init(|| {
        if !split_available() {
            return SplitWeights::Off;
        }
        match std::env::var("BLIP2_CPU_SPLIT").as_deref().map(str::trim) {
            Ok("0") | Ok("off") => SplitWeights::Off,
            Ok("all") => SplitWeights::All,
            _ => SplitWeights::F16,
        }
    })
}

/// Whether [`crate::matmul_packed`] takes the split path for `w` at `m` rows.
pub fn split_applies(w: &PackedMatrix, m: usize) -> bool {
    m >= SPLIT_MIN_M
        && matches!(
            (split_weights(), w.data),
            (SplitWeights::All, _) | (SplitWeights::F16, PackedData::F16(_))
        )
}

/// C[m×rows] = A[m×cols]·Wᵀ (+ bias) for a packed W on the split path, whatever `m` and
/// the dtype of W, over `threads` tasks (0 = the rayon pool, 1 = the calling thread).
/// Returns false, writing nothing, where the CPU cannot run it ([`split_available`]).
///
/// Preconditions (asserted): as [`crate::matmul_packed`].
pub fn matmul_packed_split_with(
    threads: usize,
    a: &[f32],
    w: &PackedMatrix,
    bias: Option<&[f32]>,
    c: &mut [f32],
    m: usize,
) -> bool {
    if !split_available() {
        return false;
    }
    let (n, k) = (w.rows, w.cols);
    if crate::gemm::linear_trivial(
        "matmul_packed_split",
        w.is_consistent(),
        a,
        bias,
        c,
        m,
        k,
        n,
    ) {
        return true;
    }
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    split_m(crate::gemm::resolve_threads(threads), a, w, bias, c, m);
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    let _ = threads;
    true
}

/// Tiles per K step of the split operands: hi then lo, for A and for each block of W (the
/// walk's split kernel multiplies them as xh·wh, xh·wl, xl·wh).
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
const TERMS: usize = 2;

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn split_m(
    threads: usize,
    a: &[f32],
    w: &PackedMatrix,
    bias: Option<&[f32]>,
    c: &mut [f32],
    m: usize,
) {
    let k = w.cols;
    let kp = crate::bf16::padded_k(k);
    let kpe = kp * TERMS;
    let mp = m.div_ceil(32) * 32;
    crate::aligned::with_scratch(&SPLIT_A, |abf| {
        abf.resize_for_overwrite(mp * kpe);
        // SAFETY: split_available() includes AVX512-F/BW/BF16; each row gets its block's
        // slots from r·32 and at most k ≤ kp values.
        crate::bf16::fill_a_tiles(threads, a, m, k, kpe, abf, |src, dst| unsafe {
            x86::split_row_to_tiles(src, kp, dst)
        });
        let walk = crate::bf16::AmxWalk {
            split: true,
            kp,
            kc: crate::bf16::amx_kc(mp, kp, TERMS),
            n: w.rows,
            m,
        };
        let panel_len = 32 * k;
        walk.run(
            abf,
            threads,
            bias,
            c,
            &|pair, s0, steps, scratch| {
                let len = 2 * TERMS * steps * 512;
                if scratch.len() < len {
                    scratch.resize_for_overwrite(len);
                }
                let panel = pair * panel_len..(pair + 1) * panel_len;
                // SAFETY: as above; the panel is the pair's 32 rows (PANEL = 32), K-major, and
                // the scratch holds both blocks' tiles for these steps.
                unsafe {
                    match w.data {
                        PackedData::F16(d) => {
                            x86::split_panel_f16(&d[panel], k, s0, steps, &mut scratch[..len])
                        }
                        PackedData::F32(d) => {
                            x86::split_panel_f32(&d[panel], k, s0, steps, &mut scratch[..len])
                        }
                    }
                }
                (scratch.as_ptr(), TERMS * steps * 512)
            },
            &|pair, s0, steps| {
                // The pair's panel is K-major: these steps are one contiguous run.
                let (base, size) = match w.data {
                    PackedData::F16(d) => (d.as_ptr() as *const u8, 2),
                    PackedData::F32(d) => (d.as_ptr() as *const u8, 4),
                };
                let start = base.wrapping_add((pair * panel_len + s0 * 32 * 32) * size);
                let bytes = (steps * 32).min(k - (s0 * 32).min(k)) * 32 * size;
                crate::x86_amx::Ahead::new(start, 1, bytes, 0)
            },
        );
    })
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
thread_local! {
    /// A split into hi and lo tiles, kept across calls.
    static SPLIT_A: std::cell::RefCell<AlignedVec<u16>> = std::cell::RefCell::new(AlignedVec::default());
}

/// The AVX-512 conversions into the walk's tile layouts.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod x86 {
    use std::arch::x86_64::*;

    /// hi and lo bf16 halves of 32 f32 values (`x0` the first 16, `x1` the next): lo is
    /// zero where hi is not finite, so an inf stays an inf (inf − inf would be NaN) and a
    /// NaN stays in hi.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    fn split32(x0: __m512, x1: __m512) -> (__m512i, __m512i) {
        let hi: __m512i = unsafe { std::mem::transmute(_mm512_cvtne2ps_pbh(x1, x0)) };
        let widen =
            |h: __m256i| _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)));
        let h0 = widen(_mm512_castsi512_si256(hi));
        let h1 = widen(_mm512_extracti64x4_epi64::<1>(hi));
        let finite = |h: __m512| {
            let exp = _mm512_and_si512(_mm512_castps_si512(h), _mm512_set1_epi32(0x7f80_0000));
            _mm512_cmpneq_epi32_mask(exp, _mm512_set1_epi32(0x7f80_0000))
        };
        let l0 = _mm512_maskz_sub_ps(finite(h0), x0, h0);
        let l1 = _mm512_maskz_sub_ps(finite(h1), x1, h1);
        let lo: __m512i = unsafe { std::mem::transmute(_mm512_cvtne2ps_pbh(l1, l0)) };
        (hi, lo)
    }

    /// Splits one row of A (`src`, at most `kp` values, zeros after) into its tile slots:
    /// K step s as tiles 2s (hi) and 2s + 1 (lo), each 32 values at `dst[tile·512..]`.
    ///
    /// # Safety
    /// AVX512-F/BW/BF16; `dst` holds `(2·kp/32 − 1)·512 + 32` values; `src.len() <= kp`.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn split_row_to_tiles(src: &[f32], kp: usize, dst: &mut [u16]) {
        debug_assert!(src.len() <= kp && dst.len() >= (2 * kp / 32 - 1) * 512 + 32);
        for st in 0..kp / 32 {
            // SAFETY: per the contract; the stores write this row's two slots of step st.
            unsafe {
                let (x0, x1) = crate::x86_amx::load_step(src, st * 32);
                let (hi, lo) = split32(x0, x1);
                let d = dst.as_mut_ptr().add(2 * st * 512) as *mut __m512i;
                _mm512_storeu_si512(d, hi);
                _mm512_storeu_si512(d.byte_add(1024), lo);
            }
        }
    }

    /// Writes the B tiles of one 32-row panel (K-major: value (r, k) at `k·32 + r`, `k`
    /// values of K) for K steps `s0 .. s0 + steps` from 32 f32 values per k (`load(k)`,
    /// zeros past K): block b (rows 16b .. 16b + 16) at `b·2·steps·512`, its step s as tiles
    /// 2s (hi) and 2s + 1 (lo), tile row p the pair (k, k + 1) = (32s + 2p, +1) of the
    /// block's 16 rows interleaved.
    #[inline(always)]
    unsafe fn split_panel(
        k: usize,
        s0: usize,
        steps: usize,
        dst: &mut [u16],
        load: impl Fn(usize) -> (__m512, __m512),
    ) {
        // Interleaves the pair: lanes 0..16 of the k values with lanes 0..16 of k + 1 (the
        // first block's tile row), and lanes 16..32 of both (the second block's).
        let mut i0 = [0u16; 32];
        let mut i1 = [0u16; 32];
        for j in 0..16 {
            i0[2 * j] = j as u16;
            i0[2 * j + 1] = 32 + j as u16;
            i1[2 * j] = 16 + j as u16;
            i1[2 * j + 1] = 48 + j as u16;
        }
        let block1 = 2 * steps * 512;
        // SAFETY: the index vectors are 64 bytes; the stores land inside dst (2 blocks of
        // 2·steps tiles, per the callers' contract).
        unsafe {
            let zero = (_mm512_setzero_ps(), _mm512_setzero_ps());
            let i0 = _mm512_loadu_si512(i0.as_ptr() as *const __m512i);
            let i1 = _mm512_loadu_si512(i1.as_ptr() as *const __m512i);
            for s in 0..steps {
                for p in 0..16 {
                    let kk = (s0 + s) * 32 + 2 * p;
                    let (a0, a1) = if kk < k { load(kk) } else { zero };
                    let (b0, b1) = if kk + 1 < k { load(kk + 1) } else { zero };
                    let (ha, la) = split32(a0, a1);
                    let (hb, lb) = split32(b0, b1);
                    let row = dst.as_mut_ptr().add(2 * s * 512 + p * 32);
                    for (blk, idx) in [(0, i0), (block1, i1)] {
                        let h = _mm512_permutex2var_epi16(ha, idx, hb);
                        let l = _mm512_permutex2var_epi16(la, idx, lb);
                        let d = row.add(blk) as *mut __m512i;
                        _mm512_storeu_si512(d, h);
                        _mm512_storeu_si512(d.byte_add(1024), l);
                    }
                }
            }
        }
    }

    /// [`split_panel`] from f16 panel values.
    ///
    /// # Safety
    /// AVX512-F/BW/BF16 (F16C with them); `panel` holds 32·k values; `dst` holds
    /// 2·2·steps·512 values; `(s0 + steps)·32 ≤ k` rounded up to 32.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16,f16c")]
    pub(super) unsafe fn split_panel_f16(
        panel: &[half::f16],
        k: usize,
        s0: usize,
        steps: usize,
        dst: &mut [u16],
    ) {
        debug_assert!(panel.len() == 32 * k && dst.len() >= 2 * 2 * steps * 512);
        let p = panel.as_ptr() as *const u8;
        // SAFETY: k' < k, so the 64 bytes at k'·64 are inside the panel.
        unsafe {
            split_panel(k, s0, steps, dst, |kk| {
                let v = p.add(kk * 64);
                (
                    _mm512_cvtph_ps(_mm256_loadu_si256(v as *const __m256i)),
                    _mm512_cvtph_ps(_mm256_loadu_si256(v.add(32) as *const __m256i)),
                )
            })
        }
    }

    /// [`split_panel`] from f32 panel values.
    ///
    /// # Safety
    /// As [`split_panel_f16`], `panel` of f32.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn split_panel_f32(
        panel: &[f32],
        k: usize,
        s0: usize,
        steps: usize,
        dst: &mut [u16],
    ) {
        debug_assert!(panel.len() == 32 * k && dst.len() >= 2 * 2 * steps * 512);
        let p = panel.as_ptr();
        // SAFETY: k' < k, so the 32 values at k'·32 are inside the panel.
        unsafe {
            split_panel(k, s0, steps, dst, |kk| {
                (
                    _mm512_loadu_ps(p.add(kk * 32)),
                    _mm512_loadu_ps(p.add(kk * 32 + 16)),
                )
            })
        }
    }
}
