//! f32 matrix multiplication: BLIS-style packed GEMM with register-blocked microkernels,
//! GEMV paths for decode-sized M, and rayon splitting over output tiles.
//!
//! Loop nest (per output tile, per thread): jc over `nc` columns → pc over `kc` of K (pack a
//! kc×nc block of op(B) into NR-wide micro-panels, f16 widened here) → ic over `mc` rows (pack
//! an mc×kc block of A into MR-tall micro-panels) → jr over NR → ir over MR → microkernel.

use crate::convert::f16_to_f32_isa;
use crate::vmath::LANES;
use crate::{AlignedVec, Isa, isa};
use half::f16;
use rayon::prelude::*;
use std::cell::RefCell;

/// The right-hand matrix of a matmul: f32, or f16 storage widened to f32 while packing.
#[derive(Clone, Copy, Debug)]
pub enum BSlice<'a> {
    /// f32 storage.
    F32(&'a [f32]),
    /// f16 storage.
    F16(&'a [f16]),
}

impl BSlice<'_> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            BSlice::F32(s) => s.len(),
            BSlice::F16(s) => s.len(),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn ptr(&self) -> BPtr {
        match self {
            BSlice::F32(s) => BPtr::F32(s.as_ptr()),
            BSlice::F16(s) => BPtr::F16(s.as_ptr()),
        }
    }
}

#[derive(Clone, Copy)]
pub(crate) enum BPtr {
    F32(*const f32),
    F16(*const f16),
}

/// A view of op(B) (K×N): element (p, j) lives at `ptr[j·ld + p]` when `trans` (B stored
/// [N×K], nn.Linear weights) and at `ptr[p·ld + j]` otherwise (B stored [K×N]).
#[derive(Clone, Copy)]
pub(crate) struct MatB {
    pub ptr: BPtr,
    pub ld: usize,
    pub trans: bool,
}

impl MatB {
    /// The sub-view starting at op(B)[p, j].
    ///
    /// # Safety
    /// The offset must stay inside the allocation.
    unsafe fn at(self, p: usize, j: usize) -> MatB {
        let off = if self.trans {
            j * self.ld + p
        } else {
            p * self.ld + j
        };
        // SAFETY: per the contract above.
        let ptr = unsafe {
            match self.ptr {
                BPtr::F32(q) => BPtr::F32(q.add(off)),
                BPtr::F16(q) => BPtr::F16(q.add(off)),
            }
        };
        MatB { ptr, ..self }
    }
}

/// Raw pointers shared by tasks that touch disjoint output tiles.
#[derive(Clone, Copy)]
pub(crate) struct Shared<T>(pub(crate) T);
// SAFETY: used only to hand read-only inputs and disjoint output tiles to rayon tasks.
unsafe impl<T> Send for Shared<T> {}
// SAFETY: as above.
unsafe impl<T> Sync for Shared<T> {}

impl<T: Copy> Shared<T> {
    /// By-value access, so closures capture the whole wrapper (not its non-Send fields).
    pub(crate) fn get(self) -> T {
        self.0
    }
}

type Ukr = unsafe fn(usize, *const f32, *const f32, *mut f32, usize, usize, usize, bool);

/// Register tile (mr×nr), cache blocks (kc, mc, nc) and microkernel of one ISA.
struct Cfg {
    mr: usize,
    nr: usize,
    kc: usize,
    mc: usize,
    nc: usize,
    ukr: Ukr,
}

fn cfg(isa: Isa) -> Cfg {
    match isa {
        // 14×32: 28 zmm accumulators + 2 B registers + 1 broadcast = 31 of 32 registers.
        // kc·nr·4 = 32 KiB B micro-panel stays in L1 while A streams from L2.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => Cfg {
            mr: 14,
            nr: 32,
            kc: 256,
            mc: 14 * 10,
            nc: 2048,
            ukr: crate::x86::ukr_avx512::<14, 2, false>,
        },
        // 6×16: 12 ymm accumulators + 2 B + 1 broadcast of 16 registers.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma => Cfg {
            mr: 6,
            nr: 16,
            kc: 256,
            mc: 6 * 16,
            nc: 2048,
            ukr: crate::x86::ukr_avx2::<6, 2>,
        },
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => Cfg {
            mr: 8,
            nr: 8,
            kc: 256,
            mc: 8 * 12,
            nc: 2048,
            ukr: crate::neon::ukr_neon,
        },
        _ => Cfg {
            mr: 4,
            nr: 16,
            kc: 256,
            mc: 4 * 24,
            nc: 1024,
            ukr: ukr_portable,
        },
    }
}

