//! The packed bf16 linear layer on AVX512-BF16 (`vdpbf16ps`: 16 f32 lanes, each adding the
//! two products of a bf16 pair, in one instruction), for CPUs without AMX (AMD Zen 4/5,
//! Intel Cooper Lake). Twice the products per instruction of an f32 FMA.
//!
//! The packed layout (`bf16.rs`) is already the instruction's B operand: one 64-byte slice
//! of a 16-row block is the pair (k, k+1) of 16 output columns. A is rounded to bf16 once
//! per call, row-major with `kp` values per row (zero padded), so one 32-bit broadcast is
//! the pair (a[i][k], a[i][k+1]) for every lane.
//!
//! Walk: each task owns pairs of 16-row blocks of W (32 output columns). K is cut into
//! chunks of [`KC`]: a chunk of A (m·KC·2 bytes) stays in L2 while every block pair of the
//! task passes over it; each chunk's pair (KC·64 bytes) is read from L1/L2 by every
//! [`MR`]-row tile of A. The accumulator of a tile is 2·MR zmm registers, started from the
//! bias (first chunk) or from C (later chunks) and stored back to C.

use std::arch::x86_64::*;

use crate::bf16::{block_pair_parts, for_parts};
use crate::gemm::Shared;

/// Rows of A per register tile: 8 rows × 2 blocks = 16 accumulators, 2 B operands and 8
/// broadcasts fit the 32 zmm registers (12 rows spilled accumulators to the stack).
pub(crate) const MR: usize = 8;
/// K values per chunk (a multiple of 32). 1024: the chunk of A at the ViT's 257 rows is
/// 514 KiB (Zen 4's L2 is 1 MiB) and a block pair's chunk 64 KiB.
const KC: usize = 1024;

/// Whether this CPU has AVX512-BF16 (with F/BW/VL), unless `BLIP2_CPU_DPBF16=0`. Checked
/// once.
pub(crate) fn dpbf16_available() -> bool {
    use std::sync::OnceLock;
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        let off = std::env::var("BLIP2_CPU_DPBF16").is_ok_and(|v| v.trim() == "0");
        !off && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512bf16")
    })
}

/// Where [`matmul_from`] gets a pair of W's 16-row blocks for one chunk of K: `(pair, k0,
/// len, scratch)` (K values k0 .. k0 + len, multiples of 32) → a pointer to the first
/// block's K pairs from k0 in the packed layout (pair p at 32·p values, 16 rows × 2) and the
/// offset in values of the second block's. A source that converts W writes them into the
/// scratch (per thread, kept across calls).
pub(crate) type BChunks<'a> =
    dyn Fn(usize, usize, usize, &mut crate::AlignedVec<u16>) -> (*const u16, usize) + Sync + 'a;

/// C[m×n] = A·Wᵀ (+ bias) from A rounded to bf16 and packed by [`pack_a`], over `threads`
/// tasks, with W's block pairs from `b_chunks`, chunk by chunk ([`KC`]); `n` rows of W.
///
/// Callers guarantee [`dpbf16_available`], `abf` from [`pack_a`] for these m and `kp`,
/// `c.len() == m·n`, `bias.len() == n`, and a source that gives, for every pair of
/// `⌈n/32⌉` and every chunk inside `kp`, both blocks' pairs for the chunk's K.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul_from(
    abf: &[u16],
    kp: usize,
    threads: usize,
    n: usize,
    bias: Option<&[f32]>,
    c: &mut [f32],
    m: usize,
    b_chunks: &BChunks,
) {
    assert!(dpbf16_available() && kp.is_multiple_of(32));
    assert!(abf.len() == packed_a_len(m, kp) && c.len() == m * n);
    assert!(bias.is_none_or(|b| b.len() == n));
    let parts = block_pair_parts(n, threads.max(1));
    let cptr = Shared(c.as_mut_ptr());
    for_parts(&parts, m, |p0, p1| {
        crate::aligned::with_scratch(&B_CHUNK, |scratch| {
            for k0 in (0..kp).step_by(KC) {
                let len = KC.min(kp - k0);
                for pair in p0..p1 {
                    let r0 = pair * 32;
                    let cols = 32.min(n.saturating_sub(r0));
                    if cols == 0 {
                        continue;
                    }
                    let masks = [lane_mask(cols.min(16)), lane_mask(cols.saturating_sub(16))];
                    let (b, b1_off) = b_chunks(pair, k0, len, scratch);
                    let bias = bias.map(|b| b[r0..].as_ptr());
                    for i0 in (0..m).step_by(MR) {
                        let t = Tile {
                            a: abf[i0 * kp + k0 * MR..].as_ptr(),
                            rows: MR.min(m - i0),
                            b,
                            b1_off,
                            pairs: len / 2,
                            // SAFETY: rows i0.. of C, columns r0..r0 + cols, belong to this
                            // task's block pairs only.
                            c: unsafe { cptr.get().add(i0 * n + r0) },
                            n,
                            masks,
                            bias: if k0 == 0 { bias } else { None },
                            from_c: k0 > 0,
                            next_c: cptr.get().wrapping_add((i0 + MR).min(m) * n + r0),
                            next_rows: MR.min(m.saturating_sub(i0 + MR)),
                        };
                        // SAFETY: AVX512-BF16 is available (asserted above); the tile reads
                        // its row tile of packed A from pair k0/2 for `pairs` pairs (within
                        // kp), both blocks of the pair for `pairs` pairs (the source's
                        // contract), and touches only its rows and the masked columns of C.
                        unsafe { tile(&t) }
                    }
                }
            }
        })
    });
}

