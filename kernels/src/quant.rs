//! Block-quantized weight matrices (`q8`, `q4`): the format, quantization and dequantization,
//! and x·Wᵀ with a quantized W.
//!
//! A matrix is quantized row by row (W is `[rows, cols]`, nn.Linear layout, blocks run along
//! `cols` = the dot-product axis). Each row is cut into blocks of [`QBLOCK`] = 32 values; a
//! row whose length is not a multiple of 32 is zero-padded to whole blocks, so every row
//! starts on a block. Each block has one f16 scale `d`:
//!
//! * `q8` (Q8_0-like): 32 signed bytes, value = d·q, d = max|x|/127, q = round(x/d) in
//!   [-127, 127]. 34 bytes per 32 weights = 8.5 bits per weight.
//! * `q4` (Q4_0-like): 16 bytes, byte i holds value i in its low nibble and value i+16 in its
//!   high nibble, value = d·(q − 8), d = −m/8 where m is the value of largest magnitude (so
//!   it maps exactly to q = 0), q = round(x/d) + 8 clamped to [0, 15]. 18 bytes per 32
//!   weights = 4.5 bits per weight.
//!
//! Scales and quants are separate arrays (`scales[row·blocks + b]`, `qs[row·row_bytes + ..]`)
//! so SIMD loads of the quants stay aligned to their block and the scales can be read as one
//! f16 vector. `q` is computed from the f16-rounded scale, so dequantization reproduces
//! exactly the values the rounding chose.

use half::f16;
use rayon::prelude::*;

use crate::gemm::{linear_trivial, matmul_widened, resolve_threads};
use crate::{Isa, isa};

/// Values per quantization block.
pub const QBLOCK: usize = 32;

/// A block-quantized format (see the module documentation for the layouts).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QFormat {
    /// 8-bit signed values, one f16 scale per 32.
    Q8,
    /// 4-bit values with offset 8, one f16 scale per 32.
    Q4,
}

impl QFormat {
    /// Bytes of quantized values per block.
    pub const fn block_bytes(self) -> usize {
        match self {
            QFormat::Q8 => QBLOCK,
            QFormat::Q4 => QBLOCK / 2,
        }
    }

    /// Blocks per row of `cols` values (the last one zero-padded).
    pub const fn row_blocks(cols: usize) -> usize {
        cols.div_ceil(QBLOCK)
    }

    /// Bytes of quantized values per row of `cols` values.
    pub const fn row_bytes(self, cols: usize) -> usize {
        Self::row_blocks(cols) * self.block_bytes()
    }

    /// Storage bits per weight, scales included (for a row length that is a multiple of 32).
    pub const fn bits_per_weight(self) -> f64 {
        ((self.block_bytes() + 2) * 8) as f64 / QBLOCK as f64
    }

    /// Lower-case name (`q8`, `q4`).
    pub const fn name(self) -> &'static str {
        match self {
            QFormat::Q8 => "q8",
            QFormat::Q4 => "q4",
        }
    }
}

/// A borrowed quantized matrix `[rows, cols]`.
#[derive(Clone, Copy, Debug)]
pub struct QMatrix<'a> {
    pub format: QFormat,
    pub rows: usize,
    pub cols: usize,
    /// `rows · format.row_bytes(cols)` bytes.
    pub qs: &'a [u8],
    /// `rows · row_blocks(cols)` scales.
    pub scales: &'a [f16],
}

impl QMatrix<'_> {
    /// Whether the arrays have the lengths the shape implies.
    pub fn is_consistent(&self) -> bool {
        self.rows.checked_mul(self.format.row_bytes(self.cols)) == Some(self.qs.len())
            && self.rows.checked_mul(QFormat::row_blocks(self.cols)) == Some(self.scales.len())
    }

    fn row(&self, j: usize) -> (&[u8], &[f16]) {
        let (rb, nb) = (
            self.format.row_bytes(self.cols),
            QFormat::row_blocks(self.cols),
        );
        (
            &self.qs[j * rb..(j + 1) * rb],
            &self.scales[j * nb..(j + 1) * nb],
        )
    }
}

