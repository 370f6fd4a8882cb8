//! bf16 weight matrices packed once, at load, in the layout of the CPU's matrix engine, and
//! the linear layer over them (`y = x·Wᵀ + b`, f32 in and out, f32 accumulation).
//!
//! Layout ([`Bf16Matrix`]): W `[rows × cols]` (nn.Linear `[out, in]`) is cut into blocks of
//! 16 rows; within a block, K runs in pairs: element (r, k) lives at
//! `(r / 16)·16·kp + (k / 2)·32 + (r % 16)·2 + k % 2`, with `kp` = cols rounded up to 32 and
//! rows rounded up to 32 (zero padding). One 16-pair slice (64 bytes) is one row of an AMX
//! `tdpbf16ps` B tile and one zmm operand of AVX512-BF16 `vdpbf16ps`, so the kernels load the
//! packed bytes as they are: nothing is repacked or widened per call.
//!
//! Paths, chosen per call:
//! - m ≥ [`AMX_MIN_M`] on a CPU with AMX-BF16 (Linux grants the tile state at first use),
//!   else on a CPU with AVX512-BF16 (`vdpbf16ps` register tiles, `x86_dpbf16.rs`):
//!   activations rounded to bf16 (round to nearest even), 32×32 output blocks from four
//!   16×16 f32 accumulator tiles. This is the reduced-precision path: products of bf16
//!   values, f32 sums (as PyTorch's bf16 matmul on the same CPU).
//! - small m: f32 activations against weights widened in registers (a GEMV over the packed
//!   pairs; decode is memory-bound, so the two bytes per weight are what count).
//! - otherwise: blocks of W widened to f32 into scratch and multiplied by the f32 GEMM.
//!
//! The two f32-activation paths differ from an f32 matmul on the bf16-rounded weights only by
//! summation order; the AMX path additionally rounds the activations to bf16.

use half::bf16;
use rayon::prelude::*;

use crate::gemm::{Shared, linear_trivial, matmul_widened, resolve_threads};
use crate::isa::multiversion;
use crate::{AlignedVec, Isa, isa};

/// Rows per block of the packed layout (one tile's N).
pub const BF16_BLOCK_ROWS: usize = 16;
/// K granularity of the packed layout (one tile's K).
pub const BF16_BLOCK_K: usize = 32;
/// Smallest M the AMX and AVX512-BF16 paths take. Decode (m ≤ 4) keeps f32 activations on
/// the memory-bound GEMV; from 5 rows (batched decode) the widening GEMV is compute-bound
/// and one tile pass streams W at memory speed instead (AVX512-BF16 on Zen 4, 2026-12-06,
/// `gemv_stream` at 2560×10240: 0.36–0.40× f16's time at m = 8 against 0.53× widening).
pub const AMX_MIN_M: usize = 5;
/// M at or below which the register-widening GEMV path runs.
const SMALL_M: usize = 8;
/// Rows of W widened per scratch block in the f32 fallback (a multiple of 16). 256 against
/// 64: the GEMM re-packs A once per block, and at the ViT shapes without AMX (2026-12-05,
/// `BLIP2_CPU_AMX=0 linear_vit`) 64 was 1.2–1.6× the f32 weights' time, 256 1.0–1.3×
/// (fc2's K = 6144 the worst; scratch 6 MiB per thread there).
const NB: usize = 256;

/// A packed bf16 weight matrix (see the module docs for the layout).
#[derive(Clone, Copy, Debug)]
pub struct Bf16Matrix<'a> {
    /// Output features (N).
    pub rows: usize,
    /// Input features (K).
    pub cols: usize,
    /// [`bf16_packed_len`]`(rows, cols)` values.
    pub data: &'a [bf16],
}

/// Padded K of the layout.
pub(crate) fn padded_k(cols: usize) -> usize {
    cols.div_ceil(BF16_BLOCK_K) * BF16_BLOCK_K
}

/// Padded rows of the layout (whole pairs of 16-row blocks, so the AMX kernel always has a
/// pair of B tiles).
fn padded_rows(rows: usize) -> usize {
    rows.div_ceil(2 * BF16_BLOCK_ROWS) * 2 * BF16_BLOCK_ROWS
}

/// Number of bf16 values a packed `rows × cols` matrix takes (padding included).
pub fn bf16_packed_len(rows: usize, cols: usize) -> usize {
    padded_rows(rows) * padded_k(cols)
}

