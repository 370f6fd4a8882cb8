//! libjpeg's "islow" integer inverse DCT (`jpeg_idct_islow`, jidctint.c: CONST_BITS 13,
//! PASS1_BITS 2), the method Pillow decodes with. Every shortcut libjpeg takes (all-zero
//! AC columns/rows) gives the same integers as the full computation, so this computes the
//! full transform in a form the compiler vectorises, plus a DC-only block fast path.
//! Outputs are clamped to 0..=255 after adding 128: the same as libjpeg-turbo's SIMD code
//! (saturating packs) and its C code's range-limit table for every in-range value.

use std::num::Wrapping;

type W = Wrapping<i32>;
#[allow(non_snake_case)]
#[inline(always)]
const fn W(v: i32) -> W {
    Wrapping(v)
}

const CONST_BITS: i32 = 13;
const PASS1_BITS: i32 = 2;
const FIX_0_298631336: i32 = 2446;
const FIX_0_390180644: i32 = 3196;
const FIX_0_541196100: i32 = 4433;
const FIX_0_765366865: i32 = 6270;
const FIX_0_899976223: i32 = 7373;
const FIX_1_175875602: i32 = 9633;
const FIX_1_501321110: i32 = 12299;
const FIX_1_847759065: i32 = 15137;
const FIX_1_961570560: i32 = 16069;
const FIX_2_053119869: i32 = 16819;
const FIX_2_562915447: i32 = 20995;
const FIX_3_072711026: i32 = 25172;

/// One 1-D 8-point islow butterfly on 8 lanes at once: `v[k]` holds input `k` of each lane;
/// returns outputs 0..7 before descaling. Wrapping arithmetic: identical to libjpeg for
/// every value a valid stream produces, and no overflow panic on corrupt ones.
#[inline(always)]
fn butterfly(v: &[[W; 8]; 8], even_bias: i32) -> [[W; 8]; 8] {
    let f = |c: i32| W(c);
    let mut o = [[W(0); 8]; 8];
    for l in 0..8 {
        let z2 = v[2][l];
        let z3 = v[6][l];
        let z1 = (z2 + z3) * f(FIX_0_541196100);
        let tmp2 = z1 - z3 * f(FIX_1_847759065);
        let tmp3 = z1 + z2 * f(FIX_0_765366865);
        let z2 = v[0][l] + W(even_bias);
        let z3 = v[4][l];
        let tmp0 = (z2 + z3) << CONST_BITS as usize;
        let tmp1 = (z2 - z3) << CONST_BITS as usize;
        let tmp10 = tmp0 + tmp3;
        let tmp13 = tmp0 - tmp3;
        let tmp11 = tmp1 + tmp2;
        let tmp12 = tmp1 - tmp2;

        let t0 = v[7][l];
        let t1 = v[5][l];
        let t2 = v[3][l];
        let t3 = v[1][l];
        let z1 = t0 + t3;
        let z2 = t1 + t2;
        let z3 = t0 + t2;
        let z4 = t1 + t3;
        let z5 = (z3 + z4) * f(FIX_1_175875602);
        let t0 = t0 * f(FIX_0_298631336);
        let t1 = t1 * f(FIX_2_053119869);
        let t2 = t2 * f(FIX_3_072711026);
        let t3 = t3 * f(FIX_1_501321110);
        let z1 = z1 * f(-FIX_0_899976223);
        let z2 = z2 * f(-FIX_2_562915447);
        let z3 = z3 * f(-FIX_1_961570560) + z5;
        let z4 = z4 * f(-FIX_0_390180644) + z5;
        let t0 = t0 + z1 + z3;
        let t1 = t1 + z2 + z4;
        let t2 = t2 + z2 + z3;
        let t3 = t3 + z1 + z4;

        o[0][l] = tmp10 + t3;
        o[7][l] = tmp10 - t3;
        o[1][l] = tmp11 + t2;
        o[6][l] = tmp11 - t2;
        o[2][l] = tmp12 + t1;
        o[5][l] = tmp12 - t1;
        o[3][l] = tmp13 + t0;
        o[4][l] = tmp13 - t0;
    }
    o
}

