//! Intel AMX (Advanced Matrix Extensions) for the bf16 linear layer: tile configuration,
//! Linux's tile-state permission, and one 32×32 output block of `tdpbf16ps`.
//!
//! Rust has no stable AMX intrinsics, so the instructions are inline assembly. Tile
//! registers are not known to the compiler: they are configured, used and released inside
//! one task on one thread ([`configure`] … [`release`]), and nothing else in the process
//! touches them.

use std::arch::asm;

/// Output scratch of one 32×32 block (row stride 32 floats).
#[repr(C, align(64))]
pub(crate) struct Tile32(pub [f32; 32 * 32]);

impl Default for Tile32 {
    fn default() -> Self {
        Tile32([0.0; 32 * 32])
    }
}

/// The 64-byte tile configuration: palette 1, tiles 0–7 all 16 rows × 64 bytes.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

const TILE_CONFIG: TileConfig = {
    let mut c = [0u8; 64];
    c[0] = 1;
    let mut t = 0;
    while t < 8 {
        c[16 + 2 * t] = 64; // bytes per row
        c[48 + t] = 16; // rows
        t += 1;
    }
    TileConfig(c)
};

/// CPU support (CPUID.7.0:EDX bits 22 AMX-BF16 and 24 AMX-TILE) and the kernel's permission
/// for the tile data state (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`, which
/// fails on kernels or VMs without AMX support).
pub(crate) fn enable() -> bool {
    let max_leaf = std::arch::x86_64::__cpuid(0).eax;
    if max_leaf < 7 {
        return false;
    }
    let edx = std::arch::x86_64::__cpuid_count(7, 0).edx;
    if edx & (1 << 22) == 0 || edx & (1 << 24) == 0 {
        return false;
    }
    const SYS_ARCH_PRCTL: i64 = 158;
    const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
    const XFEATURE_XTILEDATA: i64 = 18;
    let ret: i64;
    // SAFETY: a plain Linux system call; it only changes this process's permitted xsave
    // features. rcx and r11 are clobbered by `syscall`.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") SYS_ARCH_PRCTL => ret,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret == 0
}

/// Whether the CPU also has AMX-INT8 (CPUID.7.0:EDX bit 25), for `amx_qint8.rs`; the tile
/// state is granted by [`enable`].
pub(crate) fn has_int8() -> bool {
    std::arch::x86_64::__cpuid(0).eax >= 7
        && std::arch::x86_64::__cpuid_count(7, 0).edx & (1 << 25) != 0
}

/// Loads the int8 tile configuration for `m` (1..=16) activation rows: tmm0–1 the two
/// 16-column i32 accumulators (m rows × 64 bytes), tmm2 A (m rows × one 32-byte block),
/// tmm3–4 the two B tiles (8 rows of 16 quads).
///
/// # Safety
/// AMX-INT8 must be available ([`enable`] returned true and [`has_int8`]); 1 ≤ m ≤ 16.
pub(crate) unsafe fn configure_int8(m: usize) {
    debug_assert!((1..=16).contains(&m));
    let mut c = TileConfig([0; 64]);
    c.0[0] = 1;
    for (t, (colsb, rows)) in [(64, m), (64, m), (32, m), (64, 8), (64, 8)]
        .into_iter()
        .enumerate()
    {
        c.0[16 + 2 * t] = colsb as u8;
        c.0[48 + t] = rows as u8;
    }
    // SAFETY: per the contract; the config is a valid palette-1 configuration.
    unsafe { asm!("ldtilecfg [{0}]", in(reg) c.0.as_ptr(), options(nostack)) }
}