impl Bf16Matrix<'_> {
    /// Whether `data` has the length the layout needs.
    pub fn is_consistent(&self) -> bool {
        self.data.len() == bf16_packed_len(self.rows, self.cols)
    }

    /// Offset of element (r, k).
    #[inline(always)]
    fn index(&self, r: usize, k: usize) -> usize {
        index(padded_k(self.cols), r, k)
    }
}

#[inline(always)]
fn index(kp: usize, r: usize, k: usize) -> usize {
    (r / 16) * 16 * kp + (k / 2) * 32 + (r % 16) * 2 + (k & 1)
}

/// f32 → bf16 bits, round to nearest even; NaN stays a (quiet) NaN.
#[inline(always)]
fn round_bits(x: u32) -> u16 {
    let r = x.wrapping_add(0x7fff + ((x >> 16) & 1)) >> 16;
    let nan = (x & 0x7fff_ffff) > 0x7f80_0000;
    (if nan { (x >> 16) | 0x40 } else { r }) as u16
}

#[inline(always)]
fn round_row_body(src: &[f32], dst: &mut [u16]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = round_bits(s.to_bits());
    }
}

multiversion! {
    fn round_row_isa(src: &[f32], dst: &mut [u16]) = round_row_body;
}

/// Packs the row-major f32 matrix `w` (`rows × cols`) into `out`
/// ([`bf16_packed_len`] values), rounding to nearest even.
///
/// Preconditions (asserted): `w.len() == rows·cols`, `out.len() == bf16_packed_len(..)`.
pub fn pack_bf16(w: &[f32], rows: usize, cols: usize, out: &mut [bf16]) {
    assert!(
        w.len() == rows * cols && out.len() == bf16_packed_len(rows, cols),
        "pack_bf16: operand lengths"
    );
    let kp = padded_k(cols);
    let isa = isa();
    out.fill(bf16::ZERO);
    let mut row = vec![0u16; cols];
    for (r, src) in w.chunks_exact(cols.max(1)).take(rows).enumerate() {
        round_row_isa(isa, src, &mut row);
        for (k, &v) in row.iter().enumerate() {
            out[index(kp, r, k)] = bf16::from_bits(v);
        }
    }
}

/// Row `r` of a packed matrix widened to f32 (`out.len() == w.cols`).
pub fn unpack_bf16_row(w: &Bf16Matrix, r: usize, out: &mut [f32]) {
    assert!(r < w.rows && out.len() == w.cols && w.is_consistent());
    for (k, o) in out.iter_mut().enumerate() {
        *o = w.data[w.index(r, k)].to_f32();
    }
}

/// Rows `r0..r0 + nb` (r0 a multiple of 16) widened to row-major f32, reading each packed
/// 16-row block in order (a row at a time gathers with a stride and was slower than the
/// GEMM it feeds).
fn unpack_rows(w: &Bf16Matrix, r0: usize, nb: usize, out: &mut [f32]) {
    debug_assert!(r0.is_multiple_of(16) && out.len() == nb * w.cols);
    let (k, kp) = (w.cols, padded_k(w.cols));
    for blk in r0 / 16..(r0 + nb).div_ceil(16) {
        let rows = 16.min(r0 + nb - blk * 16);
        let data = &w.data[blk * 16 * kp..blk * 16 * kp + 16 * kp];
        let base = blk * 16 - r0;
        for (p, pair) in data.chunks_exact(32).take(k.div_ceil(2)).enumerate() {
            for j in 0..rows {
                let o = (base + j) * k + 2 * p;
                out[o] = pair[2 * j].to_f32();
                if 2 * p + 1 < k {
                    out[o + 1] = pair[2 * j + 1].to_f32();
                }
            }
        }
    }
}

/// The whole matrix widened to row-major f32 (`out.len() == rows·cols`).
pub fn unpack_bf16(w: &Bf16Matrix, out: &mut [f32]) {
    assert_eq!(out.len(), w.rows * w.cols, "unpack_bf16: output length");
    for (r, o) in out.chunks_exact_mut(w.cols.max(1)).take(w.rows).enumerate() {
        unpack_bf16_row(w, r, o);
    }
}

/// Whether [`matmul_bf16`] can use AMX tiles on this machine (CPU support, with the
/// AVX512-F/BW/BF16 that every AMX-BF16 CPU has and that the conversions into tiles use, and
/// on Linux the kernel's permission for the tile state); `BLIP2_CPU_AMX=0` turns it off.
/// Checked once.
pub fn amx_available() -> bool {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    {
        use std::sync::OnceLock;
        static ON: OnceLock<bool> = OnceLock::new();
        *ON.get_or_init(|| {
            let off = std::env::var("BLIP2_CPU_AMX").is_ok_and(|v| v.trim() == "0");
            !off && is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512bf16")
                && crate::x86_amx::enable()
        })
    }
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    {
        false
    }
}

