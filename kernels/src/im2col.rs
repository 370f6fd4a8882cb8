//! Patch extraction for a convolution whose kernel equals its stride (ViT patch embedding).

/// img [c, h, w] → out [(h/p)·(w/p), c·p·p], patch rows in raster order, each row ordered
/// (channel, ky, kx) like a Conv2d weight [out, c, p, p] flattened, so that
/// patches·Wᵀ is the convolution. Rows/columns beyond the last whole patch are ignored (as a
/// strided conv does).
///
/// Preconditions (asserted): `p > 0`, `img.len() == c·h·w`, `out.len() == (h/p)·(w/p)·c·p·p`.
/// Pure copying, so there is no per-ISA variant.
pub fn im2col_patches(img: &[f32], c: usize, h: usize, w: usize, p: usize, out: &mut [f32]) {
    assert!(p > 0 && img.len() == c * h * w, "im2col: image shape");
    let (ph, pw) = (h / p, w / p);
    let row = c * p * p;
    assert_eq!(out.len(), ph * pw * row, "im2col: output length");
    if row == 0 {
        return;
    }
    for (idx, o) in out.chunks_exact_mut(row).enumerate() {
        let (py, px) = (idx / pw, idx % pw);
        for ci in 0..c {
            for ky in 0..p {
                let src = (ci * h + py * p + ky) * w + px * p;
                let dst = (ci * p + ky) * p;
                o[dst..dst + p].copy_from_slice(&img[src..src + p]);
            }
        }
    }
}