thread_local! {
    /// Block pairs converted by a source of [`matmul_from`], kept across calls.
    static B_CHUNK: std::cell::RefCell<crate::AlignedVec<u16>> =
        std::cell::RefCell::new(crate::AlignedVec::default());
}

/// Values of packed A for m rows of `kp` values: whole tiles of [`MR`] rows.
pub(crate) fn packed_a_len(m: usize, kp: usize) -> usize {
    m.div_ceil(MR) * MR * kp
}

/// Packs A's rows, already rounded to bf16 (`row(i, out)` writes row i's first k values),
/// for the kernel: per tile of [`MR`] rows, per K pair, the MR rows' pairs side by side, so
/// one pointer walks a tile and each row's pair is a fixed offset from it. Rows past m and
/// K past k are zero.
pub(crate) fn pack_a(
    m: usize,
    k: usize,
    kp: usize,
    out: &mut crate::AlignedVec<u16>,
    mut row: impl FnMut(usize, &mut [u16]),
) {
    // Every value is written below (rows past m as zeros), so a reused buffer is not
    // cleared first.
    out.resize_for_overwrite(packed_a_len(m, kp));
    let mut buf = vec![0u16; kp];
    for i in 0..m.div_ceil(MR) * MR {
        if i < m {
            row(i, &mut buf[..k]);
        } else {
            buf.fill(0);
        }
        let (t, r) = (i / MR, i % MR);
        let base = t * MR * kp + 2 * r;
        for (p, pair) in buf.chunks_exact(2).enumerate() {
            out[base + p * 2 * MR..][..2].copy_from_slice(pair);
        }
    }
}

/// The low `n` of 16 lanes.
fn lane_mask(n: usize) -> __mmask16 {
    ((1u32 << n) - 1) as __mmask16
}

/// One register tile's operands (see [`matmul`]).
struct Tile {
    /// The row tile's packed A at pair k0/2.
    a: *const u16,
    /// Rows of the tile inside m (the rest are zero padding, computed and not stored).
    rows: usize,
    /// Block 0 of the pair at pair k0/2; block 1 is `b1_off` values further.
    b: *const u16,
    b1_off: usize,
    pairs: usize,
    /// C at row i0, column r0.
    c: *mut f32,
    n: usize,
    masks: [__mmask16; 2],
    bias: Option<*const f32>,
    from_c: bool,
    /// C at the next row tile's first row (same columns) and how many of its rows are
    /// inside m (0 for the last tile): only prefetched.
    next_c: *const f32,
    next_rows: usize,
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn tile(t: &Tile) {
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    // SAFETY: the pointers and extents are the caller's (see `matmul`); masked loads and
    // stores touch only the tile's rows and columns of C and bias (an address may lie past
    // them when its mask is empty or its row is padding, hence `wrapping_add`).
    unsafe {
        let mut c = t.c;
        for row in acc.iter_mut().take(t.rows) {
            for (h, v) in row.iter_mut().enumerate() {
                if t.from_c {
                    *v = _mm512_maskz_loadu_ps(t.masks[h], c.wrapping_add(16 * h));
                } else if let Some(b) = t.bias {
                    *v = _mm512_maskz_loadu_ps(t.masks[h], b.wrapping_add(16 * h));
                }
            }
            c = c.wrapping_add(t.n);
        }
        // No index arithmetic in the K loop: three pointers advance (checked arithmetic in
        // the test profile otherwise kept the accumulators on the stack).
        let mut a = t.a.cast::<i32>();
        let mut b0 = t.b;
        let mut b1 = t.b.add(t.b1_off);
        macro_rules! row {
            ($a:ident, $acc:ident, $w0:ident, $w1:ident; $($i:literal)*) => {$(
                let x: __m512bh = std::mem::transmute(_mm512_set1_epi32($a.add($i).read_unaligned()));
                $acc[$i][0] = _mm512_dpbf16_ps($acc[$i][0], x, $w0);
                $acc[$i][1] = _mm512_dpbf16_ps($acc[$i][1], x, $w1);
            )*};
        }
        macro_rules! steps {
            ($count:expr) => {
                for _ in 0..$count {
                    let w0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b0.cast()));
                    let w1: __m512bh = std::mem::transmute(_mm512_loadu_si512(b1.cast()));
                    row!(a, acc, w0, w1; 0 1 2 3 4 5 6 7);
                    a = a.add(MR);
                    b0 = b0.add(32);
                    b1 = b1.add(32);
                }
            };
        }
        let half = t.pairs / 2;
        steps!(half);
        // Halfway, request the next tile's C rows. That tile reads them first thing (later
        // chunks) or writes them last; from far away either stalled it. A ViT layer's four
        // matmuls, Zen 4, 2026-12-07: 0.93–0.99× the time with bf16 weights, 0.95–0.98×
        // with q8 (docs/performance.md). The 32 columns span at most three lines: the
        // first, middle and last value name them all.
        let mut c = t.next_c;
        for _ in 0..t.next_rows {
            for off in [0, 16, 31] {
                _mm_prefetch::<_MM_HINT_T0>(c.wrapping_add(off) as *const i8);
            }
            c = c.wrapping_add(t.n);
        }
        steps!(t.pairs - half);
        let mut c = t.c;
        for row in acc.iter().take(t.rows) {
            for (h, v) in row.iter().enumerate() {
                _mm512_mask_storeu_ps(c.wrapping_add(16 * h), t.masks[h], *v);
            }
            c = c.wrapping_add(t.n);
        }
    }
}