/// The f16 scale of one block and, for it, the quantized bytes (`out`, block_bytes long).
fn quantize_block(format: QFormat, x: &[f32], out: &mut [u8]) -> f16 {
    // `x` may be shorter than a block (the row's tail); the rest counts as zeros.
    match format {
        QFormat::Q8 => {
            let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = f16::from_f32(amax / 127.0);
            let df = d.to_f32();
            let inv = if df > 0.0 { 1.0 / df } else { 0.0 };
            for (i, o) in out.iter_mut().enumerate() {
                let v = x.get(i).copied().unwrap_or(0.0);
                *o = ((v * inv).round().clamp(-127.0, 127.0) as i8) as u8;
            }
            d
        }
        QFormat::Q4 => {
            let m = x
                .iter()
                .fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
            let d = f16::from_f32(m / -8.0);
            let df = d.to_f32();
            let inv = if df != 0.0 { 1.0 / df } else { 0.0 };
            let q = |i: usize| {
                let v = x.get(i).copied().unwrap_or(0.0);
                ((v * inv).round() + 8.0).clamp(0.0, 15.0) as u8
            };
            for (i, o) in out.iter_mut().enumerate() {
                *o = q(i) | (q(i + QBLOCK / 2) << 4);
            }
            d
        }
    }
}

/// Quantizes one row of `cols = src.len()` values into `qs` (row_bytes) and `scales`
/// (row_blocks).
pub fn quantize_row(format: QFormat, src: &[f32], qs: &mut [u8], scales: &mut [f16]) {
    let bb = format.block_bytes();
    assert!(
        qs.len() == format.row_bytes(src.len()) && scales.len() == QFormat::row_blocks(src.len()),
        "quantize_row: output lengths"
    );
    for (b, (q, s)) in qs.chunks_exact_mut(bb).zip(scales.iter_mut()).enumerate() {
        let x = &src[b * QBLOCK..((b + 1) * QBLOCK).min(src.len())];
        *s = quantize_block(format, x, q);
    }
}

/// Quantizes `src` `[rows, cols]` (parallel over rows) into `qs` and `scales` sized as
/// [`QMatrix`] describes.
pub fn quantize_rows(
    format: QFormat,
    src: &[f32],
    rows: usize,
    cols: usize,
    qs: &mut [u8],
    scales: &mut [f16],
) {
    let (rb, nb) = (format.row_bytes(cols), QFormat::row_blocks(cols));
    assert!(
        src.len() == rows * cols && qs.len() == rows * rb && scales.len() == rows * nb,
        "quantize_rows: lengths"
    );
    if rows == 0 || cols == 0 {
        return;
    }
    qs.par_chunks_mut(rb)
        .zip(scales.par_chunks_mut(nb))
        .zip(src.par_chunks(cols))
        .with_min_len(16)
        .for_each(|((q, s), x)| quantize_row(format, x, q, s));
}

/// The value of element `i` of a block.
#[inline(always)]
fn block_value(format: QFormat, q: &[u8], d: f32, i: usize) -> f32 {
    match format {
        QFormat::Q8 => d * (q[i] as i8) as f32,
        QFormat::Q4 => {
            let h = QBLOCK / 2;
            let nib = if i < h { q[i] & 15 } else { q[i - h] >> 4 };
            d * (nib as i32 - 8) as f32
        }
    }
}

/// Dequantizes one row (`out.len()` = cols values) from its bytes and scales (portable).
pub fn dequantize_row(format: QFormat, qs: &[u8], scales: &[f16], out: &mut [f32]) {
    let bb = format.block_bytes();
    for (b, chunk) in out.chunks_mut(QBLOCK).enumerate() {
        let q = &qs[b * bb..(b + 1) * bb];
        let d = scales[b].to_f32();
        for (i, o) in chunk.iter_mut().enumerate() {
            *o = block_value(format, q, d, i);
        }
    }
}