/// Whether the AVX512-BF16 path (`vdpbf16ps`, activations rounded to bf16) is available:
/// an AVX-512 CPU with AVX512-BF16, unless `BLIP2_CPU_DPBF16=0` or `BLIP2_CPU_ISA` asks for
/// less than AVX-512. Checked once.
pub fn dpbf16_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        isa() == Isa::Avx512 && crate::x86_dpbf16::dpbf16_available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// C[m×rows] = A[m×cols]·Wᵀ (+ bias) for a packed bf16 W, multi-threaded over the rayon pool.
///
/// Preconditions (asserted; the engine validates user shapes first): `w.is_consistent()`,
/// `a.len() == m·w.cols`, `c.len() == m·w.rows`, `bias.len() == w.rows`.
pub fn matmul_bf16(a: &[f32], w: &Bf16Matrix, bias: Option<&[f32]>, c: &mut [f32], m: usize) {
    matmul_bf16_with(isa(), 0, Bf16Activations::Auto, a, w, bias, c, m)
}

/// Which paths that round the activations to bf16 [`matmul_bf16_with`] may take (for m
/// above the GEMV sizes); each is skipped where the CPU lacks it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bf16Activations {
    /// Keep f32 activations (weights widened): no activation rounding.
    Off,
    /// AMX tiles where available, else AVX512-BF16 `vdpbf16ps` (what [`matmul_bf16`] uses).
    Auto,
    /// AVX512-BF16 even where AMX is available (to test and compare it there).
    Dpbf16,
}

/// [`matmul_bf16`] on a chosen instruction set and thread count (0 = the whole rayon pool,
/// 1 = the calling thread) with the activation-rounding paths `reduced` allows.
#[allow(clippy::too_many_arguments)]
pub fn matmul_bf16_with(
    isa: Isa,
    threads: usize,
    reduced: Bf16Activations,
    a: &[f32],
    w: &Bf16Matrix,
    bias: Option<&[f32]>,
    c: &mut [f32],
    m: usize,
) {
    let (n, k) = (w.rows, w.cols);
    if linear_trivial("matmul_bf16", w.is_consistent(), a, bias, c, m, k, n) {
        return;
    }
    let isa = isa.resolve();
    let threads = resolve_threads(threads);
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    if reduced == Bf16Activations::Auto && m >= AMX_MIN_M && amx_available() {
        return amx_m(threads, a, w, bias, c, m);
    }
    #[cfg(target_arch = "x86_64")]
    if reduced != Bf16Activations::Off
        && m >= AMX_MIN_M
        && isa == Isa::Avx512
        && crate::x86_dpbf16::dpbf16_available()
    {
        return dpbf16_m(isa, threads, a, w, bias, c, m);
    }
    let _ = reduced;
    if m <= SMALL_M {
        small_m(isa, threads, a, w, bias, c, m);
    } else {
        large_m(isa, threads, a, w, bias, c, m);
    }
}

/// Pairs of 16-row blocks cut into `tasks` contiguous parts.
pub(crate) fn block_pair_parts(n: usize, tasks: usize) -> Vec<(usize, usize)> {
    let pairs = padded_rows(n) / 32;
    let parts = tasks.min(pairs).max(1);
    (0..parts)
        .map(|i| (i * pairs / parts, (i + 1) * pairs / parts))
        .filter(|(s, e)| s < e)
        .collect()
}

/// Runs `task` on each part, in parallel when there are several: on the team
/// (`team.rs`) for a decode step's `rows`, on rayon otherwise.
pub(crate) fn for_parts(parts: &[(usize, usize)], rows: usize, task: impl Fn(usize, usize) + Sync) {
    let decode = rows <= crate::team::DECODE_ROWS;
    crate::team::run(parts.len(), decode, &|i| task(parts[i].0, parts[i].1));
}

