//! Marker parsing and scan decoding (sequential and progressive Huffman), then output.

use crate::color::{self, Plane, Upsample};
use crate::error::{JpegError, Result};
use crate::huffman::{BitReader, HuffTable};
use crate::idct::Idct;
use crate::{ColorSpace, DecodeOptions, Image};

/// Zig-zag position -> natural (row-major) index.
const ZIGZAG: [usize; 64] = [
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20,
    13, 6, 7, 14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59,
    52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63,
];

struct Component {
    id: u8,
    h: usize,
    v: usize,
    tq: usize,
    /// Blocks per row / column of the plane (padded to whole MCUs).
    bw: usize,
    bh: usize,
    /// downsampled_width / downsampled_height.
    dw: usize,
    dh: usize,
    quant: Option<[u16; 64]>,
    /// Decoded samples: a ring of `ring` rows of `bw * 8` bytes.
    plane: Vec<u8>,
    ring: usize,
    /// Downsampled rows decoded so far.
    decoded: usize,
    coefs: Vec<i16>,
    dc_pred: i32,
    /// Progressive: bits of precision still missing per coefficient (-1: never seen).
    coef_bits: [i8; 64],
    in_scans: usize,
}

struct Frame {
    progressive: bool,
    width: usize,
    height: usize,
    comps: Vec<Component>,
    max_h: usize,
    max_v: usize,
    mcux: usize,
    mcuy: usize,
    /// Sequential file whose first scan held every component: blocks go straight
    /// through the IDCT into the planes.
    direct: Option<bool>,
    emitter: Option<Emitter>,
}

fn marker_name(m: u8) -> &'static str {
    match m {
        0xC0 => "SOF0",
        0xC1 => "SOF1",
        0xC2 => "SOF2",
        0xC4 => "DHT",
        0xDB => "DQT",
        0xDD => "DRI",
        0xDA => "SOS",
        0xE0 => "APP0",
        0xE1 => "APP1",
        0xEE => "APP14",
        _ => "marker",
    }
}

pub struct Decoder<'a> {
    data: &'a [u8],
    opts: DecodeOptions,
    qt: [Option<[u16; 64]>; 4],
    dc: [Option<HuffTable>; 4],
    ac: [Option<HuffTable>; 4],
    restart_interval: usize,
    frame: Option<Frame>,
    jfif: bool,
    adobe_transform: Option<u8>,
    orientation: Option<u16>,
    scans: usize,
    idct: Idct,
}

impl<'a> Decoder<'a> {
    pub fn new(data: &'a [u8], opts: DecodeOptions) -> Decoder<'a> {
        Decoder {
            data,
            opts,
            qt: [None; 4],
            dc: [None, None, None, None],
            ac: [None, None, None, None],
            restart_interval: 0,
            frame: None,
            jfif: false,
            adobe_transform: None,
            orientation: None,
            scans: 0,
            idct: Idct::new(),
        }
    }

    /// The segment payload after a marker at `pos` (pointing after the marker code).
    fn segment(&self, pos: usize, marker: u8) -> Result<&'a [u8]> {
        let d = self.data;
        if pos + 2 > d.len() {
            return Err(JpegError::Truncated {
                offset: d.len(),
                context: "a marker segment length",
            });
        }
        let len = u16::from_be_bytes([d[pos], d[pos + 1]]) as usize;
        if len < 2 {
            return Err(JpegError::BadSegment {
                marker: marker_name(marker),
                offset: pos - 2,
                reason: format!("length {len} is below 2"),
            });
        }
        if pos + len > d.len() {
            return Err(JpegError::Truncated {
                offset: d.len(),
                context: marker_name(marker),
            });
        }
        Ok(&d[pos + 2..pos + len])
    }