/// Dequantizes a whole matrix into `out` (`rows·cols` floats, row-major), parallel over rows.
pub fn dequantize(w: &QMatrix, out: &mut [f32]) {
    assert!(
        w.is_consistent() && out.len() == w.rows * w.cols,
        "dequantize: lengths"
    );
    if w.cols == 0 {
        return;
    }
    out.par_chunks_mut(w.cols)
        .enumerate()
        .with_min_len(16)
        .for_each(|(j, o)| {
            let (q, s) = w.row(j);
            dequantize_row_isa(isa(), w.format, q, s, o);
        });
}

/// Dequantizes row `j` of `w` into `out` (cols floats; SIMD where available): an embedding
/// lookup in a quantized table.
pub fn dequantize_matrix_row(w: &QMatrix, j: usize, out: &mut [f32]) {
    assert!(
        w.is_consistent() && j < w.rows && out.len() == w.cols,
        "dequantize_matrix_row: lengths"
    );
    let (q, s) = w.row(j);
    dequantize_row_isa(isa(), w.format, q, s, out);
}

/// [`dequantize_row`] on an instruction set (SIMD for whole blocks).
fn dequantize_row_isa(isa: Isa, format: QFormat, qs: &[u8], scales: &[f16], out: &mut [f32]) {
    let full = out.len() / QBLOCK;
    #[cfg(target_arch = "x86_64")]
    if matches!(isa, Isa::Avx2Fma | Isa::Avx512) && full > 0 {
        // SAFETY: the ISA is resolved (AVX2+FMA+F16C present); `full` whole blocks of bytes,
        // scales and outputs exist (checked by the slicing below).
        unsafe {
            let (q, s, o) = (
                &qs[..full * format.block_bytes()],
                &scales[..full],
                &mut out[..full * QBLOCK],
            );
            crate::x86_quant::dequant_avx2(format, full, q.as_ptr(), s.as_ptr(), o.as_mut_ptr());
        }
        let bb = format.block_bytes();
        return dequantize_row(
            format,
            &qs[full * bb..],
            &scales[full..],
            &mut out[full * QBLOCK..],
        );
    }
    let _ = (isa, full);
    dequantize_row(format, qs, scales, out)
}

/// One row of activations quantized for the integer dot products of the small-M path: 8-bit
/// values per block of 32 (zero-padded to whole blocks, like the weight rows), an f32 scale
/// per block (d = max|x|/127, q = round(x/d)), kept in f32 since it is never stored.
pub struct QActivations {
    pub qs: Vec<i8>,
    pub scales: Vec<f32>,
}

impl QActivations {
    /// Quantizes `x` (portable; k values per linear call, negligible next to the weights).
    pub fn new(x: &[f32]) -> QActivations {
        let blocks = QFormat::row_blocks(x.len());
        let mut qs = vec![0i8; blocks * QBLOCK];
        let mut scales = vec![0f32; blocks];
        Self::quantize_into(x, &mut qs, &mut scales);
        QActivations { qs, scales }
    }

    /// [`Self::new`] into caller-owned rows: `qs` of `blocks·32` values (the padding of the
    /// last block zero), `scales` of `blocks`.
    ///
    /// # Panics
    /// Where the lengths are not those of `x`'s blocks.
    pub fn quantize_into(x: &[f32], qs: &mut [i8], scales: &mut [f32]) {
        let blocks = QFormat::row_blocks(x.len());
        assert!(qs.len() == blocks * QBLOCK && scales.len() == blocks);
        for (b, (q, d)) in qs
            .chunks_exact_mut(QBLOCK)
            .zip(scales.iter_mut())
            .enumerate()
        {
            let blk = &x[b * QBLOCK..((b + 1) * QBLOCK).min(x.len())];
            let amax = blk.iter().fold(0f32, |m, v| m.max(v.abs()));
            *d = amax / 127.0;
            let inv = if *d > 0.0 { 1.0 / *d } else { 0.0 };
            q.fill(0);
            for (o, &v) in q.iter_mut().zip(blk) {
                *o = (v * inv).round().clamp(-127.0, 127.0) as i8;
            }
        }
    }

