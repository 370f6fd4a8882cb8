//! Upsampling (libjpeg-turbo jdsample.c with `do_fancy_upsampling`, Pillow's setting) and
//! colour conversion (jdcolor.c fixed point; Pillow's inverted-CMYK unpacking and its
//! `cmyk2rgb`).

/// How one component is brought to full resolution (jdsample.c's method choice).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Upsample {
    /// Full-size component.
    Copy,
    /// `h2v1_fancy_upsample`: triangular filter across columns.
    H2V1Fancy,
    /// `h1v2_fancy_upsample`: triangular filter across rows.
    H1V2Fancy,
    /// `h2v2_fancy_upsample`: triangular filter in both directions.
    H2V2Fancy,
    /// Pixel replication (`h2v1_upsample`, `h2v2_upsample`, `int_upsample`).
    Box { rh: usize, rv: usize },
}

impl Upsample {
    /// libjpeg-turbo's choice for ratio (rh, rv) with `dw` downsampled columns.
    pub fn choose(rh: usize, rv: usize, dw: usize) -> Upsample {
        match (rh, rv) {
            (1, 1) => Upsample::Copy,
            (2, 1) if dw > 2 => Upsample::H2V1Fancy,
            (1, 2) => Upsample::H1V2Fancy,
            (2, 2) if dw > 2 => Upsample::H2V2Fancy,
            _ => Upsample::Box { rh, rv },
        }
    }
}

/// A component's decoded samples as a plane, its meaningful size and upsampling method.
pub struct Plane<'a> {
    pub data: &'a [u8],
    pub stride: usize,
    /// Rows held: row `i` lives at `i % ring` (a ring buffer of a few MCU rows).
    pub ring: usize,
    /// downsampled_width / downsampled_height
    pub dw: usize,
    pub dh: usize,
    pub method: Upsample,
}

impl Plane<'_> {
    #[inline]
    fn row(&self, i: usize) -> &[u8] {
        let r = i % self.ring;
        &self.data[r * self.stride..r * self.stride + self.dw]
    }

    /// Output rows (from the top) computable once `decoded` input rows are in the ring.
    pub fn ready_rows(&self, decoded: usize, rv: usize) -> usize {
        if decoded >= self.dh {
            return usize::MAX;
        }
        let extra = matches!(self.method, Upsample::H1V2Fancy | Upsample::H2V2Fancy) as usize;
        decoded.saturating_sub(extra) * rv
    }

    /// Full-resolution row `y` into `out` (at least `width` bytes; fancy methods write
    /// `2 * dw`). Returns the row (possibly borrowed from the plane).
    pub fn full_row<'s>(&'s self, y: usize, out: &'s mut [u8], width: usize) -> &'s [u8] {
        match self.method {
            Upsample::Copy => &self.row(y)[..width],
            Upsample::Box { rh, rv } => {
                let src = self.row(y / rv);
                if rh == 1 {
                    return &src[..width];
                }
                for (x, o) in out[..width].iter_mut().enumerate() {
                    *o = src[x / rh];
                }
                &out[..width]
            }
            Upsample::H2V1Fancy => {
                h2v1_fancy(self.row(y), &mut out[..2 * self.dw]);
                &out[..width]
            }
            Upsample::H1V2Fancy => {
                let (near, far, bias) = self.vertical_pair(y);
                for ((o, &a), &b) in out[..self.dw].iter_mut().zip(near).zip(far) {
                    *o = ((a as u16 * 3 + b as u16 + bias) >> 2) as u8;
                }
                &out[..width]
            }
            Upsample::H2V2Fancy => {
                let (near, far, _) = self.vertical_pair(y);
                h2v2_fancy(near, far, &mut out[..2 * self.dw]);
                &out[..width]
            }
        }
    }

    /// The nearest input row for output row `y` of a 2x vertical upsampling, the next
    /// nearest (above for even `y`, below for odd; the edge rows repeat) and h1v2's bias.
    fn vertical_pair(&self, y: usize) -> (&[u8], &[u8], u16) {
        let i = y / 2;
        if y.is_multiple_of(2) {
            (self.row(i), self.row(i.saturating_sub(1)), 1)
        } else {
            (self.row(i), self.row((i + 1).min(self.dh - 1)), 2)
        }
    }
}

/// libjpeg's `h2v1_fancy_upsample` (`input.len() > 2`).
fn h2v1_fancy(input: &[u8], out: &mut [u8]) {
    let n = input.len();
    out[0] = input[0];
    out[1] = ((input[0] as u16 * 3 + input[1] as u16 + 2) >> 2) as u8;
    for i in 1..n - 1 {
        let v = input[i] as u16 * 3;
        out[2 * i] = ((v + input[i - 1] as u16 + 1) >> 2) as u8;
        out[2 * i + 1] = ((v + input[i + 1] as u16 + 2) >> 2) as u8;
    }
    let v = input[n - 1] as u16 * 3;
    out[2 * n - 2] = ((v + input[n - 2] as u16 + 1) >> 2) as u8;
    out[2 * n - 1] = input[n - 1];
}