/// Output rows `[j0, j1)` (clipped to n) of C for each of the m activation rows, with the
/// weights widened in registers: the 16 lanes of one packed pair slice are 16 rows of W.
#[inline(always)]
fn gemv_block_body(a: &[f32], m: usize, k: usize, blk: &[bf16], acc: &mut [[f32; 16]]) {
    for row in acc.iter_mut() {
        *row = [0.0; 16];
    }
    let full = k / 2;
    for p in 0..full {
        let pair = &blk[p * 32..p * 32 + 32];
        let mut even = [0f32; 16];
        let mut odd = [0f32; 16];
        for j in 0..16 {
            even[j] = pair[2 * j].to_f32();
            odd[j] = pair[2 * j + 1].to_f32();
        }
        for i in 0..m {
            let (x0, x1) = (a[i * k + 2 * p], a[i * k + 2 * p + 1]);
            for j in 0..16 {
                acc[i][j] += x0 * even[j] + x1 * odd[j];
            }
        }
    }
    if k % 2 == 1 {
        let p = full;
        let pair = &blk[p * 32..p * 32 + 32];
        for i in 0..m {
            let x0 = a[i * k + 2 * p];
            for j in 0..16 {
                acc[i][j] += x0 * pair[2 * j].to_f32();
            }
        }
    }
}

multiversion! {
    fn gemv_block_portable(a: &[f32], m: usize, k: usize, blk: &[bf16], acc: &mut [[f32; 16]]) = gemv_block_body;
}

/// One 16-row block of the small-m product (`acc[i][j]` = row i of A · row j of the block).
fn gemv_block_isa(
    isa: Isa,
    a: &[f32],
    m: usize,
    k: usize,
    kp: usize,
    blk: &[bf16],
    acc: &mut [[f32; 16]],
) {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 && m <= SMALL_M {
        debug_assert!(a.len() >= m * k && blk.len() >= 16 * kp && acc.len() >= m);
        // SAFETY: the ISA is resolved (AVX-512 present); A holds m rows of k, the block
        // 16·kp values, acc m rows.
        unsafe {
            let (l2, w) = (
                crate::x86_prefetch::prefetch_to_l2(),
                blk.as_ptr() as *const u16,
            );
            macro_rules! rows {
                ($($m:literal)*) => {
                    match m {
                        $($m => if l2 {
                            gemv_block_avx512::<$m, true>(a.as_ptr(), k, w, acc)
                        } else {
                            gemv_block_avx512::<$m, false>(a.as_ptr(), k, w, acc)
                        },)*
                        _ => unreachable!("m <= SMALL_M"),
                    }
                };
            }
            rows!(1 2 3 4 5 6 7 8);
        }
        return;
    }
    gemv_block_portable(isa, a, m, k, blk, acc)
}

/// [`gemv_block_body`] for M rows in zmm registers: each 64-byte pair slice is widened to
/// the 16 even-K and 16 odd-K weights (a shift and a mask: bf16 is the top half of f32) and
/// multiplied with broadcast activations. Requests W 16 KiB ahead, into L2 with `L2` (AMD,
/// `x86_prefetch::prefetch_to_l2`) else into L1: decode streams W from memory once, and the
/// hardware prefetcher alone leaves bandwidth unused (as in the quantized GEMV).
///
/// # Safety
/// AVX-512F present; `a` valid for M rows of k, `blk` for 16·kp values (kp ≥ k rounded up
/// to pairs), `acc` for M rows.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::needless_range_loop)]
unsafe fn gemv_block_avx512<const M: usize, const L2: bool>(
    a: *const f32,
    k: usize,
    blk: *const u16,
    acc: &mut [[f32; 16]],
) {
    use std::arch::x86_64::*;
    // SAFETY: per the contract above.
    unsafe {
        let hi = _mm512_set1_epi32(0xffff_0000u32 as i32);
        let mut s = [_mm512_setzero_ps(); M];
        let mut t = [_mm512_setzero_ps(); M];
        for p in 0..k / 2 {
            let src = blk.add(p * 32);
            crate::x86_prefetch::request_ahead::<L2>(
                src as *const u8,
                crate::x86_prefetch::STREAM_AHEAD,
            );
            let v = _mm512_loadu_si512(src as *const __m512i);
            let even = _mm512_castsi512_ps(_mm512_slli_epi32::<16>(v));
            let odd = _mm512_castsi512_ps(_mm512_and_si512(v, hi));
            for i in 0..M {
                let x = a.add(i * k + 2 * p);
                s[i] = _mm512_fmadd_ps(_mm512_set1_ps(*x), even, s[i]);
                t[i] = _mm512_fmadd_ps(_mm512_set1_ps(*x.add(1)), odd, t[i]);
            }
        }
        if k % 2 == 1 {
            let p = k / 2;
            let v = _mm512_loadu_si512(blk.add(p * 32) as *const __m512i);
            let even = _mm512_castsi512_ps(_mm512_slli_epi32::<16>(v));
            for i in 0..M {
                s[i] = _mm512_fmadd_ps(_mm512_set1_ps(*a.add(i * k + 2 * p)), even, s[i]);
            }
        }
        for i in 0..M {
            _mm512_storeu_ps(acc[i].as_mut_ptr(), _mm512_add_ps(s[i], t[i]));
        }
    }
}