    pub fn decode(mut self) -> Result<Image> {
        let d = self.data;
        if d.len() < 2 || d[0] != 0xFF || d[1] != 0xD8 {
            return Err(JpegError::NotJpeg {
                found: d[..d.len().min(2)].to_vec(),
            });
        }
        let mut pos = 2;
        loop {
            // next_marker: libjpeg skips (warns about) bytes before a marker's FF.
            let mut r = BitReader::new(d, pos);
            let Some((m, at)) = r.next_marker() else {
                return self.finish_without_eoi();
            };
            pos = r.pos;
            match m {
                0xD8 => {
                    return Err(JpegError::UnexpectedMarker {
                        marker: m,
                        offset: at,
                        reason: "second SOI",
                    });
                }
                0xD9 => return self.finish(),
                0xC0..=0xC2 => {
                    let seg = self.segment(pos, m)?;
                    self.read_sof(seg, m == 0xC2, at)?;
                    pos += 2 + seg.len();
                }
                0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF => {
                    let what = match m {
                        0xC3 => "lossless (SOF3)",
                        0xC5..=0xC7 => "hierarchical (SOF5-7)",
                        _ => "arithmetic-coded (SOF9-15)",
                    };
                    return Err(JpegError::Unsupported(format!(
                        "{what} JPEG (marker FF {m:02X} at offset {at}); only Huffman-coded baseline, extended and progressive 8-bit JPEGs are decoded"
                    )));
                }
                0xC4 => {
                    let seg = self.segment(pos, m)?;
                    self.read_dht(seg, at)?;
                    pos += 2 + seg.len();
                }
                0xDB => {
                    let seg = self.segment(pos, m)?;
                    self.read_dqt(seg, at)?;
                    pos += 2 + seg.len();
                }
                0xDD => {
                    let seg = self.segment(pos, m)?;
                    if seg.len() != 2 {
                        return Err(JpegError::BadSegment {
                            marker: "DRI",
                            offset: at,
                            reason: format!("length {} (expected 4)", seg.len() + 2),
                        });
                    }
                    self.restart_interval = u16::from_be_bytes([seg[0], seg[1]]) as usize;
                    pos += 2 + seg.len();
                }
                0xDA => {
                    let seg = self.segment(pos, m)?;
                    pos = self.read_scan(seg, at, pos + 2 + seg.len())?;
                }
                0xE0..=0xEF | 0xFE | 0xCC | 0xDC | 0xDE | 0xDF => {
                    let seg = self.segment(pos, m)?;
                    match m {
                        0xE0 if seg.len() >= 12 && seg.starts_with(b"JFIF\0") => self.jfif = true,
                        0xEE if seg.len() >= 12 && seg.starts_with(b"Adobe") => {
                            self.adobe_transform = Some(seg[11])
                        }
                        0xE1 if self.orientation.is_none() && seg.starts_with(b"Exif\0\0") => {
                            self.orientation = crate::exif::orientation(&seg[6..]);
                        }
                        _ => {}
                    }
                    pos += 2 + seg.len();
                }
                0xD0..=0xD7 | 0x01 => {}
                _ => {
                    return Err(JpegError::UnexpectedMarker {
                        marker: m,
                        offset: at,
                        reason: "unknown marker",
                    });
                }
            }
        }
    }