    /// The m = `a.len() / k` rows of `a` quantized ([`Self::quantize_into`]) side by side:
    /// row i's bytes at `i·blocks·32` and its scales at `i·blocks` (blocks of k), the layout
    /// the multi-row kernels read.
    pub(crate) fn rows(a: &[f32], k: usize) -> (Vec<i8>, Vec<f32>) {
        let nb = QFormat::row_blocks(k);
        let m = a.len() / k.max(1);
        let (mut qs, mut ds) = (vec![0i8; m * nb * QBLOCK], vec![0f32; m * nb]);
        for ((x, q), d) in a
            .chunks(k)
            .zip(qs.chunks_mut(nb * QBLOCK))
            .zip(ds.chunks_mut(nb))
        {
            Self::quantize_into(x, q, d);
        }
        (qs, ds)
    }
}

/// The signed 4- or 8-bit value of element `i` of a weight block (q − 8 for q4).
#[inline(always)]
fn block_int(format: QFormat, q: &[u8], i: usize) -> i32 {
    match format {
        QFormat::Q8 => (q[i] as i8) as i32,
        QFormat::Q4 => {
            let h = QBLOCK / 2;
            let nib = if i < h { q[i] & 15 } else { q[i - h] >> 4 };
            nib as i32 - 8
        }
    }
}

/// out[j] = Σ_b d_w·d_x·Σ_i qw·qx over the blocks of W row j0 + j (portable; the integer
/// block sums are exact, as in the SIMD paths).
fn dot_rows_portable(xq: &[i8], xd: &[f32], w: &QMatrix, j0: usize, out: &mut [f32]) {
    let bb = w.format.block_bytes();
    for (jj, o) in out.iter_mut().enumerate() {
        let (q, s) = w.row(j0 + jj);
        let mut acc = 0f32;
        for (b, (xq, &dx)) in xq.chunks_exact(QBLOCK).zip(xd).enumerate() {
            let qb = &q[b * bb..(b + 1) * bb];
            let isum: i32 = (0..QBLOCK)
                .map(|i| block_int(w.format, qb, i) * xq[i] as i32)
                .sum();
            acc += (s[b].to_f32() * dx) * isum as f32;
        }
        *o = acc;
    }
}

/// Whether the decode GEMV of q8/q4 weights (m ≤ 4) runs the AVX-512 VNNI kernel when the
/// instruction set is AVX-512: the CPU has AVX-512 VNNI and `BLIP2_CPU_VNNI` is not `0`.
/// Checked once.
pub fn vnni_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        crate::x86_vnni::vnni_available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// out[j] = W[j0 + j, :]·x for j < out.len() with x quantized (`xq` bytes, `xd` scales of
/// W's blocks per row), on `isa`.
fn dot_rows(isa: Isa, xq: &[i8], xd: &[f32], w: &QMatrix, j0: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        let (rb, nb) = (w.format.row_bytes(w.cols), QFormat::row_blocks(w.cols));
        let n = out.len();
        assert!(j0 + n <= w.rows && xd.len() == nb && xq.len() == nb * QBLOCK);
        // AVX-512 with VNNI: one `vpdpbusd` per 64 weight bytes. AVX-512 without VNNI runs
        // the AVX2 kernel (every such CPU has AVX2). Both take the same arguments.
        let l2 = crate::x86_prefetch::prefetch_to_l2();
        let kernel: Option<crate::x86_quant::DotRows> =
            if isa == Isa::Avx512 && crate::x86_vnni::vnni_available() {
                Some(match l2 {
                    true => crate::x86_vnni::dot_rows_vnni::<true>,
                    false => crate::x86_vnni::dot_rows_vnni::<false>,
                })
            } else if matches!(isa, Isa::Avx2Fma | Isa::Avx512) {
                Some(match l2 {
                    true => crate::x86_quant::dot_rows_i8_avx2::<true>,
                    false => crate::x86_quant::dot_rows_i8_avx2::<false>,
                })
            } else {
                None
            };
        if let Some(kernel) = kernel {
            // SAFETY: rows j0..j0+n exist (asserted), the activations have the row's block
            // count, and the kernel's features are present (ISA resolved, VNNI checked); n
            // outputs are written.
            unsafe {
                return kernel(
                    w.format,
                    nb,
                    xq.as_ptr(),
                    xd.as_ptr(),
                    w.qs.as_ptr().add(j0 * rb),
                    w.scales.as_ptr().add(j0 * nb),
                    n,
                    out.as_mut_ptr(),
                );
            }
        }
    }
    let _ = isa;
    dot_rows_portable(xq, xd, w, j0, out)
}