fn small_m(
    isa: Isa,
    threads: usize,
    a: &[f32],
    w: &Bf16Matrix,
    bias: Option<&[f32]>,
    c: &mut [f32],
    m: usize,
) {
    let (n, k) = (w.rows, w.cols);
    let kp = padded_k(k);
    let tasks = if threads > 1 && n * k >= 1 << 18 {
        threads * 2
    } else {
        1
    };
    let parts = block_pair_parts(n, tasks);
    let cptr = Shared(c.as_mut_ptr());
    for_parts(&parts, m, |p0, p1| {
        let mut acc = vec![[0f32; 16]; m];
        for blk in 2 * p0..2 * p1 {
            let r0 = blk * 16;
            if r0 >= n {
                break;
            }
            let data = &w.data[blk * 16 * kp..(blk + 1) * 16 * kp];
            gemv_block_isa(isa, a, m, k, kp, data, &mut acc);
            let rows = 16.min(n - r0);
            let c = cptr.get();
            for (i, acc) in acc.iter().enumerate() {
                for j in 0..rows {
                    let b = bias.map_or(0.0, |b| b[r0 + j]);
                    // SAFETY: row r0 + j < n of output row i < m; this part owns those rows.
                    unsafe { *c.add(i * n + r0 + j) = acc[j] + b };
                }
            }
        }
    });
}

fn large_m(
    isa: Isa,
    threads: usize,
    a: &[f32],
    w: &Bf16Matrix,
    bias: Option<&[f32]>,
    c: &mut [f32],
    m: usize,
) {
    let (n, k) = (w.rows, w.cols);
    matmul_widened(isa, threads, a, bias, c, m, k, n, NB, |r0, rows, out| {
        unpack_rows(w, r0, rows, out)
    });
}

/// The AVX512-BF16 path: A rounded to bf16 once and packed in row tiles, then `vdpbf16ps`
/// register tiles (`x86_dpbf16.rs`).
#[cfg(target_arch = "x86_64")]
fn dpbf16_m(
    isa: Isa,
    threads: usize,
    a: &[f32],
    w: &Bf16Matrix,
    bias: Option<&[f32]>,
    c: &mut [f32],
    m: usize,
) {
    dpbf16_rounded(
        isa,
        threads,
        a,
        m,
        w.cols,
        w.rows,
        bias,
        c,
        &|pair, k0, _, _| pair_in_place(w, pair, k0),
    )
}

/// Where the packed weights hold a pair of 16-row blocks from K value `k0` (a multiple of
/// 32), for the kernels that read them in place: the first block's K pairs from k0/2 and
/// the offset in values (16·kp) of the second block's.
#[cfg(target_arch = "x86_64")]
fn pair_in_place(w: &Bf16Matrix, pair: usize, k0: usize) -> (*const u16, usize) {
    let kp = padded_k(w.cols);
    (
        w.data[pair * 32 * kp + k0 * 16..].as_ptr() as *const u16,
        16 * kp,
    )
}

/// C[m×n] = A[m×k]·Wᵀ (+ bias) on AVX512-BF16 with A rounded to bf16 once and packed in
/// row tiles, and W's block pairs from `b_chunks` (the packed bf16 weights in place, or
/// weights converted per call: `dpbf16_quant.rs`).
///
/// Callers guarantee AVX512-BF16 ([`dpbf16_available`]) and the shapes.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
pub(crate) fn dpbf16_rounded(
    isa: Isa,
    threads: usize,
    a: &[f32],
    m: usize,
    k: usize,
    n: usize,
    bias: Option<&[f32]>,
    c: &mut [f32],
    b_chunks: &crate::x86_dpbf16::BChunks,
) {
    let kp = padded_k(k);
    crate::aligned::with_scratch(&ROUNDED_A, |abf| {
        crate::x86_dpbf16::pack_a(m, k, kp, abf, |i, out| {
            round_row_isa(isa, &a[i * k..(i + 1) * k], out)
        });
        crate::x86_dpbf16::matmul_from(abf, kp, threads, n, bias, c, m, b_chunks);
    })
}