/// Portable 4×16 microkernel (same contract as the SIMD ones); plain arrays the compiler maps
/// onto whatever baseline SIMD the target has.
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
unsafe fn ukr_portable(
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    accumulate: bool,
) {
    const MR: usize = 4;
    const NR: usize = 16;
    // SAFETY: the caller guarantees the panel extents (kc·MR, kc·NR) and the C tile.
    unsafe {
        let a = std::slice::from_raw_parts(a, kc * MR);
        let b = std::slice::from_raw_parts(b, kc * NR);
        let mut acc = [[0.0f32; NR]; MR];
        for (ap, bp) in a.chunks_exact(MR).zip(b.chunks_exact(NR)) {
            for i in 0..MR {
                for j in 0..NR {
                    acc[i][j] += ap[i] * bp[j];
                }
            }
        }
        for i in 0..rows {
            for j in 0..cols {
                let p = c.add(i * ldc + j);
                *p = if accumulate {
                    *p + acc[i][j]
                } else {
                    acc[i][j]
                };
            }
        }
    }
}

/// Packing buffers on 64-byte lines (`AlignedVec`): packed panels start on a line so that
/// vector loads never split lines.
#[derive(Default)]
struct PackBufs {
    a: AlignedVec<f32>,
    b: AlignedVec<f32>,
    row: Vec<f32>,
}

/// `v` with room for at least `len` floats (every value used is packed before it is read).
fn aligned(v: &mut AlignedVec<f32>, len: usize) -> *mut f32 {
    if v.len() < len {
        v.resize_for_overwrite(len);
    }
    v.as_mut_ptr()
}

thread_local! {
    static PACK: RefCell<PackBufs> = RefCell::new(PackBufs::default());
}

/// Runs `f` with this thread's 64-byte-aligned packing buffers for A and B, of at least
/// `a_len` and `b_len` floats (fresh ones when the thread's are already in use further up
/// the stack).
pub(crate) fn with_pack_buffers<R>(
    a_len: usize,
    b_len: usize,
    f: impl FnOnce(*mut f32, *mut f32) -> R,
) -> R {
    PACK.with(|cell| match cell.try_borrow_mut() {
        Ok(mut bufs) => {
            let bufs = &mut *bufs;
            f(aligned(&mut bufs.a, a_len), aligned(&mut bufs.b, b_len))
        }
        Err(_) => {
            let (mut a, mut b) = (AlignedVec::default(), AlignedVec::default());
            f(aligned(&mut a, a_len), aligned(&mut b, b_len))
        }
    })
}

/// Packs A[0..rows, 0..kc] (row stride `lda`) into MR-tall micro-panels laid out [kc][mr],
/// zero-padding the last panel (a transpose per panel: 16×16 register blocks on AVX-512).
///
/// # Safety
/// `a` valid for the block, `dst` for `rows.div_ceil(mr)·mr·kc` floats; `isa` resolved.
pub(crate) unsafe fn pack_a(
    isa: Isa,
    a: *const f32,
    lda: usize,
    rows: usize,
    kc: usize,
    mr: usize,
    dst: *mut f32,
) {
    // SAFETY: per the contract above.
    unsafe {
        for (q, r0) in (0..rows).step_by(mr).enumerate() {
            let panel = dst.add(q * mr * kc);
            let w = mr.min(rows - r0);
            transpose_into(isa, a.add(r0 * lda), lda, w, kc, panel, mr);
            if w < mr {
                for p in 0..kc {
                    std::slice::from_raw_parts_mut(panel.add(p * mr + w), mr - w).fill(0.0);
                }
            }
        }
    }
}

