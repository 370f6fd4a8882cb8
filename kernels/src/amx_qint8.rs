//! Quantized weights (`q8`, `q4`) on AMX-INT8 for 2 to 16 activation rows (beams, batched
//! decode steps): the integer decode path's arithmetic (`quant.rs`: activations quantized to 8 bits
//! per block of 32, exact integer block sums, one f32 scale product and FMA per block) with
//! the block sums of every row at once from `tdpbssd`.
//!
//! Per pair of W's 16-row blocks and quantization block: the 32 rows' bytes are transposed
//! into two int8 B tiles (no conversion: the quants are the operand), one `tdpbssd` per
//! 16 columns gives the m × 16 exact i32 block sums, and each is converted and added to an
//! f32 accumulator with its d_w·d_x. That epilogue grows with m, the tile products barely:
//! at a decode batch the B tiles cost far less than the bf16 path's dequantization
//! (`amx_quant.rs`), which takes over above [`INT8_MAX_M`] rows, where its per-call
//! conversion is shared by more rows and its epilogue is per K chunk, not per block.

use crate::gemm::{linear_trivial, resolve_threads};
use crate::quant::QMatrix;

/// Most activation rows the int8 path takes (one A tile).
pub const INT8_MAX_M: usize = 16;

/// Whether [`matmul_q_amx_int8_with`] can run on this CPU: [`crate::quant_amx_available`]
/// and AMX-INT8. Checked once (CPUID traps to the hypervisor in a VM, and this is asked
/// on every batched decode call).
pub fn quant_amx_int8_available() -> bool {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    {
        static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *ON.get_or_init(|| crate::quant_amx_available() && crate::x86_amx::has_int8())
    }
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    {
        false
    }
}