#[cfg(target_arch = "x86_64")]
thread_local! {
    /// A rounded to bf16 (AMX and AVX512-BF16 paths), kept across calls.
    static ROUNDED_A: std::cell::RefCell<AlignedVec<u16>> = std::cell::RefCell::new(AlignedVec::default());
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
thread_local! {
    /// B tiles converted by a walk's source (the split path), kept across calls.
    static B_TILES: std::cell::RefCell<AlignedVec<u16>> = std::cell::RefCell::new(AlignedVec::default());
}

/// Bytes of rounded A one K chunk of the AMX walk may take: the chunk stays in L2 (2 MiB per
/// core on Sapphire Rapids) while every pair of W's row blocks passes over it, next to the
/// pair's own chunk of W.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
const AMX_A_CHUNK_BYTES: usize = 1 << 20;

/// K per chunk of the AMX walk for `mp` rows of A with `terms` tiles per K step (a multiple
/// of 32; equal chunks): all of K
/// while the rows' A fits [`AMX_A_CHUNK_BYTES`] (every decode batch and the ViT's K = 1408),
/// else the fewest chunks that fit (the ViT's fc2, K = 6144 over 288 rows: 4 of 1536). Before
/// the chunks, each pair of W blocks walked the whole K and A streamed from L3 once per
/// pair there.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
pub(crate) fn amx_kc(mp: usize, kp: usize, terms: usize) -> usize {
    let fits = (AMX_A_CHUNK_BYTES / (2 * terms * mp.max(1))) / 32 * 32;
    let chunks = kp.div_ceil(fits.max(32));
    (kp.div_ceil(chunks)).div_ceil(32) * 32
}

/// The AMX path: A rounded to bf16 once into tiles (rows padded to 32, K to 32), then each
/// task takes pairs of 16-row blocks of W and walks every 32-row block of A under them.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn amx_m(threads: usize, a: &[f32], w: &Bf16Matrix, bias: Option<&[f32]>, c: &mut [f32], m: usize) {
    let kp = padded_k(w.cols);
    // W's packed blocks are already B tiles: used in place.
    amx_rounded(
        threads,
        a,
        m,
        w.cols,
        w.rows,
        bias,
        c,
        &|pair, s0, _steps, _scratch| pair_in_place(w, pair, s0 * 32),
        &|pair, s0, steps| {
            let start = pair_in_place(w, pair, s0 * 32).0 as *const u8;
            crate::x86_amx::Ahead::new(start, 2, steps * 1024, 32 * kp)
        },
    );
}

/// C[m×n] = A[m×k]·Wᵀ (+ bias) on AMX with A rounded to bf16 once into tiles and W's B tiles
/// from `b_tiles` (one tile per K step of 32): the packed bf16 weights in place, or weights
/// converted per call (`amx_quant.rs`).
///
/// # Panics
/// Unless AMX is available ([`amx_available`]; the callers check) and the shapes agree.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn amx_rounded(
    threads: usize,
    a: &[f32],
    m: usize,
    k: usize,
    n: usize,
    bias: Option<&[f32]>,
    c: &mut [f32],
    b_tiles: &BTiles,
    b_source: &BSource,
) {
    assert!(amx_available() && a.len() == m * k && c.len() == m * n);
    let kp = padded_k(k);
    let mp = m.div_ceil(32) * 32;
    crate::aligned::with_scratch(&ROUNDED_A, |abf| {
        abf.resize_for_overwrite(mp * kp);
        // SAFETY: amx_available() includes AVX512-F/BW/BF16; each row gets its block's
        // slots from r·32 and at most k ≤ kp values.
        fill_a_tiles(threads, a, m, k, kp, abf, |src, dst| unsafe {
            crate::x86_amx::round_row_to_tiles(src, kp, dst)
        });
        let walk = AmxWalk {
            split: false,
            kp,
            kc: amx_kc(mp, kp, 1),
            n,
            m,
        };
        walk.run(abf, threads, bias, c, b_tiles, b_source);
    })
}