/// Packs op(B)[0..kc, 0..cols] into NR-wide micro-panels laid out [kc][nr] (f16 widened),
/// zero-padding the last panel. `row` is scratch for f16 rows.
///
/// # Safety
/// `b` valid for the block, `dst` for `cols.div_ceil(nr)·nr·kc` floats.
unsafe fn pack_b(
    isa: Isa,
    b: MatB,
    kc: usize,
    cols: usize,
    nr: usize,
    dst: *mut f32,
    row: &mut Vec<f32>,
) {
    // SAFETY: per the contract above.
    unsafe {
        for (q, j0) in (0..cols).step_by(nr).enumerate() {
            let panel = dst.add(q * nr * kc);
            let w = nr.min(cols - j0);
            match (b.ptr, b.trans) {
                (BPtr::F32(p0), false) => {
                    for p in 0..kc {
                        let src = p0.add(p * b.ld + j0);
                        std::ptr::copy_nonoverlapping(src, panel.add(p * nr), w);
                        for j in w..nr {
                            *panel.add(p * nr + j) = 0.0;
                        }
                    }
                }
                (BPtr::F16(p0), false) => {
                    for p in 0..kc {
                        let src = std::slice::from_raw_parts(p0.add(p * b.ld + j0), w);
                        let d = std::slice::from_raw_parts_mut(panel.add(p * nr), w);
                        f16_to_f32_isa(isa, src, d);
                        for j in w..nr {
                            *panel.add(p * nr + j) = 0.0;
                        }
                    }
                }
                (BPtr::F32(p0), true) => {
                    transpose_into(isa, p0.add(j0 * b.ld), b.ld, w, kc, panel, nr);
                }
                #[cfg(target_arch = "x86_64")]
                (BPtr::F16(p0), true) if isa == Isa::Avx512 => {
                    // Widened as transposed (no f32 copy of the rows): the pack of a
                    // checkpoint's in-place f16 weights was 22% of a caption's samples as
                    // widen-then-transpose (docs/performance.md).
                    crate::x86::transpose_pack_avx512::<true>(
                        p0.add(j0 * b.ld) as *const f32,
                        b.ld,
                        w,
                        kc,
                        panel,
                        nr,
                    );
                }
                (BPtr::F16(p0), true) => {
                    // Widen the w rows into scratch, then the same register transpose as f32.
                    if row.len() < w * kc {
                        row.resize(w * kc, 0.0);
                    }
                    for j in 0..w {
                        let src = std::slice::from_raw_parts(p0.add((j0 + j) * b.ld), kc);
                        f16_to_f32_isa(isa, src, &mut row[j * kc..(j + 1) * kc]);
                    }
                    transpose_into(isa, row.as_ptr(), kc, w, kc, panel, nr);
                }
            }
            if b.trans {
                for j in w..nr {
                    for p in 0..kc {
                        *panel.add(p * nr + j) = 0.0;
                    }
                }
            }
        }
    }
}

/// dst[p·nr + j] = src[j·ld + p] for j < w, p < kc (a transposing copy of w rows).
///
/// # Safety
/// As [`pack_b`].
unsafe fn transpose_into(
    isa: Isa,
    src: *const f32,
    ld: usize,
    w: usize,
    kc: usize,
    dst: *mut f32,
    nr: usize,
) {
    // SAFETY: per the contract of pack_b; the ISA is resolved.
    unsafe {
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                return crate::x86::transpose_pack_avx512::<false>(src, ld, w, kc, dst, nr);
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2Fma => return crate::x86::transpose_pack_avx2(src, ld, w, kc, dst, nr),
            _ => {}
        }
        for j in 0..w {
            let s = src.add(j * ld);
            for p in 0..kc {
                *dst.add(p * nr + j) = *s.add(p);
            }
        }
    }
}

/// c[j] = Σ_p a[p]·op(B)[p, j] for j < n (M = 1).
///
/// # Safety
/// `a[0..k]`, the n columns of op(B) and `c[0..n]` valid.
unsafe fn gemv(isa: Isa, n: usize, k: usize, a: *const f32, b: MatB, c: *mut f32) {
    // SAFETY: per the contract above; the ISA is resolved by the public entry points.
    unsafe {
        // W's rows requested into L2 or L1 (`x86_prefetch::prefetch_to_l2`).
        #[cfg(target_arch = "x86_64")]
        let l2 = crate::x86_prefetch::prefetch_to_l2();
        #[cfg(target_arch = "x86_64")]
        macro_rules! rows {
            ($f:ident, $p:expr) => {
                if l2 {
                    crate::x86::$f::<true>(k, a, $p, b.ld, n, c)
                } else {
                    crate::x86::$f::<false>(k, a, $p, b.ld, n, c)
                }
            };
        }
        match (isa, b.ptr, b.trans) {
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx512, BPtr::F32(p), true) => rows!(gemv_t_f32_avx512, p),
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx512, BPtr::F16(p), true) => rows!(gemv_t_f16_avx512, p),
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx512, BPtr::F32(p), false) => {
                crate::x86::gemv_n_f32_avx512(k, a, p, b.ld, n, c)
            }
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx512, BPtr::F16(p), false) => {
                crate::x86::gemv_n_f16_avx512(k, a, p, b.ld, n, c)
            }
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx2Fma, BPtr::F32(p), true) => rows!(gemv_t_f32_avx2, p),
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx2Fma, BPtr::F16(p), true) => rows!(gemv_t_f16_avx2, p),
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx2Fma, BPtr::F32(p), false) => crate::x86::gemv_n_f32_avx2(k, a, p, b.ld, n, c),
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx2Fma, BPtr::F16(p), false) => crate::x86::gemv_n_f16_avx2(k, a, p, b.ld, n, c),
            _ => gemv_portable(isa, n, k, a, b, c),
        }
    }
}