/// out[i·(j1 − j0) + j] = W[j0 + j, :]·x_i for the m quantized rows `xq`/`xd` (each
/// `blocks·32` bytes and `blocks` scales), 8 rows per pass over W: [`QuantKernel::Int8Rows`].
fn dot_rows_multi(
    w: &QMatrix,
    xq: &[i8],
    xd: &[f32],
    m: usize,
    j0: usize,
    j1: usize,
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    {
        let (rb, nb) = (w.format.row_bytes(w.cols), QFormat::row_blocks(w.cols));
        let width = j1 - j0;
        assert!(
            crate::x86_vnni::vnni_available()
                && j1 <= w.rows
                && xq.len() == m * nb * QBLOCK
                && xd.len() == m * nb
                && out.len() == m * width
        );
        let step = crate::x86_vnni::MULTI_ROWS;
        for i0 in (0..m).step_by(step) {
            let rows = step.min(m - i0);
            // SAFETY: VNNI is present (asserted); rows i0..i0 + rows of the activations
            // exist, W rows j0..j1 exist, and out holds those rows × width values.
            unsafe {
                crate::x86_vnni::dot_rows_vnni_multi(
                    w.format,
                    nb,
                    rows,
                    xq.as_ptr().add(i0 * nb * QBLOCK),
                    xd.as_ptr().add(i0 * nb),
                    w.qs.as_ptr().add(j0 * rb),
                    w.scales.as_ptr().add(j0 * nb),
                    width,
                    out.as_mut_ptr().add(i0 * width),
                    width,
                );
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (w, xq, xd, m, j0, j1, out);
        unreachable!("quant_kernel chooses Int8Rows on x86-64 only");
    }
}

/// At or below this many rows of A (decode), x·Wᵀ quantizes each A row to 8 bits per block
/// and takes exact integer dot products with the weight blocks (llama.cpp's Q8_0
/// activations), on every CPU: one row at a time, or with AVX-512 VNNI all in one pass over
/// W. Above (batched decode, prefill, vision) [`quant_kernel`] picks integer sums for up to
/// 16 rows (AMX-INT8 tiles or VNNI), then bf16 operands (AMX or AVX512-BF16), else W
/// dequantized a block at a time, amortised over the rows, into f32 for the packed f32
/// GEMM with f32 activations.
const SMALL_M: usize = 4;

/// W rows dequantized per block of the large-M path (`NB·cols` floats of scratch per task).
const NB: usize = 64;

/// C[m×n] = A[m×k]·Wᵀ (+ bias) with W a quantized `[n, k]` matrix, f32 accumulation: for
/// m ≤ 4 with A quantized to 8 bits per block and integer block dot products (with AVX-512
/// VNNI, all rows in one pass over W); up to 16 rows the same integer arithmetic on AMX-INT8
/// tiles (`amx_qint8.rs`) or, without them, on VNNI 8 rows per pass; more rows on bf16
/// operands (W dequantized per call, A rounded to bf16) on AMX tiles (`amx_quant.rs`) or
/// AVX512-BF16 (`dpbf16_quant.rs`); otherwise with f32 A and dequantized W. [`quant_kernel`]
/// says which. Multi-threaded over the rayon global pool.
///
/// Preconditions (asserted; the engine validates user shapes first): `w.is_consistent()`,
/// `a.len() == m·w.cols`, `c.len() == m·w.rows`, `bias.len() == w.rows`.
pub fn matmul_q(a: &[f32], w: &QMatrix, bias: Option<&[f32]>, c: &mut [f32], m: usize) {
    matmul_q_with(isa(), 0, a, w, bias, c, m)
}

/// Which path [`matmul_q_path`] takes from 2 rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuantPath {
    /// f32 activations and W dequantized to f32 blocks (no rounding besides the weights').
    F32,
    /// AMX where available with an AVX-512 instruction set (5 to 16 rows: integer block
    /// sums on 8-bit activations; more: activations and dequantized weights rounded to
    /// bf16), else as `NoTiles`: what [`matmul_q`] does.
    Auto,
    /// What a CPU without the matrix engine runs: with AVX-512 VNNI, 2 to 16 rows on
    /// [`QuantKernel::Int8Rows`]; more with AVX512-BF16 on [`QuantKernel::Bf16Dot`] (above
    /// [`crate::DPBF16_ANY_MAX_M`] rows only where [`crate::dpbf16_doubles_fma`]); else as
    /// `F32` (for tests and benches on AMX machines).
    NoTiles,
}

/// [`matmul_q`] on a chosen instruction set and thread count (0 = the whole rayon pool,
/// 1 = the calling thread).
pub fn matmul_q_with(
    isa: Isa,
    threads: usize,
    a: &[f32],
    w: &QMatrix,
    bias: Option<&[f32]>,
    c: &mut [f32],
    m: usize,
) {
    matmul_q_path(isa, threads, QuantPath::Auto, a, w, bias, c, m)
}

/// The kernel [`matmul_q_path`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuantKernel {
    /// Each activation row quantized to 8 bits per block, exact integer block sums, W
    /// streamed once per row (one row; up to [`SMALL_M`] rows without AVX-512 VNNI).
    Gemv,
    /// The GEMV's arithmetic for up to 8 activation rows per pass over W on AVX-512 VNNI
    /// (`x86_vnni.rs`): each row's result bit-identical to the GEMV's on that row, W read
    /// once per 8 rows instead of once per row.
    Int8Rows,
    /// The same integer arithmetic on AMX-INT8 tiles, W read once for all rows
    /// (`amx_qint8.rs`).
    Int8Tiles,
    /// Activations and dequantized W rounded to bf16, AMX bf16 tiles (`amx_quant.rs`).
    Bf16Tiles,
    /// The same operands on AVX512-BF16 `vdpbf16ps`, for CPUs without AMX
    /// (`dpbf16_quant.rs`).
    Bf16Dot,
    /// f32 activations, W dequantized to f32 blocks for the f32 GEMM.
    Dequantized,
}