/// Fills A's tile layout (`abf`, 16-row blocks of `16·kpe` values) from the `m × k` rows of
/// `a`: `row(src, dst)` writes one row, `src` its k values (empty for a padding row), `dst`
/// its block from the row's first slot (r·32) on, every slot of it (zeros past k). In
/// parallel over the blocks: on one thread this pass was ~10% of a ViT layer's time.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
pub(crate) fn fill_a_tiles(
    threads: usize,
    a: &[f32],
    m: usize,
    k: usize,
    kpe: usize,
    abf: &mut [u16],
    row: impl Fn(&[f32], &mut [u16]) + Sync,
) {
    let fill = |(blk, out): (usize, &mut [u16])| {
        for r in 0..16 {
            let i = blk * 16 + r;
            let src = if i < m {
                &a[i * k..(i + 1) * k]
            } else {
                &[][..]
            };
            row(src, &mut out[r * 32..]);
        }
    };
    if threads > 1 && m > 16 {
        abf.par_chunks_mut(16 * kpe).enumerate().for_each(fill);
    } else {
        abf.chunks_mut(16 * kpe).enumerate().for_each(fill);
    }
}

/// The B tiles of one pair of W's 16-row blocks for K steps `s0 .. s0 + steps` (32 values
/// each): a pointer to the first block's `terms · steps` tiles (one contiguous KiB each, in
/// the walk's step order) and the offset, in values, of the second block's. A source that
/// converts W may write them into the scratch (per thread, kept across calls).
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
pub(crate) type BTiles<'a> =
    dyn Fn(usize, usize, usize, &mut AlignedVec<u16>) -> (*const u16, usize) + Sync + 'a;

/// The bytes of W that [`BTiles`] reads for a pair and K steps (pair, first step, steps),
/// for the walk to request ahead ([`crate::x86_amx::Ahead`]).
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
pub(crate) type BSource<'a> = dyn Fn(usize, usize, usize) -> crate::x86_amx::Ahead + Sync + 'a;

/// The shape of an AMX tile walk: C (m × n) from A in tile layout over `kp` padded K, in
/// chunks of `kc` K values. bf16 weights take one tile of A and of W per K step of 32;
/// `split` operands two (hi, lo), multiplied as hi·hi, hi·lo, lo·hi
/// (`x86_amx::block_32x32::<true>`).
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
pub(crate) struct AmxWalk {
    pub split: bool,
    pub kp: usize,
    pub kc: usize,
    pub n: usize,
    pub m: usize,
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
impl AmxWalk {
    /// Tiles of A (and of each W block) per K step of 32.
    pub(crate) fn terms(&self) -> usize {
        1 + self.split as usize
    }

