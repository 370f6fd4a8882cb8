//! The decode GEMV of block-quantized weights on AVX-512 VNNI (`vpdpbusd`: 64 u8×i8 products
//! summed four at a time into 16 i32 lanes, accumulated, in one instruction). Same contract
//! and same exact integer block sums as the AVX2 kernel in `x86_quant.rs`; only the f32
//! accumulation order differs. Layouts: see `quant.rs`.
//!
//! `vpdpbusd` wants one unsigned operand. q4's nibbles already are (offset 8 taken out
//! afterwards, as in the AVX2 kernel); q8's signed weights are made unsigned by flipping
//! their top bit (w ^ 0x80 = w + 128), and the extra 128·Σx of every 4-value lane is
//! subtracted by starting the accumulator at −128·Σx. Both corrections depend only on the
//! activations, so they are built once per call and shared by every weight row.
//!
//! One 64-byte load of weights covers two q8 blocks or four q4 blocks; the last, partial
//! group is read with a byte-masked load (masked-off bytes are never touched, so nothing past
//! a row is read), which leaves zero weights, zero activations and zero scale lanes.

use std::arch::x86_64::*;

use half::f16;

use crate::quant::{QBLOCK, QFormat};
use crate::x86_prefetch::{prefetch_ahead, prefetch_to_l2, request_ahead};
use crate::x86_quant::scale_products;

/// Whether this CPU has AVX-512 VNNI (with F/BW/VL), unless `BLIP2_CPU_VNNI=0`. Checked once.
pub(crate) fn vnni_available() -> bool {
    use std::sync::OnceLock;
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        let off = std::env::var("BLIP2_CPU_VNNI").is_ok_and(|v| v.trim() == "0");
        !off && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512vnni")
            && is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    })
}

/// The activations of one call, regrouped for 64-byte weight groups: per group, the x bytes
/// each weight byte meets (two layouts for q4's low and high nibbles) and the i32 lanes the
/// accumulator starts from (minus the offset correction).
struct Groups {
    /// q8: the 64 x bytes of a block pair. q4: values 0..16 of four blocks.
    xa: Vec<[i8; 64]>,
    /// q4 only: values 16..32 of the same four blocks.
    xb: Vec<[i8; 64]>,
    /// −corr per 4-byte lane.
    init: Vec<[i32; 16]>,
}

impl Groups {
    /// `xq` holds `blocks` blocks of 32 bytes.
    fn new(format: QFormat, blocks: usize, xq: &[i8]) -> Groups {
        let per = QFormat::group_blocks(format);
        let groups = blocks.div_ceil(per);
        let x = |i: usize| xq.get(i).copied().unwrap_or(0);
        let mut g = Groups {
            xa: vec![[0; 64]; groups],
            xb: if format == QFormat::Q4 {
                vec![[0; 64]; groups]
            } else {
                Vec::new()
            },
            init: vec![[0; 16]; groups],
        };
        for gi in 0..groups {
            let b0 = gi * per;
            match format {
                QFormat::Q8 => {
                    for i in 0..64 {
                        g.xa[gi][i] = x(b0 * QBLOCK + i);
                    }
                    for l in 0..16 {
                        let s: i32 = (0..4).map(|t| g.xa[gi][4 * l + t] as i32).sum();
                        g.init[gi][l] = -128 * s;
                    }
                }
                QFormat::Q4 => {
                    // Byte i of a q4 block holds value i (low nibble) and i + 16 (high).
                    for blk in 0..4 {
                        for i in 0..16 {
                            let base = (b0 + blk) * QBLOCK;
                            g.xa[gi][16 * blk + i] = x(base + i);
                            g.xb[gi][16 * blk + i] = x(base + 16 + i);
                        }
                    }
                    for l in 0..16 {
                        let s: i32 = (0..4)
                            .map(|t| g.xa[gi][4 * l + t] as i32 + g.xb[gi][4 * l + t] as i32)
                            .sum();
                        g.init[gi][l] = -8 * s;
                    }
                }
            }
        }
        g
    }
}

impl QFormat {
    /// Blocks per 64-byte group of weight bytes.
    const fn group_blocks(self) -> usize {
        64 / self.block_bytes()
    }
}

/// Lane → block-of-group index: q8 [0 × 8, 1 × 8], q4 [0 × 4, 1 × 4, 2 × 4, 3 × 4].
const LANES_Q8: [i32; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1];
const LANES_Q4: [i32; 16] = [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3];