impl QuantKernel {
    /// Whether the activations and the dequantized weights are rounded to bf16.
    pub fn bf16_operands(self) -> bool {
        matches!(self, QuantKernel::Bf16Tiles | QuantKernel::Bf16Dot)
    }

    /// Whether the activations are quantized to 8 bits per block.
    pub fn int8_activations(self) -> bool {
        matches!(
            self,
            QuantKernel::Gemv | QuantKernel::Int8Rows | QuantKernel::Int8Tiles
        )
    }
}

/// Which kernel [`matmul_q_path`] runs for `m` rows on `isa` (resolved to what this CPU
/// supports) with `path`: the one place that choice is made.
pub fn quant_kernel(isa: Isa, path: QuantPath, m: usize) -> QuantKernel {
    let isa = isa.resolve();
    let amx = path == QuantPath::Auto && isa == Isa::Avx512;
    let vnni_rows = isa == Isa::Avx512 && vnni_available();
    // Where the GEMV would quantize the activations anyway (up to SMALL_M rows), the VNNI
    // rows give its results bit for bit with one pass over W instead of one per row; the
    // F32 path keeps f32 activations above that. OPT-2.7B's fc1 in q8, cold weights,
    // 2026-12-07 (docs/performance.md): the GEMV 1.12–1.17 ms a row; the VNNI rows 2 rows
    // 1.38–1.41, 3 1.50–1.56, 4 1.63–1.64, 8 2.34–2.59, 16 4.65–5.17; the int8 tiles 2 rows
    // 1.61–1.65, 3 1.68–1.76, 4 1.68–1.69, 8 1.73–1.90, 16 1.98–2.06. So the tiles take
    // over from 5 rows where the CPU has them.
    let rows_max = if path == QuantPath::F32 {
        SMALL_M
    } else {
        INT8_ROWS_MAX_M
    };
    if amx
        && (SMALL_M + 1..=crate::amx_qint8::INT8_MAX_M).contains(&m)
        && crate::quant_amx_int8_available()
    {
        QuantKernel::Int8Tiles
    } else if vnni_rows && (2..=rows_max).contains(&m) {
        QuantKernel::Int8Rows
    } else if m <= SMALL_M {
        QuantKernel::Gemv
    } else if amx && crate::quant_amx_available() {
        QuantKernel::Bf16Tiles
    } else if path != QuantPath::F32
        && isa == Isa::Avx512
        && crate::quant_dpbf16_available()
        && (m <= crate::DPBF16_ANY_MAX_M || crate::dpbf16_doubles_fma())
    {
        QuantKernel::Bf16Dot
    } else {
        QuantKernel::Dequantized
    }
}