    /// C = A·B (+ bias) over `threads` tasks. A: 32-row blocks (rows padded to 32), each
    /// K step [`Self::terms`] tiles of 16 rows at `(r/16)·16·kpe + (s·terms + t)·512 +
    /// (r%16)·32` (kpe = kp·terms). For each chunk of K, each pair of W blocks (32 columns of C) passes
    /// under every 32-row block of A. Whole 32×32 blocks of C accumulate in C itself (tile
    /// loads and stores at C's row stride); the last rows of M and the last columns of an N
    /// that is not a multiple of 32 accumulate in scratch tiles and are copied out.
    pub(crate) fn run(
        &self,
        abf: &[u16],
        threads: usize,
        bias: Option<&[f32]>,
        c: &mut [f32],
        b_tiles: &BTiles,
        b_source: &BSource,
    ) {
        use crate::x86_amx::{Ahead, Out, Tile32, block_16x32, block_32x32};
        let AmxWalk {
            split,
            kp,
            kc,
            n,
            m,
        } = *self;
        let terms = self.terms();
        let kpe = kp * terms;
        debug_assert!(abf.len() >= m.div_ceil(32) * 32 * kpe && c.len() == m * n);
        let parts = block_pair_parts(n, if threads > 1 { threads } else { 1 });
        let cptr = Shared(c.as_mut_ptr());
        let blocks = m.div_ceil(32);
        let chunks = kp.div_ceil(kc);
        for_parts(&parts, m, |p0, p1| {
            // Scratch accumulators: one reused when K is a single chunk; otherwise one per
            // pair for the last row block and one per row block for the last pair, kept
            // across the chunks.
            let spill_len = if chunks > 1 { (p1 - p0) + blocks } else { 1 };
            let mut spill: Vec<Tile32> = (0..spill_len).map(|_| Tile32::default()).collect();
            let c = cptr.get();
            crate::aligned::with_scratch(&B_TILES, |scratch| {
                // SAFETY: AMX is available (checked by the caller); A holds `blocks`·32 rows
                // of kpe, the B source gives 2 blocks of `terms`·steps tiles for pairs
                // p0..p1 (every chunk inside kp); the whole blocks of C written through
                // tiles are rows i0..i0 + 32 ≤ m and columns r0..r0 + 32 ≤ n of this
                // part's columns only.
                unsafe {
                    crate::x86_amx::configure();
                    for ch in 0..chunks {
                        let s0 = ch * kc / 32;
                        let steps = kc.min(kp - ch * kc) / 32;
                        let last = ch + 1 == chunks;
                        for pair in p0..p1 {
                            let (b, b1_off) = b_tiles(pair, s0, steps, scratch);
                            // What the walk reads after this pair: the next pair in
                            // this chunk, or the first one in the next chunk.
                            let mut ahead = if pair + 1 < p1 {
                                b_source(pair + 1, s0, steps)
                            } else if !last {
                                let s1 = (ch + 1) * kc / 32;
                                b_source(p0, s1, kc.min(kp - (ch + 1) * kc) / 32)
                            } else {
                                Ahead::NONE
                            };
                            let r0 = pair * 32;
                            let cols = 32.min(n - r0);
                            for ib in 0..blocks {
                                let i0 = ib * 32;
                                let rows = 32.min(m - i0);
                                let whole = rows == 32 && cols == 32;
                                let out = if whole {
                                    Out {
                                        ptr: c.add(i0 * n + r0),
                                        stride: 4 * n,
                                    }
                                } else if chunks == 1 {
                                    Out::tile(&mut spill[0])
                                } else if cols < 32 {
                                    Out::tile(&mut spill[(p1 - p0) + ib])
                                } else {
                                    Out::tile(&mut spill[pair - p0])
                                };
                                let block: BlockFn = match (split, rows <= 16) {
                                    (false, true) => block_16x32::<false>,
                                    (false, false) => block_32x32::<false>,
                                    (true, true) => block_16x32::<true>,
                                    (true, false) => block_32x32::<true>,
                                };
                                let a = abf.as_ptr().add(ib * 32 * kpe + s0 * terms * 512);
                                // From the second row block on, this pair's tiles come
                                // from cache: request the next pair's weights meanwhile,
                                // where enough row blocks are left to spread them thin.
                                let per_step = match ahead.left().div_ceil((blocks - ib) * steps) {
                                    p if ib > 0 && p <= crate::x86_amx::AHEAD_MAX_PER_STEP => p,
                                    _ => 0,
                                };
                                block(
                                    a,
                                    16 * kpe,
                                    b,
                                    b1_off,
                                    steps,
                                    ch > 0,
                                    out,
                                    &mut ahead,
                                    per_step,
                                );
                                if last {
                                    finish_block(
                                        out,
                                        whole,
                                        c.add(i0 * n + r0),
                                        n,
                                        rows,
                                        cols,
                                        bias.map(|b| &b[r0..]),
                                    );
                                }
                            }
                        }
                    }
                    crate::x86_amx::release();
                }
            });
        });
    }
}

/// The block kernels of `x86_amx.rs` (A, A's second 16 rows, B, B's second block, K steps,
/// accumulate, out, the weights to request ahead, lines of them per K step).
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
type BlockFn = unsafe fn(
    *const u16,
    usize,
    *const u16,
    usize,
    usize,
    bool,
    crate::x86_amx::Out,
    &mut crate::x86_amx::Ahead,
    usize,
);

/// Writes a finished 32×32 block to C at `dst` (row stride n): copies `rows × cols` of a
/// scratch tile, or leaves a block accumulated in C in place, then adds the bias.
///
/// # Safety
/// `dst` is valid for `rows` rows of `cols` values at stride n, owned by this task; a
/// scratch `out` holds 32 rows of 32.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
unsafe fn finish_block(
    out: crate::x86_amx::Out,
    whole: bool,
    dst: *mut f32,
    n: usize,
    rows: usize,
    cols: usize,
    bias: Option<&[f32]>,
) {
    if whole && bias.is_none() {
        return;
    }
    for i in 0..rows {
        // SAFETY: per the contract.
        let d = unsafe { std::slice::from_raw_parts_mut(dst.add(i * n), cols) };
        if !whole {
            // SAFETY: row i of the 32×32 scratch tile.
            d.copy_from_slice(unsafe { std::slice::from_raw_parts(out.ptr.add(i * 32), cols) });
        }
        if let Some(bv) = bias {
            for (o, b) in d.iter_mut().zip(bv) {
                *o += b;
            }
        }
    }
}
