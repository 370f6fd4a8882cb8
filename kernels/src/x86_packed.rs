//! x86 linear layer over weights packed at load (`packed.rs`). AVX-512: the 8–14 × 32
//! microkernel reads the packed panels in place (f16 widened in registers), and up to 8
//! activation rows (decode) take every row against a few panels in one pass over W. AVX2:
//! the same plan with 8-lane kernels (`x86_packed_avx2.rs`).

use std::arch::x86_64::*;

use crate::Isa;
use crate::convert::f16_to_f32_isa;
use crate::gemm::{Shared, pack_a, part, with_pack_buffers};
use crate::packed::{PANEL, PackedData, PackedMatrix};
use crate::x86::{ukr_avx512_pf, w512};

/// Most microkernel rows (a 14 × 32 register tile, as in the f32 GEMM).
const MR: usize = 14;
/// K per cache block: a 256 × 32 block of one panel (32 KiB as f32) stays in L1.
const KC: usize = 256;
/// Row tiles per cache block (packed A: up to 336 × 256 × 4 = 336 KiB, in L2): a ViT's 257
/// tokens are one block, so each weight panel is read from memory once per call.
const MC_TILES: usize = 24;
/// Activation rows at or below which the panels are read once for all rows, unpacked A.
const SMALL_M: usize = 8;
/// How far ahead (bytes) the small-M pass prefetches each stream it reads.
const PREFETCH_BYTES: usize = 2048;
/// Sequential streams of W each small-M pass reads (panels × K ranges of a panel).
const STREAMS: usize = 4;

/// Whether the small-M pass at `m` rows requests W [`PREFETCH_BYTES`] ahead. On Intel
/// (Sapphire Rapids) it must: a C model of the 8-row pass took 1.7× the time without it. On
/// AMD Zen 4 (family 0x19), at 1–2 rows
/// the hardware prefetchers keep the four streams fed and the requests only cost: OPT-2.7B's
/// fc1 in f16 from DRAM took 0.87× (1 row) and 0.89× (2 rows) the time without them, 0.98× at
/// 4 and 1.07× at 8 (docs/performance.md). On Zen 5 (0x1A) they pay again: with them fc1 at
/// one row took 0.67–0.97× the time (0.69–1.02× at two rows), the stacked q/k/v 0.73–0.98×,
/// out_proj 0.85–1.01×, fc2 0.92–1.01×, depending on how much bandwidth the host left free.
/// `BLIP2_CPU_SMALL_PREFETCH=0|1` overrides (A/B runs). Read once.
fn small_prefetch(m: usize) -> bool {
    static OVERRIDE: std::sync::OnceLock<Option<bool>> = std::sync::OnceLock::new();
    let forced = *OVERRIDE.get_or_init(|| {
        match std::env::var("BLIP2_CPU_SMALL_PREFETCH")
            .as_deref()
            .map(str::trim)
        {
            Ok("0") => Some(false),
            Ok("1") => Some(true),
            _ => None,
        }
    });
    forced.unwrap_or(m > 2 || crate::cpu_amd_family() != Some(0x19))
}

/// C[m×n] = A[m×k]·Wᵀ (+ bias) for a packed W on AVX-512 or AVX2 (`isa`, resolved); tasks
/// own ranges of panels.
pub(crate) fn matmul_packed_x86(
    isa: Isa,
    threads: usize,
    a: &[f32],
    w: &PackedMatrix,
    bias: Option<&[f32]>,
    c: &mut [f32],
    m: usize,
) {
    let (n, k) = (w.rows, w.cols);
    let panels = n.div_ceil(PANEL);
    // Below ~1 M multiply-adds a rayon round trip costs more than it saves.
    let tasks = if threads <= 1 || m * n * k < (1 << 20) {
        1
    } else {
        threads.min(panels)
    };
    let (wptr, f16) = match w.data {
        PackedData::F32(d) => (d.as_ptr(), false),
        PackedData::F16(d) => (d.as_ptr() as *const f32, true),
    };
    let shared = Shared((a.as_ptr(), wptr, bias.map(|b| b.as_ptr()), c.as_mut_ptr()));
    let task = move |t: usize| {
        let (a, wptr, bias, c) = shared.get();
        let (q0, q1) = part(panels, tasks, 1, t);
        if q0 >= q1 {
            return;
        }
        let job = Job {
            m,
            n,
            k,
            a,
            w: wptr,
            f16,
            bias,
            c,
        };
        // SAFETY: `linear_trivial` checked every length against (m, n, k) and the packed
        // shape; tasks own disjoint panel (column) ranges of C.
        unsafe {
            match (isa == Isa::Avx512, m <= SMALL_M) {
                (true, true) => job.small(q0, q1),
                (true, false) => job.blocked(q0, q1),
                (false, true) => job.small_avx2(q0, q1),
                (false, false) => job.blocked_avx2(q0, q1),
            }
        }
    };
    // Decode (m ≤ 8): a few hundred µs a call, where rayon's hand-offs cost tens.
    crate::team::run(tasks, m <= SMALL_M, &task);
}

