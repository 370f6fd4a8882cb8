//! AVX2 forms of the two plans of the packed linear layer (`x86_packed.rs`), for CPUs without
//! AVX-512 (AMD Zen 2/3, Intel before Skylake-SP): up to 8 activation rows read each 32-wide
//! panel in place with one register row of the panel per K step; more rows take the 6×16
//! microkernel over each half of a panel, A packed, W never packed or widened per call as a
//! whole (f16 panels widened in registers).

use std::arch::x86_64::*;

use crate::Isa;
use crate::gemm::{pack_a, part, with_pack_buffers};
use crate::packed::PANEL;
use crate::x86::{ukr_avx2_ld, w256};
use crate::x86_packed::Job;

/// Microkernel rows: a 6 × 16 tile is 12 accumulators + 2 B + 1 broadcast of the 16 ymm
/// registers.
const MR: usize = 6;
/// Columns one microkernel call covers: half a panel.
const NR: usize = 16;
/// K per cache block: a 384 × 16 half panel (24 KiB as f32) stays in L1 while A streams
/// (0.90–1.01× the time of 256 at the ViT shapes on a Zen 3: fewer passes over C).
const KC: usize = 384;
/// Row tiles per block of packed A (up to 288 × 384 × 4 = 432 KiB, within a 512 KiB L2): a
/// ViT's 257 tokens are one block, so each panel is read from memory once per call.
const MC_TILES: usize = 48;
/// Most activation rows one small-M pass takes: 4 accumulators per row (a whole panel) + 4
/// weight registers within 16.
const SMALL_ROWS: usize = 3;
/// K per chunk when the small-M rows need more than one pass (4–8 rows): the passes after
/// the first read the chunk again from L1/L2, not from memory.
const SMALL_KC: usize = 512;

/// K ranges of a panel one small-M pass reads side by side: sequential streams the hardware
/// prefetchers follow on their own. OPT-2.7B's fc1 in f16 from DRAM, one row, two threads,
/// on a Zen 3: one stream 1.11× the row-major GEMV's time, four 0.71×, six 0.67× (fc2:
/// 1.14×, 0.89×, 0.86×); software prefetches into L1 or L2 on top only cost at 1–2 rows.
const STREAMS: usize = 6;

/// Where a small-M pass starts its sums: C's partial sums of the earlier K chunks, or (the
/// first chunk) the bias or zero.
#[derive(Clone, Copy)]
enum Start {
    Zero,
    Bias(*const f32),
    C,
}

impl Job {
    /// Panels `[q0, q1)` for m ≤ `SMALL_M` on AVX2: each panel read once for up to
    /// [`SMALL_ROWS`] rows, in K chunks shared by the passes when there are more rows.
    ///
    /// # Safety
    /// The operands as `matmul_packed_x86` checked them; panels in range; AVX2, FMA, F16C.
    pub(crate) unsafe fn small_avx2(&self, q0: usize, q1: usize) {
        let (m, n, k) = (self.m, self.n, self.k);
        let passes = m.div_ceil(SMALL_ROWS);
        let chunk = if passes == 1 { k } else { SMALL_KC };
        // SAFETY: per the contract above.
        unsafe {
            for q in q0..q1 {
                let col0 = q * PANEL;
                let cols = PANEL.min(n - col0);
                for pc in (0..k).step_by(chunk) {
                    let kc = chunk.min(k - pc);
                    let w = self.w_at(q * PANEL * k + pc * PANEL);
                    let start = match (pc, self.bias) {
                        (0, Some(b)) => Start::Bias(b.add(col0)),
                        (0, None) => Start::Zero,
                        _ => Start::C,
                    };
                    for g in 0..passes {
                        let (r0, r1) = part(m, passes, 1, g);
                        let a = self.a.add(r0 * k + pc);
                        let c = self.c.add(r0 * n + col0);
                        macro_rules! go {
                            ($r:literal) => {
                                match self.f16 {
                                    true => small::<$r, true>(kc, a, k, w, start, c, n, cols),
                                    false => small::<$r, false>(kc, a, k, w, start, c, n, cols),
                                }
                            };
                        }
                        match r1 - r0 {
                            1 => go!(1),
                            2 => go!(2),
                            _ => go!(3),
                        }
                    }
                }
            }
        }
    }