    fn read_sof(&mut self, s: &[u8], progressive: bool, at: usize) -> Result<()> {
        let bad = |reason: String| JpegError::BadSegment {
            marker: "SOF",
            offset: at,
            reason,
        };
        if self.frame.is_some() {
            return Err(JpegError::UnexpectedMarker {
                marker: if progressive { 0xC2 } else { 0xC0 },
                offset: at,
                reason: "second frame header",
            });
        }
        if s.len() < 6 {
            return Err(bad(format!("length {} is too short", s.len() + 2)));
        }
        let precision = s[0];
        let height = u16::from_be_bytes([s[1], s[2]]) as usize;
        let width = u16::from_be_bytes([s[3], s[4]]) as usize;
        let n = s[5] as usize;
        if precision != 8 {
            return Err(JpegError::Unsupported(format!(
                "{precision}-bit samples (SOF at offset {at}); only 8-bit JPEGs are decoded"
            )));
        }
        if height == 0 {
            return Err(JpegError::Unsupported(format!(
                "height 0 in the frame header at offset {at} (height given by a DNL marker)"
            )));
        }
        if width == 0 {
            return Err(bad("width 0".into()));
        }
        if !matches!(n, 1 | 3 | 4) {
            return Err(JpegError::Unsupported(format!(
                "{n} colour components (SOF at offset {at}); Pillow reads 1 (L), 3 (RGB) or 4 (CMYK)"
            )));
        }
        if s.len() != 6 + 3 * n {
            return Err(bad(format!(
                "length {} does not match {n} components (expected {})",
                s.len() + 2,
                8 + 3 * n
            )));
        }
        let pixels = width as u64 * height as u64;
        if pixels > self.opts.max_pixels {
            return Err(JpegError::TooLarge {
                width: width as u32,
                height: height as u32,
                limit: self.opts.max_pixels,
            });
        }
        let mut comps = Vec::with_capacity(n);
        for i in 0..n {
            let c = &s[6 + 3 * i..9 + 3 * i];
            let (h, v) = ((c[1] >> 4) as usize, (c[1] & 15) as usize);
            if !(1..=4).contains(&h) || !(1..=4).contains(&v) {
                return Err(bad(format!(
                    "component {} has sampling factors {h}x{v}",
                    c[0]
                )));
            }
            if c[2] > 3 {
                return Err(bad(format!(
                    "component {} uses quantisation table {}",
                    c[0], c[2]
                )));
            }
            if comps.iter().any(|p: &Component| p.id == c[0]) {
                return Err(bad(format!("component id {} appears twice", c[0])));
            }
            comps.push(Component {
                id: c[0],
                h,
                v,
                tq: c[2] as usize,
                bw: 0,
                bh: 0,
                dw: 0,
                dh: 0,
                quant: None,
                plane: Vec::new(),
                ring: 0,
                decoded: 0,
                coefs: Vec::new(),
                dc_pred: 0,
                coef_bits: [-1; 64],
                in_scans: 0,
            });
        }
        let max_h = comps.iter().map(|c| c.h).max().unwrap();
        let max_v = comps.iter().map(|c| c.v).max().unwrap();
        let mcux = width.div_ceil(8 * max_h);
        let mcuy = height.div_ceil(8 * max_v);
        for c in &mut comps {
            if max_h % c.h != 0 || max_v % c.v != 0 {
                return Err(JpegError::Unsupported(format!(
                    "fractional sampling ratio: component {} is {}x{} of {max_h}x{max_v}",
                    c.id, c.h, c.v
                )));
            }
            c.bw = mcux * c.h;
            c.bh = mcuy * c.v;
            c.dw = (width * c.h).div_ceil(max_h);
            c.dh = (height * c.v).div_ceil(max_v);
        }
        self.frame = Some(Frame {
            progressive,
            width,
            height,
            comps,
            max_h,
            max_v,
            mcux,
            mcuy,
            direct: None,
            emitter: None,
        });
        Ok(())
    }

    fn read_dht(&mut self, mut s: &[u8], at: usize) -> Result<()> {
        while !s.is_empty() {
            if s.len() < 17 {
                return Err(JpegError::BadSegment {
                    marker: "DHT",
                    offset: at,
                    reason: "table header cut short".into(),
                });
            }
            let (class, id) = (s[0] >> 4, (s[0] & 15) as usize);
            if class > 1 || id > 3 {
                return Err(JpegError::BadSegment {
                    marker: "DHT",
                    offset: at,
                    reason: format!("table class {class} id {id}"),
                });
            }
            let counts: [u8; 16] = s[1..17].try_into().unwrap();
            let total: usize = counts.iter().map(|&c| c as usize).sum();
            if s.len() < 17 + total {
                return Err(JpegError::BadSegment {
                    marker: "DHT",
                    offset: at,
                    reason: format!("{total} symbols declared, {} present", s.len() - 17),
                });
            }
            let t = HuffTable::new(&counts, &s[17..17 + total], class == 0, at)?;
            if class == 0 {
                self.dc[id] = Some(t);
            } else {
                self.ac[id] = Some(t);
            }
            s = &s[17 + total..];
        }
        Ok(())
    }

    fn read_dqt(&mut self, mut s: &[u8], at: usize) -> Result<()> {
        while !s.is_empty() {
            let (pq, id) = (s[0] >> 4, (s[0] & 15) as usize);
            let size = if pq == 0 { 64 } else { 128 };
            if pq > 1 || id > 3 || s.len() < 1 + size {
                return Err(JpegError::BadSegment {
                    marker: "DQT",
                    offset: at,
                    reason: format!("table precision {pq} id {id}, {} bytes left", s.len() - 1),
                });
            }
            let mut q = [0u16; 64];
            for k in 0..64 {
                q[ZIGZAG[k]] = if pq == 0 {
                    s[1 + k] as u16
                } else {
                    u16::from_be_bytes([s[1 + 2 * k], s[2 + 2 * k]])
                };
            }
            self.qt[id] = Some(q);
            s = &s[1 + size..];
        }
        Ok(())
    }