/// out[q] = Σ_b d_w[q,b]·d_x[b]·(Σ_i w[q,b,i]·x[b,i]) for q < n: the contract of
/// `x86_quant::dot_rows_i8_avx2`. Four rows share every activation load. W's rows are
/// requested ahead into L2 with `L2`, else into L1 (`x86_prefetch::prefetch_to_l2`).
///
/// # Safety
/// [`vnni_available`] is true; xq holds blocks·32 bytes, xd blocks floats; n rows of quants
/// (stride blocks·block_bytes) and scales (stride blocks); `out` n floats.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn dot_rows_vnni<const L2: bool>(
    format: QFormat,
    blocks: usize,
    xq: *const i8,
    xd: *const f32,
    qs: *const u8,
    scales: *const f16,
    n: usize,
    out: *mut f32,
) {
    let per = format.group_blocks();
    let rb = blocks * format.block_bytes();
    let ahead = prefetch_ahead(L2, 4, rb);
    // SAFETY: xq holds blocks·32 bytes (contract).
    let g = Groups::new(format, blocks, unsafe {
        std::slice::from_raw_parts(xq, blocks * QBLOCK)
    });
    // d_w·d_x of every block of the four current rows, padded so a group's scale load never
    // leaves the buffer (the padding lanes meet zero sums and are masked anyway).
    let mut ds = vec![0f32; 4 * blocks + 4];
    let full = blocks / per;
    let tail_blocks = blocks - full * per;
    // The last group's valid bytes and lanes.
    let tail_bytes = (tail_blocks * format.block_bytes()) as u32;
    let byte_mask: __mmask64 = if tail_bytes == 0 {
        0
    } else {
        u64::MAX >> (64 - tail_bytes)
    };
    let lane_mask: __mmask16 = ((1u32 << (tail_bytes / 4)) - 1) as u16;
    // SAFETY: per the contract; row pointers are clamped to the last valid row.
    unsafe {
        let lanes = _mm512_loadu_si512(match format {
            QFormat::Q8 => LANES_Q8.as_ptr(),
            QFormat::Q4 => LANES_Q4.as_ptr(),
        } as *const __m512i);
        let (flip, nib) = (_mm512_set1_epi8(-128), _mm512_set1_epi8(15));
        // One group of row q starting at block b: the exact integer block sums in 16 lanes
        // (tail: byte-masked), each lane carrying its block's d_w·d_x.
        let group = |p: *const u8, gi: usize, masked: bool| -> __m512i {
            let w = if masked {
                _mm512_maskz_loadu_epi8(byte_mask, p as *const i8)
            } else {
                _mm512_loadu_si512(p as *const __m512i)
            };
            let init = _mm512_loadu_si512(g.init.as_ptr().add(gi) as *const __m512i);
            let xa = _mm512_loadu_si512(g.xa.as_ptr().add(gi) as *const __m512i);
            match format {
                QFormat::Q8 => {
                    // Masked-off weight bytes become 128 after the flip, but meet x = 0.
                    _mm512_dpbusd_epi32(init, _mm512_xor_si512(w, flip), xa)
                }
                QFormat::Q4 => {
                    let xb = _mm512_loadu_si512(g.xb.as_ptr().add(gi) as *const __m512i);
                    let lo = _mm512_and_si512(w, nib);
                    let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(w), nib);
                    _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(init, lo, xa), hi, xb)
                }
            }
        };
        let mut j = 0;
        while j < n {
            let r = (n - j).min(4);
            let row = |q: usize| j + q.min(r - 1);
            scale_products(
                scales,
                [row(0), row(1), row(2), row(3)],
                blocks,
                xd,
                ds.as_mut_ptr(),
            );
            let mut acc = [_mm512_setzero_ps(); 4];
            for gi in 0..full {
                let b = gi * per;
                for (q, a) in acc.iter_mut().enumerate() {
                    let p = qs.add(row(q) * rb + b * format.block_bytes());
                    request_ahead::<L2>(p, ahead);
                    let s = _mm512_cvtepi32_ps(group(p, gi, false));
                    // The group's 2 or 4 scales, spread over their lanes.
                    let d4 = _mm_loadu_ps(ds.as_ptr().add(q * blocks + b));
                    let d = _mm512_permutexvar_ps(lanes, _mm512_castps128_ps512(d4));
                    *a = _mm512_fmadd_ps(s, d, *a);
                }
            }
            if tail_blocks > 0 {
                let b = full * per;
                for (q, a) in acc.iter_mut().enumerate() {
                    let p = qs.add(row(q) * rb + b * format.block_bytes());
                    let s = _mm512_cvtepi32_ps(group(p, full, true));
                    // Lanes past the row meet zero sums; masking their scales keeps a
                    // neighbouring row's (or the padding's) value out entirely.
                    let d4 = _mm_loadu_ps(ds.as_ptr().add(q * blocks + b));
                    let d =
                        _mm512_maskz_permutexvar_ps(lane_mask, lanes, _mm512_castps128_ps512(d4));
                    *a = _mm512_fmadd_ps(s, d, *a);
                }
            }
            for (q, a) in acc.iter().enumerate().take(r) {
                *out.add(j + q) = _mm512_reduce_add_ps(*a);
            }
            j += r;
        }
    }
}