/// One quantization block of the int8 path: c[0..m×16] = A·B0 and c[256..] = A·B1 in
/// exact i32 sums, A the m activation rows' 32 bytes of this block (`a`, row stride
/// `a_stride` bytes), B0/B1 the 8-row quad tiles at `b` and `b + 512`.
///
/// # Safety
/// [`configure_int8`] was called on this thread with this m; `a` is readable for m rows of
/// 32 bytes at its stride, `b` for 1024 bytes, `c` writable for 512 values.
#[inline(always)]
pub(crate) unsafe fn int8_block(a: *const i8, a_stride: usize, b: *const u8, c: *mut i32) {
    // SAFETY: per the contract.
    unsafe {
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tileloadd tmm2, [{a} + {sa}*1]",
            "tileloadd tmm3, [{b0} + {s64}*1]",
            "tileloadd tmm4, [{b1} + {s64}*1]",
            "tdpbssd tmm0, tmm2, tmm3",
            "tdpbssd tmm1, tmm2, tmm4",
            "tilestored [{c0} + {s64}*1], tmm0",
            "tilestored [{c1} + {s64}*1], tmm1",
            a = in(reg) a,
            sa = in(reg) a_stride,
            b0 = in(reg) b,
            b1 = in(reg) b.add(512),
            c0 = in(reg) c,
            c1 = in(reg) c.add(256),
            s64 = in(reg) 64usize,
            options(nostack),
        );
    }
}

/// Bytes ahead of the current B tiles that [`prefetch_b`] requests. At OPT-2.7B's fc1 with
/// 33 rows (prefill; `gemv_stream` example, 2026-12-05) it took 3.4–3.7 ms against 4.0
/// without; 2 and 8 KiB were no better.
const B_PREFETCH: usize = 4096;

