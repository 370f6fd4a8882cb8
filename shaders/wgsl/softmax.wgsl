// Softmax over the last dim, one workgroup per row, of v = x * scale + mask + bias where
// mask and bias broadcast to x by element strides (0 = broadcast) over x viewed as
// [d0, d1, d2, n]; with `causal`, entry j of a row whose dim-2 index is i is excluded when
// j > i + causal_off (attention scores [B, H, Lq, Lk]: i is the query). Statistics in f32.
// With LOG (no mask, bias or causal; f32 out): log-softmax, v - max - ln(sum exp(v - max)),
// and a row holding any NaN or +-inf is copied unchanged (ops::log_softmax's rule).
// Outputs are written as element pairs; with an f16 output rows start on a word.

struct Params {
    rows: u32,
    n: u32,
    d1: u32,
    d2: u32,
    ms0: u32,
    ms1: u32,
    ms2: u32,
    ms3: u32,
    bs0: u32,
    bs1: u32,
    bs2: u32,
    bs3: u32,
    scale: f32,
    causal: u32,
    causal_off: u32,
    groups_x: u32,
}

const HAS_MASK: bool = false;
const HAS_BIAS: bool = false;
const X_F16: bool = false;
const OUT_F16: bool = false;
const LOG: bool = false;
const WG: u32 = 256u;
const RED_N: u32 = 1u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<u32>;
@group(0) @binding(2) var<storage, read> mask: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<u32>;

// Shared helpers, pasted in by `specialise` (the file is not valid WGSL without them).
// #include "pack.wgsl"
// #include "reduce.wgsl"

fn ld_x(i: u32) -> f32 {
    return elem(x[word_of(i, X_F16)], i, X_F16);
}

// Most negative finite f32, so rows masked with f32::MIN still find their max.
const NEG_INF: f32 = -3.40282347e38;

// Scaled, masked and biased logit of entry j; `false` when causal masking excludes it.
fn logit(base: u32, moff: u32, boff: u32, i2: u32, j: u32, v: ptr<function, f32>) -> bool {
    if (p.causal != 0u && j > i2 + p.causal_off) {
        return false;
    }
    var s = ld_x(base + j) * p.scale;
    if (HAS_MASK) {
        s += mask[moff + j * p.ms3];
    }
    if (HAS_BIAS) {
        s += bias[boff + j * p.bs3];
    }
    *v = s;
    return true;
}

@compute @workgroup_size(WG)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    //SG @builtin(subgroup_invocation_id) sg_lane: u32, @builtin(subgroup_id) sg_id: u32, @builtin(num_subgroups) n_sg: u32,
    @builtin(local_invocation_index) lid: u32,
) {
    let sg = vec3<u32>(0u); //NOSG
    //SG let sg = vec3<u32>(sg_lane, sg_id, n_sg);
    let row = wid.x + wid.y * p.groups_x;
    if (row >= p.rows) {
        return;
    }
    let n = p.n;
    let base = row * n;
    let i2 = row % p.d2;
    let i1 = (row / p.d2) % p.d1;
    let i0 = row / (p.d2 * p.d1);
    let moff = i0 * p.ms0 + i1 * p.ms1 + i2 * p.ms2;
    let boff = i0 * p.bs0 + i1 * p.bs1 + i2 * p.bs2;

    // One pass for the statistics: a running (max, sum of exp) per invocation, merged
    // across the workgroup.
    var m = NEG_INF;
    var s = 0.0;
    var bad = 0.0;
    for (var j = lid; j < n; j += WG) {
        var v = 0.0;
        if (logit(base, moff, boff, i2, j, &v)) {
            // Tested on the bits: compilers may assume arithmetic never meets NaN.
            if (LOG && (bitcast<u32>(v) & 0x7f800000u) == 0x7f800000u) {
                bad += 1.0;
            }
            if (v > m) {
                s = s * exp(m - v) + 1.0;
                m = v;
            } else {
                s += exp(v - m);
            }
        }
    }
    let mrow = wg_max(m, lid, sg);
    let total = wg_sum(s * exp(m - mrow), lid, sg);
    let inv = 1.0 / total;
    m = mrow;
    if (LOG) {
        let keep = wg_sum(bad, lid, sg) > 0.0;
        let lse = log(total);
        for (var pr = lid; pr * 2u < n; pr += WG) {
            let j0 = pr * 2u;
            let two = j0 + 1u < n;
            let v0 = ld_x(base + j0);
            var v1 = 0.0;
            if (two) {
                v1 = ld_x(base + j0 + 1u);
            }
            if (keep) {
                st_pair(base + j0, v0, v1, two);
            } else {
                st_pair(base + j0, v0 - m - lse, v1 - m - lse, two);
            }
        }
        return;
    }
    for (var pr = lid; pr * 2u < n; pr += WG) {
        let j0 = pr * 2u;
        let two = j0 + 1u < n;
        var v = 0.0;
        var y0 = 0.0;
        if (logit(base, moff, boff, i2, j0, &v)) {
            y0 = exp(v - m) * inv;
        }
        var y1 = 0.0;
        if (two && logit(base, moff, boff, i2, j0 + 1u, &v)) {
            y1 = exp(v - m) * inv;
        }
        st_pair(base + j0, y0, y1, two);
    }
}