/// [`matmul_q_with`] with the path from 2 rows chosen ([`quant_kernel`]).
#[allow(clippy::too_many_arguments)]
pub fn matmul_q_path(
    isa: Isa,
    threads: usize,
    path: QuantPath,
    a: &[f32],
    w: &QMatrix,
    bias: Option<&[f32]>,
    c: &mut [f32],
    m: usize,
) {
    let (n, k) = (w.rows, w.cols);
    if linear_trivial("matmul_q", w.is_consistent(), a, bias, c, m, k, n) {
        return;
    }
    let isa = isa.resolve();
    let threads = resolve_threads(threads);
    match quant_kernel(isa, path, m) {
        QuantKernel::Gemv => small_m(isa, threads, false, a, w, bias, c, m),
        QuantKernel::Int8Rows => small_m(isa, threads, true, a, w, bias, c, m),
        QuantKernel::Int8Tiles => {
            let ran = crate::amx_qint8::matmul_q_amx_int8_with(threads, a, w, bias, c, m);
            debug_assert!(ran, "quant_kernel chose the int8 tiles");
        }
        QuantKernel::Bf16Tiles => {
            let ran = crate::amx_quant::matmul_q_amx_with(threads, a, w, bias, c, m);
            debug_assert!(ran, "quant_kernel chose the bf16 tiles");
        }
        QuantKernel::Bf16Dot => {
            let ran = crate::dpbf16_quant::matmul_q_dpbf16_with(threads, a, w, bias, c, m);
            debug_assert!(ran, "quant_kernel chose AVX512-BF16");
        }
        QuantKernel::Dequantized => large_m(isa, threads, a, w, bias, c, m),
    }
}