/// Activation rows [`dot_rows_vnni_multi`] takes in one pass over W. Its accumulators are
/// 16 of the 32 zmm registers: four weight rows × up to 4 activation rows, or two × up to
/// 8 (at 4 activation rows, four weight rows a pass took 1.01–1.09 ms against 1.24 for two;
/// 8 rows as two passes of 4 were no faster than one of 8).
pub(crate) const MULTI_ROWS: usize = 8;

/// [`dot_rows_vnni`] for `m` (1..=[`MULTI_ROWS`]) rows of activations in one pass over W:
/// out[i·out_stride + q] = Σ_b d_w[q,b]·d_x[i,b]·(Σ_j w[q,b,j]·x[i,b,j]). Every weight
/// group is loaded once and meets each row's bytes; each row's lane sums, block products
/// d_w·d_x (one f32 multiply, as `scale_products` takes them) and accumulation order are
/// the GEMV's, so every row's result is bit-identical to [`dot_rows_vnni`] on that row
/// alone: a batch gives what one request gives.
///
/// # Safety
/// [`vnni_available`] is true; `xq` holds m rows of blocks·32 bytes, `xd` m rows of blocks
/// floats; n rows of quants (stride blocks·block_bytes) and scales (stride blocks); `out`
/// is writable at `i·out_stride + q` for i < m, q < n.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn dot_rows_vnni_multi(
    format: QFormat,
    blocks: usize,
    m: usize,
    xq: *const i8,
    xd: *const f32,
    qs: *const u8,
    scales: *const f16,
    n: usize,
    out: *mut f32,
    out_stride: usize,
) {
    // SAFETY: per the contract; M is the row count.
    unsafe {
        // Up to 4 rows the pass is bound by memory and takes the L2 requests where they pay
        // (`prefetch_to_l2`); at 5–8 rows it is bound by arithmetic and its loads hit L1
        // with the L1 requests (8 rows with L2 requests: 1.13–1.26× the time on Zen 4).
        let l2 = prefetch_to_l2();
        let run = match (m, l2) {
            (1, true) => multi::<1, 4, true>,
            (2, true) => multi::<2, 4, true>,
            (3, true) => multi::<3, 4, true>,
            (4, true) => multi::<4, 4, true>,
            (1, false) => multi::<1, 4, false>,
            (2, false) => multi::<2, 4, false>,
            (3, false) => multi::<3, 4, false>,
            (4, false) => multi::<4, 4, false>,
            (5, _) => multi::<5, 2, false>,
            (6, _) => multi::<6, 2, false>,
            (7, _) => multi::<7, 2, false>,
            (8, _) => multi::<8, 2, false>,
            _ => panic!("dot_rows_vnni_multi takes 1 to {MULTI_ROWS} rows, not {m}"),
        };
        run(format, blocks, xq, xd, qs, scales, n, out, out_stride)
    }
}