/// C[m×n] = A[m×k]·Wᵀ (+ bias) for a quantized W on AMX-INT8, for 1 ≤ m ≤ [`INT8_MAX_M`],
/// over `threads` tasks (0 = the rayon pool, 1 = the calling thread). Returns false,
/// writing nothing, where the CPU cannot run it ([`quant_amx_int8_available`]) or m is out
/// of that range.
///
/// Preconditions (asserted): as [`crate::matmul_q`].
pub fn matmul_q_amx_int8_with(
    threads: usize,
    a: &[f32],
    w: &QMatrix,
    bias: Option<&[f32]>,
    c: &mut [f32],
    m: usize,
) -> bool {
    if !quant_amx_int8_available() || !(1..=INT8_MAX_M).contains(&m) {
        return false;
    }
    let (n, k) = (w.rows, w.cols);
    if linear_trivial("matmul_q_amx_int8", w.is_consistent(), a, bias, c, m, k, n) {
        return true;
    }
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    x86::run(resolve_threads(threads), a, w, bias, c, m);
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    let _ = (threads, resolve_threads);
    true
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod x86 {
    use std::arch::x86_64::*;

    use crate::gemm::Shared;
    use crate::quant::{QActivations, QBLOCK, QFormat, QMatrix};
    use crate::x86_qtiles::{Transpose, block_rows, block_scales};

    /// The two B tiles of a pair at one block, and the two i32 accumulator tiles, twice:
    /// block s + 1's tiles are built while block s's products run.
    #[repr(C, align(64))]
    struct Tiles {
        b: [[u8; 1024]; 2],
        c: [[i32; 512]; 2],
    }

    pub(super) fn run(
        threads: usize,
        a: &[f32],
        w: &QMatrix,
        bias: Option<&[f32]>,
        c: &mut [f32],
        m: usize,
    ) {
        let (n, k) = (w.rows, w.cols);
        let nb = QFormat::row_blocks(k);
        // Every activation row quantized as the integer decode path does, rows at a stride
        // of whole blocks (the A tile's stride).
        let (xq, xd) = QActivations::rows(a, k);
        let parts = crate::bf16::block_pair_parts(n, if threads > 1 { threads } else { 1 });
        let cptr = Shared(c.as_mut_ptr());
        let (xq, xd) = (&xq[..], &xd[..]);
        crate::bf16::for_parts(&parts, m, |p0, p1| {
            let mut tiles = Box::new(Tiles {
                b: [[0; 1024]; 2],
                c: [[0; 512]; 2],
            });
            let mut scales = vec![0u16; 2 * nb * 16];
            // SAFETY: quant_amx_int8_available() (checked by the caller) includes AMX-INT8
            // and AVX512-F/BW/VL/BF16/VBMI; this part writes only columns 32·p0 ..
            // 32·p1 (clipped to n) of C.
            unsafe {
                crate::x86_amx::configure_int8(m);
                let job = Job {
                    w,
                    xq,
                    xd,
                    bias,
                    c: cptr.get(),
                    m,
                };
                match w.format {
                    QFormat::Q8 => pairs::<false>(&job, p0, p1, &mut tiles, &mut scales),
                    QFormat::Q4 => pairs::<true>(&job, p0, p1, &mut tiles, &mut scales),
                }
                crate::x86_amx::release();
            }
        });
    }

    /// One call: W, the quantized activations (m rows of `nb·32` bytes, m rows of nb
    /// scales), the bias and C (m × n).
    struct Job<'a> {
        w: &'a QMatrix<'a>,
        xq: &'a [i8],
        xd: &'a [f32],
        bias: Option<&'a [f32]>,
        c: *mut f32,
        m: usize,
    }

    /// Columns `32·p0 .. 32·p1` of C (clipped to n): for each pair of 16-row blocks of W,
    /// every quantization block's tiles, sums and scaled accumulation, then the bias.
    ///
    /// # Safety
    /// The int8 tiles are configured for `job.m` on this thread; AVX512-F/BW/VL/VBMI; the
    /// job's arrays have the lengths it names, these columns of C are owned by the caller;
    /// `scales` holds `2·nb·16` values.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vbmi,avx2,f16c")]
    unsafe fn pairs<const Q4: bool>(
        job: &Job,
        p0: usize,
        p1: usize,
        tiles: &mut Tiles,
        scales: &mut [u16],
    ) {
        let Job {
            w,
            xq,
            xd,
            bias,
            c,
            m,
        } = *job;
        let n = w.rows;
        let nb = QFormat::row_blocks(w.cols);
        // SAFETY: per the contract; rows and blocks read are inside W (block_rows,
        // block_scales), A reads stay inside xq, and the stores go to this part's columns.
        unsafe {
            let quads = Transpose::quads();
            let pairs = Transpose::pairs();
            for pair in p0..p1 {
                let valid = |h: usize| n.saturating_sub(pair * 32 + 16 * h).min(16);
                for h in 0..2 {
                    let out = scales.as_mut_ptr().add(h * nb * 16);
                    block_scales(w, pair * 32 + 16 * h, valid(h), 0, nb, out, &pairs);
                }
                let mut acc = [[_mm512_setzero_ps(); 2]; 16];
                // The B tiles of block s into buffer `buf`.
                let build = |s: usize, buf: &mut [u8; 1024]| {
                    for h in 0..2 {
                        let mut z = block_rows::<Q4>(w, pair * 32 + 16 * h, valid(h), s);
                        quads.apply(&mut z);
                        for (o, z) in z.iter().enumerate() {
                            let p = buf.as_mut_ptr().add(h * 512 + o * 64);
                            _mm512_store_si512(p as *mut __m512i, *z);
                        }
                    }
                };
                build(0, &mut tiles.b[0]);
                for s in 0..nb {
                    let cur = s % 2;
                    crate::x86_amx::int8_block(
                        xq.as_ptr().add(s * QBLOCK),
                        nb * QBLOCK,
                        tiles.b[cur].as_ptr(),
                        tiles.c[cur].as_mut_ptr(),
                    );
                    // The next block's tiles while the tile unit works on this one (its
                    // products come back through memory, tens of cycles later).
                    if s + 1 < nb {
                        build(s + 1, &mut tiles.b[1 - cur]);
                    }
                    let dw = [0, 1].map(|h| {
                        let p = scales.as_ptr().add((h * nb + s) * 16);
                        _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))
                    });
                    let sums = tiles.c[cur].as_ptr();
                    for (i, acc) in acc.iter_mut().enumerate().take(m) {
                        let dx = _mm512_set1_ps(*xd.get_unchecked(i * nb + s));
                        for h in 0..2 {
                            let v = _mm512_load_si512(sums.add(h * 256 + i * 16) as *const __m512i);
                            let d = _mm512_mul_ps(dw[h], dx);
                            acc[h] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(v), d, acc[h]);
                        }
                    }
                }
                for (i, acc) in acc.iter().enumerate().take(m) {
                    for (h, &v) in acc.iter().enumerate() {
                        let cols = valid(h);
                        if cols == 0 {
                            continue;
                        }
                        let j0 = pair * 32 + 16 * h;
                        let mask = ((1u32 << cols) - 1) as u16;
                        let mut v = v;
                        if let Some(b) = bias {
                            v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, b.as_ptr().add(j0)));
                        }
                        _mm512_mask_storeu_ps(c.add(i * n + j0), mask, v);
                    }
                }
            }
        }
    }
}
