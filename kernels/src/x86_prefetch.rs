//! Software prefetch of the weight rows the decode kernels stream from memory: which cache
//! level the requests go to on this CPU, how far ahead, and the request itself.

use std::arch::x86_64::*;

/// Bytes ahead of its current position a decode kernel requests each weight row it streams
/// (rows are read once per token; the distance the quantized GEMV measured best).
pub(crate) const STREAM_AHEAD: usize = 16384;

/// Whether the decode kernels that stream weight rows (the quantized GEMVs, the VNNI rows,
/// the packed bf16 GEMV, the row-major f32/f16 GEMV) request them into L2 (`prefetcht1`)
/// instead of L1 (`prefetcht0`). On AMD Zen 4 the
/// L1 requests held one core to 12 GB/s; into L2, OPT-2.7B's fc1 in q8 from DRAM took 0.59×
/// the time (one thread) and 0.60× (two: 19.7 → 31.5 GB/s), q4 0.78×, the VNNI rows at
/// 2 rows 0.76× and 4 rows 0.89×, the AVX2 kernel 0.79–0.82×, the packed bf16 GEMV 0.95–0.97×
/// at 1 row and 0.78–0.80× at 2–4 (docs/performance.md). Intel keeps the L1 requests it was
/// measured with. `BLIP2_CPU_QPREFETCH=l1|l2` overrides (A/B runs). Read once.
pub(crate) fn prefetch_to_l2() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        match std::env::var("BLIP2_CPU_QPREFETCH")
            .as_deref()
            .map(str::trim)
        {
            Ok("l1") => false,
            Ok("l2") => true,
            _ => crate::cpu_is_amd(),
        }
    })
}

/// How far ahead of its current position each of `rows` weight rows (`rb` bytes each,
/// stored one after another) is requested. L1 requests: [`STREAM_AHEAD`]. L2 requests: at
/// least one pass of the rows ahead, so that long rows (fc2's 10 KiB) do not request bytes
/// the pass's own later rows are about to read (fc2 in q8: 0.86× the time of 16 KiB ahead).
#[inline(always)]
pub(crate) const fn prefetch_ahead(l2: bool, rows: usize, rb: usize) -> usize {
    if l2 && rows * rb > STREAM_AHEAD {
        rows * rb
    } else {
        STREAM_AHEAD
    }
}

/// Requests the cache line at `p + ahead`: into L2 with `L2`, else into L1. Never faults.
#[inline(always)]
pub(crate) fn request_ahead<const L2: bool>(p: *const u8, ahead: usize) {
    let p = p.wrapping_add(ahead) as *const i8;
    // SAFETY: a prefetch is a hint; it never faults, whatever the address. SSE is baseline.
    unsafe {
        if L2 {
            _mm_prefetch::<_MM_HINT_T1>(p);
        } else {
            _mm_prefetch::<_MM_HINT_T0>(p);
        }
    }
}