/// [`dot_rows_vnni_multi`] for M rows.
///
/// # Safety
/// As [`dot_rows_vnni_multi`] with m = M.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
unsafe fn multi<const M: usize, const R: usize, const L2: bool>(
    format: QFormat,
    blocks: usize,
    xq: *const i8,
    xd: *const f32,
    qs: *const u8,
    scales: *const f16,
    n: usize,
    out: *mut f32,
    out_stride: usize,
) {
    let per = format.group_blocks();
    let (bb, rb) = (format.block_bytes(), blocks * format.block_bytes());
    let groups = blocks.div_ceil(per);
    let ahead = prefetch_ahead(L2, R, rb);
    let full = blocks / per;
    let lane_block: &[i32; 16] = match format {
        QFormat::Q8 => &LANES_Q8,
        QFormat::Q4 => &LANES_Q4,
    };
    // Per group, for each row: init, xa, xb (q4 only) and d_x spread over the group's
    // lanes (zero past the row: those lanes' sums are zero, and a zero d keeps the
    // padding's scales out), side by side so the group loop walks one pointer.
    let vecs = if format == QFormat::Q4 { 4 } else { 3 };
    let mut xs = vec![[0i32; 16]; groups * M * vecs];
    for i in 0..M {
        // SAFETY: per the contract: row i's bytes and scales are blocks·32 and blocks long.
        let (x, d) = unsafe {
            (
                std::slice::from_raw_parts(xq.add(i * blocks * QBLOCK), blocks * QBLOCK),
                std::slice::from_raw_parts(xd.add(i * blocks), blocks),
            )
        };
        let gr = Groups::new(format, blocks, x);
        for gi in 0..groups {
            let slot = &mut xs[(gi * M + i) * vecs..(gi * M + i + 1) * vecs];
            slot[0] = gr.init[gi];
            slot[1] = bytemuck::cast(gr.xa[gi]);
            if format == QFormat::Q4 {
                slot[2] = bytemuck::cast(gr.xb[gi]);
            }
            slot[vecs - 1] = lane_block.map(|l| {
                d.get(gi * per + l as usize)
                    .copied()
                    .unwrap_or(0.0)
                    .to_bits() as i32
            });
        }
    }
    // The current weight rows' scales in f32, zero-padded so a group's load stays inside.
    let mut dw: [Vec<f32>; R] = std::array::from_fn(|_| vec![0f32; groups * per + 4]);
    let tail_bytes = ((blocks - full * per) * bb) as u32;
    let byte_mask: __mmask64 = if tail_bytes == 0 {
        0
    } else {
        u64::MAX >> (64 - tail_bytes)
    };
    // SAFETY: per the contract; row pointers are clamped to the last valid row.
    unsafe {
        let lanes = _mm512_loadu_si512(lane_block.as_ptr() as *const __m512i);
        let (flip, nib) = (_mm512_set1_epi8(-128), _mm512_set1_epi8(15));
        let mut j = 0;
        while j < n {
            let r = (n - j).min(R);
            let row = |q: usize| j + q.min(r - 1);
            for (q, d) in dw.iter_mut().enumerate() {
                let s = scales.add(row(q) * blocks) as *const i16;
                for b in (0..blocks).step_by(16) {
                    let mask = (u32::MAX >> (32 - (blocks - b).min(16))) as __mmask16;
                    let h = _mm256_maskz_loadu_epi16(mask, s.add(b));
                    _mm512_mask_storeu_ps(d.as_mut_ptr().add(b), mask, _mm512_cvtph_ps(h));
                }
            }
            let mut acc = [[_mm512_setzero_ps(); M]; R];
            for gi in 0..groups {
                let b = gi * per;
                // The two rows' weights (flipped or split into nibbles) and d_w spread.
                let mut w = [[_mm512_setzero_si512(); 2]; R];
                let mut dws = [_mm512_setzero_ps(); R];
                for q in 0..R {
                    let p = qs.add(row(q) * rb + b * bb);
                    let raw = if gi < full {
                        request_ahead::<L2>(p, ahead);
                        _mm512_loadu_si512(p as *const __m512i)
                    } else {
                        _mm512_maskz_loadu_epi8(byte_mask, p as *const i8)
                    };
                    w[q] = match format {
                        // Masked-off bytes become 128 after the flip, but meet x = 0.
                        QFormat::Q8 => [_mm512_xor_si512(raw, flip), _mm512_setzero_si512()],
                        QFormat::Q4 => [
                            _mm512_and_si512(raw, nib),
                            _mm512_and_si512(_mm512_srli_epi16::<4>(raw), nib),
                        ],
                    };
                    let d4 = _mm_loadu_ps(dw[q].as_ptr().add(b));
                    dws[q] = _mm512_permutexvar_ps(lanes, _mm512_castps128_ps512(d4));
                }
                let xg = xs.as_ptr().add(gi * M * vecs) as *const __m512i;
                for i in 0..M {
                    let xi = xg.add(i * vecs);
                    let init = _mm512_loadu_si512(xi);
                    let xa = _mm512_loadu_si512(xi.add(1));
                    let xb = if format == QFormat::Q4 {
                        _mm512_loadu_si512(xi.add(2))
                    } else {
                        xa
                    };
                    let dxi = _mm512_castsi512_ps(_mm512_loadu_si512(xi.add(vecs - 1)));
                    for q in 0..R {
                        let s = match format {
                            QFormat::Q8 => _mm512_dpbusd_epi32(init, w[q][0], xa),
                            QFormat::Q4 => _mm512_dpbusd_epi32(
                                _mm512_dpbusd_epi32(init, w[q][0], xa),
                                w[q][1],
                                xb,
                            ),
                        };
                        let d = _mm512_mul_ps(dws[q], dxi);
                        acc[q][i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), d, acc[q][i]);
                    }
                }
            }
            for (q, a) in acc.iter().enumerate().take(r) {
                for (i, v) in a.iter().enumerate() {
                    *out.add(i * out_stride + j + q) = _mm512_reduce_add_ps(*v);
                }
            }
            j += r;
        }
    }
}
