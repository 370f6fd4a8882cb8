//! aarch64 NEON microkernel (NEON is the aarch64 baseline, so no runtime check is needed).

use std::arch::aarch64::*;

/// 8×8 NEON microkernel: C[rows×cols] (+)= Apanel[kc×8]·Bpanel[kc×8]; same contract as the
/// x86 microkernels (packed, zero-padded panels; only the valid corner of C is written).
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
pub(crate) unsafe fn ukr_neon(
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    accumulate: bool,
) {
    const MR: usize = 8;
    // SAFETY: the caller guarantees the panel extents (kc·8 each) and the C tile.
    unsafe {
        let mut acc = [[vdupq_n_f32(0.0); 2]; MR];
        let (mut ap, mut bp) = (a, b);
        for _ in 0..kc {
            let b0 = vld1q_f32(bp);
            let b1 = vld1q_f32(bp.add(4));
            for i in 0..MR {
                let ai = *ap.add(i);
                acc[i][0] = vfmaq_n_f32(acc[i][0], b0, ai);
                acc[i][1] = vfmaq_n_f32(acc[i][1], b1, ai);
            }
            ap = ap.add(MR);
            bp = bp.add(8);
        }
        if rows == MR && cols == 8 {
            for i in 0..MR {
                for v in 0..2 {
                    let p = c.add(i * ldc + 4 * v);
                    let r = if accumulate {
                        vaddq_f32(vld1q_f32(p), acc[i][v])
                    } else {
                        acc[i][v]
                    };
                    vst1q_f32(p, r);
                }
            }
        } else {
            let mut tmp = [[0.0f32; 8]; MR];
            for i in 0..MR {
                vst1q_f32(tmp[i].as_mut_ptr(), acc[i][0]);
                vst1q_f32(tmp[i].as_mut_ptr().add(4), acc[i][1]);
            }
            for i in 0..rows {
                for j in 0..cols {
                    let p = c.add(i * ldc + j);
                    *p = if accumulate {
                        *p + tmp[i][j]
                    } else {
                        tmp[i][j]
                    };
                }
            }
        }
    }
}