/// Portable GEMV (also NEON's: the compiler vectorises the lane arrays with the baseline SIMD).
///
/// # Safety
/// As [`gemv`].
unsafe fn gemv_portable(isa: Isa, n: usize, k: usize, a: *const f32, b: MatB, c: *mut f32) {
    const CH: usize = 256;
    // SAFETY: per the contract of gemv.
    unsafe {
        let a = std::slice::from_raw_parts(a, k);
        let mut wide = [0.0f32; CH];
        if b.trans {
            for j in 0..n {
                let mut acc = [0.0f32; LANES];
                let mut tail = 0.0f32;
                for p0 in (0..k).step_by(CH) {
                    let len = CH.min(k - p0);
                    let w: &[f32] = match b.ptr {
                        BPtr::F32(p) => std::slice::from_raw_parts(p.add(j * b.ld + p0), len),
                        BPtr::F16(p) => {
                            f16_to_f32_isa(
                                isa,
                                std::slice::from_raw_parts(p.add(j * b.ld + p0), len),
                                &mut wide[..len],
                            );
                            &wide[..len]
                        }
                    };
                    let av = &a[p0..p0 + len];
                    let wc = w.chunks_exact(LANES);
                    let ac = av.chunks_exact(LANES);
                    for (x, y) in wc.remainder().iter().zip(ac.remainder()) {
                        tail += x * y;
                    }
                    for (x, y) in wc.zip(ac) {
                        for l in 0..LANES {
                            acc[l] += x[l] * y[l];
                        }
                    }
                }
                *c.add(j) = acc.iter().sum::<f32>() + tail;
            }
        } else {
            for j0 in (0..n).step_by(CH) {
                let len = CH.min(n - j0);
                let mut acc = [0.0f32; CH];
                for (p, &ap) in a.iter().enumerate() {
                    let row: &[f32] = match b.ptr {
                        BPtr::F32(q) => std::slice::from_raw_parts(q.add(p * b.ld + j0), len),
                        BPtr::F16(q) => {
                            f16_to_f32_isa(
                                isa,
                                std::slice::from_raw_parts(q.add(p * b.ld + j0), len),
                                &mut wide[..len],
                            );
                            &wide[..len]
                        }
                    };
                    for (s, r) in acc[..len].iter_mut().zip(row) {
                        *s += ap * r;
                    }
                }
                std::ptr::copy_nonoverlapping(acc.as_ptr(), c.add(j0), len);
            }
        }
    }
}

/// M at or below which x·Wᵀ skips packing and dots each row of A with W rows kept hot in L1
/// (W is then read from memory once, as in GEMV). Measured at 1×2560×10240 on Zen 5: at M = 8
/// this path takes ~10 ms (f32) / ~6 ms (f16) against ~15 / ~22 ms for packing W.
const SMALL_M: usize = 8;

