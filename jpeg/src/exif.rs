//! The EXIF orientation tag (0x0112 in IFD0) and the transposes Pillow's
//! `ImageOps.exif_transpose` applies for it.

/// Orientation from an APP1 Exif payload (after "Exif\0\0"): the TIFF header and IFD0.
pub fn orientation(tiff: &[u8]) -> Option<u16> {
    let le = match tiff.get(..4)? {
        [b'I', b'I', 42, 0] => true,
        [b'M', b'M', 0, 42] => false,
        _ => return None,
    };
    let u16_at = |p: usize| -> Option<u16> {
        let b: [u8; 2] = tiff.get(p..p + 2)?.try_into().ok()?;
        Some(if le {
            u16::from_le_bytes(b)
        } else {
            u16::from_be_bytes(b)
        })
    };
    let u32_at = |p: usize| -> Option<u32> {
        let b: [u8; 4] = tiff.get(p..p + 4)?.try_into().ok()?;
        Some(if le {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        })
    };
    let ifd = u32_at(4)? as usize;
    let n = u16_at(ifd)? as usize;
    for i in 0..n {
        let e = ifd + 2 + 12 * i;
        if u16_at(e)? == 0x0112 {
            let ty = u16_at(e + 2)?;
            return match ty {
                3 => u16_at(e + 8),
                4 => u32_at(e + 8).and_then(|v| u16::try_from(v).ok()),
                _ => None,
            };
        }
    }
    None
}

/// Applies orientation `o` (2..=8; others leave the image alone) to `pixels` (`ch`
/// interleaved channels) as `ImageOps.exif_transpose` does; returns the new size.
pub fn apply(o: u16, w: usize, h: usize, ch: usize, pixels: &[u8]) -> (usize, usize, Vec<u8>) {
    // (x, y) in the output -> (x, y) in the input.
    let swap = matches!(o, 5..=8);
    let (ow, oh) = if swap { (h, w) } else { (w, h) };
    let src = |x: usize, y: usize| -> (usize, usize) {
        match o {
            2 => (w - 1 - x, y),         // FLIP_LEFT_RIGHT
            3 => (w - 1 - x, h - 1 - y), // ROTATE_180
            4 => (x, h - 1 - y),         // FLIP_TOP_BOTTOM
            5 => (y, x),                 // TRANSPOSE
            6 => (y, h - 1 - x),         // ROTATE_270 (clockwise quarter turn)
            7 => (w - 1 - y, h - 1 - x), // TRANSVERSE
            8 => (w - 1 - y, x),         // ROTATE_90 (counter-clockwise)
            _ => (x, y),
        }
    };
    let mut out = vec![0u8; pixels.len()];
    for y in 0..oh {
        for x in 0..ow {
            let (sx, sy) = src(x, y);
            let s = (sy * w + sx) * ch;
            let d = (y * ow + x) * ch;
            out[d..d + ch].copy_from_slice(&pixels[s..s + ch]);
        }
    }
    (ow, oh, out)
}