/// Column parts for `tasks` threads, each at least `min` columns (aligned to `align`).
fn column_parts(n: usize, tasks: usize, min: usize, align: usize) -> Vec<(usize, usize)> {
    let parts = tasks.min(n.div_ceil(min)).max(1);
    (0..parts)
        .map(|i| crate::gemm::part(n, parts, align, i))
        .filter(|(s, e)| s < e)
        .collect()
}

/// Up to this many rows, without AMX-INT8, AVX-512 VNNI runs [`QuantKernel::Int8Rows`].
pub const INT8_ROWS_MAX_M: usize = 16;

/// The integer paths without tiles: each activation row quantized to 8 bits per block, then
/// W's rows cut in parts over the threads; in each part either the GEMV once per row or
/// (`rows_at_once`) the VNNI kernel once per 8 rows.
#[allow(clippy::too_many_arguments)]
fn small_m(
    isa: Isa,
    threads: usize,
    rows_at_once: bool,
    a: &[f32],
    w: &QMatrix,
    bias: Option<&[f32]>,
    c: &mut [f32],
    m: usize,
) {
    let (n, k) = (w.rows, w.cols);
    // Rows are cut in parts of ≥ 64 (a multiple of 4 rows, the register blocking).
    let parts = if threads > 1 && n * k >= 1 << 18 {
        column_parts(n, threads * 2, 64, 4)
    } else {
        vec![(0, n)]
    };
    let (xq, xd) = QActivations::rows(a, k);
    let nb = QFormat::row_blocks(k);
    let mut tmp = vec![0f32; m * n];
    let run = |(j0, j1): (usize, usize), out: &mut [f32]| {
        if rows_at_once {
            return dot_rows_multi(w, &xq, &xd, m, j0, j1, out);
        }
        let wd = j1 - j0;
        for ((q, d), o) in xq
            .chunks(nb * QBLOCK)
            .zip(xd.chunks(nb))
            .zip(out.chunks_mut(wd))
        {
            dot_rows(isa, q, d, w, j0, o);
        }
    };
    // Each part writes its own [m × width] block of `tmp`, laid out part after part.
    let mut blocks: Vec<(usize, usize, &mut [f32])> = Vec::with_capacity(parts.len());
    let mut rest = tmp.as_mut_slice();
    for &(j0, j1) in &parts {
        let (head, tail) = rest.split_at_mut(m * (j1 - j0));
        blocks.push((j0, j1, head));
        rest = tail;
    }
    if blocks.len() > 1 {
        // A decode step: on the team (`team.rs`); each task locks only its own block.
        let blocks: Vec<std::sync::Mutex<_>> =
            blocks.into_iter().map(std::sync::Mutex::new).collect();
        crate::team::for_each(blocks.len(), &|t| {
            let mut b = blocks[t].lock().unwrap_or_else(|e| e.into_inner());
            let (j0, j1, out) = &mut *b;
            run((*j0, *j1), out);
        });
    } else {
        for (j0, j1, out) in blocks.iter_mut() {
            run((*j0, *j1), out);
        }
    }
    let mut off = 0;
    for &(j0, j1) in &parts {
        let wd = j1 - j0;
        for i in 0..m {
            let dst = &mut c[i * n + j0..i * n + j1];
            dst.copy_from_slice(&tmp[off + i * wd..off + (i + 1) * wd]);
            if let Some(b) = bias {
                for (d, bv) in dst.iter_mut().zip(&b[j0..j1]) {
                    *d += bv;
                }
            }
        }
        off += m * wd;
    }
}

fn large_m(
    isa: Isa,
    threads: usize,
    a: &[f32],
    w: &QMatrix,
    bias: Option<&[f32]>,
    c: &mut [f32],
    m: usize,
) {
    let (n, k) = (w.rows, w.cols);
    matmul_widened(isa, threads, a, bias, c, m, k, n, NB, |r0, _, out| {
        for (jj, o) in out.chunks_mut(k).enumerate() {
            let (q, s) = w.row(r0 + jj);
            dequantize_row_isa(isa, w.format, q, s, o);
        }
    });
}