/// C[m×n] = A[m×k]·op(B) (+ bias), on the calling thread.
///
/// # Safety
/// `a` valid for m rows of stride `lda` (k used), op(B) for k×n, `c` for m rows of stride
/// `ldc` (n used), `bias` (if any) for n floats; C must not alias the inputs. `isa` resolved.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_serial(
    isa: Isa,
    m: usize,
    n: usize,
    k: usize,
    a: *const f32,
    lda: usize,
    b: MatB,
    bias: Option<*const f32>,
    c: *mut f32,
    ldc: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    // SAFETY: per the contract above.
    unsafe {
        let add_bias = |c: *mut f32| {
            if let Some(bias) = bias {
                for i in 0..m {
                    for j in 0..n {
                        *c.add(i * ldc + j) += *bias.add(j);
                    }
                }
            }
        };
        if k == 0 {
            for i in 0..m {
                std::slice::from_raw_parts_mut(c.add(i * ldc), n).fill(0.0);
            }
            add_bias(c);
            return;
        }
        if m == 1 {
            gemv(isa, n, k, a, b, c);
            add_bias(c);
            return;
        }
        #[cfg(target_arch = "x86_64")]
        if b.trans && m <= ROWS_IN_PASSES_MAX_M && isa == Isa::Avx512 {
            // Up to SMALL_M rows one pass over W; above, blocks of W's rows (small enough
            // to stay in L2 while every pass reads them), each met by the activation rows
            // SMALL_M at a time: W comes from memory once and is never packed.
            let block = if m <= SMALL_M {
                n
            } else {
                ROWS_IN_PASSES_BLOCK
            };
            for j0 in (0..n).step_by(block) {
                let w = block.min(n - j0);
                for i0 in (0..m).step_by(SMALL_M) {
                    let r = SMALL_M.min(m - i0);
                    small_t_avx512(
                        r,
                        w,
                        k,
                        a.add(i0 * lda),
                        lda,
                        b.at(0, j0),
                        c.add(i0 * ldc + j0),
                        ldc,
                    );
                }
            }
            add_bias(c);
            return;
        }
        if b.trans && m <= SMALL_M {
            for j0 in (0..n).step_by(4) {
                let w = 4.min(n - j0);
                for i in 0..m {
                    gemv(isa, w, k, a.add(i * lda), b.at(0, j0), c.add(i * ldc + j0));
                }
            }
            add_bias(c);
            return;
        }
        let run = |bufs: &mut PackBufs| blocked(isa, m, n, k, a, lda, b, bias, c, ldc, bufs);
        PACK.with(|cell| match cell.try_borrow_mut() {
            Ok(mut bufs) => run(&mut bufs),
            Err(_) => run(&mut PackBufs::default()),
        });
    }
}

/// Up to this many rows, row-major weights (x·Wᵀ; on AVX-512: f16 weights used in place from
/// a checkpoint, f32 with `BLIP2_CPU_PACK=0`) skip the packed GEMM: blocks of
/// [`ROWS_IN_PASSES_BLOCK`] weight rows meet the activations [`SMALL_M`] rows at a time
/// ([`small_t_avx512`]), W read from memory once and never packed. Four OPT-2.7B layers in
/// f16 from DRAM on a Zen 4, two threads, against the packed GEMM: 0.45× the time at 9 rows,
/// 0.52× at 16, 0.73× at 33, 0.95× at 64 (docs/performance.md).
const ROWS_IN_PASSES_MAX_M: usize = 64;
/// Weight rows per block of that path (32 rows of K = 2560 in f16: 160 KiB; 64 and 128 rows
/// measured the same).
const ROWS_IN_PASSES_BLOCK: usize = 32;

/// x·Wᵀ for 1 ≤ m ≤ [`SMALL_M`] rows on AVX-512: one pass over W for all rows.
///
/// # Safety
/// As [`gemm_serial`], with `b.trans` and AVX-512 present.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
unsafe fn small_t_avx512(
    m: usize,
    n: usize,
    k: usize,
    a: *const f32,
    lda: usize,
    b: MatB,
    c: *mut f32,
    ldc: usize,
) {
    use crate::x86::{gemm_small_t_f16_avx512 as h, gemm_small_t_f32_avx512 as f};
    macro_rules! rows {
        ($k:ident, $p:expr, $($m:literal)*) => {
            match m {
                $($m => $k::<$m>(k, a, lda, $p, b.ld, n, c, ldc),)*
                _ => unreachable!("m <= SMALL_M"),
            }
        };
    }
    // SAFETY: per the contract above.
    unsafe {
        match b.ptr {
            BPtr::F32(p) => rows!(f, p, 1 2 3 4 5 6 7 8),
            BPtr::F16(p) => rows!(h, p, 1 2 3 4 5 6 7 8),
        }
    }
}