#[inline(always)]
fn idct_body(coef: &[i16; 64], q: &[u16; 64], out: &mut [u8], stride: usize) {
    // Pass 1: columns (lane = column), dequantised; v[k][c] = input row k of column c.
    let mut v = [[W(0); 8]; 8];
    for k in 0..8 {
        for c in 0..8 {
            v[k][c] = W(coef[k * 8 + c] as i32) * W(q[k * 8 + c] as i32);
        }
    }
    let o = butterfly(&v, 0);
    // ws[r][c] = DESCALE(o[r][c], CONST_BITS - PASS1_BITS); pass 2 wants lanes = rows, so
    // store transposed: w[c][r].
    let mut w = [[W(0); 8]; 8];
    let s1 = (CONST_BITS - PASS1_BITS) as usize;
    for r in 0..8 {
        for c in 0..8 {
            w[c][r] = (o[r][c] + W(1 << (s1 - 1))) >> s1;
        }
    }
    // Pass 2: rows (lane = row); the rounding of the final descale is folded into the DC
    // term as libjpeg-turbo does (it is exact either way).
    let p = butterfly(&w, 1 << (PASS1_BITS + 2));
    let s2 = (CONST_BITS + PASS1_BITS + 3) as usize;
    for r in 0..8 {
        let row = &mut out[r * stride..r * stride + 8];
        for c in 0..8 {
            row[c] = ((p[c][r] >> s2).0 + 128).clamp(0, 255) as u8;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn idct_avx2(coef: &[i16; 64], q: &[u16; 64], out: &mut [u8], stride: usize) {
    idct_body(coef, q, out, stride)
}

fn idct_generic(coef: &[i16; 64], q: &[u16; 64], out: &mut [u8], stride: usize) {
    idct_body(coef, q, out, stride)
}

/// The block's DC-only value: islow with every AC coefficient zero.
#[inline]
pub fn dc_only_value(dc: i16, q0: u16) -> u8 {
    let x = dc as i64 * q0 as i64;
    // pass 1: x << PASS1_BITS; pass 2: (that + 16) >> 5
    let v = ((x << PASS1_BITS) + (1 << (PASS1_BITS + 2))) >> (PASS1_BITS + 3);
    (v + 128).clamp(0, 255) as u8
}

/// Inverse DCT of one block (natural order, not dequantised) into 8 rows of `out` (`stride`
/// bytes apart; `out` must hold `7 * stride + 8` bytes).
pub struct Idct {
    f: fn(&[i16; 64], &[u16; 64], &mut [u8], usize),
}

impl Idct {
    pub fn new() -> Idct {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            return Idct {
                f: |c, q, o, s| unsafe { idct_avx2(c, q, o, s) },
            };
        }
        Idct { f: idct_generic }
    }

    #[inline]
    pub fn block(&self, coef: &[i16; 64], q: &[u16; 64], out: &mut [u8], stride: usize) {
        let any_ac = coef[1..].iter().any(|&c| c != 0);
        self.block_known(coef, q, out, stride, any_ac)
    }

    /// [`Idct::block`] when the caller knows whether any AC coefficient is non-zero.
    #[inline]
    pub fn block_known(
        &self,
        coef: &[i16; 64],
        q: &[u16; 64],
        out: &mut [u8],
        stride: usize,
        any_ac: bool,
    ) {
        assert!(out.len() >= 7 * stride + 8);
        if !any_ac {
            let v = dc_only_value(coef[0], q[0]);
            for r in 0..8 {
                out[r * stride..r * stride + 8].fill(v);
            }
        } else {
            (self.f)(coef, q, out, stride)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dc_only_fast_path_equals_full_transform() {
        let q = [1u16; 64];
        for dc in -2048i16..=2047 {
            for q0 in [1u16, 2, 3, 7, 16, 255] {
                // Dequantised values of valid 8-bit data stay far inside +-2^15.
                if (dc as i32 * q0 as i32).abs() > 32767 {
                    continue;
                }
                let mut coef = [0i16; 64];
                coef[0] = dc;
                let mut qq = q;
                qq[0] = q0;
                let mut out = [0u8; 64];
                idct_generic(&coef, &qq, &mut out, 8);
                assert!(
                    out.iter().all(|&v| v == dc_only_value(dc, q0)),
                    "dc {dc} q {q0}"
                );
            }
        }
    }
}
