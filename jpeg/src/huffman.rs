//! Huffman tables (DHT) and the entropy-coded bit reader (byte stuffing, markers).

use crate::error::{JpegError, Result};

/// Bits looked up at once.
const LOOKUP_BITS: u32 = 9;

/// A decoding table built from one DHT entry, as libjpeg's `jpeg_make_d_derived_tbl`.
#[derive(Clone)]
pub struct HuffTable {
    /// `(length << 8) | symbol` for codes of at most `LOOKUP_BITS` bits, 0 otherwise.
    lookup: Box<[u16; 1 << LOOKUP_BITS]>,
    /// Largest code of each length (-1 when none); index 17 is a sentinel.
    maxcode: [i32; 18],
    /// `symbol index - code` for each length.
    valoffset: [i32; 17],
    values: Vec<u8>,
    /// AC tables: for a code and its magnitude bits within `LOOKUP_BITS` bits,
    /// `value << 8 | run << 4 | total length`; 0 otherwise.
    fast_ac: Box<[i32; 1 << LOOKUP_BITS]>,
}

impl HuffTable {
    /// `counts[l]` codes of length `l + 1`, then the symbols in code order. `offset` names the
    /// segment in errors; `dc` tables may only hold symbols 0..=15.
    pub fn new(counts: &[u8; 16], values: &[u8], dc: bool, offset: usize) -> Result<HuffTable> {
        let bad = |reason: String| JpegError::BadSegment {
            marker: "DHT",
            offset,
            reason,
        };
        let total: usize = counts.iter().map(|&c| c as usize).sum();
        if total > 256 || total != values.len() {
            return Err(bad(format!("{total} codes declared, at most 256 allowed")));
        }
        if dc && let Some(&v) = values.iter().find(|&&v| v > 15) {
            return Err(bad(format!("DC table holds symbol {v} (at most 15)")));
        }
        let mut maxcode = [-1i32; 18];
        let mut valoffset = [0i32; 17];
        let mut lookup = Box::new([0u16; 1 << LOOKUP_BITS]);
        let mut code: i32 = 0;
        let mut p: i32 = 0;
        for len in 1..=16u32 {
            let n = counts[len as usize - 1] as i32;
            if n > 0 {
                valoffset[len as usize] = p - code;
                for _ in 0..n {
                    // Checked per code, before the lookup is filled: an oversubscribed
                    // length would otherwise index past the table (found by fuzzing).
                    if code >= (1 << len) {
                        return Err(bad(format!("code lengths oversubscribed at length {len}")));
                    }
                    if len <= LOOKUP_BITS {
                        let shift = LOOKUP_BITS - len;
                        let first = (code as usize) << shift;
                        let entry = ((len as u16) << 8) | values[p as usize] as u16;
                        for e in &mut lookup[first..first + (1 << shift)] {
                            *e = entry;
                        }
                    }
                    code += 1;
                    p += 1;
                }
                maxcode[len as usize] = code - 1;
            }
            // libjpeg refuses tables whose codes overflow a length (or use an all-ones code).
            let longest = counts
                .iter()
                .rposition(|&c| c > 0)
                .map_or(0, |i| i as u32 + 1);
            if len <= longest && code >= (1 << len) {
                return Err(bad(format!("code lengths oversubscribed at length {len}")));
            }
            code <<= 1;
        }
        maxcode[17] = i32::MAX;
        let mut fast_ac = Box::new([0i32; 1 << LOOKUP_BITS]);
        if !dc {
            for (i, f) in fast_ac.iter_mut().enumerate() {
                let e = lookup[i];
                let (len, sym) = ((e >> 8) as u32, (e & 0xFF) as u32);
                let (run, s) = (sym >> 4, sym & 15);
                if e != 0 && s != 0 && len + s <= LOOKUP_BITS {
                    let bits = ((i as u32) >> (LOOKUP_BITS - len - s)) & ((1 << s) - 1);
                    let v = bits as i32;
                    let v = if v < (1 << (s - 1)) {
                        v - (1 << s) + 1
                    } else {
                        v
                    };
                    *f = (v << 8) | (run << 4) as i32 | (len + s) as i32;
                }
            }
        }
        Ok(HuffTable {
            lookup,
            maxcode,
            valoffset,
            values: values.to_vec(),
            fast_ac,
        })
    }
}

/// Reads the entropy-coded segment of a scan MSB first, unstuffing `FF 00`. When a marker
/// (or the end of the data) is reached it supplies zero bits, as libjpeg does, and counts
/// them so that a scan consuming them is reported as corrupt.
pub struct BitReader<'a> {
    data: &'a [u8],
    pub pos: usize,
    buf: u64,
    nbits: u32,
    /// Zero bits appended after a marker or the end of data.
    padded: u32,
    pub marker_hit: bool,
}

#[inline]
fn has_ff_byte(w: u64) -> bool {
    let v = !w;
    (v.wrapping_sub(0x0101_0101_0101_0101) & w & 0x8080_8080_8080_8080) != 0
}