/// Prefetches the B tiles a few steps ahead (one KiB per step and block: 16 lines each).
/// With few rows of A (prefill, batched decode) W streams from memory, and a tile load that
/// misses stalls the tile unit for the whole DRAM latency.
#[inline(always)]
fn prefetch_b(b0: *const u8, b1: *const u8) {
    use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
    for l in 0..16 {
        // SAFETY: SSE is baseline on x86-64, and a prefetch never faults, even past the end
        // of the matrix.
        unsafe {
            _mm_prefetch::<_MM_HINT_T0>(b0.wrapping_add(B_PREFETCH + 64 * l) as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(b1.wrapping_add(B_PREFETCH + 64 * l) as *const i8);
        }
    }
}

/// The most lines of [`Ahead`] one K step requests. Where a pair's next weights would need
/// more (few row blocks left to spread them over: 33 and 64 rows, 32 lines a step), the
/// requests competed with the current tiles' loads: bf16 layers 1.05–1.15× slower at those
/// rows, and a 33-token bf16 prefill 1.09×. The ViT's 257 rows take 4 a step.
pub(crate) const AHEAD_MAX_PER_STEP: usize = 8;

/// Lines of the weights the walk reads next (the following pair of W blocks, or the
/// source a conversion reads for it), requested into L2 a few per K step while the current
/// pair's B tiles are reused from cache: `rows` runs of `row_lines` 64-byte lines, `stride`
/// bytes apart. Without it the first row block of every pair waits on W from memory. At
/// the ViT's 257 rows (a layer's four matrices, `linear_vit`-style probe, 5 alternated
/// rounds, 2026-12-07) it took the bf16 weights 0.95× and the split f16 ones 0.91× the
/// time; q8 (32 row streams of its own) 0.99×. At most [`AHEAD_MAX_PER_STEP`] lines a step.
#[derive(Clone, Copy)]
pub(crate) struct Ahead {
    base: *const u8,
    stride: usize,
    row_lines: usize,
    rows: usize,
    row: usize,
    line: usize,
}

impl Ahead {
    /// Nothing to prefetch.
    pub(crate) const NONE: Ahead = Ahead {
        base: std::ptr::null(),
        stride: 0,
        row_lines: 0,
        rows: 0,
        row: 0,
        line: 0,
    };

    /// `rows` runs of `bytes` bytes (rounded up to whole lines), `stride` bytes apart, from
    /// `base`.
    pub(crate) fn new(base: *const u8, rows: usize, bytes: usize, stride: usize) -> Ahead {
        Ahead {
            base,
            stride,
            row_lines: bytes.div_ceil(64),
            rows,
            row: 0,
            line: 0,
        }
    }

    /// Lines not yet requested.
    pub(crate) fn left(&self) -> usize {
        if self.row >= self.rows {
            0
        } else {
            (self.rows - self.row) * self.row_lines - self.line
        }
    }

    /// Requests the next `n` lines into L2 (`prefetcht1`).
    #[inline(always)]
    fn request(&mut self, n: usize) {
        use std::arch::x86_64::{_MM_HINT_T1, _mm_prefetch};
        for _ in 0..n {
            if self.row >= self.rows {
                return;
            }
            let p = self
                .base
                .wrapping_add(self.row * self.stride + self.line * 64);
            // SAFETY: a prefetch never faults.
            unsafe { _mm_prefetch::<_MM_HINT_T1>(p as *const i8) };
            self.line += 1;
            if self.line == self.row_lines {
                self.line = 0;
                self.row += 1;
            }
        }
    }
}

/// Loads the tile configuration on the calling thread.
///
/// # Safety
/// AMX must be available ([`enable`] returned true).
pub(crate) unsafe fn configure() {
    // SAFETY: per the contract; the config is a valid palette-1 configuration.
    unsafe { asm!("ldtilecfg [{0}]", in(reg) TILE_CONFIG.0.as_ptr(), options(nostack)) }
}

/// Releases the tile state of the calling thread.
///
/// # Safety
/// As [`configure`].
pub(crate) unsafe fn release() {
    // SAFETY: per the contract.
    unsafe { asm!("tilerelease", options(nostack, nomem)) }
}

/// Where a 32×32 output block lives: `ptr` to its first value, `stride` bytes from one row
/// to the next (128 for a [`Tile32`], `4·n` for a block of the output matrix itself).
#[derive(Clone, Copy)]
pub(crate) struct Out {
    pub ptr: *mut f32,
    pub stride: usize,
}

impl Out {
    pub(crate) fn tile(t: &mut Tile32) -> Out {
        Out {
            ptr: t.0.as_mut_ptr(),
            stride: 128,
        }
    }
}

/// Starts the accumulator tiles of a block of `rows` (16: tmm0–1, 32: tmm0–3) from `out`
/// (`accumulate`) or from zero.
///
/// # Safety
/// [`configure`] was called on this thread; with `accumulate`, `out` is readable for `rows`
/// rows of 32 floats.
#[inline(always)]
unsafe fn start_acc(out: Out, rows: usize, accumulate: bool) {
    let (o, s) = (out.ptr as *const u8, out.stride);
    // SAFETY: per the contract: 16-row quarters of 64 bytes at the block's stride.
    unsafe {
        let (o1, o2, o3) = (o.add(64), o.add(16 * s), o.add(16 * s + 64));
        match (accumulate, rows > 16) {
            (true, true) => asm!(
                "tileloadd tmm0, [{o} + {s}*1]",
                "tileloadd tmm1, [{o1} + {s}*1]",
                "tileloadd tmm2, [{o2} + {s}*1]",
                "tileloadd tmm3, [{o3} + {s}*1]",
                o = in(reg) o,
                o1 = in(reg) o1,
                o2 = in(reg) o2,
                o3 = in(reg) o3,
                s = in(reg) s,
                options(nostack, readonly),
            ),
            (true, false) => asm!(
                "tileloadd tmm0, [{o} + {s}*1]",
                "tileloadd tmm1, [{o1} + {s}*1]",
                o = in(reg) o,
                o1 = in(reg) o1,
                s = in(reg) s,
                options(nostack, readonly),
            ),
            (false, true) => asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                options(nostack, nomem)
            ),
            (false, false) => asm!("tilezero tmm0", "tilezero tmm1", options(nostack, nomem)),
        }
    }
}

/// Stores the accumulator tiles of a block of `rows` (as [`start_acc`]) to `out`.
///
/// # Safety
/// [`configure`] was called on this thread; `out` is writable for `rows` rows of 32 floats.
#[inline(always)]
unsafe fn store_acc(out: Out, rows: usize) {
    let (o, s) = (out.ptr as *mut u8, out.stride);
    // SAFETY: per the contract, as in start_acc.
    unsafe {
        let o1 = o.add(64);
        asm!(
            "tilestored [{o} + {s}*1], tmm0",
            "tilestored [{o1} + {s}*1], tmm1",
            o = in(reg) o,
            o1 = in(reg) o1,
            s = in(reg) s,
            options(nostack),
        );
        if rows > 16 {
            let (o2, o3) = (o.add(16 * s), o.add(16 * s + 64));
            asm!(
                "tilestored [{o2} + {s}*1], tmm2",
                "tilestored [{o3} + {s}*1], tmm3",
                o2 = in(reg) o2,
                o3 = in(reg) o3,
                s = in(reg) s,
                options(nostack),
            );
        }
    }
}