#[allow(clippy::too_many_arguments)]
unsafe fn blocked(
    isa: Isa,
    m: usize,
    n: usize,
    k: usize,
    a: *const f32,
    lda: usize,
    b: MatB,
    bias: Option<*const f32>,
    c: *mut f32,
    ldc: usize,
    bufs: &mut PackBufs,
) {
    let g = cfg(isa);
    let kc_max = g.kc.min(k);
    let nc_max = g.nc.min(n.div_ceil(g.nr) * g.nr);
    let mc_max = g.mc.min(m.div_ceil(g.mr) * g.mr);
    let bp = aligned(&mut bufs.b, nc_max.div_ceil(g.nr) * g.nr * kc_max);
    let ap = aligned(&mut bufs.a, mc_max.div_ceil(g.mr) * g.mr * kc_max);
    // SAFETY: the caller's contract covers A, B, C and bias; the packed buffers were sized
    // for the largest block above.
    unsafe {
        if let Some(bias) = bias {
            // Start C at the bias so every K block accumulates.
            for i in 0..m {
                std::ptr::copy_nonoverlapping(bias, c.add(i * ldc), n);
            }
        }
        for jc in (0..n).step_by(g.nc) {
            let ncur = g.nc.min(n - jc);
            for pc in (0..k).step_by(g.kc) {
                let kcur = g.kc.min(k - pc);
                pack_b(isa, b.at(pc, jc), kcur, ncur, g.nr, bp, &mut bufs.row);
                let accumulate = pc > 0 || bias.is_some();
                for ic in (0..m).step_by(g.mc) {
                    let mcur = g.mc.min(m - ic);
                    pack_a(isa, a.add(ic * lda + pc), lda, mcur, kcur, g.mr, ap);
                    for jr in (0..ncur).step_by(g.nr) {
                        let cols = g.nr.min(ncur - jr);
                        for ir in (0..mcur).step_by(g.mr) {
                            let rows = g.mr.min(mcur - ir);
                            (g.ukr)(
                                kcur,
                                ap.add(ir * kcur),
                                bp.add(jr * kcur),
                                c.add((ic + ir) * ldc + jc + jr),
                                ldc,
                                rows,
                                cols,
                                accumulate,
                            );
                        }
                    }
                }
            }
        }
    }
}

/// The shared prologue of the packed-weight linear layers (`matmul_q`, `matmul_bf16`): the
/// operand-length asserts, and the products with nothing to sum (m or n zero; k zero gives
/// the bias). Returns true when C is complete.
#[allow(clippy::too_many_arguments)]
pub(crate) fn linear_trivial(
    op: &str,
    consistent: bool,
    a: &[f32],
    bias: Option<&[f32]>,
    c: &mut [f32],
    m: usize,
    k: usize,
    n: usize,
) -> bool {
    assert!(
        consistent && a.len() == m * k && c.len() == m * n,
        "{op}: operand lengths"
    );
    if let Some(b) = bias {
        assert_eq!(b.len(), n, "{op}: bias length");
    }
    if m == 0 || n == 0 {
        return true;
    }
    if k == 0 {
        for row in c.chunks_mut(n) {
            match bias {
                Some(b) => row.copy_from_slice(b),
                None => row.fill(0.0),
            }
        }
        return true;
    }
    false
}

/// C[m×n] = A[m×k]·Wᵀ (+ bias) for a W that is not f32 in memory (quantized, packed bf16):
/// `widen(r0, rows, out)` writes rows r0..r0+rows of W as row-major f32 into `out`, at most
/// `nb` rows at a time (r0 a multiple of `nb`), and each block goes through the packed f32
/// GEMM. Tasks take column ranges of at least `nb` (aligned to it) over the rayon pool.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul_widened(
    isa: Isa,
    threads: usize,
    a: &[f32],
    bias: Option<&[f32]>,
    c: &mut [f32],
    m: usize,
    k: usize,
    n: usize,
    nb: usize,
    widen: impl Fn(usize, usize, &mut [f32]) + Sync,
) {
    let tasks = if threads > 1 {
        threads.min(n.div_ceil(nb)).max(1)
    } else {
        1
    };
    let cptr = Shared(c.as_mut_ptr());
    let task = |t: usize| {
        let (j0, j1) = part(n, tasks, nb, t);
        if j0 >= j1 {
            return;
        }
        let mut scratch = vec![0f32; nb.min(j1 - j0) * k];
        for b0 in (j0..j1).step_by(nb) {
            let rows = nb.min(j1 - b0);
            widen(b0, rows, &mut scratch[..rows * k]);
            let mb = MatB {
                ptr: BPtr::F32(scratch.as_ptr()),
                ld: k,
                trans: true,
            };
            let c = cptr.get();
            // SAFETY: A is m×k, the scratch holds `rows` rows of k, C columns b0..b0+rows of
            // its m rows (stride n) belong to this task only; bias has n entries.
            unsafe {
                gemm_serial(
                    isa,
                    m,
                    rows,
                    k,
                    a.as_ptr(),
                    k,
                    mb,
                    bias.map(|b| b.as_ptr().add(b0)),
                    c.add(b0),
                    n,
                );
            }
        }
    };
    if tasks > 1 {
        (0..tasks).into_par_iter().for_each(task);
    } else {
        task(0);
    }
}