/// One call's operands: A row-major (stride k), W packed (a `*const f16` cast when `f16`),
/// C row-major (stride n).
#[derive(Clone, Copy)]
pub(crate) struct Job {
    pub(crate) m: usize,
    pub(crate) n: usize,
    pub(crate) k: usize,
    pub(crate) a: *const f32,
    pub(crate) w: *const f32,
    pub(crate) f16: bool,
    pub(crate) bias: Option<*const f32>,
    pub(crate) c: *mut f32,
}

impl Job {
    /// W from element `off` of the packed data, as the kernels take it.
    ///
    /// # Safety
    /// `off` within the packed data.
    pub(crate) unsafe fn w_at(&self, off: usize) -> *const f32 {
        // SAFETY: per the contract above.
        unsafe {
            if self.f16 {
                (self.w as *const u16).add(off) as *const f32
            } else {
                self.w.add(off)
            }
        }
    }

    /// Starts columns `[j0, j1)` of every row of C at the bias (if any), so that every K
    /// block of the blocked paths accumulates.
    ///
    /// # Safety
    /// The operands as [`matmul_packed_x86`] checked them; `j0 ≤ j1 ≤ n`.
    pub(crate) unsafe fn c_from_bias(&self, j0: usize, j1: usize) {
        if let Some(bias) = self.bias {
            for i in 0..self.m {
                // SAFETY: per the contract above.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        bias.add(j0),
                        self.c.add(i * self.n + j0),
                        j1 - j0,
                    );
                }
            }
        }
    }

    /// Panels `[q0, q1)` for m ≤ [`SMALL_M`]: each group of panels is read once for all rows.
    ///
    /// # Safety
    /// The operands as [`matmul_packed_avx512`] checked them; panels in range.
    unsafe fn small(&self, q0: usize, q1: usize) {
        // Panels per pass: as many as keep accumulators + weights + 1 broadcast within the
        // 32 zmm registers (2 accumulators per row and panel).
        let per = match self.m {
            1 | 2 => 4,
            3 | 4 => 2,
            _ => 1,
        };
        let mut q = q0;
        // SAFETY: per the contract above.
        unsafe {
            while q < q1 {
                let take = if q1 - q >= per { per } else { 1 };
                self.small_pass(q, take);
                q += take;
            }
        }
    }

    /// # Safety
    /// As [`Self::small`]; `q + panels ≤` the panel count.
    unsafe fn small_pass(&self, q: usize, panels: usize) {
        let col0 = q * PANEL;
        let cols = self.n - col0;
        let stride = PANEL * self.k;
        // SAFETY: per the contract above; ISA resolved to AVX-512 by the caller.
        unsafe {
            let w = self.w_at(q * stride);
            let bias = self.bias.map(|b| b.add(col0));
            let c = self.c.add(col0);
            let (k, a, n) = (self.k, self.a, self.n);
            macro_rules! go {
                ($m:literal, $nv:literal, $pf:literal) => {
                    if self.f16 {
                        small::<$m, $nv, true, $pf>(k, a, w, stride, bias, c, n, cols)
                    } else {
                        small::<$m, $nv, false, $pf>(k, a, w, stride, bias, c, n, cols)
                    }
                };
                ($m:literal, $nv:literal) => {
                    go!($m, $nv, true)
                };
            }
            // The software prefetch is a choice only where a whole pass runs (four panels).
            let pf = small_prefetch(self.m);
            match (self.m, panels) {
                (1, 4) if pf => go!(1, 8, true),
                (1, 4) => go!(1, 8, false),
                (2, 4) if pf => go!(2, 8, true),
                (2, 4) => go!(2, 8, false),
                (3, 2) => go!(3, 4),
                (4, 2) => go!(4, 4),
                (1, _) => go!(1, 2),
                (2, _) => go!(2, 2),
                (3, _) => go!(3, 2),
                (4, _) => go!(4, 2),
                (5, _) => go!(5, 2),
                (6, _) => go!(6, 2),
                (7, _) => go!(7, 2),
                _ => go!(8, 2),
            }
        }
    }

    /// Panels `[q0, q1)` for m > [`SMALL_M`]: BLIS order with the panels as packed B.
    ///
    /// # Safety
    /// As [`Self::small`].
    unsafe fn blocked(&self, q0: usize, q1: usize) {
        let (m, n, k) = (self.m, self.n, self.k);
        let (j0, j1) = (q0 * PANEL, (q1 * PANEL).min(n));
        // The fewest 14-row tiles, then the smallest even tile height that still covers m
        // with them: 16 rows (a batch of decode rows) take two 8-row tiles, not 14 + 2.
        let tiles = m.div_ceil(MR);
        let mr = (m.div_ceil(tiles).div_ceil(2) * 2).clamp(8, MR);
        let tiles_per_block = MC_TILES.min(m.div_ceil(mr));
        // f16 panels: widened in registers by each tile when there are few tiles per block;
        // with more, once per block into an L1 buffer (the f32 kernel is ~10% faster than
        // the widening one, and the widening is then shared by every tile).
        let widen_once = self.f16 && tiles_per_block >= 3;
        macro_rules! pick {
            ($($r:literal)*) => {
                match (mr, self.f16 && !widen_once) {
                    $(($r, true) => ukr_avx512_pf::<$r, 2, true>,
                      ($r, false) => ukr_avx512_pf::<$r, 2, false>,)*
                    _ => unreachable!("mr is even and in 8..=14"),
                }
            };
        }
        let ukr = pick!(8 10 12 14);
        let mc = mr * MC_TILES;
        let mc_max = mc.min(m.div_ceil(mr) * mr);
        // SAFETY: per the contract above; the A buffer holds mc_max × KC floats.
        unsafe {
            self.c_from_bias(j0, j1);
            with_pack_buffers(mc_max * KC.min(k), KC.min(k) * PANEL, |ap, bp| {
                for pc in (0..k).step_by(KC) {
                    let kcur = KC.min(k - pc);
                    let accumulate = pc > 0 || self.bias.is_some();
                    for ic in (0..m).step_by(mc) {
                        let mcur = mc.min(m - ic);
                        pack_a(Isa::Avx512, self.a.add(ic * k + pc), k, mcur, kcur, mr, ap);
                        for q in q0..q1 {
                            let col0 = q * PANEL;
                            let cols = PANEL.min(n - col0);
                            let mut b = self.w_at(q * PANEL * k + pc * PANEL);
                            if widen_once {
                                let n16 = kcur * PANEL;
                                f16_to_f32_isa(
                                    Isa::Avx512,
                                    std::slice::from_raw_parts(b as *const half::f16, n16),
                                    std::slice::from_raw_parts_mut(bp, n16),
                                );
                                b = bp;
                            }
                            // The weights come from memory once per call: while this
                            // block's tiles run, bring the next block into L2, a share
                            // spread over each tile's K loop (else every block's first
                            // tile stalls; in one burst per tile, the prefetches stall).
                            let next = if q + 1 < q1 {
                                Some(((q + 1) * PANEL * k + pc * PANEL, kcur))
                            } else if pc + KC < k && ic + mc >= m {
                                Some((q0 * PANEL * k + (pc + KC) * PANEL, KC.min(k - pc - KC)))
                            } else {
                                None
                            };
                            let next = next.map(|(off, kn)| {
                                let lines = kn * PANEL * if self.f16 { 2 } else { 4 } / 64;
                                (self.w_at(off) as *const i8, lines)
                            });
                            let tiles = mcur.div_ceil(mr);
                            for (t, ir) in (0..mcur).step_by(mr).enumerate() {
                                let pf = next.map_or((std::ptr::null(), 0), |(p, lines)| {
                                    let (l0, l1) = part(lines, tiles, 1, t);
                                    (p.wrapping_add(l0 * 64), l1 - l0)
                                });
                                ukr(
                                    kcur,
                                    ap.add(ir * kcur),
                                    b,
                                    self.c.add((ic + ir) * n + col0),
                                    n,
                                    mr.min(mcur - ir),
                                    cols,
                                    accumulate,
                                    pf,
                                );
                            }
                        }
                    }
                }
            });
        }
    }
}