/// out[32×32] (+)= A[32 rows × 32·steps]·B where A is two 16-row blocks of tiles (each K
/// step one contiguous 16×32 bf16 tile; the second block `a1_off` values after the first)
/// and B is two packed 16-row blocks of W starting at the same K (the second `b1_off` values
/// after the first): tiles 0–3 accumulate the four 16×16 quarters, 4–5 hold A's two row
/// tiles, 6–7 B's two column tiles. With `accumulate` the quarters start from `out`,
/// otherwise from zero.
///
/// With `SPLIT` (split operands, `amx_split.rs`) each K step is two tiles of A (xh then
/// xl) and two of each B block (wh then wl), and the step adds xh·wh, xh·wl and xl·wh in
/// that order: 10 tile loads for 12 products, where the same three terms laid out as
/// three K steps take 12 (tile loads, not products, bound this loop).
///
/// Each K step also requests `per_step` lines of `ahead` into L2 (the walk's next weights).
///
/// # Safety
/// [`configure`] was called on this thread; `a`, `a + a1_off`, `b` and `b + b1_off` are each
/// valid for 512·steps values (1024·steps with `SPLIT`); `out` is 32 rows of 32 floats,
/// writable (and readable with `accumulate`), that no other thread touches.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn block_32x32<const SPLIT: bool>(
    a: *const u16,
    a1_off: usize,
    b: *const u16,
    b1_off: usize,
    steps: usize,
    accumulate: bool,
    out: Out,
    ahead: &mut Ahead,
    per_step: usize,
) {
    // KiB tiles of A and of each B block per K step.
    let step_bytes = if SPLIT { 2048 } else { 1024 };
    // SAFETY: per the contract: every load stays inside A's two blocks and B's two, and
    // the quarters of `out` are 16 rows of 64 bytes at its stride.
    unsafe {
        start_acc(out, 32, accumulate);
        let mut a0 = a as *const u8;
        let mut a1 = a0.add(a1_off * 2);
        let mut b0 = b as *const u8;
        let mut b1 = b0.add(b1_off * 2);
        for _ in 0..steps {
            prefetch_b(b0, b1);
            ahead.request(per_step);
            // xh·wh (the only term without SPLIT); the tiles stay loaded for the next asm
            // block (the compiler never touches tile registers).
            asm!(
                "tileloadd tmm4, [{a0} + {s64}*1]",
                "tileloadd tmm6, [{b0} + {s64}*1]",
                "tileloadd tmm5, [{a1} + {s64}*1]",
                "tileloadd tmm7, [{b1} + {s64}*1]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                a0 = in(reg) a0,
                a1 = in(reg) a1,
                b0 = in(reg) b0,
                b1 = in(reg) b1,
                s64 = in(reg) 64usize,
                options(nostack, readonly),
            );
            if SPLIT {
                // xh·wl, then xl·wh.
                asm!(
                    "tileloadd tmm6, [{b0} + {s64}*1 + 1024]",
                    "tileloadd tmm7, [{b1} + {s64}*1 + 1024]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    "tileloadd tmm4, [{a0} + {s64}*1 + 1024]",
                    "tileloadd tmm6, [{b0} + {s64}*1]",
                    "tileloadd tmm5, [{a1} + {s64}*1 + 1024]",
                    "tileloadd tmm7, [{b1} + {s64}*1]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    a0 = in(reg) a0,
                    a1 = in(reg) a1,
                    b0 = in(reg) b0,
                    b1 = in(reg) b1,
                    s64 = in(reg) 64usize,
                    options(nostack, readonly),
                );
            }
            a0 = a0.add(step_bytes);
            a1 = a1.add(step_bytes);
            b0 = b0.add(step_bytes);
            b1 = b1.add(step_bytes);
        }
        store_acc(out, 32);
    }
}