impl<'a> BitReader<'a> {
    pub fn new(data: &'a [u8], pos: usize) -> BitReader<'a> {
        BitReader {
            data,
            pos,
            buf: 0,
            nbits: 0,
            padded: 0,
            marker_hit: false,
        }
    }

    #[cold]
    fn refill_slow(&mut self) {
        while self.nbits <= 56 {
            let mut byte = 0u8;
            if self.marker_hit {
                self.padded += 8;
            } else if self.pos < self.data.len() {
                let b = self.data[self.pos];
                if b != 0xFF {
                    self.pos += 1;
                    byte = b;
                } else {
                    let mut p = self.pos + 1;
                    while p < self.data.len() && self.data[p] == 0xFF {
                        p += 1;
                    }
                    if p < self.data.len() && self.data[p] == 0 {
                        self.pos = p + 1;
                        byte = 0xFF;
                    } else {
                        // A marker (or the end of data): stay on its first FF.
                        self.marker_hit = true;
                        self.padded += 8;
                    }
                }
            } else {
                self.marker_hit = true;
                self.padded += 8;
            }
            self.buf |= (byte as u64) << (56 - self.nbits);
            self.nbits += 8;
        }
    }

    /// Ensures at least 57 bits are buffered.
    #[inline(always)]
    pub fn refill(&mut self) {
        if self.nbits > 56 {
            return;
        }
        if !self.marker_hit && self.pos + 8 <= self.data.len() {
            let w = u64::from_be_bytes(self.data[self.pos..self.pos + 8].try_into().unwrap());
            if !has_ff_byte(w) {
                let k = (64 - self.nbits) / 8;
                self.buf |= w >> self.nbits;
                self.nbits += 8 * k;
                self.pos += k as usize;
                if self.nbits < 64 {
                    self.buf &= !(u64::MAX >> self.nbits);
                }
                return;
            }
        }
        self.refill_slow();
    }

    #[inline(always)]
    pub fn nbits(&self) -> u32 {
        self.nbits
    }

    #[inline(always)]
    pub fn peek(&self, n: u32) -> u32 {
        (self.buf >> (64 - n)) as u32
    }

    #[inline(always)]
    pub fn consume(&mut self, n: u32) {
        self.buf <<= n;
        self.nbits -= n;
    }

    /// `n` (1..=16) raw bits; the caller has refilled.
    #[inline(always)]
    pub fn bits(&mut self, n: u32) -> u32 {
        let v = self.peek(n);
        self.consume(n);
        v
    }

    #[inline(always)]
    pub fn bit(&mut self) -> u32 {
        self.bits(1)
    }

    /// `n` bits read as a signed magnitude-category value (JPEG's EXTEND).
    #[inline(always)]
    pub fn receive_extend(&mut self, n: u32) -> i32 {
        if n == 0 {
            return 0;
        }
        let v = self.bits(n) as i32;
        if v < (1 << (n - 1)) {
            v - (1 << n) + 1
        } else {
            v
        }
    }

    /// A whole AC coefficient (`value << 8 | run << 4 | length`) when its code and
    /// magnitude fit the lookup, consumed; 0 otherwise (nothing consumed).
    #[inline(always)]
    pub fn fast_ac(&mut self, t: &HuffTable) -> i32 {
        let f = t.fast_ac[self.peek(LOOKUP_BITS) as usize];
        self.consume((f & 15) as u32);
        f
    }

    /// One Huffman symbol; needs 16 buffered bits (the caller has refilled). `None`: no code
    /// of the table matches.
    #[inline(always)]
    pub fn decode(&mut self, t: &HuffTable) -> Option<u8> {
        let e = t.lookup[self.peek(LOOKUP_BITS) as usize];
        if e != 0 {
            self.consume((e >> 8) as u32);
            return Some(e as u8);
        }
        self.decode_slow(t)
    }

    #[cold]
    fn decode_slow(&mut self, t: &HuffTable) -> Option<u8> {
        let mut len = LOOKUP_BITS + 1;
        let mut code = self.peek(len) as i32;
        while len <= 16 && code > t.maxcode[len as usize] {
            len += 1;
            code = self.peek(len.min(16)) as i32;
        }
        if len > 16 {
            return None;
        }
        self.consume(len);
        t.values
            .get((code + t.valoffset[len as usize]) as usize)
            .copied()
    }

    /// True if the scan consumed bits that were not in the data (it ran into a marker).
    pub fn overran(&self) -> bool {
        self.padded > self.nbits
    }

    /// Drops buffered bits and finds the next marker; returns (its code, its offset), the
    /// reader positioned after it. `None` at the end of the data.
    pub fn next_marker(&mut self) -> Option<(u8, usize)> {
        self.buf = 0;
        self.nbits = 0;
        self.padded = 0;
        self.marker_hit = false;
        let d = self.data;
        let mut p = self.pos;
        loop {
            while p < d.len() && d[p] != 0xFF {
                p += 1;
            }
            let start = p;
            while p < d.len() && d[p] == 0xFF {
                p += 1;
            }
            if p >= d.len() {
                self.pos = d.len();
                return None;
            }
            if d[p] != 0 {
                self.pos = p + 1;
                return Some((d[p], start));
            }
            p += 1;
        }
    }
}