    /// Panels `[q0, q1)` for m > `SMALL_M` on AVX2: BLIS order with each half panel as packed
    /// B of the 6 × 16 microkernel.
    ///
    /// # Safety
    /// As [`Self::small_avx2`].
    pub(crate) unsafe fn blocked_avx2(&self, q0: usize, q1: usize) {
        let (m, n, k) = (self.m, self.n, self.k);
        let (j0, j1) = (q0 * PANEL, (q1 * PANEL).min(n));
        // Both dtypes read in place, f16 widened in registers. Staging each K block of a
        // panel in an L1 buffer (the AVX-512 kernel's choice for f16 at three or more
        // tiles) took the ViT 1.04–1.24× the time on a Zen 3 for f16 widened there, and
        // 0.97–1.08× for f32 copied as contiguous halves (`blip2 bench`).
        let ukr = if self.f16 {
            ukr_avx2_ld::<MR, 2, true>
        } else {
            ukr_avx2_ld::<MR, 2, false>
        };
        let mc = MR * MC_TILES;
        let mc_max = mc.min(m.div_ceil(MR) * MR);
        // SAFETY: per the contract above; the A buffer holds mc_max × KC floats.
        unsafe {
            self.c_from_bias(j0, j1);
            with_pack_buffers(mc_max * KC.min(k), 0, |ap, _| {
                for pc in (0..k).step_by(KC) {
                    let kc = KC.min(k - pc);
                    let accumulate = pc > 0 || self.bias.is_some();
                    for ic in (0..m).step_by(mc) {
                        let mcur = mc.min(m - ic);
                        pack_a(Isa::Avx2Fma, self.a.add(ic * k + pc), k, mcur, kc, MR, ap);
                        for q in q0..q1 {
                            let col0 = q * PANEL;
                            for h in 0..PANEL / NR {
                                let col = col0 + h * NR;
                                if col >= n {
                                    break;
                                }
                                let cols = NR.min(n - col);
                                let bh = self.w_at(q * PANEL * k + pc * PANEL + h * NR);
                                for ir in (0..mcur).step_by(MR) {
                                    ukr(
                                        kc,
                                        ap.add(ir * kc),
                                        bh,
                                        PANEL,
                                        self.c.add((ic + ir) * n + col),
                                        n,
                                        MR.min(mcur - ir),
                                        cols,
                                        accumulate,
                                    );
                                }
                            }
                        }
                    }
                }
            });
        }
    }
}

/// C[M × cols] (+)= A[M × kc]·(one panel's kc rows): M ≤ [`SMALL_ROWS`] activation rows
/// (stride `lda`) against a 32-wide panel read once, K step by K step (one row of the panel
/// in 4 registers), K read as [`STREAMS`] interleaved ranges. Sums start per `start`;
/// `cols ≤ 32` valid columns are read and written.
///
/// # Safety
/// `a` valid for M rows of kc, `w` for kc panel rows (f16 when `F16`, `w` then a cast
/// `*const f16`), `c` for M rows (stride `ldc`) of `cols`, a `Start::Bias` for `cols`.
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
unsafe fn small<const M: usize, const F16: bool>(
    kc: usize,
    a: *const f32,
    lda: usize,
    w: *const f32,
    start: Start,
    c: *mut f32,
    ldc: usize,
    cols: usize,
) {
    const NV: usize = PANEL / 8;
    let esize = if F16 { 2 } else { 4 };
    // SAFETY: per the contract above.
    unsafe {
        // A row of `cols` values as 4 registers (zero past `cols`).
        let load_row = |p: *const f32| -> [__m256; NV] {
            let mut t = [0f32; PANEL];
            let src = if cols == PANEL {
                p
            } else {
                std::ptr::copy_nonoverlapping(p, t.as_mut_ptr(), cols);
                t.as_ptr()
            };
            std::array::from_fn(|v| _mm256_loadu_ps(src.add(8 * v)))
        };
        let mut acc = [[_mm256_setzero_ps(); NV]; M];
        for i in 0..M {
            acc[i] = match start {
                Start::Zero => acc[i],
                Start::Bias(b) => load_row(b),
                Start::C => load_row(c.add(i * ldc)),
            };
        }
        let bytes = w as *const u8;
        macro_rules! step {
            ($p:expr) => {{
                let p = $p;
                let row = bytes.add(p * PANEL * esize);
                let mut wv = [_mm256_setzero_ps(); NV];
                for v in 0..NV {
                    wv[v] = if F16 {
                        w256!(f16, (row as *const u16).add(8 * v))
                    } else {
                        w256!(f32, (row as *const f32).add(8 * v))
                    };
                }
                for i in 0..M {
                    let ai = _mm256_set1_ps(*a.add(i * lda + p));
                    for v in 0..NV {
                        acc[i][v] = _mm256_fmadd_ps(ai, wv[v], acc[i][v]);
                    }
                }
            }};
        }
        let q = kc / STREAMS;
        for p in 0..q {
            for s in 0..STREAMS {
                step!(p + s * q);
            }
        }
        for p in STREAMS * q..kc {
            step!(p);
        }
        for i in 0..M {
            let dst = c.add(i * ldc);
            if cols == PANEL {
                for v in 0..NV {
                    _mm256_storeu_ps(dst.add(8 * v), acc[i][v]);
                }
            } else {
                let mut t = [0f32; PANEL];
                for v in 0..NV {
                    _mm256_storeu_ps(t.as_mut_ptr().add(8 * v), acc[i][v]);
                }
                std::ptr::copy_nonoverlapping(t.as_ptr(), dst, cols);
            }
        }
    }
}
