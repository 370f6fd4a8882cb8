//! f32 and f16 linear weights packed once, at load, in the layout the x86 GEMM microkernels
//! read (`PackedMatrix`), so that no call repacks, transposes or widens W.
//!
//! Layout: W is `rows × cols` (nn.Linear's `[out, in]`). Rows are cut into panels of
//! [`PANEL`] = 32 (zero-padded), and each panel is stored K-major: element (r, k) sits at
//! `(r / 32)·32·cols + k·32 + r % 32`. One K step of a panel is the 32 output columns of the
//! 14×32 microkernel's B operand (two zmm registers; f16 widened in registers; on AVX2 the
//! 6×16 microkernel reads each half), and a K range of a panel is one contiguous block, so
//! cache blocking needs no copy. The same panels feed the small-M path (decode: every
//! activation row against each panel in one pass).
//!
//! The AVX-512 and AVX2 kernels read the layout in place ([`packed_preferred`] says whether a
//! loader should pack); elsewhere (NEON, scalar) [`matmul_packed_with`] widens 256-row
//! blocks to row-major f32 per call and runs the ordinary f32 GEMM, so the format is correct
//! everywhere and its tests run on every ISA.

use half::f16;
use rayon::prelude::*;

use crate::gemm::{linear_trivial, matmul_widened, resolve_threads};
use crate::{Isa, isa};

/// Output rows (of W) per packed panel: the microkernel's register tile width.
pub const PANEL: usize = 32;

/// The element storage of a packed matrix.
#[derive(Clone, Copy, Debug)]
pub enum PackedData<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
}

impl PackedData<'_> {
    fn len(&self) -> usize {
        match self {
            PackedData::F32(s) => s.len(),
            PackedData::F16(s) => s.len(),
        }
    }
}

/// A `rows × cols` weight matrix in the packed panel layout (module docs).
#[derive(Clone, Copy, Debug)]
pub struct PackedMatrix<'a> {
    pub rows: usize,
    pub cols: usize,
    pub data: PackedData<'a>,
}

impl PackedMatrix<'_> {
    /// Whether the data length matches the shape.
    pub fn is_consistent(&self) -> bool {
        Some(self.data.len()) == checked_packed_len(self.rows, self.cols)
    }

    /// Row `r` as f32 (`out.len() == cols`).
    fn row_into(&self, r: usize, out: &mut [f32]) {
        let base = (r / PANEL) * PANEL * self.cols + r % PANEL;
        match self.data {
            PackedData::F32(d) => {
                for (p, o) in out.iter_mut().enumerate() {
                    *o = d[base + p * PANEL];
                }
            }
            PackedData::F16(d) => {
                for (p, o) in out.iter_mut().enumerate() {
                    *o = d[base + p * PANEL].to_f32();
                }
            }
        }
    }
}

/// Elements of the packed form of a `rows × cols` matrix (rows rounded up to a panel), or
/// `None` when that overflows `usize`.
pub fn checked_packed_len(rows: usize, cols: usize) -> Option<usize> {
    rows.div_ceil(PANEL).checked_mul(PANEL)?.checked_mul(cols)
}

/// `BLIP2_CPU_PACK`: `0` keeps row-major weights, `all` packs even those a loader could use
/// in place; anything else (or unset) is the default.
#[derive(Clone, Copy, PartialEq, Eq)]
enum PackSetting {
    Default,
    Off,
    All,
}

/// [`PackSetting`] from the environment, read once.
fn pack_setting() -> PackSetting {
    use std::sync::OnceLock;
    static SETTING: OnceLock<PackSetting> = OnceLock::new();
    *SETTING.get_or_init(
        || match std::env::var("BLIP2_CPU_PACK").as_deref().map(str::trim) {
            Ok("0") => PackSetting::Off,
            Ok("all") => PackSetting::All,
            _ => PackSetting::Default,
        },
    )
}

/// Whether a loader should pack f32/f16 linear weights for this process: the detected ISA
/// reads the layout in place (AVX-512, AVX2), and `BLIP2_CPU_PACK=0` has not turned it off.
pub fn packed_preferred() -> bool {
    matches!(isa(), Isa::Avx512 | Isa::Avx2Fma) && pack_setting() != PackSetting::Off
}

/// Whether weights a loader could use in place from a mapped checkpoint (f16 loaded as f16)
/// are packed too: `BLIP2_CPU_PACK=all`, where packing is preferred at all. Off by default,
/// since the copy makes the load slower (the pages it needs are zeroed by the kernel) while
/// in place the pages are shared and read straight from the page cache; on, the prefill and
/// batched decode run on panels (docs/cpu.md).
pub fn packed_in_place_too() -> bool {
    packed_preferred() && pack_setting() == PackSetting::All
}

/// Packs row-major `w` (`rows × cols`) into `out` (`checked_packed_len(rows, cols)`
/// elements), panels in parallel. Padding rows are written as `T::default()` (zero).
///
/// Preconditions (asserted): the lengths above.
pub fn pack_linear<T: Copy + Default + Send + Sync>(
    w: &[T],
    rows: usize,
    cols: usize,
    out: &mut [T],
) {
    assert_eq!(w.len(), rows * cols, "pack_linear: operand lengths");
    pack_linear_with(rows, cols, out, |r, c, run| {
        run.copy_from_slice(&w[r * cols + c..r * cols + c + run.len()])
    })
}