    /// Parses an SOS header and decodes its entropy-coded data starting at `data_pos`;
    /// returns the offset of the marker that ends it.
    fn read_scan(&mut self, s: &[u8], at: usize, data_pos: usize) -> Result<usize> {
        let bad = |reason: String| JpegError::BadSegment {
            marker: "SOS",
            offset: at,
            reason,
        };
        let Some(frame) = self.frame.as_mut() else {
            return Err(JpegError::UnexpectedMarker {
                marker: 0xDA,
                offset: at,
                reason: "scan before any frame header (SOF)",
            });
        };
        if s.is_empty() {
            return Err(bad("empty".into()));
        }
        let n = s[0] as usize;
        if n == 0 || n > 4 || s.len() != 4 + 2 * n {
            return Err(bad(format!(
                "{n} components in a {}-byte header",
                s.len() + 2
            )));
        }
        let mut scomp = Vec::with_capacity(n); // (component index, dc table, ac table)
        for i in 0..n {
            let (cid, t) = (s[1 + 2 * i], s[2 + 2 * i]);
            let Some(ci) = frame.comps.iter().position(|c| c.id == cid) else {
                return Err(bad(format!("component id {cid} is not in the frame")));
            };
            if scomp.iter().any(|&(c, _, _)| c == ci) {
                return Err(bad(format!("component id {cid} appears twice")));
            }
            let (td, ta) = ((t >> 4) as usize, (t & 15) as usize);
            if td > 3 || ta > 3 {
                return Err(bad(format!(
                    "component {cid} uses Huffman tables {td}/{ta}"
                )));
            }
            scomp.push((ci, td, ta));
        }
        let (ss, se, ah, al) = (
            s[1 + 2 * n] as usize,
            s[2 + 2 * n] as usize,
            (s[3 + 2 * n] >> 4) as u32,
            (s[3 + 2 * n] & 15) as u32,
        );
        if frame.progressive {
            let ok = if ss == 0 {
                se == 0
            } else {
                se >= ss && se <= 63 && n == 1
            } && (ah == 0 || al + 1 == ah)
                && al <= 13;
            if !ok {
                return Err(bad(format!(
                    "invalid progressive parameters Ss={ss} Se={se} Ah={ah} Al={al} for {n} component(s)"
                )));
            }
        }
        // Sequential scans: libjpeg only warns about Ss/Se/Ah/Al other than 0/63/0/0, and
        // does not use them.
        let blocks_in_mcu: usize = scomp
            .iter()
            .map(|&(ci, _, _)| frame.comps[ci].h * frame.comps[ci].v)
            .sum();
        if n > 1 && blocks_in_mcu > 10 {
            return Err(bad(format!("{blocks_in_mcu} blocks per MCU (at most 10)")));
        }
        // Latch quantisation tables at a component's first scan, as libjpeg does.
        for &(ci, _, _) in &scomp {
            let c = &mut frame.comps[ci];
            if c.quant.is_none() {
                c.quant = Some(self.qt[c.tq].ok_or_else(|| {
                    bad(format!(
                        "component {} needs quantisation table {}, which is not defined",
                        c.id, c.tq
                    ))
                })?);
            }
            c.in_scans += 1;
        }
        // Tables this scan needs.
        for &(ci, td, ta) in &scomp {
            let cid = frame.comps[ci].id;
            let needs_dc = !frame.progressive || (ss == 0 && ah == 0);
            let needs_ac = !frame.progressive || ss > 0;
            if needs_dc && self.dc[td].is_none() {
                return Err(bad(format!(
                    "component {cid} uses DC Huffman table {td}, which is not defined"
                )));
            }
            if needs_ac && self.ac[ta].is_none() {
                return Err(bad(format!(
                    "component {cid} uses AC Huffman table {ta}, which is not defined"
                )));
            }
        }
        if frame.direct.is_none() {
            let direct = !frame.progressive && n == frame.comps.len();
            frame.direct = Some(direct);
            // libjpeg fixes the colour space when it reads the first scan header.
            frame.emitter = Some(Emitter::new(frame, self.jfif, self.adobe_transform));
            for c in &mut frame.comps {
                if direct {
                    c.ring = (3 * 8 * c.v).min(c.bh * 8);
                    c.plane = vec![0; c.bw * 8 * c.ring];
                } else {
                    c.coefs = vec![0; c.bw * 8 * c.bh * 8];
                }
            }
        } else if frame.direct == Some(true) {
            return Err(JpegError::UnexpectedMarker {
                marker: 0xDA,
                offset: at,
                reason: "second scan of a sequential JPEG whose first scan held every component",
            });
        }
        if frame.progressive {
            // coef_bits bookkeeping (jdphuff.c start_pass_phuff_decoder; an inconsistent
            // progression is only a warning there).
            for &(ci, _, _) in &scomp {
                let cb = &mut frame.comps[ci].coef_bits;
                for b in &mut cb[ss..=se] {
                    *b = al as i8;
                }
            }
        }
        self.scans += 1;
        let scan = Scan {
            comps: scomp,
            ss,
            se,
            ah,
            al,
        };
        let dc = &self.dc;
        let ac = &self.ac;
        decode_scan(
            frame,
            &scan,
            dc,
            ac,
            self.restart_interval,
            self.data,
            data_pos,
            self.scans,
            &self.idct,
        )
    }