/// [`block_32x32`] for 16 rows of A (the top half of `out`): one A tile (with `SPLIT`, the
/// xh and xl tiles) against the two B blocks, for batches of a few rows and the last rows
/// of a larger M.
///
/// # Safety
/// As [`block_32x32`], with `a` valid for 16 rows and `out` for 16.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn block_16x32<const SPLIT: bool>(
    a: *const u16,
    a1_off: usize,
    b: *const u16,
    b1_off: usize,
    steps: usize,
    accumulate: bool,
    out: Out,
    ahead: &mut Ahead,
    per_step: usize,
) {
    let _ = a1_off;
    let step_bytes = if SPLIT { 2048 } else { 1024 };
    // SAFETY: as in block_32x32, for A's first block and `out`'s first 16 rows.
    unsafe {
        start_acc(out, 16, accumulate);
        let mut a0 = a as *const u8;
        let mut b0 = b as *const u8;
        let mut b1 = b0.add(b1_off * 2);
        for _ in 0..steps {
            prefetch_b(b0, b1);
            ahead.request(per_step);
            // xh·wh, then with SPLIT xh·wl and xl·wh (as in block_32x32).
            asm!(
                "tileloadd tmm4, [{a0} + {s64}*1]",
                "tileloadd tmm6, [{b0} + {s64}*1]",
                "tileloadd tmm7, [{b1} + {s64}*1]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm1, tmm4, tmm7",
                a0 = in(reg) a0,
                b0 = in(reg) b0,
                b1 = in(reg) b1,
                s64 = in(reg) 64usize,
                options(nostack, readonly),
            );
            if SPLIT {
                asm!(
                    "tileloadd tmm6, [{b0} + {s64}*1 + 1024]",
                    "tileloadd tmm7, [{b1} + {s64}*1 + 1024]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tileloadd tmm4, [{a0} + {s64}*1 + 1024]",
                    "tileloadd tmm6, [{b0} + {s64}*1]",
                    "tileloadd tmm7, [{b1} + {s64}*1]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    a0 = in(reg) a0,
                    b0 = in(reg) b0,
                    b1 = in(reg) b1,
                    s64 = in(reg) 64usize,
                    options(nostack, readonly),
                );
            }
            a0 = a0.add(step_bytes);
            b0 = b0.add(step_bytes);
            b1 = b1.add(step_bytes);
        }
        store_acc(out, 16);
    }
}

/// Values `k0 .. k0 + 32` of `src` as two vectors of 16 (zeros past its end): one K step of
/// a row of A for the tile conversions.
///
/// # Safety
/// The CPU has AVX512-F.
#[inline]
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn load_step(
    src: &[f32],
    k0: usize,
) -> (std::arch::x86_64::__m512, std::arch::x86_64::__m512) {
    use std::arch::x86_64::*;
    let len = src.len().saturating_sub(k0).min(32);
    let m0 = if len >= 16 {
        0xffff
    } else {
        ((1u32 << len) - 1) as u16
    };
    let m1 = if len >= 32 {
        0xffff
    } else {
        ((1u32 << len.max(16)) >> 16) as u16 - 1
    };
    let p = src.as_ptr().wrapping_add(k0);
    // SAFETY: the masked loads read only src[k0..k0 + len] (an address past the end is
    // never touched when its mask is empty).
    unsafe {
        (
            _mm512_maskz_loadu_ps(m0, p),
            _mm512_maskz_loadu_ps(m1, p.wrapping_add(16)),
        )
    }
}

/// Rounds one row of A (`src`, at most `kp` values) to bf16 into its tile slots: K step s
/// (32 values) at `dst[s·512..s·512 + 32]`, zeros past `src.len()` up to `kp` (a multiple of
/// 32). `vcvtne2ps2bf16` rounds to nearest even as the portable rounding does, except that
/// it takes denormal inputs as zero, which `tdpbf16ps` does with them anyway.
///
/// # Safety
/// The CPU has AVX512-F/BW and AVX512-BF16; `dst` holds `(kp / 32 - 1)·512 + 32` values and
/// `src.len() <= kp`.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub(crate) unsafe fn round_row_to_tiles(src: &[f32], kp: usize, dst: &mut [u16]) {
    use std::arch::x86_64::*;
    debug_assert!(src.len() <= kp && dst.len() >= (kp / 32 - 1) * 512 + 32);
    for st in 0..kp / 32 {
        // SAFETY: per the contract; the store writes dst's 32 slots of step st.
        unsafe {
            let (x0, x1) = load_step(src, st * 32);
            let r: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(x1, x0));
            _mm512_storeu_si512(dst.as_mut_ptr().add(st * 512) as *mut __m512i, r);
        }
    }
}