/// [`pack_linear`] from a source given by `fill(row, col, run)`, which writes elements
/// `col .. col + run.len()` of row `row` (at most 64 at a time) into `run`: a checkpoint's
/// f16 matrix becomes f32 panels as it is converted, in one pass and one allocation.
pub fn pack_linear_with<T: Copy + Default + Send + Sync>(
    rows: usize,
    cols: usize,
    out: &mut [T],
    fill: impl Fn(usize, usize, &mut [T]) + Sync,
) {
    assert!(
        Some(out.len()) == checked_packed_len(rows, cols),
        "pack_linear: operand lengths"
    );
    if cols == 0 {
        return;
    }
    // 64 K steps × 32 rows per block: the block (8 KiB of f32) stays in L1 while the 32
    // source rows are read sequentially.
    const KB: usize = 64;
    out.par_chunks_mut(PANEL * cols)
        .enumerate()
        .for_each(|(q, panel)| {
            let r0 = q * PANEL;
            let live = PANEL.min(rows - r0);
            let mut run = [T::default(); KB];
            for p0 in (0..cols).step_by(KB) {
                let p1 = (p0 + KB).min(cols);
                for j in 0..PANEL {
                    if j < live {
                        let run = &mut run[..p1 - p0];
                        fill(r0 + j, p0, run);
                        for (i, &v) in run.iter().enumerate() {
                            panel[(p0 + i) * PANEL + j] = v;
                        }
                    } else {
                        for p in p0..p1 {
                            panel[p * PANEL + j] = T::default();
                        }
                    }
                }
            }
        });
}

/// Row `r` of a packed matrix as f32 (`out.len() == w.cols`): an embedding lookup.
///
/// Preconditions (asserted): consistent, `r < rows`.
pub fn unpack_packed_row(w: &PackedMatrix, r: usize, out: &mut [f32]) {
    assert!(
        w.is_consistent() && r < w.rows && out.len() == w.cols,
        "unpack_packed_row: operands"
    );
    w.row_into(r, out);
}

/// The whole matrix as row-major f32 (`out.len() == rows·cols`).
///
/// Preconditions (asserted): consistent, the length above.
pub fn unpack_packed(w: &PackedMatrix, out: &mut [f32]) {
    assert!(
        w.is_consistent() && out.len() == w.rows * w.cols,
        "unpack_packed: operands"
    );
    if w.cols == 0 {
        return;
    }
    out.par_chunks_mut(w.cols)
        .enumerate()
        .for_each(|(r, o)| w.row_into(r, o));
}

/// C[m×rows] = A[m×cols]·Wᵀ (+ bias) for a packed W, multi-threaded over the rayon pool.
///
/// Preconditions (asserted; the engine validates user shapes first): `w.is_consistent()`,
/// `a.len() == m·w.cols`, `c.len() == m·w.rows`, `bias.len() == w.rows`.
///
/// Where [`crate::split_applies`] (f16 weights on a CPU with AMX, from 48 rows) this is the
/// split bf16 path ([`crate::matmul_packed_split_with`], reduced precision: each product
/// within 2^-15 of its magnitude); otherwise the f32 path of [`matmul_packed_with`].
pub fn matmul_packed(a: &[f32], w: &PackedMatrix, bias: Option<&[f32]>, c: &mut [f32], m: usize) {
    if crate::split_applies(w, m) && crate::matmul_packed_split_with(0, a, w, bias, c, m) {
        return;
    }
    matmul_packed_with(isa(), 0, a, w, bias, c, m)
}

/// [`matmul_packed`]'s f32 path (f32 products and sums, never the split bf16 one) on a
/// chosen instruction set and thread count (0 = the whole rayon pool, 1 = the calling
/// thread).
#[allow(clippy::too_many_arguments)]
pub fn matmul_packed_with(
    isa: Isa,
    threads: usize,
    a: &[f32],
    w: &PackedMatrix,
    bias: Option<&[f32]>,
    c: &mut [f32],
    m: usize,
) {
    let (n, k) = (w.rows, w.cols);
    if linear_trivial("matmul_packed", w.is_consistent(), a, bias, c, m, k, n) {
        return;
    }
    let isa = isa.resolve();
    let threads = resolve_threads(threads);
    #[cfg(target_arch = "x86_64")]
    if matches!(isa, Isa::Avx512 | Isa::Avx2Fma) {
        return crate::x86_packed::matmul_packed_x86(isa, threads, a, w, bias, c, m);
    }
    // Other ISAs: widen 256-row blocks to row-major f32 and use their GEMM.
    matmul_widened(
        isa,
        threads,
        a,
        bias,
        c,
        m,
        k,
        n,
        8 * PANEL,
        |r0, rows, out| {
            for (i, o) in out.chunks_exact_mut(k).take(rows).enumerate() {
                w.row_into(r0 + i, o);
            }
        },
    );
}