    fn finish_without_eoi(self) -> Result<Image> {
        match &self.frame {
            Some(f) if f.direct == Some(true) => self.finish(),
            _ => Err(JpegError::Truncated {
                offset: self.data.len(),
                context: "the marker stream (no EOI)",
            }),
        }
    }

    fn finish(self) -> Result<Image> {
        let Some(mut frame) = self.frame else {
            return Err(JpegError::Truncated {
                offset: self.data.len(),
                context: "the headers (EOI before any frame)",
            });
        };
        if frame.direct.is_none() {
            return Err(JpegError::Truncated {
                offset: self.data.len(),
                context: "the image (EOI before any scan)",
            });
        }
        if let Some(c) = frame.comps.iter().find(|c| c.in_scans == 0) {
            return Err(JpegError::Corrupt {
                scan: self.scans,
                offset: self.data.len(),
                reason: format!("component {} was never coded in a scan", c.id),
            });
        }
        if frame.progressive {
            // libjpeg smooths blocks (decompress_smooth_data) when the first nine AC
            // coefficients of some component are not fully refined; refuse rather than differ.
            for c in &frame.comps {
                if c.coef_bits[0] >= 0 && c.coef_bits[1..10].iter().any(|&b| b != 0) {
                    return Err(JpegError::Unsupported(format!(
                        "progressive JPEG whose scans leave low-frequency coefficients of component {} unrefined (libjpeg would apply block smoothing)",
                        c.id
                    )));
                }
            }
        }
        let mut em = frame.emitter.take().expect("made at the first scan");
        if frame.direct == Some(false) {
            for c in &mut frame.comps {
                c.ring = (3 * 8 * c.v).min(c.bh * 8);
                c.plane = vec![0; c.bw * 8 * c.ring];
            }
            for my in 0..frame.mcuy {
                for c in &mut frame.comps {
                    let q = c.quant.expect("latched at its first scan");
                    let stride = c.bw * 8;
                    for by in my * c.v..(my + 1) * c.v {
                        let r = (by * 8) % c.ring;
                        for bx in 0..c.bw {
                            let i = (by * c.bw + bx) * 64;
                            let blk: &[i16; 64] = c.coefs[i..i + 64].try_into().unwrap();
                            self.idct
                                .block(blk, &q, &mut c.plane[r * stride + bx * 8..], stride);
                        }
                    }
                    c.decoded = ((my + 1) * 8 * c.v).min(c.dh);
                }
                em.emit(&frame);
            }
        }
        em.emit(&frame);
        Ok(em.finish(&frame, self.orientation))
    }
}

struct Scan {
    comps: Vec<(usize, usize, usize)>,
    ss: usize,
    se: usize,
    ah: u32,
    al: u32,
}

fn corrupt(scan: usize, offset: usize, reason: impl Into<String>) -> JpegError {
    JpegError::Corrupt {
        scan,
        offset,
        reason: reason.into(),
    }
}