/// libjpeg's `h2v2_fancy_upsample` for one output row (`near.len() > 2`).
fn h2v2_fancy(near: &[u8], far: &[u8], out: &mut [u8]) {
    let n = near.len();
    let cs = |i: usize| near[i] as u16 * 3 + far[i] as u16;
    let mut this = cs(0);
    let mut next = cs(1);
    out[0] = ((this * 4 + 8) >> 4) as u8;
    out[1] = ((this * 3 + next + 7) >> 4) as u8;
    let mut last = this;
    this = next;
    for i in 1..n - 1 {
        next = cs(i + 1);
        out[2 * i] = ((this * 3 + last + 8) >> 4) as u8;
        out[2 * i + 1] = ((this * 3 + next + 7) >> 4) as u8;
        last = this;
        this = next;
    }
    out[2 * n - 2] = ((this * 3 + last + 8) >> 4) as u8;
    out[2 * n - 1] = ((this * 4 + 7) >> 4) as u8;
}

const SCALEBITS: i32 = 16;
const ONE_HALF: i32 = 1 << (SCALEBITS - 1);
/// FIX(x) = (x * 2^16 + 0.5) as i32 for jdcolor.c's constants.
const FIX_1_40200: i32 = 91881;
const FIX_1_77200: i32 = 116130;
const FIX_0_71414: i32 = 46802;
const FIX_0_34414: i32 = 22554;

/// jdcolor.c's `ycc_rgb_convert` for one pixel (its tables computed inline).
#[inline(always)]
pub fn ycc_to_rgb(y: u8, cb: u8, cr: u8) -> [u8; 3] {
    let y = y as i32;
    let cb = cb as i32 - 128;
    let cr = cr as i32 - 128;
    let r = y + ((FIX_1_40200 * cr + ONE_HALF) >> SCALEBITS);
    let g = y + ((-FIX_0_34414 * cb + ONE_HALF - FIX_0_71414 * cr) >> SCALEBITS);
    let b = y + ((FIX_1_77200 * cb + ONE_HALF) >> SCALEBITS);
    [
        r.clamp(0, 255) as u8,
        g.clamp(0, 255) as u8,
        b.clamp(0, 255) as u8,
    ]
}

#[inline(always)]
fn ycc_row_body(y: &[u8], cb: &[u8], cr: &[u8], out: &mut [u8]) {
    for (((o, &y), &cb), &cr) in out.chunks_exact_mut(3).zip(y).zip(cb).zip(cr) {
        o.copy_from_slice(&ycc_to_rgb(y, cb, cr));
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn ycc_row_avx2(y: &[u8], cb: &[u8], cr: &[u8], out: &mut [u8]) {
    ycc_row_body(y, cb, cr, out)
}

/// One row of YCbCr to interleaved RGB.
pub fn ycc_row(y: &[u8], cb: &[u8], cr: &[u8], out: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked above).
        return unsafe { ycc_row_avx2(y, cb, cr, out) };
    }
    ycc_row_body(y, cb, cr, out)
}

/// Pillow's `MULDIV255`.
#[inline(always)]
fn muldiv255(a: i32, b: i32) -> i32 {
    let t = a * b + 128;
    ((t >> 8) + t) >> 8
}

/// What Pillow returns for a pixel libjpeg decodes to CMYK `(c, m, y, k)`: the plugin's
/// raw mode "CMYK;I" inverts all four channels (Adobe's convention), then
/// `convert("RGB")` applies `cmyk2rgb`.
#[inline]
pub fn pillow_cmyk_to_rgb(cmyk: [u8; 4]) -> [u8; 3] {
    let [c, m, y, k] = cmyk.map(|v| 255 - v as i32);
    let nk = 255 - k;
    [c, m, y].map(|v| (nk - muldiv255(v, nk)).clamp(0, 255) as u8)
}

/// jdcolor.c's `ycck_cmyk_convert` for one pixel.
#[inline]
pub fn ycck_to_cmyk(y: u8, cb: u8, cr: u8, k: u8) -> [u8; 4] {
    let [r, g, b] = ycc_to_rgb_unclamped(y, cb, cr);
    [
        (255 - r).clamp(0, 255) as u8,
        (255 - g).clamp(0, 255) as u8,
        (255 - b).clamp(0, 255) as u8,
        k,
    ]
}

#[inline]
fn ycc_to_rgb_unclamped(y: u8, cb: u8, cr: u8) -> [i32; 3] {
    let y = y as i32;
    let cb = cb as i32 - 128;
    let cr = cr as i32 - 128;
    [
        y + ((FIX_1_40200 * cr + ONE_HALF) >> SCALEBITS),
        y + ((-FIX_0_34414 * cb + ONE_HALF - FIX_0_71414 * cr) >> SCALEBITS),
        y + ((FIX_1_77200 * cb + ONE_HALF) >> SCALEBITS),
    ]
}
