// Flash-style attention for many queries (ViT, Q-Former text rows, prefill): one workgroup
// per (batch, head, tile of BQ queries), one query per invocation. K/V tiles of BK keys are
// staged in workgroup memory and shared by the BQ queries; each invocation keeps its query
// row and its output accumulator in registers and folds every tile in with an online softmax
// (running max and sum; the accumulator is rescaled once per tile), so neither the score
// matrix nor the probabilities ever reach global memory.
// softmax(q.k^T * scale + mask + bias) . v over the first lk keys of a [B, H, lk_cap, d]
// cache; query i sees key j <= i + causal_off when causal. d <= DMAX.

struct Params {
    lq: u32,
    lk: u32,
    lk_cap: u32,
    d: u32,
    heads: u32,
    rows: u32,
    scale: f32,
    causal: u32,
    causal_off: u32,
    mask_rows: u32,
    groups_x: u32,
}

const QKV_F16: bool = false;
const OUT_F16: bool = false;
const HAS_MASK: bool = false;
const HAS_BIAS: bool = false;
// Queries per workgroup (one per invocation) and keys per staged tile.
const BQ: u32 = 64u;
const BK: u32 = 16u;
// Largest head dim (ViT-g 88, OPT 80, T5 64, LLaMA 128). K and V tiles take
// 2 * BK * DMAX * 4 = 16 KiB of workgroup memory.
const DMAX: u32 = 128u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<u32>;
@group(0) @binding(2) var<storage, read> k: array<u32>;
@group(0) @binding(3) var<storage, read> v: array<u32>;
@group(0) @binding(4) var<storage, read> mask: array<f32>;
@group(0) @binding(5) var<storage, read> bias: array<f32>;
@group(0) @binding(6) var<storage, read_write> out: array<u32>;

var<workgroup> ks: array<f32, BK * DMAX>;
var<workgroup> vs: array<f32, BK * DMAX>;

const NEG_INF: f32 = -3.40282347e38;

// Shared helpers, pasted in by `specialise` (the file is not valid WGSL without them).
// #include "pack.wgsl"

// Element i of q (buf 0), k (1) or v (2).
fn ld1(buf: u32, i: u32) -> f32 {
    var w = 0u;
    let wi = word_of(i, QKV_F16);
    switch (buf) {
        case 0u: { w = q[wi]; }
        case 1u: { w = k[wi]; }
        default: { w = v[wi]; }
    }
    return elem(w, i, QKV_F16);
}

@compute @workgroup_size(BQ)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    // Workgroup index = bh * q_tiles + tile (folded into y past 65535).
    let g = wid.x + wid.y * p.groups_x;
    let q_tiles = (p.lq + BQ - 1u) / BQ;
    let bh = g / q_tiles;
    if (bh >= p.rows) {
        return;
    }
    let q0 = (g % q_tiles) * BQ;
    let i = q0 + lid;
    let live = i < p.lq;
    let d = p.d;
    let h = bh % p.heads;
    let bb = bh / p.heads;
    let kvbase = bh * p.lk_cap * d;
    let qoff = (bh * p.lq + i) * d;
    let moff = (bb * p.mask_rows + select(i, 0u, p.mask_rows == 1u)) * p.lk;
    let boff = (h * p.lq + i) * p.lk;

    var qv: array<f32, DMAX>;
    var acc: array<f32, DMAX>;
    for (var t = 0u; t < d; t++) {
        acc[t] = 0.0;
        qv[t] = 0.0;
        if (live) {
            qv[t] = ld1(0u, qoff + t) * p.scale;
        }
    }

    // Keys past the tile's last query (plus causal_off) are masked for every query in it:
    // stop there. Uniform across the workgroup (depends on the workgroup id only).
    var lk_end = p.lk;
    if (p.causal != 0u) {
        lk_end = min(p.lk, min(q0 + BQ, p.lq) + p.causal_off);
    }

    var m = NEG_INF;
    var l = 0.0;
    var sc: array<f32, BK>;
    for (var k0 = 0u; k0 < lk_end; k0 += BK) {
        let nk = min(BK, lk_end - k0);
        for (var e = lid; e < nk * d; e += BQ) {
            let src = kvbase + k0 * d + e;
            ks[e] = ld1(1u, src);
            vs[e] = ld1(2u, src);
        }
        workgroupBarrier();

        var tmax = NEG_INF;
        for (var jj = 0u; jj < nk; jj++) {
            let j = k0 + jj;
            var s = NEG_INF;
            if (!(p.causal != 0u && j > i + p.causal_off)) {
                var qk = 0.0;
                for (var t = 0u; t < d; t++) {
                    qk += qv[t] * ks[jj * d + t];
                }
                s = qk;
                if (HAS_MASK && live) {
                    s += mask[moff + j];
                }
                if (HAS_BIAS && live) {
                    s += bias[boff + j];
                }
            }
            sc[jj] = s;
            tmax = max(tmax, s);
        }
        let m_new = max(m, tmax);
        let corr = exp(m - m_new);
        l *= corr;
        for (var t = 0u; t < d; t++) {
            acc[t] *= corr;
        }
        for (var jj = 0u; jj < nk; jj++) {
            // A causally hidden key contributes exactly 0; an additive mask's most negative
            // float does not (a row whose keys are all masked averages them, as softmax does).
            var pj = 0.0;
            if (!(p.causal != 0u && k0 + jj > i + p.causal_off)) {
                pj = exp(sc[jj] - m_new);
            }
            l += pj;
            for (var t = 0u; t < d; t++) {
                acc[t] += pj * vs[jj * d + t];
            }
        }
        m = m_new;
        workgroupBarrier();
    }

    if (!live) {
        return;
    }
    let inv = 1.0 / l;
    // Whole words when the output is f16: the engine only runs this kernel with an f16
    // output when d is even, so a row starts on a word.
    for (var t = 0u; t < d; t += 2u) {
        let two = t + 1u < d;
        var v1 = 0.0;
        if (two) {
            v1 = acc[t + 1u] * inv;
        }
        st_pair(qoff + t, acc[t] * inv, v1, two);
    }
}