#[allow(clippy::too_many_arguments)]
fn decode_scan(
    frame: &mut Frame,
    scan: &Scan,
    dc: &[Option<HuffTable>; 4],
    ac: &[Option<HuffTable>; 4],
    restart_interval: usize,
    data: &[u8],
    data_pos: usize,
    scan_no: usize,
    idct: &Idct,
) -> Result<usize> {
    let (mcus_x, mcus_y) = if scan.comps.len() == 1 {
        let c = &frame.comps[scan.comps[0].0];
        (c.dw.div_ceil(8), c.dh.div_ceil(8))
    } else {
        (frame.mcux, frame.mcuy)
    };
    let total = mcus_x * mcus_y;
    let mut r = BitReader::new(data, data_pos);
    let mut seg_start = data_pos;
    for c in &mut frame.comps {
        c.dc_pred = 0;
    }
    let mut eobrun: u32 = 0;
    let mut next_rst = 0u8;
    let direct = frame.direct == Some(true);
    let progressive = frame.progressive;
    let mut block: [i16; 64];
    for m in 0..total {
        if restart_interval > 0 && m > 0 && m % restart_interval == 0 {
            if r.overran() {
                return Err(corrupt(
                    scan_no,
                    seg_start,
                    "entropy data ran into a marker before the restart interval ended",
                ));
            }
            match r.next_marker() {
                Some((mk, _)) if mk == 0xD0 + next_rst => {}
                Some((mk, at)) => {
                    return Err(corrupt(
                        scan_no,
                        seg_start,
                        format!(
                            "expected restart marker RST{next_rst} after {m} MCUs, found FF {mk:02X} at offset {at}"
                        ),
                    ));
                }
                None => {
                    return Err(JpegError::Truncated {
                        offset: data.len(),
                        context: "entropy-coded data (missing restart marker)",
                    });
                }
            }
            seg_start = r.pos;
            next_rst = (next_rst + 1) & 7;
            for c in &mut frame.comps {
                c.dc_pred = 0;
            }
            eobrun = 0;
        }
        let (mx, my) = (m % mcus_x, m / mcus_x);
        // A scan that ran out of data is caught at the next MCU row, not after decoding
        // zeros for the rest of a large image.
        if mx == 0 && r.overran() {
            return Err(corrupt(
                scan_no,
                seg_start,
                format!(
                    "entropy data ended (marker or end of file at offset {}) before MCU row {my}",
                    r.pos
                ),
            ));
        }
        for &(ci, td, ta) in &scan.comps {
            let c = &mut frame.comps[ci];
            let (bh_n, bv_n) = if scan.comps.len() == 1 {
                (1, 1)
            } else {
                (c.h, c.v)
            };
            for bv in 0..bv_n {
                for bh in 0..bh_n {
                    let (bx, by) = (mx * bh_n + bh, my * bv_n + bv);
                    if !progressive {
                        block = [0; 64];
                        let any_ac = decode_block(
                            &mut r,
                            dc[td].as_ref().unwrap(),
                            ac[ta].as_ref().unwrap(),
                            &mut c.dc_pred,
                            &mut block,
                        )
                        .map_err(|e| corrupt(scan_no, seg_start, e))?;
                        if direct {
                            let stride = c.bw * 8;
                            let r = (by * 8) % c.ring;
                            idct.block_known(
                                &block,
                                c.quant.as_ref().unwrap(),
                                &mut c.plane[r * stride + bx * 8..],
                                stride,
                                any_ac,
                            );
                        } else {
                            let i = (by * c.bw + bx) * 64;
                            c.coefs[i..i + 64].copy_from_slice(&block);
                        }
                        continue;
                    }
                    let i = (by * c.bw + bx) * 64;
                    let coefs: &mut [i16; 64] = (&mut c.coefs[i..i + 64]).try_into().unwrap();
                    let res = if scan.ss == 0 {
                        if scan.ah == 0 {
                            dc_first(
                                &mut r,
                                dc[td].as_ref().unwrap(),
                                &mut c.dc_pred,
                                coefs,
                                scan.al,
                            )
                        } else {
                            r.refill();
                            if r.bit() != 0 {
                                coefs[0] |= (1i32 << scan.al) as i16;
                            }
                            Ok(())
                        }
                    } else if scan.ah == 0 {
                        ac_first(&mut r, ac[ta].as_ref().unwrap(), coefs, scan, &mut eobrun)
                    } else {
                        ac_refine(&mut r, ac[ta].as_ref().unwrap(), coefs, scan, &mut eobrun)
                    };
                    res.map_err(|e| corrupt(scan_no, seg_start, e))?;
                }
            }
        }
        if direct && mx == mcus_x - 1 {
            let rows = if scan.comps.len() == 1 { 8 } else { 0 };
            for c in &mut frame.comps {
                let per_row = if rows == 8 { 8 } else { 8 * c.v };
                c.decoded = ((my + 1) * per_row).min(c.dh);
            }
            let mut em = frame.emitter.take().expect("made at the first scan");
            em.emit(frame);
            frame.emitter = Some(em);
        }
    }
    if r.overran() {
        return Err(corrupt(
            scan_no,
            seg_start,
            "entropy data ran into the next marker or the end of the file",
        ));
    }
    // Unread data bytes before the marker are left to the marker search (libjpeg skips them).
    Ok(r.pos)
}