/// C[M × ≤16·NV] = A[M×k]·(NV/2 panels)ᵀ (+ bias): every row against NV/2 consecutive
/// panels (`stride` elements apart) in one pass over them. `cols` counts the valid columns
/// from the first panel's (stores past it are masked off).
///
/// Each panel is read as [`STREAMS`]`·2/NV` interleaved K ranges, so that every pass reads
/// four sequential streams whatever M. With one stream per thread the memory stream and
/// the 8-row arithmetic hardly overlapped: OPT-2.7B's fc1 in f16 with 8 rows, weights
/// streamed from DRAM (`packed_cold` bench), took 2.4–2.5 ms with one stream and 2.0–2.2
/// with four; with the weights in L3 (`packed_weights`) it went from 1.4 to 1.5 ms
/// (`docs/performance.md`). Decode reads its weights from DRAM. With `PF` each stream is
/// requested [`PREFETCH_BYTES`] ahead ([`small_prefetch`]).
///
/// # Safety
/// `a` valid for M rows of k (stride k), the panels for k steps each, `c` for M rows
/// (stride `ldc`) of the valid columns, `bias` (if any) for them.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
unsafe fn small<const M: usize, const NV: usize, const F16: bool, const PF: bool>(
    k: usize,
    a: *const f32,
    w: *const f32,
    stride: usize,
    bias: Option<*const f32>,
    c: *mut f32,
    ldc: usize,
    cols: usize,
) {
    let esize = if F16 { 2 } else { 4 };
    // SAFETY: per the contract above; prefetches past the end never fault.
    unsafe {
        let bytes = w as *const i8;
        let mut acc = [[_mm512_setzero_ps(); NV]; M];
        // One K step of every row against the NV/2 panels.
        macro_rules! step {
            ($p:expr) => {{
                let p = $p;
                let mut wv = [_mm512_setzero_ps(); NV];
                for v in 0..NV {
                    let off = (v / 2) * stride + p * PANEL + (v % 2) * 16;
                    if PF && v % 2 == 0 {
                        // One cache line of the panel per step (f16), two (f32).
                        let ahead = bytes.add(off * esize + PREFETCH_BYTES);
                        _mm_prefetch::<_MM_HINT_T0>(ahead);
                        if !F16 {
                            _mm_prefetch::<_MM_HINT_T0>(ahead.add(64));
                        }
                    }
                    wv[v] = if F16 {
                        w512!(f16, (w as *const u16).add(off))
                    } else {
                        w512!(f32, w.add(off))
                    };
                }
                for i in 0..M {
                    let ai = _mm512_set1_ps(*a.add(i * k + p));
                    for v in 0..NV {
                        acc[i][v] = _mm512_fmadd_ps(ai, wv[v], acc[i][v]);
                    }
                }
            }};
        }
        // K in `split` ranges read side by side (four streams over the NV/2 panels), then
        // the steps the ranges leave over.
        let split = (STREAMS * 2 / NV).max(1);
        let q = k / split;
        for p in 0..q {
            for s in 0..split {
                step!(p + s * q);
            }
        }
        for p in split * q..k {
            step!(p);
        }
        for v in 0..NV {
            let col = (v / 2) * PANEL + (v % 2) * 16;
            let left = cols.saturating_sub(col).min(16);
            if left == 0 {
                break;
            }
            let mask = ((1u32 << left) - 1) as u16;
            let b = match bias {
                Some(b) => _mm512_maskz_loadu_ps(mask, b.add(col)),
                None => _mm512_setzero_ps(),
            };
            for i in 0..M {
                _mm512_mask_storeu_ps(c.add(i * ldc + col), mask, _mm512_add_ps(acc[i][v], b));
            }
        }
    }
}