/// Rows per microkernel tile for `isa` (attention sizes its query blocks by it).
pub(crate) fn tile_rows(isa: Isa) -> usize {
    cfg(isa).mr
}

/// Splits `len` into `parts` ranges whose boundaries are multiples of `align`; returns part `i`.
pub(crate) fn part(len: usize, parts: usize, align: usize, i: usize) -> (usize, usize) {
    let units = len.div_ceil(align);
    let s = (i * units / parts * align).min(len);
    let e = ((i + 1) * units / parts * align).min(len);
    (s, e)
}

/// How many (row, column) parts to cut one m×n×k product into for `tasks` parallel tasks.
fn split(m: usize, n: usize, k: usize, tasks: usize, mr: usize) -> (usize, usize) {
    // Below ~1 M multiply-adds a rayon round trip costs more than it saves.
    if tasks <= 1 || m * n * k < (1 << 20) {
        return (1, 1);
    }
    if m == 1 {
        // GEMV: memory-bound, columns only, ≥ 64 per part.
        return (1, tasks.min(n.div_ceil(64)).max(1));
    }
    // Prefer column parts (each packs its own B block; A packing is cheap next to it), ≥ 128
    // columns each, then rows in multiples of 4 micro-panels.
    let pn = tasks.min(n.div_ceil(128)).max(1);
    let pm = tasks.div_ceil(pn).min(m.div_ceil(4 * mr)).max(1);
    (pm, pn)
}

pub(crate) fn resolve_threads(threads: usize) -> usize {
    if threads == 0 {
        rayon::current_num_threads()
    } else {
        threads
    }
}

/// Runs `batch` products (C_i = A_i·op(B_i) + bias) split into tiles over rayon.
///
/// # Safety
/// As [`gemm_serial`] for every batch item (A_i at `a + i·a_stride`, etc.).
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_parallel(
    isa: Isa,
    threads: usize,
    batch: usize,
    m: usize,
    n: usize,
    k: usize,
    a: *const f32,
    a_stride: usize,
    b: MatB,
    b_stride: usize,
    bias: Option<*const f32>,
    c: *mut f32,
    c_stride: usize,
) {
    let threads = resolve_threads(threads);
    let per_item = threads.div_ceil(batch.max(1));
    let mr = cfg(isa).mr;
    let (pm, pn) = split(m, n, k, if batch >= threads { 1 } else { per_item }, mr);
    let total = batch * pm * pn;
    let align_n = if m == 1 { 16 } else { cfg(isa).nr };
    let shared = Shared((a, b, bias, c));
    let task = move |t: usize| {
        let (a, b, bias, c) = shared.get();
        let (bi, rest) = (t / (pm * pn), t % (pm * pn));
        let (i0, i1) = part(m, pm, mr, rest / pn);
        let (j0, j1) = part(n, pn, align_n, rest % pn);
        if i0 >= i1 || j0 >= j1 {
            return;
        }
        // SAFETY: tiles are disjoint; offsets stay inside each batch item's matrices.
        unsafe {
            let bb = offset_b(b, bi * b_stride).at(0, j0);
            gemm_serial(
                isa,
                i1 - i0,
                j1 - j0,
                k,
                a.add(bi * a_stride + i0 * k),
                k,
                bb,
                bias.map(|p| p.add(j0)),
                c.add(bi * c_stride + i0 * n + j0),
                n,
            );
        }
    };
    if total <= 1 || threads <= 1 {
        (0..total).for_each(task);
    } else {
        (0..total).into_par_iter().for_each(task);
    }
}

/// Moves a B view by `off` elements of storage.
///
/// # Safety
/// The offset must stay inside the allocation.
unsafe fn offset_b(b: MatB, off: usize) -> MatB {
    // SAFETY: per the contract above.
    let ptr = unsafe {
        match b.ptr {
            BPtr::F32(p) => BPtr::F32(p.add(off)),
            BPtr::F16(p) => BPtr::F16(p.add(off)),
        }
    };
    MatB { ptr, ..b }
}