#[inline(always)]
fn decode_block(
    r: &mut BitReader,
    dc: &HuffTable,
    ac: &HuffTable,
    pred: &mut i32,
    block: &mut [i16; 64],
) -> std::result::Result<bool, &'static str> {
    r.refill();
    let s = r.decode(dc).ok_or("invalid DC Huffman code")? as u32;
    let diff = r.receive_extend(s);
    *pred = pred.wrapping_add(diff);
    block[0] = *pred as i16;
    let mut k = 1;
    let mut any_ac = false;
    while k < 64 {
        if r.nbits() < 32 {
            r.refill();
        }
        let f = r.fast_ac(ac);
        if f != 0 {
            k += ((f >> 4) & 15) as usize;
            if k > 63 {
                return Err("AC coefficient run past the end of the block");
            }
            block[ZIGZAG[k]] = (f >> 8) as i16;
            any_ac = true;
            k += 1;
            continue;
        }
        let sym = r.decode(ac).ok_or("invalid AC Huffman code")?;
        let (run, s) = ((sym >> 4) as usize, (sym & 15) as u32);
        if s != 0 {
            k += run;
            if k > 63 {
                return Err("AC coefficient run past the end of the block");
            }
            block[ZIGZAG[k]] = r.receive_extend(s) as i16;
            any_ac = true;
            k += 1;
        } else if run == 15 {
            k += 16;
        } else {
            break;
        }
    }
    Ok(any_ac)
}

fn dc_first(
    r: &mut BitReader,
    dc: &HuffTable,
    pred: &mut i32,
    coefs: &mut [i16; 64],
    al: u32,
) -> std::result::Result<(), &'static str> {
    r.refill();
    let s = r.decode(dc).ok_or("invalid DC Huffman code")? as u32;
    let diff = r.receive_extend(s);
    *pred = pred.wrapping_add(diff);
    coefs[0] = ((*pred as u32) << al) as i16;
    Ok(())
}

fn ac_first(
    r: &mut BitReader,
    ac: &HuffTable,
    coefs: &mut [i16; 64],
    scan: &Scan,
    eobrun: &mut u32,
) -> std::result::Result<(), &'static str> {
    if *eobrun > 0 {
        *eobrun -= 1;
        return Ok(());
    }
    let mut k = scan.ss;
    while k <= scan.se {
        r.refill();
        let sym = r.decode(ac).ok_or("invalid AC Huffman code")?;
        let (run, s) = ((sym >> 4) as usize, (sym & 15) as u32);
        if s != 0 {
            k += run;
            if k > 63 {
                return Err("AC coefficient run past the end of the block");
            }
            coefs[ZIGZAG[k]] = ((r.receive_extend(s) as u32) << scan.al) as i16;
        } else if run == 15 {
            k += 15;
        } else {
            *eobrun = 1 << run;
            if run > 0 {
                *eobrun += r.bits(run as u32);
            }
            *eobrun -= 1;
            break;
        }
        k += 1;
    }
    Ok(())
}

fn ac_refine(
    r: &mut BitReader,
    ac: &HuffTable,
    coefs: &mut [i16; 64],
    scan: &Scan,
    eobrun: &mut u32,
) -> std::result::Result<(), &'static str> {
    let p1: i16 = (1i32 << scan.al) as i16;
    let m1: i16 = (-1i32 << scan.al) as i16;
    let mut k = scan.ss;
    let se = scan.se;
    let refine = |r: &mut BitReader, c: &mut i16| {
        if r.nbits() == 0 {
            r.refill();
        }
        if r.bit() != 0 && (*c & p1) == 0 {
            *c = if *c >= 0 {
                c.wrapping_add(p1)
            } else {
                c.wrapping_add(m1)
            };
        }
    };
    if *eobrun == 0 {
        while k <= se {
            r.refill();
            let sym = r.decode(ac).ok_or("invalid AC Huffman code")?;
            let (mut run, s) = ((sym >> 4) as i32, (sym & 15) as u32);
            let mut value = 0i16;
            if s != 0 {
                // s != 1 is an error libjpeg only warns about; it reads one bit either way.
                value = if r.bit() != 0 { p1 } else { m1 };
            } else if run != 15 {
                *eobrun = 1 << run;
                if run > 0 {
                    *eobrun += r.bits(run as u32);
                }
                break;
            }
            loop {
                let c = &mut coefs[ZIGZAG[k]];
                if *c != 0 {
                    refine(r, c);
                } else {
                    run -= 1;
                    if run < 0 {
                        break;
                    }
                }
                k += 1;
                if k > se {
                    break;
                }
            }
            if s != 0 {
                if k > 63 {
                    return Err("AC refinement past the end of the block");
                }
                coefs[ZIGZAG[k]] = value;
            }
            k += 1;
        }
    }
    if *eobrun > 0 {
        while k <= se {
            let c = &mut coefs[ZIGZAG[k]];
            if *c != 0 {
                refine(r, c);
            }
            k += 1;
        }
        *eobrun -= 1;
    }
    Ok(())
}

