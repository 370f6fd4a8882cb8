//! Counting NaN and infinite values in little-endian float bytes (as a checkpoint stores
//! them, any alignment): a value is not finite when its exponent bits are all ones. Bound by
//! memory; split over the rayon pool for large inputs.

use rayon::prelude::*;

use crate::isa::multiversion;
use crate::{Isa, isa};

/// The float encodings a checkpoint stores.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FloatBits {
    F32,
    F16,
    Bf16,
}

impl FloatBits {
    /// Bytes per value.
    pub const fn width(self) -> usize {
        match self {
            FloatBits::F32 => 4,
            FloatBits::F16 | FloatBits::Bf16 => 2,
        }
    }

    /// The exponent mask (all ones = NaN or ±inf).
    const fn exp_mask(self) -> u32 {
        match self {
            FloatBits::F32 => 0x7f80_0000,
            FloatBits::F16 => 0x7c00,
            FloatBits::Bf16 => 0x7f80,
        }
    }

    /// Whether the value with these bits is NaN or infinite.
    pub const fn is_nonfinite(self, bits: u32) -> bool {
        bits & self.exp_mask() == self.exp_mask()
    }
}

#[inline(always)]
fn count2_body(bytes: &[u8], mask: u16) -> usize {
    bytes
        .chunks_exact(2)
        .map(|c| usize::from(u16::from_le_bytes([c[0], c[1]]) & mask == mask))
        .sum()
}
multiversion! { fn count2_isa(bytes: &[u8], mask: u16) -> usize = count2_body; }

#[inline(always)]
fn count4_body(bytes: &[u8], mask: u32) -> usize {
    bytes
        .chunks_exact(4)
        .map(|c| usize::from(u32::from_le_bytes([c[0], c[1], c[2], c[3]]) & mask == mask))
        .sum()
}
multiversion! { fn count4_isa(bytes: &[u8], mask: u32) -> usize = count4_body; }

/// Values per parallel task (4 MiB of f16).
const CHUNK: usize = 1 << 21;

/// How many of the values in `bytes` (little-endian `format`, a trailing partial value
/// ignored) are NaN or infinite.
pub fn count_nonfinite(format: FloatBits, bytes: &[u8]) -> usize {
    count_nonfinite_with(isa(), format, bytes)
}

/// [`count_nonfinite`] on a chosen instruction set.
pub fn count_nonfinite_with(isa: Isa, format: FloatBits, bytes: &[u8]) -> usize {
    let isa = isa.resolve();
    let w = format.width();
    let count = |b: &[u8]| match w {
        2 => count2_isa(isa, b, format.exp_mask() as u16),
        _ => count4_isa(isa, b, format.exp_mask()),
    };
    let bytes = &bytes[..bytes.len() / w * w];
    if bytes.len() <= CHUNK * w {
        count(bytes)
    } else {
        bytes.par_chunks(CHUNK * w).map(count).sum()
    }
}

/// The index of the first NaN or infinite value in `bytes`, if any (for error messages).
pub fn first_nonfinite(format: FloatBits, bytes: &[u8]) -> Option<usize> {
    let w = format.width();
    bytes.chunks_exact(w).position(|c| {
        let mut b = [0u8; 4];
        b[..w].copy_from_slice(c);
        format.is_nonfinite(u32::from_le_bytes(b))
    })
}

/// The f32 bits of 65520, the smallest magnitude that rounds to ±inf in f16 (65504 is the
/// largest f16; halfway to the next binade step, 65520, rounds up to inf).
const F16_INF_THRESHOLD: u32 = 0x477f_f000;

/// The value's bits as an f32's (bf16 and f32 only: f16 cannot exceed its own range).
#[inline(always)]
fn f32_bits(format: FloatBits, c: &[u8]) -> u32 {
    match format {
        FloatBits::F32 => u32::from_le_bytes([c[0], c[1], c[2], c[3]]),
        FloatBits::Bf16 => (u16::from_le_bytes([c[0], c[1]]) as u32) << 16,
        FloatBits::F16 => 0,
    }
}

/// How many finite values in `bytes` become ±inf when rounded to f16 (|x| ≥ 65520), and the
/// largest magnitude among them (0 when none). Always (0, 0) for f16 input.
pub fn f16_overflow(format: FloatBits, bytes: &[u8]) -> (usize, f32) {
    if format == FloatBits::F16 {
        return (0, 0.0);
    }
    let w = format.width();
    let scan = |b: &[u8]| {
        b.chunks_exact(w).fold((0usize, 0u32), |(n, m), c| {
            let a = f32_bits(format, c) & 0x7fff_ffff;
            if (F16_INF_THRESHOLD..0x7f80_0000).contains(&a) {
                (n + 1, m.max(a))
            } else {
                (n, m)
            }
        })
    };
    let (n, m) = bytes
        .par_chunks(CHUNK * w)
        .map(scan)
        .reduce(|| (0, 0), |a, b| (a.0 + b.0, a.1.max(b.1)));
    (n, f32::from_bits(m))
}