/// C[m×n] = A[m×k]·op(B) (+ `bias[n]` broadcast over rows). op(B) = Bᵀ when `b_trans` (B
/// stored [n×k], nn.Linear weights), else B stored [k×n]. f32 accumulation; f16 B is widened
/// while packing. Multi-threaded over the rayon global pool.
///
/// Preconditions (checked with `assert!`; the engine validates user shapes first):
/// `a.len() == m·k`, `b.len() == k·n`, `c.len() == m·n`, `bias.len() == n`.
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    a: &[f32],
    b: BSlice,
    bias: Option<&[f32]>,
    c: &mut [f32],
    m: usize,
    k: usize,
    n: usize,
    b_trans: bool,
) {
    matmul_with(isa(), 0, a, b, bias, c, m, k, n, b_trans)
}

/// [`matmul`] on a chosen instruction set and thread count: `threads` = 1 runs on the
/// calling thread, 0 uses every thread of the rayon pool, t > 1 splits the work into about t
/// tasks on the rayon pool.
#[allow(clippy::too_many_arguments)]
pub fn matmul_with(
    isa: Isa,
    threads: usize,
    a: &[f32],
    b: BSlice,
    bias: Option<&[f32]>,
    c: &mut [f32],
    m: usize,
    k: usize,
    n: usize,
    b_trans: bool,
) {
    assert!(
        a.len() == m * k && b.len() == k * n && c.len() == m * n,
        "matmul: operand lengths"
    );
    if let Some(bias) = bias {
        assert_eq!(bias.len(), n, "matmul: bias length");
    }
    let mb = MatB {
        ptr: b.ptr(),
        ld: if b_trans { k } else { n },
        trans: b_trans,
    };
    // SAFETY: lengths checked above; `c` is a unique borrow so it aliases nothing.
    unsafe {
        gemm_parallel(
            isa.resolve(),
            threads,
            1,
            m,
            n,
            k,
            a.as_ptr(),
            0,
            mb,
            0,
            bias.map(|s| s.as_ptr()),
            c.as_mut_ptr(),
            0,
        )
    }
}

/// Batched matmul: `a` [batch, m, k], `b` [batch, k, n] (or [batch, n, k] when `b_trans`),
/// `c` [batch, m, n]; parallel over batch items and output tiles.
///
/// Preconditions: `a.len() == batch·m·k`, `b.len() == batch·k·n`, `c.len() == batch·m·n`.
#[allow(clippy::too_many_arguments)]
pub fn batched_matmul(
    a: &[f32],
    b: BSlice,
    c: &mut [f32],
    batch: usize,
    m: usize,
    k: usize,
    n: usize,
    b_trans: bool,
) {
    batched_matmul_with(isa(), 0, a, b, c, batch, m, k, n, b_trans)
}

/// [`batched_matmul`] on a chosen instruction set and thread count (as [`matmul_with`]).
#[allow(clippy::too_many_arguments)]
pub fn batched_matmul_with(
    isa: Isa,
    threads: usize,
    a: &[f32],
    b: BSlice,
    c: &mut [f32],
    batch: usize,
    m: usize,
    k: usize,
    n: usize,
    b_trans: bool,
) {
    assert!(
        a.len() == batch * m * k && b.len() == batch * k * n && c.len() == batch * m * n,
        "batched_matmul: operand lengths"
    );
    let mb = MatB {
        ptr: b.ptr(),
        ld: if b_trans { k } else { n },
        trans: b_trans,
    };
    // SAFETY: lengths checked above; `c` is a unique borrow.
    unsafe {
        gemm_parallel(
            isa.resolve(),
            threads,
            batch,
            m,
            n,
            k,
            a.as_ptr(),
            m * k,
            mb,
            k * n,
            None,
            c.as_mut_ptr(),
            m * n,
        )
    }
}

/// A serial f32 matmul on raw row-major views, for other kernels of this crate (attention).
///
/// # Safety
/// As [`gemm_serial`].
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_rows(
    isa: Isa,
    m: usize,
    n: usize,
    k: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    ldb: usize,
    b_trans: bool,
    c: *mut f32,
    ldc: usize,
) {
    let mb = MatB {
        ptr: BPtr::F32(b),
        ld: ldb,
        trans: b_trans,
    };
    // SAFETY: forwarded contract.
    unsafe { gemm_serial(isa, m, n, k, a, lda, mb, None, c, ldc) }
}