/// Upsamples and colour-converts the planes as Pillow's decode + `convert("RGB")` would,
/// row by row as soon as the rows it needs are decoded.
struct Emitter {
    space: ColorSpace,
    channels: usize,
    pixels: Vec<u8>,
    y_done: usize,
    scratch: Vec<Vec<u8>>,
}

impl Emitter {
    fn new(frame: &Frame, jfif: bool, adobe: Option<u8>) -> Emitter {
        let n = frame.comps.len();
        let space = match n {
            1 => ColorSpace::Gray,
            3 => {
                let ids: Vec<u8> = frame.comps.iter().map(|c| c.id).collect();
                if jfif {
                    ColorSpace::YCbCr
                } else if let Some(t) = adobe {
                    if t == 0 {
                        ColorSpace::Rgb
                    } else {
                        ColorSpace::YCbCr
                    }
                } else if ids == [82, 71, 66] {
                    ColorSpace::Rgb
                } else {
                    ColorSpace::YCbCr
                }
            }
            _ => match adobe {
                Some(0) | None => ColorSpace::Cmyk,
                Some(_) => ColorSpace::Ycck,
            },
        };
        let channels = if n == 1 { 1 } else { 3 };
        Emitter {
            space,
            channels,
            pixels: vec![0u8; frame.width * frame.height * channels],
            y_done: 0,
            scratch: frame
                .comps
                .iter()
                .map(|c| vec![0u8; (2 * c.dw).max(frame.width)])
                .collect(),
        }
    }

    fn emit(&mut self, frame: &Frame) {
        let (w, h) = (frame.width, frame.height);
        let planes: Vec<Plane> = frame
            .comps
            .iter()
            .map(|c| Plane {
                data: &c.plane,
                stride: c.bw * 8,
                ring: c.ring,
                dw: c.dw,
                dh: c.dh,
                method: Upsample::choose(frame.max_h / c.h, frame.max_v / c.v, c.dw),
            })
            .collect();
        let ready = planes
            .iter()
            .zip(&frame.comps)
            .map(|(p, c)| p.ready_rows(c.decoded, frame.max_v / c.v))
            .min()
            .unwrap_or(0)
            .min(h);
        let ch = self.channels;
        for y in self.y_done..ready {
            let out = &mut self.pixels[y * w * ch..(y + 1) * w * ch];
            let mut rows: [&[u8]; 4] = [&[]; 4];
            for ((p, s), row) in planes
                .iter()
                .zip(self.scratch.iter_mut())
                .zip(rows.iter_mut())
            {
                *row = p.full_row(y, s, w);
            }
            match self.space {
                ColorSpace::Gray => out.copy_from_slice(&rows[0][..w]),
                ColorSpace::YCbCr => color::ycc_row(rows[0], rows[1], rows[2], out),
                ColorSpace::Rgb => {
                    for (x, o) in out.chunks_exact_mut(3).enumerate() {
                        o.copy_from_slice(&[rows[0][x], rows[1][x], rows[2][x]]);
                    }
                }
                ColorSpace::Cmyk => {
                    for (x, o) in out.chunks_exact_mut(3).enumerate() {
                        let cmyk = [rows[0][x], rows[1][x], rows[2][x], rows[3][x]];
                        o.copy_from_slice(&color::pillow_cmyk_to_rgb(cmyk));
                    }
                }
                ColorSpace::Ycck => {
                    for (x, o) in out.chunks_exact_mut(3).enumerate() {
                        let cmyk =
                            color::ycck_to_cmyk(rows[0][x], rows[1][x], rows[2][x], rows[3][x]);
                        o.copy_from_slice(&color::pillow_cmyk_to_rgb(cmyk));
                    }
                }
            }
        }
        self.y_done = self.y_done.max(ready);
    }

    fn finish(self, frame: &Frame, orientation: Option<u16>) -> Image {
        debug_assert_eq!(self.y_done, frame.height);
        Image {
            width: frame.width as u32,
            height: frame.height as u32,
            channels: self.channels as u8,
            pixels: self.pixels,
            color_space: self.space,
            exif_orientation: orientation,
        }
    }
}
